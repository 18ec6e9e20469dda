//! `hoist tree-digest`: a canonical listing of a file tree and its digest,
//! so two trees (hoist's rootfs, `docker export`, `umoci unpack`) can be
//! compared exactly. Each entry records path, type, mode (with setuid,
//! setgid and sticky), uid, gid, size, content hash, link target, device
//! numbers, hardlink group and xattrs. Modification times are not part of
//! the contract (docs/rootfs.md) and are left out.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

mod layers;
pub use layers::{LayerTree, LayerTreeError};

/// One entry of a tree, as it is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid (0o4000), setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For files: size and the sha256 hex of their content.
    pub size: u64,
    pub content: Option<String>,
    /// For symlinks: the target, verbatim.
    pub link: Option<Vec<u8>>,
    /// For devices: (major, minor).
    pub rdev: Option<(u32, u32)>,
    /// Sorted xattr names and values (overlay's own xattrs excluded).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time (seconds, nanoseconds): only in the stored view
    /// ([`read_stored_tree`]), since the contract leaves times out but an
    /// overlay shows its lower layers' (`make` and friends act on them).
    pub mtime: Option<(i64, i64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Char => 'c',
            Kind::Block => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }
}

/// A whole tree: paths (relative, '/'-separated, no leading '/') to
/// entries, and hardlink groups (each path to the first path of its group).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<Vec<u8>, Entry>,
    pub links: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

pub use crate::unpack::OWNER_XATTR;

/// xattrs that describe a storage backend, not the image: overlayfs's own
/// markers, hoist's ownership records, and SELinux labels the host's
/// policy stamps on every file.
pub fn is_ignored_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.hoist.")
        || name == "security.selinux"
}

/// The owner recorded in [`OWNER_XATTR`] on `path`, if any.
fn recorded_owner(path: &Path) -> Option<(u32, u32)> {
    let mut value = [0u8; 32];
    let n = rustix::fs::lgetxattr(path, OWNER_XATTR, &mut value).ok()?;
    let text = std::str::from_utf8(&value[..n]).ok()?;
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

impl Tree {
    /// The canonical listing: one line per entry, sorted by path bytes.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for (path, e) in &self.entries {
            let _ = write!(
                out,
                "{} {} {:04o} {} {}",
                escape(path),
                e.kind.letter(),
                e.mode & 0o7777,
                e.uid,
                e.gid
            );
            match e.kind {
                Kind::File => {
                    let _ = write!(
                        out,
                        " size={} sha256={}",
                        e.size,
                        e.content.as_deref().unwrap_or("-")
                    );
                }
                Kind::Symlink => {
                    let _ = write!(out, " -> {}", escape(e.link.as_deref().unwrap_or_default()));
                }
                Kind::Char | Kind::Block => {
                    let (ma, mi) = e.rdev.unwrap_or_default();
                    let _ = write!(out, " dev={ma}:{mi}");
                }
                _ => {}
            }
            if let Some((sec, nsec)) = e.mtime {
                let _ = write!(out, " mtime={sec}.{nsec:09}");
            }
            if let Some(first) = self.links.get(path) {
                let _ = write!(out, " hardlink={}", escape(first));
            }
            for (k, v) in &e.xattrs {
                let _ = write!(out, " xattr.{k}={}", hex::encode(v));
            }
            out.push('\n');
        }
        out
    }

    pub fn digest(&self) -> Digest {
        Digest::sha256_of(self.listing().as_bytes())
    }

    /// Remove `prefix` and everything under it (for paths a runtime adds).
    pub fn exclude(&mut self, prefix: &str) {
        let p = prefix.trim_matches('/').as_bytes().to_vec();
        let under = |k: &Vec<u8>| k == &p || (k.starts_with(&p) && k.get(p.len()) == Some(&b'/'));
        self.entries.retain(|k, _| !under(k));
        self.links.retain(|k, v| !under(k) && !under(v));
    }
}

/// Paths with spaces, newlines or non-UTF-8 bytes stay unambiguous.
fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() && c != b'\\' {
            s.push(c as char);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
    s
}

/// Read a tree from disk without following any symlink.
pub fn read_dir_tree(root: &Path) -> Result<Tree, TreeError> {
    walk(root, View::Image)
}

/// The key of the root directory itself in [`read_stored_tree`]'s tree.
pub const ROOT_KEY: &[u8] = b".";

