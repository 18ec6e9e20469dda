//! `hoist eval --dry-run`: what an evaluation would pull, from manifests.
//!
//! For every distinct image the plan pins, its manifest: the store's copy
//! when it has one, else the registry's (or the `oci:` layout's) by the
//! pinned digest, an index resolved to the host's platform as a pull
//! resolves it, every document refused unless it hashes to its digest.
//! From the manifests alone: the unique layers and configs, which of them
//! the store has, and so the bytes to download. Nothing is written and no
//! blob is downloaded.
//!
//! What is unpacked follows from how crane mode uses each image: a
//! benchmark's layers go whole into the layer cache, one entry per layer;
//! an agent's or gateway's image gives only its `/opt/agent` or
//! `/opt/gateway` subtree, one entry per image. Each size says how it is
//! known ([`How`]):
//! - measured: the entry is in the store's cache already; its disk use;
//! - tar: the layer's uncompressed tar stream, exactly: an uncompressed
//!   layer's blob size, or a gzip layer's trailer (ISIZE, RFC 1952 §2.3.1,
//!   its last 4 bytes, read from the stored blob or the layout, or asked of
//!   the registry with a Range request). Disk use differs from it by the
//!   tar headers and block rounding;
//! - estimated: no trailer to read (zstd, a registry that ignores Range, a
//!   trailer no tar stream could have): the compressed size times the
//!   ratio of the layers whose trailers were read;
//! - bound: a subtree not yet extracted, at most its whole image unpacked
//!   (which the extraction holds in scratch while it runs).
//!
//! A trailer is not verified (only the whole blob could be): it feeds a
//! printed figure and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::Serialize;

use super::{EvalPlan, Pin};
use crate::digest::{Digest, DigestError};
use crate::manifest::{self, parse_document, Descriptor, Document, Manifest, MAX_DOCUMENT_SIZE};
use crate::platform::Platform;
use crate::pull::PullError;
use crate::reference::{Reference, ReferenceError, RegistryRef};
use crate::registry::{Client, Endpoint, RegistryError};
use crate::rootfs::{AGENT_PATH, GATEWAY_PATH};
use crate::store::Store;
use crate::unpack::Compression;

/// The `--json` document's schema.
pub const SCHEMA: &str = "hoist.dryrun/v1";

/// Unpacked per compressed byte for layers whose size cannot be read,
/// when no layer's could: gzip'd file system layers commonly unpack to
/// two to four times their size.
const DEFAULT_RATIO: f64 = 3.0;

