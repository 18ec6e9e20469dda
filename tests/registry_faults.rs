//! Fault tests: `hoist::pull::pull` against an in-process registry that
//! misbehaves on purpose (tests/common/fault_registry.rs). Each test asserts
//! the exact outcome and that the store holds no corrupt or partial blob
//! under `blobs/`.

mod common {
    pub mod fault_registry;
}

use std::time::{Duration, Instant};

use common::fault_registry::*;
use hoist::digest::Digest;
use hoist::manifest::{ManifestError, DOCKER_MANIFEST, MAX_DOCUMENT_SIZE, OCI_INDEX, OCI_MANIFEST};
use hoist::platform::Platform;
use hoist::pull::{PullError, PullOptions};
use hoist::registry::RegistryError;
use hoist::store::StoreError;
use reqwest::StatusCode;

/// Tests that read or set the credential environment hold this.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A far bound on what a client that stopped early can have been sent:
/// socket buffers on loopback hold a few MiB, endless bodies run to 1 GiB.
const READ_BOUND: u64 = 64 << 20;

async fn registry_with_image() -> (Registry, Image) {
    let reg = Registry::start().await;
    let img = Image::new(1);
    reg.serve("latest", &img);
    (reg, img)
}

/// After a successful pull: every blob present, no partial left, one entry.
fn assert_complete(store: &hoist::store::Store, img: &Image) {
    let present = assert_store_clean(store);
    for b in img.blobs() {
        assert!(has(store, b), "{} missing", b.digest);
        assert!(present.contains(&b.digest));
        assert_eq!(partial_len(store, &b.digest), None, "partial left");
    }
    assert_eq!(recorded(store), 1);
}

/// After a refused pull: nothing corrupt visible, nothing recorded.
fn assert_refused(store: &hoist::store::Store) {
    assert_store_clean(store);
    assert_eq!(recorded(store), 0, "{:?}", tree(store.root()));
}

/// The `Range` headers of the requests for `blob`, in order.
fn ranges(reg: &Registry, blob: &Blob) -> Vec<Option<String>> {
    let requests = reg.requests(&Target::blob(&blob.digest));
    requests.into_iter().map(|l| l.range).collect()
}

fn range_from(n: usize) -> Option<String> {
    Some(format!("bytes={n}-"))
}

#[tokio::test]
async fn wrong_blob_bytes_fail_at_once_and_leave_nothing() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    reg.fault(Target::blob(&layer.digest), usize::MAX, Fault::WrongBytes);
    let (_dir, store) = store();
    let err = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap_err();
    let wrong = Digest::sha256_of(&layer.bytes.iter().map(|b| !b).collect::<Vec<_>>());
    assert!(
        matches!(&err, PullError::Store(StoreError::DigestMismatch { expected, found })
            if *expected == layer.digest && *found == wrong),
        "{err:?}"
    );
    assert_eq!(reg.count(&Target::blob(&layer.digest)), 1, "not retried");
    assert_eq!(partial_len(&store, &layer.digest), None, "partial deleted");
    assert!(!has(&store, layer));
    assert_refused(&store);
}

#[tokio::test]
async fn longer_body_is_refused_at_size_plus_one() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    let endless = Fault::Endless {
        content_length: None,
    };
    reg.fault(Target::blob(&layer.digest), usize::MAX, endless);
    let (_dir, store) = store();
    let err = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::Blob {
            digest, source: StoreError::SizeMismatch { expected, found, .. }, ..
        }) if *digest == layer.digest && *expected == layer.size() as u64
            && *found > *expected && *found <= *expected + (16 << 10)),
        "{err:?}"
    );
    let sent = reg.streamed();
    assert!(sent < READ_BOUND, "the client read on: {sent} bytes sent");
    assert_eq!(reg.count(&Target::blob(&layer.digest)), 1, "not retried");
    assert_eq!(partial_len(&store, &layer.digest), None, "partial deleted");
    assert_refused(&store);
}

