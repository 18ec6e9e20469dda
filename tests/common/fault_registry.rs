//! An in-process registry that misbehaves on purpose (STYLE.md "a
//! misbehaving registry server"), for the fault tests of the pull path.
//!
//! It serves `/v2/`, `/v2/<name>/manifests/<ref>`, `/v2/<name>/blobs/<digest>`
//! and a token endpoint on 127.0.0.1, honours `Range: bytes=N-`, and applies
//! per-test [`Fault`]s to chosen targets for a set number of requests. Every
//! request is logged with its `Range` and `Authorization` headers, and bytes
//! handed to hyper by endless bodies are counted, so a test can check how
//! far the client read.

#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use base64::Engine as _;
use futures_util::stream::{self, BoxStream, StreamExt};
use hoist::digest::Digest;
use hoist::manifest::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use hoist::platform::Platform;
use hoist::pull::{pull, NoProgress, PullError, PullOptions, Pulled};
use hoist::reference::Reference;
use hoist::registry::{Client, RegistryOptions, RetryPolicy};
use hoist::store::Store;
use serde_json::json;

/// The repository every fake registry serves.
pub const REPO: &str = "x";
/// The Bearer token the token endpoint hands out.
pub const TOKEN: &str = "t0k";
const LAYER_MEDIA: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CHUNK: usize = 16 << 10;
/// Endless bodies stop here, so a client that does not stop still ends.
const ENDLESS_LIMIT: u64 = 1 << 30;

/// What a request asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Manifest(String),
    Blob(String),
    Token,
    Other(String),
}

impl Target {
    pub fn blob(d: &Digest) -> Target {
        Target::Blob(d.to_string())
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub target: Target,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

/// A way to misbehave, applied to the bytes the request would get.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and headers and an empty body.
    Status(u16, Vec<(&'static str, String)>),
    /// The expected length, other bytes.
    WrongBytes,
    /// `Content-Length` of the whole, then the body ends after n bytes.
    Truncate(usize),
    /// n bytes, then the connection is reset (RST, by SO_LINGER 0).
    Reset(usize),
    /// n bytes, then nothing, forever.
    Stall(usize),
    /// A body that goes on (up to 1 GiB), counted in [`Registry::streamed`];
    /// chunked, or with the given `Content-Length`.
    Endless { content_length: Option<u64> },
    /// 307 to this URL.
    Redirect(String),
    /// 200 with the whole body, whatever `Range` asked for.
    IgnoreRange,
    /// 206 with the whole body, `Content-Range: bytes 0-…`, whatever
    /// `Range` asked for.
    WrongRange,
}

/// How the registry wants to be authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    Anonymous,
    /// A token from `/token`, as Docker Hub and distribution do.
    Bearer,
    Basic {
        user: String,
        password: String,
    },
}

struct Rule {
    target: Target,
    remaining: usize,
    fault: Fault,
}

struct Shared {
    base: String,
    manifests: Mutex<HashMap<String, (&'static str, Vec<u8>)>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    rules: Mutex<Vec<Rule>>,
    auth: Mutex<Auth>,
    log: Mutex<Vec<Logged>>,
    streamed: Arc<AtomicU64>,
    zero_linger: AtomicBool,
}

/// A running fake registry; it stops with the test's runtime.
#[derive(Clone)]
pub struct Registry {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding it already failed; carry on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Bind first, then spawn: the port accepts connections on return.
    pub async fn start() -> Registry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            base: format!("http://{addr}"),
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            rules: Mutex::default(),
            auth: Mutex::new(Auth::Anonymous),
            log: Mutex::default(),
            streamed: Arc::default(),
            zero_linger: AtomicBool::new(false),
        });
        let tap = shared.clone();
        let listener = listener.tap_io(move |tcp| {
            if tap.zero_linger.load(Ordering::SeqCst) {
                tcp.set_zero_linger().expect("SO_LINGER");
            }
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Registry { addr, shared }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.shared.base.clone()
    }

    /// `127.0.0.1:PORT/x:TAG` or `127.0.0.1:PORT/x@DIGEST`.
    pub fn reference(&self, tag_or_digest: &str) -> Reference {
        let sep = if tag_or_digest.contains(':') {
            '@'
        } else {
            ':'
        };
        format!("{}/{REPO}{sep}{tag_or_digest}", self.host())
            .parse()
            .expect("valid reference")
    }

    /// Serve `image` under `tag` and its digest, with all its blobs.
    pub fn serve(&self, tag: &str, image: &Image) {
        self.put_manifest(tag, image.media_type, image.manifest.clone());
        self.put_manifest(
            &image.digest.to_string(),
            image.media_type,
            image.manifest.clone(),
        );
        for b in image.blobs() {
            self.put_blob(&b.digest, b.bytes.clone());
        }
    }

    pub fn put_manifest(&self, reference: &str, content_type: &'static str, bytes: Vec<u8>) {
        lock(&self.shared.manifests).insert(reference.to_string(), (content_type, bytes));
    }

    pub fn put_blob(&self, digest: &Digest, bytes: Vec<u8>) {
        lock(&self.shared.blobs).insert(digest.to_string(), bytes);
    }

    /// Misbehave on the next `times` requests for `target`.
    pub fn fault(&self, target: Target, times: usize, fault: Fault) {
        if matches!(fault, Fault::Reset(_)) {
            self.shared.zero_linger.store(true, Ordering::SeqCst);
        }
        lock(&self.shared.rules).push(Rule {
            target,
            remaining: times,
            fault,
        });
    }

    /// Drop the faults not yet used up: the server is healthy again.
    pub fn heal(&self) {
        lock(&self.shared.rules).clear();
    }

    pub fn set_auth(&self, auth: Auth) {
        *lock(&self.shared.auth) = auth;
    }

    pub fn log(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// Requests for `target`, in order.
    pub fn requests(&self, target: &Target) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| &l.target == target)
            .collect()
    }

    pub fn count(&self, target: &Target) -> usize {
        self.requests(target).len()
    }

    /// Requests for any blob.
    pub fn blob_requests(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| matches!(l.target, Target::Blob(_)))
            .count()
    }

