//! The sandbox (docs/isolation.md): run the supervisor inside the fused
//! rootfs, isolated as strongly as the host allows.
//!
//! - **namespaces**: user (when not root), mount, pid, network, ipc and uts
//!   namespaces; `pivot_root` into the rootfs; a fresh `/proc`; a minimal
//!   `/dev`; tmpfs `/tmp` and `/run`; `/output`, `/recordings`, the hoist
//!   binary and the run context bind-mounted in. The supervisor is PID 1 of
//!   its pid namespace, so when it exits every process of the run dies.
//! - **chroot**: for a runner inside a container whose seccomp profile
//!   forbids `unshare` and `mount` (Docker's default). Same pipeline, with
//!   `chroot` and `setuid`; what it cannot isolate is listed by
//!   [`Isolation::not_isolated`] and recorded in `run.json`.
//!
//! Namespaces can only be entered by a single-threaded process, so the
//! stage is a fresh exec of this binary (`hoist __sandbox`), configured by
//! a JSON file; its child, PID 1 of the new pid namespace, pivots and
//! execs the supervisor.

pub mod cgroup;
mod chroot;
mod ns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys;

pub use chroot::chroot_exec;
pub use ns::{netns_holder_stage, probe_proc, stage as ns_stage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// The strongest that works here.
    Auto,
    /// As `auto`, and refuse to run with anything in `not_isolated`.
    Strict,
    /// New mount, pid, ipc, uts and (with --network none) network
    /// namespaces, a user namespace where one can be had, pivot_root.
    Namespaces,
    /// chroot in hoist's namespaces, for a container that forbids new
    /// ones; Landlock and seccomp make up for what it shares.
    Chroot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Only a loopback interface, shared by the gateway and the agent.
    None,
    /// The host's network (namespaces mode shares it; opt-in).
    Host,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Auto => "auto",
            Isolation::Strict => "strict",
            Isolation::Namespaces => "namespaces",
            Isolation::Chroot => "chroot",
        }
    }

    /// What a run with this isolation does not get on this kernel, for
    /// `run.json` `not_isolated`: the confinement the kernel cannot give
    /// (see [`crate::confine::Support::gaps`]), given what the isolation
    /// shares. chroot shares the pid, network and ipc namespaces; Landlock
    /// scopes, TCP rules and hoist's seccomp filter make up for them as far
    /// as the kernel's ABI goes.
    pub fn not_isolated(self, network: Network) -> Vec<String> {
        let chroot = self == Isolation::Chroot;
        crate::confine::Support::probe(crate::confine::abi_pin_from_env())
            .gaps(crate::confine::Shared::of(chroot, network == Network::Host))
    }
}
/// Everything the sandbox stages need, written to a file by the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub isolation: Isolation,
    pub network: Network,
    /// The fused rootfs (an overlay mount or a plain directory).
    pub rootfs: PathBuf,
    /// The run's private directory the sandbox sees as `/output`: with
    /// namespaces, a 0700 directory of the run's work dir bound there;
    /// in chroot, the rootfs copy's own `/output` (nothing is bound). Never
    /// the user's `--out`: the host copies the regular files of its `task/`
    /// into `OUT/task` when the sandbox has ended (`crate::export`).
    pub output: PathBuf,
    /// Host directory bound read-only at `/recordings`.
    pub recordings: Option<PathBuf>,
    /// This binary, bound read-only at `/.hoist/hoist`.
    pub hoist_binary: PathBuf,
    /// The run context, bound read-only at `/.hoist/context.json`.
    pub context: PathBuf,
    /// The grading session's input: the agent session's `changes.tar`,
    /// bound read-only (copied, in chroot) at `/.hoist/changes.tar`.
    #[serde(default)]
    pub changes: Option<PathBuf>,
    /// The gateway's own tree (the pristine benchmark and gateway layers),
    /// put at `/.hoist/gateway-root` (0700): bound read-only with its own
    /// `/dev` and `/run` (namespaces), or moved in (chroot). The
    /// supervisor runs the gateway chrooted there.
    #[serde(default)]
    pub gateway_root: Option<PathBuf>,
    /// Run inside a user namespace mapping ids 0..2^32 to themselves: root
    /// in the sandbox (the supervisor, install.sh, the gateway, the grader)
    /// then holds capabilities only over the sandbox's own namespaces, not
    /// the host's. Set when the probe shows user namespaces work.
    #[serde(default)]
    pub user_namespace: bool,
    /// Arguments for `/.hoist/hoist task-exec`.
    pub task: Option<String>,
    pub limits: Limits,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// RLIMIT_NPROC for the sandbox (per uid, so it bounds the agent).
    pub max_processes: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// `pids.max` of the run's cgroup: every process and thread of the
    /// run, whatever its uid (`--pids-limit` in container mode).
    #[serde(default = "default_max_pids")]
    pub max_pids: u64,
    /// The run's memory in bytes, swap excluded (`--memory`); `None`: no
    /// limit. A run that asks for it and cannot get it fails.
    #[serde(default)]
    pub max_memory: Option<u64>,
}

