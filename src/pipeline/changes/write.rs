//! Writing the changes tar: numeric owners, raw-byte names (GNU long
//! names past 100 bytes), PAX mtimes for sub-second times, file content
//! read by descriptor and checked to be exactly what the header says.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;
use tar::{Builder, EntryType, Header};

use super::at;
use super::plan::{Record, RelPath};
use super::walk::{describe, statx_fd};
use crate::unpack::fsops::Root;

/// Mode bits a regular file keeps: rwx and sticky, no setuid or setgid.
pub(super) const FILE_MODE_KEPT: u32 = 0o1777;
/// Mode bits a directory keeps: all but setuid (meaningless there).
pub(super) const DIR_MODE_KEPT: u32 = 0o3777;

/// Counts the bytes that reach the writer.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A regular file's content, exactly as many bytes as its header says:
/// one more or one fewer is an error, never a corrupt tar.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return match self.inner.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(io::Error::other("the file grew while it was being read")),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 && max > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Bytes reach the caller's writer in chunks of this size: the tar crate
/// writes a 512-byte header, then content in 8 KiB pieces.
const OUT_BUF: usize = 256 * 1024;

/// The tar being written, and the workdir its entries are read from.
pub(super) struct ChangesTar<'a, W: Write> {
    tar: Builder<Counting<BufWriter<W>>>,
    dirs: Root<'a>,
    workdir: &'a Path,
}

impl<'a, W: Write> ChangesTar<'a, W> {
    pub(super) fn new(out: W, root: BorrowedFd<'a>, workdir: &'a Path) -> Self {
        ChangesTar {
            tar: Builder::new(Counting {
                inner: BufWriter::with_capacity(OUT_BUF, out),
                bytes: 0,
            }),
            dirs: Root::new(root),
            workdir,
        }
    }

    /// Writes the end of the archive and flushes; the bytes written in all.
    pub(super) fn finish(self) -> io::Result<u64> {
        let root = RelPath::root();
        let fail = || at(self.workdir, &root, "write the changes tar");
        let out = self.tar.into_inner().map_err(fail())?;
        out.inner.into_inner().map_err(|e| fail()(e.into_error()))?;
        Ok(out.bytes)
    }

    /// Writes the entry at `path` as `record` describes it; `Some(why)` when
    /// it cannot be read and was left out.
    pub(super) fn entry(&mut self, path: &RelPath, record: &Record) -> io::Result<Option<String>> {
        match record.kind {
            FileType::Directory => self.directory(path, record).map(|()| None),
            FileType::Symlink => self.symlink(path, record).map(|()| None),
            _ => self.file(path, record),
        }
    }

    pub(super) fn directory(&mut self, path: &RelPath, record: &Record) -> io::Result<()> {
        let header = header(EntryType::Directory, record, record.mode & DIR_MODE_KEPT, 0);
        let name = if path.is_root() { &b"./"[..] } else { &path.0 };
        self.append(path, header, name, None, record.mtime, io::empty())
    }

    fn symlink(&mut self, path: &RelPath, record: &Record) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        let target = rfs::readlinkat(&*parent, name, Vec::new())
            .map_err(|e| at(self.workdir, path, "read the symlink")(e.into()))?;
        let header = header(EntryType::Symlink, record, 0o777, 0);
        let target = target.as_bytes();
        self.append(
            path,
            header,
            &path.0,
            Some(target),
            record.mtime,
            io::empty(),
        )
    }

    fn file(&mut self, path: &RelPath, record: &Record) -> io::Result<Option<String>> {
        let (parent, name) = self.parent(path)?;
        let file = match open_file(parent.as_fd(), name, record) {
            Ok(Opened::File(file)) => file,
            Ok(Opened::Unreadable(why)) => return Ok(Some(why)),
            Err(e) => return Err(at(self.workdir, path, "open")(e)),
        };
        let mode = record.mode & FILE_MODE_KEPT;
        let header = header(EntryType::Regular, record, mode, record.size);
        let content = Exact {
            inner: file,
            left: record.size,
        };
        self.append(path, header, &path.0, None, record.mtime, content)?;
        Ok(None)
    }

    pub(super) fn whiteout(&mut self, name: &RelPath) -> io::Result<()> {
        let header = blank(EntryType::Regular, 0, 0);
        self.append(name, header, &name.0, None, (0, 0), io::empty())
    }

    /// The handle of `path`'s parent directory, and its last name.
    fn parent<'p>(&self, path: &'p RelPath) -> io::Result<(Rc<OwnedFd>, &'p [u8])> {
        let not_root = || io::Error::other("the workdir itself is not a file");
        let (parent, name) = path.split().ok_or_else(not_root)?;
        let fd = self
            .dirs
            .open_dir(&parent.components(), false)
            .map_err(|e| {
                at(self.workdir, &parent, "open directory")(io::Error::other(describe(e)))
            })?;
        Ok((fd, name))
    }

    /// Appends one entry (see [`append_raw`]); errors name `path`.
    fn append(
        &mut self,
        path: &RelPath,
        header: Header,
        name: &[u8],
        link: Option<&[u8]>,
        mtime: (i64, u32),
        data: impl Read,
    ) -> io::Result<()> {
        append_raw(&mut self.tar, header, name, link, mtime, data).map_err(at(
            self.workdir,
            path,
            "write to the changes tar",
        ))
    }
}