#[tokio::test]
async fn declared_length_over_size_is_refused_before_reading() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[1];
    let declared = 1u64 << 30;
    let endless = Fault::Endless {
        content_length: Some(declared),
    };
    reg.fault(Target::blob(&layer.digest), usize::MAX, endless);
    let (_dir, store) = store();
    let err = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::Blob {
            source: StoreError::SizeMismatch { expected, found, .. }, ..
        }) if *expected == layer.size() as u64 && *found == declared),
        "{err:?}"
    );
    assert!(reg.streamed() < READ_BOUND, "sent {}", reg.streamed());
    assert_eq!(reg.count(&Target::blob(&layer.digest)), 1);
    assert_refused(&store);
}

#[tokio::test]
async fn truncated_body_resumes_with_range() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    let half = layer.size() / 2;
    reg.fault(Target::blob(&layer.digest), 1, Fault::Truncate(half));
    let (_dir, store) = store();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    assert_eq!(ranges(&reg, layer), vec![None, range_from(half)]);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn resume_ignored_by_the_server_starts_over() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    let half = layer.size() / 2;
    reg.fault(Target::blob(&layer.digest), 1, Fault::Truncate(half));
    reg.fault(Target::blob(&layer.digest), 1, Fault::IgnoreRange);
    let (_dir, store) = store();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    assert_eq!(ranges(&reg, layer), vec![None, range_from(half)]);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn resume_answered_from_another_offset_starts_over() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    let half = layer.size() / 2;
    reg.fault(Target::blob(&layer.digest), 1, Fault::Truncate(half));
    reg.fault(Target::blob(&layer.digest), 1, Fault::WrongRange);
    let (_dir, store) = store();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    assert_eq!(ranges(&reg, layer), vec![None, range_from(half), None]);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn connection_reset_mid_blob_resumes() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    let half = layer.size() / 2;
    reg.fault(Target::blob(&layer.digest), 1, Fault::Reset(half));
    let (_dir, store) = store();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    // The RST discards what the client had not read yet (the server pauses
    // first so that is normally nothing): it resumes from what it holds.
    let r = ranges(&reg, layer);
    assert_eq!(r.len(), 2, "{r:?}");
    let resumed_at = r[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    assert!(resumed_at.is_some_and(|n| n > 0 && n <= half), "{r:?}");
    assert_complete(&store, &img);
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let (reg, img) = registry_with_image().await;
    let layer = Target::blob(&img.layers[1].digest);
    reg.fault(
        Target::Manifest("latest".into()),
        1,
        Fault::Status(500, vec![]),
    );
    reg.fault(layer.clone(), 1, Fault::Status(500, vec![]));
    let (_dir, store) = store();
    let pulled = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, img.digest);
    assert_eq!(reg.count(&Target::Manifest("latest".into())), 2);
    assert_eq!(reg.count(&layer), 2);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let (reg, img) = registry_with_image().await;
    let retry_after = vec![("retry-after", "1".to_string())];
    let layer = Target::blob(&img.layers[0].digest);
    reg.fault(layer.clone(), 1, Fault::Status(429, retry_after));
    let (_dir, store) = store();
    let start = Instant::now();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "waited only {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
    assert_eq!(reg.count(&layer), 2);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn stalled_body_times_out_and_resumes() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[1];
    let half = layer.size() / 2;
    reg.fault(Target::blob(&layer.digest), 1, Fault::Stall(half));
    let (_dir, store) = store();
    let start = Instant::now();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(ranges(&reg, layer), vec![None, range_from(half)]);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn persistent_503_gives_up_after_the_attempts() {
    let (reg, img) = registry_with_image().await;
    let attempts = 4;
    let config = Target::blob(&img.config.digest);
    reg.fault(config.clone(), usize::MAX, Fault::Status(503, vec![]));
    let (_dir, store) = store();
    let err = pull_default(&store, &client(attempts), &reg.reference("latest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::Status { status, .. })
            if *status == StatusCode::SERVICE_UNAVAILABLE),
        "{err:?}"
    );
    assert_eq!(reg.count(&config), attempts as usize);
    assert!(!has(&store, &img.config));
    assert_refused(&store);
}

