//! Run directories (the upper layers of an overlay rootfs) and `hoist gc`.
//!
//! Each overlay rootfs has a run directory `STORE/runs/ID/` holding its
//! upper and work directories and `owner.json` (pid, target, whether the
//! user asked to keep it, the cache paths it uses). A run whose process is
//! gone is taken down by the next materialize or by `hoist gc`: its mounts
//! are detached and its directory removed. A kept rootfs (`hoist
//! materialize`) stays while it is mounted.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::{cache_dirs, remove_tree};
use super::{mount, RootfsError};
use crate::digest::Digest;
use crate::manifest::{parse_document, Document, MAX_DOCUMENT_SIZE};
use crate::store::Store;

#[derive(Debug, Serialize, Deserialize)]
struct Owner {
    pid: u32,
    target: PathBuf,
    keep: bool,
    /// The layer and subtree cache entries its overlays read: while the
    /// run lives, eviction keeps these. Absent (an older hoist's run):
    /// every entry counts as used.
    #[serde(default)]
    uses: Option<Vec<PathBuf>>,
}

/// How long a run directory may be without its owner.json before it
/// counts as a crash's rather than one being created.
const CREATING: std::time::Duration = std::time::Duration::from_secs(60);

/// A run directory without owner.json that is young enough to be one
/// another hoist is creating.
fn being_created(dir: &Path) -> bool {
    fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < CREATING))
}

pub(crate) struct RunDir {
    path: PathBuf,
}

fn runs_dir(store: &Store) -> PathBuf {
    store.root().join("runs")
}

