//! The registry client (OCI distribution-spec, pull side).
//!
//! Nothing from a registry is trusted before it is checked: a manifest's
//! digest is computed from the bytes received (never read from a header), a
//! blob is hashed while it streams and made visible only when its digest and
//! size match, sizes are enforced as bytes arrive, and `Authorization` goes
//! only to the endpoint it was issued for, never to a redirect target on
//! another origin (a blob store behind a 307, say).

pub mod auth;
pub mod config;
pub mod push;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Response, StatusCode};
use url::Url;

pub use config::{Endpoint, Mirror, RegistryOptions, RetryPolicy};

use crate::digest::Digest;
use crate::manifest::{Descriptor, ACCEPTED, MAX_DOCUMENT_SIZE};
use crate::reference::RegistryRef;
use crate::store::{Ingest, StoreError};
use auth::{Challenge, Credentials};

const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection failed: one line, not reqwest's chain of five.
    #[error("cannot reach registry {host} ({why}); {hint}")]
    Unreachable {
        host: String,
        why: String,
        hint: &'static str,
    },
    #[error("{url}: {source}")]
    Http {
        url: Url,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the registry answered {status}{detail}")]
    Status {
        url: Url,
        status: StatusCode,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{reference}: not found in the registry (HTTP 404 at {url})")]
    NotFound { reference: String, url: Url },
    #[error("{reference}: access denied by {host} ({status}){hint}")]
    Unauthorized {
        reference: String,
        host: String,
        status: StatusCode,
        hint: &'static str,
    },
    #[error("{url}: the body stalled: no bytes for {after:?}")]
    Stalled { url: Url, after: Duration },
    #[error("{url}: the body ended after {got} of {expected} bytes")]
    Truncated { url: Url, got: u64, expected: u64 },
    #[error("{url}: asked to resume at byte {asked}, the registry sent Content-Range {got:?}; starting over")]
    UnexpectedRange {
        url: Url,
        asked: u64,
        got: Option<String>,
    },
    #[error("{url}: too many redirects")]
    Redirects { url: Url },
    #[error("{url}: {message}")]
    Protocol { url: Url, message: String },
    #[error("{reference}: the manifest is {size} bytes or more, over the {MAX_DOCUMENT_SIZE}-byte limit")]
    ManifestTooLarge { reference: String, size: u64 },
    #[error("{reference}: pulls from this registry are blocked by registries.conf")]
    Blocked { reference: String },
    #[error("blob {digest} from {url}: {source}")]
    Blob {
        digest: Digest,
        url: Url,
        #[source]
        source: StoreError,
    },
    #[error("{0}")]
    Auth(#[from] auth::AuthError),
    #[error("CA file {path}: {message}")]
    CaFile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
}

impl RegistryError {
    /// Whether a later attempt may succeed: connection trouble, a stalled
    /// or short body, a resume answered from the wrong offset, 408, 429
    /// and 5xx. 401/403/404 and digest or size mismatches are final.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_body()
                    || source.is_request()
                    || source.is_decode()
            }
            RegistryError::Status { status, .. } => {
                *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || status.is_server_error()
            }
            RegistryError::Unreachable { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Truncated { .. }
            | RegistryError::UnexpectedRange { .. } => true,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A manifest or index as received.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// `Content-Type` without parameters.
    pub content_type: Option<String>,
    /// Computed from `bytes`.
    pub digest: Digest,
}

/// A registry client shared by all pulls of one process.
pub struct Client {
    /// Built on first use: loading the system's TLS roots costs
    /// milliseconds that a pull answered from the store never needs.
    http: OnceLock<reqwest::Client>,
    /// For hosts named insecure: TLS certificates are not verified.
    http_insecure: OnceLock<reqwest::Client>,
    /// The `--ca-file` certificates, read and checked up front.
    extra_roots: Vec<reqwest::Certificate>,
    opts: RegistryOptions,
    /// Per endpoint: the scheme that answered.
    schemes: Mutex<HashMap<String, &'static str>>,
    /// Per (endpoint, repository): the `Authorization` value that works.
    auth: Mutex<HashMap<String, HeaderValue>>,
}

impl Client {
    pub fn new(opts: RegistryOptions) -> Result<Client, RegistryError> {
        let mut extra_roots = Vec::new();
        for path in &opts.ca_files {
            let pem = std::fs::read(path).map_err(|e| RegistryError::CaFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::CaFile {
                    path: path.clone(),
                    message: format!("not a PEM certificate bundle: {e}"),
                })?;
            extra_roots.extend(certs);
        }
        Ok(Client {
            http: OnceLock::new(),
            http_insecure: OnceLock::new(),
            extra_roots,
            opts,
            schemes: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client: verifying TLS, or (`insecure`) not.
    fn http_for(&self, insecure: bool) -> Result<&reqwest::Client, RegistryError> {
        let cell = if insecure {
            &self.http_insecure
        } else {
            &self.http
        };
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.opts.connect_timeout)
            .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(insecure);
        for c in &self.extra_roots {
            b = b.add_root_certificate(c.clone());
        }
        let built = b.build().map_err(RegistryError::Client)?;
        Ok(cell.get_or_init(|| built))
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The endpoints to try for `r`, in order (mirrors, then the registry);
    /// `by_tag`: only those that may answer a tag. Refused when blocked.
    pub fn endpoints(&self, r: &RegistryRef, by_tag: bool) -> Result<Vec<Endpoint>, RegistryError> {
        if self.opts.conf.blocked(&r.registry, &r.repository) {
            return Err(RegistryError::Blocked {
                reference: r.to_string(),
            });
        }
        Ok(self
            .opts
            .endpoints(&r.registry, &r.repository)
            .into_iter()
            .filter(|e| e.tags || !by_tag)
            .collect())
    }

    /// Fetch a manifest or index by tag or digest. When `reference` is a
    /// digest, bytes that hash otherwise are refused by the caller, who
    /// compares `digest`.
    pub async fn get_manifest(
        &self,
        r: &RegistryRef,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let by_tag = !reference.contains(':');
        let endpoints = self.endpoints(r, by_tag)?;
        let mut last = None;
        for ep in &endpoints {
            let path = format!("v2/{}/manifests/{}", ep.repository, reference);
            let result = self
                .with_retries(|| self.get_manifest_once(r, ep, &path))
                .await;
            match result {
                Ok(m) => return Ok(m),
                Err(e) if ep.is_mirror => {
                    tracing::warn!(mirror = %ep.base, error = %e, "mirror failed, trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RegistryError::Blocked {
            reference: r.to_string(),
        }))
    }

    async fn get_manifest_once(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        path: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(accept_header()));
        let resp = self.send(r, ep, path, headers).await?;
        let url = resp.url().clone();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        if let Some(len) = resp.content_length() {
            if len > MAX_DOCUMENT_SIZE {
                return Err(RegistryError::ManifestTooLarge {
                    reference: r.to_string(),
                    size: len,
                });
            }
        }
        let mut bytes = Vec::new();
        let mut body = Body::new(resp, self.opts.stall_timeout);
        while let Some(chunk) = body.next(&url).await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
                return Err(RegistryError::ManifestTooLarge {
                    reference: r.to_string(),
                    size: bytes.len() as u64,
                });
            }
        }
        let digest = Digest::sha256_of(&bytes);
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest,
        })
    }

    /// Download a blob into `ingest`, resuming from its offset, retrying
    /// transient failures, and committing it only if it verifies.
    pub async fn fetch_blob(
        &self,
        r: &RegistryRef,
        desc: &Descriptor,
        ingest: &mut Ingest,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let endpoints = self.endpoints(r, false)?;
        let mut last = None;
        for ep in &endpoints {
            let path = format!("v2/{}/blobs/{}", ep.repository, desc.digest);
            let mut attempt = 0;
            let result = loop {
                match self
                    .fetch_blob_once(r, ep, &path, desc, ingest, on_bytes)
                    .await
                {
                    Err(e) if self.should_retry(&e, &mut attempt).await => continue,
                    other => break other,
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if ep.is_mirror => {
                    tracing::warn!(mirror = %ep.base, error = %e, "mirror failed, trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RegistryError::Blocked {
            reference: r.to_string(),
        }))
    }

    async fn fetch_blob_once(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        path: &str,
        desc: &Descriptor,
        ingest: &mut Ingest,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let offset = ingest.offset();
        let mut headers = HeaderMap::new();
        if offset > 0 && offset < desc.size {
            let range = format!("bytes={offset}-");
            headers.insert(
                RANGE,
                HeaderValue::from_str(&range).map_err(|_| RegistryError::Protocol {
                    url: ep.base.clone(),
                    message: "bad range".into(),
                })?,
            );
        }
        let resp = self.send(r, ep, path, headers).await?;
        let url = resp.url().clone();
        let blob_err = |source| RegistryError::Blob {
            digest: desc.digest.clone(),
            url: url.clone(),
            source,
        };
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if content_range_start(&resp) == Some(offset) => {
                tracing::debug!(digest = %desc.digest, offset, "resuming download");
            }
            StatusCode::PARTIAL_CONTENT => {
                // A range we did not ask for: start over rather than guess
                // (a transient error, so the next attempt asks from byte 0).
                ingest.reset().map_err(blob_err)?;
                let got = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                return Err(RegistryError::UnexpectedRange {
                    url,
                    asked: offset,
                    got,
                });
            }
            _ => {
                if offset > 0 {
                    ingest.reset().map_err(blob_err)?;
                }
                if let Some(len) = resp.content_length().filter(|&l| l > desc.size) {
                    ingest.discard();
                    return Err(blob_err(StoreError::SizeMismatch {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        found: len,
                    }));
                }
            }
        }
        let mut body = Body::new(resp, self.opts.stall_timeout);
        while let Some(chunk) = body.next(&url).await? {
            if let Err(e) = ingest.write(&chunk) {
                ingest.discard();
                return Err(blob_err(e));
            }
            on_bytes(chunk.len() as u64);
        }
        if ingest.offset() < desc.size {
            return Err(RegistryError::Truncated {
                url,
                got: ingest.offset(),
                expected: desc.size,
            });
        }
        Ok(())
    }

    async fn with_retries<'a, T, F, Fut>(&'a self, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>> + 'a,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if self.should_retry(&e, &mut attempt).await => continue,
                other => return other,
            }
        }
    }

    /// For a transient error with attempts left: wait out the backoff and
    /// say so; otherwise the error is final.
    async fn should_retry(&self, e: &RegistryError, attempt: &mut u32) -> bool {
        let policy = &self.opts.retry;
        if !e.is_transient() || *attempt + 1 >= policy.attempts {
            return false;
        }
        let delay = policy.delay(*attempt, e.retry_after());
        tracing::info!(error = %e, attempt = *attempt + 1, ?delay, "transient failure, retrying");
        tokio::time::sleep(delay).await;
        *attempt += 1;
        true
    }

    /// Send a GET to `path` on an endpoint, authenticating on a 401
    /// challenge and following redirects by hand.
    pub async fn send(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response, RegistryError> {
        let base = self.base_url(ep).await?;
        let url = join(&base, path);
        let auth_key = format!("{}|{}", base, ep.repository);
        let cached = lock(&self.auth).get(&auth_key).cloned();
        let resp = self
            .get_following(ep, &base, url.clone(), &headers, cached.as_ref())
            .await?;
        let (resp, sent_auth) = if resp.status() == StatusCode::UNAUTHORIZED {
            let value = self.authenticate(r, ep, &resp, false).await?;
            lock(&self.auth).insert(auth_key, value.clone());
            let retried = self
                .get_following(ep, &base, url, &headers, Some(&value))
                .await?;
            (retried, true)
        } else {
            (resp, cached.is_some())
        };
        check_status(r, ep, resp, sent_auth)
    }

    async fn get_following(
        &self,
        ep: &Endpoint,
        base: &Url,
        mut url: Url,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<Response, RegistryError> {
        let http = self.http_for(ep.insecure && self.is_named_insecure(ep))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = http.get(url.clone()).headers(headers.clone());
            if let Some(a) = auth.filter(|_| same_origin(&url, base)) {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(|e| http_error(&url, e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| RegistryError::Protocol {
                    url: url.clone(),
                    message: format!("{} without a Location header", resp.status()),
                })?;
            let next = url.join(location).map_err(|e| RegistryError::Protocol {
                url: url.clone(),
                message: format!("redirect to an invalid URL {location:?}: {e}"),
            })?;
            if !matches!(next.scheme(), "https" | "http") {
                return Err(RegistryError::Protocol {
                    url,
                    message: format!("redirect to a non-HTTP URL {location:?}"),
                });
            }
            tracing::debug!(from = %url, to = %next, "following redirect");
            url = next;
        }
        Err(RegistryError::Redirects { url })
    }

    fn is_named_insecure(&self, ep: &Endpoint) -> bool {
        let host = host_port(&ep.base);
        self.opts
            .insecure
            .iter()
            .any(|h| *h == host || Some(h.as_str()) == ep.base.host_str())
            || self.opts.conf_insecure(&host)
    }

    /// The endpoint's base URL with the scheme that works: HTTPS, or plain
    /// HTTP for loopback and insecure endpoints whose HTTPS does not answer.
    async fn base_url(&self, ep: &Endpoint) -> Result<Url, RegistryError> {
        let key = ep.base.to_string();
        if let Some(scheme) = lock(&self.schemes).get(&key) {
            return Ok(with_scheme(&ep.base, scheme));
        }
        if !ep.insecure || ep.base.scheme() == "http" {
            let scheme = if ep.base.scheme() == "http" && ep.insecure {
                "http"
            } else {
                "https"
            };
            lock(&self.schemes).insert(key, scheme);
            return Ok(with_scheme(&ep.base, scheme));
        }
        let https = with_scheme(&ep.base, "https");
        let probe = join(&https, "v2/");
        let http = self.http_for(self.is_named_insecure(ep))?;
        let scheme = match http.get(probe).send().await {
            Ok(_) => "https",
            Err(e) if e.is_connect() || e.is_request() => "http",
            Err(e) => return Err(http_error(&https, e)),
        };
        tracing::debug!(endpoint = %ep.base, scheme, "endpoint scheme");
        lock(&self.schemes).insert(key, scheme);
        Ok(with_scheme(&ep.base, scheme))
    }

    /// Answer a 401: Basic with stored credentials, or a Bearer token from
    /// the realm the registry names (with credentials when we have them).
    /// A push asks for `repository:REPO:pull,push`, whatever scope the
    /// challenge named.
    async fn authenticate(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        resp: &Response,
        push: bool,
    ) -> Result<HeaderValue, RegistryError> {
        let url = resp.url().clone();
        let host = if ep.is_mirror {
            host_port(&ep.base)
        } else {
            r.registry.clone()
        };
        let creds = auth::lookup(&host)?;
        let unauthorized = |hint| RegistryError::Unauthorized {
            reference: r.to_string(),
            host: host.clone(),
            status: StatusCode::UNAUTHORIZED,
            hint,
        };
        let challenge = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(auth::parse_challenge)
            .next();
        let value = match challenge {
            Some(Challenge::Basic) => match &creds {
                Some(c) => c.basic_header(),
                None => return Err(unauthorized(NO_CREDS_HINT)),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = token_scope(scope, &ep.repository, push);
                let token = self
                    .fetch_token(ep, &url, &realm, service.as_deref(), &scope, creds.as_ref())
                    .await
                    .map_err(|e| match e {
                        RegistryError::Status { status, .. }
                            if status == StatusCode::UNAUTHORIZED
                                || status == StatusCode::FORBIDDEN =>
                        {
                            unauthorized(if creds.is_some() {
                                BAD_CREDS_HINT
                            } else {
                                NO_CREDS_HINT
                            })
                        }
                        other => other,
                    })?;
                format!("Bearer {token}")
            }
            None => {
                return Err(RegistryError::Protocol {
                    url,
                    message: "401 without a usable WWW-Authenticate challenge".into(),
                })
            }
        };
        HeaderValue::from_str(&value).map_err(|_| RegistryError::Protocol {
            url: resp.url().clone(),
            message: "the token has characters not allowed in a header".into(),
        })
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        url: &Url,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let mut realm_url = Url::parse(realm).map_err(|e| RegistryError::Protocol {
            url: url.clone(),
            message: format!("token realm {realm:?} is not a URL: {e}"),
        })?;
        let realm_host = host_port(&realm_url);
        let plain_ok = config::is_loopback(&realm_host) || ep.insecure;
        if realm_url.scheme() != "https" && !(realm_url.scheme() == "http" && plain_ok) {
            return Err(RegistryError::Protocol {
                url: url.clone(),
                message: format!(
                    "token realm {realm:?} is not HTTPS; credentials would travel in clear"
                ),
            });
        }
        {
            let mut q = realm_url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let http = self.http_for(ep.insecure && self.is_named_insecure(ep))?;
        let mut req = http.get(realm_url.clone());
        if let Some(c) = creds {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| http_error(&realm_url, e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Status {
                url: realm_url,
                status: resp.status(),
                detail: String::new(),
                retry_after: None,
            });
        }
        let mut body = Vec::new();
        let mut stream = Body::new(resp, self.opts.stall_timeout);
        while let Some(chunk) = stream.next(&realm_url).await? {
            body.extend_from_slice(&chunk);
            if body.len() > 1 << 20 {
                return Err(RegistryError::Protocol {
                    url: realm_url,
                    message: "token reply over 1 MiB".into(),
                });
            }
        }
        serde_json::from_slice::<auth::TokenReply>(&body)
            .ok()
            .and_then(auth::TokenReply::into_token)
            .ok_or_else(|| RegistryError::Protocol {
                url: realm_url,
                message: "token reply has no token".into(),
            })
    }
}

const NO_CREDS_HINT: &str = "; no credentials found: log in with `docker login` or set HOIST_REGISTRY_USER and HOIST_REGISTRY_PASSWORD";
const BAD_CREDS_HINT: &str = "; the stored credentials were refused";

impl RegistryOptions {
    fn conf_insecure(&self, host: &str) -> bool {
        self.endpoints(host, "x")
            .last()
            .is_some_and(|e| e.insecure && !config::is_loopback(host))
    }
}

/// The scope to ask a token for: a push always asks for pull and push on
/// the repository; a pull takes the challenge's scope, or pull.
fn token_scope(challenge: Option<String>, repository: &str, push: bool) -> String {
    match challenge {
        _ if push => format!("repository:{repository}:pull,push"),
        Some(s) => s,
        None => format!("repository:{repository}:pull"),
    }
}

fn check_status(
    r: &RegistryRef,
    ep: &Endpoint,
    resp: Response,
    had_auth: bool,
) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let url = resp.url().clone();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    match status {
        StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
            reference: r.to_string(),
            url,
        }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
            reference: r.to_string(),
            host: host_port(&ep.base),
            status,
            hint: if had_auth { BAD_CREDS_HINT } else { "" },
        }),
        _ => Err(RegistryError::Status {
            url,
            status,
            detail: String::new(),
            retry_after,
        }),
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn content_range_start(resp: &Response) -> Option<u64> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

fn accept_header() -> &'static str {
    // Kept in one literal so it can be a static header value.
    const _: () = assert!(ACCEPTED.len() == 4);
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
}

