//! `hoist inspect`, `hoist images`, `hoist rmi` and `hoist system df`
//! (issue 13, point 2) against the sample images: the `oci:` layout
//! `scripts/build-samples` writes and the test registry it pushes them to,
//! each test with a fresh store. Manifests are read here from the layout's
//! own files, not through hoist.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

struct Samples {
    /// The layout, canonical (the store records `oci:` names so).
    oci: PathBuf,
    /// `HOST:PORT/samples`.
    registry: String,
    pyfix_tasks: Vec<String>,
}

fn samples() -> Option<Samples> {
    let oci = PathBuf::from(env_or_skip("HOIST_SAMPLES_OCI")?);
    Some(Samples {
        oci: std::fs::canonicalize(&oci).unwrap(),
        registry: env_or_skip("HOIST_SAMPLES_REGISTRY")?,
        pyfix_tasks: env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
            .split_whitespace()
            .map(String::from)
            .collect(),
    })
}

impl Samples {
    fn oci(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci.display())
    }

    /// `REGISTRY/TAG@DIGEST`, as the other registry tests name them.
    fn reg(&self, tag: &str) -> String {
        format!("{}/{tag}@{}", self.registry, sample_digest(tag))
    }

    /// The image manifest of `tag`, from the layout's blob.
    fn manifest(&self, tag: &str) -> Value {
        let hex = sample_digest(tag);
        read_json(&self.oci.join("blobs/sha256").join(&hex["sha256:".len()..]))
    }
}

fn json_of(cmd: &mut Command) -> Value {
    let o = ok(cmd.arg("--json"));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{cmd:?} printed no JSON ({e}):\n{}", stdout(&o)))
}

fn inspect(store: &Path, reference: &str) -> Value {
    json_of(hoist(store).args(["inspect", reference]))
}

/// The digests of a manifest's config and layers.
fn blobs_of(manifest: &Value) -> Vec<String> {
    let mut v = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for l in manifest["layers"].as_array().unwrap() {
        v.push(l["digest"].as_str().unwrap().to_string());
    }
    v
}

fn blob_path(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(&digest["sha256:".len()..])
}

/// An overlay rootfs, unmounted on drop (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if run(Command::new("mountpoint").arg("-q").arg(&self.0))
            .status
            .success()
        {
            // Best effort in a destructor; a leftover mount shows in the
            // next test's failure anyway.
            let _ = run(Command::new("umount").arg("-R").arg(&self.0));
        }
    }
}

#[test]
fn inspect_a_layout_reads_the_axes_from_its_layers() {
    let Some(s) = samples() else { return };
    let store = tempfile::tempdir().unwrap();
    let v = inspect(store.path(), &s.oci("pyfix"));
    assert_eq!(v["schema"], "hoist.inspect/v1");
    assert_eq!(v["manifest_digest"], sample_digest("pyfix"));
    assert_eq!(v["digest"], sample_digest("pyfix"));
    assert_eq!(v["index_platforms"], Value::Null);
    assert_eq!(v["platform"]["architecture"], "amd64");
    assert_eq!(v["created"], "2024-01-01T00:00:00Z");
    let m = s.manifest("pyfix");
    let layers: Vec<(&Value, &Value, &Value)> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (&l["digest"], &l["size"], &l["media_type"]))
        .collect();
    let want: Vec<(&Value, &Value, &Value)> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (&l["digest"], &l["size"], &l["mediaType"]))
        .collect();
    assert_eq!(layers, want);
    assert_eq!(v["labels"]["io.hoist.axis"], "benchmark");
    assert_eq!(v["cmd"][0], "/bin/bash");
    assert!(v["env"][0].as_str().unwrap().starts_with("PATH="), "{v}");

    let axes = &v["axes"];
    assert_eq!(axes["source"], "layers", "{axes}");
    assert_eq!(axes["benchmark"], true);
    assert_eq!(
        (&axes["agent"], &axes["gateway"]),
        (&Value::Bool(false), &Value::Bool(false))
    );
    let mut tasks = s.pyfix_tasks.clone();
    tasks.sort();
    assert_eq!(axes["tasks"], serde_json::json!(tasks));

    for (tag, axis) in [("agent-oracle", "agent"), ("gateway-replay", "gateway")] {
        let v = inspect(store.path(), &s.oci(tag));
        assert_eq!(v["manifest_digest"], sample_digest(tag));
        assert_eq!(v["axes"]["source"], "layers");
        for other in ["benchmark", "agent", "gateway"] {
            assert_eq!(v["axes"][other], other == axis, "{tag}: {}", v["axes"]);
        }
    }
    // Nothing was pulled: the store holds no image and no layer.
    let images = json_of(hoist(store.path()).arg("images"));
    assert_eq!(images, serde_json::json!([]));

    let o = ok(hoist(store.path()).args(["inspect", &s.oci("pyfix")]));
    let text = stdout(&o);
    assert!(text.contains(&sample_digest("pyfix")), "{text}");
    assert!(text.contains("benchmark: yes (3 tasks: "), "{text}");
    assert!(text.contains("read from the layers"), "{text}");
}

