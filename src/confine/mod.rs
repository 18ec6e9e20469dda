//! Confinement of every process the supervisor starts (docs/threat-model.md;
//! docs/isolation.md, "Confinement of every phase"): one policy, read in one
//! place, applied the same way in namespaces, chroot and container mode.
//!
//! Each phase — `install.sh`, the gateway, the agent, the grader — is
//! started through `hoist __confine POLICY PROGRAM ARGS…`, a fresh exec of
//! the static hoist that, single-threaded and before anything of the
//! phase runs:
//! 1. drops the capabilities a root phase does not need from its bounding,
//!    inheritable and ambient sets ([`caps`]), so an exec'd root program
//!    gets only the few it may use (no CAP_SYS_CHROOT: the classic chroot
//!    escape; no CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_MKNOD, …);
//! 2. sets `no_new_privs` (already inherited; set again so the order below
//!    never depends on it);
//! 3. enters a Landlock domain of its own ([`ruleset`]): files only beneath
//!    the run's tree, minus what the phase may not see; TCP as the phase
//!    needs; signals and abstract unix sockets scoped to the domain — each
//!    as far as the kernel's Landlock ABI goes;
//! 4. installs hoist's seccomp filter ([`seccomp`]);
//! 5. marks every descriptor but 0, 1 and 2 close-on-exec, and execs.
//!
//! What the kernel cannot give is not hidden: [`Support`] probes it, and
//! [`Support::gaps`] says it in the words `run.json` records under
//! `not_isolated`; `--isolation strict` refuses to run with any.
//!
//! [`not_dumpable`] is for hoist's own processes outside the phases (the
//! host side, the sandbox stages, the supervisor): a root grader that could
//! trace the supervisor would own the run.
//!
//! Beneath both the host-side sandbox and the supervisor, this module also
//! holds the process and mount helpers both use: [`mounts`] (mounts attached
//! beneath a rootfs), [`procfs`] (a pid namespace's processes, read through
//! a procfs handle) and [`wait`] (waiting on a pidfd), so that neither of
//! them imports the other.

pub mod caps;
pub mod mounts;
pub mod procfs;
pub mod ruleset;
pub mod seccomp;
pub mod wait;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The hidden subcommand that confines, then execs the phase.
pub const STAGE: &str = "__confine";

/// What `install.sh` and the agent may not see (docs/images.md).
pub const HIDDEN_FROM_AGENT: [&str; 4] = ["tests", "tasks", "opt/gateway", ".hoist"];
/// What the gateway may not see: it serves the agent, so it must not be
/// able to hand it the answers, whatever code ended up in its interpreter.
pub const HIDDEN_FROM_GATEWAY: [&str; 2] = ["tests", "tasks"];
/// What the grader may not see: the gateway's tree is not its business.
pub const HIDDEN_FROM_GRADER: [&str; 1] = ["opt/gateway"];

/// A process the supervisor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Install,
    Gateway,
    Agent,
    Grader,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Install => "install",
            Phase::Gateway => "gateway",
            Phase::Agent => "agent",
            Phase::Grader => "grader",
        }
    }

    /// Phases that run as root and keep only [`caps::KEPT`].
    pub fn runs_as_root(self) -> bool {
        !matches!(self, Phase::Agent)
    }
}

/// TCP as a phase may use it (Landlock ABI 4 and later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tcp {
    /// Not restricted by Landlock: the run's network namespace holds only
    /// its own loopback, so there is nothing else to reach.
    Unrestricted,
    /// Connect only to these ports, bind none (where the network is
    /// shared: chroot isolation, `--network host`).
    ConnectOnly(Vec<u16>),
    /// Bind only this port; connect anywhere (the gateway, which may need
    /// to reach a model provider).
    BindOnly(u16),
}

/// Everything `__confine` needs, passed as one JSON argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub phase: Phase,
    /// The run's tree: `/` in the sandbox (chroot or pivot_root), a scratch
    /// tree in the supervisor's tests.
    pub root: PathBuf,
    /// Paths under `root` (relative) that the phase may not touch at all.
    pub hidden: Vec<String>,
    /// Where a phase may write, when not everywhere beneath the root
    /// (the gateway: its private directory). Relative to `root`.
    pub writable: Option<Vec<String>>,
    /// Host paths a phase may use although they are not beneath `root`:
    /// only when the supervisor runs with `--root` (tests), where programs'
    /// interpreters, libraries and `/dev/null` are the host's own.
    #[serde(default)]
    pub host: Vec<ruleset::Grant>,
    pub tcp: Tcp,
    /// Deny System V IPC (shared memory, queues, semaphores): where the ipc
    /// namespace is shared with other runs (chroot isolation).
    #[serde(default)]
    pub deny_sysv_ipc: bool,
    /// Use at most this Landlock ABI (`HOIST_LANDLOCK_ABI`), to see what a
    /// run on an older kernel would get.
    #[serde(default)]
    pub landlock_abi_max: Option<u32>,
    /// Enter this directory as `/` first (the gateway's untouched tree);
    /// `root` and the other paths are then as seen from inside it.
    #[serde(default)]
    pub chroot: Option<PathBuf>,
}