fn with_scheme(base: &Url, scheme: &str) -> Url {
    let mut u = base.clone();
    if u.scheme() != scheme {
        // Url::set_scheme refuses nothing between http and https.
        let s = format!("{scheme}{}", &u.as_str()[u.scheme().len()..]);
        if let Ok(parsed) = Url::parse(&s) {
            u = parsed;
        }
    }
    u
}

/// Join `path` under the base URL's path (a mirror may have a prefix).
fn join(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    let prefix = base.path().trim_end_matches('/');
    u.set_path(&format!("{prefix}/{path}"));
    u
}

fn host_port(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// A request to `url` that failed: [`RegistryError::Unreachable`] when
/// no connection was made.
pub(crate) fn http_error(url: &Url, source: reqwest::Error) -> RegistryError {
    if !source.is_connect() {
        return RegistryError::Http {
            url: url.clone(),
            source,
        };
    }
    let why = connect_failure(&source);
    let hint = if why.contains("certificate") || why.contains("tls") || why.contains("TLS") {
        TLS_HINT
    } else {
        UNREACHABLE_HINT
    };
    RegistryError::Unreachable {
        host: host_port(url),
        why,
        hint,
    }
}

const UNREACHABLE_HINT: &str = "check that it is up and that the reference names it right; images the store already holds run without it (--pull missing, or never)";
const TLS_HINT: &str = "trust its CA with --ca-file PEM, or name it with --insecure-registry HOST";

/// Why a connection failed, in a few words: the innermost I/O error
/// (connection refused, timed out, a name not resolved).
fn connect_failure(e: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;
    let mut cause = Some(e);
    let mut innermost = e.to_string();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".into(),
                ErrorKind::TimedOut => "timed out".into(),
                ErrorKind::HostUnreachable => "no route to host".into(),
                ErrorKind::NetworkUnreachable => "network unreachable".into(),
                ErrorKind::ConnectionReset => "connection reset".into(),
                _ => io.to_string(),
            };
        }
        innermost = c.to_string();
        cause = c.source();
    }
    innermost
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map only means another pull panicked mid-insert; the
    // cached values are still individually valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A response body read chunk by chunk, each chunk under the stall timeout.
