//! The namespaces isolation: `__sandbox` unshares and builds the mounts;
//! its child, PID 1 of the new pid namespace, mounts `/proc`, pivots into
//! the rootfs and execs the supervisor.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::mount::MountAttrFlags;
use rustix::thread::UnshareFlags;

use super::{
    io_err, set_limits, supervisor_args, supervisor_command, Limits, Network, SandboxConfig,
    SandboxError,
};
use crate::confine::mounts::{self, Bind};
use crate::sys;

const NOSUID_NODEV: MountAttrFlags =
    MountAttrFlags::MOUNT_ATTR_NOSUID.union(MountAttrFlags::MOUNT_ATTR_NODEV);

/// Namespaces isolation needs root on entry: real root, or root of the
/// user namespace that rootless hoist enters at start-up.
pub(crate) fn require_root() -> Result<(), SandboxError> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    Err(SandboxError::Unsupported(
        "namespaces isolation needs root, or hoist's own user namespace (which HOIST_NO_USERNS turns off)"
            .into(),
    ))
}

fn unshare_all(network: Network) -> Result<(), SandboxError> {
    // First: the helper enter_new_netns may start must not be the first
    // child in the new pid namespace, whose exit would end the namespace.
    if network == Network::None {
        enter_new_netns()?;
    }
    let flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    sys::unshare(flags).map_err(io_err("unshare (namespaces)"))?;
    // Nothing mounted here may propagate back to the host.
    mounts::make_private().map_err(io_err("making mounts private"))
}

/// Enter a new user namespace and wait for the host side to write its
/// identity maps (see `map_identity`): every namespace made after it is
/// owned by it, so root here has no capability over the host's.
fn enter_user_namespace() -> Result<(), SandboxError> {
    sys::unshare(UnshareFlags::NEWUSER).map_err(io_err("unshare (user namespace)"))?;
    let mut released = [0u8; 1];
    std::io::stdin().read_exact(&mut released).map_err(|_| {
        SandboxError::Unsupported("the host did not map the user namespace's ids".into())
    })
}

/// Enter a new network namespace whose loopback this process may bring
/// up. That needs CAP_NET_ADMIN over the namespace, which a runner
/// container given only `--cap-add SYS_ADMIN` lacks. There the namespace
/// is made by a helper (`hoist __sandbox-netns`) inside a fresh user
/// namespace: the euid that owns a user namespace has every capability in
/// it from the parent namespace (user_namespaces(7)), CAP_NET_ADMIN over
/// its network namespace included. This process stays in its own user
/// namespace; only the network namespace is joined.
fn enter_new_netns() -> Result<(), SandboxError> {
    let caps = rustix::thread::capabilities(None)
        .map_err(|e| io_err("reading the capabilities")(e.into()))?;
    if caps
        .effective
        .contains(rustix::thread::CapabilitySet::NET_ADMIN)
    {
        return sys::unshare(UnshareFlags::NEWNET).map_err(io_err("unshare (network)"));
    }
    let mut holder = Command::new("/proc/self/exe")
        .arg("__sandbox-netns")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io_err("starting the network namespace helper"))?;
    let joined = (|| {
        let mut ready = [0u8; 1];
        holder
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no pipe"))?
            .read_exact(&mut ready)
            .map_err(|_| {
                std::io::Error::other("it could not create a user and network namespace")
            })?;
        let ns = File::open(format!("/proc/{}/ns/net", holder.id()))?;
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        Ok(())
    })();
    // Closing its stdin ends the helper; the namespace lives on in us.
    drop(holder.stdin.take());
    let _ = holder.wait(); // its exit status says nothing the join did not
    joined.map_err(io_err("joining the helper's network namespace"))
}

/// `hoist __sandbox-netns`: create a user and a network namespace, say so
/// on stdout, and hold them until stdin closes (see [`enter_new_netns`]).
pub fn netns_holder_stage() -> i32 {
    use std::io::Write;
    if let Err(e) = sys::unshare(UnshareFlags::NEWUSER | UnshareFlags::NEWNET) {
        crate::errln!("hoist sandbox: unshare (user, network): {e}");
        return 1;
    }
    if std::io::stdout()
        .write_all(b"r")
        .and_then(|()| std::io::stdout().flush())
        .is_err()
    {
        return 1;
    }
    let mut sink = Vec::new();
    // EOF or an error both mean the sandbox stage is done with us.
    let _ = std::io::stdin().read_to_end(&mut sink);
    0
}