#[tokio::test]
async fn pinned_digest_with_other_bytes_is_refused() {
    let (reg, img) = registry_with_image().await;
    let other = Image::new(2);
    reg.put_manifest(
        &img.digest.to_string(),
        OCI_MANIFEST,
        other.manifest.clone(),
    );
    let (_dir, store) = store();
    let reference = reg.reference(&img.digest.to_string());
    let err = pull_default(&store, &client(3), &reference)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::PinnedMismatch { expected, found, .. }
            if *expected == img.digest && *found == other.digest),
        "{err:?}"
    );
    assert_eq!(reg.blob_requests(), 0);
    assert!(assert_store_clean(&store).is_empty(), "the bytes were kept");
    assert_refused(&store);
}

#[tokio::test]
async fn redirect_to_blob_host_drops_authorization() {
    let _env = ENV.lock().await;
    let (reg, img) = registry_with_image().await;
    let blob_host = Registry::start().await;
    blob_host.serve("latest", &img);
    reg.set_auth(Auth::Bearer);
    for b in img.blobs() {
        let to = format!("{}/v2/{REPO}/blobs/{}", blob_host.url(), b.digest);
        reg.fault(Target::blob(&b.digest), usize::MAX, Fault::Redirect(to));
    }
    let (_dir, store) = store();
    pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap();
    assert_complete(&store, &img);
    assert!(reg.count(&Target::Token) >= 1, "no token was fetched");
    let bearer = format!("Bearer {TOKEN}");
    let redirected: Vec<_> = reg
        .log()
        .into_iter()
        .filter(|l| matches!(l.target, Target::Blob(_)))
        .collect();
    assert!(!redirected.is_empty());
    for l in &redirected {
        assert_eq!(l.authorization.as_deref(), Some(bearer.as_str()), "{l:?}");
    }
    for b in img.blobs() {
        assert_eq!(blob_host.count(&Target::blob(&b.digest)), 1);
    }
    let leaked: Vec<_> = blob_host
        .log()
        .into_iter()
        .filter(|l| l.authorization.is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "Authorization sent to the blob host: {leaked:?}"
    );
}

/// Credential variables set by one test, all removed when it ends.
struct CredEnv;

const CRED_VARS: [&str; 4] = [
    "HOIST_REGISTRY_USER",
    "HOIST_REGISTRY_PASSWORD",
    "DOCKER_CONFIG",
    "REGISTRY_AUTH_FILE",
];

impl CredEnv {
    /// No credentials anywhere: the developer's own docker and podman
    /// files are replaced by ones in `empty`, which does not hold them.
    fn isolated(empty: &std::path::Path) -> CredEnv {
        std::env::set_var("DOCKER_CONFIG", empty);
        std::env::set_var("REGISTRY_AUTH_FILE", empty.join("auth.json"));
        std::env::remove_var("HOIST_REGISTRY_USER");
        std::env::remove_var("HOIST_REGISTRY_PASSWORD");
        CredEnv
    }

    fn user(&self, user: &str, password: &str) {
        std::env::set_var("HOIST_REGISTRY_USER", user);
        std::env::set_var("HOIST_REGISTRY_PASSWORD", password);
    }
}

impl Drop for CredEnv {
    fn drop(&mut self) {
        for v in CRED_VARS {
            std::env::remove_var(v);
        }
    }
}

