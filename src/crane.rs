//! Crane mode on the host (docs/pipeline.md, docs/isolation.md), the daemonless
//! [`Backend`]: resolve the isolation, materialize each session's tree from the
//! store's cached layers, run the supervisor in the sandbox, copy its output
//! out. The sessions' order and `run.json` are `crate::orchestrate`'s; the
//! images are already pulled (and checked against the lock file) by the caller.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::export::{self, ExportError, OutDir};
use crate::lock::{LockError, LockFile};
use crate::orchestrate::{
    self, host_info, run_sessions, totals, Backend, Durations, OrchestrateError, RunRecord,
    SessionRan, SessionRecord, SessionSpec, Sessions, Start, Stopped, Timeouts,
};
use crate::phase::{self, Logs, Phase, PhaseHook};
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
    /// `--out`, claimed for this run (see [`OutDir::claim`]).
    pub out: &'a OutDir,
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
    /// Told as each phase begins (see [`crate::phase`]), for progress.
    pub phase: Option<PhaseHook>,
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
    #[error(transparent)]
    Orchestrate(#[from] OrchestrateError),
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    #[error("namespaces isolation is not available here (the probe could not unshare and mount); use --isolation chroot or auto")]
    NoNamespaces,
    #[error("the agent cannot run as a user of its own: hoist's user namespace maps only your uid ({0}); give your user subordinate ids (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`, package uidmap) or run as root")]
    OnlyRootMapped(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
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
    orchestrate::refuse_gaps_when_strict(req.isolation, isolation, &not_isolated)?;
    // chroot cannot mount: the rootfs must be a plain copy.
    let rootfs_mode = if isolation == Isolation::Chroot {
        RootfsMode::Copy
    } else {
        req.rootfs
    };

    // From here the run holds trees and a sandbox: a signal is the run's
    // to act on (kill, take down, say so in result.json).
    let _region = crate::interrupt::Region::enter()?;
    let out = req.out;
    let task_dir = out.subdir("task")?;
    let (images, start, agents) = match &req.agents {
        Agents::Run { agent, gateway } => (
            crate::pull::images_json(req.benchmark, agent, *gateway),
            Start::Agent,
            Some((*agent, *gateway)),
        ),
        Agents::Regrade(r) => (
            r.images.clone(),
            Start::Regrade {
                phase: r.phase.clone(),
                saved: r.saved.clone(),
            },
            None,
        ),
    };
    orchestrate::clear_stale(&task_dir, &start)?;
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(store_work_dir(store)?)
        .map_err(io(store.root()))?;
    let crane = Crane {
        store,
        req,
        agents,
        images: &images,
        isolation,
        user_namespace,
        rootfs_mode,
        work: work.path(),
    };
    let name = start.record_name();
    let facts = Stopped {
        task: req.task.as_deref(),
        images: &images,
        platform: req.benchmark.platform.to_string(),
        mode: "crane",
        isolation: isolation.as_str(),
        started_at: &started_at,
    };
    let Sessions {
        ran: sessions,
        interrupted,
    } = run_sessions(
        &crane,
        start,
        &task_dir,
        work.path(),
        &facts,
        req.phase.as_ref(),
    )?;
    let rootfs = sessions
        .first()
        .and_then(|s| s.record.rootfs)
        .unwrap_or(rootfs_mode);
    let t = totals(sessions, interrupted);
    let record = RunRecord {
        schema: "hoist.run/v1",
        command_line: req.command_line.clone(),
        mode: "crane",
        isolation: isolation.as_str(),
        not_isolated,
        user_namespace,
        rootless: crate::userns::entered().cloned(),
        not_reproduced: t.not_reproduced,
        // Every session states its own; the last one's.
        limits: t
            .limits
            .unwrap_or_else(|| RunLimits::rlimits_only(&run_limits(req))),
        network: req.network,
        rootfs: rootfs.into(),
        images,
        lock_file: req.lock_file.clone(),
        host: host_info(),
        hoist_version: env!("CARGO_PKG_VERSION"),
        started_at,
        durations_ms: Durations {
            pull: req.pull_ms,
            materialize: t.materialize_ms,
            sandbox: t.sandbox_ms,
            total: req.pull_ms + started.elapsed().as_millis() as u64,
        },
        supervisor_exit_code: t.exit_code,
        interrupted: interrupted.map(|s| s.name()),
        sessions: t.sessions,
        output: t.output,
        docker: None,
    };
    let value = orchestrate::finish(out, &task_dir, name, &record)?;
    Ok((value, record))
}

fn take_down(m: &Materialized) {
    if let Err(e) = rootfs::teardown(m) {
        tracing::warn!(error = %e, root = %m.root.display(), "could not take down a rootfs");
    }
}

/// Crane mode as a [`Backend`]: each session in a tree materialized for
/// it, in the sandbox.
struct Crane<'a> {
    store: &'a Store,
    req: &'a RunRequest<'a>,
    /// The agent and the gateway (`hoist run`; none for a regrade).
    agents: Option<(&'a Pulled, Option<&'a Pulled>)>,
    images: &'a serde_json::Value,
    isolation: Isolation,
    user_namespace: bool,
    rootfs_mode: RootfsMode,
    /// The run's private work directory in the store.
    work: &'a Path,
}

