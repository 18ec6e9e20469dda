//! The layer cache: each layer unpacked once into the store, keyed by its
//! blob digest, in the form overlayfs reads (whiteouts as 0/0 character
//! devices, opaque directories by xattr). And the subtree cache: the
//! `/opt/agent` or `/opt/gateway` tree of an image, applied once.
//!
//! Concurrent runs that need the same layer take its lock; the first
//! unpacks into a temp directory and renames it into place, the others wait
//! and then find it done. A directory is visible under its final name only
//! when complete.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::pull::Pulled;
use crate::store::Store;
use crate::unpack::{apply_layer, ApplyOptions, OutputMode};

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

pub(crate) fn layers_dir(store: &Store) -> PathBuf {
    store.root().join("layers")
}

/// The unpacked layer for `desc`, unpacking it now if needed.
pub fn ensure_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
) -> Result<PathBuf, RootfsError> {
    let base = layers_dir(store).join(desc.digest.algorithm().as_str());
    let target = base.join(desc.digest.hex());
    if target.is_dir() {
        return Ok(target);
    }
    let _lock = lock_file(&base.join(format!("{}.lock", desc.digest.hex())))?;
    if target.is_dir() {
        return Ok(target);
    }
    let tmp = base.join(format!("{}.tmp", desc.digest.hex()));
    // Holding the lock, a temp directory can only be a crashed run's.
    remove_tree(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let opts = ApplyOptions {
        mode: OutputMode::OverlayLayer,
        expected_diff_id: Some(diff_id.clone()),
        ..Default::default()
    };
    let result = apply_blob(store, desc, &tmp, &opts);
    if let Err(e) = result {
        remove_tree(&tmp)?;
        return Err(e);
    }
    fs::rename(&tmp, &target).map_err(io(&target))?;
    Ok(target)
}

/// Apply one layer blob from the store onto `dir`.
pub(crate) fn apply_blob(
    store: &Store,
    desc: &Descriptor,
    dir: &Path,
    opts: &ApplyOptions,
) -> Result<(), RootfsError> {
    let blob = store.blob_path(&desc.digest);
    let file = File::open(&blob).map_err(io(&blob))?;
    let target = File::open(dir).map_err(io(dir))?;
    // Never read past the descriptor's size, even if the file grew.
    let reader = std::io::BufReader::with_capacity(1 << 20, std::io::Read::take(file, desc.size));
    apply_layer(reader, &desc.media_type, &target, opts).map_err(|source| RootfsError::Unpack {
        layer: desc.digest.clone(),
        source: Box::new(source),
    })?;
    Ok(())
}

/// The subtree `path` (e.g. `opt/agent`) of an image, applied from all its
/// layers once and cached by manifest digest. Its root directory is the
/// image's `/opt/agent` itself, with that directory's metadata.
pub fn ensure_subtree(store: &Store, img: &Pulled, path: &str) -> Result<PathBuf, RootfsError> {
    let (manifest_digest, layers, diff_ids, reference) = (
        &img.manifest_digest,
        &img.manifest.layers[..],
        &img.config.rootfs.diff_ids[..],
        img.reference.as_str(),
    );
    let key = Digest::sha256_of(format!("{manifest_digest}\n{path}").as_bytes());
    let base = store.root().join("subtrees");
    let target = base.join(key.hex());
    if target.is_dir() {
        return Ok(target);
    }
    let _lock = lock_file(&base.join(format!("{}.lock", key.hex())))?;
    if target.is_dir() {
        return Ok(target);
    }
    let tmp = base.join(format!("{}.tmp", key.hex()));
    extract_subtree(store, layers, diff_ids, path, reference, &tmp, &target)?;
    Ok(target)
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
) -> Result<(), RootfsError> {
    remove_tree(scratch)?;
    fs::create_dir_all(scratch).map_err(io(scratch))?;
    let built = (|| {
        for (desc, diff_id) in layers.iter().zip(diff_ids) {
            let opts = ApplyOptions {
                mode: OutputMode::Tree,
                expected_diff_id: Some(diff_id.clone()),
                subtree: Some(path.to_string()),
                ..Default::default()
            };
            apply_blob(store, desc, scratch, &opts)?;
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
        fs::rename(&sub, dest).map_err(io(dest))
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
