//! How results leave the sandbox (docs/threat-model.md, invariant 3: they
//! leave as plain files the host copies out, and the host never follows a
//! link it did not make).
//!
//! The sandbox writes into a directory of its own (crane mode: the run's
//! private directory, or the chroot copy's `/output`; container mode: the
//! container's `/output`). Root inside it is root on that directory, so
//! what is there may be anything: a setuid-root shell, a device node, a
//! fifo, a symlink to a host file, a hard link to the hidden tests. Only
//! this module moves bytes from there into the user's `--out`, and every
//! write the host makes into `--out` goes through it:
//!
//! - the source directory and its files are opened beneath its base by
//!   [`crate::beneath`] (openat2 `RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS`, `O_NOFOLLOW`); only regular files with one
//!   link and a plain name are read, by descriptor;
//! - the destination is a directory handle opened without following a
//!   symlink ([`OutDir`]); each file is created there as a fresh temp file
//!   (`O_CREAT | O_EXCL`, mode 0644, owned by whoever runs hoist) and
//!   renamed over its name, which replaces a planted symlink instead of
//!   writing through it;
//! - the bytes copied are bounded (`HOIST_OUTPUT_MAX_BYTES`, default 1 GiB),
//!   so a run cannot fill the host's disk through `--out`.
//!
//! Flat only: the supervisor writes plain files into `/output/task` and
//! nothing else, so a directory there is skipped and reported like any
//! other entry that is not a regular file.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::Serialize;

use crate::atomic::{Durability, Temp};
use crate::beneath::{Access, DirError};

/// The environment variable that bounds the bytes one run may copy into
/// `--out`.
pub const MAX_BYTES_VAR: &str = "HOIST_OUTPUT_MAX_BYTES";
/// Its default: generous for logs and a patch, small beside a disk.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is a symlink; hoist does not write through a link into --out (pass the directory it points to)")]
    OutIsSymlink { path: PathBuf },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: the sandbox's output is a symlink or not a directory; nothing was copied")]
    SourceNotADirectory { path: PathBuf },
    #[error("{MAX_BYTES_VAR}={value:?} is not a number of bytes")]
    BadLimit { value: String },
    #[error("{name:?} is not a plain file name")]
    BadName { name: String },
    #[error("reading the output tar of {what}: {source}")]
    Tar { what: String, source: io::Error },
    #[error("{path} is the output of another hoist that is still running; give this run a directory of its own")]
    OutInUse { path: PathBuf },
    #[error("{path} is not empty (it holds {entry:?}, an earlier run's output?); give this run an empty or new directory, or pass --force to clear it first")]
    OutNotEmpty { path: PathBuf, entry: String },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn errno_at(path: &Path) -> impl FnOnce(Errno) -> ExportError + '_ {
    move |e| ExportError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// What was copied into `--out` and what was left behind, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Names copied, in the order they were copied.
    pub copied: Vec<String>,
    /// Bytes copied.
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
    /// The byte limit stopped the copy.
    pub limit_reached: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The entry's name, lossily decoded.
    pub name: String,
    pub reason: SkipReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Symlink,
    Fifo,
    Socket,
    Device,
    Directory,
    /// A regular file with more than one link: it may be a file from
    /// elsewhere in the rootfs (the hidden tests) under another name.
    Hardlink,
    /// Not a plain single-component name (see [`plain_name`]).
    Name,
    /// Past the byte limit.
    OverLimit,
    /// Changed between the look and the open (not a live sandbox's doing:
    /// it has ended; reported all the same).
    Changed,
    /// A tar entry of another kind (sparse, extension, ...).
    Other,
}

impl ExportReport {
    fn skip(&mut self, name: &OsStr, reason: SkipReason) {
        self.skipped.push(Skipped {
            name: name.to_string_lossy().into_owned(),
            reason,
        });
    }
}

/// A name the host writes into `--out`: 1 to 255 bytes of `A-Z a-z 0-9 .
/// _ -`, not starting with a dot (so never `.`, `..`, a hidden file or one
/// of hoist's own temp names).
pub fn plain_name(name: &OsStr) -> Option<&str> {
    let s = name.to_str()?;
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(s)
}

