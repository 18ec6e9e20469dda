//! Whiteouts and opaque directories (image-spec layer.md "Whiteouts"), in
//! both output forms.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::{join_key, split, Applier};
use crate::unpack::fsops;
use crate::unpack::path::{EntryPath, MAX_DEPTH};
use crate::unpack::UnpackError;

impl Applier<'_> {
    pub(super) fn whiteout(&mut self, name: &str, target: &EntryPath) -> Result<(), UnpackError> {
        let (pc, last) = split(target);
        if self.overlay {
            let parent = self.parent(name, pc)?;
            return self.overlay_whiteout(name, parent.as_fd(), last, target.key());
        }
        let Some(parent) = self.existing_dir(name, pc)? else {
            return Ok(());
        };
        self.hide_lower(name, parent.as_fd(), &pc.join(&b'/'), last, 0)
    }

    pub(super) fn opaque(&mut self, name: &str, dir: &EntryPath) -> Result<(), UnpackError> {
        let comps = dir.components();
        if self.overlay {
            let fd = self.parent(name, comps)?;
            return self.set_opaque(name, fd.as_fd(), b".");
        }
        let Some(fd) = self.existing_dir(name, comps)? else {
            return Ok(());
        };
        let key = dir.key();
        let children =
            fsops::list(fd.as_fd()).map_err(|e| UnpackError::io(name, "list directory", e))?;
        for child in children {
            self.hide_lower(name, fd.as_fd(), &key, &child, 0)?;
        }
        Ok(())
    }

    /// Tree mode: removes what lower layers put at `dir_key/child`, keeping
    /// what this layer wrote (and, inside a directory this layer wrote,
    /// removing the lower children it did not).
    fn hide_lower(
        &self,
        name: &str,
        dir: BorrowedFd<'_>,
        dir_key: &[u8],
        child: &[u8],
        depth: usize,
    ) -> Result<(), UnpackError> {
        let key = join_key(dir_key, child);
        if !self.written.contains(&key) {
            fsops::remove_all(dir, child)
                .map_err(|e| UnpackError::io(name, "remove whited-out entry", e))?;
            self.root.forget();
            return Ok(());
        }
        let st = fsops::lstat(dir, child).map_err(|e| UnpackError::io(name, "lstat", e))?;
        let is_dir = matches!(st, Some(st) if fsops::file_type(&st) == FileType::Directory);
        if !is_dir || depth > MAX_DEPTH {
            return Ok(());
        }
        let sub = self
            .root
            .child_dir(dir, child)
            .map_err(|e| UnpackError::io(name, "open directory", e))?;
        let children =
            fsops::list(sub.as_fd()).map_err(|e| UnpackError::io(name, "list directory", e))?;
        for grandchild in children {
            self.hide_lower(name, sub.as_fd(), &key, &grandchild, depth + 1)?;
        }
        Ok(())
    }

    /// Overlay form: a whiteout is a 0/0 character device (overlayfs.rst
    /// "whiteouts and opaque directories"); if the layer itself put a
    /// directory there, that directory is made opaque instead.
    fn overlay_whiteout(
        &mut self,
        name: &str,
        parent: BorrowedFd<'_>,
        last: &[u8],
        key: Vec<u8>,
    ) -> Result<(), UnpackError> {
        let existing = fsops::lstat(parent, last).map_err(|e| UnpackError::io(name, "lstat", e))?;
        match existing {
            Some(st) if fsops::file_type(&st) == FileType::Directory => {
                return self.set_opaque(name, parent, last)
            }
            Some(_) => return Ok(()),
            None => {}
        }
        self.whited_out.insert(key);
        match rfs::mknodat(parent, last, FileType::CharacterDevice, Mode::empty(), 0) {
            Ok(()) => Ok(()),
            // Linux lets anyone create a 0/0 whiteout since 5.8; before
            // that, unprivileged, use an xattr whiteout (Linux 6.7+).
            Err(Errno::PERM) if !self.powers.devices => self.xattr_whiteout(name, parent, last),
            Err(e) => Err(UnpackError::io(name, "mknod whiteout", e)),
        }
    }

    fn xattr_whiteout(
        &mut self,
        name: &str,
        parent: BorrowedFd<'_>,
        last: &[u8],
    ) -> Result<(), UnpackError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(parent, last, flags, Mode::empty())
            .map_err(|e| UnpackError::io(name, "create whiteout", e))?;
        rfs::fsetxattr(&fd, "user.overlay.whiteout", b"y", XattrFlags::empty())
            .map_err(|e| UnpackError::io(name, "set whiteout xattr", e))?;
        // The parent must say it holds xattr whiteouts, unless it is opaque.
        let current = fsops::get_xattr_at(parent, b".", b"user.overlay.opaque")
            .map_err(|e| UnpackError::io(name, "get opaque xattr", e))?;
        if current.as_deref() != Some(b"y") {
            fsops::set_xattr_at(parent, b".", b"user.overlay.opaque", b"x")
                .map_err(|e| UnpackError::io(name, "set opaque xattr", e))?;
        }
        Ok(())
    }

    pub(super) fn set_opaque(
        &self,
        name: &str,
        dir: BorrowedFd<'_>,
        last: &[u8],
    ) -> Result<(), UnpackError> {
        // Unprivileged overlay mounts (userxattr) read user.overlay.*.
        let key: &[u8] = if self.powers.trusted_xattrs {
            b"trusted.overlay.opaque"
        } else {
            b"user.overlay.opaque"
        };
        fsops::set_xattr_at(dir, last, key, b"y")
            .map_err(|e| UnpackError::io(name, "set opaque xattr", e))
    }
}
