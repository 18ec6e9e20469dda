//! The entry loop: turns each tar entry into confined file-system changes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

mod metadata;
mod whiteout;
mod writers;

use metadata::MetaSetter;
use writers::{Job, Outcome, Pool};

use crate::beneath;
use crate::unpack::fsops::{self, DirError, Root};
use crate::unpack::meta::{read_meta, Meta, TimesOf};
use crate::unpack::path::{classify, normalize, EntryPath, PathProblem, Role};
use crate::unpack::stream::TapState;
use crate::unpack::Privileges;
use crate::unpack::{ApplyOptions, OutputMode, UnpackError, HEADER_BUDGET};

const COPY_BUF: usize = 256 * 1024;

/// Counters the caller reports as `LayerStats`.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub not_reproduced: crate::unpack::Fidelity,
}

/// How an entry's metadata is reached: through the open file we just wrote,
/// or as `name` in its parent directory.
enum Handle<'f> {
    File(&'f File),
    At(BorrowedFd<'f>, &'f [u8]),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Node,
}

/// Mode and times of a directory, applied after its children are written.
struct DirLater {
    mode: u32,
    times: TimesOf,
}

/// What this process may reproduce, from [`Privileges`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Powers {
    /// Set the layer's owners (an unmapped id in a user namespace is
    /// counted, not fatal).
    pub chown: bool,
    /// Create device nodes (CAP_MKNOD in the initial user namespace).
    pub devices: bool,
    /// Write `trusted.overlay.*` (else `user.overlay.*`, for `userxattr`).
    pub trusted_xattrs: bool,
}

impl Powers {
    pub(crate) fn of(p: Privileges) -> Powers {
        let (chown, devices, trusted_xattrs) = match p {
            Privileges::Root => (true, true, true),
            Privileges::UserNamespace => (true, false, false),
            Privileges::Unprivileged | Privileges::Detect => (false, false, false),
        };
        Powers {
            chown,
            devices,
            trusted_xattrs,
        }
    }

    /// Root of a user namespace: may chown, only to the ids it maps.
    pub(crate) fn in_user_namespace(self) -> bool {
        self.chown && !self.devices
    }
}

pub(crate) struct Applier<'a> {
    root: Root<'a>,
    overlay: bool,
    powers: Powers,
    setter: MetaSetter,
    /// The writer threads, while [`Self::run`] runs (none if the system
    /// would not start any: the reader then writes every file).
    pool: Option<Pool>,
    state: Rc<TapState>,
    /// Tree mode: every path this layer wrote, and all their ancestors. A
    /// whiteout or opaque marker hides only what lower layers put there
    /// (image-spec layer.md), whatever its position in the tar.
    written: HashSet<Vec<u8>>,
    /// Overlay form: names this layer whited out; a directory the layer then
    /// creates there must hide the lower one, so it is made opaque.
    whited_out: HashSet<Vec<u8>>,
    dirs: HashMap<Vec<u8>, DirLater>,
    buf: Vec<u8>,
    /// Only entries on the way to or inside this subtree are applied.
    subtree: Option<Vec<Vec<u8>>>,
    single_writer: bool,
    pub counts: Counts,
}

fn err_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn errno(e: Errno) -> io::Error {
    e.into()
}