/// Manifests and trailers asked for at once.
const CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("task {task}: {reference} was not resolved when the plan was made: {why}")]
    Unresolved {
        task: String,
        reference: String,
        why: String,
    },
    #[error("task {task}: {reference}: the planned digest {digest:?}: {source}")]
    BadDigest {
        task: String,
        reference: String,
        digest: String,
        #[source]
        source: DigestError,
    },
    #[error("task {task}: {source}")]
    Reference {
        task: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{reference}: cannot read its manifest")]
    Manifest {
        reference: String,
        #[source]
        source: PullError,
    },
    #[error("{reference}: layer {digest} cannot be fetched, so a pull would fail")]
    LayerRegistry {
        reference: String,
        digest: Digest,
        #[source]
        source: RegistryError,
    },
    #[error("{reference}: layer {digest} is not in the layout ({path}), so a pull would fail")]
    LayerLayout {
        reference: String,
        digest: Digest,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a size is known (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// A blob's size, from its manifest.
    Exact,
    Measured,
    Tar,
    Estimated,
    Bound,
}

/// The `--json` document (`hoist.dryrun/v1`); the CLI prints it as a table.
#[derive(Clone, Debug, Serialize)]
pub struct DryRun {
    pub schema: &'static str,
    /// `crane` or `container`, as the plan says.
    pub mode: String,
    pub tasks: usize,
    pub jobs: usize,
    /// The platform indexes were resolved to (the host's).
    pub platform: String,
    pub images: Vec<ImageLine>,
    /// Unique layers across every image.
    pub layers: Count,
    pub configs: Count,
    /// Of those layers and configs, the blobs the store has.
    pub stored: Count,
    /// And those it does not: what the evaluation downloads.
    pub download: Count,
    pub unpacked: Unpacked,
    pub peak_disk: PeakDisk,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub count: usize,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// One distinct image (by pinned digest; the first reference naming it).
#[derive(Clone, Debug, Serialize)]
pub struct ImageLine {
    #[serde(rename = "ref")]
    pub reference: String,
    /// The pinned digest (an index's, for a multi-platform image).
    pub digest: Digest,
    /// The host platform's manifest.
    pub manifest_digest: Digest,
    /// `benchmark`, `agent`, `gateway`: what the tasks use it as.
    pub roles: Vec<&'static str>,
    /// Tasks that use it.
    pub tasks: usize,
    pub layers: usize,
    /// Its config and layers, compressed, shared ones included.
    pub bytes: u64,
    /// Of those, what the store does not have.
    pub missing_bytes: u64,
}

/// The unpacked layers and subtrees the tasks need, by how each is known.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Unpacked {
    pub bytes: u64,
    /// Already in the store's caches (measured on disk).
    pub present_bytes: u64,
    /// Not yet: the sum of `tar_bytes`, `estimated_bytes`, `bound_bytes`.
    pub new_bytes: u64,
    pub measured_bytes: u64,
    pub tar_bytes: u64,
    pub estimated_bytes: u64,
    pub bound_bytes: u64,
    /// Unpacked per compressed byte, for the estimated layers.
    pub estimate_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeakDisk {
    /// The peak: `growth_bytes` (on top of what the store holds) without
    /// a limit, else the whole store's `max(limit, window_bytes)`.
    pub bytes: u64,
    /// `growth` or `max_store_size`.
    pub basis: &'static str,
    pub max_store_size: Option<u64>,
    /// How much the store grows if nothing is evicted: the downloads and
    /// the new unpacked layers and subtrees.
    pub growth_bytes: u64,
    /// `2 × jobs` (or every task, when fewer): the tasks whose images a
    /// size-limited evaluation holds at once, `jobs` running and the next
    /// `jobs` prefetched.
    pub window_tasks: usize,
    /// The most any `window_tasks` consecutive tasks (plan order) need in
    /// the store together: their blobs, unpacked layers and subtrees.
    pub window_bytes: u64,
    pub window_first_task: Option<String>,
    /// What no manifest tells.
    pub not_counted: &'static str,
}

const NOT_COUNTED: &str =
    "each running task's writable layer and output, which cannot be known in advance";

#[derive(Clone, Copy, Debug)]
pub struct DryRunOptions {
    /// Tasks run at once (`--jobs`).
    pub jobs: usize,
    pub max_store_size: Option<u64>,
}

/// What the plan's tasks would pull and unpack into `store`, from the
/// manifests alone. Reads the store, the registries and layouts; writes
/// nothing.
pub fn dry_run(
    store: &Store,
    client: &Client,
    rt: &tokio::runtime::Runtime,
    plan: &EvalPlan,
    opts: DryRunOptions,
) -> Result<DryRun, DryRunError> {
    let platform = Platform::host();
    let (wanted, task_images) = wanted_images(plan, store.root())?;
    let resolved = rt.block_on(resolve_all(store, client, &wanted, &platform))?;
    let images: Vec<Image> = wanted
        .into_iter()
        .zip(resolved)
        .map(|(w, r)| Image {
            wanted: w,
            manifest_digest: r.0,
            manifest: r.1,
        })
        .collect();
    let mut facts = local_facts(store, &images)?;
    let asks = remote_asks(&images, &facts);
    for (digest, tar) in rt.block_on(ask_trailers(client, &images, asks))? {
        facts.layer_tar.insert(digest, tar);
    }
    Ok(summarize(
        plan,
        &platform,
        &images,
        &task_images,
        &facts,
        opts,
    ))
}

/// How the tasks use an image, which decides what of it is unpacked.
#[derive(Clone, Debug, Default)]
struct Uses {
    benchmark: bool,
    /// `opt/agent`, `opt/gateway`: the subtrees taken from it.
    subtrees: BTreeSet<&'static str>,
    tasks: usize,
}

#[derive(Clone, Debug)]
struct Wanted {
    /// As the plan writes it.
    shown: String,
    /// Pinned to `digest` (a registry's; a layout is read by digest).
    reference: Reference,
    digest: Digest,
    uses: Uses,
}

struct Image {
    wanted: Wanted,
    manifest_digest: Digest,
    manifest: Manifest,
}

/// The plan's distinct images, by pinned digest, in the order first
/// used, and for each task the indices of its images; an image built
/// from a Dockerfile is read from the store at `store_root`, where the
/// plan put it.
fn wanted_images(
    plan: &EvalPlan,
    store_root: &Path,
) -> Result<(Vec<Wanted>, Vec<Vec<usize>>), DryRunError> {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut by_digest: HashMap<Digest, usize> = HashMap::new();
    let mut task_images = Vec::new();
    for task in &plan.tasks {
        let roles = [
            (Some(&task.benchmark), None),
            (Some(&task.agent), Some(AGENT_PATH)),
            (task.gateway.as_ref(), Some(GATEWAY_PATH)),
        ];
        let mut mine = Vec::new();
        for (pin, subtree) in roles {
            let Some(pin) = pin else { continue };
            let (reference, digest) = pinned(&task.id, pin, store_root)?;
            let i = *by_digest.entry(digest.clone()).or_insert_with(|| {
                wanted.push(Wanted {
                    shown: pin.reference.clone(),
                    reference,
                    digest,
                    uses: Uses::default(),
                });
                wanted.len() - 1
            });
            let uses = &mut wanted[i].uses;
            match subtree {
                None => uses.benchmark = true,
                Some(path) => {
                    uses.subtrees.insert(path);
                }
            }
            if !mine.contains(&i) {
                uses.tasks += 1;
                mine.push(i);
            }
        }
        task_images.push(mine);
    }
    Ok((wanted, task_images))
}

/// A pin's reference, pinned to its digest.
fn pinned(task: &str, pin: &Pin, store_root: &Path) -> Result<(Reference, Digest), DryRunError> {
    let text = pin
        .digest
        .as_deref()
        .ok_or_else(|| DryRunError::Unresolved {
            task: task.to_string(),
            reference: pin.reference.clone(),
            why: pin
                .unresolved
                .clone()
                .unwrap_or_else(|| "the plan has no digest for it".into()),
        })?;
    let digest: Digest = text.parse().map_err(|source| DryRunError::BadDigest {
        task: task.to_string(),
        reference: pin.reference.clone(),
        digest: text.to_string(),
        source,
    })?;
    if pin.reference.starts_with(crate::build::PREFIX) {
        let store = crate::reference::LayoutRef {
            path: store_root.to_path_buf(),
            tag: None,
            digest: Some(digest.clone()),
        };
        return Ok((Reference::Layout(store), digest));
    }
    let mut reference: Reference =
        pin.reference
            .parse()
            .map_err(|source| DryRunError::Reference {
                task: task.to_string(),
                source,
            })?;
    if let Reference::Registry(r) = &mut reference {
        r.digest = Some(digest.clone());
    }
    Ok((reference, digest))
}

async fn resolve_all(
    store: &Store,
    client: &Client,
    wanted: &[Wanted],
    platform: &Platform,
) -> Result<Vec<(Digest, Manifest)>, DryRunError> {
    stream::iter(wanted.iter().map(|w| async move {
        resolve_manifest(store, client, w, platform)
            .await
            .map_err(|source| DryRunError::Manifest {
                reference: w.shown.clone(),
                source,
            })
    }))
    .buffered(CONCURRENCY)
    .try_collect()
    .await
}

/// The platform manifest a pull of `w` would use, and its digest.
async fn resolve_manifest(
    store: &Store,
    client: &Client,
    w: &Wanted,
    platform: &Platform,
) -> Result<(Digest, Manifest), PullError> {
    let parse = |bytes: &[u8], ctype: Option<&str>| {
        parse_document(bytes, ctype).map_err(|source| PullError::Manifest {
            reference: w.shown.clone(),
            source,
        })
    };
    let (bytes, ctype) = document(store, client, w, &w.digest).await?;
    let (digest, manifest) = match parse(&bytes, ctype.as_deref())? {
        Document::Manifest(m) => (w.digest.clone(), m),
        Document::Index(index) => {
            let chosen = crate::pull::platform_entry(&index, platform, &w.shown)?;
            let (b, ct) = document(store, client, w, &chosen.digest).await?;
            let ct = ct.or(Some(chosen.media_type.clone()));
            match parse(&b, ct.as_deref())? {
                Document::Manifest(m) => (chosen.digest.clone(), m),
                Document::Index(_) => {
                    return Err(PullError::NestedIndex {
                        reference: w.shown.clone(),
                    })
                }
            }
        }
    };
    let config = manifest.config.media_type.as_str();
    if config != manifest::OCI_CONFIG && config != manifest::DOCKER_CONFIG {
        return Err(PullError::NotAnImage {
            reference: w.shown.clone(),
            media_type: config.to_string(),
        });
    }
    Ok((digest, manifest))
}

/// A manifest or index by digest: the store's copy when it has one (read
/// back verified), else the registry's or the layout's, refused unless it
/// hashes to `digest`.
async fn document(
    store: &Store,
    client: &Client,
    w: &Wanted,
    digest: &Digest,
) -> Result<(Vec<u8>, Option<String>), PullError> {
    if let Ok(bytes) = store.read_blob(digest, MAX_DOCUMENT_SIZE) {
        return Ok((bytes, None));
    }
    match &w.reference {
        Reference::Registry(r) => {
            let m = client.get_manifest(r, &digest.to_string()).await?;
            if m.digest != *digest {
                return Err(PullError::PinnedMismatch {
                    reference: w.shown.clone(),
                    expected: digest.clone(),
                    found: m.digest,
                });
            }
            Ok((m.bytes, m.content_type))
        }
        Reference::Layout(l) => Store::view(&l.path)
            .read_blob(digest, MAX_DOCUMENT_SIZE)
            .map(|b| (b, None))
            .map_err(|source| PullError::LayoutBlob {
                path: l.path.clone(),
                digest: digest.clone(),
                source,
            }),
    }
}

/// What the store and the layouts tell without a network.
#[derive(Debug, Default)]
struct Facts {
    /// Blobs (layers and configs) the store has.
    present: HashSet<Digest>,
    /// Layers unpacked in the layer cache: their disk use.
    layer_cached: HashMap<Digest, u64>,
    /// Subtrees extracted, by cache key: their disk use.
    subtree_cached: HashMap<Digest, u64>,
    /// Layers' tar stream sizes, where known.
    layer_tar: HashMap<Digest, u64>,
}

/// The store's blobs and cache entries for these images, and the tar
/// sizes of layers that are uncompressed or whose gzip trailer is on this
/// machine (a stored blob, a layout's).
fn local_facts(store: &Store, images: &[Image]) -> Result<Facts, DryRunError> {
    let mut facts = Facts::default();
    let caches = Caches::of(store);
    for img in images {
        let m = &img.manifest;
        for blob in std::iter::once(&m.config).chain(&m.layers) {
            if store.has_blob(&blob.digest, blob.size) {
                facts.present.insert(blob.digest.clone());
            }
        }
        for layer in &m.layers {
            local_layer(store, &caches, img, layer, &mut facts)?;
        }
        for path in &img.wanted.uses.subtrees {
            let key = subtree_key(&img.manifest_digest, path);
            if let Some(du) = caches.subtree(&key) {
                facts.subtree_cached.insert(key, du);
            }
        }
    }
    Ok(facts)
}

fn local_layer(
    store: &Store,
    caches: &Caches,
    img: &Image,
    layer: &Descriptor,
    facts: &mut Facts,
) -> Result<(), DryRunError> {
    let d = &layer.digest;
    if facts.layer_cached.contains_key(d) || facts.layer_tar.contains_key(d) {
        return Ok(());
    }
    if let Some(du) = caches.layer(d) {
        facts.layer_cached.insert(d.clone(), du);
        return Ok(());
    }
    let trailer = match Compression::from_media_type(&layer.media_type) {
        Some(Compression::None) => {
            facts.layer_tar.insert(d.clone(), layer.size);
            return Ok(());
        }
        Some(Compression::Gzip) => true,
        _ => false,
    };
    let tail = if !trailer {
        None
    } else if facts.present.contains(d) {
        let path = store.blob_path(d);
        file_tail(&path, layer.size).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the gzip trailer; estimating");
            None
        })
    } else if let Reference::Layout(l) = &img.wanted.reference {
        let path = Store::view(&l.path).blob_path(d);
        file_tail(&path, layer.size).map_err(|source| DryRunError::LayerLayout {
            reference: img.wanted.shown.clone(),
            digest: d.clone(),
            path,
            source,
        })?
    } else {
        None
    };
    if let Some(tar) = tail.and_then(|t| gzip_tar_size(t, layer.size)) {
        facts.layer_tar.insert(d.clone(), tar);
    }
    Ok(())
}

/// The last 4 bytes of the file at `path`, when it has the blob's `size`
/// (`None` otherwise: a partial or foreign file says nothing).
fn file_tail(path: &Path, size: u64) -> std::io::Result<Option<[u8; 4]>> {
    let mut f = File::open(path)?;
    if f.metadata()?.len() != size || size < 4 {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(size - 4))?;
    let mut tail = [0u8; 4];
    f.read_exact(&mut tail)?;
    Ok(Some(tail))
}

/// The tar stream size a gzip blob of `compressed` bytes holds, from its
/// trailer's ISIZE (the size mod 2^32): the smallest size with those low
/// bits that deflate could have made so many bytes from (it expands
/// nothing by more than its 5-byte stored-block headers, and gzip's
/// header and trailer are small). `None` when no tar stream has that
/// size: zero (an empty last member, as eStargz ends with) or not whole
/// 512-byte blocks (several members: the trailer is only the last's), or
/// past deflate's 1032:1. A layer that unpacks to 4 GiB or more and
/// compresses well enough to keep its wrapped ISIZE above that floor is
/// counted 4 GiB short per wrap; no trailer can tell.
pub(crate) fn gzip_tar_size(tail: [u8; 4], compressed: u64) -> Option<u64> {
    const WRAP: u64 = 1 << 32;
    let isize = u64::from(u32::from_le_bytes(tail));
    if isize == 0 || isize % 512 != 0 {
        return None;
    }
    let floor = compressed.saturating_sub(compressed / 100 + 70_000);
    // The fewest wraps that reach the floor, counted rather than added
    // one by one: a registry may state a size near u64::MAX.
    let wraps = floor.saturating_sub(isize).div_ceil(WRAP);
    let size = isize.saturating_add(wraps.saturating_mul(WRAP));
    (size <= compressed.saturating_mul(1032)).then_some(size)
}

/// The gzip layers whose tar size only the registry can tell: not in the
/// store, not unpacked, from a registry image (one that lists them).
fn remote_asks(images: &[Image], facts: &Facts) -> Vec<(usize, Descriptor)> {
    let mut asked = HashSet::new();
    let mut asks = Vec::new();
    for (i, img) in images.iter().enumerate() {
        if !matches!(img.wanted.reference, Reference::Registry(_)) {
            continue;
        }
        for layer in &img.manifest.layers {
            let d = &layer.digest;
            let known = facts.layer_cached.contains_key(d)
                || facts.layer_tar.contains_key(d)
                || facts.present.contains(d);
            let gzip = Compression::from_media_type(&layer.media_type) == Some(Compression::Gzip);
            if !known && gzip && asked.insert(d.clone()) {
                asks.push((i, layer.clone()));
            }
        }
    }
    asks
}

/// Each asked layer's tar size from its trailer, where the registry
/// answers the Range request. A layer the registry does not have is an
/// error (a pull would fail); any other failure leaves it to estimation.
async fn ask_trailers(
    client: &Client,
    images: &[Image],
    asks: Vec<(usize, Descriptor)>,
) -> Result<Vec<(Digest, u64)>, DryRunError> {
    let found: Vec<Option<(Digest, u64)>> = stream::iter(asks.into_iter().map(|(i, layer)| {
        let img = &images[i];
        async move {
            let Reference::Registry(r) = &img.wanted.reference else {
                return Ok(None);
            };
            match registry_tail(client, r, &layer).await {
                Ok(tail) => Ok(tail
                    .and_then(|t| gzip_tar_size(t, layer.size))
                    .map(|tar| (layer.digest.clone(), tar))),
                Err(source @ RegistryError::NotFound { .. }) => Err(DryRunError::LayerRegistry {
                    reference: img.wanted.shown.clone(),
                    digest: layer.digest.clone(),
                    source,
                }),
                Err(e) => {
                    tracing::warn!(reference = %img.wanted.shown, layer = %layer.digest, error = %e, "cannot read the gzip trailer; estimating");
                    Ok(None)
                }
            }
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect()
    .await?;
    Ok(found.into_iter().flatten().collect())
}

/// The blob's last 4 bytes, by a Range request to the endpoints a pull
/// would use, in order. `None` when the registry answers with anything
/// but that range (a 200 with the whole blob is dropped unread).
async fn registry_tail(
    client: &Client,
    r: &RegistryRef,
    layer: &Descriptor,
) -> Result<Option<[u8; 4]>, RegistryError> {
    if layer.size < 4 {
        return Ok(None);
    }
    let endpoints = client.endpoints(r, false)?;
    let mut last = None;
    for ep in &endpoints {
        match tail_once(client, r, ep, layer).await {
            Ok(tail) => return Ok(tail),
            Err(e) if ep.is_mirror => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(RegistryError::Blocked {
        reference: r.to_string(),
    }))
}

async fn tail_once(
    client: &Client,
    r: &RegistryRef,
    ep: &Endpoint,
    layer: &Descriptor,
) -> Result<Option<[u8; 4]>, RegistryError> {
    let start = layer.size - 4;
    let path = format!("v2/{}/blobs/{}", ep.repository, layer.digest);
    let mut headers = HeaderMap::new();
    // From `start` to the end: the 4 bytes, in the form hoist's resumed
    // downloads already ask every registry for.
    let range = format!("bytes={start}-");
    let value = HeaderValue::from_str(&range).map_err(|_| RegistryError::Protocol {
        url: ep.base.clone(),
        message: format!("bad range {range:?}"),
    })?;
    headers.insert(RANGE, value);
    let mut resp = client.send(r, ep, &path, headers).await?;
    let url = resp.url().clone();
    let answered = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(&format!("bytes {start}-")));
    if resp.status() != StatusCode::PARTIAL_CONTENT || !answered {
        return Ok(None);
    }
    // Read no more than asked for, whatever the registry sends.
    let stall = client.options().stall_timeout;
    let mut tail = Vec::new();
    loop {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| RegistryError::Stalled {
                url: url.clone(),
                after: stall,
            })?
            .map_err(|source| RegistryError::Http {
                url: url.clone(),
                source,
            })?;
        match chunk {
            Some(c) if tail.len() + c.len() <= 4 => tail.extend_from_slice(&c),
            Some(_) => return Ok(None),
            None => return Ok(<[u8; 4]>::try_from(&tail[..]).ok()),
        }
    }
}

/// The layer and subtree caches this process's runs use (their flavour:
/// an entry another flavour made is not one these runs can use).
struct Caches {
    layers: PathBuf,
    subtrees: PathBuf,
}

impl Caches {
    fn of(store: &Store) -> Caches {
        Caches {
            layers: crate::rootfs::layers_dir(store),
            subtrees: crate::rootfs::subtrees_dir(store),
        }
    }

    fn layer(&self, d: &Digest) -> Option<u64> {
        entry_usage(&self.layers.join(d.algorithm().as_str()).join(d.hex()))
    }

    fn subtree(&self, key: &Digest) -> Option<u64> {
        entry_usage(&self.subtrees.join(key.hex()))
    }
}

/// The subtree cache's key for `path` of the image `manifest`.
fn subtree_key(manifest: &Digest, path: &str) -> Digest {
    Digest::sha256_of(format!("{manifest}\n{path}").as_bytes())
}

/// A cache entry's disk use, if it is one: a directory itself, never a
/// link (as the cache itself requires).
fn entry_usage(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir())
        .then(|| crate::rootfs::evict::disk_usage(path))
}

/// What a task needs in the store: a blob, an unpacked layer (by its
/// blob's digest) or a subtree (by its cache key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Unit {
    Blob(Digest),
    Layer(Digest),
    Subtree(Digest),
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sized {
    bytes: u64,
    /// Already in the store.
    present: bool,
    how: How,
}

/// Every figure of the report, from the facts gathered: pure.
fn summarize(
    plan: &EvalPlan,
    platform: &Platform,
    images: &[Image],
    task_images: &[Vec<usize>],
    facts: &Facts,
    opts: DryRunOptions,
) -> DryRun {
    let ratio = estimate_ratio(images, facts);
    let mut units: BTreeMap<Unit, Sized> = BTreeMap::new();
    let image_units: Vec<Vec<Unit>> = images
        .iter()
        .map(|img| units_of(img, facts, ratio, &mut units))
        .collect();
    let t = Totals::of(images, &units, ratio);
    let task_units: Vec<BTreeSet<&Unit>> = task_images
        .iter()
        .map(|is| is.iter().flat_map(|&i| &image_units[i]).collect())
        .collect();
    let width = opts
        .jobs
        .max(1)
        .saturating_mul(2)
        .min(task_units.len())
        .max(1);
    let (window_bytes, first) = window_peak(&task_units, |u| units[*u].bytes, width);
    let growth = t.download.bytes.saturating_add(t.unpacked.new_bytes);
    let (bytes, basis) = match opts.max_store_size {
        None => (growth, "growth"),
        Some(max) => (max.max(window_bytes), "max_store_size"),
    };
    DryRun {
        schema: SCHEMA,
        mode: plan.mode.clone(),
        tasks: plan.tasks.len(),
        jobs: opts.jobs,
        platform: platform.to_string(),
        images: images
            .iter()
            .map(|img| image_line(img, &facts.present))
            .collect(),
        layers: t.layers,
        configs: t.configs,
        stored: t.stored,
        download: t.download,
        unpacked: t.unpacked,
        peak_disk: PeakDisk {
            bytes,
            basis,
            max_store_size: opts.max_store_size,
            growth_bytes: growth,
            window_tasks: width,
            window_bytes,
            window_first_task: first.and_then(|k| plan.tasks.get(k)).map(|t| t.id.clone()),
            not_counted: NOT_COUNTED,
        },
    }
}

/// The whole evaluation's units, each counted once.
#[derive(Default)]
struct Totals {
    layers: Count,
    configs: Count,
    stored: Count,
    download: Count,
    unpacked: Unpacked,
}

impl Totals {
    fn of(images: &[Image], units: &BTreeMap<Unit, Sized>, ratio: f64) -> Totals {
        let mut t = Totals::default();
        t.unpacked.estimate_ratio = ratio;
        let layer_digests: HashSet<&Digest> = images
            .iter()
            .flat_map(|i| i.manifest.layers.iter().map(|l| &l.digest))
            .collect();
        for (unit, s) in units {
            let Unit::Blob(d) = unit else {
                t.unpacked.add(s);
                continue;
            };
            if layer_digests.contains(d) {
                t.layers.add(s.bytes);
            } else {
                t.configs.add(s.bytes);
            }
            if s.present {
                t.stored.add(s.bytes);
            } else {
                t.download.add(s.bytes);
            }
        }
        t
    }
}

impl Unpacked {
    /// Saturating, as every sum here: a manifest states any size.
    fn add(&mut self, s: &Sized) {
        let add = |total: &mut u64| *total = total.saturating_add(s.bytes);
        add(&mut self.bytes);
        add(if s.present {
            &mut self.present_bytes
        } else {
            &mut self.new_bytes
        });
        add(match s.how {
            How::Measured => &mut self.measured_bytes,
            How::Tar | How::Exact => &mut self.tar_bytes,
            How::Estimated => &mut self.estimated_bytes,
            How::Bound => &mut self.bound_bytes,
        });
    }
}

/// Unpacked per compressed byte over the layers whose tar size is known
/// (not those measured on disk: a different quantity), else the default.
fn estimate_ratio(images: &[Image], facts: &Facts) -> f64 {
    let mut seen = HashSet::new();
    let (mut tar, mut compressed) = (0u64, 0u64);
    for layer in images.iter().flat_map(|i| &i.manifest.layers) {
        if let Some(t) = facts.layer_tar.get(&layer.digest) {
            if seen.insert(&layer.digest) {
                tar = tar.saturating_add(*t);
                compressed = compressed.saturating_add(layer.size);
            }
        }
    }
    if compressed == 0 {
        DEFAULT_RATIO
    } else {
        tar as f64 / compressed as f64
    }
}

/// A layer's unpacked size and how it is known.
fn layer_size(layer: &Descriptor, facts: &Facts, ratio: f64) -> Sized {
    if let Some(&du) = facts.layer_cached.get(&layer.digest) {
        return Sized {
            bytes: du,
            present: true,
            how: How::Measured,
        };
    }
    match facts.layer_tar.get(&layer.digest) {
        Some(&tar) => Sized {
            bytes: tar,
            present: false,
            how: How::Tar,
        },
        None => Sized {
            bytes: (layer.size as f64 * ratio).round() as u64,
            present: false,
            how: How::Estimated,
        },
    }
}

/// What `img` puts in the store, each unit sized into `units`.
fn units_of(
    img: &Image,
    facts: &Facts,
    ratio: f64,
    units: &mut BTreeMap<Unit, Sized>,
) -> Vec<Unit> {
    let m = &img.manifest;
    let mut mine = Vec::new();
    for blob in std::iter::once(&m.config).chain(&m.layers) {
        let unit = Unit::Blob(blob.digest.clone());
        units.entry(unit.clone()).or_insert(Sized {
            bytes: blob.size,
            present: facts.present.contains(&blob.digest),
            how: How::Exact,
        });
        mine.push(unit);
    }
    if img.wanted.uses.benchmark {
        for layer in &m.layers {
            let unit = Unit::Layer(layer.digest.clone());
            units
                .entry(unit.clone())
                .or_insert_with(|| layer_size(layer, facts, ratio));
            mine.push(unit);
        }
    }
    for path in &img.wanted.uses.subtrees {
        let key = subtree_key(&img.manifest_digest, path);
        let size = match facts.subtree_cached.get(&key) {
            Some(&du) => Sized {
                bytes: du,
                present: true,
                how: How::Measured,
            },
            None => Sized {
                bytes: m
                    .layers
                    .iter()
                    .map(|l| layer_size(l, facts, ratio).bytes)
                    .fold(0, u64::saturating_add),
                present: false,
                how: How::Bound,
            },
        };
        let unit = Unit::Subtree(key);
        units.entry(unit.clone()).or_insert(size);
        mine.push(unit);
    }
    mine
}

fn image_line(img: &Image, present: &HashSet<Digest>) -> ImageLine {
    let m = &img.manifest;
    let blobs = || std::iter::once(&m.config).chain(&m.layers);
    let uses = &img.wanted.uses;
    let mut roles = Vec::new();
    if uses.benchmark {
        roles.push("benchmark");
    }
    if uses.subtrees.contains(AGENT_PATH) {
        roles.push("agent");
    }
    if uses.subtrees.contains(GATEWAY_PATH) {
        roles.push("gateway");
    }
    ImageLine {
        reference: img.wanted.shown.clone(),
        digest: img.wanted.digest.clone(),
        manifest_digest: img.manifest_digest.clone(),
        roles,
        tasks: uses.tasks,
        layers: m.layers.len(),
        bytes: blobs().map(|b| b.size).fold(0, u64::saturating_add),
        missing_bytes: blobs()
            .filter(|b| !present.contains(&b.digest))
            .map(|b| b.size)
            .fold(0, u64::saturating_add),
    }
}

/// The most any `width` consecutive tasks need together (each unit they
/// share counted once), and the index of the first such task: `None`
/// when there is no task.
fn window_peak<U: Ord + Clone>(
    tasks: &[BTreeSet<U>],
    size: impl Fn(&U) -> u64,
    width: usize,
) -> (u64, Option<usize>) {
    let mut held: BTreeMap<U, usize> = BTreeMap::new();
    let mut total = 0u64;
    let mut best = (0, None);
    for (k, units) in tasks.iter().enumerate() {
        for u in units {
            let n = held.entry(u.clone()).or_insert(0);
            if *n == 0 {
                total = total.saturating_add(size(u));
            }
            *n += 1;
        }
        if k >= width {
            for u in &tasks[k - width] {
                if let Some(n) = held.get_mut(u) {
                    *n -= 1;
                    if *n == 0 {
                        total = total.saturating_sub(size(u));
                        held.remove(u);
                    }
                }
            }
        }
        if k + 1 >= width.min(tasks.len()) && (best.1.is_none() || total > best.0) {
            best = (total, Some((k + 1).saturating_sub(width)));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::PlannedTask;

    fn isize_of(n: u64) -> [u8; 4] {
        ((n % (1 << 32)) as u32).to_le_bytes()
    }

    #[test]
    fn a_gzip_trailer_gives_the_tar_size() {
        assert_eq!(
            gzip_tar_size(isize_of(278_538_240), 109_139_239),
            Some(278_538_240)
        );
        // Incompressible: a little smaller than the blob is still itself.
        assert_eq!(gzip_tar_size(isize_of(10_240), 10_300), Some(10_240));
    }

    #[test]
    fn a_wrapped_trailer_is_unwrapped() {
        // 5.5 GiB that compress to 2 GiB: ISIZE keeps 1.5 GiB.
        let real = (11u64 << 30) / 2;
        assert_eq!(gzip_tar_size(isize_of(real), 2 << 30), Some(real));
    }

    #[test]
    fn a_size_near_u64_max_is_unwrapped_at_once() {
        // A registry may state any size: counted, not looped up to.
        let got = gzip_tar_size(isize_of(512), u64::MAX).unwrap();
        let floor = u64::MAX - u64::MAX / 100 - 70_000;
        assert!(got >= floor && got - floor < 1 << 32, "{got}");
        assert_eq!(got % (1 << 32), 512);
    }

    #[test]
    fn a_trailer_no_tar_stream_has_is_refused() {
        // eStargz ends with an empty member; several members leave the
        // last one's size; an impossible ratio.
        assert_eq!(gzip_tar_size(isize_of(0), 5_000_000), None);
        assert_eq!(gzip_tar_size(isize_of(1_000_001), 400_000), None);
        assert_eq!(gzip_tar_size(isize_of(1 << 20), 100), None);
    }

    fn set(v: &[&'static str]) -> BTreeSet<&'static str> {
        v.iter().copied().collect()
    }

    #[test]
    fn the_window_counts_shared_units_once() {
        let size = |u: &&str| match *u {
            "base" => 100,
            "big" => 50,
            _ => 1,
        };
        let tasks = vec![
            set(&["base", "a"]),
            set(&["base", "b"]),
            set(&["big", "c"]),
            set(&["base", "d"]),
        ];
        assert_eq!(window_peak(&tasks, size, 1), (101, Some(0)));
        assert_eq!(window_peak(&tasks, size, 2), (152, Some(1)));
        assert_eq!(window_peak(&tasks, size, 3), (153, Some(0)));
        assert_eq!(window_peak(&tasks, size, 4), (154, Some(0)));
        assert_eq!(window_peak::<&str>(&[], size, 2), (0, None));
    }

    fn pin(r: &str, hex: char) -> Pin {
        Pin {
            reference: r.into(),
            digest: Some(format!("sha256:{}", hex.to_string().repeat(64))),
            unresolved: None,
        }
    }

    fn plan(tasks: Vec<PlannedTask>) -> EvalPlan {
        EvalPlan {
            schema: crate::eval::PLAN_SCHEMA.into(),
            created_at: String::new(),
            mode: "crane".into(),
            shard: None,
            total_tasks: tasks.len(),
            tasks,
        }
    }

    fn task(id: &str, bench: Pin, agent: Pin) -> PlannedTask {
        PlannedTask {
            id: id.into(),
            benchmark: bench,
            agent,
            gateway: None,
            agent_timeout_sec: None,
        }
    }

    #[test]
    fn images_are_distinct_by_digest_with_their_uses() {
        let p = plan(vec![
            task("t1", pin("r.example/b1", 'a'), pin("r.example/agent", 'c')),
            task(
                "t2",
                pin("r.example/b2", 'b'),
                pin("r.example/agent:v1", 'c'),
            ),
        ]);
        let (wanted, tasks) = wanted_images(&p, Path::new("/store")).unwrap();
        assert_eq!(wanted.len(), 3);
        assert_eq!(tasks, vec![vec![0, 1], vec![2, 1]]);
        let agent = &wanted[1];
        assert_eq!(agent.shown, "r.example/agent");
        assert!(!agent.uses.benchmark);
        assert_eq!(agent.uses.subtrees, set(&[AGENT_PATH]));
        assert_eq!(agent.uses.tasks, 2);
        match &agent.reference {
            Reference::Registry(r) => assert_eq!(r.digest.as_ref(), Some(&agent.digest)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unresolved_image_is_an_error_naming_it() {
        let mut bad = pin("r.example/gone", 'a');
        bad.digest = None;
        bad.unresolved = Some("not found".into());
        let p = plan(vec![task("t1", bad, pin("r.example/agent", 'c'))]);
        let e = wanted_images(&p, Path::new("/store"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.example/gone") && e.contains("not found"),
            "{e}"
        );
    }
}
