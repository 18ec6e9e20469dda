//! File-system operations confined to a root directory handle.
//!
//! Directories are reached only through `crate::beneath` (openat2
//! `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, or a
//! component walk with `O_NOFOLLOW` where openat2 is refused), so no
//! symlink is followed on the way and `..` cannot leave the root. Every
//! change is then made with a `*at` call on that directory and one plain
//! name (never containing `/`), with `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`/
//! `O_EXCL` wherever the call has one, so the final component is never
//! followed either.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;

use super::path::MAX_DEPTH;
pub(crate) use crate::beneath::DirError;
use crate::beneath::{self, Access};

pub(crate) struct Root<'a> {
    fd: BorrowedFd<'a>,
    /// The last directory opened: layers list siblings together, so most
    /// entries reuse it. Dropped whenever anything is removed.
    cache: RefCell<Option<(Vec<u8>, Rc<OwnedFd>)>>,
    /// The same, for handles shared with other threads (the unpack's
    /// writers).
    shared: RefCell<Option<(Vec<u8>, Arc<OwnedFd>)>>,
}

impl<'a> Root<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>) -> Root<'a> {
        Root {
            fd,
            cache: RefCell::new(None),
            shared: RefCell::new(None),
        }
    }

    /// Forgets the cached directory; call after removing anything.
    pub(crate) fn forget(&self) {
        self.cache.borrow_mut().take();
        self.shared.borrow_mut().take();
    }

    /// Opens the directory at `comps` (an `O_PATH` handle), creating missing
    /// components (0755) when `create` is set.
    pub(crate) fn open_dir(
        &self,
        comps: &[Vec<u8>],
        create: bool,
    ) -> Result<Rc<OwnedFd>, DirError> {
        let key = comps.join(&b'/');
        if let Some((k, fd)) = self.cache.borrow().as_ref() {
            if *k == key {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(beneath::open_dir(self.fd, comps, create, Access::Path)?);
        *self.cache.borrow_mut() = Some((key, fd.clone()));
        Ok(fd)
    }

    /// [`Self::open_dir`], as a handle other threads may hold.
    pub(crate) fn open_dir_shared(
        &self,
        comps: &[Vec<u8>],
        create: bool,
    ) -> Result<Arc<OwnedFd>, DirError> {
        let key = comps.join(&b'/');
        if let Some((k, fd)) = self.shared.borrow().as_ref() {
            if *k == key {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(beneath::open_dir(self.fd, comps, create, Access::Path)?);
        *self.shared.borrow_mut() = Some((key, fd.clone()));
        Ok(fd)
    }

    /// Opens the subdirectory `name` of `dir` without following a symlink.
    pub(crate) fn child_dir(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
        beneath::child_dir(dir, name, Access::Path)
    }
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub(crate) fn lstat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    // Not Dir::read_from: it reopens with the handle's own flags, and ours
    // are O_PATH, which cannot be read.
    let fd = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in Dir::new(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Removes `name` from `dir`, recursively if it is a directory. Never
/// follows a symlink: a symlink is unlinked, not its target.
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    remove_all_depth(dir, name, 0)
}

fn remove_all_depth(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    // Trees come only from layers, whose names are at most MAX_DEPTH deep.
    if depth > MAX_DEPTH {
        return Err(io::Error::other("directory tree too deep to remove"));
    }
    let sub = open_listable(dir, name)?;
    for child in list(sub.as_fd())? {
        match remove_all_depth(sub.as_fd(), &child, depth + 1) {
            // A directory without write permission (only unprivileged runs
            // meet this: root has CAP_DAC_OVERRIDE); it is ours to change.
            Err(e) if e.raw_os_error() == Some(Errno::ACCESS.raw_os_error()) => {
                rfs::fchmod(&sub, Mode::from_raw_mode(0o700))?;
                remove_all_depth(sub.as_fd(), &child, depth + 1)?;
            }
            r => r?,
        }
    }
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn open_listable(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir, name, flags, Mode::empty()) {
        Err(Errno::ACCESS) => {
            rfs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
            Ok(rfs::openat(dir, name, flags, Mode::empty())?)
        }
        r => Ok(r?),
    }
}

/// The path `/proc/thread-self/fd/N/NAME`, which names `NAME` inside the
/// directory `dir` refers to. The *xattr syscalls have no `*at` form before
/// Linux 6.13, and `lsetxattr` on this path does not follow `NAME` itself,
/// so it is the confined way to set an xattr on a symlink, device or dir.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/thread-self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

/// `lsetxattr` on `name` in `dir` (see [`proc_path`]).
pub(crate) fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let path = proc_path(dir, name);
    rfs::lsetxattr(
        OsStr::from_bytes(&path),
        OsStr::from_bytes(key),
        value,
        XattrFlags::empty(),
    )?;
    Ok(())
}

/// `lremovexattr` of `key` on `name` in `dir`; absent is fine.
pub(crate) fn remove_xattr_at(dir: BorrowedFd<'_>, name: &[u8], key: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name);
    match rfs::lremovexattr(OsStr::from_bytes(&path), OsStr::from_bytes(key)) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `lgetxattr` on `name` in `dir`; `None` when the attribute is not set.
pub(crate) fn get_xattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &[u8],
) -> io::Result<Option<Vec<u8>>> {
    let path = proc_path(dir, name);
    let mut buf = vec![0u8; 256];
    match rfs::lgetxattr(
        OsStr::from_bytes(&path),
        OsStr::from_bytes(key),
        &mut buf[..],
    ) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(Errno::NODATA) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