#[tokio::test]
async fn basic_auth_from_environment() {
    let _lock = ENV.lock().await;
    let empty = tempfile::tempdir().unwrap();
    let env = CredEnv::isolated(empty.path());
    let (reg, img) = registry_with_image().await;
    reg.set_auth(Auth::Basic {
        user: "u".into(),
        password: "p".into(),
    });
    let reference = reg.reference("latest");
    let (_dir, store) = store();

    let err = pull_default(&store, &client(3), &reference)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::Unauthorized { status, .. })
            if *status == StatusCode::UNAUTHORIZED),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("HOIST_REGISTRY_USER") && msg.contains("HOIST_REGISTRY_PASSWORD"),
        "{msg}"
    );

    env.user("u", "nope");
    let err = pull_default(&store, &client(3), &reference)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PullError::Registry(RegistryError::Unauthorized { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused"), "{err}");

    env.user("u", "p");
    pull_default(&store, &client(3), &reference).await.unwrap();
    assert_complete(&store, &img);
    assert_eq!(
        reg.blob_requests(),
        3,
        "blobs fetched once, with credentials"
    );
    // No credentials: one 401. Wrong ones: a 401, one try with them, a
    // 401 again and no retry. Right ones: a 401, then the manifest.
    assert_eq!(reg.count(&Target::Manifest("latest".into())), 1 + 2 + 2);
}

#[tokio::test]
async fn missing_manifest_is_not_found_and_forbidden_is_unauthorized() {
    let (reg, _img) = registry_with_image().await;
    let (_dir, store) = store();
    let missing = reg.reference("missing");
    let err = pull_default(&store, &client(3), &missing)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::NotFound { reference, .. })
            if *reference == missing.to_string()),
        "{err:?}"
    );
    assert!(err.to_string().contains(&missing.to_string()), "{err}");
    assert_eq!(reg.count(&Target::Manifest("missing".into())), 1);

    let latest = Target::Manifest("latest".into());
    reg.fault(latest.clone(), usize::MAX, Fault::Status(403, vec![]));
    let err = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::Unauthorized { status, .. })
            if *status == StatusCode::FORBIDDEN),
        "{err:?}"
    );
    assert_eq!(reg.count(&latest), 1, "403 is not retried");
    assert_eq!(reg.blob_requests(), 0);
    assert_refused(&store);
}

#[tokio::test]
async fn ambiguous_or_mistyped_manifests_are_refused() {
    let (reg, img) = registry_with_image().await;
    let mut both = img.manifest_json();
    both["manifests"] = serde_json::json!([]);
    reg.put_manifest("both", OCI_MANIFEST, both.to_string().into_bytes());
    reg.put_manifest("mistyped", DOCKER_MANIFEST, img.manifest.clone());
    let (_dir, store) = store();

    let err = pull_default(&store, &client(3), &reg.reference("both"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PullError::Manifest {
                source: ManifestError::Ambiguous,
                ..
            }
        ),
        "{err:?}"
    );
    let err = pull_default(&store, &client(3), &reg.reference("mistyped"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Manifest {
            source: ManifestError::ContentTypeMismatch { declared, content_type }, ..
        } if declared == OCI_MANIFEST && content_type == DOCKER_MANIFEST),
        "{err:?}"
    );
    assert_eq!(reg.blob_requests(), 0);
    assert!(assert_store_clean(&store).is_empty());
    assert_refused(&store);
}

#[tokio::test]
async fn invalid_descriptor_digest_is_refused_before_any_blob_request() {
    let (reg, img) = registry_with_image().await;
    let mut m = img.manifest_json();
    m["layers"][0]["digest"] = serde_json::json!("sha256:../../etc/passwd");
    reg.put_manifest("evil", OCI_MANIFEST, m.to_string().into_bytes());
    let (_dir, store) = store();
    let err = pull_default(&store, &client(3), &reg.reference("evil"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PullError::Manifest {
                source: ManifestError::Json(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("invalid digest"), "{err}");
    assert_eq!(reg.blob_requests(), 0);
    assert!(assert_store_clean(&store).is_empty());
    assert_refused(&store);
}

#[tokio::test]
async fn interrupted_pull_resumes_from_the_partial() {
    let (reg, img) = registry_with_image().await;
    let layer = &img.layers[0];
    let half = layer.size() / 2;
    reg.fault(Target::blob(&layer.digest), usize::MAX, Fault::Stall(half));
    let (_dir, store) = store();
    let reference = reg.reference("latest");
    let err = pull_default(&store, &client(1), &reference)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::Stalled { .. })),
        "{err:?}"
    );
    assert_eq!(partial_len(&store, &layer.digest), Some(half as u64));
    assert!(!has(&store, layer), "a partial blob is visible");
    assert_refused(&store);

    reg.heal();
    pull_default(&store, &client(3), &reference).await.unwrap();
    assert_eq!(ranges(&reg, layer), vec![None, range_from(half)]);
    assert_complete(&store, &img);
}

