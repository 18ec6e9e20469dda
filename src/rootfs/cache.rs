//! The layer cache: each layer unpacked once into the store, keyed by its
//! blob digest, in the form overlayfs reads (whiteouts as 0/0 character
//! devices, opaque directories by xattr). And the subtree cache: the
//! `/opt/agent` or `/opt/gateway` tree of an image, applied once.
//!
//! Concurrent runs that need the same layer take its lock; the first
//! unpacks into a temp directory and renames it into place, the others wait
//! and then find it done. A directory is visible under its final name only
//! when complete.
//!
//! Beside each entry, written before the rename that makes it visible:
//! `<key>.json` (what the unpack could not reproduce) and
//! `<key>.treedigest` (its tree digest, [`record`]), so an entry is never
//! seen without them. A crash between the two renames leaves records
//! without an entry, which the next unpack of that key overwrites.

pub(crate) mod record;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::atomic::{self, Durability};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::pull::Pulled;
use crate::store::Store;
pub use crate::unpack::Fidelity;
use crate::unpack::{apply_layer, ApplyOptions, LayerStats, OutputMode, Privileges};

use super::RootfsError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive lock on `path` (created if needed), held while alive.
pub(crate) fn lock_file(path: &Path) -> Result<File, RootfsError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(path)(e.into()))?;
    Ok(f)
}

/// Layers unpacked by real root, by root of a user namespace and by an
/// unprivileged process differ on disk (`trusted.overlay.*` or
/// `user.overlay.*`, host or mapped owners, devices or none), so each has
/// its own cache directories. A user namespace's are also keyed by its id
/// maps: the same image ids land on other host ids under another mapping.
pub(crate) fn flavour() -> &'static str {
    static FLAVOUR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FLAVOUR.get_or_init(|| match Privileges::Detect.resolve() {
        Privileges::UserNamespace => {
            let read = |p: &str| fs::read(p).unwrap_or_default();
            let mut maps = read("/proc/self/uid_map");
            maps.extend(read("/proc/self/gid_map"));
            format!("-userns-{}", &Digest::sha256_of(&maps).hex()[..12])
        }
        Privileges::Unprivileged => "-unprivileged".to_string(),
        _ => String::new(),
    })
}

