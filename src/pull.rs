//! `hoist pull`: resolve a reference to one platform's manifest and bring
//! every blob it needs into the store, verified. Works for registries and
//! for `oci:` layouts (which are read as untrusted as a registry is).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::digest::Digest;
use crate::manifest::{
    self, parse_config, parse_document, Descriptor, Document, ImageConfig, Manifest, ManifestError,
    MAX_DOCUMENT_SIZE,
};
use crate::platform::Platform;
use crate::reference::{LayoutRef, Reference, RegistryRef};
use crate::registry::{Client, RegistryError};
use crate::store::{read_layout_index, resolve_in_index, Begin, Store, StoreError};

/// Progress of blob downloads, for the CLI's bars; the library never prints.
pub trait Progress: Send + Sync {
    fn blob_started(&self, _digest: &Digest, _size: u64, _resumed_from: u64) {}
    fn blob_advanced(&self, _digest: &Digest, _bytes: u64) {}
    fn blob_finished(&self, _digest: &Digest, _downloaded: bool) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The platform to select from an index; the host's when `None`.
    pub platform: Option<Platform>,
    /// Blobs downloaded at once.
    pub jobs: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            jobs: 4,
        }
    }
}

/// What a pull resolved and stored.
#[derive(Clone, Debug, Serialize)]
pub struct Pulled {
    pub reference: String,
    /// The name it is recorded under in the store's `index.json`.
    pub name: String,
    /// What the reference resolves to: an index or a manifest.
    pub digest: Digest,
    /// The platform-specific image manifest.
    pub manifest_digest: Digest,
    pub platform: Platform,
    pub layers: usize,
    pub size: u64,
    /// Blobs fetched by this pull (0 when everything was already stored).
    pub blobs_downloaded: usize,
    #[serde(skip)]
    pub manifest: Manifest,
    #[serde(skip)]
    pub config: ImageConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("{reference} is pinned to {expected} but the registry sent bytes that hash to {found}; refusing them")]
    PinnedMismatch {
        reference: String,
        expected: Digest,
        found: Digest,
    },
    #[error("{reference} has no image for platform {wanted}; available: {}", list_platforms(.available))]
    PlatformMissing {
        reference: String,
        wanted: Platform,
        available: Vec<Platform>,
    },
    #[error("{reference} is for platform {found}, not {wanted}; hoist never emulates another platform (pass --platform to pull it anyway)")]
    PlatformMismatch {
        reference: String,
        wanted: Platform,
        found: Platform,
    },
    #[error("{reference}: index nests another index more than one level deep")]
    NestedIndex { reference: String },
    #[error("oci:{path} has no image named {name:?}; names there: {}", .available.join(", "))]
    LayoutName {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error("{reference}: the image config is not an image config ({media_type})")]
    NotAnImage {
        reference: String,
        media_type: String,
    },
    #[error("blob {digest} of {path}: {source}")]
    LayoutBlob {
        path: PathBuf,
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("{0}")]
    Join(String),
}

fn list_platforms(p: &[Platform]) -> String {
    if p.is_empty() {
        return "none".into();
    }
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl PullError {
    /// A digest the user pinned did not match: exit code 3.
    pub fn is_pin_mismatch(&self) -> bool {
        matches!(self, PullError::PinnedMismatch { .. })
    }
}

/// Where a pull's documents and blobs come from.
enum Source<'a> {
    Registry(&'a Client, &'a RegistryRef),
    Layout(&'a Path),
}

impl Source<'_> {
    async fn fetch_document(
        &self,
        store: &Store,
        reference: &str,
        pinned: Option<&Digest>,
    ) -> Result<(Vec<u8>, Option<String>, Digest), PullError> {
        // Content-addressed: a pinned document already in the store (its
        // digest checked again as it is read) needs no registry at all.
        if let (Source::Registry(..), Some(digest)) = (self, pinned) {
            if let Ok(bytes) = store.read_blob(digest, MAX_DOCUMENT_SIZE) {
                return Ok((bytes, None, digest.clone()));
            }
        }
        match self {
            Source::Registry(client, r) => {
                let m = client.get_manifest(r, reference).await?;
                Ok((m.bytes, m.content_type, m.digest))
            }
            Source::Layout(path) => {
                let digest = pinned.ok_or_else(|| {
                    PullError::Join("layout documents are fetched by digest".into())
                })?;
                let bytes = read_layout_blob(path, digest, MAX_DOCUMENT_SIZE)?;
                Ok((bytes, None, digest.clone()))
            }
        }
    }
}