fn default_max_pids() -> u64 {
    1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_processes: 1024,
            max_open_files: 4096,
            max_pids: default_max_pids(),
            max_memory: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("sandbox: the supervisor did not finish within {0:?}; it was killed")]
    Timeout(Duration),
    #[error("sandbox: {0}")]
    Unsupported(String),
    /// A signal came; the sandbox was killed.
    #[error("{0}; the sandbox was killed")]
    Interrupted(crate::interrupt::Interrupted),
}

impl From<crate::confine::mounts::MountError> for SandboxError {
    fn from(e: crate::confine::mounts::MountError) -> SandboxError {
        SandboxError::Io {
            what: e.what,
            source: e.source,
        }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// What came back from the sandbox.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The supervisor's exit code (0: result.json written).
    pub exit_code: i32,
    pub isolation: Isolation,
    pub elapsed: Duration,
    /// What bounded the run (cgroup or rlimits only).
    pub limits: cgroup::RunLimits,
}

/// Run the namespaces probe (`hoist __sandbox-probe`); `Err` says why
/// namespaces do not work here (what the probe printed).
pub fn probe_reason(self_exe: &Path) -> Result<(), String> {
    let out = Command::new(self_exe)
        .arg("__sandbox-probe")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", self_exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    Err(if err.is_empty() {
        format!("the probe failed ({})", out.status)
    } else {
        err.trim_start_matches("sandbox: ").to_string()
    })
}

