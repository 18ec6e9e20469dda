//! `hoist bake` on the sample images (docs/pipeline.md): the combination of pyfix,
//! agent-oracle and gateway-replay written to OCI layouts, the test
//! registries and a docker-archive, and read back by the tools users have:
//!
//! - two bakes from two fresh stores give the same manifest digest;
//! - skopeo reads the layout; umoci unpacks it to exactly the tree of
//!   `hoist materialize --rootfs copy` of the same axes (apart from
//!   `/.hoist`), with `/opt/gateway` still 0700 root;
//! - a push to the plain registry, and with credentials to the auth one,
//!   serves the manifest whose bytes hash to the printed digest;
//! - `docker load` of the docker-archive gives the image whose ID is the
//!   config digest, labelled with the axes.
//!
//! Needs root (the subtrees keep their owners), the test registries and
//! samples (scripts/test-env), skopeo and umoci, and Docker for the
//! archive; skips with the reason otherwise.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

struct Env {
    oci: String,
    plain: String,
    auth: String,
    ca: String,
    user: String,
    password: String,
    dir: PathBuf,
}

fn env() -> Option<Env> {
    if !is_root() {
        skip("bake tests need root (the axis subtrees keep their owners)");
        return None;
    }
    Some(Env {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        plain: env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?,
        auth: env_or_skip("HOIST_TEST_REGISTRY_AUTH")?,
        ca: env_or_skip("HOIST_TEST_CA")?,
        user: env_or_skip("HOIST_TEST_AUTH_USER")?,
        password: env_or_skip("HOIST_TEST_AUTH_PASSWORD")?,
        dir: PathBuf::from(env_or_skip("HOIST_TEST_DIR")?),
    })
}

impl Env {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }

    /// The axes of every case here: a benchmark, an agent and a gateway.
    fn axes(&self) -> Vec<String> {
        vec![
            "--benchmark".into(),
            self.r("pyfix"),
            "--agent".into(),
            self.r("agent-oracle"),
            "--gateway".into(),
            self.r("gateway-replay"),
        ]
    }

    /// One store for the cases that may share it.
    fn store(&self) -> PathBuf {
        self.dir.join("bake-store")
    }
}

/// `hoist bake AXES --tag DEST` in `store`; the printed digest.
fn bake(store: &Path, axes: &[String], dest: &str) -> String {
    let o = ok(hoist(store).arg("bake").args(axes).arg("--tag").arg(dest));
    let digest = stdout(&o).trim().to_string();
    assert!(digest.starts_with("sha256:"), "bake printed {digest:?}");
    digest
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn baking_twice_gives_the_same_digest() {
    let Some(e) = env() else { return };
    if !have_tool("skopeo") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // Fresh stores: nothing cached from one bake helps the other.
    let digests: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            let layout = t.path().join(format!("layout-{n}"));
            bake(
                &t.path().join(format!("store-{n}")),
                &e.axes(),
                &format!("oci:{}:combo", layout.display()),
            )
        })
        .collect();
    eprintln!("baked twice: {} {}", digests[0], digests[1]);
    assert_eq!(
        digests[0], digests[1],
        "two bakes of the same inputs differ"
    );
    let layout = t.path().join("layout-a");
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["manifests"][0]["digest"], digests[0].as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "combo"
    );

    let inspect: Value = serde_json::from_slice(
        &ok(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:combo", layout.display())))
        .stdout,
    )
    .unwrap();
    assert_eq!(inspect["Digest"], digests[0].as_str());
    let labels = &inspect["Labels"];
    for (axis, tag) in [
        ("benchmark", "pyfix"),
        ("agent", "agent-oracle"),
        ("gateway", "gateway-replay"),
    ] {
        assert_eq!(labels[format!("io.github.hoist.{axis}.ref")], e.r(tag));
        let want = sample_digest(tag);
        assert_eq!(
            labels[format!("io.github.hoist.{axis}.digest")],
            want.as_str()
        );
    }
    assert_eq!(labels["io.github.hoist.version"], env!("CARGO_PKG_VERSION"));

    // The benchmark's layers are there unchanged, then three appended ones;
    // the manifest carries the same annotations as the config labels.
    let hex = digests[0].trim_start_matches("sha256:");
    let manifest = read_json(&layout.join("blobs/sha256").join(hex));
    let bench = read_json(
        &Path::new(&e.oci).join("blobs/sha256").join(
            std::env::var("HOIST_SAMPLE_PYFIX_DIGEST")
                .unwrap()
                .trim_start_matches("sha256:"),
        ),
    );
    let layers = manifest["layers"].as_array().unwrap();
    let base = bench["layers"].as_array().unwrap();
    assert_eq!(layers.len(), base.len() + 3);
    for (a, b) in layers.iter().zip(base) {
        assert_eq!(a["digest"], b["digest"]);
    }
    assert_eq!(
        manifest["annotations"]["io.github.hoist.agent.digest"],
        labels["io.github.hoist.agent.digest"]
    );
}