impl RunDir {
    pub(crate) fn create(
        store: &Store,
        target: &Path,
        keep: bool,
        uses: &[PathBuf],
    ) -> Result<RunDir, RootfsError> {
        let base = runs_dir(store);
        fs::create_dir_all(&base).map_err(|source| RootfsError::Io {
            path: base.clone(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&base)
            .map_err(|source| RootfsError::Io {
                path: base.clone(),
                source,
            })?
            .keep();
        let owner = Owner {
            pid: std::process::id(),
            target: fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf()),
            keep,
            // Absolute and resolved, as sweep compares them: another
            // hoist may name the same store otherwise.
            uses: Some(
                uses.iter()
                    .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                    .collect(),
            ),
        };
        let path = dir.join("owner.json");
        crate::json::to_vec(&owner, "a run's owner.json")
            .map_err(std::io::Error::from)
            .and_then(|json| fs::write(&path, json))
            .map_err(|source| RootfsError::Io { path, source })?;
        Ok(RunDir { path: dir })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Fresh upper and work directories for the overlay named `name`.
    pub(crate) fn upper_work(&self, name: &str) -> Result<(PathBuf, PathBuf), RootfsError> {
        let d = self.path.join(name.replace('/', "_"));
        let (upper, work) = (d.join("upper"), d.join("work"));
        for p in [&upper, &work] {
            fs::create_dir_all(p).map_err(|source| RootfsError::Io {
                path: p.clone(),
                source,
            })?;
        }
        Ok((upper, work))
    }

    pub(crate) fn remove(&self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove run directory");
        }
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// A run is over when its process died, or, for a kept rootfs, when the
/// rootfs is no longer mounted.
fn owner_gone(owner: &Owner, mounted: bool) -> bool {
    if owner.keep {
        !mounted
    } else {
        !alive(owner.pid)
    }
}

/// The run directories whose run may still be live: every one but those
/// whose owner is provably gone. One without a readable `owner.json` is
/// being created (or a crash's, which only `hoist gc` and materialize
/// reap), so it counts as live. Only reads: `hoist store verify` uses it
/// to decide whether a cache entry may be mounted now.
pub(crate) fn live_runs(store: &Store) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(runs_dir(store)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|dir| {
            let owner: Option<Owner> = fs::read(dir.join("owner.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            owner.is_none_or(|o| !owner_gone(&o, mount::is_mount_point(&o.target)))
        })
        .collect()
}

/// Take down runs whose owner died (and kept rootfs no longer mounted).
/// Returns how many were removed. Failures are logged, not fatal: a
/// leftover costs disk, not correctness.
pub fn reap_dead_runs(store: &Store) -> usize {
    let Ok(entries) = fs::read_dir(runs_dir(store)) else {
        return 0;
    };
    let mut reaped = 0;
    for e in entries.flatten() {
        let dir = e.path();
        let owner: Option<Owner> = fs::read(dir.join("owner.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(owner) = owner else {
            // A run directory without an owner is one being created (for
            // an instant: another hoist may be between the directory and
            // its owner.json), or, once older, a crash during creation.
            if being_created(&dir) {
                continue;
            }
            if let Err(err) = remove_tree(&dir) {
                tracing::warn!(path = %dir.display(), error = %err, "could not remove run directory");
            }
            continue;
        };
        let mounted = mount::is_mount_point(&owner.target);
        if !owner_gone(&owner, mounted) {
            continue;
        }
        if mounted {
            if let Err(err) = mount::unmount_all(&owner.target) {
                tracing::warn!(path = %owner.target.display(), error = %err, "could not unmount leftover rootfs");
                continue;
            }
        }
        match remove_tree(&dir) {
            Ok(()) => reaped += 1,
            Err(err) => {
                tracing::warn!(path = %dir.display(), error = %err, "could not remove run directory")
            }
        }
    }
    reaped
}

/// What `hoist gc` removed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub runs: usize,
    /// Scratch directories of `dockerfile:` builds that were cut off.
    pub builds: usize,
    pub layers: usize,
    pub subtrees: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Remove dead runs, then every blob, unpacked layer and subtree that no
/// image recorded in the store's `index.json` references. Holds the store's
/// gc lock, which pulls take shared, so nothing being pulled is removed.
pub fn gc(store: &Store) -> Result<GcReport, RootfsError> {
    let _lock = store
        .gc_lock_exclusive()
        .map_err(|source| RootfsError::Io {
            path: store.root().to_path_buf(),
            source: std::io::Error::other(source.to_string()),
        })?;
    let mut report = GcReport {
        runs: reap_dead_runs(store),
        builds: sweep_builds(store),
        ..Default::default()
    };
    sweep_unreferenced(store, &mut report, &mut |_| {})?;
    Ok(report)
}

/// With the gc lock held exclusively: remove the scratch directories
/// (`ingest/build-*`) of `dockerfile:` builds. A build holds the lock
/// shared while its directory exists, so any found now belongs to a build
/// that was killed. Best effort: a directory that will not go (a rootless
/// builder's subordinate-id files) is left for root, and said so.
fn sweep_builds(store: &Store) -> usize {
    let mut removed = 0;
    for path in build_scratch(store) {
        if build_alive(&path) {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a cut-off build's scratch directory")
            }
        }
    }
    removed
}

/// The scratch directories of `dockerfile:` builds, live or not.
fn build_scratch(store: &Store) -> Vec<PathBuf> {
    list(&store.root().join("ingest"))
        .into_iter()
        .filter(|(name, _)| name.starts_with(crate::build::SCRATCH_PREFIX))
        .map(|(_, path)| path)
        .collect()
}

/// An exclusive lock on a build's scratch directory `dir`, held by the
/// build while it lives (besides the gc lock, shared, which tells gc only
/// that some build runs, not which).
pub fn hold_build_scratch(dir: &Path) -> std::io::Result<fs::File> {
    let f = fs::File::open(dir)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    Ok(f)
}

/// Whether a build still holds its scratch directory `dir`: taking the
/// lock [`hold_build_scratch`] takes would block. One that cannot be
/// opened is not: gc says so when it cannot remove it either.
fn build_alive(dir: &Path) -> bool {
    hold_build_scratch(dir)
        .is_err_and(|e| rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::WOULDBLOCK))
}

/// With the gc lock held: remove every blob, unpacked layer and subtree
/// that no image in index.json references and no live run reads, adding
/// to `report`; `removed` hears each path before it goes.
pub(crate) fn sweep_unreferenced(
    store: &Store,
    report: &mut GcReport,
    removed: &mut dyn FnMut(&Path),
) -> Result<(), RootfsError> {
    let live = live_set(store)?;
    let blobs = store.root().join("blobs/sha256");
    for (name, path) in list(&blobs) {
        if !live.blobs.contains(&name) {
            removed(&path);
            report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(|source| RootfsError::Io { path, source })?;
            // Its use record goes with it (a manifest's).
            let _ = fs::remove_file(store.root().join("used").join(&name));
            report.blobs += 1;
        }
    }
    for dir in cache_dirs(store, "layers") {
        report.layers += sweep(&dir.join("sha256"), &live.blobs, &live.in_use, removed)?;
    }
    for dir in cache_dirs(store, "subtrees") {
        report.subtrees += sweep(&dir, &live.subtrees, &live.in_use, removed)?;
    }
    Ok(())
}

/// Remove the cache entries of `dir` (and their `.lock`/`.tmp` companions)
/// whose key is not `live` and which no live run may use; count entries.
fn sweep(
    dir: &Path,
    live: &BTreeSet<String>,
    in_use: &BTreeSet<PathBuf>,
    removed: &mut dyn FnMut(&Path),
) -> Result<usize, RootfsError> {
    let mut count = 0;
    for (name, path) in list(dir) {
        let key = name.split('.').next().unwrap_or_default();
        let used = || in_use.contains(&fs::canonicalize(&path).unwrap_or_else(|_| path.clone()));
        if !live.contains(key) && !used() {
            removed(&path);
            remove_tree(&path)?;
            if !name.contains('.') {
                count += 1;
            }
        }
    }
    Ok(count)
}

struct Live {
    /// Hex digests of every blob an image in index.json needs.
    blobs: BTreeSet<String>,
    subtrees: BTreeSet<String>,
    in_use: BTreeSet<PathBuf>,
}

fn live_set(store: &Store) -> Result<Live, RootfsError> {
    let mut live = Live {
        blobs: BTreeSet::new(),
        subtrees: BTreeSet::new(),
        in_use: BTreeSet::new(),
    };
    let index = store.index().map_err(|e| RootfsError::Io {
        path: store.root().join("index.json"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut todo: Vec<Digest> = Vec::new();
    for d in &index.manifests {
        todo.push(d.digest.clone());
        if let Some(from) = d
            .annotations
            .as_ref()
            .and_then(|a| a.get("io.github.hoist.resolved-from"))
            .and_then(|s| s.parse::<Digest>().ok())
        {
            todo.push(from);
        }
    }
    while let Some(d) = todo.pop() {
        if !live.blobs.insert(d.hex().to_string()) {
            continue;
        }
        let Ok(bytes) = store.read_blob(&d, MAX_DOCUMENT_SIZE) else {
            continue; // not a document we can read: a layer or config
        };
        match parse_document(&bytes, None) {
            Ok(Document::Manifest(m)) => {
                live.blobs.insert(m.config.digest.hex().to_string());
                for l in &m.layers {
                    live.blobs.insert(l.digest.hex().to_string());
                }
                for path in [super::AGENT_PATH, super::GATEWAY_PATH] {
                    let key = Digest::sha256_of(format!("{d}\n{path}").as_bytes());
                    live.subtrees.insert(key.hex().to_string());
                }
            }
            // Only the index's platforms that were pulled are in the store;
            // the others simply are not found above.
            Ok(Document::Index(i)) => todo.extend(i.manifests.iter().map(|m| m.digest.clone())),
            Err(_) => {}
        }
    }
    // A live run's overlays read the cache entries its owner.json lists,
    // whatever index.json now says. A run that does not say (being made,
    // or an older hoist's) may read any of them: all are kept.
    let mut says_all = false;
    for (_, dir) in list(&runs_dir(store)) {
        let owner: Option<Owner> = fs::read(dir.join("owner.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match owner {
            Some(o) if owner_gone(&o, mount::is_mount_point(&o.target)) => {}
            Some(Owner {
                uses: Some(uses), ..
            }) => live.in_use.extend(uses),
            _ => says_all = true,
        }
    }
    if says_all {
        let dirs = cache_dirs(store, "layers")
            .into_iter()
            .map(|d| d.join("sha256"));
        for dir in dirs.chain(cache_dirs(store, "subtrees")) {
            live.in_use.extend(
                list(&dir)
                    .into_iter()
                    .map(|(_, p)| fs::canonicalize(&p).unwrap_or(p)),
            );
        }
    }
    Ok(live)
}

fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// `hoist rmi`: drop from `index.json` every entry `drop` picks, then sweep
/// what no remaining image references and no live run reads, under the gc
/// lock as [`gc`] holds it. Dead runs are taken down first, as gc and
/// eviction do, so nothing is swept from under an overlay a crashed run
/// left mounted. Returns the entries dropped and what was removed; with
/// nothing dropped, nothing is swept.
pub fn remove_images(
    store: &Store,
    drop: impl Fn(&crate::manifest::Descriptor) -> bool,
) -> Result<(Vec<crate::manifest::Descriptor>, GcReport), RootfsError> {
    let store_err = |e: crate::store::StoreError| RootfsError::Io {
        path: store.root().to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let _lock = store.gc_lock_exclusive().map_err(store_err)?;
    let gone = store.forget(drop).map_err(store_err)?;
    let mut report = GcReport::default();
    if !gone.is_empty() {
        report.runs = reap_dead_runs(store);
        sweep_unreferenced(store, &mut report, &mut |_| {})?;
    }
    Ok((gone, report))
}

/// Everything [`gc`] looks at, each path marked with whether gc would
/// remove it if it ran now: for `hoist system df`, which must say what gc
/// reclaims without removing it. Read under the gc lock taken shared, so
/// no gc or eviction runs meanwhile.
#[derive(Debug, Default)]
pub struct Inventory {
    /// `blobs/ALG/HEX` (gc sweeps only sha256).
    pub blobs: Vec<Found>,
    /// Unpacked layers of every flavour, with their `.json`, `.treedigest`
    /// and `.lock` companions.
    pub layers: Vec<Found>,
    /// `/opt/agent` and `/opt/gateway` subtrees, with their companions.
    pub subtrees: Vec<Found>,
    /// `runs/ID`: the writable layers of runs and kept rootfs.
    pub runs: Vec<Found>,
    /// `ingest/build-*`: the scratch directories of `dockerfile:` builds,
    /// reclaimable once their build is gone.
    pub builds: Vec<Found>,
    /// The report [`gc`] would print now.
    pub gc: GcReport,
}

#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    /// An entry gc counts (a blob, cache entry or run), not a companion.
    pub counted: bool,
    /// gc would remove it.
    pub reclaimable: bool,
}

/// See [`Inventory`]. Mirrors [`gc`] step by step: runs are judged as
/// [`reap_dead_runs`] judges them (one without `owner.json` is removed
/// but not counted), then the cache entries as [`sweep_unreferenced`]
/// judges them with only the surviving runs' `uses` protecting entries.
pub fn inventory(store: &Store) -> Result<Inventory, RootfsError> {
    let _lock = store.gc_lock_shared().map_err(|source| RootfsError::Io {
        path: store.root().to_path_buf(),
        source: std::io::Error::other(source.to_string()),
    })?;
    let mut inv = Inventory::default();
    let mut staying = Vec::new();
    for (_, dir) in list(&runs_dir(store)) {
        let owner: Option<Owner> = fs::read(dir.join("owner.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let gone = match &owner {
            Some(o) => owner_gone(o, mount::is_mount_point(&o.target)),
            None => !being_created(&dir),
        };
        match owner {
            Some(_) if gone => inv.gc.runs += 1,
            Some(o) => staying.push(o),
            None => {}
        }
        inv.runs.push(Found {
            path: dir,
            counted: true,
            reclaimable: gone,
        });
    }
    for path in build_scratch(store) {
        let reclaimable = !build_alive(&path);
        inv.gc.builds += usize::from(reclaimable);
        inv.builds.push(Found {
            path,
            counted: true,
            reclaimable,
        });
    }
    let live = live_set(store)?;
    let in_use = in_use_by(store, &staying);
    for (alg, dir) in list(&store.root().join("blobs")) {
        for (name, path) in list(&dir) {
            let reclaimable = alg == "sha256" && !live.blobs.contains(&name);
            if reclaimable {
                inv.gc.blobs += 1;
                inv.gc.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
            inv.blobs.push(Found {
                path,
                counted: true,
                reclaimable,
            });
        }
    }
    for dir in cache_dirs(store, "layers") {
        let found = judge(&dir.join("sha256"), &live.blobs, &in_use);
        inv.gc.layers += found.iter().filter(|f| f.counted && f.reclaimable).count();
        inv.layers.extend(found);
    }
    for dir in cache_dirs(store, "subtrees") {
        let found = judge(&dir, &live.subtrees, &in_use);
        inv.gc.subtrees += found.iter().filter(|f| f.counted && f.reclaimable).count();
        inv.subtrees.extend(found);
    }
    Ok(inv)
}

/// The entries of a cache directory as [`sweep`] would judge them.
fn judge(dir: &Path, live: &BTreeSet<String>, in_use: &BTreeSet<PathBuf>) -> Vec<Found> {
    list(dir)
        .into_iter()
        .map(|(name, path)| {
            let key = name.split('.').next().unwrap_or_default();
            let used = in_use.contains(&fs::canonicalize(&path).unwrap_or_else(|_| path.clone()));
            Found {
                reclaimable: !live.contains(key) && !used,
                counted: !name.contains('.'),
                path,
            }
        })
        .collect()
}

/// The cache entries the runs in `owners` read, as [`live_set`] gathers
/// them, for runs that outlive a gc: a run that does not say keeps all.
fn in_use_by(store: &Store, owners: &[Owner]) -> BTreeSet<PathBuf> {
    let mut in_use = BTreeSet::new();
    for o in owners {
        match &o.uses {
            Some(uses) => in_use.extend(uses.iter().cloned()),
            None => {
                let dirs = cache_dirs(store, "layers")
                    .into_iter()
                    .map(|d| d.join("sha256"));
                for dir in dirs.chain(cache_dirs(store, "subtrees")) {
                    in_use.extend(
                        list(&dir)
                            .into_iter()
                            .map(|(_, p)| fs::canonicalize(&p).unwrap_or(p)),
                    );
                }
                break;
            }
        }
    }
    in_use
}

/// Whether the layer `digest` is unpacked in the layer cache, in any
/// flavour (`layers`, `layers-userns-…`): `hoist images` shows it.
pub fn layer_unpacked(store: &Store, digest: &Digest) -> bool {
    cache_dirs(store, "layers").iter().any(|d| {
        fs::symlink_metadata(d.join("sha256").join(digest.hex())).is_ok_and(|m| m.is_dir())
    })
}