/// Whether the sandbox can also enter a user namespace here (a seccomp
/// profile, `user.max_user_namespaces=0` or an LSM may forbid it).
pub fn probe_user_namespace(self_exe: &Path) -> bool {
    Command::new(self_exe)
        .args(["__sandbox-probe", "userns"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the probes found: whether namespaces work here (or why not), and
/// whether a user namespace can be entered first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    pub namespaces: Result<(), String>,
    pub user_namespace: bool,
}

/// Run both probes, or take their answer from `cache` (a file in the
/// store) when it was written for this same situation: the boot, the
/// kernel, this binary, our uid, capabilities, seccomp mode and
/// namespaces, and the sysctls that govern user namespaces. Each probe
/// costs a few milliseconds of every run; the answer changes only with
/// one of those.
pub fn probe_cached(self_exe: &Path, store: &crate::store::Store) -> Probed {
    let cache = &store.root().join("probe.json");
    let key = probe_key(self_exe);
    #[derive(Serialize, Deserialize)]
    struct Entry {
        key: String,
        probed: Probed,
    }
    if let Some(e) = std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
    {
        if key.as_deref() == Some(e.key.as_str()) {
            return e.probed;
        }
    }
    let namespaces = probe_reason(self_exe);
    let user_namespace = namespaces.is_ok() && probe_user_namespace(self_exe);
    let probed = Probed {
        namespaces,
        user_namespace,
    };
    if let Some(key) = key {
        let entry = Entry {
            key,
            probed: probed.clone(),
        };
        // A cache that cannot be written only costs the next run a probe.
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            let _ = store.write_atomic(cache, &bytes);
        }
    }
    probed
}

/// What the probes' answer depends on, as one string; `None` when some
/// of it cannot be read (then nothing is cached).
fn probe_key(self_exe: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let status = read("/proc/self/status")?;
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    let mut key = vec![
        read("/proc/sys/kernel/random/boot_id")?.trim().to_string(),
        rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
        line("Uid:"),
        line("CapEff:"),
        line("Seccomp:"),
        line("NoNewPrivs:"),
    ];
    // Rootless hoist's own user and mount namespaces are new in every
    // process: what matters of them is the mapping they were made with.
    let own = match crate::userns::entered() {
        Some(r) => {
            key.push(format!("rootless {}:{}", r.host_uid, r.host_gid));
            key.push(read("/proc/self/uid_map")?);
            key.push(read("/proc/self/gid_map")?);
            &["net", "pid"][..]
        }
        None => &["user", "mnt", "net", "pid"][..],
    };
    for ns in own {
        let inode = std::fs::metadata(format!("/proc/self/ns/{ns}")).ok()?.ino();
        key.push(inode.to_string());
    }
    for sysctl in [
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ] {
        key.push(read(sysctl).unwrap_or_default().trim().to_string());
    }
    let exe = std::fs::metadata(self_exe).ok()?;
    key.push(format!(
        "{}:{}:{}:{}",
        exe.dev(),
        exe.ino(),
        exe.size(),
        exe.mtime_nsec() + exe.mtime() * 1_000_000_000
    ));
    Some(key.join("\n"))
}

/// `hoist __sandbox-probe [userns]`: enter the namespaces a run needs (a
/// user namespace first, with `userns`) and mount a tmpfs; exit 0 when all
/// of it works.
pub fn probe_stage(userns: bool) -> i32 {
    if let Err(e) = ns::require_root() {
        crate::errln!("{e}");
        return 1;
    }
    if userns {
        // A process may map only its own ids in a namespace it made; that is
        // enough here: root inside, so the probe's exec keeps capabilities.
        let entered = sys::unshare(rustix::thread::UnshareFlags::NEWUSER)
            .and_then(|()| std::fs::write("/proc/self/setgroups", "deny"))
            .and_then(|()| std::fs::write("/proc/self/uid_map", "0 0 1\n"))
            .and_then(|()| std::fs::write("/proc/self/gid_map", "0 0 1\n"));
        if let Err(e) = entered {
            crate::errln!("entering a user namespace: {e}");
            return 1;
        }
    }
    match ns::probe() {
        Ok(()) => 0,
        Err(e) => {
            crate::errln!("{e}");
            1
        }
    }
}

/// Run the sandbox for `cfg` (isolation already resolved), waiting at most
/// `deadline`. The config is written beside the output directory.
pub fn run(
    cfg: &SandboxConfig,
    config_path: &Path,
    deadline: Duration,
) -> Result<Outcome, SandboxError> {
    let json =
        serde_json::to_vec_pretty(cfg).map_err(|e| SandboxError::Unsupported(e.to_string()))?;
    std::fs::write(config_path, json)
        .map_err(io_err(format!("writing {}", config_path.display())))?;
    // Made first, so that a `--memory` that cannot be enforced fails the
    // run before anything of it starts.
    let mut cgroup = cgroup::RunCgroup::create(&cfg.limits)?;
    let start = Instant::now();
    use std::os::unix::process::CommandExt;
    let mut stage = Command::new(&cfg.hoist_binary);
    stage
        .arg("__sandbox")
        .arg(config_path)
        .stdin(std::process::Stdio::piped())
        // A terminal's Ctrl-C reaches hoist alone, which takes the sandbox
        // down in order (crate::interrupt), not the stage half-way.
        .process_group(0);
    let mut child = cgroup
        .spawn(stage)
        .map_err(io_err("starting the sandbox"))?;
    let ended = wait_sandbox(cfg, &mut child, start, deadline);
    let elapsed = start.elapsed();
    // Whatever the run left (chroot mode has no pid namespace to end with
    // PID 1) dies with its cgroup.
    if let Err(e) = cgroup.remove() {
        tracing::warn!(error = %e, "could not remove the run's cgroup");
    }
    let exit_code = ended?;
    Ok(Outcome {
        exit_code,
        isolation: cfg.isolation,
        elapsed,
        limits: cgroup.limits().clone(),
    })
}

/// Release the sandbox stage and wait for it, at most `deadline`; its exit
/// code.
fn wait_sandbox(
    cfg: &SandboxConfig,
    child: &mut std::process::Child,
    start: Instant,
    deadline: Duration,
) -> Result<i32, SandboxError> {
    let mapped = match cfg.isolation {
        Isolation::Namespaces if cfg.user_namespace => map_identity(child),
        _ => Ok(()),
    };
    // Closing stdin releases the stage (after the maps, when it waits).
    drop(child.stdin.take());
    if let Err(e) = mapped {
        let _ = child.kill(); // it may already have exited; wait reports that
        let _ = child.wait();
        return Err(e);
    }
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_err("waiting for the sandbox"))?
        {
            return Ok(status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            }));
        }
        let elapsed = start.elapsed();
        let stop = match crate::interrupt::pending() {
            Some(sig) => Some(SandboxError::Interrupted(sig)),
            // The supervisor enforces the task's own timeouts; this is the
            // backstop if it hangs.
            None if elapsed > deadline => Some(SandboxError::Timeout(deadline)),
            None => None,
        };
        if let Some(why) = stop {
            kill_stage(cfg.isolation, child);
            return Err(why);
        }
        // Woken when the stage exits, not up to a poll interval later; a
        // signal is looked for at least every tenth of a second.
        let pid = i32::try_from(child.id()).unwrap_or(0);
        let slice = (deadline - elapsed).min(Duration::from_millis(100));
        if !crate::confine::wait::wait_for_exit(pid, slice) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Kill the sandbox stage and everything it started. With namespaces the
