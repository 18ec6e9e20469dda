//! Layer tarballs for the unpack tests, written header by header: the `tar`
//! crate's own builder refuses most hostile names ("../x", "", "./"), and
//! these must be written as they are. A name over 100 bytes goes in a GNU
//! long-name record before its header, as GNU tar and Docker write one.

use std::io::Write;

use tar::{EntryType, Header};

/// The modification time of every entry, unless [`Layer::at`] says another.
pub const MTIME: u64 = 1_700_000_000;

/// A ustar header owned by root with [`MTIME`], its name and link target
/// (at most 100 bytes each) written as they are, checksummed.
pub fn header(name: &[u8], ty: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
    assert!(
        name.len() <= 100 && link.len() <= 100,
        "use long_name for long names"
    );
    let mut h = Header::new_ustar();
    {
        let u = h.as_ustar_mut().expect("ustar header");
        u.name[..name.len()].copy_from_slice(name);
        u.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(ty);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_cksum();
    h
}

/// A tar stream being built, one entry per call.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Default for Layer {
    fn default() -> Layer {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer::at(MTIME)
    }

    /// A layer whose entries have the modification time `mtime`.
    pub fn at(mtime: u64) -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    /// The header `h` as it is, then `data`.
    pub fn raw(mut self, h: &Header, data: &[u8]) -> Layer {
        self.b.append(h, data).unwrap();
        self
    }

    /// One entry owned by `owner`; `link` is a symlink's or hardlink's
    /// target (at most 100 bytes).
    fn entry(
        mut self,
        name: &str,
        ty: EntryType,
        mode: u32,
        owner: (u64, u64),
        link: &str,
        data: &[u8],
    ) -> Layer {
        let name = name.as_bytes();
        if name.len() > 100 {
            self = self.long_name(name);
        }
        let name = &name[..name.len().min(100)];
        let mut h = header(name, ty, data.len() as u64, mode, link.as_bytes());
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(self.mtime);
        h.set_cksum();
        self.raw(&h, data)
    }

    pub fn dir(self, name: &str, mode: u32) -> Layer {
        self.entry(name, EntryType::Directory, mode, (0, 0), "", b"")
    }

    pub fn file(self, name: &str, data: &[u8], mode: u32) -> Layer {
        self.owned_file(name, data, mode, 0, 0)
    }

    pub fn owned_file(self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        self.entry(name, EntryType::Regular, mode, (uid, gid), "", data)
    }

    /// An empty file: a whiteout (`.wh.NAME`) or an opaque marker
    /// (`.wh..wh..opq`) by its name.
    pub fn whiteout(self, name: &str) -> Layer {
        self.file(name, b"", 0o644)
    }

    pub fn symlink(self, name: &str, target: &str) -> Layer {
        self.entry(name, EntryType::Symlink, 0o777, (0, 0), target, b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Layer {
        self.hardlink_mode(name, target, 0o644)
    }

    /// A hardlink whose header says `mode`. Docker applies it to the
    /// linked inode (moby's createTarFile chmods the link), and `docker
    /// build` writes the target's own mode there.
    pub fn hardlink_mode(self, name: &str, target: &str, mode: u32) -> Layer {
        self.entry(name, EntryType::Link, mode, (0, 0), target, b"")
    }

    pub fn node(self, name: &str, ty: EntryType, major: u32, minor: u32) -> Layer {
        let mut h = header(name.as_bytes(), ty, 0, 0o666, b"");
        h.set_mtime(self.mtime);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.raw(&h, b"")
    }

    /// PAX records describing the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Layer {
        self.b
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    /// A GNU long-name record for the next entry.
    pub fn long_name(self, name: &[u8]) -> Layer {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(data.len() as u64);
        h.set_entry_type(EntryType::GNULongName);
        h.set_mode(0o644);
        h.set_cksum();
        self.raw(&h, &data)
    }

    /// `n` small files spread over `dirs` directories under `top`: work
    /// that keeps an unpack's writer threads busy.
    pub fn busy(mut self, top: &str, dirs: usize, n: usize) -> Layer {
        self = self.dir(top, 0o755);
        for d in 0..dirs {
            self = self.dir(&format!("{top}/d{d}"), 0o755);
        }
        for i in 0..n {
            let data = format!("file {i} of {top}\n").repeat(i % 7 + 1);
            self = self.file(&format!("{top}/d{}/f{i}", i % dirs), data.as_bytes(), 0o644);
        }
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}