    /// Bytes that endless bodies handed to hyper so far.
    pub fn streamed(&self) -> u64 {
        self.shared.streamed.load(Ordering::SeqCst)
    }
}

fn classify(path: &str) -> Target {
    if path == "/token" {
        return Target::Token;
    }
    let rest = path.strip_prefix(&format!("/v2/{REPO}/")).unwrap_or("");
    if let Some(r) = rest.strip_prefix("manifests/") {
        Target::Manifest(r.to_string())
    } else if let Some(d) = rest.strip_prefix("blobs/") {
        Target::Blob(d.to_string())
    } else {
        Target::Other(path.to_string())
    }
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let target = classify(req.uri().path());
    let headers = req.headers();
    let range = header_str(headers, header::RANGE);
    let authorization = header_str(headers, header::AUTHORIZATION);
    lock(&s.log).push(Logged {
        target: target.clone(),
        range: range.clone(),
        authorization: authorization.clone(),
    });
    if target == Target::Token {
        return reply(
            StatusCode::OK,
            &[],
            Body::from(json!({ "token": TOKEN }).to_string()),
        );
    }
    if let Some(challenge) = refuse(&s, authorization.as_deref()) {
        return challenge;
    }
    let (content_type, bytes) = match &target {
        Target::Manifest(r) => match lock(&s.manifests).get(r) {
            Some((ct, b)) => (*ct, b.clone()),
            None => return reply(StatusCode::NOT_FOUND, &[], Body::empty()),
        },
        Target::Blob(d) => match lock(&s.blobs).get(d) {
            Some(b) => ("application/octet-stream", b.clone()),
            None => return reply(StatusCode::NOT_FOUND, &[], Body::empty()),
        },
        _ => return reply(StatusCode::OK, &[], Body::from("{}")),
    };
    match take_fault(&s, &target) {
        Some(f) => faulty(&s, f, content_type, bytes),
        None => healthy(content_type, bytes, range.as_deref()),
    }
}

/// The 401 to send when the request lacks the credentials `s` wants.
fn refuse(s: &Shared, authorization: Option<&str>) -> Option<Response> {
    let (wanted, challenge) = match &*lock(&s.auth) {
        Auth::Anonymous => return None,
        Auth::Bearer => (
            format!("Bearer {TOKEN}"),
            format!(
                r#"Bearer realm="{}/token",service="test",scope="repository:{REPO}:pull""#,
                s.base
            ),
        ),
        Auth::Basic { user, password } => (
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            r#"Basic realm="test""#.to_string(),
        ),
    };
    if authorization == Some(wanted.as_str()) {
        return None;
    }
    Some(reply(
        StatusCode::UNAUTHORIZED,
        &[("www-authenticate", challenge)],
        Body::empty(),
    ))
}

