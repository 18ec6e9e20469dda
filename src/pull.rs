//! `hoist pull`: resolve a reference to one platform's manifest and bring
//! every blob it needs into the store, verified. Works for registries and
//! for `oci:` layouts (which are read as untrusted as a registry is).

use std::collections::BTreeMap;
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
    /// The platform wanted: an index's entry for it is chosen, and an
    /// image of another platform is refused. The host's when `None`.
    pub platform: Option<Platform>,
    /// Blobs downloaded at once.
    pub jobs: usize,
    /// When the registry is asked.
    pub policy: PullPolicy,
}

impl Default for PullOptions {
    /// A pull asks the registry, as `hoist pull` does; the commands that
    /// run images choose with `--pull` (missing by default).
    fn default() -> Self {
        PullOptions {
            platform: None,
            jobs: 4,
            policy: PullPolicy::Always,
        }
    }
}

/// When a pull asks the registry, as podman's and docker's `--pull`.
/// A reference by digest the store holds complete never needs the
/// registry, whatever the policy: its bytes cannot have changed. `oci:`
/// layouts are on disk and always read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// A tag the store holds complete for the wanted platform is used as
    /// stored, without asking the registry; anything else is pulled.
    #[default]
    Missing,
    /// Every tag is resolved at the registry.
    Always,
    /// Only what the store holds; the registry is never asked.
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

/// The annotation of a store entry that records what its name resolved to
/// (an index, or the manifest itself).
pub const RESOLVED_FROM: &str = "io.github.hoist.resolved-from";

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
    /// The tag was resolved from the store (the digest it had when it was
    /// pulled), without asking the registry.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_store: bool,
    /// For an image built from a Dockerfile (`dockerfile:PATH`): the
    /// digest of its build inputs, which `hoist.lock` records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_inputs: Option<Digest>,
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
    #[error("{reference} is for platform {found}, not this host's {wanted}; hoist never emulates another platform (pass --platform {found} to pull it for another machine)")]
    PlatformMismatch {
        reference: String,
        wanted: Platform,
        found: Platform,
    },
    #[error("{reference}: image platform {found} does not match the requested {wanted}")]
    RequestedPlatform {
        reference: String,
        wanted: Platform,
        found: Platform,
    },
    #[error("{reference} is not in the store{for_platform}, and --pull never does not ask the registry; pull it first (hoist pull {reference}), or use --pull missing")]
    NotStored {
        reference: String,
        for_platform: String,
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

    /// An image `--pull never` cannot have: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, PullError::NotStored { .. })
    }
}

/// Where a pull's documents and blobs come from.
enum Source<'a> {
    /// `offline`: everything must come from the store.
    Registry {
        client: &'a Client,
        r: &'a RegistryRef,
        offline: bool,
    },
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
        if let (Source::Registry { .. }, Some(digest)) = (self, pinned) {
            if let Ok(bytes) = store.read_blob(digest, MAX_DOCUMENT_SIZE) {
                return Ok((bytes, None, digest.clone()));
            }
        }
        match self {
            Source::Registry {
                r, offline: true, ..
            } => Err(PullError::NotStored {
                reference: r.to_string(),
                for_platform: String::new(),
            }),
            Source::Registry { client, r, .. } => {
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

/// What a reference resolved to, without pulling it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    /// A tag found in the store (as `--pull missing` or `never` allow),
    /// the registry not asked.
    pub from_store: bool,
}

/// The digest `reference` resolves to now, without pulling it: a
/// registry's manifest (one request; a pinned reference is its digest;
/// a tag the store holds, as `opts.policy` allows), or a layout's
/// `index.json` entry. `hoist eval` pins its plan so.
pub async fn resolve(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Resolved, PullError> {
    let asked = |digest| Resolved {
        digest,
        from_store: false,
    };
    let r = match reference {
        Reference::Layout(l) => return Ok(asked(layout_top(l)?.digest)),
        Reference::Registry(r) => r,
    };
    if let Some(d) = &r.digest {
        return Ok(asked(d.clone()));
    }
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let stored = match opts.policy {
        PullPolicy::Always => None,
        PullPolicy::Missing | PullPolicy::Never => stored_tag(store, r, &wanted).await?,
    };
    match (opts.policy, stored) {
        (_, Some(digest)) => Ok(Resolved {
            digest,
            from_store: true,
        }),
        (PullPolicy::Never, None) => Err(not_stored(r, &wanted)),
        _ => Ok(asked(
            client.get_manifest(r, &r.manifest_ref()).await?.digest,
        )),
    }
}

fn not_stored(r: &RegistryRef, wanted: &Platform) -> PullError {
    PullError::NotStored {
        reference: r.to_string(),
        for_platform: format!(" for {wanted}"),
    }
}

/// What `r`'s tag resolved to when the store last pulled it for
/// `wanted`, if the store still holds all of it.
pub async fn stored_tag(
    store: &Store,
    r: &RegistryRef,
    wanted: &Platform,
) -> Result<Option<Digest>, PullError> {
    let (store, name, wanted) = (store.clone(), r.store_name(), wanted.clone());
    blocking(move || {
        let Some(entry) = store.lookup(&name)? else {
            return Ok(None);
        };
        if !entry.platform.as_ref().is_some_and(|p| wanted.matches(p)) {
            return Ok(None);
        }
        let top = entry
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESOLVED_FROM))
            .and_then(|d| d.parse::<Digest>().ok())
            .unwrap_or(entry.digest);
        Ok(stored_complete(&store, &top, &wanted).then_some(top))
    })
    .await
}