impl Backend for Crane<'_> {
    type Error = RunError;

    fn interruption(e: &RunError) -> Option<crate::interrupt::Interrupted> {
        match e {
            RunError::Sandbox(SandboxError::Interrupted(sig)) => Some(*sig),
            _ => None,
        }
    }

    /// Materialize the session's tree (the agent session: the benchmark
    /// and the agent, and the gateway's own tree beside it; grading: the
    /// benchmark alone), run the supervisor's session in it, copy its
    /// `/output/task` into `OUT/task`, take the trees down.
    fn session(&self, spec: &SessionSpec<'_>, task_dir: &OutDir) -> Result<SessionRan, RunError> {
        let (agent, gateway) = match (&spec.session, self.agents) {
            (ctx::Session::Agent, Some((a, g))) => (Some(a), g),
            _ => (None, None),
        };
        let axes = Axes {
            benchmark: self.req.benchmark,
            agent,
            gateway: None,
        };
        let name = spec.name;
        let dir = self.work.join(name);
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let rootfs_dir = dir.join("rootfs");
        // The sandbox's /output: never --out (docs/threat-model.md). With
        // namespaces, a directory of the session's own (0700, in the 0700
        // work dir) bound there; in chroot, the rootfs copy's own /output.
        let private = private_output(&dir, self.isolation, &rootfs_dir)?;
        // Grading's own tree is part of grading (announced by
        // run_sessions); the agent session's is the run's fusing.
        let hook = self.req.phase.as_ref();
        let agent_session = spec.session == ctx::Session::Agent;
        if agent_session {
            phase::enter(hook, Phase::Fuse);
        }
        let t = Instant::now();
        let m = rootfs::materialize(self.store, &axes, &rootfs_dir, self.rootfs_mode, false)?;
        // The gateway's own tree: the benchmark and the gateway, never the
        // agent, which the run's tree holds instead.
        let gateway = match gateway {
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
        // The task's own timeouts, read from the tree as the supervisor
        // will read them; unreadable, it fails on them itself.
        let task = orchestrate::tree_task_timeouts(&m.root, self.req.task.as_deref());
        let timeouts =
            Timeouts::resolve(self.req.agent_timeout_sec, self.req.grade_timeout_sec, task);
        tracing::debug!(?timeouts, read = task.is_some(), "the run's timeouts");
        let sandboxed = || {
            run_in(
                self,
                &m,
                spec.session.clone(),
                spec.materialized_before + materialize_ms,
                (&dir, &private.dir),
                (spec.changes, gateway.as_ref().map(|g| g.root.as_path())),
                orchestrate::backstop(timeouts),
            )
        };
        let result = match (agent_session, hook) {
            (true, Some(hook)) => {
                phase::enter(Some(hook), Phase::Install);
                // The supervisor writes the logs there as they grow; the
                // directory stays until the copy below.
                let logs = Logs::Readable {
                    base: &private.base,
                    rel: private.rel,
                };
                phase::logs(Some(hook), logs);
                let agent_log = private.base.join(private.rel).join("agent.log");
                let r = watch_agent_start(hook, &agent_log, sandboxed);
                phase::logs(Some(hook), Logs::Ended);
                r
            }
            _ => sandboxed(),
        };
        // Whatever the sandbox returned, and before the rootfs (chroot's
        // /output) is taken down: the logs explain a failure too.
        let exported = export::copy_out(&private.base, private.rel, task_dir);
        take_down(&m);
        // A copy was moved into the rootfs by the chroot stage and went
        // with it; an overlay is unmounted here.
        if let Some(g) = gateway.filter(|g| g.root.exists()) {
            take_down(&g);
        }
        match (result, exported) {
            (Ok((exit_code, sandbox_ms, limits)), Ok(output)) => Ok(SessionRan {
                record: SessionRecord {
                    session: name,
                    rootfs: Some(m.mode),
                    materialize_ms,
                    sandbox_ms,
                    supervisor_exit_code: exit_code,
                },
                limits: Some(limits),
                not_reproduced: m.not_reproduced,
                output,
                containers: Vec::new(),
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
}

/// How often the host looks for the agent's log while an agent session
/// runs under a [`PhaseHook`]: one stat, cheap next to any sandbox.
const AGENT_LOG_POLL: Duration = Duration::from_millis(250);

/// Run `session` (the agent session's sandbox), telling `hook`
/// [`Phase::Agent`] once `agent_log` exists in the session's private
/// output. install.sh and the agent run in one supervisor, which writes
/// nothing the host reads until it ends; but it creates `agent.log` just
/// before it starts the agent (and only if install.sh succeeded), and the
/// private output is fresh for each session. In chroot isolation that
/// output is the rootfs copy's own `/output`, which an image could have
/// shipped an `agent.log` in: the display would then say `agent` early,
/// nothing else. The watcher ends with the session.
fn watch_agent_start<R>(hook: &PhaseHook, agent_log: &Path, session: impl FnOnce() -> R) -> R {
    let (done, ended) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let watcher = std::thread::Builder::new()
            .name("agent-log-watch".into())
            .spawn_scoped(s, move || loop {
                // Nothing is ever sent: the sender is dropped when the
                // session ends, which ends the wait at once. One last look
                // then: a quick agent may have started and ended between
                // two polls, and its phase is still worth telling.
                let over = !matches!(
                    ended.recv_timeout(AGENT_LOG_POLL),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                if std::fs::symlink_metadata(agent_log).is_ok() {
                    phase::enter(Some(hook), Phase::Agent);
                    return;
                }
                if over {
                    return;
                }
            });
        if let Err(e) = watcher {
            // Progress is not worth failing the run over: it shows
            // `install` until grading.
            tracing::debug!(error = %e, "could not start the agent-log watcher");
        }
        let r = session();
        drop(done);
        r
    })
}

/// The sandbox's limits and `--memory`.
fn run_limits(req: &RunRequest<'_>) -> Limits {
    Limits {
        max_memory: req.memory,
        ..Limits::default()
    }
}

fn run_in(
    plan: &Crane<'_>,
    m: &Materialized,
    session: ctx::Session,
    materialize_ms: u64,
    (work, output): (&Path, &Path),
    (changes, gateway_root): (Option<&Path>, Option<&Path>),
    backstop: Duration,
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
    let bytes = crate::json::to_vec_pretty(&context, "the run context")
        .map_err(|e| io(&context_path)(e.into()))?;
    write_private(&context_path, &bytes)?;
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
        limits: run_limits(req),
        user_namespace: plan.user_namespace,
    };
    let outcome = sandbox::run(&cfg, &work.join("sandbox.json"), backstop)?;
    Ok((
        outcome.exit_code,
        outcome.elapsed.as_millis() as u64,
        outcome.limits,
    ))
}

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
    orchestrate::create_private(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io(path))
}

fn store_work_dir(store: &Store) -> Result<PathBuf, RunError> {
    let d = store.root().join("work");
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    Ok(d)
}
