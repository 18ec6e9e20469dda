//! One blob being downloaded: a partial file under `ingest/`, hashed as it
//! grows, held under an exclusive lock so one process writes it at a time.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::{io_err, Store, StoreError};
use crate::atomic::{self, Durability};
use crate::digest::{Digest, Hasher};
use crate::manifest::Descriptor;

pub struct Ingest {
    // Held for the lifetime of the ingest; the lock is released on drop.
    _lock: File,
    file: File,
    partial: PathBuf,
    target: PathBuf,
    expected: Digest,
    size: u64,
    offset: u64,
    hasher: Hasher,
}

impl Ingest {
    /// Take the blob's lock, waiting for another writer; `None` when the
    /// blob is complete by then (another process finished it).
    pub(super) fn open(store: &Store, desc: &Descriptor) -> Result<Option<Ingest>, StoreError> {
        let d = &desc.digest;
        let stem = format!("{}-{}", d.algorithm().as_str(), d.hex());
        let dir = store.ingest_dir();
        let lock_path = dir.join(format!("{stem}.lock"));
        let lock = super::flocked(&lock_path, rustix::fs::FlockOperation::LockExclusive)?;
        if store.has_blob(d, desc.size) {
            return Ok(None);
        }
        let partial = dir.join(format!("{stem}.partial"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let mut ingest = Ingest {
            _lock: lock,
            file,
            partial,
            target: store.blob_path(d),
            expected: d.clone(),
            size: desc.size,
            offset: 0,
            hasher: d.hasher(),
        };
        ingest.rehash_partial()?;
        Ok(Some(ingest))
    }

    /// Re-read what an earlier, interrupted attempt left, so the digest
    /// still covers every byte when the download resumes.
    fn rehash_partial(&mut self) -> Result<(), StoreError> {
        let len = self.file.metadata().map_err(io_err(&self.partial))?.len();
        if len > self.size {
            return self.reset();
        }
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.partial))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = self.file.read(&mut buf).map_err(io_err(&self.partial))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            done += n as u64;
        }
        self.offset = done;
        self.file
            .seek(SeekFrom::Start(done))
            .map_err(io_err(&self.partial))?;
        self.file.set_len(done).map_err(io_err(&self.partial))?;
        Ok(())
    }

    /// Bytes already on disk: where a resumed download starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// Start again from byte 0 (the server ignored our Range request).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(io_err(&self.partial))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.partial))?;
        self.offset = 0;
        self.hasher = self.expected.hasher();
        Ok(())
    }

    /// Append a chunk. More bytes than the descriptor's size is an error
    /// at once: the download stops at size + 1, it does not read on.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let after = self.offset + chunk.len() as u64;
        if after > self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                found: after,
            });
        }
        self.file.write_all(chunk).map_err(io_err(&self.partial))?;
        self.hasher.update(chunk);
        self.offset = after;
        Ok(())
    }

    /// Verify size and digest, then rename into `blobs/`. On a mismatch
    /// the partial file is deleted, so the next attempt starts clean.
    pub fn commit(self) -> Result<(), StoreError> {
        if self.offset != self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                found: self.offset,
            });
        }
        let found = self.hasher.clone().finish();
        if found != self.expected {
            self.discard();
            return Err(StoreError::DigestMismatch {
                expected: self.expected,
                found,
            });
        }
        atomic::commit_file(&self.file, &self.partial, &self.target, Durability::Synced)
            .map_err(io_err(&self.target))
    }

    /// Drop what was downloaded: it can never become the expected blob.
    pub fn discard(&self) {
        if let Err(e) = fs::remove_file(&self.partial) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.partial.display(), error = %e, "could not remove partial blob");
            }
        }
    }
}