#[test]
fn baked_image_unpacks_to_the_crane_rootfs() {
    let Some(e) = env() else { return };
    if !have_tool("umoci") {
        return;
    }
    let store = e.store();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    bake(
        &store,
        &e.axes(),
        &format!("oci:{}:combo", layout.display()),
    );
    let bundle = t.path().join("bundle");
    ok(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:combo", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let crane = t.path().join("crane");
    ok(hoist(&store)
        .args(["--quiet", "materialize", "--rootfs", "copy"])
        .args(e.axes())
        .arg("--out")
        .arg(&crane));
    let list = |dir: &Path, exclude: &[&str]| {
        let mut c = hoist(&store);
        c.args(["tree-digest", "--list"]).arg(dir);
        for x in exclude {
            c.args(["--exclude", x]);
        }
        stdout(&ok(&mut c))
    };
    let baked = list(&rootfs, &["/.hoist"]);
    let fused = list(&crane, &[]);
    if baked != fused {
        let a: Vec<&str> = baked.lines().collect();
        let b: Vec<&str> = fused.lines().collect();
        let only_baked: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).take(40).collect();
        let only_fused: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).take(40).collect();
        panic!("umoci's tree of the baked image differs from crane's:\nonly baked: {only_baked:#?}\nonly crane: {only_fused:#?}");
    }
    eprintln!("baked == crane: {} entries", baked.lines().count());

    // docs/images.md: /opt/gateway stays 0700 root (COPY --from would not keep it).
    for (p, mode) in [
        ("opt/gateway", 0o700),
        ("tests", 0o700),
        ("tasks", 0o700),
        (".hoist", 0o755),
        (".hoist/hoist", 0o755),
    ] {
        let m = fs::symlink_metadata(rootfs.join(p)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (mode, 0, 0),
            "/{p} in the baked image"
        );
    }
    assert!(rootfs.join("opt/agent/run").is_file());
    assert!(rootfs.join("opt/gateway/run").is_file());
}

#[test]
fn push_to_the_plain_registry() {
    let Some(e) = env() else { return };
    if !have_tool("skopeo") {
        return;
    }
    let dest = format!("{}/hoist-bake-test/combo:plain", e.plain);
    let digest = bake(&e.store(), &e.axes(), &dest);
    let raw = ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{dest}"),
    ]))
    .stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), digest);
    // Again: every blob is there already; the same manifest is put.
    assert_eq!(bake(&e.store(), &e.axes(), &dest), digest);
    // And pulled back by hoist, by digest.
    let pinned = format!("{}/hoist-bake-test/combo@{digest}", e.plain);
    let t = tempfile::tempdir().unwrap();
    ok(hoist(t.path()).args(["--quiet", "pull"]).arg(&pinned));
}

