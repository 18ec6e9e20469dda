//! The push side of the distribution API (distribution-spec "push"), for
//! `hoist bake`: a blob is checked with `HEAD` and, when missing, uploaded
//! monolithically (`POST` for an upload session, then one `PUT ?digest=`
//! streaming the file); the manifest is `PUT` under its tag last, so the
//! registry never holds a manifest whose blobs are missing.
//!
//! Pushes go to the origin only, never a mirror. Authentication is the
//! pulls' challenge code asking for `repository:REPO:pull,push`; the token
//! is cached apart from pull tokens. `Authorization` goes only to the
//! registry's own origin, never to an upload URL on another host. Plain
//! HTTP is used exactly when pulls would use it (loopback or insecure).

use std::path::Path;

use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
use reqwest::{Body, Method, Response, StatusCode};
use url::Url;

use super::{join, lock, same_origin, Client, Endpoint, RegistryError};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::reference::RegistryRef;

const PUSH_DENIED_HINT: &str = "; pushing needs credentials allowed to push to this repository: log in with `docker login` or set HOIST_REGISTRY_USER and HOIST_REGISTRY_PASSWORD";

/// The most of an error body quoted in an error.
const MAX_ERROR_BODY: usize = 4096;

type MakeBody<'a> = &'a (dyn Fn() -> Result<Body, RegistryError> + Sync);

impl Client {
    /// Upload `desc` (stored at `path`) unless the registry has it;
    /// returns whether it was uploaded.
    pub async fn push_blob(
        &self,
        r: &RegistryRef,
        desc: &Descriptor,
        path: &Path,
    ) -> Result<bool, RegistryError> {
        let ep = self.push_endpoint(r)?;
        if self
            .with_retries(|| self.blob_exists(r, &ep, &desc.digest))
            .await?
        {
            tracing::debug!(digest = %desc.digest, "blob already in the registry");
            return Ok(false);
        }
        self.with_retries(|| self.upload_once(r, &ep, desc, path))
            .await?;
        Ok(true)
    }

