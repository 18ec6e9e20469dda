//! overlayfs mounts through the new mount API (fsopen/fsconfig/fsmount/
//! move_mount): layers are passed one by one with `lowerdir+` (Linux 6.8+),
//! so there is no one-page limit on the option string, and the mount is
//! attached to a directory fd opened beneath the rootfs, so no symlink the
//! image planted can redirect it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

/// One overlay: lower layers (topmost first), an upper and a work dir.
pub struct Overlay<'a> {
    pub lowers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    /// `userxattr`: whiteouts as `user.overlay.*`, for unprivileged mounts.
    pub userxattr: bool,
}

/// Mount `ov` on the directory `target` (an fd).
pub fn mount_overlay(ov: &Overlay<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for lower in ov.lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower.as_path())?;
    }
    fsconfig_set_string(&fs, "upperdir", ov.upper)?;
    fsconfig_set_string(&fs, "workdir", ov.work)?;
    if ov.userxattr {
        fsconfig_set_flag(&fs, "userxattr")?;
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
    move_mount(
        mnt.as_fd(),
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// Detach every mount at or below `path` (lazily, so busy ones go too).
pub fn unmount_all(path: &Path) -> io::Result<()> {
    loop {
        match rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `path` is a mount point (its device or mount id differs from
/// its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(me) = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::MNT_ID,
    ) else {
        return false;
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    let Ok(up) = rustix::fs::statx(
        rustix::fs::CWD,
        parent,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::MNT_ID,
    ) else {
        return false;
    };
    me.stx_mnt_id != up.stx_mnt_id
}