fn read_layout_blob(path: &Path, digest: &Digest, max: u64) -> Result<Vec<u8>, PullError> {
    // A layout on disk is opened like a store, read-only: same checks.
    let store_view = Store::view(path);
    store_view
        .read_blob(digest, max)
        .map_err(|source| PullError::LayoutBlob {
            path: path.to_path_buf(),
            digest: digest.clone(),
            source,
        })
}

/// The digest `reference` resolves to now, without pulling it: a
/// registry's manifest (one request; a pinned reference is its digest),
/// or a layout's `index.json` entry. `hoist eval` pins its plan so.
pub async fn resolve(client: &Client, reference: &Reference) -> Result<Digest, PullError> {
    match reference {
        Reference::Registry(r) => match &r.digest {
            Some(d) => Ok(d.clone()),
            None => Ok(client.get_manifest(r, &r.manifest_ref()).await?.digest),
        },
        Reference::Layout(l) => Ok(layout_top(l)?.digest),
    }
}

/// Pull `reference` into `store`.
pub async fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, PullError> {
    let _gc_guard = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.gc_lock_shared())
            .await
            .map_err(|e| PullError::Join(e.to_string()))??
    };
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let (source, top_ref, name, pinned) = match reference {
        Reference::Registry(r) => (
            Source::Registry(client, r),
            r.manifest_ref(),
            r.store_name(),
            r.digest.clone(),
        ),
        Reference::Layout(l) => {
            let top = layout_top(l)?;
            (
                Source::Layout(&l.path),
                top.digest.to_string(),
                layout_name(l),
                Some(top.digest),
            )
        }
    };
    let ref_str = reference.to_string();
    let (bytes, ctype, top_digest) = source
        .fetch_document(store, &top_ref, pinned.as_ref())
        .await?;
    if let Some(expected) = &pinned {
        if *expected != top_digest {
            return Err(PullError::PinnedMismatch {
                reference: ref_str,
                expected: expected.clone(),
                found: top_digest,
            });
        }
    }
    let doc = parse_document(&bytes, ctype.as_deref()).map_err(|source| PullError::Manifest {
        reference: ref_str.clone(),
        source,
    })?;
    store.put_blob(&top_digest, &bytes)?;
    let (manifest_bytes, manifest_digest, manifest) = match doc {
        Document::Manifest(m) => (bytes, top_digest.clone(), m),
        Document::Index(index) => {
            let chosen = platform_entry(&index, &wanted, &ref_str)?;
            let (b, ct, d) = source
                .fetch_document(store, &chosen.digest.to_string(), Some(&chosen.digest))
                .await?;
            if d != chosen.digest {
                return Err(PullError::PinnedMismatch {
                    reference: format!("{ref_str} (index entry for {wanted})"),
                    expected: chosen.digest.clone(),
                    found: d,
                });
            }
            let ct = ct.or(Some(chosen.media_type.clone()));
            match parse_document(&b, ct.as_deref()).map_err(|source| PullError::Manifest {
                reference: ref_str.clone(),
                source,
            })? {
                Document::Manifest(m) => {
                    store.put_blob(&d, &b)?;
                    (b, d, m)
                }
                Document::Index(_) => return Err(PullError::NestedIndex { reference: ref_str }),
            }
        }
    };
    let config_media = manifest.config.media_type.as_str();
    if config_media != manifest::OCI_CONFIG && config_media != manifest::DOCKER_CONFIG {
        return Err(PullError::NotAnImage {
            reference: ref_str,
            media_type: config_media.to_string(),
        });
    }
    let mut blobs: Vec<Descriptor> = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    let downloaded = fetch_blobs(store, &source, &blobs, opts.jobs, progress).await?;
    let config_bytes = store.read_blob(&manifest.config.digest, MAX_DOCUMENT_SIZE)?;
    let config = parse_config(&config_bytes, &manifest).map_err(|source| PullError::Manifest {
        reference: ref_str.clone(),
        source,
    })?;
    let platform = config.platform();
    if opts.platform.is_none() && !wanted.matches(&platform) {
        return Err(PullError::PlatformMismatch {
            reference: ref_str,
            wanted,
            found: platform,
        });
    }
    let desc = Descriptor {
        media_type: manifest::manifest_media_type(&manifest).to_string(),
        digest: manifest_digest.clone(),
        size: manifest_bytes.len() as u64,
        platform: Some(platform.clone()),
        annotations: Some(
            [(
                "io.github.hoist.resolved-from".to_string(),
                top_digest.to_string(),
            )]
            .into_iter()
            .collect(),
        ),
        urls: None,
    };
    store.record(&name, &desc)?;
    store.mark_used(&manifest_digest)?;
    Ok(Pulled {
        reference: ref_str,
        name,
        digest: top_digest,
        manifest_digest,
        platform,
        layers: manifest.layers.len(),
        size: blobs.iter().map(|b| b.size).sum(),
        blobs_downloaded: downloaded,
        manifest,
        config,
    })
}