/// stage is the parent of PID 1 of the run's pid namespace, which dies
/// with it (`die_with_parent`), and its death ends every process inside. In chroot mode the processes are the stage's
/// descendants (the supervisor is a child subreaper, so nothing the agent
/// started has left that tree): they are stopped, then killed, then the
/// stage. The run's cgroup, where there is one, kills what is left when
/// it is removed.
fn kill_stage(isolation: Isolation, child: &mut std::process::Child) {
    if isolation == Isolation::Chroot {
        if let Ok(pid) = i32::try_from(child.id()) {
            crate::confine::procfs::kill_tree(pid);
        }
    }
    let _ = child.kill(); // it may have exited just now; wait says
    let _ = child.wait();
}

/// Write the identity uid and gid maps of the stage's new user namespace.
/// Only a process with CAP_SETUID in the parent namespace (this one, as
/// root) may map ids other than its own, so the host side does it: wait
/// until the stage has left our user namespace, write, then release it.
fn map_identity(child: &mut std::process::Child) -> Result<(), SandboxError> {
    use std::io::Write;
    let pid = child.id() as i32;
    crate::userns::map_ids_when_unshared(pid, &mut || child.try_wait().map(|s| s.is_none()))
        .map_err(io_err("mapping the sandbox's user namespace"))?;
    if let Some(stdin) = child.stdin.as_mut() {
        stdin
            .write_all(b"m")
            .map_err(io_err("releasing the sandbox stage"))?;
    }
    Ok(())
}

/// `hoist __sandbox CONFIG`: the stage that isolates, then execs the
/// supervisor. Never returns on success.
pub fn sandbox_stage(config_path: &Path) -> i32 {
    // Ended with hoist, should hoist be killed outright.
    if let Err(e) = crate::confine::die_with_parent() {
        crate::errln!("hoist sandbox: PR_SET_PDEATHSIG: {e}");
        return 1;
    }
    let cfg: SandboxConfig = match std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            crate::errln!("hoist sandbox: cannot read {}: {e}", config_path.display());
            return 1;
        }
    };
    let result = match cfg.isolation {
        Isolation::Chroot => chroot::stage(&cfg),
        _ => ns::stage(&cfg),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::errln!("hoist sandbox: {e}");
            1
        }
    }
}

/// The supervisor command line inside the sandbox.
pub(crate) fn supervisor_args(cfg: &SandboxConfig) -> Vec<String> {
    let mut args = vec![
        "task-exec".to_string(),
        "--context".into(),
        "/.hoist/context.json".into(),
    ];
    if let Some(t) = &cfg.task {
        args.push("--task".into());
        args.push(t.clone());
    }
    args
}

/// The supervisor's command: `/.hoist/hoist task-exec …` with a clean
/// environment.
pub(crate) fn supervisor_command(args: &[String]) -> Command {
    let mut c = Command::new("/.hoist/hoist");
    c.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root");
    c
}

/// The last step of the chroot isolation: limits, `no_new_privs` (nothing
/// in the sandbox may gain privileges through a setuid binary), then exec
/// the supervisor. Returns only on failure.
pub(crate) fn exec_supervisor(limits: &Limits, args: &[String]) -> SandboxError {
    use std::os::unix::process::CommandExt;
    if let Err(e) = set_limits(limits) {
        return e;
    }
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        return io_err("no_new_privs")(e.into());
    }
    let e = supervisor_command(args).exec();
    io_err("exec /.hoist/hoist task-exec")(e)
}

pub(crate) fn set_limits(limits: &Limits) -> Result<(), SandboxError> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    for (res, n) in [
        (Resource::Nproc, limits.max_processes),
        (Resource::Nofile, limits.max_open_files),
    ] {
        setrlimit(
            res,
            Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )
        .map_err(|e| io_err(format!("setrlimit {res:?}"))(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::probe_key;

    #[test]
    fn probe_key_is_stable_and_follows_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("hoist");
        std::fs::write(&exe, b"one").unwrap();
        let first = probe_key(&exe).expect("a key on Linux");
        assert_eq!(probe_key(&exe).as_deref(), Some(first.as_str()));
        std::fs::write(&exe, b"another binary").unwrap();
        assert_ne!(probe_key(&exe).unwrap(), first);
        assert_eq!(probe_key(&dir.path().join("missing")), None);
    }
}
