//! The copy rootfs built from the layer cache (issue 11): the benchmark's
//! cached layers are read as overlayfs reads them, and their union is
//! written into a plain directory by a pool of writer threads.
//!
//! Re-applying every layer blob for each run decompressed and hashed the
//! whole image again and created its files one at a time (20 s for a
//! 19.6k-file image, issue 11). Creating files is what a copy costs, and
//! concurrent creations overlap: where the disk's latency bounds one
//! writer, and where the kernel's own work does (this machine: every
//! core busy in ext4's inode allocation). [`WRITERS`] threads create
//! files; directories are listed and made as tasks of the same pool.
//!
//! The union rules are overlayfs's (Documentation/filesystems/overlayfs.rst
//! "whiteouts and opaque directories"), over the layers in the form the
//! cache keeps them (`unpack::OutputMode::OverlayLayer`), topmost first:
//! - a name is taken from the topmost layer that has it;
//! - a whiteout there (a 0/0 character device, or — where the cache had to
//!   use them — an empty file with `*.overlay.whiteout` in a directory
//!   marked `*.overlay.opaque=x`) hides it in every lower layer;
//! - a directory merges with the same-named directories of the layers
//!   below, down to the first that is not a directory or that is opaque
//!   (`*.overlay.opaque=y`), which hides everything under it;
//! - a non-directory hides whatever the lower layers have there.
//!
//! An entry's type, owner, mode, times, xattrs (but overlayfs's own
//! markers) and content come from the layer that provides it; a
//! directory's from its topmost layer, as an overlay mount shows it. File
//! data is cloned where the file system can (`FICLONE`: XFS, Btrfs), else
//! copied in the kernel (`copy_file_range`), else read and written: the
//! copy never shares an inode with the cache, so nothing a run does reaches
//! it. Files that are hardlinked in a layer stay hardlinked in the copy
//! (links are made once every file is written).
//!
//! Reads in the cache and writes in the copy go through
//! `unpack::fsops::Root` handles (openat2 `RESOLVE_IN_ROOT`,
//! no symlink followed), then `*at` calls with one plain name.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use super::RootfsError;
use crate::unpack::fsops::{DirError, Root};
use crate::unpack::path::MAX_DEPTH;
use crate::unpack::{Fidelity, Privileges};

/// Writer threads. Four concurrent extractions ran at 3.2x the rate of
/// one on a latency-bound disk (issue 11); on this machine's 2 busy
/// cores, 8 writers copied base faster than 1, 2, 4 or 16 did, in 0.23
/// and 0.45 of one writer's time in two rounds.
pub const WRITERS: usize = 8;

/// The most entries of one directory handed to a writer at once. Creating
/// in a directory holds its inode lock, so writers in the same directory
/// mostly wait for each other (and spin, on a machine with few cores):
/// a directory's files go to one writer, and only a very large directory
/// is split.
const BATCH: usize = 1024;

/// How a source directory holds its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A cached layer as overlayfs reads it: whiteouts and opaque markers
    /// are instructions.
    Overlay,
    /// A plain tree (the subtree cache): every entry is content.
    Tree,
}

/// What a copy failed on: the path inside the copy and the operation.
#[derive(Debug)]
struct CopyError {
    path: String,
    op: &'static str,
    source: io::Error,
}

impl CopyError {
    /// The error for a copy made at `at` (`opt/agent`) in the rootfs.
    fn at(self, at: &str) -> RootfsError {
        let path = match (at, self.path.as_str()) {
            (a, "") => a.to_string(),
            ("", p) => p.to_string(),
            (a, p) => format!("{a}/{p}"),
        };
        RootfsError::Copy {
            path,
            op: self.op,
            source: self.source,
        }
    }
}

/// The error of `op` at `name` in `comps`. The path is built only if
/// there is an error: this is asked for at every syscall of every entry.
fn fail<'c>(
    comps: &'c [Vec<u8>],
    name: &'c [u8],
    op: &'static str,
) -> impl FnOnce(io::Error) -> CopyError + 'c {
    move |source| {
        let mut path = comps.join(&b'/');
        if !name.is_empty() && name != b"." {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
        }
        let path = String::from_utf8_lossy(&path).into_owned();
        CopyError { path, op, source }
    }
}

// ---------------------------------------------------------------- union

/// What one layer has at a name of a merged directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Whiteout,
    Dir { opaque: bool },
    Other,
}

/// A name of the merged directory that is visible, and where it is from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    pub name: Vec<u8>,
    /// The topmost listing that has the name: it gives the entry.
    pub top: usize,
    /// For a directory, the listings (topmost first, `top` included) whose
    /// directories of that name merge into it; empty for anything else.
    pub dirs: Vec<usize>,
}

/// The union of one directory's listings, topmost layer first, by the
/// rules in the module docs. Names keep the order they are first seen in.
pub(crate) fn merge(listings: &[Vec<(Vec<u8>, Found)>]) -> Vec<Pick> {
    let mut order: Vec<&[u8]> = Vec::new();
    let mut seen: HashMap<&[u8], Vec<(usize, Found)>> = HashMap::new();
    for (layer, listing) in listings.iter().enumerate() {
        for (name, found) in listing {
            let at = seen.entry(name.as_slice()).or_insert_with(|| {
                order.push(name.as_slice());
                Vec::new()
            });
            at.push((layer, *found));
        }
    }
    order
        .into_iter()
        .filter_map(|name| pick(name, &seen[name]))
        .collect()
}