/// [`choose_platform`], or the error naming `reference`, what was wanted
/// and what the index offers.
pub fn platform_entry<'a>(
    index: &'a crate::manifest::Index,
    wanted: &Platform,
    reference: &str,
) -> Result<&'a Descriptor, PullError> {
    choose_platform(&index.manifests, wanted).ok_or_else(|| PullError::PlatformMissing {
        reference: reference.to_string(),
        wanted: wanted.clone(),
        available: index
            .manifests
            .iter()
            .filter_map(|d| d.platform.clone())
            .collect(),
    })
}

/// The first index entry for `wanted`, exact variant preferred.
pub fn choose_platform<'a>(entries: &'a [Descriptor], wanted: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    candidates
        .iter()
        .find(|d| d.platform.as_ref() == Some(wanted))
        .or_else(|| candidates.first())
        .copied()
}

/// The `index.json` entry of a layout that `l` names: its digest (listed
/// or not), its tag, or the only entry.
pub(crate) fn layout_top(l: &LayoutRef) -> Result<Descriptor, PullError> {
    let index = read_layout_index(&l.path)?;
    if let Some(d) = &l.digest {
        if let Some(found) = index.manifests.iter().find(|m| &m.digest == d) {
            return Ok(found.clone());
        }
        // A digest not listed in index.json may still be a blob there
        // (a platform manifest under an index): accept it if stored.
        return Ok(Descriptor {
            media_type: String::new(),
            digest: d.clone(),
            size: 0,
            platform: None,
            annotations: None,
            urls: None,
        });
    }
    let name = l.tag.as_deref().unwrap_or("");
    resolve_in_index(&index, name).ok_or_else(|| PullError::LayoutName {
        path: l.path.clone(),
        name: name.to_string(),
        available: index
            .manifests
            .iter()
            .filter_map(|d| crate::store::ref_name_of(d).map(str::to_string))
            .collect(),
    })
}

/// Layout images are recorded as `oci:ABSPATH:TAG` (or `@DIGEST`).
fn layout_name(l: &LayoutRef) -> String {
    let abs = std::fs::canonicalize(&l.path).unwrap_or_else(|_| l.path.clone());
    let r = LayoutRef {
        path: abs,
        tag: l.tag.clone(),
        digest: l.digest.clone(),
    };
    r.to_string()
}

