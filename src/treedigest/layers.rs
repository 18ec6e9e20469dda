//! The tree of an image computed from its layers in memory, without
//! unpacking to disk (`hoist tree-digest REF`): the same OCI rules as the
//! unpacker — whiteouts and opaque markers hide only what lower layers put
//! there, a non-directory replaces a directory with its whole subtree,
//! missing parents appear as 0755 root directories, and a hardlink header's
//! owner and mode apply to the file it shares.

use std::collections::BTreeMap;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::{is_ignored_xattr, Entry, Kind, Tree};
use crate::unpack::path::{classify, normalize, Role};
use crate::unpack::Compression;

#[derive(Debug, thiserror::Error)]
pub enum LayerTreeError {
    #[error("layer of type {0:?} is not a tar layer")]
    MediaType(String),
    #[error("reading the layer: {0}")]
    Io(#[from] io::Error),
    #[error("entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },
}

fn bad(entry: &[u8], reason: impl Into<String>) -> LayerTreeError {
    LayerTreeError::Entry {
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason: reason.into(),
    }
}

/// An image's tree being built layer by layer. Hardlinks are tracked by
/// inode (a name replaced later leaves its old group), as on disk.
#[derive(Default)]
pub struct LayerTree {
    entries: BTreeMap<Vec<u8>, Entry>,
    inode: BTreeMap<Vec<u8>, u64>,
    next: u64,
}

impl LayerTree {
    pub fn new() -> LayerTree {
        LayerTree::default()
    }

    /// Apply one layer blob (`reader`, of `media_type`).
    pub fn apply(&mut self, reader: impl Read, media_type: &str) -> Result<(), LayerTreeError> {
        let stream: Box<dyn Read> = match Compression::from_media_type(media_type) {
            Some(Compression::None) => Box::new(reader),
            Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Some(Compression::Zstd) => Box::new(zstd::stream::read::Decoder::new(reader)?),
            None => return Err(LayerTreeError::MediaType(media_type.to_string())),
        };
        let mut archive = tar::Archive::new(stream);
        let mut hides: Vec<(Vec<u8>, bool)> = Vec::new(); // (path, opaque?)
        let mut adds: Vec<(Vec<u8>, Add)> = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path_bytes().into_owned();
            if entry.header().entry_type().is_pax_global_extensions() {
                continue;
            }
            let path = normalize(&raw).map_err(|p| bad(&raw, format!("{p:?}")))?;
            match classify(&path).map_err(|r| bad(&raw, r))? {
                Role::AufsMeta => {}
                Role::Whiteout { target } => hides.push((target.key(), false)),
                Role::Opaque { dir } => hides.push((dir.key(), true)),
                Role::Plain => {
                    let add = read_entry(&mut entry, &raw)?;
                    adds.push((path.key(), add));
                }
            }
        }
        // A whiteout or opaque marker hides only what lower layers put
        // there, wherever it stands in this layer's tar (image-spec).
        for (p, opaque) in &hides {
            self.remove_under(p, !*opaque);
        }
        for (p, add) in adds {
            self.insert(p, add)?;
        }
        Ok(())
    }