#[test]
fn inspect_a_registry_image_downloads_no_layer() {
    let Some(s) = samples() else { return };
    let store = tempfile::tempdir().unwrap();
    let reference = s.reg("agent-oracle");
    let v = inspect(store.path(), &reference);
    assert_eq!(v["digest"], sample_digest("agent-oracle"));
    // The layer is not here, so the axes are the image's labels' word.
    let axes = &v["axes"];
    assert_eq!(axes["source"], "labels", "{axes}");
    assert_eq!(axes["agent"], true);
    assert_eq!(axes["benchmark"], Value::Null);
    assert!(
        axes["note"]
            .as_str()
            .unwrap()
            .contains("unknown without layers"),
        "{axes}"
    );
    let m = s.manifest("agent-oracle");
    let blobs = blobs_of(&m);
    assert!(
        blob_path(store.path(), &blobs[0]).is_file(),
        "the config is fetched"
    );
    for layer in &blobs[1..] {
        assert!(
            !blob_path(store.path(), layer).exists(),
            "layer {layer} was downloaded"
        );
    }

    // A benchmark by tag: its tasks come from its label.
    let v = inspect(store.path(), &format!("{}/pyfix", s.registry));
    assert_eq!(v["manifest_digest"], sample_digest("pyfix"));
    assert_eq!(v["axes"]["source"], "labels");
    assert_eq!(v["axes"]["benchmark"], true);
    assert_eq!(
        v["axes"]["tasks"].as_array().unwrap().len(),
        s.pyfix_tasks.len()
    );

    // Once pulled, the layers are read.
    ok(hoist(store.path()).args(["pull", &reference]));
    let v = inspect(store.path(), &reference);
    assert_eq!(v["axes"]["source"], "layers");
    assert_eq!(v["axes"]["agent"], true);
    assert_eq!(v["axes"]["benchmark"], false);
}

#[test]
fn inspect_a_multi_platform_index_names_both_digests() {
    let Some(plain) = env_or_skip("HOIST_TEST_REGISTRY_PLAIN") else {
        return;
    };
    let Some(multi) = env_or_skip("HOIST_FIXTURE_MULTI_DIGEST") else {
        return;
    };
    let Some(amd64) = env_or_skip("HOIST_FIXTURE_MULTI_AMD64_DIGEST") else {
        return;
    };
    let Some(arm64) = env_or_skip("HOIST_FIXTURE_MULTI_ARM64_DIGEST") else {
        return;
    };
    let Some(layout) = env_or_skip("HOIST_FIXTURE_OCI") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    for r in [format!("{plain}/multi"), format!("oci:{layout}:multi")] {
        let v = inspect(store.path(), &r);
        assert_eq!(v["digest"], multi, "{r}");
        assert_eq!(v["manifest_digest"], amd64, "{r}");
        assert_eq!(v["index_platforms"].as_array().unwrap().len(), 2, "{v}");
        let v = json_of(hoist(store.path()).args(["inspect", "--platform", "linux/arm64", &r]));
        assert_eq!(v["manifest_digest"], arm64, "{r}");
        assert_eq!(v["platform"]["architecture"], "arm64");
    }
    let o = run(hoist(store.path()).args([
        "inspect",
        "--platform",
        "linux/s390x",
        &format!("{plain}/multi"),
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("linux/arm64"), "{}", stderr(&o));
}

#[test]
fn images_lists_what_was_pulled_with_its_blob_sizes() {
    let Some(s) = samples() else { return };
    let store = tempfile::tempdir().unwrap();
    let pyfix = s.oci("pyfix");
    let agent = s.reg("agent-oracle");
    ok(hoist(store.path()).args(["pull", &pyfix, &agent]));
    let images = json_of(hoist(store.path()).arg("images"));
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 2, "{images:?}");
    for (tag, name) in [("pyfix", &pyfix), ("agent-oracle", &agent)] {
        let i = images
            .iter()
            .find(|i| i["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not listed: {images:?}"));
        let digest = sample_digest(tag);
        assert_eq!(i["digest"], digest);
        assert_eq!(i["platform"]["architecture"], "amd64");
        assert_eq!(i["complete"], true);
        assert_eq!(i["layers_unpacked"], 0);
        assert!(i["last_used"].is_string(), "{i}");
        // Every blob of the image, the manifest included, by file size.
        let mut blobs = blobs_of(&s.manifest(tag));
        blobs.push(digest);
        let want: u64 = blobs
            .iter()
            .map(|d| std::fs::metadata(blob_path(store.path(), d)).unwrap().len())
            .sum();
        assert_eq!(i["size"], want, "{tag}");
        assert_eq!(
            i["layers"],
            s.manifest(tag)["layers"].as_array().unwrap().len()
        );
    }
    let o = ok(hoist(store.path()).arg("images"));
    let text = stdout(&o);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains(&sample_digest("pyfix")["sha256:".len()..][..12]),
        "{text}"
    );

    if !is_root() {
        skip("unpacking the layers to see them counted needs root here");
        return;
    }
    // `hoist tasks` unpacks the benchmark's layers into the cache.
    ok(hoist(store.path()).args(["tasks", &pyfix]));
    let images = json_of(hoist(store.path()).arg("images"));
    let i = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == pyfix.as_str())
        .unwrap();
    assert_eq!(i["layers_unpacked"], i["layers"], "{i}");
}

