//! Owner, mode, xattrs and times of what an entry created.

use rustix::fs::{self as rfs, AtFlags, Mode, XattrFlags};
use rustix::io::Errno;

use super::{err_name, errno, Applier, Handle, Kind, Powers};
use crate::unpack::fsops;
use crate::unpack::meta::Meta;
use crate::unpack::{Fidelity, UnpackError};

/// Sets what an entry's header says on what the entry created: the
/// reader thread and every writer thread hold one (it is plain data), and
/// each counts what it could not reproduce in its own [`Fidelity`].
#[derive(Clone, Copy, Debug)]
pub(super) struct MetaSetter {
    pub powers: Powers,
    /// This process's effective uid and gid.
    pub ids: (u32, u32),
}

impl MetaSetter {
    /// Owner, then mode (chown clears setuid/setgid), then xattrs (chown also
    /// clears `security.capability`), then times. Directory modes and times
    /// wait until the end, so later children neither change the mtime nor
    /// meet a read-only directory.
    pub(super) fn set(
        &self,
        name: &str,
        h: Handle<'_>,
        kind: Kind,
        meta: &Meta,
        fidelity: &mut Fidelity,
    ) -> Result<(), UnpackError> {
        self.set_owner(name, &h, meta, fidelity)?;
        let mode = Mode::from_raw_mode(meta.mode);
        match (&h, kind) {
            (_, Kind::Symlink) | (_, Kind::Dir) => Ok(()),
            (Handle::File(f), _) => rfs::fchmod(f, mode),
            // A node we just made (or a hardlink we just checked): not a
            // symlink, so following is moot; Linux has no lchmod before 6.6.
            (Handle::At(dir, last), _) => rfs::chmodat(dir, *last, mode, AtFlags::empty()),
        }
        .map_err(|e| UnpackError::io(name, "chmod", e))?;
        for (key, value) in &meta.xattrs {
            let r = match &h {
                Handle::File(f) => {
                    rfs::fsetxattr(f, key.as_slice(), value, XattrFlags::empty()).map_err(errno)
                }
                Handle::At(dir, last) => fsops::set_xattr_at(*dir, last, key, value),
            };
            match r {
                Ok(()) => {}
                // As Docker does: a file system without xattrs, or a name
                // this process may not set (user.* on a symlink, trusted.*
                // unprivileged), is recorded and skipped.
                Err(e)
                    if matches!(
                        Errno::from_io_error(&e),
                        Some(Errno::NOTSUP) | Some(Errno::PERM)
                    ) =>
                {
                    fidelity.xattrs_not_set += 1;
                }
                Err(e) => return Err(UnpackError::io(name, "set xattr", e)),
            }
        }
        let times = meta.times.timestamps();
        match (&h, kind) {
            (_, Kind::Dir) => Ok(()),
            (Handle::File(f), _) => rfs::futimens(f, &times),
            (Handle::At(dir, last), _) => {
                rfs::utimensat(dir, *last, &times, AtFlags::SYMLINK_NOFOLLOW)
            }
        }
        .map_err(|e| UnpackError::io(name, "set times", e))
    }

    fn set_owner(
        &self,
        name: &str,
        h: &Handle<'_>,
        meta: &Meta,
        fidelity: &mut Fidelity,
    ) -> Result<(), UnpackError> {
        if !self.powers.chown {
            if (meta.uid, meta.gid) != self.ids {
                fidelity.ownership_not_reproduced += 1;
                self.record_owner(h, meta);
            } else {
                forget_owner(h);
            }
            return Ok(());
        }
        let uid = Some(rfs::Uid::from_raw(meta.uid));
        let gid = Some(rfs::Gid::from_raw(meta.gid));
        let chown = |uid, gid| match h {
            Handle::File(f) => rfs::fchown(f, uid, gid),
            Handle::At(dir, last) => rfs::chownat(dir, *last, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
        };
        match chown(uid, gid) {
            Ok(()) if self.powers.in_user_namespace() => {
                forget_owner(h);
                Ok(())
            }
            Ok(()) => Ok(()),
            // In a user namespace, an id it does not map: keep what can be
            // kept (the uid or the gid alone), count the entry.
            Err(Errno::INVAL) if self.powers.in_user_namespace() => {
                fidelity.ownership_not_reproduced += 1;
                let _ = chown(uid, None).or_else(|_| chown(None, gid)); // best effort
                self.record_owner(h, meta);
                Ok(())
            }
            Err(e) => Err(UnpackError::io(name, "chown", e)),
        }
    }

    /// Record the owner the entry should have had in
    /// [`crate::unpack::OWNER_XATTR`], so `hoist tree-digest` reports
    /// the image's tree. Best effort: symlinks cannot carry `user.*`
    /// xattrs, and the entry is counted as not reproduced either way.
    fn record_owner(&self, h: &Handle<'_>, meta: &Meta) {
        let key = crate::unpack::OWNER_XATTR.as_bytes();
        let value = format!("{}:{}", meta.uid, meta.gid);
        let _ = match h {
            Handle::File(f) => {
                rfs::fsetxattr(f, key, value.as_bytes(), XattrFlags::empty()).map_err(errno)
            }
            Handle::At(dir, last) => fsops::set_xattr_at(*dir, last, key, value.as_bytes()),
        };
    }
}

impl Applier<'_> {
    /// [`MetaSetter::set`] on the reader thread, counted in the layer's stats.
    pub(super) fn set_meta(
        &mut self,
        name: &str,
        h: Handle<'_>,
        kind: Kind,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let fidelity = &mut self.counts.not_reproduced;
        self.setter.set(name, h, kind, meta, fidelity)
    }

    /// Directory modes and times, once every child is in place.
    pub(super) fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (key, later) in std::mem::take(&mut self.dirs) {
            let comps: Vec<Vec<u8>> = match key.is_empty() {
                true => Vec::new(),
                false => key.split(|&b| b == b'/').map(<[u8]>::to_vec).collect(),
            };
            let name = err_name(&key);
            // Gone or replaced by a later entry of this layer: nothing to do.
            let Some(fd) = self.existing_dir(&name, &comps)? else {
                continue;
            };
            rfs::chmodat(&*fd, ".", Mode::from_raw_mode(later.mode), AtFlags::empty())
                .map_err(|e| UnpackError::io(&name, "chmod", e))?;
            rfs::utimensat(
                &*fd,
                ".",
                &later.times.timestamps(),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| UnpackError::io(&name, "set times", e))?;
        }
        Ok(())
    }
}

/// Drop the owner record of an entry now reproduced: a directory an
/// earlier layer recorded must not keep a record that outlives the truth.
/// (An entry just written, reached as a file, has none.)
fn forget_owner(h: &Handle<'_>) {
    if let Handle::At(dir, last) = h {
        // Absent is the usual case; a failure only leaves a stale record.
        let _ = fsops::remove_xattr_at(*dir, last, crate::unpack::OWNER_XATTR.as_bytes());
    }
}
