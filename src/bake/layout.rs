//! Writing the combination into an OCI image layout (`oci:PATH:TAG`),
//! created if missing: blobs copied from the store, then the manifest
//! named TAG in `index.json` (an older image of that name replaced).

use std::fs;
use std::path::Path;

use super::{io_err, BakeError, Baked};
use crate::atomic::{Durability, Temp};
use crate::digest::Digest;
use crate::store::{Store, BLOB_MODE};

pub fn write_layout(store: &Store, baked: &Baked, path: &Path, tag: &str) -> Result<(), BakeError> {
    let dest = Store::init_layout(path)?;
    let mut blobs = vec![
        (
            baked.manifest.config.digest.clone(),
            baked.manifest.config.size,
        ),
        (baked.manifest_digest.clone(), baked.manifest_size),
    ];
    blobs.extend(
        baked
            .manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size)),
    );
    for (digest, size) in &blobs {
        copy_blob(store, &dest, digest, *size)?;
    }
    dest.record(tag, &baked.descriptor())?;
    Ok(())
}

/// Copy one blob (a temp file renamed into place), unless present.
fn copy_blob(store: &Store, dest: &Store, digest: &Digest, size: u64) -> Result<(), BakeError> {
    if dest.has_blob(digest, size) {
        return Ok(());
    }
    let src = store.blob_path(digest);
    let target = dest.blob_path(digest);
    let dir = target.parent().unwrap_or(dest.root());
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = Temp::in_dir(dir, BLOB_MODE).map_err(io_err(dir))?;
    let mut from = fs::File::open(&src).map_err(io_err(&src))?;
    let mut to = tmp.file();
    let copied = std::io::copy(&mut from, &mut to).map_err(io_err(tmp.path()))?;
    if copied != size {
        return Err(BakeError::Store(crate::store::StoreError::SizeMismatch {
            digest: digest.clone(),
            expected: size,
            found: copied,
        }));
    }
    tmp.commit(&target, Durability::Synced)
        .map_err(io_err(&target))
}