#[tokio::test]
async fn pulling_a_complete_image_makes_no_blob_requests() {
    let (reg, img) = registry_with_image().await;
    let (_dir, store) = store();
    let reference = reg.reference("latest");
    let first = pull_default(&store, &client(3), &reference).await.unwrap();
    assert_eq!(first.blobs_downloaded, 3);
    assert_eq!(reg.blob_requests(), 3);
    let again = pull_default(&store, &client(3), &reference).await.unwrap();
    assert_eq!(again.blobs_downloaded, 0);
    assert_eq!(reg.blob_requests(), 3, "blobs were downloaded again");
    assert_complete(&store, &img);
}

#[tokio::test]
async fn missing_platform_lists_those_available() {
    let arm64: Platform = "linux/arm64".parse().unwrap();
    let s390x: Platform = "linux/s390x".parse().unwrap();
    let host = Platform::host();
    if host.matches(&arm64) || host.matches(&s390x) {
        eprintln!("skipped: the host platform {host} is one of the index's");
        return;
    }
    let reg = Registry::start().await;
    let (a, s) = (
        Image::for_platform(&arm64, 3),
        Image::for_platform(&s390x, 4),
    );
    for i in [&a, &s] {
        reg.serve(&format!("only-{}", i.digest.hex()), i);
    }
    reg.put_manifest("multi", OCI_INDEX, index_of(&[(&arm64, &a), (&s390x, &s)]));
    let (_dir, store) = store();
    let reference = reg.reference("multi");
    let err = pull_default(&store, &client(3), &reference)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::PlatformMissing { wanted, available, .. }
            if *wanted == host && *available == vec![arm64.clone(), s390x.clone()]),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("linux/arm64") && msg.contains("linux/s390x"),
        "{msg}"
    );
    assert_eq!(reg.blob_requests(), 0);

    let opts = PullOptions {
        platform: Some(arm64.clone()),
        ..PullOptions::default()
    };
    let pulled = pull_with(&store, &client(3), &reference, &opts)
        .await
        .unwrap();
    assert_eq!(pulled.platform, arm64);
    assert_eq!(pulled.manifest_digest, a.digest);
    assert_complete(&store, &a);
}

#[tokio::test]
async fn endless_manifest_is_refused_without_reading_it_all() {
    let (reg, _img) = registry_with_image().await;
    let endless = Fault::Endless {
        content_length: None,
    };
    reg.fault(Target::Manifest("latest".into()), usize::MAX, endless);
    let (_dir, store) = store();
    let err = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::ManifestTooLarge { size, .. })
            if *size > MAX_DOCUMENT_SIZE),
        "{err:?}"
    );
    assert!(reg.streamed() < READ_BOUND, "sent {}", reg.streamed());
    assert_eq!(reg.count(&Target::Manifest("latest".into())), 1);
    assert_refused(&store);
}

#[tokio::test]
async fn manifest_declared_too_large_is_refused_before_reading() {
    let (reg, _img) = registry_with_image().await;
    let declared = 512u64 << 20;
    let endless = Fault::Endless {
        content_length: Some(declared),
    };
    reg.fault(Target::Manifest("latest".into()), usize::MAX, endless);
    let (_dir, store) = store();
    let err = pull_default(&store, &client(3), &reg.reference("latest"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Registry(RegistryError::ManifestTooLarge { size, .. })
            if *size == declared),
        "{err:?}"
    );
    assert!(reg.streamed() < READ_BOUND, "sent {}", reg.streamed());
    assert_refused(&store);
}