/// The entry for `name` from what each layer has there, topmost first.
fn pick(name: &[u8], found: &[(usize, Found)]) -> Option<Pick> {
    let (top, first) = *found.first()?;
    let mut dirs = Vec::new();
    match first {
        Found::Whiteout => return None,
        Found::Other => {}
        Found::Dir { opaque } => {
            dirs.push(top);
            if !opaque {
                for &(layer, f) in &found[1..] {
                    match f {
                        Found::Dir { opaque } => {
                            dirs.push(layer);
                            if opaque {
                                break;
                            }
                        }
                        Found::Whiteout | Found::Other => break,
                    }
                }
            }
        }
    }
    Some(Pick {
        name: name.to_vec(),
        top,
        dirs,
    })
}

// ---------------------------------------------------------------- xattrs

/// An inode whose xattrs are read or written: an open descriptor, or a
/// path that is never followed at its last component.
pub(crate) enum Node<'a> {
    Fd(BorrowedFd<'a>),
    Path(Vec<u8>),
}

impl Node<'_> {
    /// `name` in the directory `dir`, as `/proc/thread-self/fd/N/NAME`:
    /// the *xattr calls have no `*at` form before Linux 6.13, and the
    /// `l*xattr` calls on this path do not follow NAME itself.
    pub(crate) fn at(dir: BorrowedFd<'_>, name: &[u8]) -> Node<'static> {
        let mut p = format!("/proc/thread-self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        Node::Path(p)
    }

    pub(crate) fn path(p: &Path) -> Node<'static> {
        Node::Path(p.as_os_str().as_bytes().to_vec())
    }

    /// Every xattr name, however long the list: its size is asked first,
    /// and asked again if it grew before the read.
    pub(crate) fn xattr_names(&self) -> io::Result<Vec<Vec<u8>>> {
        let list = sized_read(|buf| match self {
            Node::Fd(fd) if buf.is_empty() => rfs::flistxattr_query(fd),
            Node::Fd(fd) => rfs::flistxattr(fd, buf),
            Node::Path(p) if buf.is_empty() => rfs::llistxattr_query(OsStr::from_bytes(p)),
            Node::Path(p) => rfs::llistxattr(OsStr::from_bytes(p), buf),
        });
        let list = match list {
            Ok(l) => l,
            // A file system without xattrs has none to list.
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(list
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// The whole value of `key`; `None` when it is not set.
    pub(crate) fn xattr(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let key = OsStr::from_bytes(key);
        let value = sized_read(|buf| match self {
            Node::Fd(fd) if buf.is_empty() => rfs::fgetxattr_query(fd, key),
            Node::Fd(fd) => rfs::fgetxattr(fd, key, buf),
            Node::Path(p) if buf.is_empty() => rfs::lgetxattr_query(OsStr::from_bytes(p), key),
            Node::Path(p) => rfs::lgetxattr(OsStr::from_bytes(p), key, buf),
        });
        match value {
            Ok(v) => Ok(Some(v)),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn set_xattr(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let key = OsStr::from_bytes(key);
        let flags = rfs::XattrFlags::empty();
        match self {
            Node::Fd(fd) => rfs::fsetxattr(fd, key, value, flags),
            Node::Path(p) => rfs::lsetxattr(OsStr::from_bytes(p), key, value, flags),
        }?;
        Ok(())
    }
}

/// Call `read` with an empty buffer for the size, then with a buffer of
/// that size; again when the value grew in between (ERANGE).
fn sized_read(mut read: impl FnMut(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    for _ in 0..8 {
        let size = read(&mut [])?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// The xattr prefix of the overlay markers this process's cache holds:
/// real root writes `trusted.overlay.*`, anyone else `user.overlay.*` for
/// `userxattr` mounts (see `unpack::OutputMode::OverlayLayer`).
pub(crate) fn overlay_prefix() -> &'static str {
    match Privileges::Detect.resolve() {
        Privileges::Root => "trusted.overlay.",
        _ => "user.overlay.",
    }
}

/// overlayfs's own names: markers, never content. A layer cannot plant
/// them (`unpack::meta` drops them), so every one in the cache is hoist's.
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

// ---------------------------------------------------------------- the copy

/// Write the union of `layers` (topmost first) into the directory `dest`,
/// which is `at` in the rootfs (for errors) and must be empty; its own
/// metadata is taken from the topmost layer's root. Returns what this
/// process could not reproduce (xattrs or device nodes refused; zero as
/// root).
pub fn copy_union(
    layers: &[(&Path, Form)],
    dest: BorrowedFd<'_>,
    at: &str,
) -> Result<Fidelity, RootfsError> {
    let mut roots = Vec::new();
    for (dir, form) in layers {
        let fd = rfs::open(
            *dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootfsError::Io {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        roots.push((fd, *form));
    }
    copy_roots(&roots, dest).map_err(|e| e.at(at))
}

fn copy_roots(roots: &[(OwnedFd, Form)], dest: BorrowedFd<'_>) -> Result<Fidelity, CopyError> {
    let privileges = Privileges::Detect.resolve();
    let shared = Shared {
        layers: roots,
        dest,
        opaque: format!("{}opaque", overlay_prefix()).into_bytes(),
        whiteout: format!("{}whiteout", overlay_prefix()).into_bytes(),
        chown: privileges != Privileges::Unprivileged,
        ids: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
        devices: privileges == Privileges::Root,
        umask: umask(),
        linked: Mutex::new(HashMap::new()),
        links: Mutex::new(Vec::new()),
        dirs: Mutex::new(Vec::new()),
        fidelity: Mutex::new(Fidelity::default()),
        reflink: AtomicBool::new(true),
        copy_range: AtomicBool::new(true),
    };
    let root_layers = shared.root_layers()?;
    shared.run(vec![Task::Dir {
        comps: Vec::new(),
        layers: root_layers,
    }])?;
    // Links once every file they may point to exists; directory modes
    // and times once nothing is added to them any more.
    let links = std::mem::take(&mut *lock(&shared.links));
    shared.run(links.into_iter().map(|(t, l)| Task::Link(t, l)).collect())?;
    let dirs = std::mem::take(&mut *lock(&shared.dirs));
    shared.run(
        dirs.chunks(BATCH)
            .map(|c| Task::DirMeta(c.to_vec()))
            .collect(),
    )?;
    let f = *lock(&shared.fidelity);
    Ok(f)
}

/// The umask, as `/proc/self/status` gives it (Linux 4.7 on), without
/// setting it: umask(2) alone cannot read it, and setting it would change
/// it for every thread a moment.
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// A poisoned lock means a writer panicked, which `thread::scope` then
/// re-raises; the data itself is still consistent (plain pushes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A path inside the rootfs (or a layer), one name per component.
type RelPath = Vec<Vec<u8>>;

/// A directory's mode and times, set when the tree is complete.
#[derive(Clone)]
struct DirMeta {
    comps: RelPath,
    mode: u32,
    /// `None` for the root of a union of cached layers: a cached layer's
    /// root has the time it was unpacked, not the image's, so the copy's
    /// root keeps the time it was made, as an overlay's (its upper
    /// directory's) and the applied blobs' do.
    times: Option<Timestamps>,
}

enum Task {
    /// Make the merged directory's children (it exists already) from these
    /// layers' directories, topmost first.
    Dir {
        comps: RelPath,
        layers: Vec<usize>,
    },
    /// Write these non-directory entries of a directory, each from its
    /// layer: (name, layer).
    Files {
        comps: RelPath,
        items: Vec<(Vec<u8>, usize)>,
    },
    /// Hardlink the second path to the first.
    Link(RelPath, RelPath),
    DirMeta(Vec<DirMeta>),
}

struct Shared<'a> {
    layers: &'a [(OwnedFd, Form)],
    dest: BorrowedFd<'a>,
    opaque: Vec<u8>,
    whiteout: Vec<u8>,
    /// May give entries their owners (root, or root of a user namespace
    /// for the ids it maps, which are the only ones its cache holds).
    chown: bool,
    /// This process's (uid, gid), which what it creates gets: no chown
    /// needed for an entry that has them (no directory of the copy is
    /// setgid while it is written: modes are set at the end).
    ids: (u32, u32),
    /// May make device nodes (CAP_MKNOD in the initial namespace).
    devices: bool,
    /// This process's umask, when /proc says it: a file created with its
    /// permission bits then needs no chmod unless the umask took some away.
    umask: Option<u32>,
    /// (st_dev, st_ino) of a multiply-linked cached inode → the path in
    /// the copy that was made from it first.
    linked: Mutex<HashMap<(u64, u64), RelPath>>,
    links: Mutex<Vec<(RelPath, RelPath)>>,
    dirs: Mutex<Vec<DirMeta>>,
    fidelity: Mutex<Fidelity>,
    /// Cleared at the first file the file system cannot clone or
    /// copy_file_range, so the rest do not try again.
    reflink: AtomicBool,
    copy_range: AtomicBool,
}

/// The queue the writers share: tasks (taken last-in first-out, so the
/// walk goes depth-first and what waits stays small), how many are queued
/// or running, and the first error, which stops everyone.
struct Queue {
    tasks: Vec<Task>,
    pending: usize,
    failed: Option<CopyError>,
}

impl Shared<'_> {
    /// The layers whose roots merge, topmost first: down to the first
    /// whose root is opaque (a layer with `.wh..wh..opq` at its top, which
    /// removes everything below it, as applying the layers would).
    fn root_layers(&self) -> Result<Vec<usize>, CopyError> {
        let mut merged = Vec::new();
        for (i, (fd, form)) in self.layers.iter().enumerate() {
            merged.push(i);
            let opaque = *form == Form::Overlay
                && Node::at(fd.as_fd(), b".")
                    .xattr(&self.opaque)
                    .map_err(fail(&[], b"", "read opaque marker"))?
                    .as_deref()
                    == Some(b"y");
            if opaque {
                break;
            }
        }
        Ok(merged)
    }

    /// Run `tasks`, and the tasks they make, on [`WRITERS`] threads.
    fn run(&self, tasks: Vec<Task>) -> Result<(), CopyError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let queue = Mutex::new(Queue {
            pending: tasks.len(),
            tasks,
            failed: None,
        });
        let wake = Condvar::new();
        std::thread::scope(|s| {
            for i in 0..WRITERS {
                let spawned = std::thread::Builder::new()
                    .name(format!("hoist-copy-{i}"))
                    .spawn_scoped(s, || self.writer(&queue, &wake));
                if let Err(e) = spawned {
                    // The threads already running finish the work; with
                    // none, the copy cannot be made.
                    if i == 0 {
                        lock(&queue).failed = Some(CopyError {
                            path: String::new(),
                            op: "start a writer thread",
                            source: e,
                        });
                    }
                    break;
                }
            }
        });
        match queue.into_inner() {
            Ok(q) => q.failed.map_or(Ok(()), Err),
            Err(p) => p.into_inner().failed.map_or(Ok(()), Err),
        }
    }

    fn writer(&self, queue: &Mutex<Queue>, wake: &Condvar) {
        let mut w = Writer::new(self);
        loop {
            let task = {
                let mut q = lock(queue);
                loop {
                    if q.failed.is_some() || q.pending == 0 {
                        return;
                    }
                    if let Some(t) = q.tasks.pop() {
                        break t;
                    }
                    q = wake
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let done = w.task(task);
            let mut q = lock(queue);
            q.pending -= 1;
            let added = match done {
                Ok(more) => {
                    q.pending += more.len();
                    q.tasks.extend(more);
                    q.tasks.len()
                }
                Err(e) => {
                    q.failed.get_or_insert(e);
                    0
                }
            };
            let finished = q.failed.is_some() || q.pending == 0;
            drop(q);
            // Everyone leaves at the end; otherwise wake only as many
            // writers as there is work for (this one takes the next).
            if finished {
                wake.notify_all();
            } else {
                for _ in 1..added.min(WRITERS) {
                    wake.notify_one();
                }
            }
        }
    }
}

/// One writer thread's handles: beneath the copy, and beneath each layer.
struct Writer<'s, 'a> {
    shared: &'s Shared<'a>,
    dest: Root<'a>,
    layers: Vec<Root<'a>>,
}

fn dir_error(e: DirError) -> io::Error {
    match e {
        DirError::Missing => Errno::NOENT.into(),
        DirError::Symlink(_) => Errno::LOOP.into(),
        DirError::NotDir(_) => Errno::NOTDIR.into(),
        DirError::Io(e) => e,
    }
}

fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// The identity of a cached inode.
// st_dev and st_ino are u64 here, narrower on some other architectures.
#[allow(clippy::unnecessary_cast)]
fn inode(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

fn readable_dir(dir: &OwnedFd) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rfs::openat(dir, ".", flags, Mode::empty())?)
}

impl<'s, 'a> Writer<'s, 'a> {
    fn new(shared: &'s Shared<'a>) -> Self {
        Writer {
            shared,
            dest: Root::new(shared.dest),
            layers: shared
                .layers
                .iter()
                .map(|(fd, _)| Root::new(fd.as_fd()))
                .collect(),
        }
    }

    fn task(&mut self, task: Task) -> Result<Vec<Task>, CopyError> {
        match task {
            Task::Dir { comps, layers } => self.dir(comps, &layers),
            Task::Files { comps, items } => {
                // Items come grouped by layer: each layer's handle on this
                // directory is dropped once its items are written, so a
                // writer holds one whatever the number of layers (an
                // image may have over a hundred; RLIMIT_NOFILE is 1024).
                for (i, (name, layer)) in items.iter().enumerate() {
                    self.entry(&comps, name, *layer)?;
                    if items.get(i + 1).is_none_or(|(_, next)| next != layer) {
                        self.layers[*layer].forget();
                    }
                }
                Ok(Vec::new())
            }
            Task::Link(target, link) => self.link(&target, &link).map(|()| Vec::new()),
            Task::DirMeta(dirs) => {
                for d in dirs {
                    self.dir_meta(&d)?;
                }
                Ok(Vec::new())
            }
        }
    }

    fn dest_dir(&self, comps: &[Vec<u8>]) -> Result<Rc<OwnedFd>, CopyError> {
        self.dest
            .open_dir(comps, false)
            .map_err(|e| fail(comps, b"", "open directory in the rootfs")(dir_error(e)))
    }

    fn layer_dir(&self, layer: usize, comps: &[Vec<u8>]) -> Result<Rc<OwnedFd>, CopyError> {
        self.layers[layer]
            .open_dir(comps, false)
            .map_err(|e| fail(comps, b"", "open cached directory")(dir_error(e)))
    }

    /// Give the merged directory `comps` its topmost layer's owner and
    /// xattrs, note its mode and times for the end, and make its children:
    /// directories here (each becomes a task), the rest in batches.
    fn dir(&mut self, comps: RelPath, layers: &[usize]) -> Result<Vec<Task>, CopyError> {
        if comps.len() > MAX_DEPTH {
            return Err(fail(&comps, b"", "walk")(io::Error::other(
                "directory tree deeper than any layer may be",
            )));
        }
        let dest = self.dest_dir(&comps)?;
        let mut listings = Vec::with_capacity(layers.len());
        for (i, &layer) in layers.iter().enumerate() {
            let src = self.layer_dir(layer, &comps)?;
            let rd = readable_dir(&src).map_err(fail(&comps, b"", "open cached directory"))?;
            if i == 0 {
                let target = readable_dir(&dest).map_err(fail(&comps, b"", "open directory"))?;
                let overlay = self.shared.layers[layer].1 == Form::Overlay;
                self.own_dir_meta(&comps, &rd, &target, overlay)?;
            }
            listings.push(self.listing(&comps, layer, &src, rd)?);
            drop(src);
            self.layers[layer].forget();
        }
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for p in merge(&listings) {
            let layer = layers[p.top];
            if p.dirs.is_empty() {
                files.push((p.name, layer));
                continue;
            }
            rfs::mkdirat(&*dest, p.name.as_slice(), Mode::from_raw_mode(0o700))
                .map_err(|e| fail(&comps, &p.name, "mkdir")(e.into()))?;
            let mut child = comps.clone();
            child.push(p.name);
            dirs.push(Task::Dir {
                comps: child,
                layers: p.dirs.iter().map(|&i| layers[i]).collect(),
            });
        }
        files.sort_by_key(|&(_, layer)| layer);
        // Batches last: taken first, while this directory's handle is
        // still the writers' cached one.
        let mut tasks = dirs;
        let mut files = files.into_iter().peekable();
        while files.peek().is_some() {
            tasks.push(Task::Files {
                comps: comps.clone(),
                items: files.by_ref().take(BATCH).collect(),
            });
        }
        Ok(tasks)
    }

    /// Owner and xattrs of a directory now; mode and times at the end.
    fn own_dir_meta(
        &self,
        comps: &[Vec<u8>],
        src: &OwnedFd,
        dest: &OwnedFd,
        overlay: bool,
    ) -> Result<(), CopyError> {
        let st =
            rfs::fstat(src).map_err(|e| fail(comps, b"", "stat cached directory")(e.into()))?;
        if self.needs_chown(&st) {
            self.chown(comps, b"", || {
                rfs::fchown(
                    dest,
                    Some(rfs::Uid::from_raw(st.st_uid)),
                    Some(rfs::Gid::from_raw(st.st_gid)),
                )
            })?;
        }
        self.copy_xattrs(comps, b"", &Node::Fd(src.as_fd()), &Node::Fd(dest.as_fd()))?;
        lock(&self.shared.dirs).push(DirMeta {
            comps: comps.to_vec(),
            mode: st.st_mode & 0o7777,
            times: Some(times_of(&st)).filter(|_| !(comps.is_empty() && overlay)),
        });
        Ok(())
    }

    /// One layer's directory as the union rules see it.
    fn listing(
        &self,
        comps: &[Vec<u8>],
        layer: usize,
        src: &OwnedFd,
        rd: OwnedFd,
    ) -> Result<Vec<(Vec<u8>, Found)>, CopyError> {
        let overlay = self.shared.layers[layer].1 == Form::Overlay;
        let opaque_key = self.shared.opaque.as_slice();
        // `opaque=x`: not opaque, but holding xattr whiteouts.
        let xattr_whiteouts = overlay
            && Node::Fd(rd.as_fd())
                .xattr(opaque_key)
                .map_err(fail(comps, b"", "read opaque marker"))?
                .as_deref()
                == Some(b"x");
        let list = fail(comps, b"", "list cached directory");
        let dir = rfs::Dir::new(rd).map_err(|e| list(e.into()))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| fail(comps, b"", "list cached directory")(e.into()))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut ty = entry.file_type();
            let mut st = None;
            if ty == FileType::Unknown {
                let s = self.stat(comps, src, name)?;
                ty = FileType::from_raw_mode(s.st_mode);
                st = Some(s);
            }
            let found = match ty {
                FileType::Directory => Found::Dir {
                    opaque: overlay
                        && Node::at(src.as_fd(), name)
                            .xattr(opaque_key)
                            .map_err(fail(comps, name, "read opaque marker"))?
                            .as_deref()
                            == Some(b"y"),
                },
                FileType::CharacterDevice if overlay => {
                    let s = match st {
                        Some(s) => s,
                        None => self.stat(comps, src, name)?,
                    };
                    if s.st_rdev == 0 {
                        Found::Whiteout
                    } else {
                        Found::Other
                    }
                }
                FileType::RegularFile if xattr_whiteouts => {
                    let s = match st {
                        Some(s) => s,
                        None => self.stat(comps, src, name)?,
                    };
                    let marked = s.st_size == 0
                        && Node::at(src.as_fd(), name)
                            .xattr(&self.shared.whiteout)
                            .map_err(fail(comps, name, "read whiteout marker"))?
                            .is_some();
                    if marked {
                        Found::Whiteout
                    } else {
                        Found::Other
                    }
                }
                _ => Found::Other,
            };
            out.push((name.to_vec(), found));
        }
        Ok(out)
    }

    fn stat(&self, comps: &[Vec<u8>], dir: &OwnedFd, name: &[u8]) -> Result<Stat, CopyError> {
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(comps, name, "stat cached entry")(e.into()))
    }

    /// Write one non-directory entry of `comps` from `layer`.
    fn entry(&mut self, comps: &[Vec<u8>], name: &[u8], layer: usize) -> Result<(), CopyError> {
        let src = self.layer_dir(layer, comps)?;
        let st = self.stat(comps, &src, name)?;
        if st.st_nlink > 1 {
            let mut path = comps.to_vec();
            path.push(name.to_vec());
            let mut linked = lock(&self.shared.linked);
            if let Some(first) = linked.get(&inode(&st)) {
                let first = first.clone();
                drop(linked);
                lock(&self.shared.links).push((first, path));
                return Ok(());
            }
            linked.insert(inode(&st), path);
        }
        let dest = self.dest_dir(comps)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => self.file(comps, name, &src, &dest, &st),
            FileType::Symlink => {
                let target = rfs::readlinkat(&*src, name, Vec::new())
                    .map_err(|e| fail(comps, name, "read cached symlink")(e.into()))?;
                rfs::symlinkat(target.as_c_str(), &*dest, name)
                    .map_err(|e| fail(comps, name, "symlink")(e.into()))?;
                self.meta_at(comps, name, &src, &dest, &st, false)
            }
            ty @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                let mode = Mode::from_raw_mode(0o600);
                match rfs::mknodat(&*dest, name, ty, mode, st.st_rdev as _) {
                    Ok(()) => self.meta_at(comps, name, &src, &dest, &st, true),
                    // The cache of this flavour holds no device it could
                    // not make; counted as unpacking counts it all the same.
                    Err(Errno::PERM) if !self.shared.devices && ty != FileType::Fifo => {
                        lock(&self.shared.fidelity).devices_not_created += 1;
                        Ok(())
                    }
                    Err(e) => Err(fail(comps, name, "mknod")(e.into())),
                }
            }
            other => Err(fail(comps, name, "copy")(io::Error::other(format!(
                "a {other:?} is not something a layer holds"
            )))),
        }
    }

    fn file(
        &self,
        comps: &[Vec<u8>],
        name: &[u8],
        src_dir: &OwnedFd,
        dest_dir: &OwnedFd,
        st: &Stat,
    ) -> Result<(), CopyError> {
        let ro = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let src = rfs::openat(src_dir, name, ro, Mode::empty())
            .map_err(|e| fail(comps, name, "open cached file")(e.into()))?;
        let new =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Created with its permission bits: where the umask takes none of
        // them away and there is no setuid, setgid or sticky bit (which a
        // create does not set, and a chown would clear), it needs no chmod.
        let mode = st.st_mode & 0o7777;
        let made = mode & 0o777 & !self.shared.umask.unwrap_or(0o777);
        let dest = rfs::openat(dest_dir, name, new, Mode::from_raw_mode(mode & 0o777))
            .map_err(|e| fail(comps, name, "create file")(e.into()))?;
        let (src, dest) = (File::from(src), File::from(dest));
        self.copy_data(&src, &dest, st.st_size as u64)
            .map_err(fail(comps, name, "copy file data"))?;
        // Owner, then mode (chown clears setuid and setgid), then xattrs
        // (chown clears security.capability), then times.
        if self.needs_chown(st) {
            self.chown(comps, name, || {
                rfs::fchown(
                    &dest,
                    Some(rfs::Uid::from_raw(st.st_uid)),
                    Some(rfs::Gid::from_raw(st.st_gid)),
                )
            })?;
        }
        if made != mode {
            rfs::fchmod(&dest, Mode::from_raw_mode(mode))
                .map_err(|e| fail(comps, name, "chmod")(e.into()))?;
        }
        self.copy_xattrs(comps, name, &Node::Fd(src.as_fd()), &Node::Fd(dest.as_fd()))?;
        rfs::futimens(&dest, &times_of(st)).map_err(|e| fail(comps, name, "set times")(e.into()))
    }

    /// Clone, else copy in the kernel, else read and write.
    fn copy_data(&self, src: &File, dest: &File, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.shared.reflink.load(Ordering::Relaxed) {
            match rfs::ioctl_ficlone(dest, src) {
                Ok(()) => return Ok(()),
                // Not a file system that clones (ext4, tmpfs), or the
                // copy is on another one than the cache.
                Err(
                    Errno::OPNOTSUPP | Errno::NOTTY | Errno::INVAL | Errno::XDEV | Errno::NOSYS,
                ) => {
                    self.shared.reflink.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut done = 0u64;
        if self.shared.copy_range.load(Ordering::Relaxed) {
            while done < len {
                let want = usize::try_from(len - done)
                    .unwrap_or(usize::MAX)
                    .min(1 << 30);
                match rfs::copy_file_range(src, None, dest, None, want) {
                    Ok(0) => break,
                    Ok(n) => done += n as u64,
                    Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL)
                        if done == 0 =>
                    {
                        self.shared.copy_range.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if done < len {
            // The rest, from where copy_file_range left both offsets.
            io::copy(&mut &*src, &mut &*dest)?;
        }
        Ok(())
    }

    /// Owner, mode (not a symlink's), xattrs and times of `name` in
    /// `dest`, just made and not followed.
    fn meta_at(
        &self,
        comps: &[Vec<u8>],
        name: &[u8],
        src: &OwnedFd,
        dest: &OwnedFd,
        st: &Stat,
        chmod: bool,
    ) -> Result<(), CopyError> {
        if self.needs_chown(st) {
            self.chown(comps, name, || {
                let (uid, gid) = (rfs::Uid::from_raw(st.st_uid), rfs::Gid::from_raw(st.st_gid));
                rfs::chownat(dest, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            })?;
        }
        if chmod {
            // A node we just made: not a symlink, so following is moot;
            // Linux has no lchmod before 6.6.
            rfs::chmodat(
                dest,
                name,
                Mode::from_raw_mode(st.st_mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| fail(comps, name, "chmod")(e.into()))?;
        }
        self.copy_xattrs(
            comps,
            name,
            &Node::at(src.as_fd(), name),
            &Node::at(dest.as_fd(), name),
        )?;
        rfs::utimensat(dest, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(comps, name, "set times")(e.into()))
    }

    fn needs_chown(&self, st: &Stat) -> bool {
        self.shared.chown && (st.st_uid, st.st_gid) != self.shared.ids
    }

    /// Root of a user namespace cannot give an id it does not map; its
    /// cache holds none, but count rather than fail as unpacking does.
    fn chown(
        &self,
        comps: &[Vec<u8>],
        name: &[u8],
        chown: impl FnOnce() -> Result<(), Errno>,
    ) -> Result<(), CopyError> {
        match chown() {
            Ok(()) => Ok(()),
            Err(Errno::INVAL) if !self.shared.devices => {
                lock(&self.shared.fidelity).ownership_not_reproduced += 1;
                Ok(())
            }
            Err(e) => Err(fail(comps, name, "chown")(e.into())),
        }
    }

    /// Every xattr of `src` but overlayfs's markers onto `dest`. Names the
    /// file system or this process may not set are counted, as unpacking
    /// counts them.
    fn copy_xattrs(
        &self,
        comps: &[Vec<u8>],
        name: &[u8],
        src: &Node<'_>,
        dest: &Node<'_>,
    ) -> Result<(), CopyError> {
        let names = src
            .xattr_names()
            .map_err(fail(comps, name, "list xattrs"))?;
        for key in names.iter().filter(|k| !is_overlay_xattr(k)) {
            // Gone since it was listed: nothing to copy.
            let Some(value) = src.xattr(key).map_err(fail(comps, name, "read xattr"))? else {
                continue;
            };
            match dest.set_xattr(key, &value) {
                Ok(()) => {}
                Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTSUP | Errno::PERM)) => {
                    lock(&self.shared.fidelity).xattrs_not_set += 1;
                }
                Err(e) => return Err(fail(comps, name, "set xattr")(e)),
            }
        }
        Ok(())
    }

    fn link(&self, target: &[Vec<u8>], link: &[Vec<u8>]) -> Result<(), CopyError> {
        let (Some((tname, tcomps)), Some((lname, lcomps))) =
            (target.split_last(), link.split_last())
        else {
            return Ok(());
        };
        let tdir = self.dest_dir(tcomps)?;
        let ldir = self.dest_dir(lcomps)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
        rfs::linkat(
            &*tdir,
            tname.as_slice(),
            &*ldir,
            lname.as_slice(),
            AtFlags::empty(),
        )
        .map_err(|e| fail(lcomps, lname, "link")(e.into()))
    }

    fn dir_meta(&self, d: &DirMeta) -> Result<(), CopyError> {
        let fd = self.dest_dir(&d.comps)?;
        rfs::chmodat(&*fd, ".", Mode::from_raw_mode(d.mode), AtFlags::empty())
            .map_err(|e| fail(&d.comps, b"", "chmod")(e.into()))?;
        let Some(times) = &d.times else {
            return Ok(());
        };
        rfs::utimensat(&*fd, ".", times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(&d.comps, b"", "set times")(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(entries: &[(&str, Found)]) -> Vec<(Vec<u8>, Found)> {
        entries
            .iter()
            .map(|(n, f)| (n.as_bytes().to_vec(), *f))
            .collect()
    }

    fn names(picks: &[Pick]) -> Vec<(String, usize, Vec<usize>)> {
        picks
            .iter()
            .map(|p| {
                (
                    String::from_utf8_lossy(&p.name).into_owned(),
                    p.top,
                    p.dirs.clone(),
                )
            })
            .collect()
    }

    const DIR: Found = Found::Dir { opaque: false };
    const OPAQUE: Found = Found::Dir { opaque: true };

    #[test]
    fn a_whiteout_removes_the_lower_entry() {
        let upper = l(&[("gone", Found::Whiteout), ("new", Found::Other)]);
        let lower = l(&[("gone", Found::Other), ("kept", Found::Other)]);
        assert_eq!(
            names(&merge(&[upper, lower])),
            [("new".into(), 0, vec![]), ("kept".into(), 1, vec![])]
        );
    }

    #[test]
    fn a_whiteout_hides_a_lower_directory_and_everything_below() {
        let top = l(&[("d", Found::Whiteout)]);
        let mid = l(&[("d", DIR)]);
        let low = l(&[("d", DIR)]);
        assert!(merge(&[top, mid, low]).is_empty());
    }

    #[test]
    fn directories_merge_down_to_the_first_opaque_one() {
        let l0 = l(&[("d", DIR)]);
        let l1 = l(&[]);
        let l2 = l(&[("d", OPAQUE)]);
        let l3 = l(&[("d", DIR)]);
        assert_eq!(
            names(&merge(&[l0, l1, l2, l3])),
            [("d".into(), 0, vec![0, 2])]
        );
    }

    #[test]
    fn an_opaque_directory_hides_the_lower_ones() {
        let upper = l(&[("d", OPAQUE)]);
        let lower = l(&[("d", DIR)]);
        assert_eq!(names(&merge(&[upper, lower])), [("d".into(), 0, vec![0])]);
    }

    #[test]
    fn a_non_directory_replaces_a_lower_directory_and_back() {
        let top = l(&[("f2d", DIR), ("d2f", Found::Other)]);
        let low = l(&[("f2d", Found::Other), ("d2f", DIR)]);
        assert_eq!(
            names(&merge(&[top, low])),
            [("f2d".into(), 0, vec![0]), ("d2f".into(), 0, vec![])]
        );
    }

    /// Two cached layers made by hand, in the form the cache keeps them,
    /// copied into a fresh directory.
    #[test]
    fn the_copy_applies_whiteouts_and_opaque_dirs_and_keeps_hardlinks() {
        use std::fs;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, out) = (
            t.path().join("lower"),
            t.path().join("upper"),
            t.path().join("out"),
        );
        for d in [&lower, &upper, &out] {
            fs::create_dir(d).unwrap();
        }
        let opaque = format!("{}opaque", overlay_prefix());
        // The lower layer.
        fs::create_dir_all(lower.join("d")).unwrap();
        fs::write(lower.join("d/a"), b"a").unwrap();
        fs::write(lower.join("gone"), b"gone").unwrap();
        fs::create_dir_all(lower.join("o/sub")).unwrap();
        fs::write(lower.join("o/old"), b"old").unwrap();
        fs::create_dir_all(lower.join("x/y")).unwrap();
        fs::write(lower.join("h1"), b"linked").unwrap();
        fs::hard_link(lower.join("h1"), lower.join("d/h2")).unwrap();
        fs::write(lower.join("suid"), b"#!/bin/true").unwrap();
        fs::set_permissions(lower.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("d/a", lower.join("s")).unwrap();
        // The upper layer: whiteouts of a file and a directory, an opaque
        // directory, a new file in a merged directory.
        let whiteout = |p: &Path| {
            rfs::mknodat(rfs::CWD, p, FileType::CharacterDevice, Mode::empty(), 0).unwrap()
        };
        whiteout(&upper.join("gone"));
        whiteout(&upper.join("x"));
        fs::create_dir(upper.join("o")).unwrap();
        Node::path(&upper.join("o"))
            .set_xattr(opaque.as_bytes(), b"y")
            .unwrap();
        fs::write(upper.join("o/new"), b"new").unwrap();
        fs::create_dir(upper.join("d")).unwrap();
        fs::set_permissions(upper.join("d"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::write(upper.join("d/c"), b"c").unwrap();
        // An xattr whiteout, in a directory marked as holding them.
        fs::create_dir_all(lower.join("w")).unwrap();
        fs::write(lower.join("w/gone"), b"gone").unwrap();
        fs::write(lower.join("w/kept"), b"kept").unwrap();
        fs::create_dir(upper.join("w")).unwrap();
        Node::path(&upper.join("w"))
            .set_xattr(opaque.as_bytes(), b"x")
            .unwrap();
        fs::write(upper.join("w/gone"), b"").unwrap();
        let marker = format!("{}whiteout", overlay_prefix());
        Node::path(&upper.join("w/gone"))
            .set_xattr(marker.as_bytes(), b"y")
            .unwrap();

        let dest = File::open(&out).unwrap();
        let layers = [
            (upper.as_path(), Form::Overlay),
            (lower.as_path(), Form::Overlay),
        ];
        let f = copy_union(&layers, dest.as_fd(), "").unwrap();
        assert!(f.is_exact(), "{f:?}");

        let mut found: Vec<String> = Vec::new();
        let mut stack = vec![out.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(&out).unwrap().display().to_string();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
                found.push(rel);
            }
        }
        found.sort();
        assert_eq!(
            found,
            ["d", "d/a", "d/c", "d/h2", "h1", "o", "o/new", "s", "suid", "w", "w/kept"],
            "whiteouts remove, the opaque o hides its lower entries, d merges"
        );
        let meta = |p: &str| fs::symlink_metadata(out.join(p)).unwrap();
        assert_eq!(fs::read(out.join("d/c")).unwrap(), b"c");
        assert_eq!(fs::read(out.join("h1")).unwrap(), b"linked");
        assert_eq!(meta("h1").ino(), meta("d/h2").ino(), "the hardlink is kept");
        assert_eq!(meta("h1").nlink(), 2);
        let cached = fs::metadata(lower.join("h1")).unwrap();
        assert_ne!(
            meta("h1").ino(),
            cached.ino(),
            "no inode shared with the cache"
        );
        assert_eq!(cached.nlink(), 2, "the cache is left as it was");
        assert_eq!(
            meta("d").mode() & 0o7777,
            0o751,
            "a directory is its topmost layer's"
        );
        assert_eq!(meta("suid").mode() & 0o7777, 0o4755);
        assert_eq!(fs::read_link(out.join("s")).unwrap(), Path::new("d/a"));
        assert_eq!(
            Node::path(&out.join("o")).xattr(opaque.as_bytes()).unwrap(),
            None,
            "overlay markers are not copied"
        );
    }

    /// An image may have more layers than a writer could keep open
    /// directories of (Docker allows 127), times eight writers.
    #[test]
    fn many_layers_need_few_descriptors() {
        use std::fs;
        let t = tempfile::tempdir().unwrap();
        let n = 150;
        let layers: Vec<std::path::PathBuf> =
            (0..n).map(|i| t.path().join(format!("l{i}"))).collect();
        for (i, l) in layers.iter().enumerate() {
            fs::create_dir_all(l.join("shared/deeper")).unwrap();
            fs::write(l.join(format!("shared/deeper/f{i}")), b"x").unwrap();
        }
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        // One test per process under nextest: this limit then holds for
        // the copy alone. Elsewhere other tests share the process, and
        // the copy runs with the limit it has.
        let limited = std::env::var_os("NEXTEST").is_some();
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if limited {
            let mut low = before;
            // The layers' roots stay open for the whole copy; the writers
            // may not add a descriptor per layer each.
            low.current = Some(n as u64 + 64);
            rustix::process::setrlimit(rustix::process::Resource::Nofile, low).unwrap();
        } else {
            crate::errln!("not under nextest: the descriptor limit is not lowered");
        }
        let dest = File::open(&out).unwrap();
        let sources: Vec<(&Path, Form)> = layers
            .iter()
            .rev()
            .map(|l| (l.as_path(), Form::Overlay))
            .collect();
        let copied = copy_union(&sources, dest.as_fd(), "");
        if limited {
            rustix::process::setrlimit(rustix::process::Resource::Nofile, before).unwrap();
        }
        copied.unwrap();
        assert_eq!(fs::read_dir(out.join("shared/deeper")).unwrap().count(), n);
    }

    #[test]
    fn a_directory_stops_merging_at_a_lower_file_or_whiteout() {
        let top = l(&[("a", DIR), ("b", DIR)]);
        let mid = l(&[("a", Found::Other), ("b", Found::Whiteout)]);
        let low = l(&[("a", DIR), ("b", DIR)]);
        assert_eq!(
            names(&merge(&[top, mid, low])),
            [("a".into(), 0, vec![0]), ("b".into(), 0, vec![0])]
        );
    }
}
