//! The content-addressed store (docs/pull.md): a valid OCI image layout
//! (`oci-layout`, `index.json`, `blobs/ALG/HEX`) so skopeo and umoci read
//! it, plus hoist's own working directories beside it:
//!
//! - `ingest/`: partial downloads and their locks. A blob becomes visible
//!   under `blobs/` only by a rename after its size and digest matched, so a
//!   corrupt or partial blob is never seen as complete;
//! - `index.json` is rewritten under a lock by temp-file-then-rename.
//!
//! Several processes may share a store: one lock per blob means a blob is
//! downloaded once and the others wait, then find it present.
//!
//! `hoist store verify` ([`verify`]) re-hashes every blob: the store is a
//! directory on a disk others may write.

mod ingest;
mod layout;
pub mod verify;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use ingest::Ingest;
pub use layout::{read_layout_index, resolve_in_index};

use crate::atomic::{self, Durability};
use crate::digest::Digest;
use crate::manifest::{Descriptor, Index, ANNOTATION_REF_NAME, OCI_INDEX};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {digest}: expected {expected} bytes, got {found}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        found: u64,
    },
    #[error("blob digest mismatch: expected {expected}, the bytes hash to {found}")]
    DigestMismatch { expected: Digest, found: Digest },
    #[error("blob {digest} is not in the store {store}")]
    Missing { digest: Digest, store: PathBuf },
    #[error("{path} is not a valid OCI image index: {source}")]
    BadIndex {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} is not an OCI image layout (no oci-layout file with imageLayoutVersion 1.0.0)"
    )]
    NotALayout { path: PathBuf },
    #[error(transparent)]
    Json(#[from] crate::json::JsonError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a blob download can begin, or another process already finished it.
pub enum Begin {
    Present,
    Ingest(Box<Ingest>),
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// The mode of blobs and layout files: readable by all, as skopeo writes
/// layouts, since others may read them.
pub const BLOB_MODE: u32 = 0o644;

impl Store {
    /// `--store`, else `HOIST_STORE`, else `$XDG_CACHE_HOME/hoist`, else
    /// `~/.cache/hoist`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("HOIST_STORE") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("hoist");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/hoist")
    }

    /// Open a store, creating the layout if the directory is new.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store::init_layout(root)?;
        for dir in ["blobs/sha512", "ingest"] {
            let p = store.root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(store)
    }

    /// Make `root` an OCI image layout (`blobs/sha256`, `oci-layout`, an
    /// empty `index.json`), each part only if missing, and view it. Used
    /// for the store and for layouts hoist writes (`hoist bake --tag oci:`).
    pub fn init_layout(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store { root: root.into() };
        let blobs = store.root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.write_atomic(&layout, OCI_LAYOUT.as_bytes())?;
        }
        let index = store.root.join("index.json");
        if !index.exists() {
            let empty = Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.to_string()),
                manifests: vec![],
                annotations: None,
            };
            store.write_atomic(&index, &to_json(&empty)?)?;
        }
        Ok(store)
    }

    /// A read-only view of an existing layout (an `oci:` source): no
    /// directories are created, and reads are verified as for the store.
    pub fn view(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// A blob is present when its file exists with the expected size. Its
    /// digest was checked before the rename that made it visible.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Read a small blob (a manifest or config) whole, verifying its digest
    /// again: the store is on a disk that others can write.
    pub fn read_blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing {
                digest: digest.clone(),
                store: self.root.clone(),
            },
            _ => StoreError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if bytes.len() as u64 > max {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: max,
                found: bytes.len() as u64,
            });
        }
        verify_bytes(digest, &bytes)?;
        Ok(bytes)
    }

    /// Store a small blob already in memory, verified against `expected`.
    pub fn put_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        verify_bytes(expected, bytes)?;
        let path = self.blob_path(expected);
        if self.has_blob(expected, bytes.len() as u64) {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    /// Take the per-blob lock (waiting for another process holding it) and
    /// return an ingest positioned after any partial download, or `Present`
    /// when the blob is already complete.
    pub fn begin(&self, desc: &Descriptor) -> Result<Begin, StoreError> {
        if self.has_blob(&desc.digest, desc.size) {
            return Ok(Begin::Present);
        }
        Ok(match Ingest::open(self, desc)? {
            Some(ingest) => Begin::Ingest(Box::new(ingest)),
            None => Begin::Present,
        })
    }

    /// Taken shared by every pull, exclusive by `hoist gc`, so gc never
    /// removes a blob a pull is about to record.
    pub fn gc_lock_shared(&self) -> Result<File, StoreError> {
        self.gc_lock(rustix::fs::FlockOperation::LockShared)
    }

    pub fn gc_lock_exclusive(&self) -> Result<File, StoreError> {
        self.gc_lock(rustix::fs::FlockOperation::LockExclusive)
    }

    fn gc_lock(&self, op: rustix::fs::FlockOperation) -> Result<File, StoreError> {
        flocked(&self.root.join("gc.lock"), op)
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// The store's `index.json`.
    pub fn index(&self) -> Result<Index, StoreError> {
        read_layout_index(&self.root)
    }

    /// Record `desc` under `name` (`org.opencontainers.image.ref.name`) in
    /// `index.json`, replacing an older entry of that name.
    pub fn record(&self, name: &str, desc: &Descriptor) -> Result<(), StoreError> {
        let _lock = self.index_lock()?;
        let mut index = self.index()?;
        let mut entry = desc.clone();
        entry
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
        // Re-pulling an unchanged image rewrites nothing (and syncs nothing).
        if index.manifests.contains(&entry) {
            return Ok(());
        }
        index.manifests.retain(|d| ref_name(d) != Some(name));
        index.manifests.push(entry);
        index
            .manifests
            .sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        self.write_atomic(&self.root.join("index.json"), &to_json(&index)?)
    }

    /// Remove from `index.json` every entry `drop` picks; returns them.
    /// Their blobs stay until `hoist gc` (or eviction) sweeps what no
    /// entry left references.
    pub fn forget(
        &self,
        drop: impl Fn(&Descriptor) -> bool,
    ) -> Result<Vec<Descriptor>, StoreError> {
        let _lock = self.index_lock()?;
        let mut index = self.index()?;
        let (gone, kept): (Vec<_>, Vec<_>) = index.manifests.into_iter().partition(|d| drop(d));
        if !gone.is_empty() {
            index.manifests = kept;
            self.write_atomic(&self.root.join("index.json"), &to_json(&index)?)?;
        }
        Ok(gone)
    }

    /// `index.json.lock`, held while index.json is read and rewritten.
    fn index_lock(&self) -> Result<File, StoreError> {
        flocked(
            &self.root.join("index.json.lock"),
            rustix::fs::FlockOperation::LockExclusive,
        )
    }

    /// Note that the image whose manifest is `manifest` was just used (a
    /// pull, which every run and every task of an evaluation does):
    /// `used/HEX`'s modification time. `--max-store-size` evicts the least
    /// recently used images first.
    pub fn mark_used(&self, manifest: &Digest) -> Result<(), StoreError> {
        let dir = self.root.join("used");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(manifest.hex());
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.set_modified(std::time::SystemTime::now())
            .map_err(io_err(&path))
    }

    /// When the image of `manifest` was last used ([`Store::mark_used`]);
    /// None if never since the store had `used/`.
    pub fn last_used(&self, manifest: &Digest) -> Option<std::time::SystemTime> {
        fs::metadata(self.root.join("used").join(manifest.hex()))
            .and_then(|m| m.modified())
            .ok()
    }

    /// The descriptor recorded under `name`, if any.
    pub fn lookup(&self, name: &str) -> Result<Option<Descriptor>, StoreError> {
        Ok(resolve_in_index(&self.index()?, name))
    }

    /// Write `bytes` to `path` (0644: readable by all, as skopeo writes
    /// layouts) by [`crate::atomic`], synced: readers see the old or the
    /// new content, never a mix.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        atomic::write(path, bytes, BLOB_MODE, Durability::Synced).map_err(io_err(path))
    }
}

/// The lock file `path` (created if missing, never truncated), locked
/// with `op` (waiting for it): held while the returned file is open.
pub(crate) fn flocked(path: &Path, op: rustix::fs::FlockOperation) -> Result<File, StoreError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    rustix::fs::flock(&f, op).map_err(|e| io_err(path)(e.into()))?;
    Ok(f)
}

/// The `org.opencontainers.image.ref.name` of an index entry.
pub fn ref_name_of(d: &Descriptor) -> Option<&str> {
    ref_name(d)
}

pub(crate) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

fn to_json(index: &Index) -> Result<Vec<u8>, StoreError> {
    Ok(crate::json::to_vec(index, "index.json")?)
}

/// Check that `bytes` hash to `expected`.
pub fn verify_bytes(expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
    let mut h = expected.hasher();
    h.update(bytes);
    let found = h.finish();
    if &found == expected {
        Ok(())
    } else {
        Err(StoreError::DigestMismatch {
            expected: expected.clone(),
            found,
        })
    }
}

#[cfg(test)]
mod tests;