#[test]
fn push_to_the_auth_registry_needs_credentials() {
    let Some(e) = env() else { return };
    if !have_tool("skopeo") {
        return;
    }
    let dest = format!("{}/hoist-bake-test/combo:auth", e.auth);
    let without = run(hoist(&e.store())
        .args(["--ca-file", &e.ca, "bake"])
        .args(e.axes())
        .args(["--tag", &dest]));
    assert_eq!(without.status.code(), Some(1), "{}", stderr(&without));
    assert!(
        stderr(&without).contains("401") && stderr(&without).contains("HOIST_REGISTRY_USER"),
        "{}",
        stderr(&without)
    );
    let o = ok(hoist(&e.store())
        .env("HOIST_REGISTRY_USER", &e.user)
        .env("HOIST_REGISTRY_PASSWORD", &e.password)
        .args(["--ca-file", &e.ca, "bake"])
        .args(e.axes())
        .args(["--tag", &dest]));
    let digest = stdout(&o).trim().to_string();
    let ca_dir = Path::new(&e.ca).parent().unwrap();
    let raw = ok(Command::new("skopeo")
        .arg("inspect")
        .arg("--cert-dir")
        .arg(ca_dir)
        .arg("--creds")
        .arg(format!("{}:{}", e.user, e.password))
        .arg("--raw")
        .arg(format!("docker://{dest}")))
    .stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), digest);
}

#[test]
fn docker_archive_loads_into_docker() {
    let Some(e) = env() else { return };
    if !have_docker() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("combo.tar");
    let name = "hoist-bake-test/combo:archive";
    let o = ok(hoist(&e.store())
        .args(["--json", "bake"])
        .args(e.axes())
        .arg("--tag")
        .arg(format!("docker-archive:{}:{name}", archive.display())));
    let baked: Value = serde_json::from_slice(&o.stdout).unwrap();
    let config = baked["config_digest"].as_str().unwrap().to_string();
    let loaded = stdout(&ok(docker().arg("load").arg("-i").arg(&archive)));
    assert!(loaded.contains(name), "docker load said: {loaded}");
    let inspect: Value =
        serde_json::from_slice(&ok(docker().args(["image", "inspect", name])).stdout).unwrap();
    assert_eq!(
        inspect[0]["Id"],
        config.as_str(),
        "the image ID is the config digest"
    );
    assert_eq!(
        inspect[0]["Config"]["Labels"]["io.github.hoist.benchmark.digest"],
        baked["annotations"]["io.github.hoist.benchmark.digest"]
    );
    let _ = run(docker().args(["rmi", name])); // only the tag; best effort
}

#[test]
fn bad_destinations_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    for dest in [
        "oci:/tmp/no-tag",
        "docker-archive:",
        "registry.example/Upper:x",
    ] {
        let o = run(hoist(t.path()).args([
            "bake",
            "--benchmark",
            "oci:/nonexistent:b",
            "--agent",
            "oci:/nonexistent:a",
            "--tag",
            dest,
        ]));
        assert_eq!(o.status.code(), Some(2), "{dest}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("invalid bake destination"),
            "{dest}: {}",
            stderr(&o)
        );
    }
}

// ------------------------------------------- a push registry in process

