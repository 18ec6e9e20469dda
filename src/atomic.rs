//! Atomic file writes, the one way hoist replaces a file: the bytes go to
//! a temp file in the target's directory (so the rename stays on one file
//! system), which gets its mode, is synced where it matters, and is
//! renamed over the target. A reader sees the old content or the new,
//! never a mix; a crash leaves at most a `.tmp-*` file beside it, never a
//! half-written target; an uncommitted temp file is removed when dropped.
//!
//! The directory is not synced after the rename: after a crash a new name
//! may be missing, but never partial, and every writer here can make its
//! file again (a blob is fetched again, an index entry is recorded by the
//! next pull, a cache record is recomputed).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

/// How every temp file's name begins: `hoist store verify` and `hoist gc`
/// know a name like it as a write in progress, or one a crash left, and
/// `crate::export` never copies a name beginning with a dot.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Random names tried before giving up (each a 64-bit draw).
const TEMP_NAME_TRIES: usize = 8;

/// Whether the bytes reach the disk before the rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync first: after a crash the target holds the old bytes or the
    /// new, never an empty or short file. For what the store keeps and
    /// what a rootfs is given.
    Synced,
    /// No fsync: for a record beside something that is not synced either
    /// (an unpacked cache entry), which a crash loses together with it and
    /// the cache's own checks then catch; and for a run's output, which a
    /// crash makes worthless anyway.
    Unsynced,
}

/// A temp file being written, renamed over its target by
/// [`Temp::commit`] or [`Temp::commit_at`]; removed if dropped before.
///
/// It is made with `O_CREAT | O_EXCL | O_NOFOLLOW` under a random name in
/// a directory handle, so a name planted in the directory (a symlink, a
/// file) is never written through, and the rename replaces whatever is at
/// the target's name rather than follow it.
pub struct Temp {
    dir: OwnedFd,
    name: String,
    /// The directory's path joined with `name`, for errors.
    path: PathBuf,
    file: File,
    mode: u32,
    committed: bool,
}

impl Temp {
    /// A temp file beside `target`, to become it with mode `mode`.
    pub fn beside(target: &Path, mode: u32) -> io::Result<Temp> {
        Temp::in_dir(parent(target), mode)
    }

    /// A temp file in `dir`, for a target on the same file system whose
    /// name is known only once it is written (a blob named by its digest).
    pub fn in_dir(dir: &Path, mode: u32) -> io::Result<Temp> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(dir, flags, Mode::empty())?;
        Temp::create(fd, dir, mode)
    }

    /// A temp file in the directory `dir` is a handle of (`shown` is its
    /// path, for errors): for a directory hoist does not trust by path.
    pub fn in_dir_fd(dir: BorrowedFd<'_>, shown: &Path, mode: u32) -> io::Result<Temp> {
        Temp::create(dir.try_clone_to_owned()?, shown, mode)
    }

    fn create(dir: OwnedFd, shown: &Path, mode: u32) -> io::Result<Temp> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..TEMP_NAME_TRIES {
            let name = format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>());
            match rustix::fs::openat(&dir, &name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => {
                    return Ok(Temp {
                        path: shown.join(&name),
                        dir,
                        name,
                        file: File::from(fd),
                        mode,
                        committed: false,
                    })
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free temp name in {}", shown.display()),
        ))
    }

    /// The file to write into.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the temp file is, for errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give the file its mode (whatever the umask), sync it as asked and
    /// rename it over `target`.
    pub fn commit(mut self, target: &Path, durability: Durability) -> io::Result<()> {
        self.finish(durability)?;
        rustix::fs::renameat(&self.dir, &self.name, CWD, target)?;
        self.committed = true;
        Ok(())
    }

    /// [`Temp::commit`] to `name` in the directory `dir` is a handle of.
    pub fn commit_at(
        mut self,
        dir: BorrowedFd<'_>,
        name: &str,
        durability: Durability,
    ) -> io::Result<()> {
        self.finish(durability)?;
        rustix::fs::renameat(&self.dir, &self.name, dir, name)?;
        self.committed = true;
        Ok(())
    }

    fn finish(&mut self, durability: Durability) -> io::Result<()> {
        self.file.flush()?;
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(self.mode))?;
        if durability == Durability::Synced {
            self.file.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.committed {
            // Gone already only if something else removed it; nothing
            // depends on it then.
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), &self.name, AtFlags::empty());
        }
    }
}

