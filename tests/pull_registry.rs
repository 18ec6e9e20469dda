//! `hoist pull` against real registries (Debian's docker-registry, the CNCF
//! distribution server) in three variants, started by `scripts/test-env`:
//! plain HTTP, TLS with a self-signed CA, and htpasswd basic auth over TLS.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

struct Env {
    plain: String,
    tls: String,
    auth: String,
    ca: String,
    user: String,
    password: String,
    small: String,
    base: String,
    multi: String,
    multi_amd64: String,
    multi_arm64: String,
    oci: String,
}

fn env() -> Option<Env> {
    Some(Env {
        plain: env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?,
        tls: env_or_skip("HOIST_TEST_REGISTRY_TLS")?,
        auth: env_or_skip("HOIST_TEST_REGISTRY_AUTH")?,
        ca: env_or_skip("HOIST_TEST_CA")?,
        user: env_or_skip("HOIST_TEST_AUTH_USER")?,
        password: env_or_skip("HOIST_TEST_AUTH_PASSWORD")?,
        small: env_or_skip("HOIST_FIXTURE_SMALL_DIGEST")?,
        base: env_or_skip("HOIST_FIXTURE_BASE_DIGEST")?,
        multi: env_or_skip("HOIST_FIXTURE_MULTI_DIGEST")?,
        multi_amd64: env_or_skip("HOIST_FIXTURE_MULTI_AMD64_DIGEST")?,
        multi_arm64: env_or_skip("HOIST_FIXTURE_MULTI_ARM64_DIGEST")?,
        oci: env_or_skip("HOIST_FIXTURE_OCI")?,
    })
}

fn pull_json(cmd: &mut Command) -> serde_json::Value {
    let o = ok(cmd.arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("pull --json prints JSON");
    v[0].clone()
}

#[test]
fn pulls_from_plain_http_loopback_registry() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let v = pull_json(hoist(store.path()).args(["pull", &format!("{}/small", e.plain)]));
    assert_eq!(v["manifest_digest"], e.small);
    assert_eq!(v["platform"]["architecture"], "amd64");
    assert!(v["blobs_downloaded"].as_u64().unwrap() >= 2);
    assert_store_clean(store.path());
}

#[test]
fn pulls_over_tls_with_ca_file_and_refuses_unknown_ca() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let r = format!("{}/small", e.tls);
    let v = pull_json(hoist(store.path()).args(["pull", "--ca-file", &e.ca, &r]));
    assert_eq!(v["manifest_digest"], e.small);

    // Without the CA the certificate is not trusted; loopback falls back to
    // plain HTTP, which a TLS server refuses: either way, a clear failure.
    let other = tempfile::tempdir().unwrap();
    let o = run(hoist(other.path()).args(["pull", &r]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&e.tls),
        "error names the registry: {}",
        stderr(&o)
    );
    assert!(!other
        .path()
        .join("blobs/sha256")
        .read_dir()
        .unwrap()
        .any(|_| true));
}

