//! The steps of docs/pipeline.md that start and stop processes. Each step
//! either records what happened in the [`Record`] or returns the infra error
//! that ends the run; [`Supervisor::cleanup`] runs whatever way it ended.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::changes::{self, Snapshot, Written};
use super::context::{Session, CHANGES_PATH};
use super::grade::read_grade_report;
use super::guard::Guard;
use super::health;
use super::jail;
use super::killuid::{self, kill_user_processes, KillError, Scope};
use super::process::{self, Finished, Reaper, Spec};
use super::root::{create_root_file, ensure_root_dir, remove_if_present, write_atomic, Root};
use super::task::{choose_task, parse_task, TaskError, TaskSpec, MAX_TASK_BYTES};
use super::users::{ensure_agent_user, AGENT_GID, AGENT_HOME, AGENT_UID};
use super::{infra, Record, RunContext};
use crate::confine::{self, NetFacts, Phase, Policy};
use crate::result::{AgentOutcome, InfraError, Stage};

/// The PATH of every child (Debian's default for root and users alike).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const AGENT_RUN: &str = "/opt/agent/run";
const AGENT_INSTALL: &str = "/opt/agent/install.sh";
const GATEWAY_RUN: &str = "/opt/gateway/run";
const RUN_DIR: &str = "/run/hoist";
const INSTRUCTION: &str = "/run/hoist/instruction.md";
const GRADE_OUT: &str = "/run/hoist/grade.json";
/// The gateway's private directory, the only place it may write.
const GATEWAY_DIR: &str = "/run/hoist/gateway";
/// The gateway's own tree (crane mode): the pristine benchmark and gateway
/// layers, which nothing of the agent's side can reach or has changed;
/// the gateway runs chrooted into it.
const GATEWAY_ROOT: &str = "/.hoist/gateway-root";
/// The static hoist inside the sandbox: every phase starts through its
/// `__confine` stage (a chroot has no `/proc/self/exe`).
const HOIST: &str = "/.hoist/hoist";

/// How long the gateway has to answer `/health` with 200.
const GATEWAY_READY: Duration = Duration::from_secs(30);
/// How long one `/health` request may take.
const HEALTH_PROBE: Duration = Duration::from_secs(1);
/// How long `git diff` of the workdir may take.
const PATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The workdir's changes since HEAD, untracked files included, through a
/// throwaway index and object directory, so the agent's repository stays
/// exactly as it left it (the grader sees it so). No pager, no
/// external diff or textconv driver, no hooks, no fsmonitor; a repository
/// without commits diffs against the empty tree.
const GIT_PATCH: &str = r#"set -e
g() { git -c core.fsmonitor=false -c core.hooksPath=/dev/null -c safe.directory='*' -c core.pager=cat "$@"; }
common=$(g rev-parse --path-format=absolute --git-common-dir)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
idx=$(g rev-parse --path-format=absolute --git-path index)
if [ -f "$idx" ]; then cp "$idx" "$tmp/index"; fi
# New objects go to the throwaway directory; the repository's are read.
export GIT_INDEX_FILE="$tmp/index" GIT_OBJECT_DIRECTORY="$tmp/objects" \
    GIT_ALTERNATE_OBJECT_DIRECTORIES="$common/objects" GIT_PAGER=cat GIT_OPTIONAL_LOCKS=0
mkdir "$tmp/objects"
g add -A
if base=$(g rev-parse --verify -q HEAD); then :; else base=$(g hash-object -t tree /dev/null); fi
g diff --cached --binary --no-ext-diff --no-textconv --no-color "$base"
"#;

/// How long the agent's processes have to vanish after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait the supervisor measures: a timeout past it (from
/// `--agent-timeout` or a task.json, up to `u64::MAX` seconds) never
/// comes, rather than overflowing the clock.
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

/// The instant `secs` after `start`, at most [`FOREVER`] after it.
fn deadline_after(start: Instant, secs: u64) -> Instant {
    // Cannot overflow: Linux's monotonic clock counts seconds since boot
    // in an i64, and FOREVER is 136 years.
    start + Duration::from_secs(secs).min(FOREVER)
}

pub struct Supervisor<'a> {
    root: &'a Root,
    ctx: &'a RunContext,
    /// `/output/task` under the root.
    out: PathBuf,
    reaper: Reaper,
    /// Which processes are the run's, for the sweeps.
    scope: Scope,
    /// The gateway's pid (its group id) while it runs.
    gateway: Option<i32>,
    pub rec: Record,
}

fn sandbox_err(e: &dyn std::error::Error) -> InfraError {
    infra(Stage::Sandbox, e)
}

