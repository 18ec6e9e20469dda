//! overlayfs mounts through the new mount API (fsopen/fsconfig/fsmount/
//! move_mount): layers are passed one by one with `lowerdir+` (Linux 6.8+),
//! so there is no one-page limit on the option string, and the mount is
//! attached to a directory fd opened beneath the rootfs, so no symlink the
//! image planted can redirect it.
//!
//! Older kernels (Debian 12's 6.1, Ubuntu 22.04's 5.15) refuse `lowerdir+`
//! with EINVAL; there the layers go as one `lowerdir=A:B:…` option string
//! through mount(2), as runc and containerd pass them, onto the same fd
//! (through its `/proc/self/fd` link, which names that very directory).
//! The string is limited to a page: an image with too many layers for it
//! fails the mount, and the caller falls back to a copy.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

/// One overlay: lower layers (topmost first), an upper and a work dir.
#[derive(Clone, Copy)]
pub struct Overlay<'a> {
    pub lowers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    /// `userxattr`: whiteouts as `user.overlay.*`, for unprivileged mounts.
    pub userxattr: bool,
}

/// Mount `ov` on the directory `target` (an fd).
pub fn mount_overlay(ov: &Overlay<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    match mount_layer_by_layer(ov, target) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            // The first error is the one worth reporting should this fail too.
            let Some(data) = legacy_options(ov) else {
                return Err(e);
            };
            let at = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
            let Ok(data) = std::ffi::CString::new(data) else {
                return Err(e);
            };
            rustix::mount::mount(
                "overlay",
                &at,
                "overlay",
                MountFlags::empty(),
                data.as_c_str(),
            )
            .map_err(|_| e)
        }
        r => r,
    }
}

/// The one-string options of `ov` for mount(2), unless a path holds a
/// character the option syntax gives a meaning (`:`, `,`, `\`), or the
/// string exceeds the page mount(2) copies.
fn legacy_options(ov: &Overlay<'_>) -> Option<String> {
    let plain = |p: &Path| {
        let s = p.to_str()?;
        (!s.contains([':', ',', '\\'])).then_some(s.to_string())
    };
    let lowers: Option<Vec<String>> = ov.lowers.iter().map(|l| plain(l)).collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers?.join(":"),
        plain(ov.upper)?,
        plain(ov.work)?
    );
    if ov.userxattr {
        data.push_str(",userxattr");
    }
    (data.len() < 4096).then_some(data)
}

/// The new mount API, each lower layer its own `lowerdir+` (Linux 6.8+).
fn mount_layer_by_layer(ov: &Overlay<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_options_join_the_layers_and_refuse_what_the_syntax_would_misread() {
        let lowers = [PathBuf::from("/s/layers/b"), PathBuf::from("/s/layers/a")];
        let ov = Overlay {
            lowers: &lowers,
            upper: Path::new("/r/upper"),
            work: Path::new("/r/work"),
            userxattr: true,
        };
        assert_eq!(
            legacy_options(&ov).as_deref(),
            Some("lowerdir=/s/layers/b:/s/layers/a,upperdir=/r/upper,workdir=/r/work,userxattr")
        );
        for odd in ["/s:t/x", "/s,t/x", "/s\\t/x"] {
            let lowers = [PathBuf::from(odd)];
            assert_eq!(
                legacy_options(&Overlay {
                    lowers: &lowers,
                    ..ov
                }),
                None,
                "{odd}"
            );
        }
        let many: Vec<PathBuf> = (0..64)
            .map(|i| PathBuf::from(format!("/{i:0>70}")))
            .collect();
        assert_eq!(
            legacy_options(&Overlay {
                lowers: &many,
                ..ov
            }),
            None
        );
    }
}
