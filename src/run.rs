//! `hoist run --mode crane` on the host (DESIGN §3–§5): pull every axis by
//! digest, check the lock file, materialize the fused rootfs, run the
//! supervisor in the sandbox, and write `OUT/run.json` beside the task's
//! `OUT/task/result.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::export::{self, ExportError, ExportReport, OutDir};
use crate::lock::{LockError, LockFile};
use crate::pipeline::clock::rfc3339;
use crate::pipeline::context::{self as ctx, RunContext};
use crate::pull::Pulled;
use crate::rootfs::{self, Axes, Materialized, RootfsError, RootfsMode};
use crate::sandbox::cgroup::RunLimits;
use crate::sandbox::{self, Isolation, Limits, Network, SandboxConfig, SandboxError};
use crate::store::Store;

/// What the caller decided; the images are already pulled.
pub struct RunRequest<'a> {
    pub benchmark: &'a Pulled,
    /// What runs before grading.
    pub agents: Agents<'a>,
    pub task: Option<String>,
    pub out: PathBuf,
    pub isolation: Isolation,
    pub network: Network,
    pub rootfs: RootfsMode,
    pub recordings: Option<PathBuf>,
    pub agent_timeout_sec: Option<u64>,
    pub grade_timeout_sec: Option<u64>,
    /// `--memory`: the run's memory in bytes; the run fails rather than
    /// go without it.
    pub memory: Option<u64>,
    /// The static hoist binary to run inside the sandbox.
    pub hoist_binary: PathBuf,
    /// The lock file checked (`--locked`) or used, for run.json.
    pub lock_file: Option<PathBuf>,
    pub command_line: Vec<String>,
    pub pull_ms: u64,
}

/// What runs before grading.
pub enum Agents<'a> {
    /// `hoist run`: the agent (and the gateway) in the first session.
    Run {
        agent: &'a Pulled,
        gateway: Option<&'a Pulled>,
    },
    /// `hoist grade OUT`: no agent; the grading session of a saved run.
    Regrade(Regrade),
}

