//! Reading OCI image layouts: the store itself and `oci:PATH` sources.

use std::fs;
use std::path::Path;

use super::{io_err, ref_name, StoreError};
use crate::manifest::{Descriptor, Index, MAX_DOCUMENT_SIZE};

/// Read and check a layout's `index.json` (the `oci-layout` marker too).
pub fn read_layout_index(root: &Path) -> Result<Index, StoreError> {
    let marker = root.join("oci-layout");
    let ok = fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("imageLayoutVersion").and_then(|x| x.as_str()) == Some("1.0.0"));
    if !ok {
        return Err(StoreError::NotALayout {
            path: root.to_path_buf(),
        });
    }
    let path = root.join("index.json");
    let meta = fs::metadata(&path).map_err(io_err(&path))?;
    if meta.len() > MAX_DOCUMENT_SIZE * 4 {
        return Err(StoreError::Io {
            path,
            source: std::io::Error::other("index.json is implausibly large"),
        });
    }
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::BadIndex { path, source })
}

/// The entry of `index` named `name`; with no name, the only entry when
/// there is exactly one (as skopeo does for `oci:PATH`).
pub fn resolve_in_index(index: &Index, name: &str) -> Option<Descriptor> {
    if name.is_empty() {
        return match index.manifests.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        };
    }
    index
        .manifests
        .iter()
        .find(|d| ref_name(d) == Some(name))
        .cloned()
}