impl Policy {
    /// The policy of `phase` in a run whose tree is `root`.
    pub fn for_phase(phase: Phase, root: &Path, net: &NetFacts) -> Policy {
        let hidden: &[&str] = match phase {
            Phase::Install | Phase::Agent => &HIDDEN_FROM_AGENT,
            Phase::Gateway => &HIDDEN_FROM_GATEWAY,
            Phase::Grader => &HIDDEN_FROM_GRADER,
        };
        let tcp = match phase {
            Phase::Gateway => Tcp::BindOnly(net.gateway_port),
            _ if net.private => Tcp::Unrestricted,
            _ => Tcp::ConnectOnly(
                net.gateway
                    .then_some(net.gateway_port)
                    .into_iter()
                    .collect(),
            ),
        };
        Policy {
            phase,
            root: root.to_path_buf(),
            hidden: hidden.iter().map(|s| s.to_string()).collect(),
            writable: (phase == Phase::Gateway)
                .then(|| GATEWAY_WRITABLE.map(String::from).to_vec()),
            host: Vec::new(),
            tcp,
            deny_sysv_ipc: !net.private_ipc,
            landlock_abi_max: net.landlock_abi_max,
            chroot: None,
        }
    }

    /// The argv that runs `program args` confined: the hoist binary at
    /// `hoist`, `__confine`, this policy, the program and its arguments.
    /// Fails for a policy path that is not UTF-8.
    pub fn wrap(
        &self,
        program: &Path,
        args: Vec<OsString>,
    ) -> Result<Vec<OsString>, crate::json::JsonError> {
        let mut v = vec![OsString::from(STAGE), self.to_arg()?, program.into()];
        v.extend(args);
        Ok(v)
    }

    /// The policy as the one argument a stage reads it from.
    pub fn to_arg(&self) -> Result<OsString, crate::json::JsonError> {
        crate::json::to_string(self, "the confinement policy").map(OsString::from)
    }
}

/// What the gateway may write (relative to the root): its private
/// directory and the device nodes a program writes to. Not `/tmp` or
/// `/dev/shm`: the agent reads those, and a gateway whose interpreter
/// `install.sh` changed must have no place to leave anything for it.
pub const GATEWAY_WRITABLE: [&str; 4] = ["run/hoist/gateway", "dev/null", "dev/zero", "dev/full"];

/// What a run shares with the rest of its machine: the one rule both the
/// host (`run.json` `not_isolated`, `--isolation strict`) and the
/// supervisor (each phase's policy, its own strict check) apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shared {
    /// No network namespace of the run's own (chroot, `--network host`).
    pub network: bool,
    /// No pid or ipc namespace of the run's own (chroot).
    pub pids: bool,
}

impl Shared {
    pub fn of(chroot: bool, host_network: bool) -> Shared {
        Shared {
            network: chroot || host_network,
            pids: chroot,
        }
    }
}

/// What the policies of a run depend on besides the phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetFacts {
    /// The run has a network namespace of its own with only loopback.
    pub private: bool,
    /// The run has an ipc namespace of its own.
    pub private_ipc: bool,
    /// A gateway runs, on this port.
    pub gateway: bool,
    pub gateway_port: u16,
    pub landlock_abi_max: Option<u32>,
}

/// What this kernel lets hoist apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Support {
    /// The Landlock ABI in use: the kernel's, lowered by the pin; 0 when
    /// Landlock is missing or disabled.
    pub landlock_abi: u32,
    /// The kernel's own Landlock ABI.
    pub kernel_landlock_abi: u32,
    /// Whether seccomp filters can be installed.
    pub seccomp: bool,
}

impl Support {
    /// Probe the running kernel; `pin` lowers the Landlock ABI used.
    pub fn probe(pin: Option<u32>) -> Support {
        let kernel = crate::sys::landlock_abi();
        Support {
            landlock_abi: pin.map_or(kernel, |p| p.min(kernel)),
            kernel_landlock_abi: kernel,
            seccomp: seccomp::available(),
        }
    }