fn message(stage: Stage, message: String) -> InfraError {
    InfraError { stage, message }
}

impl<'a> Supervisor<'a> {
    pub fn new(root: &'a Root, ctx: &'a RunContext, out: PathBuf, scope: Scope) -> Supervisor<'a> {
        Supervisor {
            root,
            ctx,
            out,
            reaper: Reaper::new(),
            scope,
            gateway: None,
            rec: Record::default(),
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.ctx.kill_grace_sec)
    }

    /// What this run shares with the rest of the machine.
    fn shared(&self) -> confine::Shared {
        confine::Shared::of(
            self.ctx.isolation == super::Isolation::Chroot,
            self.ctx.network == super::Network::Host,
        )
    }

    /// What the phases' policies depend on besides the phase.
    fn net_facts(&self) -> NetFacts {
        let shared = self.shared();
        NetFacts {
            private: !shared.network,
            private_ipc: !shared.pids,
            gateway: self.ctx.gateway_elsewhere
                || std::fs::symlink_metadata(self.gateway_tree().join(&GATEWAY_RUN[1..])).is_ok(),
            gateway_port: self.ctx.gateway_port,
            landlock_abi_max: self.ctx.landlock_abi_max,
        }
    }

    /// `--isolation strict`: no phase starts with less than the whole
    /// policy.
    fn refuse_gaps_when_strict(&self) -> Result<(), InfraError> {
        if !self.ctx.strict {
            return Ok(());
        }
        let gaps = confine::Support::probe(self.ctx.landlock_abi_max).gaps(self.shared());
        if gaps.is_empty() {
            return Ok(());
        }
        Err(message(
            Stage::Sandbox,
            format!(
                "--isolation strict: this kernel cannot confine the run fully: {}",
                gaps.join("; ")
            ),
        ))
    }

    /// The policy of `phase` in this run.
    fn policy(&self, phase: Phase) -> Policy {
        let mut p = Policy::for_phase(phase, &self.root.path("/"), &self.net_facts());
        if !self.root.is_slash() {
            // Tests run the supervisor on a scratch tree (`--root`), where
            // programs' interpreters and libraries are the host's own.
            let host = |path: &str, write| confine::ruleset::Grant {
                path: path.into(),
                write,
            };
            p.host = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc"]
                .map(|d| host(d, false))
                .into_iter()
                .chain(["/dev/null", "/dev/zero", "/dev/urandom"].map(|d| host(d, true)))
                .collect();
        }
        p
    }

    /// The program and arguments that run `program args` as `phase`:
    /// through hoist's `__confine` stage.
    fn confined(
        &self,
        phase: Phase,
        program: &Path,
        args: Vec<OsString>,
    ) -> Result<(PathBuf, Vec<OsString>), InfraError> {
        let args = self
            .policy(phase)
            .wrap(program, args)
            .map_err(|e| sandbox_err(&e))?;
        Ok((self.hoist_binary(), args))
    }

    /// `/.hoist/hoist` in the sandbox; this binary when tests run the
    /// supervisor on a scratch tree without one.
    fn hoist_binary(&self) -> PathBuf {
        let inside = self.root.path(HOIST);
        if inside.is_file() || self.root.is_slash() {
            return inside;
        }
        std::env::current_exe().unwrap_or(inside)
    }

    fn finish(&mut self, pid: i32, deadline: Instant) -> Finished {
        let grace = self.grace();
        process::run_to_deadline(&mut self.reaper, pid, deadline, grace)
    }

    /// The session the context names (docs/pipeline.md; see [`Session`]). An
    /// `Err` ends the run with that infra error; an agent session returns
    /// what it wrote to `changes.tar`.
    pub fn execute(&mut self, requested: Option<&str>) -> Result<Option<Written>, InfraError> {
        // Inherited by every child: nothing the agent brings (setuid
        // binaries, file capabilities) can raise its privileges.
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| sandbox_err(&std::io::Error::from(e)))?;
        // A root grader shares root's uid with this process in chroot
        // isolation: it must not be able to trace it.
        confine::not_dumpable().map_err(|e| sandbox_err(&e))?;
        self.refuse_gaps_when_strict()?;
        // Before anything starts: a run whose leftovers could not be
        // ended must not begin.
        if let Scope::Unknown { why } = &self.scope {
            return Err(message(
                Stage::Sandbox,
                format!("cannot tell this run's processes from others': {why}"),
            ));
        }
        // Outside a pid namespace of its own, the run's processes are the
        // supervisor's descendants: orphans must come back to it, not to
        // an init whose other children are not the run's.
        if let Err(e) = process::become_subreaper() {
            if !matches!(self.scope, Scope::Namespace(_)) {
                return Err(message(
                    Stage::Sandbox,
                    format!("cannot become a child subreaper: {e}"),
                ));
            }
        }
        match &self.ctx.session {
            Session::Whole => {
                let (task, workdir, _) = self.agent_session(requested, false)?;
                self.grade(&task, &workdir).map(|()| None)
            }
            Session::Agent => {
                let (task, workdir, before) = self.agent_session(requested, true)?;
                let before = before.unwrap_or_default();
                self.save_changes(&task, &workdir, &before).map(Some)
            }
            Session::Gateway => self.serve_gateway().map(|()| None),
            Session::Grade(phase) => {
                let task = self.load_task(Some(&phase.task_id))?;
                ensure_agent_user(self.root).map_err(|e| sandbox_err(&e))?;
                let workdir = self.workdir(&task)?;
                self.apply_changes(&workdir)?;
                self.grade(&task, &workdir).map(|()| None)
            }
        }
    }

    /// docs/pipeline.md steps 1–6: the task, install.sh, the gateway and the
    /// agent; then nothing of theirs runs. With `snapshot`, what the
    /// workdir held before anything untrusted ran, to tell its changes.
    fn agent_session(
        &mut self,
        requested: Option<&str>,
        snapshot: bool,
    ) -> Result<(TaskSpec, PathBuf, Option<Snapshot>), InfraError> {
        let task = self.load_task(requested)?;
        self.rec.task_id = task.id.clone();
        ensure_agent_user(self.root).map_err(|e| sandbox_err(&e))?;
        let workdir = self.check_rootfs(&task)?;
        let before = match snapshot {
            true => Some(Snapshot::take(&workdir).map_err(|e| {
                message(
                    Stage::Sandbox,
                    format!("cannot read the workdir {}: {e}", task.workdir),
                )
            })?),
            false => None,
        };
        let timeout = self.ctx.agent_timeout_sec.unwrap_or(task.agent_timeout_sec);
        let started = Instant::now();
        let deadline = deadline_after(started, timeout);
        let guard = self.guard_hidden()?;
        let installed = self.install(&task, &workdir, deadline)?;
        // Root processes install.sh left behind must not see the agent run.
        killuid::sweep(&self.scope, &mut self.reaper, KILL_TIMEOUT);
        self.restore_hidden(guard)?;
        self.start_gateway()?;
        self.write_instruction(&task)?;
        if installed {
            self.run_agent(&task, &workdir, deadline)?;
        }
        self.rec.agent_ms = millis(started.elapsed());
        self.end_agent_phase()?;
        self.save_patch(&task, &workdir)?;
        Ok((task, workdir, before))
    }

    /// Whatever happened: no agent process, gateway or leftover survives
    /// the supervisor. Errors here are not reported: either the run
    /// already failed with its own infra error, or
    /// [`Supervisor::end_agent_phase`] already succeeded and this pass only
    /// catches what a grader may have started as the agent user.
    pub fn cleanup(&mut self) {
        let _ = self.end_agent_and_gateway();
    }

    /// Kill the agent user's processes, stop the gateway, then sweep
    /// whatever else of the run is left; the outcome of the first.
    fn end_agent_and_gateway(&mut self) -> Result<(), KillError> {
        let killed = kill_user_processes(AGENT_UID, &self.scope, &mut self.reaper, KILL_TIMEOUT);
        self.stop_gateway();
        killuid::sweep(&self.scope, &mut self.reaper, KILL_TIMEOUT);
        killed
    }

    fn load_task(&mut self, requested: Option<&str>) -> Result<TaskSpec, InfraError> {
        let tasks_dir = self.root.path("/tasks");
        let available = list_tasks(&tasks_dir).map_err(|e| {
            message(
                Stage::Sandbox,
                format!("cannot list {}: {e}", tasks_dir.display()),
            )
        })?;
        let id = choose_task(requested, &available).map_err(|e| sandbox_err(&e))?;
        self.rec.task_id = id.clone();
        let path = tasks_dir.join(&id).join("task.json");
        let bytes = read_bounded(&path, MAX_TASK_BYTES)
            .map_err(|e| {
                message(
                    Stage::Sandbox,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .ok_or_else(|| sandbox_err(&TaskError::TooLarge { task: id.clone() }))?;
        parse_task(&id, &bytes).map_err(|e| sandbox_err(&e))
    }

    /// What the rootfs must hold before anything runs: an executable
    /// `/opt/agent/run` and the task's workdir.
    fn check_rootfs(&self, task: &TaskSpec) -> Result<PathBuf, InfraError> {
        let run = self.root.path(AGENT_RUN);
        match std::fs::metadata(&run) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => {
                return Err(message(
                    Stage::Sandbox,
                    format!("{AGENT_RUN} is not an executable file; the agent image must provide one (see docs/images.md)"),
                ))
            }
            Err(e) => {
                return Err(message(
                    Stage::Sandbox,
                    format!("{AGENT_RUN} is missing from the rootfs ({e}); the agent image must provide an executable {AGENT_RUN} (see docs/images.md)"),
                ))
            }
        }
        self.workdir(task)
    }

    /// The task's workdir in this tree.
    fn workdir(&self, task: &TaskSpec) -> Result<PathBuf, InfraError> {
        let workdir = self.root.path(&task.workdir);
        if !workdir.is_dir() {
            return Err(message(
                Stage::Sandbox,
                format!(
                    "the workdir {} of task {} is not a directory in the rootfs",
                    task.workdir, task.id
                ),
            ));
        }
        Ok(workdir)
    }

    /// Step 2: `install.sh` as root. Returns whether `run` may follow.
    fn install(
        &mut self,
        task: &TaskSpec,
        workdir: &Path,
        deadline: Instant,
    ) -> Result<bool, InfraError> {
        let script = self.root.path(AGENT_INSTALL);
        if std::fs::symlink_metadata(&script).is_err() {
            return Ok(true);
        }
        let log = self.log("install.log")?;
        let mut env = self.root_env(task);
        env.push(("HOIST_WORKDIR", workdir.as_os_str().to_owned()));
        // Landlock keeps the script from /tests, /tasks and /opt/gateway in
        // every mode; where the supervisor may mount (namespaces), the jail
        // (see jail.rs) covers them as well.
        // chroot isolation has no /proc to map the jail's user namespace
        // through: Landlock alone jails the script there.
        let mut covers = (self.ctx.isolation != super::Isolation::Chroot)
            .then(|| jail::Covers::mount(&self.root.path("/")).ok())
            .flatten();
        let policy = self.policy(Phase::Install);
        let (program, args) = match &covers {
            Some(_) => (
                self.hoist_binary(),
                vec![
                    OsString::from(jail::STAGE),
                    policy.to_arg().map_err(|e| sandbox_err(&e))?,
                    script.clone().into_os_string(),
                ],
            ),
            None => self.confined(Phase::Install, &script, Vec::new())?,
        };
        let spec = Spec {
            program,
            args,
            env,
            cwd: self.root.path("/"),
            log: &log,
            stdout: None,
            stdin: self.stdin()?,
            user: None,
        };
        let spawned = process::spawn(spec, &mut self.reaper);
        if let (Ok(pid), Some(_)) = (&spawned, &covers) {
            if let Err(e) = jail::map_jail(*pid) {
                // Never run the script half-jailed: stop it, and report.
                process::terminate_group(&mut self.reaper, *pid, Duration::ZERO);
                if let Some(c) = covers.as_mut() {
                    c.remove();
                }
                return Err(message(
                    Stage::Sandbox,
                    format!("the install jail failed: {e}"),
                ));
            }
        }
        let result = self.finish_install(spawned, &log, deadline);
        if let Some(c) = covers.as_mut() {
            c.remove();
        }
        result
    }

    /// What install.sh could change about /tests, /tasks and
    /// /opt/gateway that Landlock does not cover (see guard.rs), recorded
    /// before it runs; `None` without an install.sh.
    fn guard_hidden(&self) -> Result<Option<Guard>, InfraError> {
        if std::fs::symlink_metadata(self.root.path(AGENT_INSTALL)).is_err() {
            return Ok(None);
        }
        Guard::record(self.root, &jail::COVERED)
            .map(Some)
            .map_err(|e| {
                message(
                    Stage::Sandbox,
                    format!("recording the hidden paths' permissions: {e}"),
                )
            })
    }

    /// Put back what install.sh changed of the hidden paths' owners, modes
    /// and ACLs, once nothing of it runs; say so in install.log.
    fn restore_hidden(&self, guard: Option<Guard>) -> Result<(), InfraError> {
        let Some(guard) = guard else { return Ok(()) };
        let restored = guard.restore().map_err(|e| {
            message(
                Stage::Sandbox,
                format!("restoring the hidden paths' permissions: {e}"),
            )
        })?;
        if !restored.is_empty() {
            use std::os::unix::fs::OpenOptionsExt;
            let log = OpenOptions::new()
                .append(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(self.out.join("install.log"));
            if let Ok(log) = log {
                note(&log, &format!("hoist: install.sh changed the owner, mode or ACL of {} hidden paths; put back before anything else ran", restored.len()));
            }
        }
        Ok(())
    }

    fn finish_install(
        &mut self,
        spawned: std::io::Result<i32>,
        log: &std::fs::File,
        deadline: Instant,
    ) -> Result<bool, InfraError> {
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                // The agent's own file: its failure, not the sandbox's.
                note(log, &format!("hoist: cannot execute {AGENT_INSTALL}: {e}"));
                self.rec.agent = AgentOutcome {
                    exit_code: Some(if e.kind() == std::io::ErrorKind::NotFound {
                        127
                    } else {
                        126
                    }),
                    timed_out: false,
                };
                return Ok(false);
            }
        };
        let f = self.finish(pid, deadline);
        if f.timed_out || f.code() != 0 {
            self.rec.agent = outcome(f);
            return Ok(false);
        }
        Ok(true)
    }

    /// The tree the gateway runs in: its own untouched tree where the host
    /// made one ([`GATEWAY_ROOT`]), else the run's (container mode, where
    /// the image is fresh, and the supervisor's tests).
    fn gateway_tree(&self) -> PathBuf {
        let own = self.root.path(GATEWAY_ROOT);
        match std::fs::symlink_metadata(&own) {
            Ok(m) if m.is_dir() => own,
            _ => self.root.path("/"),
        }
    }

    /// Step 3: start the gateway, if there is one, and wait for `/health`.
    /// In its own tree, it is chrooted there by the confine stage: what
    /// install.sh changed of the run's tree (the interpreter, its start-up
    /// files) never runs as the gateway.
    fn start_gateway(&mut self) -> Result<(), InfraError> {
        if self.ctx.gateway_elsewhere && self.ctx.session != Session::Gateway {
            return self.wait_healthy(None);
        }
        let tree = self.gateway_tree();
        let own_tree = tree != self.root.path("/");
        if std::fs::symlink_metadata(tree.join(&GATEWAY_RUN[1..])).is_err() {
            return Ok(());
        }
        let log = self.log("gateway.log").map_err(|e| InfraError {
            stage: Stage::Gateway,
            ..e
        })?;
        // Paths as the gateway sees them: from inside its own tree, or
        // under the root.
        let inside = |abs: &str| match own_tree {
            true => OsString::from(abs),
            false => self.root.os(abs),
        };
        let mut env = vec![
            ("PATH", PATH.into()),
            ("HOME", "/root".into()),
            // The one place it may write (see confine::GATEWAY_WRITABLE).
            ("TMPDIR", inside(GATEWAY_DIR)),
            (
                "HOIST_GATEWAY_PORT",
                self.ctx.gateway_port.to_string().into(),
            ),
        ];
        if self.ctx.recordings {
            env.push(("HOIST_RECORDINGS", inside("/recordings")));
        }
        ensure_root_dir(&tree.join(&GATEWAY_DIR[1..]), 0o700)
            .map_err(|e| message(Stage::Gateway, format!("cannot create {GATEWAY_DIR}: {e}")))?;
        let mut policy = self.policy(Phase::Gateway);
        let program = match own_tree {
            true => {
                policy.root = PathBuf::from("/");
                policy.host.clear();
                policy.chroot = Some(tree.clone());
                PathBuf::from(GATEWAY_RUN)
            }
            false => self.root.path(GATEWAY_RUN),
        };
        let spec = Spec {
            program: self.hoist_binary(),
            args: policy
                .wrap(&program, Vec::new())
                .map_err(|e| message(Stage::Gateway, e.to_string()))?,
            env,
            cwd: tree,
            log: &log,
            stdout: None,
            stdin: self.stdin()?,
            user: None,
        };
        let pid = process::spawn(spec, &mut self.reaper)
            .map_err(|e| message(Stage::Gateway, format!("cannot start {GATEWAY_RUN}: {e}")))?;
        self.gateway = Some(pid);
        self.wait_healthy(Some(pid))
    }

    /// A gateway session: the gateway, until it exits or the host kills
    /// the session (its container) once the agent session has ended.
    fn serve_gateway(&mut self) -> Result<(), InfraError> {
        self.start_gateway()?;
        let Some(pid) = self.gateway else {
            return Err(message(
                Stage::Gateway,
                format!("a gateway session without {GATEWAY_RUN}"),
            ));
        };
        let exit = self
            .reaper
            .wait_until(pid, deadline_after(Instant::now(), u64::MAX));
        self.gateway = None;
        Err(message(
            Stage::Gateway,
            format!("{GATEWAY_RUN} exited ({exit:?}) while it served the run; see gateway.log"),
        ))
    }

    /// Wait until the gateway answers `/health` with 200: the one this
    /// supervisor started (`pid`, whose exit ends the wait), or the one of
    /// another session.
    fn wait_healthy(&mut self, pid: Option<i32>) -> Result<(), InfraError> {
        let port = self.ctx.gateway_port;
        let deadline = Instant::now() + GATEWAY_READY;
        let mut backoff = process::Backoff::new();
        loop {
            self.reaper.poll();
            if let Some(exit) = pid.and_then(|p| self.reaper.take(p)) {
                return Err(message(
                    Stage::Gateway,
                    format!("{GATEWAY_RUN} exited with code {} before answering GET /health on port {port}; see gateway.log", exit.code()),
                ));
            }
            let last = match health::probe(port, HEALTH_PROBE) {
                Ok(200) => return Ok(()),
                Ok(code) => format!("last answer: {code}"),
                Err(e) => format!("last error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(message(
                    Stage::Gateway,
                    format!("{GATEWAY_RUN} did not answer GET http://127.0.0.1:{port}/health with 200 within {} s ({last}); see gateway.log", GATEWAY_READY.as_secs()),
                ));
            }
            backoff.nap();
        }
    }

    fn stop_gateway(&mut self) {
        if let Some(pid) = self.gateway.take() {
            let grace = self.grace();
            process::terminate_group(&mut self.reaper, pid, grace);
        }
    }

    /// Step 4: the instruction, readable by the agent, writable by root.
    fn write_instruction(&self, task: &TaskSpec) -> Result<(), InfraError> {
        let dir = self.root.path(RUN_DIR);
        let path = self.root.path(INSTRUCTION);
        ensure_root_dir(&dir, 0o755)
            .and_then(|()| write_atomic(&path, task.instruction.as_bytes()))
            .map_err(|e| {
                message(
                    Stage::Sandbox,
                    format!("cannot write {}: {e}", path.display()),
                )
            })
    }

    /// Step 5: the agent, as uid/gid 1000 in its own process group.
    fn run_agent(
        &mut self,
        task: &TaskSpec,
        workdir: &Path,
        deadline: Instant,
    ) -> Result<(), InfraError> {
        let log = self.log("agent.log")?;
        let model_url = match self.gateway.is_some() || self.ctx.gateway_elsewhere {
            true => format!("http://127.0.0.1:{}/v1", self.ctx.gateway_port),
            false => String::new(),
        };
        let instruction = self.root.os(INSTRUCTION);
        let (program, args) = self.confined(
            Phase::Agent,
            &self.root.path(AGENT_RUN),
            vec![instruction.clone()],
        )?;
        let spec = Spec {
            program,
            args,
            env: agent_env(
                &task.id,
                instruction,
                workdir.as_os_str().to_owned(),
                model_url,
            ),
            cwd: workdir.to_path_buf(),
            log: &log,
            stdout: None,
            stdin: self.stdin()?,
            user: Some((AGENT_UID, AGENT_GID)),
        };
        let pid = process::spawn(spec, &mut self.reaper).map_err(|e| {
            message(
                Stage::Sandbox,
                format!(
                    "cannot start {AGENT_RUN} as uid {AGENT_UID} in {}: {e}",
                    task.workdir
                ),
            )
        })?;
        let f = self.finish(pid, deadline);
        self.rec.agent = outcome(f);
        Ok(())
    }

    /// Step 6: nothing of the agent runs while grading, nor the gateway.
    fn end_agent_phase(&mut self) -> Result<(), InfraError> {
        self.end_agent_and_gateway().map_err(|e| sandbox_err(&e))
    }

    /// Step 6, continued: where the workdir is a git repository, its
    /// changes since the last commit (untracked files included, the
    /// agent's own index untouched) as `/output/task/patch.diff`, the form
    /// SWE-bench predictions take. git reads the agent's `.git/config`, so
    /// it runs as the agent would: uid 1000, confined as the agent phase,
    /// with external diff drivers, text conversion, hooks and fsmonitor off,
    /// under [`PATCH_TIMEOUT`]; whatever it leaves is ended with the
    /// agent's processes. Its errors go to `patch.log`; a failure leaves no
    /// `patch.diff` and is not an infra error: the grader decides.
    fn save_patch(&mut self, task: &TaskSpec, workdir: &Path) -> Result<(), InfraError> {
        if std::fs::symlink_metadata(workdir.join(".git")).is_err() {
            return Ok(());
        }
        let diff = self.log("patch.diff")?;
        let log = self.log("patch.log")?;
        let shell = PathBuf::from("/bin/sh");
        let (program, args) = self.confined(
            Phase::Agent,
            &shell,
            vec![OsString::from("-c"), OsString::from(GIT_PATCH)],
        )?;
        let mut env = agent_env(
            &task.id,
            self.root.os(INSTRUCTION),
            workdir.as_os_str().to_owned(),
            String::new(),
        );
        env.push(("GIT_CONFIG_NOSYSTEM", "1".into()));
        env.push(("TMPDIR", self.root.os("/tmp")));
        let spec = Spec {
            program,
            args,
            env,
            cwd: workdir.to_path_buf(),
            log: &log,
            stdout: Some(&diff),
            stdin: self.stdin()?,
            user: Some((AGENT_UID, AGENT_GID)),
        };
        let ended = match process::spawn(spec, &mut self.reaper) {
            Ok(pid) => {
                let f = self.finish(pid, Instant::now() + PATCH_TIMEOUT);
                (f.code() == 0)
                    .then_some(())
                    .ok_or_else(|| format!("git exited with {}", f.code()))
            }
            Err(e) => Err(format!("cannot start /bin/sh: {e}")),
        };
        if let Err(why) = ended {
            note(&log, &format!("hoist: no patch.diff: {why}"));
            remove_if_present(&self.out.join("patch.diff")).map_err(|e| sandbox_err(&e))?;
        }
        self.end_agent_phase()
    }

    /// Step 6, last: what the agent side changed beneath the workdir since
    /// [`Snapshot::take`], as `/output/task/changes.tar` (OCI layer
    /// semantics, whiteouts for deletions), for the grading session's
    /// fresh rootfs. Nothing of the agent runs any more, so the tree holds
    /// still while it is read.
    fn save_changes(
        &mut self,
        task: &TaskSpec,
        workdir: &Path,
        before: &Snapshot,
    ) -> Result<Written, InfraError> {
        let file = self.log("changes.tar")?;
        let mut out = std::io::BufWriter::new(file);
        let written = changes::write_changes(before, workdir, &mut out)
            .and_then(|w| out.flush().map(|()| w))
            .map_err(|e| {
                message(
                    Stage::Sandbox,
                    format!("cannot save the agent's changes to {}: {e}", task.workdir),
                )
            })?;
        Ok(written)
    }

    /// Grading session: the agent's changes (the agent session's
    /// `changes.tar`, read as untrusted bytes) applied beneath the
    /// workdir of this fresh tree, by the hardened layer unpacker: nothing
    /// can land outside the workdir or through a link.
    fn apply_changes(&mut self, workdir: &Path) -> Result<(), InfraError> {
        let path = self.root.path(CHANGES_PATH);
        let file = File::open(&path).map_err(|e| {
            message(
                Stage::Grade,
                format!("cannot open the agent's changes {}: {e}", path.display()),
            )
        })?;
        changes::apply_changes(std::io::BufReader::new(file), workdir)
            .map(|_| ())
            .map_err(|e| {
                message(
                    Stage::Grade,
                    format!(
                        "cannot apply the agent's changes to {}: {e}",
                        workdir.display()
                    ),
                )
            })
    }

    /// Step 7: the grader, as root in the workdir, and its report.
    fn grade(&mut self, task: &TaskSpec, workdir: &Path) -> Result<(), InfraError> {
        let grade_err =
            |e: std::io::Error, what: &str| message(Stage::Grade, format!("{what}: {e}"));
        let report = self.root.path(GRADE_OUT);
        ensure_root_dir(&self.root.path(RUN_DIR), 0o755)
            .map_err(|e| grade_err(e, "cannot create /run/hoist"))?;
        remove_if_present(&report)
            .map_err(|e| grade_err(e, "cannot remove a stale grade report"))?;
        let log = self.log("grade.log").map_err(|e| InfraError {
            stage: Stage::Grade,
            ..e
        })?;
        let mut env = self.root_env(task);
        env.push(("HOIST_GRADE_OUT", report.as_os_str().to_owned()));
        let program = &task.grade.command[0];
        let (confined, args) = self.confined(
            Phase::Grader,
            &if program.starts_with('/') {
                self.root.path(program)
            } else {
                program.into()
            },
            task.grade.command[1..].iter().map(OsString::from).collect(),
        )?;
        let spec = Spec {
            program: confined,
            args,
            env,
            cwd: workdir.to_path_buf(),
            log: &log,
            stdout: None,
            stdin: self.stdin()?,
            user: None,
        };
        let timeout = self.ctx.grade_timeout_sec.unwrap_or(task.grade.timeout_sec);
        let started = Instant::now();
        let pid = process::spawn(spec, &mut self.reaper)
            .map_err(|e| grade_err(e, &format!("cannot start the grader {program}")))?;
        let f = self.finish(pid, deadline_after(started, timeout));
        self.rec.grade_ms = millis(started.elapsed());
        self.rec.grade.exit_code = Some(f.code());
        self.rec.grade.timed_out = f.timed_out;
        if f.timed_out {
            return Err(message(
                Stage::Grade,
                format!("the grader {program} did not finish within {timeout} s"),
            ));
        }
        let r = read_grade_report(&report).map_err(|e| {
            message(
                Stage::Grade,
                format!(
                    "{e} (the grader {program} exited with code {}; see grade.log)",
                    f.code()
                ),
            )
        })?;
        self.rec.grade.tests = r.tests;
        self.rec.grade.fail_to_pass = r.fail_to_pass;
        self.rec.grade.pass_to_pass = r.pass_to_pass;
        self.rec.resolved = r.resolved;
        Ok(())
    }

    /// The environment of the root children (install.sh, grader).
    fn root_env(&self, task: &TaskSpec) -> Vec<(&'static str, OsString)> {
        vec![
            ("PATH", PATH.into()),
            ("HOME", "/root".into()),
            ("HOIST_TASK_ID", task.id.clone().into()),
        ]
    }

    /// A fresh root-owned 0644 file in the output. Whatever install.sh
    /// or the image left at that name (a symlink, a file) is removed
    /// first, so a planted link can neither be written through nor turn
    /// the run into an infra error.
    fn log(&self, name: &str) -> Result<File, InfraError> {
        let path = self.out.join(name);
        remove_if_present(&path)
            .and_then(|()| create_root_file(&path))
            .map_err(|e| {
                message(
                    Stage::Sandbox,
                    format!("cannot create {}: {e}", path.display()),
                )
            })
    }

    fn stdin(&self) -> Result<std::process::Stdio, InfraError> {
        process::null_stdin(&self.root.path("/dev/null")).map_err(|e| {
            message(
                Stage::Sandbox,
                format!("cannot make stdin for a child: {e}"),
            )
        })
    }
}