/// `hoist grade OUT`: what a saved run hands to its grading session.
pub struct Regrade {
    /// The saved `OUT/task/agent.json`.
    pub phase: ctx::AgentPhase,
    /// The saved run's `OUT/task`, which holds its `changes.tar`.
    pub saved: PathBuf,
    /// The saved run.json's `images`: result.json names the same three.
    pub images: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Lock(#[from] LockError),
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
    #[error("the agent session left no changes.tar in {dir} (was it over HOIST_OUTPUT_MAX_BYTES? see run.json output.skipped); the task cannot be graded")]
    NoChanges { dir: PathBuf },
    #[error("namespaces isolation is not available here (the probe could not unshare and mount); use --isolation chroot or auto")]
    NoNamespaces,
    #[error("--isolation strict: this host cannot confine the run fully ({isolation} isolation): {}", gaps.join("; "))]
    NotStrict {
        isolation: &'static str,
        gaps: Vec<String>,
    },
    #[error("the agent cannot run as a user of its own: hoist's user namespace maps only your uid ({0}); give your user subordinate ids (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`, package uidmap) or run as root")]
    OnlyRootMapped(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `OUT/run.json`: how the run was made.
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
    pub not_reproduced: crate::rootfs::Fidelity,
    /// What bounded the run's processes, memory and files, and for a
    /// limit no cgroup could enforce, why (`not_applied`).
    pub limits: RunLimits,
    pub network: Network,
    pub rootfs: RootfsMode,
    pub images: serde_json::Value,
    pub lock_file: Option<PathBuf>,
    pub host: HostInfo,
    pub hoist_version: &'static str,
    pub started_at: String,
    pub durations_ms: Durations,
    pub supervisor_exit_code: i32,
    /// The sandbox sessions, in order: the agent's, then grading in a
    /// fresh rootfs (DESIGN §3 step 7) unless the first ended the run.
    pub sessions: Vec<SessionRecord>,
    /// What the host copied out of the sandbox into `OUT/task`, and what
    /// it left behind (links, devices, ...) and why.
    pub output: ExportReport,
}

#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub kernel: String,
    pub machine: String,
    pub uid: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct Durations {
    pub pull: u64,
    pub materialize: u64,
    pub sandbox: u64,
    pub total: u64,
}

/// Check each axis's resolved digest against `lock`.
pub fn check_lock(
    lock: &LockFile,
    path: &Path,
    axes: &[(&str, &Pulled, &str)],
) -> Result<(), LockError> {
    for (axis, pulled, reference) in axes {
        lock.check(axis, reference, &pulled.digest, path)?;
    }
    Ok(())
}

/// The isolation to use (`auto` takes namespaces when the probe works)
/// and whether the sandbox can enter a user namespace, from the probes
/// (cached in the store, see [`sandbox::probe_cached`]).
pub fn resolve_isolation(
    requested: Isolation,
    hoist_binary: &Path,
    store: &Store,
) -> Result<(Isolation, bool), RunError> {
    let probed = sandbox::probe_cached(hoist_binary, store);
    let works = probed.namespaces.is_ok();
    let isolation = match requested {
        Isolation::Auto | Isolation::Strict if works => Isolation::Namespaces,
        Isolation::Auto | Isolation::Strict => Isolation::Chroot,
        Isolation::Namespaces if !works => return Err(RunError::NoNamespaces),
        other => other,
    };
    Ok((
        isolation,
        isolation == Isolation::Namespaces && probed.user_namespace,
    ))
}

/// Run one task; returns the parsed result.json and the run record.
pub fn run(
    store: &Store,
    req: &RunRequest<'_>,
) -> Result<(serde_json::Value, RunRecord), RunError> {
    let started = Instant::now();
    let started_at = rfc3339(SystemTime::now());
    // With only root mapped, the agent would have to be root, and could
    // read the hidden tests: refuse before doing any work.
    if let Some(why) = crate::userns::entered().and_then(|r| r.limitation.as_ref()) {
        return Err(RunError::OnlyRootMapped(why.clone()));
    }
    let (isolation, user_namespace) = resolve_isolation(req.isolation, &req.hoist_binary, store)?;
    let not_isolated = isolation.not_isolated(req.network);
    refuse_gaps_when_strict(req.isolation, isolation, &not_isolated)?;
    // chroot cannot mount: the rootfs must be a plain copy.
    let rootfs_mode = if isolation == Isolation::Chroot {
        RootfsMode::Copy
    } else {
        req.rootfs
    };

    let out = OutDir::open(&req.out)?;
    let task_dir = out.subdir("task")?;
    // A regrade may write into the run it grades: its hand-over stays.
    let stale: &[&str] = match req.agents {
        Agents::Run { .. } => &["result.json", "agent.json", "changes.tar"],
        Agents::Regrade(_) => &["result.json"],
    };
    for name in stale {
        task_dir.remove(name)?;
    }
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(store_work_dir(store)?)
        .map_err(io(store.root()))?;
    let images = match &req.agents {
        Agents::Run { agent, gateway } => crate::pull::images_json(req.benchmark, agent, *gateway),
        Agents::Regrade(r) => r.images.clone(),
    };
    let plan = Plan {
        store,
        req,
        images: &images,
        isolation,
        user_namespace,
        rootfs_mode,
        work: work.path(),
        task_dir: &task_dir,
    };
    let mut sessions = Vec::new();
    let (phase, changes) = match &req.agents {
        Agents::Run { agent, gateway } => {
            // Session 1: install.sh, the gateway and the agent, in the
            // fused tree.
            let axes = Axes {
                benchmark: req.benchmark,
                agent: Some(*agent),
                gateway: None,
            };
            let inputs = Inputs {
                gateway: *gateway,
                changes: None,
            };
            sessions.push(plan.session("agent", &axes, ctx::Session::Agent, 0, inputs)?);
            match agent_phase(&task_dir, sessions[0].exit_code)? {
                Some(phase) => (Some(phase), plan.private_changes(&task_dir)?),
                None => (None, PathBuf::new()),
            }
        }
        Agents::Regrade(r) => {
            let saved = OutDir::open(&r.saved)?;
            (Some(r.phase.clone()), plan.private_changes(&saved)?)
        }
    };
    // Session 2 (DESIGN §3 step 7): unless the first ended the run, grade
    // in a fresh rootfs of the benchmark alone plus the agent's changes.
    if let Some(phase) = phase {
        let axes = Axes {
            benchmark: req.benchmark,
            agent: None,
            gateway: None,
        };
        let before = sessions.first().map_or(0, |s| s.materialize_ms);
        let grade = ctx::Session::Grade(phase);
        let inputs = Inputs {
            gateway: None,
            changes: Some(&changes),
        };
        sessions.push(plan.session("grade", &axes, grade, before, inputs)?);
    }
    let last = sessions.last().expect("one session at least");
    let (exit_code, limits) = (last.exit_code, last.limits.clone());
    let mut output = ExportReport::default();
    let mut not_reproduced = crate::rootfs::Fidelity::default();
    let mut durations = Durations {
        pull: req.pull_ms,
        total: req.pull_ms + started.elapsed().as_millis() as u64,
        ..Durations::default()
    };
    for s in &sessions {
        output.copied.extend(s.output.copied.iter().cloned());
        output.skipped.extend(s.output.skipped.iter().cloned());
        output.bytes += s.output.bytes;
        not_reproduced.add(s.not_reproduced);
        durations.materialize += s.materialize_ms;
        durations.sandbox += s.sandbox_ms;
    }
    if !output.skipped.is_empty() {
        tracing::warn!(skipped = ?output.skipped, "entries of the sandbox's /output/task were not copied");
    }

    let record = RunRecord {
        schema: "hoist.run/v1",
        command_line: req.command_line.clone(),
        mode: "crane",
        isolation: isolation.as_str(),
        not_isolated,
        user_namespace,
        rootless: crate::userns::entered().cloned(),
        not_reproduced,
        limits,
        network: req.network,
        rootfs: sessions[0].rootfs,
        images,
        lock_file: req.lock_file.clone(),
        host: host_info(),
        hoist_version: env!("CARGO_PKG_VERSION"),
        started_at,
        durations_ms: durations,
        supervisor_exit_code: exit_code,
        sessions: sessions.iter().map(Session::record).collect(),
        output,
    };
    // A regrade keeps the run's own record beside its own.
    let name = match req.agents {
        Agents::Run { .. } => "run.json",
        Agents::Regrade(_) => "regrade.json",
    };
    export::write_file(
        &out,
        name,
        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
    )?;
    let value = read_result(&task_dir, exit_code)?;
    Ok((value, record))
}

/// The agent session's hand-over, `OUT/task/agent.json`, when it wrote one
/// (it writes result.json instead when the run ended there).
pub fn agent_phase(task_dir: &OutDir, exit_code: i32) -> Result<Option<ctx::AgentPhase>, RunError> {
    if task_dir.read("result.json", 0)?.is_some() {
        return Ok(None);
    }
    let path = task_dir.path().join("agent.json");
    let bytes = task_dir
        .read("agent.json", ctx::MAX_AGENT_PHASE_BYTES)?
        .ok_or_else(|| RunError::NoResult {
            exit_code,
            path: task_dir.path().join("result.json"),
            dir: task_dir.path().to_path_buf(),
        })?;
    ctx::AgentPhase::from_json(&bytes)
        .map(Some)
        .map_err(|e| RunError::Io {
            path,
            source: std::io::Error::other(e),
        })
}

/// `OUT/task/result.json`, parsed.
pub fn read_result(task_dir: &OutDir, exit_code: i32) -> Result<serde_json::Value, RunError> {
    let result_path = task_dir.path().join("result.json");
    let bytes = task_dir
        .read("result.json", MAX_RESULT_BYTES)?
        .ok_or_else(|| RunError::NoResult {
            exit_code,
            path: result_path.clone(),
            dir: task_dir.path().to_path_buf(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| RunError::Io {
        path: result_path,
        source: std::io::Error::other(e),
    })
}

/// What a session gets besides its tree.
#[derive(Default)]
struct Inputs<'a> {
    /// The gateway to run from a tree of its own (the agent session).
    gateway: Option<&'a Pulled>,
    /// The agent session's changes (the grading session).
    changes: Option<&'a Path>,
}

fn take_down(m: &Materialized) {
    if let Err(e) = rootfs::teardown(m) {
        tracing::warn!(error = %e, root = %m.root.display(), "could not take down a rootfs");
    }
}

/// What every session of a run shares.
struct Plan<'a> {
    store: &'a Store,
    req: &'a RunRequest<'a>,
    images: &'a serde_json::Value,
    isolation: Isolation,
    user_namespace: bool,
    rootfs_mode: RootfsMode,
    /// The run's private work directory in the store.
    work: &'a Path,
    task_dir: &'a OutDir,
}

/// One sandbox session of a run, as it went.
struct Session {
    name: &'static str,
    rootfs: RootfsMode,
    materialize_ms: u64,
    sandbox_ms: u64,
    exit_code: i32,
    limits: RunLimits,
    not_reproduced: crate::rootfs::Fidelity,
    output: ExportReport,
}

/// One session in `run.json`.
#[derive(Debug, Serialize)]
pub struct SessionRecord {
    pub session: &'static str,
    /// How crane mode built the session's tree; null in container mode
    /// (Docker's storage builds it).
    pub rootfs: Option<RootfsMode>,
    pub materialize_ms: u64,
    pub sandbox_ms: u64,
    pub supervisor_exit_code: i32,
}

impl Session {
    fn record(&self) -> SessionRecord {
        SessionRecord {
            session: self.name,
            rootfs: Some(self.rootfs),
            materialize_ms: self.materialize_ms,
            sandbox_ms: self.sandbox_ms,
            supervisor_exit_code: self.exit_code,
        }
    }
}

impl Plan<'_> {
    /// Materialize `axes` into a fresh tree, run the supervisor's
    /// `session` in it, copy its `/output/task` into `OUT/task`, take the
    /// tree down. `materialized_before`: the earlier sessions' time, so
    /// result.json's `materialize` covers the run.
    fn session(
        &self,
        name: &'static str,
        axes: &Axes<'_>,
        session: ctx::Session,
        materialized_before: u64,
        inputs: Inputs<'_>,
    ) -> Result<Session, RunError> {
        let dir = self.work.join(name);
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let rootfs_dir = dir.join("rootfs");
        // The sandbox's /output: never --out (DESIGN, threat model). With
        // namespaces, a directory of the session's own (0700, in the 0700
        // work dir) bound there; in chroot, the rootfs copy's own /output.
        let private = private_output(&dir, self.isolation, &rootfs_dir)?;
        let t = Instant::now();
        let m = rootfs::materialize(self.store, axes, &rootfs_dir, self.rootfs_mode, false)?;
        // The gateway's own tree: the benchmark and the gateway, never the
        // agent, which the run's tree holds instead.
        let gateway = match inputs.gateway {
            Some(g) => {
                let gateway_axes = Axes {
                    benchmark: axes.benchmark,
                    agent: None,
                    gateway: Some(g),
                };
                let at = dir.join("gateway-rootfs");
                match rootfs::materialize(self.store, &gateway_axes, &at, self.rootfs_mode, false) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        take_down(&m);
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        let materialize_ms = t.elapsed().as_millis() as u64;
        let result = run_in(
            self,
            &m,
            session,
            materialized_before + materialize_ms,
            (&dir, &private.dir),
            (inputs.changes, gateway.as_ref().map(|g| g.root.as_path())),
        );
        // Whatever the sandbox returned, and before the rootfs (chroot's
        // /output) is taken down: the logs explain a failure too.
        let exported = export::copy_out(&private.base, private.rel, self.task_dir);
        take_down(&m);
        // A copy was moved into the rootfs by the chroot stage and went
        // with it; an overlay is unmounted here.
        if let Some(g) = gateway.filter(|g| g.root.exists()) {
            take_down(&g);
        }
        match (result, exported) {
            (Ok((exit_code, sandbox_ms, limits)), Ok(output)) => Ok(Session {
                name,
                rootfs: m.mode,
                materialize_ms,
                sandbox_ms,
                exit_code,
                limits,
                not_reproduced: m.not_reproduced,
                output,
            }),
            (Err(e), exported) => {
                if let Err(x) = exported {
                    tracing::warn!(error = %x, "could not copy the sandbox's output");
                }
                Err(e)
            }
            (Ok(_), Err(x)) => Err(x.into()),
        }
    }

    /// The agent session's `changes.tar`, copied from `dir` (opened
    /// without following a link) to a private file of the run's, which the
    /// grading session gets read-only.
    fn private_changes(&self, dir: &OutDir) -> Result<PathBuf, RunError> {
        let path = self.work.join("changes.tar");
        let mut src = dir
            .open_file("changes.tar")?
            .ok_or_else(|| RunError::NoChanges {
                dir: dir.path().to_path_buf(),
            })?;
        let mut dst = create_private(&path)?;
        std::io::copy(&mut src, &mut dst).map_err(io(&path))?;
        Ok(path)
    }
}

/// `--isolation strict` runs only with nothing in `not_isolated`.
pub fn refuse_gaps_when_strict(
    requested: Isolation,
    resolved: Isolation,
    gaps: &[String],
) -> Result<(), RunError> {
    if requested == Isolation::Strict && !gaps.is_empty() {
        return Err(RunError::NotStrict {
            isolation: resolved.as_str(),
            gaps: gaps.to_vec(),
        });
    }
    Ok(())
}

fn run_in(
    plan: &Plan<'_>,
    m: &Materialized,
    session: ctx::Session,
    materialize_ms: u64,
    (work, output): (&Path, &Path),
    (changes, gateway_root): (Option<&Path>, Option<&Path>),
) -> Result<(i32, u64, RunLimits), RunError> {
    let (req, isolation) = (plan.req, plan.isolation);
    let agent = session == ctx::Session::Agent;
    let context = RunContext {
        images: serde_json::from_value(plan.images.clone()).unwrap_or_default(),
        platform: req.benchmark.platform.to_string(),
        mode: ctx::Mode::Crane,
        isolation: match isolation {
            Isolation::Chroot => ctx::Isolation::Chroot,
            _ => ctx::Isolation::Namespaces,
        },
        network: match req.network {
            Network::None => ctx::Network::None,
            Network::Host => ctx::Network::Host,
        },
        recordings: agent && req.recordings.is_some(),
        materialize_ms,
        agent_timeout_sec: req.agent_timeout_sec,
        grade_timeout_sec: req.grade_timeout_sec,
        gateway_port: ctx::gateway_port(
            isolation == Isolation::Chroot || req.network == Network::Host,
        ),
        strict: req.isolation == Isolation::Strict,
        landlock_abi_max: crate::confine::abi_pin_from_env(),
        session,
        ..RunContext::default()
    };
    let context_path = work.join("context.json");
    write_private(
        &context_path,
        &serde_json::to_vec_pretty(&context).unwrap_or_default(),
    )?;
    let cfg = SandboxConfig {
        isolation,
        network: req.network,
        rootfs: m.root.clone(),
        output: output.to_path_buf(),
        recordings: req.recordings.clone().filter(|_| agent),
        hoist_binary: req.hoist_binary.clone(),
        context: context_path,
        changes: changes.map(Path::to_path_buf),
        gateway_root: gateway_root.map(Path::to_path_buf),
        task: req.task.clone(),
        limits: Limits {
            max_memory: req.memory,
            ..Limits::default()
        },
        user_namespace: plan.user_namespace,
    };
    // The supervisor enforces the task's timeouts; this backstop only
    // catches a supervisor that hangs.
    let backstop = Duration::from_secs(
        req.agent_timeout_sec.unwrap_or(4 * 3600) * 2 + req.grade_timeout_sec.unwrap_or(3600) + 300,
    );
    let outcome = sandbox::run(&cfg, &work.join("sandbox.json"), backstop)?;
    Ok((
        outcome.exit_code,
        outcome.elapsed.as_millis() as u64,
        outcome.limits,
    ))
}

/// result.json is small (DESIGN §4); anything this big is not one.
const MAX_RESULT_BYTES: u64 = 16 << 20;

/// Where the sandbox's `/output` is on the host: `dir` (what it sees as
/// `/output`), and the trusted directory `base` it is copied out of, with
/// the output's `task` at `rel` beneath it, resolved without links.
struct PrivateOutput {
    dir: PathBuf,
    base: PathBuf,
    rel: &'static str,
}

fn private_output(
    work: &Path,
    isolation: Isolation,
    rootfs: &Path,
) -> Result<PrivateOutput, RunError> {
    if isolation == Isolation::Chroot {
        // The chroot stage makes /output a real directory of the copy
        // (refusing a symlink the image put there); root in the sandbox may
        // change what is beneath, so it is read relative to the rootfs.
        return Ok(PrivateOutput {
            dir: rootfs.join("output"),
            base: rootfs.to_path_buf(),
            rel: "output/task",
        });
    }
    use std::os::unix::fs::DirBuilderExt;
    let dir = work.join("output");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    Ok(PrivateOutput {
        base: dir.clone(),
        dir,
        rel: "task",
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    use std::io::Write;
    create_private(path)?.write_all(bytes).map_err(io(path))
}

/// A new file only the caller may read (0600), truncated if it was there.
fn create_private(path: &Path) -> Result<std::fs::File, RunError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

fn store_work_dir(store: &Store) -> Result<PathBuf, RunError> {
    let d = store.root().join("work");
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    Ok(d)
}

fn host_info() -> HostInfo {
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