    /// What the run's confinement lacks, as `run.json` `not_isolated`
    /// lines, given what the run shares.
    pub fn gaps(&self, shared: Shared) -> Vec<String> {
        let (shared_network, shared_pids) = (shared.network, shared.pids);
        let abi = self.landlock_abi;
        let mut v = Vec::new();
        if abi == 0 {
            v.push("landlock: not available (kernel before 5.13, or disabled): install.sh is jailed only where mounts are allowed (namespaces isolation), the gateway may read /tests and /tasks, and nothing confines a phase's files to the run's tree".to_string());
        } else if abi < 2 {
            v.push(format!("landlock ABI {abi}: no REFER right, so renames and links across directories fail in every phase"));
        }
        if shared_network && abi < 4 {
            v.push(format!("network: Landlock ABI {abi} has no TCP rules (ABI 4, Linux 6.7): the agent, install.sh and the grader can connect to any TCP service the runner reaches"));
        }
        if shared_pids && abi < 6 {
            v.push(format!("signals and abstract unix sockets: Landlock ABI {abi} cannot scope them (ABI 6, Linux 6.12): the agent can signal other uid-1000 processes of the runner (another run's agent) and connect to their abstract sockets"));
        }
        if !self.seccomp {
            v.push("seccomp: filters cannot be installed here: ptrace, io_uring, bpf, keyctl, namespaces and raw sockets are not denied by hoist".to_string());
        }
        v
    }
}

/// `HOIST_LANDLOCK_ABI=N`: use at most Landlock ABI N, to see (and test)
/// what a run gets on an older kernel. It can only lower what is used.
pub fn abi_pin_from_env() -> Option<u32> {
    std::env::var("HOIST_LANDLOCK_ABI")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Mark this process non-dumpable: no process of the same uid without
/// CAP_SYS_PTRACE may trace it or read its memory (a root grader in
/// chroot isolation shares root's uid with the supervisor and the host
/// side). Reset by exec, so each hoist process does it for itself.
pub fn not_dumpable() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Be killed when the parent dies: a sandbox stage whose hoist was
/// killed (SIGKILL cannot be caught to take it down) ends, and with it
/// the run's pid namespace or chrooted supervisor. Kept across the exec of
/// a binary that is not setuid; cleared by fork, so each process of the
/// chain asks for itself. Async-signal-safe (one prctl), so it may run
/// between fork and exec.
pub fn die_with_parent() -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("the confinement policy is not valid JSON: {0}")]
    Policy(serde_json::Error),
    #[error("dropping capabilities: {0}")]
    Caps(String),
    #[error("no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("Landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("closing descriptors: {0}")]
    Fds(std::io::Error),
    #[error("entering {0} as the root: {1}")]
    Chroot(PathBuf, std::io::Error),
    #[error("exec {program}: {source}")]
    Exec {
        program: PathBuf,
        source: std::io::Error,
    },
}

/// Apply `policy` to this (single-threaded) process.
pub fn apply(policy: &Policy) -> Result<(), ConfineError> {
    if let Some(dir) = &policy.chroot {
        // While CAP_SYS_CHROOT is still held; the seccomp filter below
        // denies chroot from here on, and no descriptor of the old root
        // survives the exec (close_range).
        rustix::process::chroot(dir).map_err(|e| ConfineError::Chroot(dir.clone(), e.into()))?;
        rustix::process::chdir("/").map_err(|e| ConfineError::Chroot(dir.clone(), e.into()))?;
    }
    if policy.phase.runs_as_root() && rustix::process::geteuid().is_root() {
        caps::reduce().map_err(ConfineError::Caps)?;
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| ConfineError::NoNewPrivs(e.into()))?;
    let support = Support::probe(policy.landlock_abi_max);
    if support.landlock_abi > 0 {
        ruleset::restrict(policy, support.landlock_abi)
            .map_err(|e| ConfineError::Landlock(e.to_string()))?;
    }
    if support.seccomp {
        seccomp::install(policy).map_err(ConfineError::Seccomp)?;
    }
    crate::sys::cloexec_from(3).map_err(ConfineError::Fds)
}