/// The byte limit: `HOIST_OUTPUT_MAX_BYTES`, else [`DEFAULT_MAX_BYTES`].
pub fn max_bytes() -> Result<u64, ExportError> {
    limit_from(std::env::var_os(MAX_BYTES_VAR).as_deref())
}

fn limit_from(value: Option<&OsStr>) -> Result<u64, ExportError> {
    let Some(value) = value else {
        return Ok(DEFAULT_MAX_BYTES);
    };
    value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ExportError::BadLimit {
            value: value.to_string_lossy().into_owned(),
        })
}

/// A directory of `--out`, held open: every write into it is relative to
/// this handle, so nothing that replaces a path component later can
/// redirect it.
#[derive(Debug)]
pub struct OutDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OutDir {
    /// Create `out` (and its parents: the user's own path, resolved as
    /// given) and open it without following a symlink at `out` itself.
    pub fn open(out: &Path) -> Result<OutDir, ExportError> {
        std::fs::create_dir_all(out).map_err(io_at(out))?;
        let fd = rustix::fs::open(out, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR if is_symlink(rustix::fs::CWD, out) => {
                ExportError::OutIsSymlink {
                    path: out.to_path_buf(),
                }
            }
            Errno::NOTDIR => ExportError::NotADirectory {
                path: out.to_path_buf(),
            },
            e => errno_at(out)(e),
        })?;
        Ok(OutDir {
            fd,
            path: out.to_path_buf(),
        })
    }

    /// `--out` for one run (README.md, `hoist run`): created if missing, locked
    /// for as long as the returned `OutDir` lives, and empty. `force` clears
    /// what is there first (links are removed, never followed). A directory
    /// another hoist holds is refused, and so is one with an earlier run's
    /// output in it: two runs in one directory would mix their files.
    pub fn claim(out: &Path, force: bool) -> Result<OutDir, ExportError> {
        let dir = OutDir::lock(out)?;
        let entries = dir.entries()?;
        match entries.first() {
            None => {}
            Some(_) if force => {
                for name in &entries {
                    // Never through a link: a planted one goes, not its target.
                    crate::unpack::fsops::remove_all(dir.fd.as_fd(), name.as_bytes())
                        .map_err(io_at(&dir.path.join(name)))?;
                }
            }
            Some(first) => {
                return Err(ExportError::OutNotEmpty {
                    path: out.to_path_buf(),
                    entry: first.to_string_lossy().into_owned(),
                })
            }
        }
        Ok(dir)
    }

    /// Open `out` as [`OutDir::open`] does and lock it (an exclusive
    /// `flock` on the directory, released when the `OutDir` is dropped or
    /// the process ends), whatever it holds: `hoist grade` writes into the
    /// run it grades.
    pub fn lock(out: &Path) -> Result<OutDir, ExportError> {
        let dir = OutDir::open(out)?;
        match rustix::fs::flock(
            &dir.fd,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => Ok(dir),
            Err(Errno::WOULDBLOCK) => Err(ExportError::OutInUse {
                path: out.to_path_buf(),
            }),
            Err(e) => Err(errno_at(out)(e)),
        }
    }

    /// The names in the directory, sorted.
    fn entries(&self) -> Result<Vec<std::ffi::OsString>, ExportError> {
        let mut names: Vec<std::ffi::OsString> = crate::unpack::fsops::list(self.fd.as_fd())
            .map_err(io_at(&self.path))?
            .into_iter()
            .map(std::ffi::OsString::from_vec)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Open (creating it if needed) the subdirectory `name`. A symlink
    /// there is removed and replaced by a real directory: only a sandbox of
    /// an older hoist, which wrote into `--out` directly, or a hostile
    /// process could have left one, and removing a link never touches its
    /// target. Anything else that is not a directory is an error naming it.
    pub fn subdir(&self, name: &str) -> Result<OutDir, ExportError> {
        let path = self.path.join(name);
        check_plain(name)?;
        for _ in 0..3 {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno_at(&path)(e)),
            }
            match rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => return Ok(OutDir { fd, path }),
                // With O_DIRECTORY the kernel says ENOTDIR for a symlink.
                Err(Errno::LOOP | Errno::NOTDIR) if is_symlink(&self.fd, name) => {
                    rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
                        .map_err(errno_at(&path))?;
                }
                Err(Errno::NOTDIR) => return Err(ExportError::NotADirectory { path }),
                Err(Errno::NOENT) => {} // removed between mkdir and open: again
                Err(e) => return Err(errno_at(&path)(e)),
            }
        }
        Err(ExportError::Io {
            path,
            source: io::Error::other("it keeps changing"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file (or symlink: never followed) `name`, if present.
    pub fn remove(&self, name: &str) -> Result<(), ExportError> {
        check_plain(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno_at(&self.path.join(name))(e)),
        }
    }

    /// Open the file `name` for reading without following a link (nor
    /// blocking on a fifo); `Ok(None)` when it is not there.
    pub fn open_file(&self, name: &str) -> Result<Option<std::fs::File>, ExportError> {
        check_plain(name)?;
        let flags = OFlags::RDONLY
            .union(OFlags::NOFOLLOW)
            .union(OFlags::NONBLOCK)
            .union(OFlags::CLOEXEC);
        match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno_at(&self.path.join(name))(e)),
        }
    }

    /// Read the file `name` (opened without following a link), at most
    /// `max` bytes; `Ok(None)` when it is not there.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, ExportError> {
        let Some(file) = self.open_file(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(max)
            .read_to_end(&mut bytes)
            .map_err(io_at(&self.path.join(name)))?;
        Ok(Some(bytes))
    }

    /// Write what `src` yields, at most `limit` bytes, to a fresh temp file
    /// and rename it over `name`. `Ok(None)` when `src` holds more than
    /// `limit` (nothing is left behind then); else the bytes written.
    fn install(
        &self,
        name: &str,
        src: &mut dyn Read,
        limit: u64,
    ) -> Result<Option<u64>, ExportError> {
        let target = self.path.join(name);
        // A random hidden name (never one `plain_name` accepts, so never
        // one being copied), made in the directory handle; exactly 0644
        // past the umask, never a bit of the source's.
        let tmp = Temp::in_dir_fd(self.fd.as_fd(), &self.path, 0o644).map_err(io_at(&target))?;
        // std::io::copy uses copy_file_range between two files.
        let n = io::copy(&mut src.take(limit.saturating_add(1)), &mut tmp.file())
            .map_err(io_at(&target))?;
        if n > limit {
            // Dropped, the temp file goes.
            return Ok(None);
        }
        // Unsynced: a run's output, which a crash makes worthless anyway.
        tmp.commit_at(self.fd.as_fd(), name, Durability::Unsynced)
            .map_err(io_at(&target))?;
        Ok(Some(n))
    }
}