#[test]
fn rmi_removes_one_image_and_keeps_the_layers_another_shares() {
    let Some(s) = samples() else { return };
    if !is_root() {
        skip("unpacking the shared layers takes root here");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let swe_tag = std::env::var("HOIST_SAMPLES_TAGS")
        .unwrap()
        .split_whitespace()
        .find(|t| t.starts_with("swe-mini-"))
        .expect("a swe-mini sample")
        .to_string();
    let (pyfix, swe) = (s.oci("pyfix"), s.oci(&swe_tag));
    ok(hoist(store.path()).args(["pull", &pyfix, &swe]));
    for r in [&pyfix, &swe] {
        ok(hoist(store.path()).args(["tasks", r]));
    }
    let (pm, sm) = (
        blobs_of(&s.manifest("pyfix")),
        blobs_of(&s.manifest(&swe_tag)),
    );
    let shared: Vec<&String> = pm[1..].iter().filter(|d| sm.contains(d)).collect();
    assert!(
        !shared.is_empty(),
        "pyfix and {swe_tag} share the base layers"
    );
    let own: Vec<&String> = pm.iter().filter(|d| !sm.contains(d)).collect();

    // By the DIGEST column's short form.
    let short = &sample_digest("pyfix")["sha256:".len()..][..12];
    let o = ok(hoist(store.path()).args(["rmi", short]));
    assert!(
        stdout(&o).contains(&format!("untagged {pyfix}")),
        "{}",
        stdout(&o)
    );
    let images = json_of(hoist(store.path()).arg("images"));
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [swe.as_str()]);
    assert_eq!(
        images[0]["layers_unpacked"], images[0]["layers"],
        "{images}"
    );
    for d in &shared {
        assert!(
            blob_path(store.path(), d).is_file(),
            "shared layer {d} removed"
        );
        assert!(store
            .path()
            .join("layers/sha256")
            .join(&d["sha256:".len()..])
            .is_dir());
    }
    for d in own.iter().chain([&&sample_digest("pyfix")]) {
        assert!(!blob_path(store.path(), d).exists(), "{d} of pyfix kept");
    }
    assert_store_verifies(store.path());

    // A name not known is an error naming it; the known one still goes.
    let o = run(hoist(store.path()).args(["rmi", &swe, "example.org/nothing:here"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("example.org/nothing:here: image not known"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        json_of(hoist(store.path()).arg("images")),
        serde_json::json!([])
    );
    let left: Vec<_> = std::fs::read_dir(store.path().join("blobs/sha256"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_store_verifies(store.path());
}

/// Bytes allocated to every file under `dir`, as `system df` counts blobs.
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn system_df_adds_up_and_gc_reclaims_exactly_what_it_said() {
    let Some(s) = samples() else { return };
    if !is_root() {
        skip("a kept overlay rootfs (a run directory) needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let agent = s.oci("agent-oracle");
    // A kept rootfs: unpacked layers, the agent's subtree, a run directory.
    let rootfs = Mounted(tmp.path().join("rootfs"));
    ok(hoist(&store)
        .args([
            "--quiet",
            "materialize",
            "--rootfs",
            "overlay",
            "--benchmark",
        ])
        .arg(s.oci("pyfix"))
        .arg("--agent")
        .arg(&agent)
        .arg("--out")
        .arg(&rootfs.0));
    let df = json_of(hoist(&store).args(["system", "df"]));
    assert_eq!(df["images"], 2);
    assert_eq!(df["runs"]["active"], 1, "the mounted rootfs is live: {df}");
    for kind in ["blobs", "layers", "subtrees", "runs"] {
        assert!(df[kind]["count"].as_u64().unwrap() > 0, "{kind}: {df}");
        assert_eq!(df[kind]["reclaimable"], 0, "{kind}: {df}");
    }
    assert_eq!(df["blobs"]["size"], allocated(&store.join("blobs/sha256")));

    // Now make something of each kind reclaimable: the rootfs unmounted
    // (its run is over), the agent image forgotten (its blobs and subtree
    // unreferenced), and a config fetched by inspecting an image not pulled.
    ok(Command::new("umount").arg("-R").arg(&rootfs.0));
    let index_path = store.join("index.json");
    let mut index = read_json(&index_path);
    let agent_name = agent.clone();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|d| d["annotations"]["org.opencontainers.image.ref.name"] != agent_name.as_str());
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    inspect(&store, &s.reg("gateway-replay"));
    // The scratch of two `dockerfile:` builds: one killed, one still
    // running (it holds its directory locked, as a build does).
    let ingest = store.join("ingest");
    for name in ["build-killed", "build-running"] {
        std::fs::create_dir_all(ingest.join(name).join("layout")).unwrap();
        std::fs::write(ingest.join(name).join("layout/blob"), vec![7u8; 64 << 10]).unwrap();
    }
    let running = std::fs::File::open(ingest.join("build-running")).unwrap();
    rustix::fs::flock(&running, rustix::fs::FlockOperation::LockExclusive).unwrap();

    let before = json_of(hoist(&store).args(["system", "df"]));
    let kinds = ["blobs", "layers", "subtrees", "runs", "builds"];
    let sum = |field: &str| -> u64 {
        kinds
            .iter()
            .map(|k| before[k][field].as_u64().unwrap())
            .sum()
    };
    for field in ["count", "active", "size", "reclaimable"] {
        assert_eq!(before["total"][field], sum(field), "{field}: {before}");
    }
    assert_eq!(before["images"], 1);
    assert_eq!(before["runs"]["active"], 0, "{before}");
    let g = &before["gc"];
    assert_eq!(g["runs"], 1, "{before}");
    assert_eq!(g["subtrees"], 1, "{before}");
    // The agent's manifest, config and layer, and gateway-replay's config.
    assert_eq!(g["blobs"], 4, "{before}");
    assert_eq!(g["builds"], 1, "{before}");
    assert_eq!(
        (&before["builds"]["count"], &before["builds"]["active"]),
        (&Value::from(2), &Value::from(1)),
        "{before}"
    );
    for kind in ["blobs", "subtrees", "runs", "builds"] {
        assert!(
            before[kind]["reclaimable"].as_u64().unwrap() > 0,
            "{kind}: {before}"
        );
    }

    let gc = json_of(hoist(&store).arg("gc"));
    for k in ["runs", "builds", "layers", "subtrees", "blobs", "bytes"] {
        assert_eq!(gc[k], g[k], "{k}: gc said {g}, did {gc}");
    }
    assert!(!ingest.join("build-killed").exists());
    assert!(ingest.join("build-running/layout/blob").exists());
    let after = json_of(hoist(&store).args(["system", "df"]));
    for kind in ["blobs", "layers", "subtrees", "runs", "builds", "total"] {
        let (b, a) = (&before[kind], &after[kind]);
        let n = |v: &Value, f: &str| v[f].as_u64().unwrap();
        assert_eq!(
            n(a, "size"),
            n(b, "size") - n(b, "reclaimable"),
            "{kind}: {b} -> {a}"
        );
        assert_eq!(n(a, "count"), n(b, "active"), "{kind}: {b} -> {a}");
        assert_eq!(n(a, "reclaimable"), 0, "{kind}: {a}");
    }
    drop(running);
    assert_store_verifies(&store);
}