impl<'a> Applier<'a> {
    pub(crate) fn new(
        target: BorrowedFd<'a>,
        opts: &ApplyOptions,
        powers: Powers,
        state: Rc<TapState>,
    ) -> Self {
        Applier {
            root: Root::new(target),
            overlay: opts.mode == OutputMode::OverlayLayer,
            powers,
            setter: MetaSetter {
                powers,
                ids: (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                ),
            },
            pool: None,
            state,
            written: HashSet::new(),
            whited_out: HashSet::new(),
            dirs: HashMap::new(),
            buf: vec![0; COPY_BUF],
            subtree: opts.subtree.as_deref().map(|p| {
                p.split('/')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.as_bytes().to_vec())
                    .collect()
            }),
            single_writer: opts.single_writer,
            counts: Counts::default(),
        }
    }

    /// Applies every entry of `archive`, small files by the writer
    /// threads, then the deferred directory modes and times once every
    /// file is written.
    pub(crate) fn run<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<(), UnpackError> {
        std::thread::scope(|scope| {
            if !self.single_writer {
                self.pool = Pool::start(scope, self.setter);
            }
            let applied = self.entries(archive).and_then(|()| self.settle_all());
            if applied.is_err() {
                self.abandon();
            }
            // Closes the queues: the writers end, and the scope joins them.
            self.pool = None;
            // Even when an entry failed, leave the directories written so
            // far with their declared modes rather than the 0700 they were
            // made with; the entry's error is the one worth reporting.
            let finished = self.finish_dirs();
            applied.and(finished)
        })
    }

    // ---- the writers ------------------------------------------------------

    /// Waits until no file handed to a writer is at `comps`, above it or
    /// beneath it: what the reader does there next then finds the tree as
    /// one writer would have left it.
    fn settle(&mut self, comps: &[Vec<u8>]) -> Result<(), UnpackError> {
        while self.pool.as_ref().is_some_and(|p| p.in_the_way(comps)) {
            self.complete_one()?;
        }
        Ok(())
    }

    fn settle_all(&mut self) -> Result<(), UnpackError> {
        while self.pool.as_ref().is_some_and(|p| !p.idle()) {
            self.complete_one()?;
        }
        Ok(())
    }

    /// Takes the next finished job; a writer's error stops the unpack.
    fn complete_one(&mut self) -> Result<(), UnpackError> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(());
        };
        match pool.recv()? {
            Outcome::Written(f) => {
                self.counts.not_reproduced.add(f);
                Ok(())
            }
            Outcome::Occupied(job) => self.write_job(job),
            Outcome::Failed(e) => Err(e),
        }
    }

    /// After an error: lets the writers finish what they hold, so nothing
    /// writes into the tree once [`Self::run`] returns. The first error is
    /// the one reported; these jobs' are dropped with the layer.
    fn abandon(&mut self) {
        while let Some(pool) = self.pool.as_mut().filter(|p| !p.idle()) {
            if pool.recv().is_err() {
                break;
            }
        }
    }

    /// Writes a job on the reader thread: when no writer could be started,
    /// or a writer found a directory in the way.
    fn write_job(&mut self, job: Job) -> Result<(), UnpackError> {
        let file = self.create_file(&job.name, job.parent.as_fd(), &job.last)?;
        let fidelity = &mut self.counts.not_reproduced;
        writers::fill(&file, &job, &self.setter, fidelity)
    }

    /// A new regular file `last` in `parent`, replacing what is there.
    /// Created first and lstat'ed only if that fails: most names are new.
    fn create_file(
        &self,
        name: &str,
        parent: BorrowedFd<'_>,
        last: &[u8],
    ) -> Result<File, UnpackError> {
        let create = || {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
            beneath::open_file(parent, last, flags, Mode::from_raw_mode(0o600))
        };
        let fd = match create() {
            Err(Errno::EXIST) => {
                self.make_room(name, parent, last, false)?;
                create()
            }
            r => r,
        }
        .map_err(|e| UnpackError::io(name, "create file", e))?;
        Ok(File::from(fd))
    }

    fn entries<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), UnpackError> {
        let state = self.state.clone();
        let mut entries = archive
            .entries()
            .map_err(|e| state.read_error("<start of archive>", e))?;
        let mut last = String::from("<start of archive>");
        loop {
            state.arm(HEADER_BUDGET);
            let next = entries.next();
            state.disarm();
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(state.read_error(&last, e)),
            };
            last = err_name(&entry.path_bytes());
            self.counts.entries += 1;
            self.entry(&mut entry, &last)?;
            // Consume what the entry did not (data of a symlink or directory
            // header, say), so the parser only skips padding while armed.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| state.read_error(&last, e))?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // As Docker does: global PAX headers carry nothing a layer needs.
            return Ok(());
        }
        let path = normalize(&entry.path_bytes()).map_err(|p| path_error(name, p))?;
        let role = classify(&path).map_err(|reason| UnpackError::BadWhiteout {
            entry: name.to_string(),
            reason,
        })?;
        let ty = type_byte(entry);
        let is_dir = ty == b'5';
        if !self.wanted(&role, &path) {
            return Ok(());
        }
        match &role {
            Role::Whiteout { target } => self.settle(target.components())?,
            Role::Opaque { dir } => self.settle(dir.components())?,
            Role::Plain => self.settle(path.components())?,
            Role::AufsMeta => {}
        }
        match role {
            Role::AufsMeta => Ok(()),
            Role::Whiteout { .. } | Role::Opaque { .. } if is_dir => {
                Err(UnpackError::BadWhiteout {
                    entry: name.to_string(),
                    reason: "a whiteout must not be a directory",
                })
            }
            Role::Whiteout { target } => {
                self.counts.whiteouts += 1;
                self.whiteout(name, &target)
            }
            Role::Opaque { dir } => {
                self.counts.opaque_dirs += 1;
                self.opaque(name, &dir)
            }
            Role::Plain => self.plain(entry, name, &path),
        }
    }

    /// With a subtree filter: whether an entry can affect the subtree. It
    /// can when its path (a whiteout's target, an opaque marker's
    /// directory) is inside the subtree or on the way to it.
    fn wanted(&self, role: &Role, path: &EntryPath) -> bool {
        let Some(sub) = &self.subtree else {
            return true;
        };
        let comps = match role {
            Role::Whiteout { target } => target.components(),
            Role::Opaque { dir } => dir.components(),
            Role::AufsMeta => return false,
            Role::Plain => path.components(),
        };
        comps.starts_with(sub) || sub.starts_with(comps)
    }

    fn plain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        path: &EntryPath,
    ) -> Result<(), UnpackError> {
        let meta = read_meta(entry, name)?;
        let ty = type_byte(entry);
        if path.is_root() && ty != b'5' {
            return Err(UnpackError::BadEntry {
                entry: name.to_string(),
                reason: "names the root directory but is not a directory".into(),
            });
        }
        match ty {
            b'0' | b'\0' | b'7' | b'S' => self.file(entry, name, path, &meta),
            b'5' => self.dir(name, path, &meta),
            b'2' => {
                let target = link_target(entry, name)?;
                self.symlink(name, path, &target, &meta)
            }
            b'1' => {
                let target = link_target(entry, name)?;
                self.hardlink(name, path, &target, &meta)
            }
            b'3' | b'4' | b'6' => self.node(entry, name, path, &meta),
            other => Err(UnpackError::BadEntry {
                entry: name.to_string(),
                reason: format!("unsupported tar entry type {:?}", other as char),
            }),
        }
    }

    // ---- directories of the tree -------------------------------------

    fn dir_error(&self, name: &str, comps: &[Vec<u8>], e: DirError) -> UnpackError {
        match e {
            DirError::Symlink(i) => UnpackError::SymlinkInPath {
                entry: name.to_string(),
                component: err_name(&comps[..=i].join(&b'/')),
            },
            DirError::NotDir(i) => {
                let what = format!(
                    "{:?} is not a directory",
                    err_name(&comps[..=i].join(&b'/'))
                );
                UnpackError::io(
                    name,
                    "open parent directory",
                    io::Error::new(io::ErrorKind::NotADirectory, what),
                )
            }
            DirError::Missing => {
                UnpackError::io(name, "open parent directory", errno(Errno::NOENT))
            }
            DirError::Io(e) => UnpackError::io(name, "open parent directory", e),
        }
    }

    /// The parent directory of a new entry, created (0755) if missing.
    fn parent(&self, name: &str, comps: &[Vec<u8>]) -> Result<Arc<OwnedFd>, UnpackError> {
        self.root
            .open_dir_shared(comps, true)
            .map_err(|e| self.dir_error(name, comps, e))
    }

    /// An existing directory, or `None` if there is nothing there to change.
    fn existing_dir(
        &self,
        name: &str,
        comps: &[Vec<u8>],
    ) -> Result<Option<Rc<OwnedFd>>, UnpackError> {
        match self.root.open_dir(comps, false) {
            Ok(fd) => Ok(Some(fd)),
            Err(DirError::Missing) | Err(DirError::NotDir(_)) => Ok(None),
            Err(e) => Err(self.dir_error(name, comps, e)),
        }
    }

    /// Makes room for a new entry at `last` in `parent`: whatever is there is
    /// unlinked (a directory recursively), except a directory when the new
    /// entry is one too, which is kept with its contents. Returns whether a
    /// directory was kept.
    fn make_room(
        &self,
        name: &str,
        parent: BorrowedFd<'_>,
        last: &[u8],
        want_dir: bool,
    ) -> Result<bool, UnpackError> {
        let Some(st) = fsops::lstat(parent, last).map_err(|e| UnpackError::io(name, "lstat", e))?
        else {
            return Ok(false);
        };
        if fsops::file_type(&st) == FileType::Directory {
            if want_dir {
                return Ok(true);
            }
            fsops::remove_all(parent, last)
                .map_err(|e| UnpackError::io(name, "remove existing directory", e))?;
        } else {
            rfs::unlinkat(parent, last, AtFlags::empty())
                .map_err(|e| UnpackError::io(name, "remove existing entry", e))?;
        }
        self.root.forget();
        Ok(false)
    }

    fn mark_written(&mut self, path: &EntryPath) {
        if self.overlay {
            return;
        }
        let comps = path.components();
        for n in (0..=comps.len()).rev() {
            if !self.written.insert(comps[..n].join(&b'/')) {
                break;
            }
        }
    }

    // ---- entry kinds ----------------------------------------------------

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        path: &EntryPath,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (pc, last) = split(path);
        let parent = self.parent(name, pc)?;
        if self.pool.is_some() && entry.size() <= writers::SMALL_FILE {
            let data = self.read_whole(entry, name)?;
            while self.pool.as_ref().is_some_and(|p| p.full(data.len())) {
                self.complete_one()?;
            }
            self.mark_written(path);
            let job = Job {
                key: path.key(),
                name: name.to_string(),
                parent,
                last: last.to_vec(),
                data,
                meta: meta.clone(),
            };
            return match self.pool.as_mut() {
                Some(pool) => pool.send(job),
                None => self.write_job(job),
            };
        }
        let mut file = self.create_file(name, parent.as_fd(), last)?;
        self.mark_written(path);
        self.read_data(entry, name, &mut |chunk| {
            file.write_all(chunk)
                .map_err(|e| UnpackError::io(name, "write file", e))
        })?;
        self.set_meta(name, Handle::File(&file), Kind::File, meta)
    }

    /// Read an entry's data to its end, handing each chunk to `sink` and
    /// counting it against the layer's limit; the data must be what the
    /// header declared.
    fn read_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), UnpackError>,
    ) -> Result<(), UnpackError> {
        let expected = entry.size();
        let mut found = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.state.read_error(name, e)),
            };
            self.state.add_written(n as u64)?;
            sink(&self.buf[..n])?;
            found += n as u64;
        }
        if found != expected {
            return Err(UnpackError::Truncated {
                entry: name.to_string(),
                expected,
                found,
            });
        }
        Ok(())
    }

    /// A small file's data, whole, for a writer. What the header does not
    /// declare is counted, not kept, so memory stays bounded by the size
    /// that chose this path.
    fn read_whole<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Vec<u8>, UnpackError> {
        let expected = entry.size();
        // At most SMALL_FILE: the caller checked.
        let mut data = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        self.read_data(entry, name, &mut |chunk| {
            // Past what was declared is an error once read; not kept.
            let room = usize::try_from(expected)
                .unwrap_or(usize::MAX)
                .saturating_sub(data.len());
            data.extend_from_slice(&chunk[..chunk.len().min(room)]);
            Ok(())
        })?;
        Ok(data)
    }

    fn dir(&mut self, name: &str, path: &EntryPath, meta: &Meta) -> Result<(), UnpackError> {
        let key = path.key();
        let (fd, last): (Arc<OwnedFd>, &[u8]) = match path.split_last() {
            None => (self.parent(name, &[])?, b"."),
            Some((pc, last)) => {
                let parent = self.parent(name, pc)?;
                // Made first, looked at only if that fails: most are new.
                let mkdir = || rfs::mkdirat(&*parent, last, Mode::from_raw_mode(0o700));
                match mkdir() {
                    Err(Errno::EXIST) if !self.make_room(name, parent.as_fd(), last, true)? => {
                        mkdir()
                    }
                    Err(Errno::EXIST) => Ok(()),
                    r => r,
                }
                .map_err(|e| UnpackError::io(name, "mkdir", e))?;
                (parent, last)
            }
        };
        if self.overlay && self.whited_out.contains(&key) {
            self.set_opaque(name, fd.as_fd(), last)?;
        }
        self.mark_written(path);
        self.set_meta(name, Handle::At(fd.as_fd(), last), Kind::Dir, meta)?;
        self.dirs.insert(
            key,
            DirLater {
                mode: meta.mode,
                times: meta.times,
            },
        );
        Ok(())
    }

    fn symlink(
        &mut self,
        name: &str,
        path: &EntryPath,
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (pc, last) = split(path);
        let parent = self.parent(name, pc)?;
        // The target is data: it is stored as given and never resolved.
        let symlink = || rfs::symlinkat(target, &*parent, last);
        match symlink() {
            Err(Errno::EXIST) => {
                self.make_room(name, parent.as_fd(), last, false)?;
                symlink()
            }
            r => r,
        }
        .map_err(|e| UnpackError::io(name, "symlink", e))?;
        self.mark_written(path);
        self.set_meta(name, Handle::At(parent.as_fd(), last), Kind::Symlink, meta)
    }

    fn hardlink(
        &mut self,
        name: &str,
        path: &EntryPath,
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let bad = |reason| UnpackError::BadHardlink {
            entry: name.to_string(),
            target: err_name(target),
            reason,
        };
        let tpath = match normalize(target) {
            Ok(p) => p,
            Err(PathProblem::Escape) => {
                return Err(UnpackError::PathEscape {
                    entry: name.to_string(),
                })
            }
            Err(PathProblem::Invalid(reason)) => return Err(bad(reason)),
        };
        let Some((tpc, tlast)) = tpath.split_last() else {
            return Err(bad("the target is the root directory"));
        };
        // The target may be a file a writer is making.
        self.settle(tpath.components())?;
        let tparent = match self.root.open_dir(tpc, false) {
            Ok(fd) => fd,
            Err(DirError::Missing) | Err(DirError::NotDir(_)) => {
                return Err(bad("the target does not exist"))
            }
            Err(e) => return Err(self.dir_error(name, tpc, e)),
        };
        let tst = fsops::lstat(tparent.as_fd(), tlast)
            .map_err(|e| UnpackError::io(name, "lstat hardlink target", e))?
            .ok_or_else(|| bad("the target does not exist"))?;
        let tkind = match fsops::file_type(&tst) {
            FileType::Directory => return Err(bad("the target is a directory")),
            FileType::Symlink => Kind::Symlink,
            FileType::RegularFile => Kind::File,
            _ => Kind::Node,
        };
        let (pc, last) = split(path);
        let parent = self.parent(name, pc)?;
        let existing =
            fsops::lstat(parent.as_fd(), last).map_err(|e| UnpackError::io(name, "lstat", e))?;
        // Already this very inode (a link to itself, or a repeated entry):
        // unlinking it first would lose the target.
        let same =
            matches!(existing, Some(st) if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino));
        if !same {
            self.make_room(name, parent.as_fd(), last, false)?;
            // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink
            // itself (as GNU tar and Docker do), never what it points to.
            rfs::linkat(&*tparent, tlast, &*parent, last, AtFlags::empty())
                .map_err(|e| UnpackError::io(name, "link", e))?;
        }
        self.mark_written(path);
        // Docker applies the link header's owner, mode, xattrs and times to
        // the shared inode (moby pkg/archive createTarFile).
        self.set_meta(name, Handle::At(parent.as_fd(), last), tkind, meta)
    }

    fn node<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        path: &EntryPath,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let (ft, dev) = match header.entry_type().as_byte() {
            b'6' => (FileType::Fifo, 0),
            ty => {
                let num = |r: io::Result<Option<u32>>| {
                    r.map_err(|e| UnpackError::BadEntry {
                        entry: name.to_string(),
                        reason: format!("bad device number: {e}"),
                    })
                    .map(|v| v.unwrap_or(0))
                };
                let dev = rfs::makedev(num(header.device_major())?, num(header.device_minor())?);
                let ft = if ty == b'3' {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (ft, dev)
            }
        };
        let (pc, last) = split(path);
        let parent = self.parent(name, pc)?;
        let mknod = || rfs::mknodat(&*parent, last, ft, Mode::from_raw_mode(0o600), dev);
        let made = match mknod() {
            Err(Errno::EXIST) => {
                self.make_room(name, parent.as_fd(), last, false)?;
                mknod()
            }
            r => r,
        };
        match made {
            Ok(()) => {}
            // Devices need CAP_MKNOD; unprivileged, Docker (in a user
            // namespace) skips them too. Recorded, not silent.
            Err(Errno::PERM) if !self.powers.devices && ft != FileType::Fifo => {
                self.counts.not_reproduced.devices_not_created += 1;
                return Ok(());
            }
            Err(e) => return Err(UnpackError::io(name, "mknod", e)),
        }
        self.mark_written(path);
        self.set_meta(name, Handle::At(parent.as_fd(), last), Kind::Node, meta)
    }
}