/// Read a tree exactly as it is stored, for checking a storage backend
/// rather than comparing images: every xattr (overlayfs's
/// `trusted.overlay.*`/`user.overlay.*` markers and hoist's
/// `user.hoist.owner` records included, since overlayfs and hoist act on
/// them), owners as stored (not as `user.hoist.owner` says), and the root
/// directory itself as [`ROOT_KEY`] (an overlay shows its top layer's root
/// metadata), and modification times. [`read_dir_tree`] leaves all three out on purpose: they
/// describe how an image is stored, not the image.
pub fn read_stored_tree(root: &Path) -> Result<Tree, TreeError> {
    let io_err = |source| TreeError::Io {
        path: root.to_path_buf(),
        source,
    };
    // Checked before the walk, which would list what a symlink points to.
    let meta = fs::symlink_metadata(root).map_err(io_err)?;
    if !meta.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory (a symlink or a file in its place)",
        )));
    }
    let mut tree = walk(root, View::Stored)?;
    let entry = read_entry(root, &meta, View::Stored).map_err(io_err)?;
    tree.entries.insert(ROOT_KEY.to_vec(), entry);
    Ok(tree)
}

/// Whether a tree is read as an image ([`read_dir_tree`]) or as stored
/// ([`read_stored_tree`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Image,
    Stored,
}

fn walk(root: &Path, view: View) -> Result<Tree, TreeError> {
    let mut tree = Tree::default();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut files = Vec::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TreeError::Io { path, source }
        };
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let mut key = rel.clone();
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(name.as_bytes());
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let entry = read_entry(&path, &meta, view).map_err(io_err(&path))?;
            if entry.kind != Kind::Dir && meta.nlink() > 1 {
                let first = inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| key.clone());
                if *first != key {
                    tree.links.insert(key.clone(), first.clone());
                }
            }
            match entry.kind {
                Kind::Dir => stack.push((path, key.clone())),
                Kind::File => files.push((key.clone(), path)),
                _ => {}
            }
            tree.entries.insert(key, entry);
        }
    }
    for (key, content) in hash_files(files)? {
        if let Some(e) = tree.entries.get_mut(&key) {
            e.content = Some(content);
        }
    }
    // A hardlink group is named by its smallest path, whatever order the
    // walk met them in.
    normalise_links(&mut tree);
    Ok(tree)
}

/// Rename every hardlink group after its lexicographically first member,
/// and record every member but that one.
pub fn normalise_links(tree: &mut Tree) {
    let mut groups: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (member, first) in &tree.links {
        groups
            .entry(first.clone())
            .or_default()
            .push(member.clone());
    }
    let mut links = BTreeMap::new();
    for (first, mut members) in groups {
        members.push(first);
        members.sort();
        let head = members[0].clone();
        for m in members.into_iter().skip(1) {
            links.insert(m, head.clone());
        }
    }
    tree.links = links;
}

fn read_entry(path: &Path, meta: &fs::Metadata, view: View) -> io::Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let mut e = Entry {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: 0,
        content: None,
        link: None,
        rdev: None,
        xattrs: read_xattrs(path, view)?,
        mtime: (view == View::Stored).then(|| (meta.mtime(), meta.mtime_nsec())),
    };
    if view == View::Image {
        if let Some((uid, gid)) = recorded_owner(path) {
            (e.uid, e.gid) = (uid, gid);
        }
    }
    match kind {
        // Its content is hashed by `hash_files`, with the others'.
        Kind::File => e.size = meta.len(),
        Kind::Symlink => e.link = Some(fs::read_link(path)?.as_os_str().as_bytes().to_vec()),
        Kind::Char | Kind::Block => {
            let dev = meta.rdev();
            e.rdev = Some((rustix::fs::major(dev), rustix::fs::minor(dev)));
        }
        _ => {}
    }
    Ok(e)
}

/// Threads reading files for [`hash_files`]. A tree is mostly small files,
/// whose time is in opening and reading them, not in hashing: four at once
/// keep a disk busy where one leaves it waiting.
const READERS: usize = 4;

/// The sha256 hex of each `(key, path)`'s content, read by [`READERS`]
/// threads, each with one buffer for all its files.
fn hash_files(files: Vec<(Vec<u8>, PathBuf)>) -> Result<Vec<(Vec<u8>, String)>, TreeError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let reader = || -> Result<Vec<(usize, String)>, TreeError> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((_, path)) = files.get(i) else { break };
            match hash_file(path, &mut buf) {
                Ok(d) => out.push((i, d)),
                Err(source) => {
                    failed.store(true, Ordering::Relaxed);
                    let path = path.clone();
                    return Err(TreeError::Io { path, source });
                }
            }
        }
        Ok(out)
    };
    let done: Vec<_> = std::thread::scope(|s| {
        // A thread that cannot start leaves its share to the others, and
        // to this one, which reads too.
        let helpers: Vec<_> = (1..READERS.min(files.len()))
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("hoist-hash".into())
                    .spawn_scoped(s, reader)
                    .ok()
            })
            .collect();
        let mut done = vec![reader()];
        for h in helpers {
            done.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        done
    });
    let mut out = Vec::with_capacity(files.len());
    for part in done {
        for (i, content) in part? {
            out.push((files[i].0.clone(), content));
        }
    }
    Ok(out)
}