fn is_symlink<Fd: std::os::fd::AsFd, P: rustix::path::Arg>(dir: Fd, path: P) -> bool {
    rustix::fs::statat(dir, path, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink)
}

fn check_plain(name: &str) -> Result<(), ExportError> {
    match plain_name(OsStr::new(name)) {
        Some(_) => Ok(()),
        None => Err(ExportError::BadName {
            name: name.to_string(),
        }),
    }
}

/// Write `bytes` to `dir/name` as a fresh 0644 file renamed into place:
/// a symlink planted at `name` is replaced, never written through.
pub fn write_file(dir: &OutDir, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
    check_plain(name)?;
    dir.install(name, &mut &bytes[..], u64::MAX)?;
    Ok(())
}

/// Copy the regular files of the sandbox's output directory `base/rel`
/// into `dest`. `base` must be a directory only the host could have made
/// (the run's private directory, or the rootfs copy); `rel` beneath it is
/// resolved without following any link. A missing `rel` (a sandbox that
/// never started) copies nothing. Smallest files first, so that past the
/// byte limit the result and the short logs are there, not one huge log.
pub fn copy_out(base: &Path, rel: &str, dest: &OutDir) -> Result<ExportReport, ExportError> {
    copy_out_limited(base, rel, dest, max_bytes()?)
}