fn take_fault(s: &Shared, target: &Target) -> Option<Fault> {
    let mut rules = lock(&s.rules);
    let rule = rules
        .iter_mut()
        .find(|r| &r.target == target && r.remaining > 0)?;
    rule.remaining -= 1;
    Some(rule.fault.clone())
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(body).expect("valid response")
}

/// 200 with the whole, or 206 from the offset of a `Range: bytes=N-`.
fn healthy(content_type: &str, bytes: Vec<u8>, range: Option<&str>) -> Response {
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < bytes.len());
    let ct = ("content-type", content_type.to_string());
    match start {
        Some(n) => {
            let cr = format!("bytes {n}-{}/{}", bytes.len() - 1, bytes.len());
            let body = Body::from(bytes[n..].to_vec());
            reply(
                StatusCode::PARTIAL_CONTENT,
                &[ct, ("content-range", cr)],
                body,
            )
        }
        None => reply(StatusCode::OK, &[ct], Body::from(bytes)),
    }
}

fn faulty(s: &Shared, fault: Fault, content_type: &str, bytes: Vec<u8>) -> Response {
    let len = ("content-length", bytes.len().to_string());
    let ct = ("content-type", content_type.to_string());
    match fault {
        Fault::Status(code, headers) => {
            let status = StatusCode::from_u16(code).expect("status code");
            reply(status, &headers, Body::empty())
        }
        Fault::WrongBytes => {
            let wrong: Vec<u8> = bytes.iter().map(|b| !b).collect();
            reply(StatusCode::OK, &[ct], Body::from(wrong))
        }
        Fault::Truncate(n) => {
            let body = chunks(&bytes[..n]).chain(pause());
            reply(StatusCode::OK, &[ct, len], Body::from_stream(body))
        }
        Fault::Reset(n) => {
            // The RST would discard what the client has not read yet.
            let reset = stream::once(async {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            });
            let body = chunks(&bytes[..n]).chain(pause()).chain(reset);
            reply(StatusCode::OK, &[ct, len], Body::from_stream(body))
        }
        Fault::Stall(n) => {
            let body = chunks(&bytes[..n]).chain(stream::pending());
            reply(StatusCode::OK, &[ct, len], Body::from_stream(body))
        }
        Fault::Endless { content_length } => endless(s, content_type, content_length),
        Fault::IgnoreRange => healthy(content_type, bytes, None),
        Fault::WrongRange => {
            let cr = format!("bytes 0-{}/{}", bytes.len() - 1, bytes.len());
            let headers = [ct, ("content-range", cr)];
            reply(StatusCode::PARTIAL_CONTENT, &headers, Body::from(bytes))
        }
        Fault::Redirect(to) => reply(
            StatusCode::TEMPORARY_REDIRECT,
            &[("location", to)],
            Body::empty(),
        ),
    }
}

fn chunks(bytes: &[u8]) -> BoxStream<'static, io::Result<Bytes>> {
    let parts: Vec<io::Result<Bytes>> = bytes
        .chunks(CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(parts).boxed()
}

/// Ends after 50 ms with no item: hyper drops its unflushed buffer when a
/// body fails or ends short, so this lets the bytes before it reach the
/// client first, making the offset a client resumes from exact.
fn pause() -> BoxStream<'static, io::Result<Bytes>> {
    stream::once(tokio::time::sleep(Duration::from_millis(50)))
        .filter_map(|()| async { None })
        .boxed()
}

fn endless(s: &Shared, content_type: &str, content_length: Option<u64>) -> Response {
    let total = content_length.unwrap_or(ENDLESS_LIMIT).min(ENDLESS_LIMIT);
    let chunk = Bytes::from(vec![b' '; CHUNK]);
    let counter = s.streamed.clone();
    let body = stream::iter(0..total.div_ceil(CHUNK as u64)).map(move |i| {
        let n = (total - i * CHUNK as u64).min(CHUNK as u64);
        counter.fetch_add(n, Ordering::SeqCst);
        Ok::<_, io::Error>(chunk.slice(..n as usize))
    });
    let mut headers = vec![("content-type", content_type.to_string())];
    if let Some(l) = content_length {
        headers.push(("content-length", l.to_string()));
    }
    reply(StatusCode::OK, &headers, Body::from_stream(body))
}

