//! One task run, whichever backend runs it (docs/pipeline.md): the sessions,
//! what passes between them, and the run record. Crane mode (`crate::crane`:
//! materialize, then the sandbox) and container mode (`crate::container`: a
//! combination image under Docker) each implement [`Backend`]; the order of the
//! sessions, the hand-over from the agent's to grading, and `run.json` are this
//! module's alone, so the two modes cannot drift.
//!
//! A run is an agent session (install.sh, the gateway, the agent; it
//! leaves `agent.json` and `changes.tar`, or a result.json when it ended
//! the run) and then a grading session in a fresh rootfs that gets the
//! changes. `hoist grade OUT` runs the grading session alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::export::{self, ExportError, ExportReport, OutDir};
use crate::interrupt::Interrupted;
use crate::phase::{Phase, PhaseHook};
use crate::pipeline::context::{AgentPhase, Session, MAX_AGENT_PHASE_BYTES};
use crate::pipeline::task::{choose_task, parse_task, TaskSpec, MAX_TASK_BYTES};
use crate::rootfs::{Fidelity, RootfsMode};
use crate::sandbox::cgroup::RunLimits;
use crate::sandbox::{Isolation, Network};

/// What the orchestration itself can fail on; each backend's error wraps
/// it.
#[derive(Debug, thiserror::Error)]
pub enum OrchestrateError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sandbox ended (exit {exit_code}) without writing {path}; see the logs in {dir}")]
    NoResult {
        exit_code: i32,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error("--isolation strict: this host cannot confine the run fully ({isolation} isolation): {}", gaps.join("; "))]
    NotStrict {
        isolation: &'static str,
        gaps: Vec<String>,
    },
    #[error("the agent session left no changes.tar in {dir} (was it over HOIST_OUTPUT_MAX_BYTES? see run.json output.skipped); the task cannot be graded")]
    NoChanges { dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OrchestrateError + '_ {
    move |source| OrchestrateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One session to run.
#[derive(Debug)]
pub struct SessionSpec<'a> {
    /// `agent` or `grade`: the session's name in `run.json` and its work
    /// directory.
    pub name: &'static str,
    pub session: Session,
    /// The grading session's input: a private copy of `changes.tar`.
    pub changes: Option<&'a Path>,
    /// Time the earlier sessions spent on their trees, so result.json's
    /// `materialize` covers the whole run.
    pub materialized_before: u64,
}

/// How a session went.
#[derive(Debug)]
pub struct SessionRan {
    pub record: SessionRecord,
    /// What bounded it (crane mode's cgroup; container mode states Docker's
    /// limits once for the run).
    pub limits: Option<RunLimits>,
    pub not_reproduced: Fidelity,
    /// What was copied from its `/output/task` into `OUT/task`.
    pub output: ExportReport,
    /// Container mode: the containers it ran (the gateway's too).
    pub containers: Vec<String>,
}

/// One session in `run.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    pub session: &'static str,
    /// How crane mode built the session's tree; null in container mode
    /// (Docker's storage builds it).
    pub rootfs: Option<RootfsMode>,
    pub materialize_ms: u64,
    pub sandbox_ms: u64,
    pub supervisor_exit_code: i32,
}

/// A way to run a session: crane mode's sandbox, or Docker.
pub trait Backend {
    type Error: From<OrchestrateError>;