fn copy_out_limited(
    base: &Path,
    rel: &str,
    dest: &OutDir,
    limit: u64,
) -> Result<ExportReport, ExportError> {
    let src_path = base.join(rel);
    let base_fd = rustix::fs::open(base, DIR_FLAGS, Mode::empty()).map_err(errno_at(base))?;
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let src = match crate::beneath::open_dir(base_fd.as_fd(), &comps, false, Access::Read) {
        Ok(fd) => fd,
        Err(DirError::Missing) => return Ok(ExportReport::default()),
        Err(DirError::Symlink(_) | DirError::NotDir(_)) => {
            return Err(ExportError::SourceNotADirectory { path: src_path })
        }
        Err(DirError::Io(e)) => return Err(io_at(&src_path)(e)),
    };
    let mut report = ExportReport::default();
    let mut files = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(&src).map_err(errno_at(&src_path))?;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(errno_at(&src_path))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
        if name == "." || name == ".." {
            continue;
        }
        let stat = rustix::fs::statat(&src, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_at(&src_path.join(&name)))?;
        match classify(&name, &stat) {
            Ok(()) => files.push((stat.st_size as u64, name, stat)),
            Err(reason) => report.skip(&name, reason),
        }
    }
    files.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut left = limit;
    for (size, name, seen) in files {
        if size > left {
            report.limit_reached = true;
            report.skip(&name, SkipReason::OverLimit);
            continue;
        }
        let Some(file) = open_source(&src, &name, &seen).map_err(io_at(&src_path.join(&name)))?
        else {
            report.skip(&name, SkipReason::Changed);
            continue;
        };
        let plain = plain_name(&name).unwrap_or_default();
        match dest.install(plain, &mut std::fs::File::from(file), left)? {
            Some(n) => {
                left -= n;
                report.bytes += n;
                report.copied.push(plain.to_string());
            }
            None => {
                report.limit_reached = true;
                report.skip(&name, SkipReason::OverLimit);
            }
        }
    }
    Ok(report)
}

/// Whether an entry may be copied, from what `lstat` said of it.
fn classify(name: &OsStr, stat: &Stat) -> Result<(), SkipReason> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(SkipReason::Symlink),
        FileType::Fifo => return Err(SkipReason::Fifo),
        FileType::Socket => return Err(SkipReason::Socket),
        FileType::CharacterDevice | FileType::BlockDevice => return Err(SkipReason::Device),
        FileType::Directory => return Err(SkipReason::Directory),
        FileType::Unknown => return Err(SkipReason::Other),
    }
    if stat.st_nlink > 1 {
        return Err(SkipReason::Hardlink);
    }
    if plain_name(name).is_none() {
        return Err(SkipReason::Name);
    }
    Ok(())
}

/// Open a source file for reading without following anything and without
/// blocking (a fifo swapped in would otherwise hang the open), and check it
/// is still the regular, single-link file that `seen` described; `None`
/// when it is not.
fn open_source(dir: &OwnedFd, name: &OsStr, seen: &Stat) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY
        .union(OFlags::NOFOLLOW)
        .union(OFlags::NONBLOCK)
        .union(OFlags::NOCTTY)
        .union(OFlags::CLOEXEC);
    let Some(name) = name.to_str() else {
        return Ok(None);
    };
    let fd = match crate::beneath::open_file(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::XDEV | Errno::NOENT | Errno::INVAL) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let now = rustix::fs::fstat(&fd)?;
    let same = now.st_dev == seen.st_dev
        && now.st_ino == seen.st_ino
        && FileType::from_raw_mode(now.st_mode) == FileType::RegularFile
        && now.st_nlink == 1;
    Ok(same.then_some(fd))
}

/// Extract the regular files of `top/` from a tar stream (what `docker cp
/// CONTAINER:/output/task -` writes) into `dest`, by the same rules as
/// [`copy_out`]: plain names directly under `top`, one link, 0644, and
/// the byte limit: a file that does not fit in what is left of it is
/// skipped, and the next ones still copied (the stream's order is not
/// by size, and `result.json` should not be lost to a big log before
/// it). So that a stream of skipped entries cannot run on for ever, at
/// most [`STREAM_FACTOR`] times the limit is read from it, headers and
/// skipped data included; past that the rest is left unread (the caller
/// stops the stream). `what` names the stream in errors.
pub fn extract_tar(
    stream: impl Read,
    top: &str,
    dest: &OutDir,
    what: &str,
) -> Result<ExportReport, ExportError> {
    extract_tar_limited(stream, top, dest, what, max_bytes()?)
}

