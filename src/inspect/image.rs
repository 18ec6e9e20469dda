//! `hoist inspect REF`: what an image is, from its manifest and config
//! alone, as `skopeo inspect` reads them. No layer is downloaded: a
//! registry's config blob is fetched into the store (a later pull finds it
//! there; `hoist gc` sweeps it if nothing pulls the image), a layout's is
//! read in place. The axes come from the layers only when every layer is
//! already on this machine (the store, or the `oci:` layout itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::axes::{self, Axes};
use crate::digest::Digest;
use crate::manifest::{
    self, parse_config, parse_document, Descriptor, Document, Index, Manifest, ManifestError,
    MAX_DOCUMENT_SIZE,
};
use crate::platform::Platform;
use crate::pull::PullError;
use crate::reference::{LayoutRef, Reference, RegistryRef};
use crate::registry::Client;
use crate::store::{Begin, Store};

/// The `schema` of `hoist inspect --json`.
pub const SCHEMA: &str = "hoist.inspect/v1";

#[derive(Clone, Debug, Default)]
pub struct InspectOptions {
    /// The platform to pick from an index; the host's when `None`.
    pub platform: Option<Platform>,
    /// Read locally available layers to find the axes (else labels only).
    pub read_layers: bool,
}

/// What `hoist inspect` shows (`--json`: `hoist.inspect/v1`).
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub schema: &'static str,
    pub reference: String,
    /// What the reference resolves to: an index or a manifest.
    pub digest: Digest,
    /// The platform's image manifest (the digest `hoist pull` pins).
    pub manifest_digest: Digest,
    /// The platforms of the index, for a multi-platform image.
    pub index_platforms: Option<Vec<Platform>>,
    pub media_type: String,
    pub platform: Platform,
    pub created: Option<String>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// The config and layer blobs, compressed, as a pull downloads them.
    pub size: u64,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub axes: Axes,
    /// The manifest and config as stored, for `--raw` and `--config`.
    #[serde(skip)]
    pub raw_manifest: Vec<u8>,
    #[serde(skip)]
    pub raw_config: Vec<u8>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl From<&Descriptor> for Blob {
    fn from(d: &Descriptor) -> Blob {
        Blob {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
        }
    }
}

/// The parts of an image config `inspect` shows (image-spec config.md);
/// absent or null fields are empty.
#[derive(Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// The platform's image manifest a reference resolved to.
struct Chosen {
    raw: Vec<u8>,
    digest: Digest,
    manifest: Manifest,
    /// The index's platforms, when the reference named an index.
    platforms: Option<Vec<Platform>>,
}

/// Where the documents come from.
enum Source<'a> {
    Registry(&'a Client, &'a RegistryRef),
    Layout(&'a LayoutRef),
}

/// Inspect `reference`; errors are pull's (a pinned digest that does not
/// match is exit 3, as for a pull).
pub async fn inspect(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &InspectOptions,
) -> Result<Inspection, PullError> {
    let ref_str = reference.to_string();
    let bad = |source: ManifestError| PullError::Manifest {
        reference: ref_str.clone(),
        source,
    };
    let source = match reference {
        Reference::Registry(r) => Source::Registry(client, r),
        Reference::Layout(l) => Source::Layout(l),
    };
    let (top_bytes, ctype, digest) = source.top(store).await?;
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let chosen = match parse_document(&top_bytes, ctype.as_deref()).map_err(bad)? {
        Document::Manifest(m) => Chosen {
            raw: top_bytes,
            digest: digest.clone(),
            manifest: m,
            platforms: None,
        },
        Document::Index(index) => source.choose(store, &ref_str, &index, &wanted).await?,
    };
    let Chosen {
        raw: raw_manifest,
        digest: manifest_digest,
        manifest,
        platforms: index_platforms,
    } = chosen;
    let config_media = manifest.config.media_type.as_str();
    if config_media != manifest::OCI_CONFIG && config_media != manifest::DOCKER_CONFIG {
        return Err(PullError::NotAnImage {
            reference: ref_str,
            media_type: config_media.to_string(),
        });
    }
    let raw_config = source.config(store, &manifest.config).await?;
    let platform = parse_config(&raw_config, &manifest)
        .map_err(bad)?
        .platform();
    let file: ConfigFile =
        serde_json::from_slice(&raw_config).map_err(|e| bad(ManifestError::Config(e)))?;
    let run = file.config.unwrap_or_default();
    let labels = run.labels.unwrap_or_default();
    let axes = axes_of(store, &source, &manifest, &labels, opts.read_layers).await;
    Ok(Inspection {
        schema: SCHEMA,
        reference: ref_str,
        digest,
        manifest_digest,
        index_platforms,
        media_type: manifest::manifest_media_type(&manifest).to_string(),
        platform,
        created: file.created,
        config: Blob::from(&manifest.config),
        size: manifest.total_size(),
        layers: manifest.layers.iter().map(Blob::from).collect(),
        labels,
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        axes,
        raw_manifest,
        raw_config,
    })
}