    /// Run `spec` in a tree of its own, and copy what its supervisor left
    /// in `/output/task` into `task_dir` (through `crate::export`, in
    /// every case, before the tree goes).
    fn session(&self, spec: &SessionSpec<'_>, task_dir: &OutDir)
        -> Result<SessionRan, Self::Error>;

    /// Whether `e` says a signal stopped the session (whose sandbox the
    /// backend has killed and taken down).
    fn interruption(e: &Self::Error) -> Option<Interrupted>;
}

/// The sessions that ran, and the signal that stopped the run early.
pub struct Sessions {
    pub ran: Vec<SessionRan>,
    pub interrupted: Option<Interrupted>,
}

/// How the run begins.
pub enum Start {
    /// `hoist run`: the agent session first.
    Agent,
    /// `hoist grade OUT`: the grading session of a saved run, whose
    /// `OUT/task` (`saved`) holds its `changes.tar`.
    Regrade { phase: AgentPhase, saved: PathBuf },
}

impl Start {
    /// What a run of this kind must not find left in `OUT/task` by an
    /// earlier one: a regrade may write into the run it grades, whose
    /// hand-over stays.
    fn stale(&self) -> &'static [&'static str] {
        match self {
            Start::Agent => &["result.json", "agent.json", "changes.tar"],
            Start::Regrade { .. } => &["result.json"],
        }
    }

    /// The record's name in `OUT`: a regrade keeps the run's own
    /// `run.json` and writes its own beside it.
    pub fn record_name(&self) -> &'static str {
        match self {
            Start::Agent => "run.json",
            Start::Regrade { .. } => "regrade.json",
        }
    }
}

/// Remove what an earlier run left in `task_dir` under the names this
/// run hands over (never followed if a link).
pub fn clear_stale(task_dir: &OutDir, start: &Start) -> Result<(), OrchestrateError> {
    for name in start.stale() {
        task_dir.remove(name)?;
    }
    Ok(())
}

/// The sessions of one run, in order; their outputs are in `task_dir`.
/// `work` is the run's private directory (the copy of `changes.tar`). A
/// signal ends the run between sessions or in one (the backend kills its
/// sandbox): result.json then says so (from `facts`), and what ran until
/// then is returned, with the signal. `phases` hears grading begin; the
/// agent session's phases are the backend's to tell (only it knows when
/// its tree is ready and its sandbox starts).
pub fn run_sessions<B: Backend>(
    backend: &B,
    start: Start,
    task_dir: &OutDir,
    work: &Path,
    facts: &Stopped<'_>,
    phases: Option<&PhaseHook>,
) -> Result<Sessions, B::Error> {
    let mut ran = Vec::new();
    let step = |spec: &SessionSpec<'_>| -> Result<Result<SessionRan, Interrupted>, B::Error> {
        if let Err(sig) = crate::interrupt::check() {
            return Ok(Err(sig));
        }
        match backend.session(spec, task_dir) {
            Ok(s) => Ok(Ok(s)),
            Err(e) => B::interruption(&e).map(Err).ok_or(e),
        }
    };
    let stopped = |ran, sig| -> Result<Sessions, B::Error> {
        write_interrupted(task_dir, sig, facts)?;
        Ok(Sessions {
            ran,
            interrupted: Some(sig),
        })
    };
    let (phase, saved) = match start {
        Start::Agent => {
            let spec = SessionSpec {
                name: "agent",
                session: Session::Agent,
                changes: None,
                materialized_before: 0,
            };
            let first = match step(&spec)? {
                Ok(s) => s,
                Err(sig) => return stopped(ran, sig),
            };
            let phase = agent_phase(task_dir, first.record.supervisor_exit_code)?;
            ran.push(first);
            (phase, None)
        }
        Start::Regrade { phase, saved } => (Some(phase), Some(saved)),
    };
    // docs/pipeline.md, "Grade": unless the first session ended the run, grade
    // in a fresh rootfs with the agent's changes.
    let Some(phase) = phase else {
        return Ok(Sessions {
            ran,
            interrupted: None,
        });
    };
    crate::phase::enter(phases, Phase::Grade);
    let changes = match &saved {
        Some(dir) => private_changes(&OutDir::open(dir).map_err(OrchestrateError::from)?, work)?,
        None => private_changes(task_dir, work)?,
    };
    let spec = SessionSpec {
        name: "grade",
        session: Session::Grade(phase),
        changes: Some(&changes),
        materialized_before: ran.first().map_or(0, |s| s.record.materialize_ms),
    };
    match step(&spec)? {
        Ok(s) => ran.push(s),
        Err(sig) => return stopped(ran, sig),
    }
    Ok(Sessions {
        ran,
        interrupted: None,
    })
}

