//! `hoist system df`: the store's disk use by kind, as `docker system df`
//! shows it, and what `hoist gc` would reclaim now ([`gc::inventory`]
//! judges every path as gc would, removing nothing).

use std::path::PathBuf;

use serde::Serialize;

use super::InspectError;
use crate::rootfs::evict::disk_usage;
use crate::rootfs::gc::{self, Found, GcReport};
use crate::store::Store;

/// One kind of thing in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Entries (blobs, cache entries, run directories).
    pub count: usize,
    /// Entries gc keeps: referenced by an image, or used by a live run.
    pub active: usize,
    /// Bytes on disk (allocated blocks), companions included.
    pub size: u64,
    /// Bytes on disk gc would free.
    pub reclaimable: u64,
}

#[derive(Debug, Serialize)]
pub struct DiskUsage {
    pub store: PathBuf,
    /// Names in `index.json`.
    pub images: usize,
    pub blobs: Row,
    /// Unpacked layers, every flavour.
    pub layers: Row,
    /// `/opt/agent` and `/opt/gateway` subtrees.
    pub subtrees: Row,
    /// Run directories (the writable layers of runs and kept rootfs).
    pub runs: Row,
    /// Scratch directories of `dockerfile:` builds (`ingest/build-*`).
    pub builds: Row,
    /// The five rows summed.
    pub total: Row,
    /// What `hoist gc` would print if it ran now (its `bytes` are the
    /// blobs' lengths, as gc counts them).
    pub gc: GcReport,
}

/// Measure the store. Reads only; holds the gc lock shared meanwhile.
pub fn usage(store: &Store) -> Result<DiskUsage, InspectError> {
    let inv = gc::inventory(store)?;
    let images = store.index()?.manifests.len();
    let (blobs, layers, subtrees, runs, builds) = (
        row(&inv.blobs),
        row(&inv.layers),
        row(&inv.subtrees),
        row(&inv.runs),
        row(&inv.builds),
    );
    let mut total = Row::default();
    for r in [&blobs, &layers, &subtrees, &runs, &builds] {
        total.count += r.count;
        total.active += r.active;
        total.size += r.size;
        total.reclaimable += r.reclaimable;
    }
    Ok(DiskUsage {
        store: store.root().to_path_buf(),
        images,
        blobs,
        layers,
        subtrees,
        runs,
        builds,
        total,
        gc: inv.gc,
    })
}

fn row(found: &[Found]) -> Row {
    let mut r = Row::default();
    for f in found {
        let size = disk_usage(&f.path);
        r.size += size;
        if f.reclaimable {
            r.reclaimable += size;
        }
        if f.counted {
            r.count += 1;
            r.active += usize::from(!f.reclaimable);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn rows_add_entries_and_companions() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        fs::create_dir(&a).unwrap();
        fs::write(a.join("f"), vec![1u8; 8192]).unwrap();
        let b = d.path().join("a.json");
        fs::write(&b, b"{}").unwrap();
        let found = [
            Found {
                path: a.clone(),
                counted: true,
                reclaimable: true,
            },
            Found {
                path: b.clone(),
                counted: false,
                reclaimable: false,
            },
        ];
        let r = row(&found);
        assert_eq!((r.count, r.active), (1, 0));
        assert_eq!(r.size, disk_usage(&a) + disk_usage(&b));
        assert_eq!(r.reclaimable, disk_usage(&a));
        assert!(disk_usage(&a) >= 8192);
    }
}
