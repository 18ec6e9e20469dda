//! Mounts inside the rootfs, each attached to a directory or file opened
//! beneath the rootfs with symlinks refused (`crate::beneath`): an image
//! whose `/proc`, `/dev` or `/tmp` is a symlink gets an error, never a
//! mount somewhere on the host.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};

use crate::beneath::open_dir_beneath;

/// A mount step that failed: what it was doing, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct MountError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

/// Wrap an I/O error with what was being done (as the sandbox reports it).
fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MountError {
    let what = what.into();
    move |source| MountError { what, source }
}

/// Make every mount of this process's mount namespace private, recursively,
/// so that nothing mounted here propagates back to the namespace it was
/// copied from. Call right after unsharing the mount namespace.
pub fn make_private() -> std::io::Result<()> {
    use rustix::mount::MountPropagationFlags;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    Ok(())
}

/// Bind the host's `/dev/NAME` onto `dev/NAME` of the rootfs opened as
/// `root` at `rootfs` (a device node the sandbox may not create itself).
pub fn host_device(root: BorrowedFd<'_>, rootfs: &Path, name: &str) -> Result<(), MountError> {
    let rel = format!("dev/{name}");
    let at = file(root, &rel)?;
    bind(
        &Path::new("/dev").join(name),
        at.as_fd(),
        &rootfs.join(&rel),
        Bind::AsIs,
        &format!("/{rel}"),
    )
}

/// Open (creating if needed) the directory `rel` beneath `root`.
pub fn dir(root: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd, MountError> {
    open_dir_beneath(root, rel).map_err(io_err(format!("/{rel} in the rootfs")))
}

/// Open (creating an empty one if needed) the regular file `rel` beneath
/// `root`, as a mount point for a file bind.
pub fn file(root: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd, MountError> {
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let pdir = dir(root, parent)?;
    crate::beneath::open_file(
        pdir.as_fd(),
        name,
        OFlags::CREATE | OFlags::RDONLY,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| io_err(format!("/{rel} in the rootfs"))(e.into()))
}

fn attach(mnt: OwnedFd, at: BorrowedFd<'_>, what: &str) -> Result<(), MountError> {
    move_mount(
        mnt.as_fd(),
        "",
        at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| io_err(format!("mounting {what}"))(e.into()))
}

/// A new filesystem instance (tmpfs, proc, devpts) at `at`.
pub fn fresh(
    fstype: &str,
    options: &[(&str, &str)],
    attrs: MountAttrFlags,
    at: BorrowedFd<'_>,
    what: &str,
) -> Result<(), MountError> {
    let err = |e: rustix::io::Errno| io_err(format!("mounting {what}"))(e.into());
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(err)?;
    for (k, v) in options {
        if v.is_empty() {
            rustix::mount::fsconfig_set_flag(&fs, *k).map_err(err)?;
        } else {
            fsconfig_set_string(&fs, *k, *v).map_err(err)?;
        }
    }
    fsconfig_create(&fs).map_err(err)?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err)?;
    attach(mnt, at, what)
}

/// How a bind mount may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// As the source is (device nodes, a `/dev` that holds them).
    AsIs,
    /// Writable, but nothing on it is setuid or a device.
    NoSuidNoDev,
    /// Read-only, nosuid and nodev.
    ReadOnly,
}

/// Bind the host path `src` (a file or directory) at `at`, whose path is
/// `at_path` (already opened beneath the rootfs with symlinks refused, so
/// the path names that same place), restricted as `how` says.
pub fn bind(
    src: &Path,
    at: BorrowedFd<'_>,
    at_path: &Path,
    how: Bind,
    what: &str,
) -> Result<(), MountError> {
    let mnt = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| io_err(format!("opening {} for {what}", src.display()))(e.into()))?;
    attach(mnt, at, what)?;
    use rustix::mount::MountFlags;
    let flags = match how {
        Bind::AsIs => return Ok(()),
        Bind::NoSuidNoDev => MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV,
        Bind::ReadOnly => {
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV
        }
    };
    rustix::mount::mount_remount(at_path, flags, "")
        .map_err(|e| io_err(format!("restricting {what} ({how:?})"))(e.into()))
}