/// What the host knows of a run, for the result.json it writes in the
/// supervisor's place when the run ends on its side.
pub struct Stopped<'a> {
    pub task: Option<&'a str>,
    pub images: &'a serde_json::Value,
    pub platform: String,
    pub mode: &'static str,
    pub isolation: &'static str,
    pub started_at: &'a str,
}

/// Write `OUT/task/result.json` for a run `sig` stopped: an infrastructure
/// error at stage `interrupted`, never a verdict.
fn write_interrupted(
    task_dir: &OutDir,
    sig: Interrupted,
    facts: &Stopped<'_>,
) -> Result<crate::result::TaskResult, OrchestrateError> {
    let message = format!("{sig}; the sandbox was killed and taken down");
    write_infra_error(task_dir, crate::result::Stage::Interrupted, message, facts)
}

/// Write `OUT/task/result.json` in the supervisor's place, for a run that
/// ended on the host's side (a signal; for `hoist eval`, a pull or a
/// sandbox that failed): an infrastructure error, never a verdict. The
/// task's id is the agent session's when it handed over, else the one
/// asked for.
pub fn write_infra_error(
    task_dir: &OutDir,
    stage: crate::result::Stage,
    message: String,
    facts: &Stopped<'_>,
) -> Result<crate::result::TaskResult, OrchestrateError> {
    let phase = task_dir
        .read("agent.json", MAX_AGENT_PHASE_BYTES)
        .ok()
        .flatten()
        .and_then(|b| AgentPhase::from_json(&b).ok());
    let result = host_result(stage, message, facts, phase.as_ref());
    let json = result.json().map_err(|e| OrchestrateError::Io {
        path: task_dir.path().join("result.json"),
        source: e.into(),
    })?;
    export::write_file(task_dir, "result.json", json.as_bytes())?;
    Ok(result)
}

/// The result.json of a run that ended on the host's side (see
/// [`write_infra_error`]).
pub fn host_result(
    stage: crate::result::Stage,
    message: String,
    facts: &Stopped<'_>,
    phase: Option<&AgentPhase>,
) -> crate::result::TaskResult {
    use crate::result::{InfraError, TaskResult};
    TaskResult {
        schema: crate::result::SCHEMA.into(),
        task_id: phase
            .map(|p| p.task_id.clone())
            .or(facts.task.map(str::to_string))
            .unwrap_or_default(),
        resolved: false,
        score: 0.0,
        agent: phase.map(|p| p.agent.clone()).unwrap_or_default(),
        grade: Default::default(),
        images: serde_json::from_value(facts.images.clone()).unwrap_or_default(),
        platform: facts.platform.clone(),
        infra_error: Some(InfraError { stage, message }),
        mode: facts.mode.into(),
        isolation: facts.isolation.into(),
        hoist_version: env!("CARGO_PKG_VERSION").into(),
        started_at: facts.started_at.into(),
        durations_ms: Default::default(),
    }
}

/// The agent session's hand-over, `OUT/task/agent.json`, when it wrote one
/// (it writes result.json instead when the run ended there).
pub fn agent_phase(
    task_dir: &OutDir,
    exit_code: i32,
) -> Result<Option<AgentPhase>, OrchestrateError> {
    if task_dir.read("result.json", 0)?.is_some() {
        return Ok(None);
    }
    let path = task_dir.path().join("agent.json");
    let bytes = task_dir
        .read("agent.json", MAX_AGENT_PHASE_BYTES)?
        .ok_or_else(|| OrchestrateError::NoResult {
            exit_code,
            path: task_dir.path().join("result.json"),
            dir: task_dir.path().to_path_buf(),
        })?;
    AgentPhase::from_json(&bytes)
        .map(Some)
        .map_err(|e| OrchestrateError::Io {
            path,
            source: std::io::Error::other(e),
        })
}