/// The code a shell reports for a program it could not run: 127 when it
/// is missing, 126 otherwise.
pub fn exit_code_for(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// `hoist __confine POLICY PROGRAM ARGS…`: confine, then exec. Returns
/// only on failure, with [`exit_code_for`]'s code.
pub fn stage(args: &[OsString]) -> i32 {
    let err = (|| -> Result<std::convert::Infallible, ConfineError> {
        let json = args
            .first()
            .map(|a| a.to_string_lossy())
            .unwrap_or_default();
        let policy: Policy = serde_json::from_str(&json).map_err(ConfineError::Policy)?;
        let program = PathBuf::from(args.get(1).cloned().unwrap_or_default());
        apply(&policy)?;
        let source = std::process::Command::new(&program)
            .args(&args[2.min(args.len())..])
            .exec();
        Err(ConfineError::Exec { program, source })
    })();
    match err {
        Ok(never) => match never {},
        Err(e) => {
            crate::errln!("hoist: {e}");
            match &e {
                ConfineError::Exec { source, .. } => exit_code_for(source),
                _ => 126,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(private: bool, gateway: bool) -> NetFacts {
        NetFacts {
            private,
            private_ipc: private,
            gateway,
            gateway_port: 8377,
            landlock_abi_max: None,
        }
    }

    #[test]
    fn install_and_agent_never_see_the_answers() {
        for phase in [Phase::Install, Phase::Agent] {
            let p = Policy::for_phase(phase, Path::new("/"), &facts(true, true));
            assert_eq!(p.hidden, ["tests", "tasks", "opt/gateway", ".hoist"]);
            assert_eq!(p.writable, None);
        }
    }

    #[test]
    fn the_gateway_sees_no_tests_and_writes_only_its_own_directory() {
        let p = Policy::for_phase(Phase::Gateway, Path::new("/"), &facts(false, true));
        assert_eq!(p.hidden, ["tests", "tasks"]);
        assert_eq!(p.tcp, Tcp::BindOnly(8377));
        let w = p.writable.unwrap();
        assert!(w.contains(&"run/hoist/gateway".to_string()));
        assert!(!w.iter().any(|d| d == "tmp" || d.starts_with("dev/shm")));
    }

    #[test]
    fn the_grader_reads_tests_but_not_the_gateway() {
        let p = Policy::for_phase(Phase::Grader, Path::new("/"), &facts(true, false));
        assert_eq!(p.hidden, ["opt/gateway"]);
    }

    #[test]
    fn shared_networks_allow_only_the_gateway_port() {
        let p = Policy::for_phase(Phase::Agent, Path::new("/"), &facts(false, true));
        assert_eq!(p.tcp, Tcp::ConnectOnly(vec![8377]));
        assert!(p.deny_sysv_ipc);
        let p = Policy::for_phase(Phase::Grader, Path::new("/"), &facts(false, false));
        assert_eq!(p.tcp, Tcp::ConnectOnly(vec![]));
        let p = Policy::for_phase(Phase::Agent, Path::new("/"), &facts(true, true));
        assert_eq!(p.tcp, Tcp::Unrestricted);
        assert!(!p.deny_sysv_ipc);
    }

    #[test]
    fn wrap_round_trips_the_policy() {
        let p = Policy::for_phase(Phase::Agent, Path::new("/r"), &facts(true, true));
        let argv = p
            .wrap(Path::new("/opt/agent/run"), vec!["/i.md".into()])
            .unwrap();
        assert_eq!(argv[0], STAGE);
        let back: Policy = serde_json::from_str(argv[1].to_str().unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(argv[2], "/opt/agent/run");
        assert_eq!(argv[3], "/i.md");
    }

    #[test]
    fn gaps_follow_the_abi() {
        let s = |abi| Support {
            landlock_abi: abi,
            kernel_landlock_abi: 7,
            seccomp: true,
        };
        assert!(s(7).gaps(Shared::of(true, false)).is_empty());
        assert!(s(6).gaps(Shared::of(true, false)).is_empty());
        let g = s(4).gaps(Shared::of(true, false));
        assert_eq!(g.len(), 1, "{g:?}");
        assert!(g[0].starts_with("signals and abstract unix sockets"));
        assert!(s(4).gaps(Shared::of(false, false)).is_empty());
        let g = s(3).gaps(Shared::of(true, false));
        assert!(g[0].starts_with("network: Landlock ABI 3"), "{g:?}");
        assert_eq!(g.len(), 2);
        assert!(s(0).gaps(Shared::of(false, false))[0].starts_with("landlock: not available"));
        let no_seccomp = Support {
            seccomp: false,
            ..s(7)
        };
        assert_eq!(no_seccomp.gaps(Shared::of(false, false)).len(), 1);
    }
}
