//! The chroot isolation, for a runner inside a container whose seccomp
//! profile forbids `unshare` and `mount`. The rootfs is a plain directory
//! (a copy); `/dev` gets the nodes hoist may create (Docker grants
//! CAP_MKNOD), the hoist binary and context are copied in, `/output` is the
//! copy's own directory, which the host copies out of once this stage has
//! ended (`crate::export`; nothing here writes into `--out`). What this
//! cannot isolate is listed by `Isolation::not_isolated`.

use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use rustix::fs::{FileType, Mode};

use super::{exec_supervisor, io_err, supervisor_args, SandboxConfig, SandboxError};
use crate::beneath::open_dir_beneath;
use crate::confine::mounts;
use crate::confine::procfs::Procfs;

/// `__sandbox` in chroot mode: prepare the tree, run the supervisor
/// chrooted. The host copies `/output/task` out afterwards.
pub fn stage(cfg: &SandboxConfig) -> Result<i32, SandboxError> {
    // Root phases in the chroot share root's uid with this stage.
    crate::confine::not_dumpable().map_err(io_err("making the stage non-dumpable"))?;
    // Where the seccomp profile allows it (rootless hoist, as root of its
    // user namespace), a mount namespace of this stage's own, for binding
    // device nodes it may not create; it ends with the run. First: the
    // rootfs must be opened inside it for mounts to attach there.
    let private_mounts = enter_private_mount_namespace();
    let root = File::open(&cfg.rootfs).map_err(io_err("the rootfs"))?;
    let r = root.as_fd();
    device_nodes(r, &cfg.rootfs, &private_mounts)?;
    for (rel, mode) in [
        ("tmp", 0o1777),
        ("run", 0o755),
        ("output", 0o755),
        (".hoist", 0o755),
    ] {
        let d = open_dir_beneath(r, rel).map_err(io_err(format!("/{rel}")))?;
        rustix::fs::fchmod(&d, Mode::from_raw_mode(mode))
            .map_err(|e| io_err(format!("/{rel}"))(e.into()))?;
    }
    let hoist_dir = fd_path(&open_dir_beneath(r, ".hoist").map_err(io_err("/.hoist"))?)?;
    copy_file(&cfg.hoist_binary, &hoist_dir.join("hoist"), 0o755)?;
    copy_file(&cfg.context, &hoist_dir.join("context.json"), 0o600)?;
    if let Some(changes) = &cfg.changes {
        copy_file(changes, &hoist_dir.join("changes.tar"), 0o600)?;
    }
    if let Some(rec) = &cfg.recordings {
        let d = fd_path(&open_dir_beneath(r, "recordings").map_err(io_err("/recordings"))?)?;
        copy_dir_files(rec, &d)?;
    }
    if let Some(tree) = &cfg.gateway_root {
        gateway_tree(
            r,
            &cfg.rootfs,
            tree,
            cfg.recordings.as_deref(),
            &private_mounts,
        )?;
    }
    let status = Command::new("/proc/self/exe")
        .arg("__sandbox-chroot")
        .arg(&cfg.rootfs)
        .args(supervisor_args(cfg))
        .status()
        .map_err(io_err("starting the chrooted supervisor"))?;
    Ok(status.code().unwrap_or(1))
}

/// The device nodes of a tree's `/dev` (opened as `r` at `rootfs`), made
/// with mknod (Docker grants CAP_MKNOD), or bound from the host where
/// mknod is refused and mounting is allowed (`private_mounts`).
fn device_nodes(
    r: BorrowedFd<'_>,
    rootfs: &Path,
    private_mounts: &std::io::Result<()>,
) -> Result<(), SandboxError> {
    let dev = mounts::dir(r, "dev")?;
    // mknod honours the umask, and the nodes must be 0666; this stage is
    // single-threaded, so the process-wide umask is ours to change.
    let old_umask = rustix::process::umask(Mode::empty());
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        // Whatever the image put at that name (a file, or a symlink to a
        // host path) is replaced, never written through.
        match rustix::fs::unlinkat(&dev, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err(format!("/dev/{name}"))(e.into())),
        }
        if let Err(e) = rustix::fs::mknodat(
            &dev,
            name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        ) {
            // Without CAP_MKNOD (root of a user namespace: rootless
            // hoist), bind the host's node where mounting is allowed; else
            // the node is missing and the supervisor copes.
            let bound = match private_mounts {
                Ok(()) => mounts::host_device(r, rootfs, name).map_err(SandboxError::from),
                Err(e) => Err(io_err("unshare (mount namespace)")(e.kind().into())),
            };
            if let Err(b) = bound {
                // No logger in the sandbox stages: stderr is the run's log.
                crate::errln!("hoist sandbox: no /dev/{name}: mknod: {e}; bind: {b}");
            }
        }
    }
    rustix::process::umask(old_umask);
    Ok(())
}