struct Body {
    resp: Response,
    stall: Duration,
}

impl Body {
    fn new(resp: Response, stall: Duration) -> Body {
        Body { resp, stall }
    }

    async fn next(&mut self, url: &Url) -> Result<Option<bytes::Bytes>, RegistryError> {
        match tokio::time::timeout(self.stall, self.resp.chunk()).await {
            Err(_) => Err(RegistryError::Stalled {
                url: url.clone(),
                after: self.stall,
            }),
            Ok(Err(source)) => Err(RegistryError::Http {
                url: url.clone(),
                source,
            }),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_scopes() {
        assert_eq!(token_scope(None, "a/b", false), "repository:a/b:pull");
        assert_eq!(
            token_scope(Some("repository:a/b:pull".into()), "a/b", true),
            "repository:a/b:pull,push"
        );
        assert_eq!(
            token_scope(Some("repository:x:pull".into()), "a/b", false),
            "repository:x:pull"
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn origins_and_joins() {
        let a = Url::parse("https://r.example/v2/x").unwrap();
        let b = Url::parse("https://r.example:443/").unwrap();
        let c = Url::parse("https://blobs.example/").unwrap();
        assert!(same_origin(&a, &b));
        assert!(!same_origin(&a, &c));
        let m = Url::parse("http://127.0.0.1:5001/prefix/").unwrap();
        assert_eq!(
            join(&m, "v2/a/manifests/t").as_str(),
            "http://127.0.0.1:5001/prefix/v2/a/manifests/t"
        );
        assert_eq!(with_scheme(&m, "https").scheme(), "https");
    }
}
