//! The store's images (`hoist images`) and the names `hoist rmi` takes.
//!
//! An image is an entry of the store's `index.json`: its name
//! (`org.opencontainers.image.ref.name`, as `hoist pull` recorded it), the
//! digest of its platform manifest, and `io.github.hoist.resolved-from`,
//! the digest the reference resolved to (an index, for a multi-platform
//! image).

use std::collections::BTreeSet;
use std::fs;

use serde::Serialize;

use super::InspectError;
use crate::digest::Digest;
use crate::manifest::{parse_document, Descriptor, Document, Manifest, MAX_DOCUMENT_SIZE};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::rootfs::gc::layer_unpacked;
use crate::store::{ref_name_of, Store};

/// The annotation `hoist pull` records the resolved digest under.
const RESOLVED_FROM: &str = "io.github.hoist.resolved-from";

/// One image of the store.
#[derive(Clone, Debug, Serialize)]
pub struct StoredImage {
    pub name: String,
    /// The platform manifest's digest.
    pub digest: Digest,
    /// What the name resolved to when pulled, when not the manifest (an
    /// index).
    pub index_digest: Option<Digest>,
    pub platform: Option<Platform>,
    /// Bytes of its blobs present in the store (index, manifest, config,
    /// layers; compressed, as pulled), shared blobs counted for each image.
    pub size: u64,
    /// Every blob the manifest names is in the store.
    pub complete: bool,
    pub layers: usize,
    /// Layers unpacked in the layer cache.
    pub layers_unpacked: usize,
    /// When a pull last used it (RFC 3339), if since the store had `used/`.
    pub last_used: Option<String>,
    #[serde(skip)]
    pub last_used_at: Option<std::time::SystemTime>,
}

/// Every image in the store, in `index.json`'s order (by name).
pub fn list(store: &Store) -> Result<Vec<StoredImage>, InspectError> {
    let index = store.index()?;
    Ok(index.manifests.iter().map(|d| describe(store, d)).collect())
}

fn describe(store: &Store, d: &Descriptor) -> StoredImage {
    let index_digest = resolved_from(d).filter(|from| *from != d.digest);
    let file_size = |digest: &Digest| fs::metadata(store.blob_path(digest)).map_or(0, |m| m.len());
    let manifest = manifest_of(store, &d.digest);
    let mut blobs: Vec<Digest> = vec![d.digest.clone()];
    blobs.extend(index_digest.clone());
    let mut complete = manifest.is_some();
    let (mut layers, mut unpacked) = (0, 0);
    if let Some(m) = &manifest {
        blobs.push(m.config.digest.clone());
        blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
        complete = std::iter::once(&m.config)
            .chain(&m.layers)
            .all(|b| store.has_blob(&b.digest, b.size));
        layers = m.layers.len();
        unpacked = m
            .layers
            .iter()
            .filter(|l| layer_unpacked(store, &l.digest))
            .count();
    }
    // A blob named twice (a layer repeated) is stored once.
    let unique: BTreeSet<Digest> = blobs.into_iter().collect();
    let last_used_at = store.last_used(&d.digest);
    StoredImage {
        name: ref_name_of(d).unwrap_or_default().to_string(),
        digest: d.digest.clone(),
        index_digest,
        platform: d.platform.clone(),
        size: unique.iter().map(file_size).sum(),
        complete,
        layers,
        layers_unpacked: unpacked,
        last_used: last_used_at.map(crate::pipeline::clock::rfc3339),
        last_used_at,
    }
}

fn manifest_of(store: &Store, digest: &Digest) -> Option<Manifest> {
    let bytes = store.read_blob(digest, MAX_DOCUMENT_SIZE).ok()?;
    match parse_document(&bytes, None).ok()? {
        Document::Manifest(m) => Some(m),
        Document::Index(_) => None,
    }
}

fn resolved_from(d: &Descriptor) -> Option<Digest> {
    d.annotations.as_ref()?.get(RESOLVED_FROM)?.parse().ok()
}

