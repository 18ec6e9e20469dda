//! The namespaces isolation: `__sandbox` unshares and builds the mounts,
//! `__sandbox-init` (PID 1 of the new pid namespace) mounts `/proc`,
//! pivots into the rootfs and execs the supervisor.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use rustix::mount::MountAttrFlags;
use rustix::thread::UnshareFlags;

use super::{
    exec_supervisor, io_err, mounts, supervisor_args, Network, SandboxConfig, SandboxError,
};
use crate::sys;

const NOSUID_NODEV: MountAttrFlags =
    MountAttrFlags::MOUNT_ATTR_NOSUID.union(MountAttrFlags::MOUNT_ATTR_NODEV);

fn unshare_all(network: Network) -> Result<(), SandboxError> {
    if !rustix::process::geteuid().is_root() {
        return Err(SandboxError::Unsupported(
            "namespaces isolation as an unprivileged user is not supported yet; run as root or use --isolation chroot"
                .into(),
        ));
    }
    let mut flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    if network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    sys::unshare(flags).map_err(io_err("unshare (namespaces)"))?;
    // Nothing mounted here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| io_err("making mounts private")(e.into()))
}

/// Enter the namespaces and mount a tmpfs, to learn whether this host
/// allows it (Docker's default seccomp profile does not).
pub fn probe() -> Result<(), SandboxError> {
    unshare_all(Network::None)?;
    let dir = tempfile::tempdir().map_err(io_err("probe dir"))?;
    let fd = File::open(dir.path()).map_err(io_err("probe dir"))?;
    mounts::fresh(
        "tmpfs",
        &[("size", "4k")],
        NOSUID_NODEV,
        fd.as_fd(),
        "a probe tmpfs",
    )
}

/// `__sandbox`: isolate, mount, start PID 1, wait for it.
pub fn stage(cfg: &SandboxConfig, config_path: &Path) -> Result<i32, SandboxError> {
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
        let rel = format!("dev/{node}");
        let at = mounts::file(r, &rel)?;
        mounts::bind(
            &Path::new("/dev").join(node),
            at.as_fd(),
            &rootfs.join(&rel),
            false,
            &format!("/{rel}"),
        )?;
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

    let output = mounts::dir(r, "output")?;
    mounts::bind(
        &cfg.output,
        output.as_fd(),
        &rootfs.join("output"),
        false,
        "/output",
    )?;
    if let Some(rec) = &cfg.recordings {
        let at = mounts::dir(r, "recordings")?;
        mounts::bind(
            rec,
            at.as_fd(),
            &rootfs.join("recordings"),
            true,
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
    for (src, rel) in [
        (&cfg.hoist_binary, ".hoist/hoist"),
        (&cfg.context, ".hoist/context.json"),
    ] {
        let at = mounts::file(r, rel)?;
        mounts::bind(src, at.as_fd(), &rootfs.join(rel), true, &format!("/{rel}"))?;
    }
    // The agent may not exec setuid binaries planted in the writable parts,
    // and nothing may change the binary that supervises it.
    let _ = mounts::dir(r, "proc")?;
    if cfg.network == Network::None {
        sys::loopback_up().map_err(io_err("bringing up the loopback interface"))?;
    }
    rustix::system::sethostname(b"hoist").map_err(|e| io_err("sethostname")(e.into()))?;

    let status = Command::new("/proc/self/exe")
        .arg("__sandbox-init")
        .arg(config_path)
        .status()
        .map_err(io_err("starting PID 1 of the sandbox"))?;
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}

/// `__sandbox-init`: PID 1 of the pid namespace. Mounts `/proc` (only a
/// process inside the namespace can), pivots, execs the supervisor.
pub fn init_stage(config_path: &Path) -> i32 {
    match init(config_path) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("hoist sandbox: {e}");
            1
        }
    }
}

fn init(config_path: &Path) -> Result<std::convert::Infallible, SandboxError> {
    let cfg: SandboxConfig = serde_json::from_slice(
        &std::fs::read(config_path)
            .map_err(io_err(format!("reading {}", config_path.display())))?,
    )
    .map_err(|e| SandboxError::Unsupported(e.to_string()))?;
    let root = File::open(&cfg.rootfs).map_err(io_err("the rootfs"))?;
    let proc_dir = mounts::dir(root.as_fd(), "proc")?;
    mounts::fresh(
        "proc",
        &[],
        NOSUID_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        proc_dir.as_fd(),
        "/proc",
    )?;
    // pivot_root(".", ".") stacks the old root under the new one; the
    // detach then removes it, so nothing of the host stays reachable.
    rustix::process::fchdir(&root).map_err(|e| io_err("chdir to the rootfs")(e.into()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| io_err("pivot_root")(e.into()))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| io_err("detaching the old root")(e.into()))?;
    rustix::process::chdir("/").map_err(|e| io_err("chdir /")(e.into()))?;
    Err(exec_supervisor(&cfg.limits, &supervisor_args(&cfg)))
}