/// The agent session's `changes.tar`, copied from `dir` (opened without
/// following a link) to a private file in `work` (0600), which the grading
/// session gets read-only.
fn private_changes(dir: &OutDir, work: &Path) -> Result<PathBuf, OrchestrateError> {
    let path = work.join("changes.tar");
    let mut src = dir
        .open_file("changes.tar")?
        .ok_or_else(|| OrchestrateError::NoChanges {
            dir: dir.path().to_path_buf(),
        })?;
    let mut dst = create_private(&path).map_err(io(&path))?;
    std::io::copy(&mut src, &mut dst).map_err(io(&path))?;
    Ok(path)
}

/// A file of the run's work directory only the caller may read (0600),
/// truncated if it was there.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// result.json is small (docs/result.md); anything this big is not one.
const MAX_RESULT_BYTES: u64 = 16 << 20;

/// `OUT/task/result.json`, parsed.
pub fn read_result(
    task_dir: &OutDir,
    exit_code: i32,
) -> Result<serde_json::Value, OrchestrateError> {
    let result_path = task_dir.path().join("result.json");
    let bytes = task_dir
        .read("result.json", MAX_RESULT_BYTES)?
        .ok_or_else(|| OrchestrateError::NoResult {
            exit_code,
            path: result_path.clone(),
            dir: task_dir.path().to_path_buf(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| OrchestrateError::Io {
        path: result_path,
        source: std::io::Error::other(e),
    })
}

/// `--isolation strict` runs only with nothing in `not_isolated`.
pub fn refuse_gaps_when_strict(
    requested: Isolation,
    resolved: Isolation,
    gaps: &[String],
) -> Result<(), OrchestrateError> {
    if requested == Isolation::Strict && !gaps.is_empty() {
        return Err(OrchestrateError::NotStrict {
            isolation: resolved.as_str(),
            gaps: gaps.to_vec(),
        });
    }
    Ok(())
}

/// The time limits the supervisor enforces in a run: `--agent-timeout`
/// and `--grade-timeout` where given, else the task's own (task.json,
/// docs/images.md, with its defaults). install.sh and the agent share the
/// agent timeout (one deadline, docs/pipeline.md); grading has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub agent_sec: u64,
    pub grade_sec: u64,
}

impl Timeouts {
    /// What the host assumes of a task.json it could not read before the
    /// supervisor does (which then enforces the real ones): generous, so
    /// that the backstop never cuts a run that keeps to its timeouts.
    pub const UNREAD: Timeouts = Timeouts {
        agent_sec: 4 * 3600,
        grade_sec: 3600,
    };

    /// The task's timeouts, as [`crate::pipeline::task::parse_task`]
    /// reads them.
    pub fn of_task(task: &TaskSpec) -> Timeouts {
        Timeouts {
            agent_sec: task.agent_timeout_sec,
            grade_sec: task.grade.timeout_sec,
        }
    }

    /// The overrides where given, else `task`'s (else [`Timeouts::UNREAD`]).
    pub fn resolve(
        agent_sec: Option<u64>,
        grade_sec: Option<u64>,
        task: Option<Timeouts>,
    ) -> Timeouts {
        let task = task.unwrap_or(Timeouts::UNREAD);
        Timeouts {
            agent_sec: agent_sec.unwrap_or(task.agent_sec),
            grade_sec: grade_sec.unwrap_or(task.grade_sec),
        }
    }
}

/// What the backstop allows beyond the timeouts: the supervisor's own
/// work outside them (the workdir snapshot, the gateway's start (≤ 30 s),
/// the patch (≤ 2 min), the kills and sweeps (5 s each), the sandbox's
/// set-up and teardown).
pub const BACKSTOP_MARGIN: Duration = Duration::from_secs(10 * 60);

/// How long the host waits for a session before it kills it. The
/// supervisor enforces the timeouts; this only catches a supervisor that
/// hangs. Every session gets the whole run's budget (install.sh and the
/// agent, grading, and the margin), so no session is cut short by it.
pub fn backstop(t: Timeouts) -> Duration {
    Duration::from_secs(t.agent_sec.saturating_add(t.grade_sec)).saturating_add(BACKSTOP_MARGIN)
}

/// The timeouts of the task a run will pick (`requested`, or the only
/// one), from the directory names under `/tasks` (`available`) and a
/// reader of one's `task.json` (at most [`MAX_TASK_BYTES`]); `None` when
/// the task cannot be chosen, read or parsed, which the supervisor then
/// reports.
pub fn task_timeouts(
    requested: Option<&str>,
    available: &[String],
    read: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Option<Timeouts> {
    let id = choose_task(requested, available).ok()?;
    let bytes = read(&id)?;
    parse_task(&id, &bytes).ok().map(|t| Timeouts::of_task(&t))
}

/// [`task_timeouts`] of the tree `root` (a session's rootfs), read
/// beneath it as the supervisor will (no link followed, no FIFO opened).
pub fn tree_task_timeouts(root: &Path, requested: Option<&str>) -> Option<Timeouts> {
    use crate::beneath::{child_dir, open_dir, Access};
    use rustix::fs::{FileType, Mode, OFlags};
    use std::os::fd::AsFd;
    let top = std::fs::File::open(root).ok()?;
    let tasks = open_dir(top.as_fd(), &["tasks"], false, Access::Read).ok()?;
    let mut available: Vec<String> = crate::unpack::fsops::list(tasks.as_fd())
        .ok()?
        .into_iter()
        .filter(|n| child_dir(tasks.as_fd(), n, Access::Path).is_ok())
        .filter_map(|n| String::from_utf8(n).ok())
        .collect();
    available.sort();
    task_timeouts(requested, &available, |id| {
        let dir = child_dir(tasks.as_fd(), id.as_bytes(), Access::Path).ok()?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, "task.json", flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        read_at_most(std::fs::File::from(fd), MAX_TASK_BYTES)
    })
}

/// [`task_timeouts`] from a tar of `/tasks` (what `docker cp
/// CONTAINER:/tasks -` writes: `tasks/ID/` and `tasks/ID/task.json`).
pub fn tar_task_timeouts(stream: impl std::io::Read, requested: Option<&str>) -> Option<Timeouts> {
    let mut available = Vec::new();
    let mut specs = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(stream).entries().ok()? {
        let entry = entry.ok()?;
        let path = entry.path().ok()?.into_owned();
        let parts: Vec<&str> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let kind = entry.header().entry_type();
        match parts.as_slice() {
            ["tasks", id] if kind.is_dir() => available.push(id.to_string()),
            ["tasks", id, "task.json"] if kind.is_file() => {
                let id = id.to_string();
                if let Some(bytes) = read_at_most(entry, MAX_TASK_BYTES) {
                    specs.insert(id, bytes);
                }
            }
            _ => {}
        }
    }
    available.sort();
    available.dedup();
    task_timeouts(requested, &available, |id| specs.remove(id))
}

/// All of `r` when it holds at most `max` bytes.
fn read_at_most(r: impl std::io::Read, max: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() <= max).then_some(bytes)
}

/// `OUT/run.json` (`hoist.run/v1`): how the run was made, the same type
/// in both modes.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub schema: &'static str,
    pub command_line: Vec<String>,
    pub mode: &'static str,
    pub isolation: &'static str,
    pub not_isolated: Vec<String>,
    /// Whether root in the sandbox was root of its own user namespace.
    pub user_namespace: bool,
    /// Set when an unprivileged user ran hoist: the user namespace hoist
    /// entered (whose root is that user) and its id mapping.
    pub rootless: Option<crate::userns::Rootless>,
    /// Entries of the rootfs hoist could not give the image's owner,
    /// device node or xattr (all zero as root, and rootless with
    /// subordinate ids for every owner in the image).
    pub not_reproduced: Fidelity,
    /// What bounded the run's processes, memory and files, and for a
    /// limit no cgroup could enforce, why (`not_applied`).
    pub limits: RunLimits,
    pub network: Network,
    /// How the first session's tree was built: `overlay` or `copy` (crane
    /// mode), `docker` (Docker's storage).
    pub rootfs: Tree,
    pub images: serde_json::Value,
    pub lock_file: Option<PathBuf>,
    pub host: HostInfo,
    pub hoist_version: &'static str,
    pub started_at: String,
    pub durations_ms: Durations,
    /// The last session's (`128 + signal` when a signal stopped it).
    pub supervisor_exit_code: i32,
    /// The signal that stopped the run, whose sandbox was killed.
    pub interrupted: Option<&'static str>,
    /// The sandbox sessions, in order: the agent's, then grading in a
    /// fresh rootfs (docs/pipeline.md, "Grade") unless the first ended the run.
    pub sessions: Vec<SessionRecord>,
    /// What the host copied out of the sandbox into `OUT/task`, and what
    /// it left behind (links, devices, ...) and why.
    pub output: ExportReport,
    /// Container mode: the image and the containers.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerFacts>,
}