/// Whether the store holds every blob of `top` for `wanted`: the
/// document, the platform's manifest under an index, its config and
/// layers.
pub fn stored_complete(store: &Store, top: &Digest, wanted: &Platform) -> bool {
    let read = |d: &Digest| {
        let bytes = store.read_blob(d, MAX_DOCUMENT_SIZE).ok()?;
        parse_document(&bytes, None).ok()
    };
    let manifest = match read(top) {
        Some(Document::Manifest(m)) => m,
        Some(Document::Index(index)) => {
            match choose_platform(&index.manifests, wanted).and_then(|entry| read(&entry.digest)) {
                Some(Document::Manifest(m)) => m,
                _ => return false,
            }
        }
        None => return false,
    };
    std::iter::once(&manifest.config)
        .chain(&manifest.layers)
        .all(|b| store.has_blob(&b.digest, b.size))
}

/// Run blocking file work off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PullError> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Join(e.to_string()))?
}

/// Pull `reference` into `store`.
pub async fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, PullError> {
    pull_as(store, client, reference, opts, progress, None).await
}

/// The name and annotations an image is recorded under in the store
/// instead of its reference's own (an image built from a Dockerfile,
/// imported from a layout that does not outlive the build).
#[derive(Clone, Debug)]
pub struct Record {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

/// [`pull`], recorded as `record` says when given.
pub async fn pull_as(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
    record: Option<Record>,
) -> Result<Pulled, PullError> {
    let _gc_guard = {
        let store = store.clone();
        blocking(move || Ok(store.gc_lock_shared()?)).await?
    };
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let mut from_store = false;
    let (source, top_ref, name, pinned) = match reference {
        Reference::Registry(r) => {
            let (pinned, offline) = registry_pin(store, r, &wanted, opts.policy).await?;
            from_store = offline && r.digest.is_none();
            (
                Source::Registry { client, r, offline },
                r.manifest_ref(),
                r.store_name(),
                pinned,
            )
        }
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
    // The config first: its platform is checked before any layer comes.
    let mut downloaded = fetch_blobs(
        store,
        &source,
        std::slice::from_ref(&manifest.config),
        1,
        progress.clone(),
    )
    .await?;
    let config_bytes = store.read_blob(&manifest.config.digest, MAX_DOCUMENT_SIZE)?;
    let config = parse_config(&config_bytes, &manifest).map_err(|source| PullError::Manifest {
        reference: ref_str.clone(),
        source,
    })?;
    let platform = config.platform();
    check_platform(&ref_str, opts.platform.as_ref(), &platform)?;
    downloaded += fetch_blobs(store, &source, &manifest.layers, opts.jobs, progress).await?;
    let (name, mut annotations) = match record {
        Some(r) => (r.name, r.annotations),
        None => (name, BTreeMap::new()),
    };
    annotations.insert(RESOLVED_FROM.to_string(), top_digest.to_string());
    let desc = Descriptor {
        media_type: manifest::manifest_media_type(&manifest).to_string(),
        digest: manifest_digest.clone(),
        size: manifest_bytes.len() as u64,
        platform: Some(platform.clone()),
        annotations: Some(annotations),
        urls: None,
    };
    store.record(&name, &desc)?;
    store.mark_used(&manifest_digest)?;
    let size = manifest.total_size();
    Ok(Pulled {
        reference: ref_str,
        name,
        digest: top_digest,
        manifest_digest,
        platform,
        layers: manifest.layers.len(),
        size,
        blobs_downloaded: downloaded,
        from_store,
        build_inputs: None,
        manifest,
        config,
    })
}

/// The digest to pull `r` by, and whether the store alone must serve it:
/// its own digest, or what its tag resolved to when the store pulled it
/// (as `policy` allows); `None` to ask the registry for the tag.
async fn registry_pin(
    store: &Store,
    r: &RegistryRef,
    wanted: &Platform,
    policy: PullPolicy,
) -> Result<(Option<Digest>, bool), PullError> {
    if let Some(d) = &r.digest {
        if policy != PullPolicy::Never {
            return Ok((Some(d.clone()), false));
        }
        let (s, d2, w) = (store.clone(), d.clone(), wanted.clone());
        if !blocking(move || Ok(stored_complete(&s, &d2, &w))).await? {
            return Err(not_stored(r, wanted));
        }
        return Ok((Some(d.clone()), true));
    }
    match (policy, stored_tag(store, r, wanted).await?) {
        (PullPolicy::Always, _) => Ok((None, false)),
        (_, Some(d)) => Ok((Some(d), true)),
        (PullPolicy::Never, None) => Err(not_stored(r, wanted)),
        (PullPolicy::Missing, None) => Ok((None, false)),
    }
}

/// An image is for the platform asked for (`--platform`), or without
/// one, for this host: never emulated (docs/images.md).
fn check_platform(
    reference: &str,
    requested: Option<&Platform>,
    found: &Platform,
) -> Result<(), PullError> {
    match requested {
        Some(wanted) if !wanted.matches(found) => Err(PullError::RequestedPlatform {
            reference: reference.to_string(),
            wanted: wanted.clone(),
            found: found.clone(),
        }),
        None if !Platform::host().matches(found) => Err(PullError::PlatformMismatch {
            reference: reference.to_string(),
            wanted: Platform::host(),
            found: found.clone(),
        }),
        _ => Ok(()),
    }
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
        async move { fetch_one(store, source, &desc, progress).await }
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
    progress: Arc<dyn Progress>,
) -> Result<bool, PullError> {
    if let Source::Registry {
        r, offline: true, ..
    } = source
    {
        if !store.has_blob(&desc.digest, desc.size) {
            return Err(PullError::NotStored {
                reference: format!("blob {} of {r}", desc.digest),
                for_platform: String::new(),
            });
        }
    }
    let begin = {
        let store = store.clone();
        let desc = desc.clone();
        blocking(move || Ok(store.begin(&desc)?)).await?
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
        Source::Registry { client, r, .. } => {
            let on_bytes = |n| progress.blob_advanced(&desc.digest, n);
            client.fetch_blob(r, desc, &mut ingest, &on_bytes).await?;
            blocking(move || Ok(ingest.commit()?)).await?;
        }
        Source::Layout(path) => {
            // A whole layer read and hashed: on a blocking thread, not
            // on the runtime's.
            let (path, desc, progress) = (path.to_path_buf(), desc.clone(), progress.clone());
            blocking(move || {
                copy_layout_blob(&path, &desc, &mut ingest, progress.as_ref())
                    .and_then(|()| ingest.commit())
                    .map_err(|source| PullError::LayoutBlob {
                        path,
                        digest: desc.digest.clone(),
                        source,
                    })
            })
            .await?;
        }
    }
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
    // One byte past the stated size shows a blob longer than it; the
    // size is the manifest's word, up to u64::MAX.
    let mut reader = file.take(desc.size.saturating_add(1));
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