#[test]
fn pulls_with_basic_auth_from_env_config_json_and_helper() {
    let Some(e) = env() else { return };
    let r = format!("{}/small", e.auth);

    // No credentials: exit 1 and a hint on how to log in.
    let store = tempfile::tempdir().unwrap();
    let o = run(hoist(store.path()).args(["pull", "--ca-file", &e.ca, &r]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("HOIST_REGISTRY_USER"), "{}", stderr(&o));

    // Wrong password: refused, and said so.
    let o = run(hoist(store.path())
        .args(["pull", "--ca-file", &e.ca, &r])
        .env("HOIST_REGISTRY_USER", &e.user)
        .env("HOIST_REGISTRY_PASSWORD", "wrong"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));

    // From the environment.
    let v = pull_json(
        hoist(store.path())
            .args(["pull", "--ca-file", &e.ca, &r])
            .env("HOIST_REGISTRY_USER", &e.user)
            .env("HOIST_REGISTRY_PASSWORD", &e.password),
    );
    assert_eq!(v["manifest_digest"], e.small);

    // From ~/.docker/config.json `auths`.
    let store = tempfile::tempdir().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let auth = base64_encode(&format!("{}:{}", e.user, e.password));
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, e.auth),
    )
    .unwrap();
    let v = pull_json(
        hoist(store.path())
            .args(["pull", "--ca-file", &e.ca, &r])
            .env("DOCKER_CONFIG", cfg.path()),
    );
    assert_eq!(v["manifest_digest"], e.small);

    // From a credential helper named in `credHelpers`.
    let store = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-hoisttest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = \"{}\" ] || exit 1\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{}\",\"Secret\":\"{}\"}}' \"$server\"\n",
            e.auth, e.user, e.password
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"hoisttest"}}}}"#, e.auth),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let v = pull_json(
        hoist(store.path())
            .args(["pull", "--ca-file", &e.ca, &r])
            .env("DOCKER_CONFIG", cfg.path())
            .env("PATH", path),
    );
    assert_eq!(v["manifest_digest"], e.small);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn selects_platform_from_index_and_lists_missing_ones() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let r = format!("{}/multi", e.plain);
    let v = pull_json(hoist(store.path()).args(["pull", &r]));
    assert_eq!(v["digest"], e.multi);
    assert_eq!(v["manifest_digest"], e.multi_amd64);
    let v = pull_json(hoist(store.path()).args(["pull", "--platform", "linux/arm64", &r]));
    assert_eq!(v["manifest_digest"], e.multi_arm64);
    assert_eq!(v["platform"]["architecture"], "arm64");
    let o = run(hoist(store.path()).args(["pull", "--platform", "linux/s390x", &r]));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64") && err.contains("linux/s390x"),
        "{err}"
    );
}

