//! Paths beneath a root that nothing in the tree can redirect: every
//! component resolved with openat2 inside the root, no symlink (nor magic
//! link) followed. The one primitive rootfs, the sandbox stages, the
//! install jail and the mounts of `confine` share, beneath all of them.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};

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