/// How many times the byte limit [`extract_tar`] reads at most.
pub const STREAM_FACTOR: u64 = 4;

fn extract_tar_limited(
    stream: impl Read,
    top: &str,
    dest: &OutDir,
    what: &str,
    limit: u64,
) -> Result<ExportReport, ExportError> {
    let tar_err = |source: io::Error| ExportError::Tar {
        what: what.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(stream);
    let mut report = ExportReport::default();
    let mut left = limit;
    let mut stream_left = limit.saturating_mul(STREAM_FACTOR);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        // The header (at least one 512-byte block) and the data.
        let read = entry.size().saturating_add(512);
        if read > stream_left {
            report.limit_reached = true;
            let path = entry.path().map_err(tar_err)?.into_owned();
            report.skip(path.as_os_str(), SkipReason::OverLimit);
            break;
        }
        stream_left -= read;
        let path = entry.path().map_err(tar_err)?.into_owned();
        let mut parts = path.components();
        let first = parts.next().map(|c| c.as_os_str().to_os_string());
        let rest: PathBuf = parts.collect();
        if first.as_deref() != Some(OsStr::new(top)) {
            report.skip(path.as_os_str(), SkipReason::Name);
            continue;
        }
        if rest.as_os_str().is_empty() {
            continue; // the directory `top` itself
        }
        let name = rest.as_os_str();
        let size = entry.size();
        let reason = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => None,
            tar::EntryType::Symlink => Some(SkipReason::Symlink),
            tar::EntryType::Link => Some(SkipReason::Hardlink),
            tar::EntryType::Fifo => Some(SkipReason::Fifo),
            tar::EntryType::Char | tar::EntryType::Block => Some(SkipReason::Device),
            tar::EntryType::Directory => Some(SkipReason::Directory),
            _ => Some(SkipReason::Other),
        };
        let reason = reason.or_else(|| {
            (rest.components().count() != 1 || plain_name(name).is_none())
                .then_some(SkipReason::Name)
        });
        if let Some(reason) = reason {
            report.skip(name, reason);
            continue;
        }
        if size > left {
            report.limit_reached = true;
            report.skip(name, SkipReason::OverLimit);
            continue;
        }
        let plain = plain_name(name).unwrap_or_default().to_string();
        match dest.install(&plain, &mut entry, size)? {
            Some(n) => {
                left -= n;
                report.bytes += n;
                report.copied.push(plain);
            }
            None => {
                report.limit_reached = true;
                report.skip(name, SkipReason::OverLimit);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A sandbox output tree (`base/task`) and an `--out` with its `task`.
    struct Case {
        base: tempfile::TempDir,
        out: tempfile::TempDir,
    }

    impl Case {
        fn new() -> Case {
            let c = Case {
                base: tempfile::tempdir().unwrap(),
                out: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir(c.src()).unwrap();
            std::fs::write(c.src().join("result.json"), b"{}").unwrap();
            c
        }
        fn src(&self) -> PathBuf {
            self.base.path().join("task")
        }
        fn dest(&self) -> OutDir {
            OutDir::open(self.out.path())
                .unwrap()
                .subdir("task")
                .unwrap()
        }
        fn copy(&self) -> ExportReport {
            copy_out(self.base.path(), "task", &self.dest()).unwrap()
        }
        fn out_task(&self) -> PathBuf {
            self.out.path().join("task")
        }
    }

    fn skipped(r: &ExportReport, name: &str) -> Option<SkipReason> {
        r.skipped.iter().find(|s| s.name == name).map(|s| s.reason)
    }

    /// `out/task` holds exactly `names`, each a 0644 regular file owned by
    /// us with one link.
    fn only_plain_files(dir: &Path, names: &[&str]) {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        found.sort();
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(found, want);
        for n in names {
            let m = std::fs::symlink_metadata(dir.join(n)).unwrap();
            assert!(m.file_type().is_file(), "{n}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o644, "{n}");
            assert_eq!(m.uid(), rustix::process::geteuid().as_raw(), "{n}");
            assert_eq!(m.nlink(), 1, "{n}");
        }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn setuid_file_is_copied_without_the_bit() {
        let c = Case::new();
        let f = c.src().join("sh");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        chmod(&f, 0o4755);
        let r = c.copy();
        assert_eq!(r.copied, ["result.json", "sh"]);
        only_plain_files(&c.out_task(), &["result.json", "sh"]);
        assert_eq!(
            std::fs::read(c.out_task().join("sh")).unwrap(),
            b"#!/bin/sh\n"
        );
    }

    #[test]
    fn setgid_and_sticky_bits_are_dropped() {
        let c = Case::new();
        for (n, mode) in [("g", 0o2755), ("t", 0o1777)] {
            std::fs::write(c.src().join(n), n).unwrap();
            chmod(&c.src().join(n), mode);
        }
        c.copy();
        only_plain_files(&c.out_task(), &["g", "result.json", "t"]);
    }

    #[test]
    fn symlink_to_a_host_file_is_skipped() {
        let c = Case::new();
        let host = c.base.path().join("host-secret");
        std::fs::write(&host, b"secret").unwrap();
        std::os::unix::fs::symlink(&host, c.src().join("evil")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", c.src().join("passwd")).unwrap();
        let r = c.copy();
        assert_eq!(skipped(&r, "evil"), Some(SkipReason::Symlink));
        assert_eq!(skipped(&r, "passwd"), Some(SkipReason::Symlink));
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn symlink_in_place_of_result_json_is_not_followed() {
        // In the source: skipped. In --out: replaced, its target untouched.
        let c = Case::new();
        let host = c.base.path().join("host-file");
        std::fs::write(&host, b"keep").unwrap();
        std::fs::remove_file(c.src().join("result.json")).unwrap();
        std::os::unix::fs::symlink(&host, c.src().join("result.json")).unwrap();
        let r = c.copy();
        assert_eq!(skipped(&r, "result.json"), Some(SkipReason::Symlink));
        assert!(r.copied.is_empty());

        std::fs::write(c.src().join("result.json.real"), b"x").unwrap();
        std::fs::remove_file(c.src().join("result.json")).unwrap();
        std::fs::write(c.src().join("result.json"), b"{\"ok\":1}").unwrap();
        std::os::unix::fs::symlink(&host, c.out_task().join("result.json")).unwrap();
        c.copy();
        assert_eq!(std::fs::read(&host).unwrap(), b"keep");
        only_plain_files(&c.out_task(), &["result.json", "result.json.real"]);
        assert_eq!(
            std::fs::read(c.out_task().join("result.json")).unwrap(),
            b"{\"ok\":1}"
        );
    }

    #[test]
    fn fifo_is_skipped_without_blocking() {
        let c = Case::new();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            c.src().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        let r = c.copy();
        assert_eq!(skipped(&r, "fifo"), Some(SkipReason::Fifo));
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn socket_is_skipped() {
        let c = Case::new();
        let _l = std::os::unix::net::UnixListener::bind(c.src().join("sock")).unwrap();
        let r = c.copy();
        assert_eq!(skipped(&r, "sock"), Some(SkipReason::Socket));
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn device_node_is_skipped() {
        if !rustix::process::geteuid().is_root() {
            crate::errln!("SKIPPED: mknod of a device node needs root");
            return;
        }
        let c = Case::new();
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            c.src().join("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        );
        if let Err(e) = made {
            crate::errln!("SKIPPED: mknod of a device node: {e} (no CAP_MKNOD here)");
            return;
        }
        let r = c.copy();
        assert_eq!(skipped(&r, "null"), Some(SkipReason::Device));
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn hardlink_to_a_file_outside_is_skipped() {
        let c = Case::new();
        let hidden = c.base.path().join("test_hidden.py");
        std::fs::write(&hidden, b"answers").unwrap();
        std::fs::hard_link(&hidden, c.src().join("copy")).unwrap();
        let r = c.copy();
        assert_eq!(skipped(&r, "copy"), Some(SkipReason::Hardlink));
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn nested_directory_is_skipped() {
        let c = Case::new();
        std::fs::create_dir(c.src().join("sub")).unwrap();
        std::fs::write(c.src().join("sub/file"), b"x").unwrap();
        let r = c.copy();
        assert_eq!(skipped(&r, "sub"), Some(SkipReason::Directory));
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn names_that_are_not_plain_are_skipped() {
        let c = Case::new();
        for n in [".hidden", "sp ace", "new\nline"] {
            std::fs::write(c.src().join(n), b"x").unwrap();
        }
        let r = c.copy();
        for n in [".hidden", "sp ace", "new\nline"] {
            assert_eq!(skipped(&r, n), Some(SkipReason::Name), "{n:?}");
        }
        only_plain_files(&c.out_task(), &["result.json"]);
    }

    #[test]
    fn a_file_past_the_limit_is_not_copied_and_the_small_ones_are() {
        let c = Case::new();
        std::fs::write(c.src().join("agent.log"), vec![b'a'; 10_000]).unwrap();
        std::fs::write(c.src().join("grade.log"), vec![b'g'; 100]).unwrap();
        let r = copy_out_limited(c.base.path(), "task", &c.dest(), 4096).unwrap();
        assert!(r.limit_reached);
        assert_eq!(skipped(&r, "agent.log"), Some(SkipReason::OverLimit));
        assert_eq!(r.bytes, 102);
        only_plain_files(&c.out_task(), &["grade.log", "result.json"]);
    }

    #[test]
    fn install_past_the_limit_leaves_nothing() {
        let out = tempfile::tempdir().unwrap();
        let d = OutDir::open(out.path()).unwrap();
        let big = vec![0u8; 5000];
        assert_eq!(d.install("big", &mut &big[..], 4999).unwrap(), None);
        assert_eq!(d.install("fits", &mut &big[..], 5000).unwrap(), Some(5000));
        only_plain_files(out.path(), &["fits"]);
    }

    #[test]
    fn symlinked_out_task_is_replaced_by_a_directory() {
        let out = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("task")).unwrap();
        let task = OutDir::open(out.path()).unwrap().subdir("task").unwrap();
        write_file(&task, "result.json", b"{}").unwrap();
        let m = std::fs::symlink_metadata(out.path().join("task")).unwrap();
        assert!(m.is_dir());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn out_task_that_is_a_file_is_an_error_naming_it() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("task"), b"mine").unwrap();
        let e = OutDir::open(out.path())
            .unwrap()
            .subdir("task")
            .unwrap_err();
        assert!(matches!(e, ExportError::NotADirectory { .. }), "{e}");
        assert!(e
            .to_string()
            .contains(&out.path().join("task").display().to_string()));
        assert_eq!(std::fs::read(out.path().join("task")).unwrap(), b"mine");
    }

    #[test]
    fn symlinked_out_is_an_error() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, parent.path().join("out")).unwrap();
        let e = OutDir::open(&parent.path().join("out")).unwrap_err();
        assert!(matches!(e, ExportError::OutIsSymlink { .. }), "{e}");
    }

    #[test]
    fn symlink_at_run_json_is_replaced_and_its_target_unchanged() {
        let out = tempfile::tempdir().unwrap();
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host.path(), b"host file").unwrap();
        std::os::unix::fs::symlink(host.path(), out.path().join("run.json")).unwrap();
        let d = OutDir::open(out.path()).unwrap();
        write_file(&d, "run.json", b"{\"schema\":1}").unwrap();
        assert_eq!(std::fs::read(host.path()).unwrap(), b"host file");
        only_plain_files(out.path(), &["run.json"]);
        assert_eq!(
            std::fs::read(out.path().join("run.json")).unwrap(),
            b"{\"schema\":1}"
        );
    }

    #[test]
    fn symlinked_source_directory_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(host.path(), base.path().join("task")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let d = OutDir::open(out.path()).unwrap();
        let e = copy_out(base.path(), "task", &d).unwrap_err();
        assert!(matches!(e, ExportError::SourceNotADirectory { .. }), "{e}");
        // A missing one is an empty copy: the sandbox never started.
        std::fs::remove_file(base.path().join("task")).unwrap();
        assert_eq!(
            copy_out(base.path(), "task", &d).unwrap(),
            ExportReport::default()
        );
    }

    #[test]
    fn names_written_by_the_host_must_be_plain() {
        let out = tempfile::tempdir().unwrap();
        let d = OutDir::open(out.path()).unwrap();
        for bad in ["../x", "a/b", "..", ".hoist-export-1", ""] {
            assert!(write_file(&d, bad, b"x").is_err(), "{bad:?}");
        }
    }

    /// A tar like `docker cp C:/output/task -` writes, with hostile entries.
    fn hostile_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| {
            let mut hd = tar::Header::new_gnu();
            hd.set_entry_type(kind);
            hd.set_mode(mode);
            hd.set_size(data.len() as u64);
            if !link.is_empty() {
                hd.set_link_name(link).unwrap();
            }
            b.append_data(&mut hd, path, data).unwrap();
        };
        use tar::EntryType as T;
        let big = [b'b'; 3000];
        let entries: [(&str, T, u32, &[u8], &str); 12] = [
            ("task", T::Directory, 0o755, b"", ""),
            ("task/big.log", T::Regular, 0o644, &big, ""),
            ("task/result.json", T::Regular, 0o644, b"{}", ""),
            ("task/sh", T::Regular, 0o4755, b"ELF", ""),
            ("task/evil", T::Symlink, 0o777, b"", "/etc/passwd"),
            ("task/hard", T::Link, 0o644, b"", "task/result.json"),
            ("task/fifo", T::Fifo, 0o644, b"", ""),
            ("task/null", T::Char, 0o666, b"", ""),
            ("task/sub", T::Directory, 0o755, b"", ""),
            ("task/sub/f", T::Regular, 0o644, b"x", ""),
            ("other/f", T::Regular, 0o644, b"x", ""),
            ("task/.hidden", T::Regular, 0o644, b"x", ""),
        ];
        for (path, kind, mode, data, link) in entries {
            h(path, kind, mode, data, link);
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_extraction_keeps_only_plain_regular_files() {
        let out = tempfile::tempdir().unwrap();
        let d = OutDir::open(out.path()).unwrap();
        let r = extract_tar(&hostile_tar()[..], "task", &d, "test").unwrap();
        only_plain_files(out.path(), &["big.log", "result.json", "sh"]);
        for (n, why) in [
            ("evil", SkipReason::Symlink),
            ("hard", SkipReason::Hardlink),
            ("fifo", SkipReason::Fifo),
            ("null", SkipReason::Device),
            ("sub", SkipReason::Directory),
            ("sub/f", SkipReason::Name),
            ("other/f", SkipReason::Name),
            (".hidden", SkipReason::Name),
        ] {
            assert_eq!(skipped(&r, n), Some(why), "{n}: {r:?}");
        }
        assert!(!r.limit_reached);
    }

    #[test]
    fn tar_extraction_skips_what_is_past_the_limit_and_goes_on() {
        let out = tempfile::tempdir().unwrap();
        let d = OutDir::open(out.path()).unwrap();
        let r = extract_tar_limited(&hostile_tar()[..], "task", &d, "test", 2500).unwrap();
        assert!(r.limit_reached);
        assert_eq!(skipped(&r, "big.log"), Some(SkipReason::OverLimit));
        // After it in the stream, and small: still copied.
        only_plain_files(out.path(), &["result.json", "sh"]);
        assert_eq!(r.bytes, 5);
    }

    #[test]
    fn tar_extraction_reads_at_most_a_few_times_the_limit() {
        // 4 x 700 bytes of stream cannot reach past big.log's 3000.
        let out = tempfile::tempdir().unwrap();
        let d = OutDir::open(out.path()).unwrap();
        let r = extract_tar_limited(&hostile_tar()[..], "task", &d, "test", 700).unwrap();
        assert!(r.limit_reached);
        assert_eq!(skipped(&r, "task/big.log"), Some(SkipReason::OverLimit));
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        only_plain_files(out.path(), &[]);
    }

    #[test]
    fn the_limit_comes_from_the_environment_or_is_one_gib() {
        assert_eq!(limit_from(None).unwrap(), 1 << 30);
        assert_eq!(limit_from(Some(OsStr::new(" 4096 "))).unwrap(), 4096);
        let e = limit_from(Some(OsStr::new("1G"))).unwrap_err();
        assert!(e.to_string().contains(MAX_BYTES_VAR), "{e}");
    }
}