    /// The finished tree, hardlink groups named by their first path.
    pub fn finish(self) -> Tree {
        let mut groups: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, ino) in &self.inode {
            groups.entry(*ino).or_default().push(p.clone());
        }
        let mut links = BTreeMap::new();
        for members in groups.values().filter(|m| m.len() > 1) {
            // BTreeMap order: members are sorted, the first names the group.
            for m in &members[1..] {
                links.insert(m.clone(), members[0].clone());
            }
        }
        Tree {
            entries: self.entries,
            links,
        }
    }

    /// Remove what is under `p` (and `p` itself when `itself`).
    fn remove_under(&mut self, p: &[u8], itself: bool) {
        let gone = |k: &Vec<u8>| is_under(k, p) || (itself && k == p);
        self.entries.retain(|k, _| !gone(k));
        self.inode.retain(|k, _| !gone(k));
    }

    fn ensure_parents(&mut self, p: &[u8]) {
        let mut end = 0;
        while let Some(i) = p[end..].iter().position(|&b| b == b'/') {
            let parent = p[..end + i].to_vec();
            let is_dir = self
                .entries
                .get(&parent)
                .is_some_and(|e| e.kind == Kind::Dir);
            if !is_dir {
                self.remove_under(&parent, true);
                self.entries.insert(parent, implicit_dir());
            }
            end += i + 1;
        }
    }

    fn insert(&mut self, p: Vec<u8>, add: Add) -> Result<(), LayerTreeError> {
        if p.is_empty() {
            return Ok(()); // the root directory itself is not listed
        }
        self.ensure_parents(&p);
        match add {
            Add::Node(e) => {
                let existing_dir = self.entries.get(&p).is_some_and(|x| x.kind == Kind::Dir);
                if e.kind != Kind::Dir || !existing_dir {
                    self.remove_under(&p, true);
                }
                if e.kind != Kind::Dir {
                    self.next += 1;
                    self.inode.insert(p.clone(), self.next);
                }
                self.entries.insert(p, e);
            }
            Add::Hardlink { target, meta } => {
                let Some(t) = self.entries.get(&target).cloned() else {
                    return Err(bad(&p, "hardlink to a path that does not exist"));
                };
                if t.kind == Kind::Dir {
                    return Err(bad(&p, "hardlink to a directory"));
                }
                let ino = self.inode.get(&target).copied().unwrap_or_default();
                self.remove_under(&p, true);
                // The link header's owner, mode and xattrs apply to the
                // inode, so to every name of it (as moby applies them).
                let mut shared = t;
                shared.mode = meta.mode;
                shared.uid = meta.uid;
                shared.gid = meta.gid;
                if !meta.xattrs.is_empty() {
                    shared.xattrs = meta.xattrs;
                }
                let names: Vec<Vec<u8>> = self
                    .inode
                    .iter()
                    .filter(|(_, i)| **i == ino)
                    .map(|(k, _)| k.clone())
                    .collect();
                for n in names {
                    self.entries.insert(n, shared.clone());
                }
                self.entries.insert(p.clone(), shared);
                self.inode.insert(p, ino);
            }
        }
        Ok(())
    }
}

fn implicit_dir() -> Entry {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        content: None,
        link: None,
        rdev: None,
        xattrs: BTreeMap::new(),
        mtime: None,
    }
}

enum Add {
    Node(Entry),
    Hardlink { target: Vec<u8>, meta: Entry },
}

fn read_entry<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Add, LayerTreeError> {
    let h = entry.header();
    let ty = h.entry_type();
    let mode = h.mode()? & 0o7777;
    let uid = h.uid()? as u32;
    let gid = h.gid()? as u32;
    // Only device entries carry meaningful (and parseable) numbers.
    let rdev = match ty {
        tar::EntryType::Char | tar::EntryType::Block => {
            match (h.device_major()?, h.device_minor()?) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => Some((0, 0)),
            }
        }
        _ => None,
    };
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let mut xattrs = BTreeMap::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                let name = String::from_utf8_lossy(name).into_owned();
                if !is_ignored_xattr(&name) {
                    xattrs.insert(name, ext.value_bytes().to_vec());
                }
            }
        }
    }
    let kind = match ty {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            Kind::File
        }
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Char => Kind::Char,
        tar::EntryType::Block => Kind::Block,
        tar::EntryType::Fifo => Kind::Fifo,
        tar::EntryType::Link => Kind::File,
        other => return Err(bad(raw, format!("unsupported tar entry type {other:?}"))),
    };
    let mut e = Entry {
        kind,
        mode,
        uid,
        gid,
        size: 0,
        content: None,
        link: None,
        rdev: None,
        xattrs,
        mtime: None,
    };
    match ty {
        tar::EntryType::Link => {
            let target = link.ok_or_else(|| bad(raw, "hardlink without a target"))?;
            let target =
                normalize(&target).map_err(|p| bad(raw, format!("hardlink target {p:?}")))?;
            return Ok(Add::Hardlink {
                target: target.key(),
                meta: e,
            });
        }
        tar::EntryType::Symlink => {
            e.link = Some(link.ok_or_else(|| bad(raw, "symlink without a target"))?)
        }
        tar::EntryType::Char | tar::EntryType::Block => e.rdev = rdev,
        _ if kind == Kind::File => {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 128 * 1024];
            let mut size = 0u64;
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            e.size = size;
            e.content = Some(hex::encode(h.finalize()));
        }
        _ => {}
    }
    Ok(Add::Node(e))
}

fn is_under(p: &[u8], root: &[u8]) -> bool {
    root.is_empty() || p.starts_with(root) && p.get(root.len()) == Some(&b'/')
}