/// How a tree was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tree {
    Overlay,
    Copy,
    Docker,
}

impl From<RootfsMode> for Tree {
    fn from(m: RootfsMode) -> Tree {
        match m {
            RootfsMode::Copy => Tree::Copy,
            // A materialized tree is never `auto`: it is resolved first.
            RootfsMode::Overlay | RootfsMode::Auto => Tree::Overlay,
        }
    }
}

/// What container mode adds to `run.json`.
#[derive(Debug, Serialize)]
pub struct DockerFacts {
    pub docker_containers: Vec<String>,
    pub docker_image: String,
    pub docker_image_id: String,
    pub docker_repo_digests: Vec<String>,
    pub combination_manifest_digest: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub kernel: String,
    pub machine: String,
    pub uid: u32,
}

/// The machine hoist runs on, as `run.json` states it.
pub fn host_info() -> HostInfo {
    let u = rustix::system::uname();
    HostInfo {
        kernel: u.release().to_string_lossy().into_owned(),
        machine: u.machine().to_string_lossy().into_owned(),
        // Rootless, the uid that ran hoist, not root of its namespace.
        uid: crate::userns::entered()
            .map(|r| r.host_uid)
            .unwrap_or_else(|| rustix::process::geteuid().as_raw()),
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Durations {
    pub pull: u64,
    pub materialize: u64,
    pub sandbox: u64,
    pub total: u64,
}

/// What the sessions add up to in `run.json`.
#[derive(Debug, Default)]
pub struct Totals {
    pub output: ExportReport,
    pub not_reproduced: Fidelity,
    pub materialize_ms: u64,
    pub sandbox_ms: u64,
    pub sessions: Vec<SessionRecord>,
    pub containers: Vec<String>,
    /// The last session's exit code and limits.
    pub exit_code: i32,
    pub limits: Option<RunLimits>,
}

pub fn totals(sessions: Vec<SessionRan>, interrupted: Option<Interrupted>) -> Totals {
    let mut t = Totals::default();
    for s in sessions {
        t.output.copied.extend(s.output.copied);
        t.output.skipped.extend(s.output.skipped);
        t.output.bytes += s.output.bytes;
        t.output.limit_reached |= s.output.limit_reached;
        t.not_reproduced.add(s.not_reproduced);
        t.materialize_ms += s.record.materialize_ms;
        t.sandbox_ms += s.record.sandbox_ms;
        t.exit_code = s.record.supervisor_exit_code;
        t.limits = s.limits.or(t.limits);
        t.containers.extend(s.containers);
        t.sessions.push(s.record);
    }
    if let Some(sig) = interrupted {
        t.exit_code = 128 + sig.0;
    }
    if !t.output.skipped.is_empty() {
        tracing::warn!(skipped = ?t.output.skipped, "entries of the sandbox's /output/task were not copied");
    }
    t
}

/// Write the record as `name` (`run.json`, or `regrade.json` beside a
/// saved run's own) into `out`, through the safe copy-out; then read the
/// run's result.
pub fn finish(
    out: &OutDir,
    task_dir: &OutDir,
    name: &str,
    record: &RunRecord,
) -> Result<serde_json::Value, OrchestrateError> {
    let bytes =
        crate::json::to_vec_pretty(record, "the run record").map_err(|e| OrchestrateError::Io {
            path: out.path().join(name),
            source: e.into(),
        })?;
    export::write_file(out, name, &bytes)?;
    read_result(task_dir, record.supervisor_exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(name: &'static str, exit: i32, copied: &[&str]) -> SessionRan {
        SessionRan {
            record: SessionRecord {
                session: name,
                rootfs: Some(RootfsMode::Overlay),
                materialize_ms: 10,
                sandbox_ms: 100,
                supervisor_exit_code: exit,
            },
            limits: None,
            not_reproduced: Fidelity::default(),
            output: ExportReport {
                copied: copied.iter().map(|s| s.to_string()).collect(),
                bytes: 5,
                ..ExportReport::default()
            },
            containers: vec![format!("c-{name}")],
        }
    }

    #[test]
    fn totals_add_the_sessions_and_keep_the_last_exit_code() {
        let t = totals(
            vec![
                ran("agent", 0, &["agent.json"]),
                ran("grade", 3, &["result.json"]),
            ],
            None,
        );
        assert_eq!(t.exit_code, 3);
        assert_eq!(t.materialize_ms, 20);
        assert_eq!(t.sandbox_ms, 200);
        assert_eq!(t.output.copied, ["agent.json", "result.json"]);
        assert_eq!(t.output.bytes, 10);
        assert_eq!(t.containers, ["c-agent", "c-grade"]);
        let names: Vec<_> = t.sessions.iter().map(|s| s.session).collect();
        assert_eq!(names, ["agent", "grade"]);
    }

    #[test]
    fn the_backstop_is_the_runs_timeouts_and_the_margin() {
        let t = Timeouts {
            agent_sec: 600,
            grade_sec: 300,
        };
        assert_eq!(backstop(t), Duration::from_secs(900) + BACKSTOP_MARGIN);
        // A long task is never cut short: its own timeouts count.
        let long = Timeouts {
            agent_sec: 12 * 3600,
            grade_sec: 2 * 3600,
        };
        assert!(backstop(long) > Duration::from_secs(14 * 3600));
        let huge = Timeouts {
            agent_sec: u64::MAX,
            grade_sec: 1,
        };
        assert!(backstop(huge) >= Duration::from_secs(u64::MAX));
    }

    #[test]
    fn overrides_win_over_the_task() {
        let own = Timeouts {
            agent_sec: 600,
            grade_sec: 300,
        };
        let task = Some(own);
        assert_eq!(Timeouts::resolve(None, None, task), own);
        assert_eq!(
            Timeouts::resolve(Some(5), None, task),
            Timeouts {
                agent_sec: 5,
                grade_sec: 300
            }
        );
        assert_eq!(
            Timeouts::resolve(None, Some(7), None),
            Timeouts {
                agent_sec: Timeouts::UNREAD.agent_sec,
                grade_sec: 7
            }
        );
    }

    const TASK: &str = r#"{"id": "a", "instruction": "x", "workdir": "/w",
        "agent_timeout_sec": 7200, "grade": {"command": ["/g"], "timeout_sec": 60}}"#;

    #[test]
    fn the_task_a_run_picks_gives_its_timeouts() {
        let one = ["a".to_string()];
        let read = |id: &str| (id == "a").then(|| TASK.as_bytes().to_vec());
        let want = Some(Timeouts {
            agent_sec: 7200,
            grade_sec: 60,
        });
        assert_eq!(task_timeouts(None, &one, read), want);
        assert_eq!(task_timeouts(Some("a"), &one, read), want);
        // Defaults for what task.json leaves out.
        let bare =
            r#"{"id": "a", "instruction": "x", "workdir": "/w", "grade": {"command": ["/g"]}}"#;
        assert_eq!(
            task_timeouts(None, &one, |_| Some(bare.as_bytes().to_vec())),
            Some(Timeouts {
                agent_sec: crate::pipeline::task::DEFAULT_AGENT_TIMEOUT_SEC,
                grade_sec: crate::pipeline::task::DEFAULT_GRADE_TIMEOUT_SEC,
            })
        );
        // Nothing to go by: the supervisor will say why.
        let two = ["a".to_string(), "b".to_string()];
        assert_eq!(task_timeouts(None, &two, read), None);
        assert_eq!(task_timeouts(Some("c"), &one, read), None);
        assert_eq!(task_timeouts(None, &one, |_| None), None);
        assert_eq!(task_timeouts(None, &one, |_| Some(b"{".to_vec())), None);
    }

    #[test]
    fn a_trees_task_is_read_beneath_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("tasks/a")).unwrap();
        std::fs::write(root.join("tasks/a/task.json"), TASK).unwrap();
        std::fs::write(root.join("tasks/README"), "not a task").unwrap();
        let want = Some(Timeouts {
            agent_sec: 7200,
            grade_sec: 60,
        });
        assert_eq!(tree_task_timeouts(root, None), want);
        // A task directory that is a link is not one, as the supervisor
        // lists them; a task.json that is a link is not read.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join("tasks/b")).unwrap();
        assert_eq!(tree_task_timeouts(root, None), want);
        assert_eq!(tree_task_timeouts(root, Some("b")), None);
        std::fs::remove_file(root.join("tasks/a/task.json")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join("tasks/a/task.json")).unwrap();
        assert_eq!(tree_task_timeouts(root, None), None);
        assert_eq!(tree_task_timeouts(&root.join("none"), None), None);
    }

    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            match body {
                Some(text) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(text.len() as u64);
                    h.set_mode(0o600);
                    b.append_data(&mut h, path, text.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o700);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_containers_task_is_read_from_docker_cps_tar() {
        let other = TASK.replace("\"a\"", "\"b\"").replace("7200", "5");
        let tar = tar_of(&[
            ("tasks/", None),
            ("tasks/a/", None),
            ("tasks/a/task.json", Some(TASK)),
            ("tasks/a/notes.md", Some("x")),
            ("tasks/b/", None),
            ("tasks/b/task.json", Some(&other)),
        ]);
        assert_eq!(
            tar_task_timeouts(&tar[..], Some("a")),
            Some(Timeouts {
                agent_sec: 7200,
                grade_sec: 60
            })
        );
        assert_eq!(tar_task_timeouts(&tar[..], Some("b")).unwrap().agent_sec, 5);
        // Two tasks and none asked for: the supervisor says which.
        assert_eq!(tar_task_timeouts(&tar[..], None), None);
        assert_eq!(tar_task_timeouts(&b"not a tar"[..], None), None);
    }

    #[test]
    fn the_record_type_serialises_docker_facts_flat() {
        let d = DockerFacts {
            docker_containers: vec!["a".into()],
            docker_image: "i".into(),
            docker_image_id: "sha256:1".into(),
            docker_repo_digests: vec![],
            combination_manifest_digest: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["docker_containers"][0], "a");
        assert_eq!(serde_json::to_value(Tree::Docker).unwrap(), "docker");
    }
}
