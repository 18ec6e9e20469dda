//! The writer threads of one layer's unpack (issue 11): the reader thread
//! hands them small regular files, whole, and they create and fill them
//! while it reads on.
//!
//! Where a disk is bound by the latency of creating files, one writer
//! leaves it idle most of the time: four GNU tar extractions at once ran
//! at 3.2 times the rate of one. Only file creation is handed out;
//! everything whose result a later entry depends on stays on the reader,
//! in stream order, after waiting for the files in its way (see
//! `Applier::settle`): directories (made before their children),
//! whiteouts and opaque markers, symlinks, hardlinks (made once their
//! target is written), device nodes, large files, and directory modes
//! and times (last, once every writer is done).
//!
//! A writer makes its file with one `*at` call on a directory handle the
//! reader opened beneath the layer's root (`crate::beneath`), and a plain
//! name, with `O_EXCL | O_NOFOLLOW`: it can no more escape than the
//! reader can.
//!
//! Memory is bounded by [`BYTES_IN_FLIGHT`] and [`JOBS_IN_FLIGHT`],
//! whatever the layer: files larger than [`SMALL_FILE`] are streamed by
//! the reader itself.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::metadata::MetaSetter;
use super::{Handle, Kind};
use crate::beneath;
use crate::unpack::fsops;
use crate::unpack::meta::Meta;
use crate::unpack::{Fidelity, UnpackError};

/// Writer threads per layer: as many as the copy rootfs uses
/// (`rootfs::copy::WRITERS`, where 8 beat 1, 2, 4 and 16 on this 2-core
/// machine). Not measured apart for the unpack, whose reader also needs a
/// core for decompressing and hashing.
pub(super) const WRITERS: usize = 8;

/// Files up to this size go to a writer whole; larger ones are streamed
/// to disk by the reader in its own buffer.
pub(super) const SMALL_FILE: u64 = 1 << 20;

/// Most file bytes read and not yet written, across all writers.
const BYTES_IN_FLIGHT: usize = 8 << 20;

/// Most files handed out and not yet reported back.
const JOBS_IN_FLIGHT: usize = 1024;

/// Files of one directory handed to the same writer in a row. Creating a
/// name holds its directory's inode lock, so writers in one directory
/// mostly wait for each other; a large directory is still spread.
const RUN: usize = 64;

/// One regular file for a writer to make.
pub(super) struct Job {
    /// The entry's normalised path, `/`-joined.
    pub key: Vec<u8>,
    /// The entry's name as written in the tar, for errors.
    pub name: String,
    pub parent: Arc<OwnedFd>,
    pub last: Vec<u8>,
    pub data: Vec<u8>,
    pub meta: Meta,
}

/// What became of a job.
pub(super) enum Outcome {
    Written(Fidelity),
    /// A directory is where the file goes. Removing it is the reader's
    /// work (it holds handles into the tree), so the job comes back.
    Occupied(Job),
    Failed(UnpackError),
}

pub(super) struct Done {
    key: Vec<u8>,
    bytes: usize,
    pub outcome: Outcome,
}

/// The reader's side of the pool: the queues, and what is in flight.
pub(super) struct Pool {
    queues: Vec<Sender<Job>>,
    done: Receiver<Done>,
    /// Paths of the files handed out and not reported back; never two
    /// jobs for one path (the reader settles a path before handing it out).
    busy: HashSet<Vec<u8>>,
    /// For each directory (the root is the empty key), how many of those
    /// files are beneath it.
    under: HashMap<Vec<u8>, usize>,
    bytes: usize,
    /// Which queue the current run of one directory's files goes to.
    run: (Vec<u8>, usize, usize),
}

impl Pool {
    /// Starts [`WRITERS`] threads in `scope`; `None` if none could be
    /// started (the reader then writes every file itself).
    pub(super) fn start<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        setter: MetaSetter,
    ) -> Option<Pool> {
        let (done_tx, done) = mpsc::channel();
        let mut queues = Vec::new();
        for i in 0..WRITERS {
            let (tx, rx) = mpsc::channel::<Job>();
            let done_tx = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("unpack-writer-{i}"))
                .spawn_scoped(scope, move || writer(rx, done_tx, setter));
            // Fewer writers than asked is only slower: go on with those.
            if spawned.is_err() {
                break;
            }
            queues.push(tx);
        }
        if queues.is_empty() {
            return None;
        }
        Some(Pool {
            queues,
            done,
            busy: HashSet::new(),
            under: HashMap::new(),
            bytes: 0,
            run: (Vec::new(), 0, 0),
        })
    }

    /// Whether a job is in flight at `comps`, at one of its ancestors, or
    /// beneath it.
    pub(super) fn in_the_way(&self, comps: &[Vec<u8>]) -> bool {
        let mut key = Vec::new();
        for (i, c) in comps.iter().enumerate() {
            if i > 0 {
                key.push(b'/');
            }
            key.extend_from_slice(c);
            if self.busy.contains(&key) {
                return true;
            }
        }
        self.under.get(&key).is_some_and(|&n| n > 0)
    }

    pub(super) fn idle(&self) -> bool {
        self.busy.is_empty()
    }

    /// Whether handing out `bytes` more must wait for a job to finish.
    pub(super) fn full(&self, bytes: usize) -> bool {
        !self.busy.is_empty()
            && (self.bytes + bytes > BYTES_IN_FLIGHT || self.busy.len() >= JOBS_IN_FLIGHT)
    }

    /// Hands `job` to a writer; the caller made room first ([`Self::full`]).
    pub(super) fn send(&mut self, job: Job) -> Result<(), UnpackError> {
        let dir = parent_key(&job.key).to_vec();
        let queue = self.queue_for(dir);
        self.bytes += job.data.len();
        for prefix in prefixes(&job.key) {
            match self.under.get_mut(prefix) {
                Some(n) => *n += 1,
                None => {
                    self.under.insert(prefix.to_vec(), 1);
                }
            }
        }
        self.busy.insert(job.key.clone());
        let name = job.name.clone();
        self.queues[queue]
            .send(job)
            .map_err(|_| UnpackError::io(&name, "hand to a writer thread", stopped()))
    }

    /// Waits for the next job to finish, and forgets it.
    pub(super) fn recv(&mut self) -> Result<Outcome, UnpackError> {
        let done = self
            .done
            .recv()
            .map_err(|_| UnpackError::io("<layer>", "wait for a writer thread", stopped()))?;
        self.bytes -= done.bytes;
        self.busy.remove(&done.key);
        for prefix in prefixes(&done.key) {
            if let Some(n) = self.under.get_mut(prefix) {
                *n -= 1;
                if *n == 0 {
                    self.under.remove(prefix);
                }
            }
        }
        Ok(done.outcome)
    }

    fn queue_for(&mut self, dir: Vec<u8>) -> usize {
        let (run_dir, queue, len) = &mut self.run;
        if *run_dir != dir || *len >= RUN {
            *queue = (*queue + 1) % self.queues.len();
            *run_dir = dir;
            *len = 0;
        }
        *len += 1;
        *queue
    }
}