impl Source<'_> {
    /// The document the reference names: its bytes, the registry's
    /// Content-Type, its digest.
    async fn top(&self, store: &Store) -> Result<(Vec<u8>, Option<String>, Digest), PullError> {
        match self {
            Source::Registry(client, r) => {
                if let Some(d) = &r.digest {
                    return Ok((self.document(store, d).await?, None, d.clone()));
                }
                let m = client.get_manifest(r, &r.manifest_ref()).await?;
                Ok((m.bytes, m.content_type, m.digest))
            }
            Source::Layout(l) => {
                let top = crate::pull::layout_top(l)?;
                Ok((self.document(store, &top.digest).await?, None, top.digest))
            }
        }
    }

    /// The manifest of `index` for `wanted`, as `hoist pull` chooses it.
    async fn choose(
        &self,
        store: &Store,
        reference: &str,
        index: &Index,
        wanted: &Platform,
    ) -> Result<Chosen, PullError> {
        let platforms: Vec<Platform> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.clone())
            .collect();
        let entry = crate::pull::platform_entry(index, wanted, reference)?;
        let raw = self.document(store, &entry.digest).await?;
        let doc = parse_document(&raw, Some(&entry.media_type)).map_err(|source| {
            PullError::Manifest {
                reference: reference.to_string(),
                source,
            }
        })?;
        let Document::Manifest(manifest) = doc else {
            return Err(PullError::NestedIndex {
                reference: reference.to_string(),
            });
        };
        Ok(Chosen {
            raw,
            digest: entry.digest.clone(),
            manifest,
            platforms: Some(platforms),
        })
    }

    /// A manifest or index by digest, verified: from the store when it is
    /// there (a registry's), else from the registry or the layout.
    async fn document(&self, store: &Store, digest: &Digest) -> Result<Vec<u8>, PullError> {
        match self {
            Source::Registry(client, r) => {
                if let Ok(bytes) = store.read_blob(digest, MAX_DOCUMENT_SIZE) {
                    return Ok(bytes);
                }
                let m = client.get_manifest(r, &digest.to_string()).await?;
                if &m.digest != digest {
                    return Err(PullError::PinnedMismatch {
                        reference: r.to_string(),
                        expected: digest.clone(),
                        found: m.digest,
                    });
                }
                Ok(m.bytes)
            }
            Source::Layout(l) => read_layout_blob(&l.path, digest),
        }
    }

    /// The config blob, verified. A registry's is fetched into the store
    /// (under the gc lock taken shared, as a pull takes it, so no gc
    /// sweeps it between its arrival and this read).
    async fn config(&self, store: &Store, desc: &Descriptor) -> Result<Vec<u8>, PullError> {
        if desc.size > MAX_DOCUMENT_SIZE {
            return Err(PullError::Manifest {
                reference: self.name(),
                source: ManifestError::TooLarge { size: desc.size },
            });
        }
        let (client, r) = match self {
            Source::Registry(client, r) => (client, r),
            Source::Layout(l) => return read_layout_blob(&l.path, &desc.digest),
        };
        let _gc = store.gc_lock_shared()?;
        if let Begin::Ingest(mut ingest) = store.begin(desc)? {
            client.fetch_blob(r, desc, &mut ingest, &|_| {}).await?;
            ingest.commit()?;
        }
        Ok(store.read_blob(&desc.digest, MAX_DOCUMENT_SIZE)?)
    }

    fn name(&self) -> String {
        match self {
            Source::Registry(_, r) => r.to_string(),
            Source::Layout(l) => l.to_string(),
        }
    }

    /// Where a layer blob is on this machine, complete: the store, or the
    /// layout the reference names.
    fn local_layer(&self, store: &Store, desc: &Descriptor) -> Option<PathBuf> {
        if store.has_blob(&desc.digest, desc.size) {
            return Some(store.blob_path(&desc.digest));
        }
        let Source::Layout(l) = self else { return None };
        let layout = Store::view(&l.path);
        layout
            .has_blob(&desc.digest, desc.size)
            .then(|| layout.blob_path(&desc.digest))
    }
}

/// The axes: from the layers when all are here and `read_layers`, else
/// from the labels, with a note saying why.
async fn axes_of(
    store: &Store,
    source: &Source<'_>,
    manifest: &Manifest,
    labels: &BTreeMap<String, String>,
    read_layers: bool,
) -> Axes {
    if !read_layers {
        return axes::from_labels(labels, "layers not read (--no-layers)".into());
    }
    let local: Vec<Option<PathBuf>> = manifest
        .layers
        .iter()
        .map(|l| source.local_layer(store, l))
        .collect();
    let missing = local.iter().filter(|p| p.is_none()).count();
    if missing > 0 {
        let note = format!(
            "unknown without layers: {missing} of {} layers are not on this machine (`hoist pull` brings them)",
            local.len()
        );
        return axes::from_labels(labels, note);
    }
    let layers = manifest.layers.clone();
    let paths: Vec<PathBuf> = local.into_iter().flatten().collect();
    // Decompressing every layer is CPU work: off the async threads.
    let scanned = tokio::task::spawn_blocking(move || {
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        axes::from_layers(&layers, &refs)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the layer reader failed: {e}")));
    scanned.unwrap_or_else(|why| {
        axes::from_labels(labels, format!("the layers could not be read: {why}"))
    })
}

fn read_layout_blob(path: &Path, digest: &Digest) -> Result<Vec<u8>, PullError> {
    Store::view(path)
        .read_blob(digest, MAX_DOCUMENT_SIZE)
        .map_err(|source| PullError::LayoutBlob {
            path: path.to_path_buf(),
            digest: digest.clone(),
            source,
        })
}
