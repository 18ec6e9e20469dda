//! `hoist bake` (docs/images.md, "The combination image"): the combination
//! image for (benchmark, agent, gateway), built without a daemon. Its layers
//! are the benchmark's (the same blobs, unchanged), then one appended layer
//! each for the agent's `/opt/agent`, the gateway's `/opt/gateway`, and
//! `/.hoist/hoist`.
//!
//! Each axis layer holds the subtree exactly as crane mode fuses it: its
//! directory entry carries the subtree root's mode, owner and xattrs (a
//! 0700 `/opt/gateway` stays 0700, which `COPY --from` would not keep),
//! and an opaque whiteout makes it *replace* whatever the benchmark had
//! there, as crane mode's mount does. No entry for `/opt` itself: the
//! parent comes from the benchmark, or is created 0755 root as crane mode
//! creates it.
//!
//! Baking the same inputs twice gives the same bytes, hence the same
//! digest: see [`tar`] and [`layer`] for how, and `SOURCE_DATE_EPOCH` for
//! the one timestamp written.
//!
//! The image is built into the store first ([`bake`]), then written to its
//! destination: an OCI layout ([`write_layout`]), a registry ([`push`]) or
//! a `docker save` archive ([`write_docker_archive`]).

mod archive;
pub mod dest;
pub mod image;
mod layer;
mod layout;
pub mod tar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use archive::write_docker_archive;
pub use dest::{Destination, DestinationError};
pub use layout::write_layout;

use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest, MAX_DOCUMENT_SIZE, OCI_MANIFEST};
use crate::pull::Pulled;
use crate::reference::RegistryRef;
use crate::registry::{Client, RegistryError};
use crate::rootfs::{ensure_subtree, RootfsError, AGENT_PATH, GATEWAY_PATH};
use crate::store::{Store, StoreError};
use image::Appended;
use layer::Layer;

/// Where the hoist binary goes in the combination image.
pub const HOIST_DIR: &str = ".hoist";

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Json(#[from] crate::json::JsonError),
    #[error("the config of {reference}: {message}")]
    Config { reference: String, message: String },
    #[error("pushing to {reference}")]
    Push {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("layer {digest} has media type {media_type:?}, which a docker-archive cannot hold (it needs a tar, tar+gzip or tar+zstd layer)")]
    LayerType { digest: Digest, media_type: String },
    #[error(
        "layer {digest} decompresses to {found}, but the config says its diff_id is {expected}"
    )]
    DiffId {
        digest: Digest,
        expected: Digest,
        found: Digest,
    },
    #[error("the hoist binary {path} cannot be baked in: {message}")]
    Binary { path: PathBuf, message: String },
    #[error("{path} of {reference} could not be unpacked faithfully here ({fidelity:?}); a baked layer would carry the wrong owners: bake as root, or as a user with subordinate ids in /etc/subuid and /etc/subgid")]
    NotReproduced {
        reference: String,
        path: String,
        fidelity: crate::rootfs::Fidelity,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BakeError + '_ {
    move |source| BakeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The pulled axes and the static hoist binary to bake together.
pub struct BakeInputs<'a> {
    pub benchmark: &'a Pulled,
    pub agent: &'a Pulled,
    pub gateway: Option<&'a Pulled>,
    /// The static hoist binary, baked in at `/.hoist/hoist`.
    pub hoist_binary: &'a Path,
    /// The mtime of every appended entry and the `created` of the new
    /// history entries (seconds since the epoch).
    pub epoch: u64,
}

/// The combination image, complete in the store.
#[derive(Clone, Debug, Serialize)]
pub struct Baked {
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub config_digest: Digest,
    /// The appended layers, in order (agent, gateway, hoist).
    pub appended: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
    pub platform: crate::platform::Platform,
    #[serde(skip)]
    pub manifest: Manifest,
    #[serde(skip)]
    pub manifest_bytes: Vec<u8>,
    #[serde(skip)]
    pub config_bytes: Vec<u8>,
    /// Every layer's diff_id, the benchmark's first.
    #[serde(skip)]
    pub diff_ids: Vec<Digest>,
}

impl Baked {
    /// An image already complete in the store (a combination pulled from
    /// an `oci:` layout, say), in the form the writers take.
    pub fn from_pulled(store: &Store, p: &Pulled) -> Result<Baked, BakeError> {
        let manifest_bytes = store.read_blob(&p.manifest_digest, MAX_DOCUMENT_SIZE)?;
        let config_bytes = store.read_blob(&p.manifest.config.digest, MAX_DOCUMENT_SIZE)?;
        Ok(Baked {
            manifest_digest: p.manifest_digest.clone(),
            manifest_size: manifest_bytes.len() as u64,
            config_digest: p.manifest.config.digest.clone(),
            appended: vec![],
            annotations: p.manifest.annotations.clone().unwrap_or_default(),
            platform: p.platform.clone(),
            manifest: p.manifest.clone(),
            manifest_bytes,
            config_bytes,
            diff_ids: p.config.rootfs.diff_ids.clone(),
        })
    }

    /// The descriptor of the manifest, for an index.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.to_string(),
            digest: self.manifest_digest.clone(),
            size: self.manifest_size,
            platform: Some(self.platform.clone()),
            annotations: None,
            urls: None,
        }
    }
}

