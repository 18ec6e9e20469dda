//! Reproducible tar streams for the layers `hoist bake` appends.
//!
//! The same tree always gives the same bytes: entries sorted by path bytes,
//! numeric uid/gid with no user or group names, a fixed mtime, no access or
//! change times, setuid/setgid/sticky kept in the mode, hardlinks written as
//! hardlink entries to the first path of their inode, xattrs as PAX
//! `SCHILY.xattr.*` records (GNU tar's and Go's spelling, which Docker,
//! umoci and hoist's own unpacker read). A path or link target longer than
//! the 100 bytes of the ustar field goes into a PAX `path`/`linkpath` record.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

const BLOCK: usize = 512;

/// The whiteout entry that makes a directory opaque (image-spec layer.md):
/// what lower layers had beneath it is hidden.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What kind of entry, with what the kind needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file of this many bytes.
    File(u64),
    Symlink(Vec<u8>),
    /// A hardlink to an earlier entry of the same archive (its path).
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// The metadata written for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (0o7777).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// A root-owned directory or file with no xattrs.
    pub fn root(kind: Kind, mode: u32) -> Meta {
        Meta {
            kind,
            mode,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        }
    }
}

/// Writes entries to a tar stream; [`TarWriter::finish`] ends it.
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, mtime: u64) -> TarWriter<W> {
        TarWriter { out, mtime }
    }

    /// Append one entry; `data` must yield exactly the file's size.
    pub fn append(
        &mut self,
        path: &[u8],
        meta: &Meta,
        data: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        let mut pax = Vec::new();
        if path.len() > 100 {
            pax.push((b"path".to_vec(), path.to_vec()));
        }
        let link = match &meta.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => Some(t.as_slice()),
            _ => None,
        };
        if let Some(t) = link.filter(|t| t.len() > 100) {
            pax.push((b"linkpath".to_vec(), t.to_vec()));
        }
        for (name, value) in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax.push((key, value.clone()));
        }
        if !pax.is_empty() {
            let records = pax_records(&pax);
            let name = pax_header_name(path);
            let h = self.header(
                &name,
                EntryType::XHeader,
                0o644,
                0,
                0,
                records.len() as u64,
                None,
            )?;
            self.out.write_all(h.as_bytes())?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let (ty, size) = match &meta.kind {
            Kind::Dir => (EntryType::Directory, 0),
            Kind::File(n) => (EntryType::Regular, *n),
            Kind::Symlink(_) => (EntryType::Symlink, 0),
            Kind::Hardlink(_) => (EntryType::Link, 0),
            Kind::Char(..) => (EntryType::Char, 0),
            Kind::Block(..) => (EntryType::Block, 0),
            Kind::Fifo => (EntryType::Fifo, 0),
        };
        let mut h = self.header(path, ty, meta.mode, meta.uid, meta.gid, size, link)?;
        if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = meta.kind {
            h.set_device_major(ma)?;
            h.set_device_minor(mi)?;
            h.set_cksum();
        }
        self.out.write_all(h.as_bytes())?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("a file entry without data"))?;
            let copied = io::copy(&mut data.take(size), &mut self.out)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: {copied} of {size} bytes (the file shrank while it was read)",
                        String::from_utf8_lossy(path)
                    ),
                ));
            }
            self.pad(size)?;
        }
        Ok(())
    }

    /// Two zero blocks end the archive; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &self,
        path: &[u8],
        ty: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        size: u64,
        link: Option<&[u8]>,
    ) -> io::Result<Header> {
        let mut h = Header::new_ustar();
        h.set_entry_type(ty);
        h.set_mode(mode & 0o7777);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(self.mtime);
        let ustar = h
            .as_ustar_mut()
            .ok_or_else(|| io::Error::other("not a ustar header"))?;
        copy_truncated(&mut ustar.name, path);
        if let Some(l) = link {
            copy_truncated(&mut ustar.linkname, l);
        }
        h.set_cksum();
        Ok(h)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

/// Fill a fixed header field; what does not fit is in a PAX record.
fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// The name of a PAX extended header, as Go's archive/tar writes it.
fn pax_header_name(path: &[u8]) -> Vec<u8> {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    let mut name = b"PaxHeaders.0/".to_vec();
    name.extend_from_slice(&base[..base.len().min(100 - name.len())]);
    name
}

/// PAX records: `LEN KEY=VALUE\n`, where LEN counts the whole record,
/// its own digits included.
pub fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// A directory tree read for archiving: one entry per path, in the order
/// they are written.
pub struct TreeEntry {
    /// The path in the archive, without a trailing slash.
    pub path: Vec<u8>,
    pub source: PathBuf,
    pub meta: Meta,
}

/// Read the tree at `root` as the entries of `prefix` (e.g. `opt/agent`):
/// `prefix` itself with the root directory's metadata, the opaque
/// whiteout when `opaque`, then everything beneath, sorted by path bytes.
/// Symlinks are never followed. Sockets cannot be archived and are left
/// out (Docker leaves them out too); the count is returned.
pub fn read_tree(root: &Path, prefix: &str, opaque: bool) -> io::Result<(Vec<TreeEntry>, usize)> {
    let root_meta = fs::symlink_metadata(root)?;
    if !root_meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut found = Vec::new();
    walk(root, prefix.as_bytes(), &mut found)?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = vec![TreeEntry {
        path: prefix.as_bytes().to_vec(),
        source: root.to_path_buf(),
        meta: Meta {
            kind: Kind::Dir,
            mode: root_meta.mode() & 0o7777,
            uid: root_meta.uid().into(),
            gid: root_meta.gid().into(),
            xattrs: read_xattrs(root)?,
        },
    }];
    if opaque {
        // As Docker's overlay differ writes it: an empty file with the
        // directory's permission bits and owner.
        let mut path = prefix.as_bytes().to_vec();
        path.push(b'/');
        path.extend_from_slice(OPAQUE_WHITEOUT.as_bytes());
        entries.push(TreeEntry {
            path,
            source: root.to_path_buf(),
            meta: Meta {
                kind: Kind::File(0),
                mode: root_meta.mode() & 0o777,
                uid: root_meta.uid().into(),
                gid: root_meta.gid().into(),
                xattrs: vec![],
            },
        });
    }
    let mut first_of_inode: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut sockets = 0;
    for (path, source, m) in found {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&source)?.as_os_str().as_bytes().to_vec())
        } else if ft.is_socket() {
            sockets += 1;
            continue;
        } else if m.nlink() > 1 && first_of_inode.contains_key(&(m.dev(), m.ino())) {
            Kind::Hardlink(first_of_inode[&(m.dev(), m.ino())].clone())
        } else {
            if m.nlink() > 1 {
                first_of_inode.insert((m.dev(), m.ino()), path.clone());
            }
            if ft.is_file() {
                Kind::File(m.len())
            } else if ft.is_char_device() {
                Kind::Char(rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()))
            } else if ft.is_block_device() {
                Kind::Block(rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()))
            } else {
                Kind::Fifo
            }
        };
        let xattrs = match kind {
            // A hardlink shares its inode's xattrs; they go with the first.
            Kind::Hardlink(_) => vec![],
            _ => read_xattrs(&source)?,
        };
        entries.push(TreeEntry {
            path,
            source,
            meta: Meta {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid().into(),
                gid: m.gid().into(),
                xattrs,
            },
        });
    }
    Ok((entries, sockets))
}