/// Every directory of the layer cache (`layers`, `layers-userns-…`) or
/// the subtree cache in `store`, whatever its flavour.
pub(crate) fn cache_dirs(store: &Store, kind: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(store.root())
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n == kind || n.starts_with(&format!("{kind}-"))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

pub(crate) fn layers_dir(store: &Store) -> PathBuf {
    store.root().join(format!("layers{}", flavour()))
}

pub(crate) fn subtrees_dir(store: &Store) -> PathBuf {
    store.root().join(format!("subtrees{}", flavour()))
}

/// The name of a cache directory (`layers`, `subtrees-userns-…`): the
/// flavour its entries were made in.
pub(crate) fn cache_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A cache entry is a directory itself, never a symlink to one: the cache
/// sits in a store others may write, and a link would make overlayfs read
/// whatever it points to.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The lock an entry is made under (`<key>.lock`).
pub(crate) fn entry_lock_path(entry: &Path) -> PathBuf {
    entry.with_extension("lock")
}

/// The fidelity record kept beside a cache entry (`<key>.json`).
pub(crate) fn stats_path(entry: &Path) -> PathBuf {
    entry.with_extension("json")
}

fn read_fidelity(entry: &Path) -> Fidelity {
    // Entries cached before these records existed were made as root.
    fs::read(stats_path(entry))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_fidelity(entry: &Path, f: Fidelity) -> Result<(), RootfsError> {
    let path = stats_path(entry);
    let bytes = crate::json::to_vec(&f, "a cache entry's fidelity record")
        .map_err(|e| io(&path)(e.into()))?;
    // Unsynced: the entry beside it is not synced either (see atomic).
    atomic::write(&path, &bytes, 0o644, Durability::Unsynced).map_err(io(&path))
}

/// Where the layer `desc` is unpacked in this process's layer cache.
fn layer_entry(store: &Store, desc: &Descriptor) -> PathBuf {
    layers_dir(store)
        .join(desc.digest.algorithm().as_str())
        .join(desc.digest.hex())
}

/// Whether the layer `desc` is unpacked in this process's layer cache.
pub(crate) fn is_cached(store: &Store, desc: &Descriptor) -> bool {
    is_real_dir(&layer_entry(store, desc))
}

/// The unpacked layer for `desc`, unpacking it now if needed, and what it
/// could not reproduce.
pub fn ensure_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
) -> Result<(PathBuf, Fidelity), RootfsError> {
    let target = layer_entry(store, desc);
    let base = layers_dir(store).join(desc.digest.algorithm().as_str());
    if is_real_dir(&target) {
        let f = read_fidelity(&target);
        return Ok((target, f));
    }
    let _lock = lock_file(&entry_lock_path(&target))?;
    if is_real_dir(&target) {
        let f = read_fidelity(&target);
        return Ok((target, f));
    }
    // Not an entry hoist made (a symlink or file in its place): out of
    // the way, or the rename below would fail or follow it.
    remove_tree(&target)?;
    let tmp = base.join(format!("{}.tmp", desc.digest.hex()));
    // Holding the lock, a temp directory can only be a crashed run's.
    remove_tree(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let opts = ApplyOptions {
        mode: OutputMode::OverlayLayer,
        expected_diff_id: Some(diff_id.clone()),
        ..Default::default()
    };
    let stats = match apply_blob(store, desc, &tmp, &opts) {
        Ok(s) => s,
        Err(e) => {
            remove_tree(&tmp)?;
            return Err(e);
        }
    };
    // The records first: an entry is only ever seen with its records.
    let fidelity = stats.not_reproduced;
    let recorded = write_fidelity(&target, fidelity)
        .and_then(|()| record::write(&tmp, &target, &cache_name(&layers_dir(store))));
    if let Err(e) = recorded {
        remove_tree(&tmp)?;
        return Err(e);
    }
    fs::rename(&tmp, &target).map_err(io(&target))?;
    Ok((target, fidelity))
}

/// Layers unpacked at once by [`ensure_layers`]. Each has its own reader
/// and writer threads; a few keep the disk busy while one layer's reader
/// decompresses, and bound the memory (each unpack holds at most
/// `unpack`'s bytes in flight).
const LAYERS_AT_ONCE: usize = 3;

/// What [`ensure_layer`] gives for one layer.
type Ensured = Result<(PathBuf, Fidelity), RootfsError>;

/// [`ensure_layer`] for each of `layers` (with its diff_id), up to
/// [`LAYERS_AT_ONCE`] at a time: layers are independent until they are
/// stacked. Results in the order given; the first layer's error (in that
/// order) is returned once every started unpack has ended. `in_place` is
/// called, from the unpacking thread, as each layer is in the cache.
pub fn ensure_layers(
    store: &Store,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    in_place: &(dyn Fn() + Sync),
) -> Result<Vec<(PathBuf, Fidelity)>, RootfsError> {
    let work: Vec<(&Descriptor, &Digest)> = layers.iter().zip(diff_ids).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Ensured>>> =
        work.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let unpack = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((desc, diff_id)) = work.get(i) else {
            return;
        };
        let r = ensure_layer(store, desc, diff_id);
        if r.is_ok() {
            in_place();
        }
        // A poisoned slot means another unpacker panicked, which the
        // scope re-raises when it joins.
        if let Ok(mut slot) = results[i].lock() {
            *slot = Some(r);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..LAYERS_AT_ONCE.min(work.len()) {
            // Fewer threads than asked is only slower: this one works too.
            if std::thread::Builder::new()
                .name("unpack-layer".into())
                .spawn_scoped(s, unpack)
                .is_err()
            {
                break;
            }
        }
        unpack();
    });
    results
        .into_iter()
        .zip(&work)
        .map(|(slot, (desc, _))| {
            let taken = slot.into_inner().ok().flatten();
            taken.unwrap_or_else(|| {
                Err(RootfsError::Io {
                    path: layer_entry(store, desc),
                    source: std::io::Error::other("the layer's unpack did not finish"),
                })
            })
        })
        .collect()
}

/// Apply one layer blob from the store onto `dir`.
pub(crate) fn apply_blob(
    store: &Store,
    desc: &Descriptor,
    dir: &Path,
    opts: &ApplyOptions,
) -> Result<LayerStats, RootfsError> {
    let blob = store.blob_path(&desc.digest);
    let file = File::open(&blob).map_err(io(&blob))?;
    let target = File::open(dir).map_err(io(dir))?;
    // Never read past the descriptor's size, even if the file grew.
    let reader = std::io::BufReader::with_capacity(1 << 20, std::io::Read::take(file, desc.size));
    apply_layer(reader, &desc.media_type, &target, opts).map_err(|source| RootfsError::Unpack {
        layer: desc.digest.clone(),
        source: Box::new(source),
    })
}

/// The subtree `path` (e.g. `opt/agent`) of an image, applied from all its
/// layers once and cached by manifest digest. Its root directory is the
/// image's `/opt/agent` itself, with that directory's metadata.
pub fn ensure_subtree(
    store: &Store,
    img: &Pulled,
    path: &str,
) -> Result<(PathBuf, Fidelity), RootfsError> {
    let (manifest_digest, layers, diff_ids, reference) = (
        &img.manifest_digest,
        &img.manifest.layers[..],
        &img.config.rootfs.diff_ids[..],
        img.reference.as_str(),
    );
    let key = Digest::sha256_of(format!("{manifest_digest}\n{path}").as_bytes());
    let base = subtrees_dir(store);
    let target = base.join(key.hex());
    if is_real_dir(&target) {
        let f = read_fidelity(&target);
        return Ok((target, f));
    }
    let _lock = lock_file(&entry_lock_path(&target))?;
    if is_real_dir(&target) {
        let f = read_fidelity(&target);
        return Ok((target, f));
    }
    // Not an entry hoist made (a symlink or file in its place): out of
    // the way, or the rename below would fail or follow it.
    remove_tree(&target)?;
    let tmp = base.join(format!("{}.tmp", key.hex()));
    let staged = base.join(format!("{}.staged", key.hex()));
    remove_tree(&staged)?;
    let fidelity = extract_subtree(store, layers, diff_ids, path, reference, &tmp, &staged)?;
    let recorded = write_fidelity(&target, fidelity)
        .and_then(|()| record::write(&staged, &target, &cache_name(&base)));
    if let Err(e) = recorded {
        remove_tree(&staged)?;
        return Err(e);
    }
    fs::rename(&staged, &target).map_err(io(&target))?;
    Ok((target, fidelity))
}

/// Apply every layer in tree form into `scratch`, then move the subtree
/// `path` to `dest` (on the same file system) and drop the rest.
pub(crate) fn extract_subtree(
    store: &Store,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    path: &str,
    reference: &str,
    scratch: &Path,
    dest: &Path,
) -> Result<Fidelity, RootfsError> {
    remove_tree(scratch)?;
    fs::create_dir_all(scratch).map_err(io(scratch))?;
    let built = (|| {
        let mut fidelity = Fidelity::default();
        for (desc, diff_id) in layers.iter().zip(diff_ids) {
            let opts = ApplyOptions {
                mode: OutputMode::Tree,
                expected_diff_id: Some(diff_id.clone()),
                subtree: Some(path.to_string()),
                ..Default::default()
            };
            // Counts cover the whole image's entries that were applied,
            // i.e. the subtree and the directories on the way to it.
            fidelity.add(apply_blob(store, desc, scratch, &opts)?.not_reproduced);
        }
        let missing = || RootfsError::MissingSubtree {
            reference: reference.to_string(),
            path: format!("/{path}"),
        };
        // Layers were applied safely beneath `scratch`, but the path
        // itself may be a symlink the image planted: lstat, never follow.
        let sub = scratch.join(path);
        let mut cur = scratch.to_path_buf();
        for comp in path.split('/') {
            cur.push(comp);
            let m = fs::symlink_metadata(&cur).map_err(|_| missing())?;
            if !m.is_dir() {
                return Err(missing());
            }
        }
        fs::rename(&sub, dest).map_err(io(dest))?;
        Ok(fidelity)
    })();
    remove_tree(scratch)?;
    built
}

/// Remove a directory tree we own, if present. Directories made 0500 by a
/// layer are made writable first so removal works without root too.
pub(crate) fn remove_tree(path: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
        Ok(m) if !m.is_dir() => return fs::remove_file(path).map_err(io(path)),
        Ok(_) => {}
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_writable(path);
    fs::remove_dir_all(path).map_err(io(path))
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Best effort: whatever this cannot fix, remove_dir_all reports next.
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}