/// A registry that takes pushes only with a token that grants `push`
/// (its challenge names a pull-only scope, to check that a push asks for
/// more), keeps what it was sent, and can lie about the manifest digest.
mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::http::{header, Method, StatusCode};
    use axum::response::Response;
    use axum::Router;

    #[derive(Default)]
    pub struct Shared {
        pub base: String,
        pub blobs: Mutex<HashMap<String, Vec<u8>>>,
        pub manifests: Mutex<HashMap<String, Vec<u8>>>,
        pub scopes: Mutex<Vec<String>>,
        pub lie_about_digest: Mutex<bool>,
    }

    pub async fn start() -> Arc<Shared> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Default::default()
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        shared
    }

    fn reply(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Response {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.body(Body::from(body)).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", super::sha256_hex(bytes))
    }

    async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let path = uri.path().to_string();
        if path == "/token" {
            let scope = uri.query().unwrap_or_default().to_string();
            s.scopes.lock().unwrap().push(scope.clone());
            let token = if scope.contains("pull%2Cpush") {
                "push-token"
            } else {
                "pull-token"
            };
            return reply(
                StatusCode::OK,
                &[],
                format!(r#"{{"token":"{token}"}}"#).into(),
            );
        }
        let authorized = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v == "Bearer push-token");
        if !authorized {
            let challenge = format!(
                r#"Bearer realm="{}/token",service="fake",scope="repository:x:pull""#,
                s.base
            );
            return reply(
                StatusCode::UNAUTHORIZED,
                &[("www-authenticate", challenge)],
                vec![],
            );
        }
        let body = axum::body::to_bytes(req.into_body(), 1 << 30)
            .await
            .unwrap()
            .to_vec();
        match (method, path.as_str()) {
            (Method::HEAD, p) if p.starts_with("/v2/x/blobs/") => {
                let d = p.trim_start_matches("/v2/x/blobs/");
                let status = if s.blobs.lock().unwrap().contains_key(d) {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                reply(status, &[], vec![])
            }
            (Method::POST, "/v2/x/blobs/uploads/") => reply(
                StatusCode::ACCEPTED,
                &[("location", "/v2/x/blobs/uploads/u1?_state=abc".into())],
                vec![],
            ),
            (Method::PUT, "/v2/x/blobs/uploads/u1") => {
                let q = uri.query().unwrap_or_default();
                assert!(
                    q.contains("_state=abc"),
                    "the session state was dropped: {q}"
                );
                let d = q
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("digest="))
                    .unwrap();
                let d = d.replace("%3A", ":");
                if sha(&body) != d {
                    return reply(StatusCode::BAD_REQUEST, &[], b"DIGEST_INVALID".to_vec());
                }
                s.blobs.lock().unwrap().insert(d, body);
                reply(StatusCode::CREATED, &[], vec![])
            }
            (Method::PUT, p) if p.starts_with("/v2/x/manifests/") => {
                let digest = if *s.lie_about_digest.lock().unwrap() {
                    sha(b"something else")
                } else {
                    sha(&body)
                };
                s.manifests
                    .lock()
                    .unwrap()
                    .insert(p.trim_start_matches("/v2/x/manifests/").into(), body);
                reply(
                    StatusCode::CREATED,
                    &[("docker-content-digest", digest)],
                    vec![],
                )
            }
            _ => reply(StatusCode::NOT_FOUND, &[], vec![]),
        }
    }
}

#[test]
fn push_asks_for_a_push_token_and_checks_the_echoed_digest() {
    use hoist::digest::Digest;
    use hoist::manifest::Descriptor;
    use hoist::reference::Reference;
    use hoist::registry::{Client, RegistryOptions};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(fake::start());
    let host = server.base.trim_start_matches("http://").to_string();
    let Ok(Reference::Registry(target)) = format!("{host}/x:t").parse() else {
        panic!("a registry reference")
    };
    let client = Client::new(RegistryOptions::default()).unwrap();
    let t = tempfile::tempdir().unwrap();
    let blob = b"layer bytes".repeat(100_000);
    let path = t.path().join("blob");
    fs::write(&path, &blob).unwrap();
    let desc = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: Digest::sha256_of(&blob),
        size: blob.len() as u64,
        platform: None,
        annotations: None,
        urls: None,
    };
    let uploaded = rt
        .block_on(client.push_blob(&target, &desc, &path))
        .unwrap();
    assert!(uploaded);
    assert_eq!(
        server.blobs.lock().unwrap().get(&desc.digest.to_string()),
        Some(&blob),
        "the registry got other bytes"
    );
    let again = rt
        .block_on(client.push_blob(&target, &desc, &path))
        .unwrap();
    assert!(!again, "a blob the registry has is not uploaded again");
    let scopes = server.scopes.lock().unwrap().clone();
    assert!(
        !scopes.is_empty()
            && scopes
                .iter()
                .all(|s| s.contains("repository%3Ax%3Apull%2Cpush")),
        "token scopes asked: {scopes:?}"
    );

    let manifest = br#"{"schemaVersion":2}"#;
    let d = rt
        .block_on(client.push_manifest(&target, hoist::manifest::OCI_MANIFEST, manifest))
        .unwrap();
    assert_eq!(d, Digest::sha256_of(manifest));
    assert_eq!(server.manifests.lock().unwrap()["t"], manifest.to_vec());

    *server.lie_about_digest.lock().unwrap() = true;
    let err = rt
        .block_on(client.push_manifest(&target, hoist::manifest::OCI_MANIFEST, manifest))
        .unwrap_err();
    assert!(err.to_string().contains("stored the manifest as"), "{err}");
}