#[test]
fn pinned_digest_pull_and_second_pull_downloads_nothing() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let r = format!("{}/small@{}", e.plain, e.small);
    let v = pull_json(hoist(store.path()).args(["pull", &r]));
    assert_eq!(v["digest"], e.small);
    let v = pull_json(hoist(store.path()).args(["pull", &r]));
    assert_eq!(v["blobs_downloaded"], 0);
    // A pinned image complete in the store needs no registry at all: the
    // same digest under a host where nothing listens is found locally.
    let offline = format!("127.0.0.1:1/small@{}", e.small);
    let v = pull_json(hoist(store.path()).args(["pull", &offline]));
    assert_eq!(
        (v["digest"].as_str(), v["blobs_downloaded"].as_u64()),
        (Some(e.small.as_str()), Some(0))
    );

    // A digest the registry does not have is a clear failure, exit 1.
    let missing = format!("{}/small@sha256:{}", e.plain, "0".repeat(64));
    let o = run(hoist(store.path()).args(["pull", &missing]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

#[test]
fn malformed_reference_is_usage_error_naming_the_part() {
    let store = tempfile::tempdir().unwrap();
    let o = run(hoist(store.path()).args(["pull", "127.0.0.1:5000/Bad_Name"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Bad_Name"), "{}", stderr(&o));
    let o = run(hoist(store.path()).args(["pull", "x@sha256:1234"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sha256:1234"), "{}", stderr(&o));
}

#[test]
fn mirror_flag_and_registries_conf_rewrite() {
    let Some(e) = env() else { return };
    // `mirror.invalid` does not resolve: only the mirror can serve it.
    let store = tempfile::tempdir().unwrap();
    let v = pull_json(hoist(store.path()).args([
        "pull",
        "--mirror",
        &format!("mirror.invalid=http://{}", e.plain),
        "mirror.invalid/small",
    ]));
    assert_eq!(v["manifest_digest"], e.small);

    let conf = store.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"alias.invalid/team\"\nlocation = \"{}\"\n",
            e.plain
        ),
    )
    .unwrap();
    let v = pull_json(
        hoist(store.path())
            .args(["pull", "alias.invalid/team/small"])
            .env("CONTAINERS_REGISTRIES_CONF", &conf),
    );
    assert_eq!(v["manifest_digest"], e.small);
}

#[test]
fn pulls_from_oci_layout() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let v = pull_json(hoist(store.path()).args(["pull", &format!("oci:{}:small", e.oci)]));
    assert_eq!(v["manifest_digest"], e.small);
    let o = run(hoist(store.path()).args(["pull", &format!("oci:{}:nosuch", e.oci)]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("nosuch") && stderr(&o).contains("small"),
        "{}",
        stderr(&o)
    );
    assert_store_clean(store.path());
}

#[test]
fn skopeo_and_umoci_read_the_store() {
    let Some(e) = env() else { return };
    if !have_tool("skopeo") || !have_tool("umoci") {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let v = pull_json(hoist(store.path()).args(["pull", &format!("{}/small", e.plain)]));
    let name = v["name"].as_str().unwrap().to_string();
    let src = format!("oci:{}:{}", store.path().display(), name);
    let o = ok(Command::new("skopeo").args(["inspect", "--raw", &src]));
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&o.stdout))
    );
    assert_eq!(digest, e.small);
    let copy = tempfile::tempdir().unwrap();
    ok(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!("oci:{}:copy", copy.path().display()),
    ]));

    let unpacked = tempfile::tempdir().unwrap();
    let bundle = unpacked.path().join("bundle");
    let mut umoci = Command::new("umoci");
    umoci
        .args([
            "unpack",
            "--image",
            &format!("{}:{}", store.path().display(), name),
        ])
        .arg(&bundle);
    if !is_root() {
        umoci.arg("--rootless");
    }
    ok(&mut umoci);
    assert!(bundle.join("rootfs").is_dir());
    assert!(bundle.join("config.json").is_file());
}

#[test]
fn four_concurrent_pulls_share_one_store() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let r = format!("{}/base", e.plain);
    let children: Vec<_> = (0..4)
        .map(|_| {
            hoist(store.path())
                .args(["pull", "--json", &r])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut downloaded = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v[0]["manifest_digest"], e.base);
        downloaded += v[0]["blobs_downloaded"].as_u64().unwrap();
    }
    // Config and layer: each downloaded by exactly one of the four.
    assert_eq!(downloaded, 2, "each blob is downloaded once");
    assert_store_clean(store.path());
    let partials = std::fs::read_dir(store.path().join("ingest"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert_eq!(partials, 0, "no partial download left behind");
    let index: serde_json::Value = read_json(&store.path().join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let _ = Path::new("");
}

#[test]
fn pulls_docker_schema2_manifests_and_manifest_lists() {
    let Some(e) = env() else { return };
    if !have_tool("skopeo") {
        return;
    }
    // skopeo converts the OCI fixtures to Docker's schema2 on the way in.
    for (tag, all) in [("small", false), ("multi", true)] {
        let mut c = Command::new("skopeo");
        c.args(["copy", "-q", "--format", "v2s2", "--dest-tls-verify=false"]);
        if all {
            c.arg("--all");
        }
        c.arg(format!("oci:{}:{tag}", e.oci));
        c.arg(format!("docker://{}/schema2-{tag}:latest", e.plain));
        ok(&mut c);
    }
    let store = tempfile::tempdir().unwrap();
    let o = ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/schema2-small", e.plain),
    ]));
    let raw: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let v = pull_json(hoist(store.path()).args(["pull", &format!("{}/schema2-small", e.plain)]));
    assert_eq!(v["layers"], 3);
    let v = pull_json(hoist(store.path()).args(["pull", &format!("{}/schema2-multi", e.plain)]));
    assert_eq!(v["platform"]["architecture"], "amd64");
    assert_store_clean(store.path());
}