/// The sha256 hex of the regular file `path`'s content. Not followed if
/// something swapped it for a symlink since it was listed.
fn hash_file(path: &Path, buf: &mut [u8]) -> io::Result<String> {
    let mut f = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn read_xattrs(path: &Path, view: View) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(rustix::io::Errno::RANGE) => {
            names = vec![0u8; 65536];
            rustix::fs::llistxattr(path, &mut names)?
        }
        Err(e) => return Err(e.into()),
    };
    for raw in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(raw).into_owned();
        if view == View::Image && is_ignored_xattr(&name) {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, raw, &mut value)?;
        value.truncate(len);
        out.insert(name, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn listing_covers_types_modes_links_and_hardlinks() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("d")).unwrap();
        fs::write(r.join("d/b"), b"hello").unwrap();
        fs::hard_link(r.join("d/b"), r.join("a")).unwrap();
        symlink("../x y", r.join("d/l")).unwrap();
        fs::set_permissions(r.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o4755)).unwrap();
        let tree = read_dir_tree(r).unwrap();
        let l = tree.listing();
        let lines: Vec<&str> = l.lines().collect();
        assert_eq!(lines.len(), 4, "{l}");
        assert!(lines[0].starts_with("a f 4755 "), "{l}");
        assert!(lines[1].starts_with("d d 0700 "), "{l}");
        assert!(lines[2].contains("hardlink=a"), "{l}");
        assert!(lines[3].ends_with("-> ../x\\x20y"), "{l}");
        assert_eq!(tree.digest(), read_dir_tree(r).unwrap().digest());
    }

    #[test]
    fn any_change_changes_the_digest() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"1").unwrap();
        let before = read_dir_tree(t.path()).unwrap().digest();
        fs::set_permissions(t.path().join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        let after = read_dir_tree(t.path()).unwrap().digest();
        assert_ne!(before, after);
    }

    /// What overlayfs and hoist act on is in the stored view, and only
    /// there: opaque markers, ownership records, the root's own mode.
    #[test]
    fn stored_view_covers_what_the_image_view_normalises() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("d")).unwrap();
        fs::write(r.join("d/f"), b"x").unwrap();
        let digests = || {
            (
                read_dir_tree(r).unwrap().digest(),
                read_stored_tree(r).unwrap().digest(),
            )
        };
        let (image0, stored0) = digests();
        let listing = read_stored_tree(r).unwrap().listing();
        assert!(listing.starts_with(". d "), "{listing}");
        let changes: [&dyn Fn(); 4] = [
            &|| {
                rustix::fs::setxattr(
                    r.join("d"),
                    "user.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap()
            },
            &|| {
                rustix::fs::setxattr(
                    r.join("d/f"),
                    OWNER_XATTR,
                    b"0:0",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap()
            },
            &|| fs::set_permissions(r, fs::Permissions::from_mode(0o711)).unwrap(),
            &|| {
                let f = fs::File::options().write(true).open(r.join("d/f")).unwrap();
                f.set_modified(std::time::UNIX_EPOCH).unwrap();
            },
        ];
        let mut stored = stored0;
        for change in changes {
            change();
            let (image, now) = digests();
            assert_ne!(now, stored, "the stored view missed a change");
            stored = now;
            // user.hoist.owner "0:0" is what a root-owned file reads as.
            if rustix::process::geteuid().is_root() {
                assert_eq!(image, image0, "the image view normalises this");
            }
        }
    }

    #[test]
    fn stored_view_refuses_a_symlinked_root() {
        let t = tempfile::tempdir().unwrap();
        symlink("/", t.path().join("l")).unwrap();
        assert!(read_stored_tree(&t.path().join("l")).is_err());
    }

    #[test]
    fn exclude_removes_subtrees_only() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("proc")).unwrap();
        fs::write(t.path().join("proc/x"), b"").unwrap();
        fs::write(t.path().join("process"), b"").unwrap();
        let mut tree = read_dir_tree(t.path()).unwrap();
        tree.exclude("/proc");
        let keys: Vec<_> = tree
            .entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, vec!["process"]);
    }
}