/// A writer thread whose queue or reply channel is gone panicked, or
/// the reader stopped; either way the layer cannot be finished.
fn stopped() -> std::io::Error {
    std::io::Error::other("a writer thread of the unpack stopped")
}

fn parent_key(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|&b| b == b'/') {
        Some(i) => &key[..i],
        None => b"",
    }
}

/// The keys of every directory above `key`: the root (empty), then each
/// proper prefix ending before a `/`.
fn prefixes(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::once(&key[..0]).chain(
        key.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(move |(i, _)| &key[..i]),
    )
}

fn writer(jobs: Receiver<Job>, done: Sender<Done>, setter: MetaSetter) {
    for job in jobs {
        let (key, bytes) = (job.key.clone(), job.data.len());
        let name = job.name.clone();
        // A panic must still be reported: the reader waits for every job.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| write(job, &setter)))
            .unwrap_or_else(|_| {
                let e = std::io::Error::other("the writer thread panicked");
                Outcome::Failed(UnpackError::io(&name, "write file", e))
            });
        // The reader is gone only when it stopped early: nobody to tell.
        if done
            .send(Done {
                key,
                bytes,
                outcome,
            })
            .is_err()
        {
            return;
        }
    }
}

fn write(job: Job, setter: &MetaSetter) -> Outcome {
    match create(&job) {
        Ok(Some(file)) => {
            let mut fidelity = Fidelity::default();
            match fill(&file, &job, setter, &mut fidelity) {
                Ok(()) => Outcome::Written(fidelity),
                Err(e) => Outcome::Failed(e),
            }
        }
        Ok(None) => Outcome::Occupied(job),
        Err(e) => Outcome::Failed(e),
    }
}

/// Creates the job's file; `None` when a directory is in the way. Any
/// other entry there (an earlier layer's, or a whiteout) is replaced, as
/// the reader would: nothing else at or beneath this path is in flight.
fn create(job: &Job) -> Result<Option<File>, UnpackError> {
    let parent = job.parent.as_fd();
    let create = || {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        beneath::open_file(parent, &job.last, flags, Mode::from_raw_mode(0o600))
    };
    let fd = match create() {
        Ok(fd) => fd,
        Err(Errno::EXIST) => {
            let st = fsops::lstat(parent, &job.last)
                .map_err(|e| UnpackError::io(&job.name, "lstat", e))?;
            if st.is_some_and(|st| fsops::file_type(&st) == FileType::Directory) {
                return Ok(None);
            }
            match rfs::unlinkat(parent, &job.last[..], AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(UnpackError::io(&job.name, "remove existing entry", e)),
            }
            create().map_err(|e| UnpackError::io(&job.name, "create file", e))?
        }
        Err(e) => return Err(UnpackError::io(&job.name, "create file", e)),
    };
    Ok(Some(File::from(fd)))
}

/// Writes the job's data and metadata into its new file.
pub(super) fn fill(
    file: &File,
    job: &Job,
    setter: &MetaSetter,
    fidelity: &mut Fidelity,
) -> Result<(), UnpackError> {
    let mut f = file;
    f.write_all(&job.data)
        .map_err(|e| UnpackError::io(&job.name, "write file", e))?;
    setter.set(
        &job.name,
        Handle::File(file),
        Kind::File,
        &job.meta,
        fidelity,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_every_directory_above() {
        let got: Vec<&[u8]> = prefixes(b"a/b/c").collect();
        assert_eq!(got, vec![&b""[..], b"a", b"a/b"]);
        let got: Vec<&[u8]> = prefixes(b"top").collect();
        assert_eq!(got, vec![&b""[..]]);
        assert_eq!(parent_key(b"a/b/c"), b"a/b");
        assert_eq!(parent_key(b"top"), b"");
    }
}
