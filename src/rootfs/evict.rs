//! Keeping a store under a size (`hoist eval --max-store-size`, docs/eval.md):
//! when the store's blobs, unpacked layers and subtrees outgrow the limit, the
//! images least recently used ([`Store::last_used`]) that no running or pending
//! task needs are forgotten (dropped from `index.json`), one at a time, and
//! what no remaining image references and no live run reads is swept, until the
//! store fits.
//!
//! Eviction holds the store's gc lock, as `hoist gc` does, so it never
//! sweeps what a pull is recording or a materialize is reading. It trusts
//! the caller's `keep` for the images of its own tasks; another process
//! sharing the store keeps its layers while its overlays are mounted, but
//! its images may be forgotten between its pull and its run. An
//! evaluation with a size limit should have its store to itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::cache::cache_dirs;
use super::gc::{reap_dead_runs, sweep_unreferenced, GcReport};
use super::RootfsError;
use crate::digest::Digest;
use crate::store::Store;

/// What one eviction did.
#[derive(Debug, Default)]
pub struct Evicted {
    /// The store's size (blobs, unpacked layers, subtrees) before and after.
    pub before: u64,
    pub after: u64,
    /// The names of the images forgotten.
    pub images: Vec<String>,
    pub swept: GcReport,
}

/// The disk usage of the store's cache entries, measured once each: an
/// unpacked layer or subtree never changes once visible, and walking a
/// large one at every task would cost more than the task.
#[derive(Default)]
pub struct Sizes {
    entries: HashMap<PathBuf, u64>,
}

impl Sizes {
    /// The store's blobs, unpacked layers and subtrees, in bytes on disk.
    /// Run directories (the running tasks' writable layers) are not
    /// counted: they are the tasks', and go with them.
    pub fn store(&mut self, store: &Store) -> u64 {
        let mut total = 0;
        for alg in list(&store.root().join("blobs")) {
            for blob in list(&alg) {
                total += fs::symlink_metadata(&blob).map_or(0, |m| m.blocks() * 512);
            }
        }
        let layers = cache_dirs(store, "layers")
            .into_iter()
            .map(|d| d.join("sha256"));
        for dir in layers.chain(cache_dirs(store, "subtrees")) {
            for entry in list(&dir) {
                total += *self
                    .entries
                    .entry(entry)
                    .or_insert_with_key(|p| disk_usage(p));
            }
        }
        total
    }

    fn forget(&mut self, path: &Path) {
        self.entries.remove(path);
    }
}

/// If the store is larger than `max` bytes, forget the images least
/// recently used whose manifest or index digest is not in `keep`, and
/// sweep, until it is not. `keep` holds digests as `sha256:HEX`.
pub fn evict(
    store: &Store,
    max: u64,
    keep: &BTreeSet<String>,
    sizes: &mut Sizes,
) -> Result<Evicted, RootfsError> {
    let io = |e: crate::store::StoreError| RootfsError::Io {
        path: store.root().to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let _lock = store.gc_lock_exclusive().map_err(io)?;
    let before = sizes.store(store);
    let mut done = Evicted {
        before,
        after: before,
        ..Default::default()
    };
    if before <= max {
        return Ok(done);
    }
    reap_dead_runs(store);
    // Each image by the digest of its manifest, with the digest it was
    // pulled by (an index's, for a multi-platform image).
    let kept = |d: &crate::manifest::Descriptor| {
        keep.contains(&d.digest.to_string())
            || resolved_from(d).is_some_and(|from| keep.contains(&from))
    };
    let mut candidates: Vec<(Option<SystemTime>, Digest)> = store
        .index()
        .map_err(io)?
        .manifests
        .iter()
        .filter(|d| !kept(d))
        .map(|d| (store.last_used(&d.digest), d.digest.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Never used since `used/` existed comes first (None sorts first).
    candidates.sort();
    for (_, digest) in candidates {
        if done.after <= max {
            break;
        }
        let gone = store
            .forget(|d| d.digest == digest && !kept(d))
            .map_err(io)?;
        done.images.extend(
            gone.iter()
                .map(|d| crate::store::ref_name_of(d).unwrap_or("?").to_string()),
        );
        sweep_unreferenced(store, &mut done.swept, &mut |p| sizes.forget(p))?;
        done.after = sizes.store(store);
    }
    Ok(done)
}

fn resolved_from(d: &crate::manifest::Descriptor) -> Option<String> {
    d.annotations
        .as_ref()?
        .get("io.github.hoist.resolved-from")
        .cloned()
}

/// Bytes allocated under `path`: each inode once, links not followed,
/// nothing mounted below it (a kept rootfs's overlay) entered.
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut todo = vec![(path.to_path_buf(), top)];
    while let Some((p, m)) = todo.pop() {
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if !m.is_dir() {
            continue;
        }
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            if let Ok(cm) = fs::symlink_metadata(e.path()) {
                if cm.dev() == m.dev() {
                    todo.push((e.path(), cm));
                }
            }
        }
    }
    total
}

fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_a_hard_linked_file_once() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        fs::write(&a, vec![7u8; 64 * 1024]).unwrap();
        let one = disk_usage(d.path());
        fs::hard_link(&a, d.path().join("b")).unwrap();
        assert_eq!(disk_usage(d.path()), one);
        std::os::unix::fs::symlink("/etc", d.path().join("c")).unwrap();
        assert!(
            disk_usage(d.path()) < one + 64 * 1024,
            "a link is not followed"
        );
    }
}