/// Replace `target` with `bytes` (mode `mode`), atomically.
pub fn write(target: &Path, bytes: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    let mut tmp = Temp::beside(target, mode)?;
    tmp.file.write_all(bytes)?;
    tmp.commit(target, durability)
}

/// Rename `from`, already written through `file`, over `to`, synced as
/// asked: for a file that must outlive the process before it is complete
/// (a resumable download), and so cannot be a [`Temp`].
pub fn commit_file(file: &File, from: &Path, to: &Path, durability: Durability) -> io::Result<()> {
    if durability == Durability::Synced {
        file.sync_all()?;
    }
    std::fs::rename(from, to)
}

/// The directory a temp file for `target` goes in.
fn parent(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_whole_with_the_mode_asked_and_no_temp_left() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.json");
        for (bytes, mode) in [(&b"old"[..], 0o600), (&b"new and longer"[..], 0o644)] {
            write(&p, bytes, mode, Durability::Synced).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), bytes);
            let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(m, mode);
        }
        assert_eq!(names(d.path()), ["index.json"]);
    }

    #[test]
    fn replaces_a_symlink_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let p = d.path().join("link");
        std::os::unix::fs::symlink(&outside, &p).unwrap();
        write(&p, b"x", 0o644, Durability::Unsynced).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
    }

    #[test]
    fn a_dropped_temp_leaves_nothing_and_the_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("blob");
        std::fs::write(&p, b"before").unwrap();
        let tmp = Temp::beside(&p, 0o644).unwrap();
        assert!(tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(TEMP_PREFIX));
        tmp.file().write_all(b"half").unwrap();
        drop(tmp);
        assert_eq!(std::fs::read(&p).unwrap(), b"before");
        assert_eq!(names(d.path()), ["blob"]);
    }

    #[test]
    fn a_temp_in_another_directory_commits_to_a_name_found_later() {
        let d = tempfile::tempdir().unwrap();
        let (ingest, blobs) = (d.path().join("ingest"), d.path().join("blobs"));
        std::fs::create_dir(&ingest).unwrap();
        std::fs::create_dir(&blobs).unwrap();
        let tmp = Temp::in_dir(&ingest, 0o644).unwrap();
        tmp.file().write_all(b"layer").unwrap();
        tmp.commit(&blobs.join("abc"), Durability::Synced).unwrap();
        assert_eq!(std::fs::read(blobs.join("abc")).unwrap(), b"layer");
        assert!(names(&ingest).is_empty());
    }

    #[test]
    fn a_directory_handle_is_written_by_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = File::open(d.path()).unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("result.json")).unwrap();
        let tmp = Temp::in_dir_fd(dir.as_fd(), d.path(), 0o644).unwrap();
        assert!(tmp.path().starts_with(d.path()));
        tmp.file().write_all(b"{}").unwrap();
        tmp.commit_at(dir.as_fd(), "result.json", Durability::Unsynced)
            .unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("result.json")).unwrap(), b"{}");
        assert_eq!(names(d.path()), ["outside", "result.json"]);
    }

    #[test]
    fn commit_file_renames_a_kept_partial() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("x.partial"), d.path().join("x"));
        let mut f = File::create(&from).unwrap();
        f.write_all(b"done").unwrap();
        commit_file(&f, &from, &to, Durability::Synced).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"done");
        assert!(!from.exists());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = write(&d.path().join("no/such"), b"x", 0o644, Durability::Synced).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