    /// `PUT` the manifest under the reference's tag (`latest` when it has
    /// none); returns its digest, checked against the registry's.
    pub async fn push_manifest(
        &self,
        r: &RegistryRef,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let ep = self.push_endpoint(r)?;
        let digest = Digest::sha256_of(bytes);
        let base = self.base_url(&ep).await?;
        let url = join(
            &base,
            &format!("v2/{}/manifests/{}", ep.repository, r.manifest_ref()),
        );
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, header_value(&url, media_type)?);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let make = move || Ok(Body::from(body.clone()));
        let resp = self
            .with_retries(|| {
                self.push_request(r, &ep, Method::PUT, url.clone(), &headers, Some(&make))
            })
            .await?;
        let resp = expect_success(r, &ep, resp).await?;
        let echoed = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        if let Some(found) = echoed.filter(|d| *d != digest) {
            return Err(RegistryError::Protocol {
                url,
                message: format!(
                    "the registry stored the manifest as {found}, but its bytes hash to {digest}"
                ),
            });
        }
        Ok(digest)
    }

    /// The origin endpoint of `r`: pushes never go to a mirror.
    fn push_endpoint(&self, r: &RegistryRef) -> Result<Endpoint, RegistryError> {
        self.opts
            .endpoints(&r.registry, &r.repository)
            .into_iter()
            .rfind(|e| !e.is_mirror)
            .ok_or_else(|| RegistryError::Blocked {
                reference: r.to_string(),
            })
    }

    async fn blob_exists(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let base = self.base_url(ep).await?;
        let url = join(&base, &format!("v2/{}/blobs/{digest}", ep.repository));
        let resp = self
            .push_request(r, ep, Method::HEAD, url, &HeaderMap::new(), None)
            .await?;
        let status = resp.status();
        // A registry redirects a blob it has to its storage.
        if status.is_success() || status.is_redirection() {
            return Ok(true);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Err(expect_success(r, ep, resp)
            .await
            .err()
            .unwrap_or(RegistryError::Protocol {
                url: base,
                message: format!("HEAD of blob {digest} answered {status}"),
            }))
    }

    /// One upload session: `POST`, then a monolithic `PUT` of the file.
    async fn upload_once(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        desc: &Descriptor,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let base = self.base_url(ep).await?;
        let start = join(&base, &format!("v2/{}/blobs/uploads/", ep.repository));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let empty = || Ok(Body::from(Vec::new()));
        let resp = self
            .push_request(r, ep, Method::POST, start, &headers, Some(&empty))
            .await?;
        let resp = expect_success(r, ep, resp).await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                url: resp.url().clone(),
                message: format!(
                    "{} to an upload request without a Location header",
                    resp.status()
                ),
            })?;
        let mut url = resp
            .url()
            .join(location)
            .map_err(|e| RegistryError::Protocol {
                url: resp.url().clone(),
                message: format!("upload Location {location:?} is not a URL: {e}"),
            })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(RegistryError::Protocol {
                url,
                message: "upload Location is not an HTTP URL".into(),
            });
        }
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(desc.size));
        let (file, digest, at) = (path.to_path_buf(), desc.digest.clone(), url.clone());
        let make = move || file_body(&file, &digest, &at);
        let resp = self
            .push_request(r, ep, Method::PUT, url, &headers, Some(&make))
            .await?;
        expect_success(r, ep, resp).await?;
        tracing::debug!(digest = %desc.digest, size = desc.size, "blob uploaded");
        Ok(())
    }

    /// Send one request with the push token; a 401 is answered once by
    /// authenticating for push, and the request sent again.
    async fn push_request(
        &self,
        r: &RegistryRef,
        ep: &Endpoint,
        method: Method,
        url: Url,
        headers: &HeaderMap,
        body: Option<MakeBody<'_>>,
    ) -> Result<Response, RegistryError> {
        let base = self.base_url(ep).await?;
        let key = format!("{}|{}|push", base, ep.repository);
        let cached = lock(&self.auth).get(&key).cloned();
        let resp = self
            .push_send(
                ep,
                &base,
                method.clone(),
                &url,
                headers,
                body,
                cached.as_ref(),
            )
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let value = self.authenticate(r, ep, &resp, true).await?;
        lock(&self.auth).insert(key, value.clone());
        self.push_send(ep, &base, method, &url, headers, body, Some(&value))
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_send(
        &self,
        ep: &Endpoint,
        base: &Url,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<MakeBody<'_>>,
        auth: Option<&HeaderValue>,
    ) -> Result<Response, RegistryError> {
        let http = self.http_for(ep.insecure && self.is_named_insecure(ep))?;
        let mut req = http.request(method, url.clone()).headers(headers.clone());
        if let Some(a) = auth.filter(|_| same_origin(url, base)) {
            req = req.header(AUTHORIZATION, a.clone());
        }
        if let Some(make) = body {
            req = req.body(make()?);
        }
        req.send().await.map_err(|e| super::http_error(url, e))
    }
}

fn header_value(url: &Url, v: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(v).map_err(|_| RegistryError::Protocol {
        url: url.clone(),
        message: format!("{v:?} cannot be sent as a header"),
    })
}

/// A body streaming the blob `digest` stored at `path` in 1 MiB chunks,
/// for the upload to `url`.
fn file_body(path: &Path, digest: &Digest, url: &Url) -> Result<Body, RegistryError> {
    use tokio::io::AsyncReadExt;
    let file = std::fs::File::open(path).map_err(|source| RegistryError::Blob {
        digest: digest.clone(),
        url: url.clone(),
        source: crate::store::StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let file = tokio::fs::File::from_std(file);
    let stream = futures_util::stream::unfold(Some(file), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(f)))
            }
            // The error ends the body; reqwest reports it.
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(Body::wrap_stream(stream))
}

/// The response when it is a success; else an error that quotes the
/// registry's error body (its `errors[].code` says what was refused).
async fn expect_success(
    r: &RegistryRef,
    ep: &Endpoint,
    resp: Response,
) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let url = resp.url().clone();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized {
            reference: r.to_string(),
            host: super::host_port(&ep.base),
            status,
            hint: PUSH_DENIED_HINT,
        });
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(super::parse_retry_after);
    let mut body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    body.truncate(MAX_ERROR_BODY);
    let text = String::from_utf8_lossy(&body).trim().to_string();
    Err(RegistryError::Status {
        url,
        status,
        detail: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
        retry_after,
    })
}