/// Appends one entry: a PAX mtime when whole seconds cannot say it, GNU
/// long names when the 100-byte fields cannot hold the name or the link
/// target, then the header and data. Names go in as raw bytes: the tar
/// crate's path setters would rewrite them as paths (`a//b` as `a/b`), and
/// fail on a long name whose first bytes are not UTF-8.
pub(super) fn append_raw<W: Write>(
    tar: &mut Builder<W>,
    mut header: Header,
    name: &[u8],
    link: Option<&[u8]>,
    mtime: (i64, u32),
    data: impl Read,
) -> io::Result<()> {
    if let Some(value) = pax_time(mtime) {
        tar.append_pax_extensions([("mtime", value.as_bytes())])?;
    }
    set_long(
        tar,
        &mut header.as_old_mut().name,
        name,
        EntryType::GNULongName,
    )?;
    if let Some(link) = link {
        set_long(
            tar,
            &mut header.as_old_mut().linkname,
            link,
            EntryType::GNULongLink,
        )?;
    }
    header.set_cksum();
    tar.append(&header, data)
}

/// The header of an entry, numeric owner only.
fn header(kind: EntryType, record: &Record, mode: u32, size: u64) -> Header {
    let mut header = blank(kind, mode, size);
    header.set_uid(record.uid.into());
    header.set_gid(record.gid.into());
    header.set_mtime(u64::try_from(record.mtime.0).unwrap_or(0));
    header
}

/// A header owned by 0:0 at time 0; every numeric field set, since
/// `Header::new_gnu` leaves them empty, which readers refuse.
pub(super) fn blank(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

/// Puts `value` in the header field `field`; when it does not fit, first
/// writes a GNU long-name (or long-link) entry holding it.
fn set_long<W: Write>(
    tar: &mut Builder<W>,
    field: &mut [u8; 100],
    value: &[u8],
    kind: EntryType,
) -> io::Result<()> {
    if value.len() > field.len() {
        // NUL-terminated, as GNU tar writes it.
        let mut long = blank(kind, 0o644, value.len() as u64 + 1);
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_cksum();
        tar.append(&long, value.chain(&[0u8][..]))?;
    }
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    Ok(())
}

/// The PAX `mtime` value of a time the header's whole seconds cannot
/// hold: a fraction, or a time before 1970.
fn pax_time((secs, nanos): (i64, u32)) -> Option<String> {
    match (secs, nanos) {
        (0.., 0) => None,
        (0.., n) => Some(format!("{secs}.{n:09}")),
        (_, 0) => Some(format!("{secs}")),
        // -1.25 is (-2 s, 750 ms): the fraction counts back from zero.
        (_, n) => Some(format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - n)),
    }
}

/// A regular file opened for reading, or why it could not be.
enum Opened {
    File(File),
    Unreadable(String),
}

/// Opens `name` in `dir` without following a symlink and without blocking
/// on a FIFO, and checks it is the very file the walk saw.
fn open_file(dir: BorrowedFd<'_>, name: &[u8], record: &Record) -> io::Result<Opened> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rfs::openat(dir, name, flags | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e @ (Errno::ACCESS | Errno::PERM)) => {
            return Ok(Opened::Unreadable(format!(
                "cannot be read: {}",
                io::Error::from(e)
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if statx_fd(fd.as_fd())? != *record {
        return Err(io::Error::other(
            "it changed after the workdir was walked (is a process still writing there?)",
        ));
    }
    Ok(Opened::File(File::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(pax_time((1_700_000_000, 0)), None);
        assert_eq!(pax_time((0, 0)), None);
        assert_eq!(pax_time((5, 1)).as_deref(), Some("5.000000001"));
        assert_eq!(pax_time((-3, 0)).as_deref(), Some("-3"));
        assert_eq!(pax_time((-2, 750_000_000)).as_deref(), Some("-1.250000000"));
        assert_eq!(pax_time((-1, 5)).as_deref(), Some("-0.999999995"));
    }

    #[test]
    fn content_must_be_exactly_the_size_in_the_header() {
        let read = |data: &[u8], left| {
            let mut out = Vec::new();
            Exact { inner: data, left }
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert_eq!(read(b"abc", 3).unwrap(), b"abc");
        assert!(read(b"abcd", 3).is_err(), "grew");
        assert!(read(b"ab", 3).is_err(), "shrank");
    }
}