/// The entry's type flag. A pre-POSIX regular file whose name ends in '/'
/// is a directory (Go's archive/tar, and so Docker, read it that way).
fn type_byte<R: Read>(entry: &tar::Entry<'_, R>) -> u8 {
    match entry.header().entry_type().as_byte() {
        b'\0' if entry.path_bytes().ends_with(b"/") => b'5',
        ty => ty,
    }
}

fn split(path: &EntryPath) -> (&[Vec<u8>], &[u8]) {
    // Callers handle the root before getting here.
    path.split_last().unwrap_or((&[], b"."))
}

fn join_key(dir: &[u8], child: &[u8]) -> Vec<u8> {
    let mut key = dir.to_vec();
    if !key.is_empty() {
        key.push(b'/');
    }
    key.extend_from_slice(child);
    key
}

fn path_error(name: &str, p: PathProblem) -> UnpackError {
    match p {
        PathProblem::Escape => UnpackError::PathEscape {
            entry: name.to_string(),
        },
        PathProblem::Invalid(reason) => UnpackError::BadPath {
            entry: name.to_string(),
            reason,
        },
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<Vec<u8>, UnpackError> {
    match entry.link_name_bytes() {
        Some(t) if !t.is_empty() => Ok(t.into_owned()),
        _ => Err(UnpackError::BadEntry {
            entry: name.to_string(),
            reason: "link without a target".into(),
        }),
    }
}