fn walk(dir: &Path, prefix: &[u8], out: &mut Vec<(Vec<u8>, PathBuf, Metadata)>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let source = e.path();
        let m = fs::symlink_metadata(&source)?;
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(e.file_name().as_bytes());
        let is_dir = m.is_dir();
        out.push((path.clone(), source.clone(), m));
        if is_dir {
            walk(&source, &path, out)?;
        }
    }
    Ok(())
}

/// The xattrs of `path` (not following a symlink), sorted, without the
/// storage backend's own (overlayfs markers, SELinux labels).
pub fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match list_xattrs(path) {
        Ok(n) => n,
        // A file system without xattr support has none to copy.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(vec![])
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if crate::treedigest::is_ignored_xattr(&String::from_utf8_lossy(name)) {
            continue;
        }
        let value = get_xattr(path, name)?;
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

fn list_xattrs(path: &Path) -> io::Result<Vec<u8>> {
    loop {
        let size = rustix::fs::llistxattr(path, &mut [0u8; 0][..])?;
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // The list grew between the two calls: ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let name = std::ffi::OsStr::from_bytes(name);
    loop {
        let size = rustix::fs::lgetxattr(path, name, &mut [0u8; 0][..])?;
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(path, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write `entries` (from [`read_tree`]) to `w`, file contents read from
/// their sources. Directories get the conventional trailing slash.
pub fn write_entries<W: Write>(w: &mut TarWriter<W>, entries: &[TreeEntry]) -> io::Result<()> {
    for e in entries {
        let path = match e.meta.kind {
            Kind::Dir => {
                let mut p = e.path.clone();
                p.push(b'/');
                p
            }
            _ => e.path.clone(),
        };
        match e.meta.kind {
            Kind::File(n) if n > 0 => {
                let mut f = File::open(&e.source).map_err(|err| {
                    io::Error::new(err.kind(), format!("{}: {err}", e.source.display()))
                })?;
                w.append(&path, &e.meta, Some(&mut f))?;
            }
            _ => w.append(&path, &e.meta, None)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        // "30 mtime=1350244992.023960108\n" is 30 bytes (the pax spec's example).
        let r = pax_records(&[(b"mtime".to_vec(), b"1350244992.023960108".to_vec())]);
        assert_eq!(r, b"30 mtime=1350244992.023960108\n");
        // Across a digit boundary: 9 bytes plus one digit would be 10,
        // which needs two digits, so the record is 11 bytes.
        let r = pax_records(&[(b"a".to_vec(), b"bbbbb".to_vec())]);
        assert_eq!(r, b"11 a=bbbbb\n");
        for v in 0..300 {
            let value = vec![b'x'; v];
            let r = pax_records(&[(b"k".to_vec(), value)]);
            let (len, _) = std::str::from_utf8(&r).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "value length {v}");
        }
    }

    #[test]
    fn pax_header_names_are_short() {
        assert_eq!(pax_header_name(b"opt/agent/run"), b"PaxHeaders.0/run");
        assert_eq!(pax_header_name(b"opt/agent/"), b"PaxHeaders.0/agent");
        assert_eq!(pax_header_name(&[b'a'; 300]).len(), 100);
    }

    /// path, type, mode, uid, data or link target, xattrs
    type ReadBack = (String, EntryType, u32, u64, Vec<u8>, Vec<(String, Vec<u8>)>);

    fn read_back(bytes: &[u8]) -> Vec<ReadBack> {
        let mut a = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let xattrs = e
                .pax_extensions()
                .unwrap()
                .map(|exts| {
                    exts.filter_map(|x| {
                        let x = x.unwrap();
                        x.key()
                            .ok()?
                            .strip_prefix("SCHILY.xattr.")
                            .map(|k| (k.to_string(), x.value_bytes().to_vec()))
                    })
                    .collect()
                })
                .unwrap_or_default();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert_eq!(h.mtime().unwrap(), 7);
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            out.push((
                path,
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                if link.is_empty() { data } else { link },
                xattrs,
            ));
        }
        out
    }

    #[test]
    fn entries_round_trip_through_a_tar_reader() {
        let mut w = TarWriter::new(Vec::new(), 7);
        let long = format!("opt/agent/{}", "d".repeat(120));
        type Case<'a> = (Vec<u8>, Meta, Option<&'a [u8]>);
        let entries: Vec<Case> = vec![
            (
                b"opt/agent/".to_vec(),
                Meta {
                    xattrs: vec![(b"user.k".to_vec(), vec![0, 1, 255])],
                    ..Meta::root(Kind::Dir, 0o751)
                },
                None,
            ),
            (
                b"opt/agent/run".to_vec(),
                Meta::root(Kind::File(3), 0o4755),
                Some(b"abc"),
            ),
            (
                b"opt/agent/hl".to_vec(),
                Meta::root(Kind::Hardlink(b"opt/agent/run".to_vec()), 0o4755),
                None,
            ),
            (
                long.clone().into_bytes(),
                Meta::root(Kind::Symlink(long.clone().into_bytes()), 0o777),
                None,
            ),
            (
                b"opt/agent/null".to_vec(),
                Meta::root(Kind::Char(1, 3), 0o666),
                None,
            ),
        ];
        for (p, m, d) in &entries {
            let mut r = d.map(|b| b as &[u8]);
            w.append(p, m, r.as_mut().map(|r| r as &mut dyn Read))
                .unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        let back = read_back(&bytes);
        assert_eq!(back.len(), 5);
        assert_eq!(back[0].0, "opt/agent/");
        assert_eq!(back[0].2, 0o751);
        assert_eq!(back[0].5, vec![("user.k".to_string(), vec![0, 1, 255])]);
        assert_eq!(
            (back[1].1, back[1].2, back[1].4.as_slice()),
            (EntryType::Regular, 0o4755, &b"abc"[..])
        );
        assert_eq!(
            (back[2].1, back[2].4.as_slice()),
            (EntryType::Link, &b"opt/agent/run"[..])
        );
        assert_eq!(back[3].0, long);
        assert_eq!(back[3].4, long.as_bytes());
        assert_eq!(back[4].1, EntryType::Char);
    }

    #[test]
    fn a_tree_reads_sorted_with_hardlinks_and_the_opaque_marker() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("agent");
        fs::create_dir(&root).unwrap();
        fs::create_dir(root.join("b")).unwrap();
        fs::write(root.join("b/z"), b"zz").unwrap();
        fs::write(root.join("a-file"), b"x").unwrap();
        fs::hard_link(root.join("a-file"), root.join("c-link")).unwrap();
        std::os::unix::fs::symlink("../nowhere", root.join("s")).unwrap();
        let (entries, sockets) = read_tree(&root, "opt/agent", true).unwrap();
        assert_eq!(sockets, 0);
        let paths: Vec<String> = entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "opt/agent",
                "opt/agent/.wh..wh..opq",
                "opt/agent/a-file",
                "opt/agent/b",
                "opt/agent/b/z",
                "opt/agent/c-link",
                "opt/agent/s"
            ]
        );
        assert_eq!(
            entries[5].meta.kind,
            Kind::Hardlink(b"opt/agent/a-file".to_vec())
        );
        assert_eq!(entries[6].meta.kind, Kind::Symlink(b"../nowhere".to_vec()));
        let tar_of = || {
            let mut w = TarWriter::new(Vec::new(), 0);
            write_entries(&mut w, &entries).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(tar_of(), tar_of(), "the same tree gives the same bytes");
    }
}