/// The names of the store's images that `query` means, as podman and
/// docker resolve `rmi` arguments: a name exactly as `hoist images` shows
/// it; a reference as `hoist pull` takes it (`alpine` is
/// `docker.io/library/alpine:latest`, `oci:PATH:TAG` with PATH resolved);
/// or a digest or a prefix of its hex (at least 4 characters) of an
/// image's manifest or index, which names every name it has. Empty when
/// nothing matches; an error when a prefix fits several images.
pub fn names_for(store: &Store, query: &str) -> Result<Vec<String>, InspectError> {
    let index = store.index()?;
    let entries = &index.manifests;
    let names = |pick: &dyn Fn(&Descriptor) -> bool| -> Vec<String> {
        entries
            .iter()
            .filter(|d| pick(d))
            .filter_map(|d| ref_name_of(d).map(String::from))
            .collect()
    };
    let exact = names(&|d| ref_name_of(d) == Some(query));
    if !exact.is_empty() {
        return Ok(exact);
    }
    if let Ok(r) = query.parse::<Reference>() {
        let by_ref = names(&|d| ref_name_of(d).is_some_and(|n| names_reference(n, d, &r)));
        if !by_ref.is_empty() {
            return Ok(by_ref);
        }
    }
    let Some(prefix) = digest_prefix(query) else {
        return Ok(Vec::new());
    };
    let fits = |d: &Descriptor| {
        std::iter::once(d.digest.clone())
            .chain(resolved_from(d))
            .any(|x| x.hex().starts_with(prefix))
    };
    let images: BTreeSet<&Digest> = entries
        .iter()
        .filter(|d| fits(d))
        .map(|d| &d.digest)
        .collect();
    if images.len() > 1 {
        return Err(InspectError::Ambiguous {
            query: query.to_string(),
            digests: images.into_iter().map(|d| d.to_string()).collect(),
        });
    }
    Ok(names(&fits))
}

/// Whether the entry named `name` is the image reference `r` names.
fn names_reference(name: &str, d: &Descriptor, r: &Reference) -> bool {
    match r {
        Reference::Registry(reg) => {
            if name == reg.store_name() {
                return true;
            }
            // `REPO:TAG@DIGEST` is recorded by its tag; `REPO@DIGEST` then
            // names that entry too when the digest is its.
            let repo = format!("{}/{}", reg.registry, reg.repository);
            let same_repo = name
                .strip_prefix(&repo)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'));
            same_repo
                && reg.digest.as_ref().is_some_and(|want| {
                    *want == d.digest || resolved_from(d).as_ref() == Some(want)
                })
        }
        Reference::Layout(l) => {
            let abs = fs::canonicalize(&l.path).unwrap_or_else(|_| l.path.clone());
            let mut l = l.clone();
            l.path = abs;
            name == l.to_string()
        }
    }
}

/// `sha256:HEX…` or `HEX…` with at least 4 lowercase hex characters.
fn digest_prefix(q: &str) -> Option<&str> {
    let hex = q.strip_prefix("sha256:").unwrap_or(q);
    let ok = (4..=64).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_prefixes() {
        assert_eq!(digest_prefix("sha256:abcd"), Some("abcd"));
        assert_eq!(digest_prefix("0123456789ab"), Some("0123456789ab"));
        assert_eq!(digest_prefix("abc"), None);
        assert_eq!(digest_prefix("alpine"), None);
        assert_eq!(digest_prefix("ABCD"), None);
    }

    fn entry(name: &str, digest: &str) -> Descriptor {
        Descriptor {
            media_type: crate::manifest::OCI_MANIFEST.into(),
            digest: digest.parse().unwrap(),
            size: 1,
            platform: None,
            annotations: Some(
                [(
                    crate::manifest::ANNOTATION_REF_NAME.to_string(),
                    name.to_string(),
                )]
                .into(),
            ),
            urls: None,
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references_name_entries_as_pull_recorded_them() {
        let r = |s: &str| s.parse::<Reference>().unwrap();
        let tagged = entry("127.0.0.1:5000/samples/pyfix:latest", D);
        let name = ref_name_of(&tagged).unwrap();
        assert!(names_reference(
            name,
            &tagged,
            &r("127.0.0.1:5000/samples/pyfix")
        ));
        assert!(names_reference(
            name,
            &tagged,
            &r(&format!("127.0.0.1:5000/samples/pyfix@{D}"))
        ));
        assert!(!names_reference(
            name,
            &tagged,
            &r("127.0.0.1:5000/samples/pyfix:v2")
        ));
        assert!(!names_reference(
            name,
            &tagged,
            &r(&format!("127.0.0.1:5000/samples/py@{D}"))
        ));
        let hub = entry("docker.io/library/alpine:latest", D);
        assert!(names_reference(
            ref_name_of(&hub).unwrap(),
            &hub,
            &r("alpine")
        ));
    }
}