async fn fetch_blobs(
    store: &Store,
    source: &Source<'_>,
    blobs: &[Descriptor],
    jobs: usize,
    progress: Arc<dyn Progress>,
) -> Result<usize, PullError> {
    let results: Vec<bool> = stream::iter(blobs.iter().cloned().map(|desc| {
        let progress = progress.clone();
        async move { fetch_one(store, source, &desc, progress.as_ref()).await }
    }))
    .buffer_unordered(jobs.max(1))
    .try_collect()
    .await?;
    Ok(results.into_iter().filter(|d| *d).count())
}

/// One blob into the store; returns whether it was downloaded (or copied).
async fn fetch_one(
    store: &Store,
    source: &Source<'_>,
    desc: &Descriptor,
    progress: &dyn Progress,
) -> Result<bool, PullError> {
    let begin = {
        let store = store.clone();
        let desc = desc.clone();
        tokio::task::spawn_blocking(move || store.begin(&desc))
            .await
            .map_err(|e| PullError::Join(e.to_string()))??
    };
    let mut ingest = match begin {
        Begin::Present => {
            progress.blob_finished(&desc.digest, false);
            return Ok(false);
        }
        Begin::Ingest(i) => i,
    };
    progress.blob_started(&desc.digest, desc.size, ingest.offset());
    match source {
        Source::Registry(client, r) => {
            let on_bytes = |n| progress.blob_advanced(&desc.digest, n);
            client.fetch_blob(r, desc, &mut ingest, &on_bytes).await?;
        }
        Source::Layout(path) => {
            copy_layout_blob(path, desc, &mut ingest, progress).map_err(|source| {
                PullError::LayoutBlob {
                    path: path.to_path_buf(),
                    digest: desc.digest.clone(),
                    source,
                }
            })?;
        }
    }
    tokio::task::spawn_blocking(move || ingest.commit())
        .await
        .map_err(|e| PullError::Join(e.to_string()))??;
    progress.blob_finished(&desc.digest, true);
    Ok(true)
}

fn copy_layout_blob(
    path: &Path,
    desc: &Descriptor,
    ingest: &mut crate::store::Ingest,
    progress: &dyn Progress,
) -> Result<(), StoreError> {
    use std::io::Read;
    let src = Store::view(path).blob_path(&desc.digest);
    let file = std::fs::File::open(&src).map_err(crate::store::io_err(&src))?;
    ingest.reset()?;
    let mut reader = file.take(desc.size + 1);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(crate::store::io_err(&src))?;
        if n == 0 {
            break;
        }
        if let Err(e) = ingest.write(&buf[..n]) {
            ingest.discard();
            return Err(e);
        }
        progress.blob_advanced(&desc.digest, n as u64);
    }
    Ok(())
}

/// The `images` of result.json and run.json: each axis's reference as
/// given and its manifest digest (`gateway` null when there is none).
pub fn images_json(
    benchmark: &Pulled,
    agent: &Pulled,
    gateway: Option<&Pulled>,
) -> serde_json::Value {
    let one = |p: &Pulled| serde_json::json!({"ref": p.reference, "digest": p.digest.to_string()});
    serde_json::json!({
        "benchmark": one(benchmark),
        "agent": one(agent),
        "gateway": gateway.map(one),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn entry(p: &str) -> Descriptor {
        Descriptor {
            media_type: manifest::OCI_MANIFEST.into(),
            digest: D.parse().unwrap(),
            size: 1,
            platform: Some(p.parse().unwrap()),
            annotations: None,
            urls: None,
        }
    }

    #[test]
    fn platform_choice_prefers_exact_variant() {
        let entries = vec![
            entry("linux/arm/v6"),
            entry("linux/amd64"),
            entry("linux/arm/v7"),
        ];
        let pick = |w: &str| {
            choose_platform(&entries, &w.parse().unwrap())
                .map(|d| d.platform.clone().unwrap().to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("linux/amd64"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("linux/arm/v7"));
        assert_eq!(pick("linux/s390x"), None);
    }
}