/// `SOURCE_DATE_EPOCH` when set to a number, else 0: the reproducible-builds
/// convention for the one timestamp a build writes.
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Build the combination image into `store`, and record it there as
/// `record_as` when given (so `hoist gc` keeps it).
pub fn bake(
    store: &Store,
    inputs: &BakeInputs<'_>,
    record_as: Option<&str>,
) -> Result<Baked, BakeError> {
    // gc must not remove a blob between its writing and the record.
    let _gc = store.gc_lock_shared()?;
    let mut axes = vec![("agent", inputs.agent, AGENT_PATH)];
    if let Some(g) = inputs.gateway {
        axes.push(("gateway", g, GATEWAY_PATH));
    }
    let mut appended = Vec::new();
    let mut history = Vec::new();
    for (_, img, path) in &axes {
        let layer = subtree_layer(store, img, path, inputs.epoch)?;
        history.push(Appended {
            diff_id: layer.diff_id.clone(),
            created_by: format!("hoist bake: /{path} of {}@{}", img.reference, img.digest),
        });
        appended.push(layer);
    }
    let hoist = hoist_layer(store, inputs.hoist_binary, inputs.epoch)?;
    history.push(Appended {
        diff_id: hoist.diff_id.clone(),
        created_by: format!(
            "hoist bake: /{HOIST_DIR}/hoist (hoist {})",
            env!("CARGO_PKG_VERSION")
        ),
    });
    appended.push(hoist);

    let b = inputs.benchmark;
    let mut labels = BTreeMap::new();
    for (axis, img, _) in std::iter::once(&("benchmark", b, "")).chain(&axes) {
        let (r, d) = image::axis_keys(axis);
        labels.insert(r, img.reference.clone());
        labels.insert(d, img.digest.to_string());
    }
    labels.insert(image::version_key(), env!("CARGO_PKG_VERSION").to_string());
    let base_config = store.read_blob(&b.manifest.config.digest, MAX_DOCUMENT_SIZE)?;
    let config_bytes = image::combined_config(
        &base_config,
        &history,
        &labels,
        &image::created_at(inputs.epoch),
    )
    .map_err(|message| BakeError::Config {
        reference: b.reference.clone(),
        message,
    })?;
    let config_digest = Digest::sha256_of(&config_bytes);
    store.put_blob(&config_digest, &config_bytes)?;
    let appended_desc: Vec<Descriptor> = appended.iter().map(Layer::descriptor).collect();
    let manifest = image::combined_manifest(
        config_digest.clone(),
        config_bytes.len() as u64,
        &b.manifest.layers,
        &appended_desc,
        labels.clone(),
    );
    let manifest_bytes = crate::json::to_vec(&manifest, "the combination's manifest")?;
    let manifest_digest = Digest::sha256_of(&manifest_bytes);
    store.put_blob(&manifest_digest, &manifest_bytes)?;
    let mut diff_ids = b.config.rootfs.diff_ids.clone();
    diff_ids.extend(appended.iter().map(|l| l.diff_id.clone()));
    let baked = Baked {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config_digest,
        appended: appended_desc,
        annotations: labels,
        platform: b.platform.clone(),
        manifest,
        manifest_bytes,
        config_bytes,
        diff_ids,
    };
    if let Some(name) = record_as {
        store.record(name, &baked.descriptor())?;
    }
    Ok(baked)
}

/// The layer holding one axis subtree (`opt/agent`, `opt/gateway`).
fn subtree_layer(store: &Store, img: &Pulled, path: &str, epoch: u64) -> Result<Layer, BakeError> {
    let (dir, fidelity) = ensure_subtree(store, img, path)?;
    if !fidelity.is_exact() {
        return Err(BakeError::NotReproduced {
            reference: img.reference.clone(),
            path: format!("/{path}"),
            fidelity,
        });
    }
    let (entries, sockets) = tar::read_tree(&dir, path, true).map_err(io_err(&dir))?;
    if sockets > 0 {
        tracing::warn!(reference = %img.reference, path, sockets, "sockets cannot be baked into a layer; left out");
    }
    layer::write_layer(store, epoch, |w| tar::write_entries(w, &entries))
}

/// The layer holding `/.hoist/` and `/.hoist/hoist` (0755 root), cached by
/// the binary's content: it is the largest layer and the same for every
/// combination.
fn hoist_layer(store: &Store, binary: &Path, epoch: u64) -> Result<Layer, BakeError> {
    let meta = std::fs::metadata(binary).map_err(io_err(binary))?;
    if !meta.is_file() {
        return Err(BakeError::Binary {
            path: binary.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let content = layer::file_digest(binary)?;
    let key = format!("hoist-binary {content} epoch {epoch}");
    layer::cached_layer(store, &key, || {
        layer::write_layer(store, epoch, |w| {
            use tar::{Kind, Meta};
            w.append(b".hoist/", &Meta::root(Kind::Dir, 0o755), None)?;
            let mut f = std::fs::File::open(binary)?;
            let size = f.metadata()?.len();
            w.append(
                b".hoist/hoist",
                &Meta::root(Kind::File(size), 0o755),
                Some(&mut f),
            )
        })
    })
}

/// Push the combination from the store to a registry: every blob the
/// registry lacks, then the manifest under the reference's tag.
pub async fn push(
    store: &Store,
    client: &Client,
    baked: &Baked,
    target: &RegistryRef,
) -> Result<Digest, BakeError> {
    let push_err = |source| BakeError::Push {
        reference: target.to_string(),
        source,
    };
    let mut blobs = vec![baked.manifest.config.clone()];
    blobs.extend(baked.manifest.layers.iter().cloned());
    for desc in &blobs {
        let path = store.blob_path(&desc.digest);
        if !store.has_blob(&desc.digest, desc.size) {
            return Err(StoreError::Missing {
                digest: desc.digest.clone(),
                store: store.root().to_path_buf(),
            }
            .into());
        }
        client
            .push_blob(target, desc, &path)
            .await
            .map_err(push_err)?;
    }
    client
        .push_manifest(target, OCI_MANIFEST, &baked.manifest_bytes)
        .await
        .map_err(push_err)
}