/// The agent's whole environment (docs/pipeline.md step 5), nothing inherited.
pub fn agent_env(
    task_id: &str,
    instruction: OsString,
    workdir: OsString,
    model_url: String,
) -> Vec<(&'static str, OsString)> {
    vec![
        ("HOME", AGENT_HOME.into()),
        ("PATH", PATH.into()),
        ("HOIST_TASK_ID", task_id.into()),
        ("HOIST_INSTRUCTION_FILE", instruction),
        ("HOIST_WORKDIR", workdir),
        ("HOIST_MODEL_URL", model_url.into()),
    ]
}

fn outcome(f: Finished) -> AgentOutcome {
    AgentOutcome {
        exit_code: Some(f.code()),
        timed_out: f.timed_out,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A line of the supervisor's own in a child's log.
fn note(mut log: &File, line: &str) {
    // The log is a convenience for the reader; the outcome is recorded
    // in result.json whether or not this line makes it.
    let _ = writeln!(log, "{line}");
}

/// The task directories under `/tasks`, sorted. Names that are not UTF-8
/// are listed lossily; they can never be chosen (not safe ids).
fn list_tasks(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The file's bytes, or `None` when it is larger than `max`.
fn read_bounded(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() <= max).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_long_for_the_clock_is_one_that_never_comes() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, 90), now + Duration::from_secs(90));
        assert_eq!(deadline_after(now, u64::MAX), now + FOREVER);
    }

    #[test]
    fn agent_env_is_exactly_the_design_set() {
        let env = agent_env(
            "t",
            "/run/hoist/instruction.md".into(),
            "/testbed".into(),
            String::new(),
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "HOME",
                "PATH",
                "HOIST_TASK_ID",
                "HOIST_INSTRUCTION_FILE",
                "HOIST_WORKDIR",
                "HOIST_MODEL_URL"
            ]
        );
        assert_eq!(env[0].1, "/home/agent");
        assert_eq!(env[5].1, "");
    }

    #[test]
    fn agent_env_carries_the_model_url() {
        let env = agent_env(
            "t",
            "i".into(),
            "w".into(),
            "http://127.0.0.1:8377/v1".into(),
        );
        assert_eq!(env[5].1, "http://127.0.0.1:8377/v1");
    }

    #[test]
    fn list_tasks_lists_only_dirs_sorted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("README"), "").unwrap();
        assert_eq!(list_tasks(d.path()).unwrap(), ["a", "b"]);
    }

    #[test]
    fn read_bounded_refuses_past_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, "12345").unwrap();
        assert_eq!(read_bounded(&p, 5).unwrap(), Some(b"12345".to_vec()));
        assert_eq!(read_bounded(&p, 4).unwrap(), None);
    }
}