/// Enter the namespaces, bring the loopback up and mount a tmpfs, to
/// learn whether this host allows all a run needs (Docker's default
/// seccomp profile allows none of it).
pub fn probe() -> Result<(), SandboxError> {
    unshare_all(Network::None)?;
    sys::loopback_up().map_err(io_err("bringing up the loopback interface"))?;
    let dir = tempfile::tempdir().map_err(io_err("probe dir"))?;
    let fd = File::open(dir.path()).map_err(io_err("probe dir"))?;
    mounts::fresh(
        "tmpfs",
        &[("size", "4k")],
        NOSUID_NODEV,
        fd.as_fd(),
        "a probe tmpfs",
    )?;
    // /proc can only be mounted by a process inside the new pid namespace,
    // and a user namespace inside a container may be refused it (the
    // container's masked /proc is not "fully visible"): try it for real.
    let out = Command::new("/proc/self/exe")
        .arg("__sandbox-probe-proc")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("starting the /proc probe"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(SandboxError::Unsupported(format!(
        "mounting /proc in the new namespaces: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// `__sandbox-probe-proc DIR`: mount a procfs on DIR (run by the probe as
/// the first process of its new pid namespace).
pub fn probe_proc(dir: &Path) -> i32 {
    // Anywhere else it would mount a procfs on DIR in the caller's mount
    // namespace, the host's when root runs it by hand.
    if !rustix::process::getpid().is_init() {
        crate::errln!(
            "hoist: __sandbox-probe-proc runs only as PID 1 of the probe's pid namespace"
        );
        return 2;
    }
    let mounted = File::open(dir).map_err(io_err("probe dir")).and_then(|fd| {
        mounts::fresh(
            "proc",
            &[],
            NOSUID_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC,
            fd.as_fd(),
            "/proc",
        )
        .map_err(SandboxError::from)
    });
    match mounted {
        Ok(()) => 0,
        Err(e) => {
            crate::errln!("{e}");
            1
        }
    }
}

/// `__sandbox`: isolate, mount, start PID 1, wait for it.
pub fn stage(cfg: &SandboxConfig) -> Result<i32, SandboxError> {
    require_root()?;
    if cfg.user_namespace {
        enter_user_namespace()?;
    }
    // After the host wrote our maps; see crate::confine::not_dumpable.
    crate::confine::not_dumpable().map_err(io_err("making the stage non-dumpable"))?;
    unshare_all(cfg.network)?;
    let rootfs = &cfg.rootfs;
    // pivot_root needs the new root to be a mount point.
    rustix::mount::mount_bind_recursive(rootfs, rootfs)
        .map_err(|e| io_err("binding the rootfs onto itself")(e.into()))?;
    let root = File::open(rootfs).map_err(io_err(format!("{}", rootfs.display())))?;
    let r = root.as_fd();

    let dev = mounts::dir(r, "dev")?;
    mounts::fresh(
        "tmpfs",
        &[("mode", "0755"), ("size", "64k")],
        MountAttrFlags::MOUNT_ATTR_NOSUID,
        dev.as_fd(),
        "/dev",
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        mounts::host_device(r, rootfs, node)?;
    }
    let pts = mounts::dir(r, "dev/pts")?;
    mounts::fresh(
        "devpts",
        &[("newinstance", ""), ("ptmxmode", "0666"), ("mode", "0620")],
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        pts.as_fd(),
        "/dev/pts",
    )?;
    let shm = mounts::dir(r, "dev/shm")?;
    mounts::fresh(
        "tmpfs",
        &[("mode", "1777"), ("size", "64m")],
        NOSUID_NODEV,
        shm.as_fd(),
        "/dev/shm",
    )?;
    let dev = mounts::dir(r, "dev")?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        rustix::fs::symlinkat(target, &dev, name)
            .map_err(|e| io_err(format!("/dev/{name}"))(e.into()))?;
    }

    let tmp = mounts::dir(r, "tmp")?;
    mounts::fresh(
        "tmpfs",
        &[("mode", "1777")],
        NOSUID_NODEV,
        tmp.as_fd(),
        "/tmp",
    )?;
    let run = mounts::dir(r, "run")?;
    mounts::fresh(
        "tmpfs",
        &[("mode", "0755")],
        NOSUID_NODEV,
        run.as_fd(),
        "/run",
    )?;

    // The run's private directory, never the host's --out: root in here
    // is root on whatever is bound, so the host copies the results out
    // itself once the sandbox has ended (crate::export).
    let output = mounts::dir(r, "output")?;
    mounts::bind(
        &cfg.output,
        output.as_fd(),
        &rootfs.join("output"),
        Bind::NoSuidNoDev,
        "/output",
    )?;
    if let Some(rec) = &cfg.recordings {
        let at = mounts::dir(r, "recordings")?;
        mounts::bind(
            rec,
            at.as_fd(),
            &rootfs.join("recordings"),
            Bind::ReadOnly,
            "/recordings",
        )?;
    }
    // /.hoist is a tmpfs of its own, so nothing of hoist is written into
    // the image's tree.
    let hoist_dir = mounts::dir(r, ".hoist")?;
    mounts::fresh(
        "tmpfs",
        &[("mode", "0755"), ("size", "64k")],
        NOSUID_NODEV,
        hoist_dir.as_fd(),
        "/.hoist",
    )?;
    let files = [
        (Some(&cfg.hoist_binary), ".hoist/hoist"),
        (Some(&cfg.context), ".hoist/context.json"),
        (cfg.changes.as_ref(), ".hoist/changes.tar"),
    ];
    for (src, rel) in files.into_iter().filter_map(|(s, r)| Some((s?, r))) {
        let at = mounts::file(r, rel)?;
        mounts::bind(
            src,
            at.as_fd(),
            &rootfs.join(rel),
            Bind::ReadOnly,
            &format!("/{rel}"),
        )?;
    }
    // The agent may not exec setuid binaries planted in the writable parts,
    // and nothing may change the binary that supervises it.
    let _ = mounts::dir(r, "proc")?;
    if cfg.network == Network::None {
        sys::loopback_up().map_err(io_err("bringing up the loopback interface"))?;
    }
    rustix::system::sethostname(b"hoist").map_err(|e| io_err("sethostname")(e.into()))?;
    if let Some(tree) = &cfg.gateway_root {
        gateway_tree(r, rootfs, tree, cfg.recordings.as_deref())?;
    }

    // PID 1 of the new pid namespace is the supervisor. Between fork and
    // exec, as the first process inside the namespace, the child mounts
    // `/proc` (only a process inside may), pivots into the rootfs and sets
    // its limits; the exec of `/.hoist/hoist` then resolves in the rootfs.
    // (One exec fewer than a separate init stage: start-up is measured.)
    let limits = cfg.limits.clone();
    let supervisor = supervisor_command(&supervisor_args(cfg));
    // This stage process is single-threaded (it could not have entered
    // namespaces otherwise), which `status_single_threaded` checks again:
    // `become_init` may then allocate and make its calls in the child.
    let status = crate::sys::status_single_threaded(supervisor, move || {
        become_init(root.as_fd(), &limits).map_err(|e| match e {
            SandboxError::Io { what, source } => {
                std::io::Error::new(source.kind(), format!("{what}: {source}"))
            }
            other => std::io::Error::other(other.to_string()),
        })
    })
    .map_err(io_err("starting PID 1 of the sandbox"))?;
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}

/// In PID 1 of the pid namespace, before its exec: mount `/proc`, pivot
/// into `root`, then limits and `no_new_privs`.
fn become_init(root: BorrowedFd<'_>, limits: &Limits) -> Result<(), SandboxError> {
    // The namespace ends with the stage (and so with hoist).
    crate::confine::die_with_parent().map_err(io_err("PR_SET_PDEATHSIG"))?;
    let proc_dir = mounts::dir(root, "proc")?;
    mounts::fresh(
        "proc",
        &[],
        NOSUID_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        proc_dir.as_fd(),
        "/proc",
    )?;
    // pivot_root(".", ".") stacks the old root under the new one; the
    // detach then removes it, so nothing of the host stays reachable.
    rustix::process::fchdir(root).map_err(|e| io_err("chdir to the rootfs")(e.into()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| io_err("pivot_root")(e.into()))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| io_err("detaching the old root")(e.into()))?;
    rustix::process::chdir("/").map_err(|e| io_err("chdir /")(e.into()))?;
    set_limits(limits)?;
    rustix::thread::set_no_new_privs(true).map_err(|e| io_err("no_new_privs")(e.into()))
}

/// The gateway's own tree at `/.hoist/gateway-root` (0700): `tree` bound
/// read-only, with the sandbox's `/dev`, a tmpfs `/run` (its `TMPDIR` is
/// there) and the recordings. Nothing of the agent's side reaches it:
/// uid 1000 cannot enter it, and Landlock hides `/.hoist` from
/// `install.sh` and the agent.
fn gateway_tree(
    r: BorrowedFd<'_>,
    rootfs: &Path,
    tree: &Path,
    recordings: Option<&Path>,
) -> Result<(), SandboxError> {
    // Mount points first, while the tree (the host's overlay) is writable.
    let t = File::open(tree).map_err(io_err(format!("{}", tree.display())))?;
    for rel in ["dev", "run", "recordings"] {
        mounts::dir(t.as_fd(), rel)?;
    }
    let at = mounts::dir(r, ".hoist/gateway-root")?;
    rustix::fs::fchmod(&at, rustix::fs::Mode::from_raw_mode(0o700))
        .map_err(|e| io_err("/.hoist/gateway-root")(e.into()))?;
    let path = rootfs.join(".hoist/gateway-root");
    mounts::bind(
        tree,
        at.as_fd(),
        &path,
        Bind::ReadOnly,
        "the gateway's tree",
    )?;
    let dev = mounts::dir(r, ".hoist/gateway-root/dev")?;
    mounts::bind(
        &rootfs.join("dev"),
        dev.as_fd(),
        &path.join("dev"),
        Bind::AsIs,
        "the gateway's /dev",
    )?;
    let run = mounts::dir(r, ".hoist/gateway-root/run")?;
    mounts::fresh(
        "tmpfs",
        &[("mode", "0755"), ("size", "64m")],
        NOSUID_NODEV,
        run.as_fd(),
        "the gateway's /run",
    )?;
    if let Some(rec) = recordings {
        let at = mounts::dir(r, ".hoist/gateway-root/recordings")?;
        mounts::bind(
            rec,
            at.as_fd(),
            &path.join("recordings"),
            Bind::ReadOnly,
            "the gateway's /recordings",
        )?;
    }
    Ok(())
}