/// A blob of the synthetic image.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: Digest::sha256_of(&bytes),
            bytes,
        }
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": self.digest.to_string(), "size": self.bytes.len() })
    }
}

/// A small OCI image: a config and two layers of pseudo-random bytes.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub digest: Digest,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// An image for the host's platform.
    pub fn new(seed: u64) -> Image {
        Image::for_platform(&Platform::host(), seed)
    }

    pub fn for_platform(p: &Platform, seed: u64) -> Image {
        let layers = vec![
            Blob::new(pseudo_random(seed, 300 << 10)),
            Blob::new(pseudo_random(seed + 1, 200 << 10)),
        ];
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        let mut config = json!({
            "architecture": p.architecture, "os": p.os,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if let Some(v) = &p.variant {
            config["variant"] = json!(v);
        }
        let config = Blob::new(config.to_string().into_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(OCI_CONFIG),
            "layers": layers.iter().map(|l| l.descriptor(LAYER_MEDIA)).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        Image {
            digest: Digest::sha256_of(&manifest),
            manifest,
            media_type: OCI_MANIFEST,
            config,
            layers,
        }
    }

    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// The manifest as JSON, to be altered by a test.
    pub fn manifest_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.manifest).expect("manifest is JSON")
    }
}

/// An OCI index over `images`, each under its platform.
pub fn index_of(images: &[(&Platform, &Image)]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(p, i)| {
            let mut d = json!({
                "mediaType": i.media_type, "digest": i.digest.to_string(), "size": i.manifest.len(),
                "platform": { "os": p.os, "architecture": p.architecture },
            });
            if let Some(v) = &p.variant {
                d["platform"]["variant"] = json!(v);
            }
            d
        })
        .collect();
    json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests })
        .to_string()
        .into_bytes()
}

/// xorshift64*: incompressible enough, and the same for a seed every run.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A client with fast retries: 10 ms backoff, a 500 ms stall timeout.
pub fn client(attempts: u32) -> Client {
    Client::new(RegistryOptions {
        retry: RetryPolicy {
            attempts,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        stall_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
        ..RegistryOptions::default()
    })
    .expect("client")
}

/// A fresh store in a temp dir (kept alive by the returned guard).
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("open store");
    (dir, store)
}

pub async fn pull_with(
    store: &Store,
    client: &Client,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Pulled, PullError> {
    pull(store, client, reference, opts, Arc::new(NoProgress)).await
}

pub async fn pull_default(
    store: &Store,
    client: &Client,
    reference: &Reference,
) -> Result<Pulled, PullError> {
    pull_with(store, client, reference, &PullOptions::default()).await
}

/// Every file under `blobs/` hashes to its name, and nothing else (a temp
/// or partial file) is there. Returns the digests present.
pub fn assert_store_clean(store: &Store) -> Vec<Digest> {
    let mut found = Vec::new();
    for alg in ["sha256", "sha512"] {
        let dir = store.root().join("blobs").join(alg);
        for entry in std::fs::read_dir(&dir).expect("read blobs dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest: Digest = format!("{alg}:{name}")
                .parse()
                .unwrap_or_else(|e| panic!("{}: not a blob name: {e}", entry.path().display()));
            let bytes = std::fs::read(entry.path()).expect("read blob");
            let mut h = digest.hasher();
            h.update(&bytes);
            assert_eq!(h.finish(), digest, "{} is corrupt", entry.path().display());
            found.push(digest);
        }
    }
    found
}

/// Whether the store holds `blob`, complete.
pub fn has(store: &Store, blob: &Blob) -> bool {
    store.has_blob(&blob.digest, blob.bytes.len() as u64)
}

/// The partial download of `digest` under `ingest/`, if any: its length.
pub fn partial_len(store: &Store, digest: &Digest) -> Option<u64> {
    let name = format!("{}-{}.partial", digest.algorithm().as_str(), digest.hex());
    std::fs::metadata(store.root().join("ingest").join(name))
        .ok()
        .map(|m| m.len())
}

/// Entries in the store's `index.json`.
pub fn recorded(store: &Store) -> usize {
    store.index().expect("index.json").manifests.len()
}

/// Every path under `root`, for messages.
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        }
    }
    out.sort();
    out
}