fn enter_private_mount_namespace() -> std::io::Result<()> {
    crate::sys::unshare(rustix::thread::UnshareFlags::NEWNS)?;
    mounts::make_private()
}

/// `__sandbox-chroot ROOTFS ARGS...`: chroot, limit, exec the supervisor.
///
/// The supervisor shares this pid namespace with whatever else runs here
/// (other runs fanned out in the same runner, the runner's own user), so
/// it ends only its own descendants, which it reads from the procfs opened
/// here, before the chroot, and handed down as `--proc-fd`.
pub fn chroot_exec(rootfs: &Path, args: &[String]) -> i32 {
    let err = (|| -> Result<std::convert::Infallible, SandboxError> {
        // The supervisor ends with the stage (and so with hoist).
        crate::confine::die_with_parent().map_err(io_err("PR_SET_PDEATHSIG"))?;
        let procfs = Procfs::open(Path::new("/proc"))
            .map_err(|e| io_err("/proc (chroot isolation reads the run's processes from it)")(e))?;
        let fd = procfs
            .keep_across_exec()
            .map_err(io_err("keeping /proc open for the supervisor"))?;
        let mut args = args.to_vec();
        args.extend(["--proc-fd".to_string(), fd.to_string()]);
        rustix::process::chroot(rootfs).map_err(|e| io_err("chroot")(e.into()))?;
        rustix::process::chdir("/").map_err(|e| io_err("chdir /")(e.into()))?;
        Err(exec_supervisor(&super::Limits::default(), &args))
    })();
    match err {
        Ok(never) => match never {},
        Err(e) => {
            crate::errln!("hoist sandbox: {e}");
            1
        }
    }
}

fn fd_path(fd: &std::os::fd::OwnedFd) -> Result<std::path::PathBuf, SandboxError> {
    fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(fd)
    ))
    .map_err(io_err("resolving a rootfs path"))
}

fn copy_file(src: &Path, dst: &Path, mode: u32) -> Result<(), SandboxError> {
    // dst's parent was opened beneath the rootfs with symlinks refused; a
    // symlink planted at dst itself is removed rather than written through.
    if fs::symlink_metadata(dst).is_ok() {
        fs::remove_file(dst).map_err(io_err(format!("{}", dst.display())))?;
    }
    fs::copy(src, dst).map_err(io_err(format!(
        "copying {} to {}",
        src.display(),
        dst.display()
    )))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("{}", dst.display())))
}

/// The gateway's own tree (a copy of the pristine benchmark and gateway
/// layers, made by the host beside the rootfs) moved to
/// `/.hoist/gateway-root` (0700), with its device nodes, `/run` and the
/// recordings. uid 1000 cannot enter it; Landlock hides `/.hoist` from
/// `install.sh` and the agent.
fn gateway_tree(
    r: BorrowedFd<'_>,
    rootfs: &Path,
    tree: &Path,
    recordings: Option<&Path>,
    private_mounts: &std::io::Result<()>,
) -> Result<(), SandboxError> {
    let hoist = open_dir_beneath(r, ".hoist").map_err(io_err("/.hoist"))?;
    rustix::fs::renameat(rustix::fs::CWD, tree, &hoist, "gateway-root")
        .map_err(|e| io_err(format!("moving {} into the rootfs", tree.display()))(e.into()))?;
    let g = open_dir_beneath(r, ".hoist/gateway-root").map_err(io_err("/.hoist/gateway-root"))?;
    rustix::fs::fchmod(&g, Mode::from_raw_mode(0o700))
        .map_err(|e| io_err("/.hoist/gateway-root")(e.into()))?;
    device_nodes(
        g.as_fd(),
        &rootfs.join(".hoist/gateway-root"),
        private_mounts,
    )?;
    for (rel, mode) in [("run", 0o755), ("tmp", 0o1777)] {
        let d =
            open_dir_beneath(g.as_fd(), rel).map_err(io_err(format!("the gateway's /{rel}")))?;
        rustix::fs::fchmod(&d, Mode::from_raw_mode(mode))
            .map_err(|e| io_err(format!("the gateway's /{rel}"))(e.into()))?;
    }
    if let Some(rec) = recordings {
        let d = fd_path(
            &open_dir_beneath(g.as_fd(), "recordings")
                .map_err(io_err("the gateway's /recordings"))?,
        )?;
        copy_dir_files(rec, &d)?;
    }
    Ok(())
}

/// Copy the regular files of the host directory `src` into `dst` (0644).
fn copy_dir_files(src: &Path, dst: &Path) -> Result<(), SandboxError> {
    for e in fs::read_dir(src)
        .map_err(io_err(format!("{}", src.display())))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            copy_file(&e.path(), &dst.join(e.file_name()), 0o644)?;
        }
    }
    Ok(())
}
