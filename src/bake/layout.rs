//! Writing the combination into an OCI image layout (`oci:PATH:TAG`),
//! created if missing: blobs copied from the store, then the manifest
//! named TAG in `index.json` (an older image of that name replaced).

use std::fs;
use std::path::Path;

use super::{io_err, BakeError, Baked};
use crate::digest::Digest;
use crate::manifest::{Index, OCI_INDEX};
use crate::store::Store;

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub fn write_layout(store: &Store, baked: &Baked, path: &Path, tag: &str) -> Result<(), BakeError> {
    create_layout(path)?;
    let dest = Store::view(path);
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

/// `oci-layout`, `index.json` and `blobs/sha256`, each only if missing; an
/// existing directory that is not a layout is refused by the record step.
fn create_layout(path: &Path) -> Result<(), BakeError> {
    let blobs = path.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let view = Store::view(path);
    let marker = path.join("oci-layout");
    if !marker.exists() {
        view.write_atomic(&marker, OCI_LAYOUT)?;
    }
    let index = path.join("index.json");
    if !index.exists() {
        let empty = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: vec![],
            annotations: None,
        };
        // Serialising plain structs cannot fail.
        view.write_atomic(&index, &serde_json::to_vec(&empty).unwrap_or_default())?;
    }
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
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let mut from = fs::File::open(&src).map_err(io_err(&src))?;
    let mut to = tmp.as_file();
    let copied = std::io::copy(&mut from, &mut to).map_err(io_err(tmp.path()))?;
    if copied != size {
        return Err(BakeError::Store(crate::store::StoreError::SizeMismatch {
            digest: digest.clone(),
            expected: size,
            found: copied,
        }));
    }
    tmp.as_file().sync_data().map_err(io_err(tmp.path()))?;
    tmp.persist(&target).map_err(|e| io_err(&target)(e.error))?;
    Ok(())
}
