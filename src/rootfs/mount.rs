//! overlayfs mounts through the new mount API (fsopen/fsconfig/fsmount/
//! move_mount): layers are passed one by one with `lowerdir+` (Linux 6.8+),
//! so there is no one-page limit on the option string, and the mount is
//! attached to a directory fd opened beneath the rootfs, so no symlink the
//! image planted can redirect it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
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

/// Open (creating as needed, mode 0755) the directory `rel` beneath
/// `root`, refusing any symlink on the way: image paths are resolved
/// inside the rootfs or refused, never followed out of it.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY | OFlags::NOFOLLOW;
    let mut dir = rustix::fs::openat2(root, ".", flags, Mode::empty(), resolve)?;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        if comp == ".." || comp == "." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "path climbs"));
        }
        match rustix::fs::mkdirat(&dir, comp, Mode::from_raw_mode(0o755)) {
            Ok(()) => {
                let d = rustix::fs::openat2(&dir, comp, flags, Mode::empty(), resolve)?;
                // mkdir honours the umask; the rule is 0755 root:root.
                rustix::fs::fchmod(&d, Mode::from_raw_mode(0o755))?;
                dir = d;
                continue;
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        dir = rustix::fs::openat2(&dir, comp, flags, Mode::empty(), resolve).map_err(|e| {
            if e == rustix::io::Errno::LOOP
                || e == rustix::io::Errno::XDEV
                || e == rustix::io::Errno::NOTDIR
            {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("/{rel}: {comp:?} is a symlink or not a directory in the image"),
                )
            } else {
                e.into()
            }
        })?;
    }
    Ok(dir)
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
