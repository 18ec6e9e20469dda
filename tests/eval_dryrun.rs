//! `hoist eval --dry-run` (issue 10): from the manifests alone, the unique
//! layers, the bytes to download and the peak disk, checked against the
//! sample images' manifests as skopeo reads them from the test registry,
//! and their gzip trailers as the samples' OCI layout holds them. Needs no
//! root: nothing is unpacked or run (but one test fills the layer cache
//! to see it measured). A misbehaving in-process registry checks what
//! the dry run refuses and what it estimates.

mod support;
mod common {
    pub mod fault_registry;
}

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fault_registry::{self as fault, Fault, Registry, Target};
use hoist::digest::Digest;
use hoist::eval::dryrun::{dry_run, DryRun, DryRunError, DryRunOptions};
use hoist::eval::{EvalPlan, Pin, PlannedTask};
use hoist::manifest::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use hoist::platform::Platform;
use hoist::pull::PullError;
use serde_json::{json, Value};
use support::*;

struct Samples {
    /// `HOST:PORT/samples`.
    registry: String,
    /// The layout the registry's samples were pushed from (same blobs).
    oci: PathBuf,
    swe_tasks: Vec<String>,
}

fn samples() -> Option<Samples> {
    let registry = env_or_skip("HOIST_SAMPLES_REGISTRY")?;
    let oci = PathBuf::from(env_or_skip("HOIST_SAMPLES_OCI")?);
    let swe_tasks = env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !have_tool("skopeo") {
        return None;
    }
    Some(Samples {
        registry,
        oci,
        swe_tasks,
    })
}

/// An image's manifest, by skopeo (not hoist).
#[derive(Clone, Debug)]
struct Image {
    config: (String, u64),
    layers: Vec<(String, u64)>,
}

impl Image {
    fn blobs(&self) -> BTreeMap<String, u64> {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .cloned()
            .collect()
    }
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("{}/{tag}", self.registry)
    }

    fn host(&self) -> &str {
        self.registry.split('/').next().unwrap()
    }

    fn benchmarks(&self) -> Vec<String> {
        self.swe_tasks
            .iter()
            .map(|t| self.r(&format!("swe-mini-{t}")))
            .collect()
    }

    fn tasks_file(&self, dir: &Path) -> PathBuf {
        let mut text = String::new();
        for (t, b) in self.swe_tasks.iter().zip(self.benchmarks()) {
            text.push_str(&format!("{{\"id\": \"{t}\", \"benchmark\": \"{b}\"}}\n"));
        }
        let p = dir.join("tasks.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `hoist eval --tasks FILE --agent agent-oracle --dry-run ARGS`.
    fn dry_run(&self, store: &Path, tasks: &Path, args: &[&str]) -> Command {
        let mut c = hoist(store);
        c.arg("--insecure-registry")
            .arg(self.host())
            .arg("eval")
            .arg("--tasks")
            .arg(tasks)
            .arg("--agent")
            .arg(self.r("agent-oracle"))
            .arg("--out")
            .arg(store.parent().unwrap().join("out"))
            .arg("--dry-run")
            .args(args);
        c
    }

    fn dry_run_json(&self, store: &Path, tasks: &Path, args: &[&str]) -> Value {
        let o = ok(self.dry_run(store, tasks, args).arg("--json"));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(&o)))
    }

    fn manifest(&self, reference: &str) -> Image {
        let o = ok(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ]));
        let m: Value = serde_json::from_slice(&o.stdout).unwrap();
        let blob = |d: &Value| {
            (
                d["digest"].as_str().unwrap().to_string(),
                d["size"].as_u64().unwrap(),
            )
        };
        Image {
            config: blob(&m["config"]),
            layers: m["layers"].as_array().unwrap().iter().map(blob).collect(),
        }
    }

    /// A gzip layer's ISIZE (RFC 1952), read from the layout's copy.
    fn isize(&self, digest: &str) -> u64 {
        let path = self
            .oci
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tail: [u8; 4] = bytes[bytes.len() - 4..].try_into().unwrap();
        u64::from(u32::from_le_bytes(tail))
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

fn count(v: &Value) -> (u64, u64) {
    (v["count"].as_u64().unwrap(), v["bytes"].as_u64().unwrap())
}

/// The unique layers and configs of the benchmarks and the agent.
struct Expected {
    benchmarks: Vec<Image>,
    agent: Image,
}

impl Expected {
    fn of(s: &Samples) -> Expected {
        Expected {
            benchmarks: s.benchmarks().iter().map(|b| s.manifest(b)).collect(),
            agent: s.manifest(&s.r("agent-oracle")),
        }
    }

    fn images(&self) -> impl Iterator<Item = &Image> {
        self.benchmarks.iter().chain(std::iter::once(&self.agent))
    }

    fn layers(&self) -> BTreeMap<String, u64> {
        self.images().flat_map(|i| i.layers.clone()).collect()
    }

    fn configs(&self) -> BTreeMap<String, u64> {
        self.images().map(|i| i.config.clone()).collect()
    }

    fn all_blobs(&self) -> BTreeMap<String, u64> {
        self.images().flat_map(|i| i.blobs()).collect()
    }
}

fn sum(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

#[test]
fn on_an_empty_store_it_counts_what_the_manifests_list_and_writes_nothing() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let report = s.dry_run_json(&store, &tasks, &[]);
    let want = Expected::of(&s);

    assert_eq!(report["schema"], "hoist.dryrun/v1");
    assert_eq!(report["tasks"], s.swe_tasks.len());
    let layers = want.layers();
    let configs = want.configs();
    assert_eq!(
        count(&report["layers"]),
        (layers.len() as u64, sum(&layers))
    );
    assert_eq!(
        count(&report["configs"]),
        (configs.len() as u64, sum(&configs))
    );
    let all = want.all_blobs();
    assert_eq!(count(&report["download"]), (all.len() as u64, sum(&all)));
    assert_eq!(count(&report["stored"]), (0, 0));

    // Unpacked: every benchmark layer's tar stream (its gzip trailer), and
    // the agent's subtree bounded by its whole image.
    let bench_layers: BTreeMap<String, u64> = want
        .benchmarks
        .iter()
        .flat_map(|i| i.layers.clone())
        .collect();
    let tar: u64 = bench_layers.keys().map(|d| s.isize(d)).sum();
    let bound: u64 = want.agent.layers.iter().map(|(d, _)| s.isize(d)).sum();
    let u = &report["unpacked"];
    assert_eq!(u["tar_bytes"], tar, "{u}");
    assert_eq!(u["bound_bytes"], bound, "{u}");
    assert_eq!(u["estimated_bytes"], 0, "{u}");
    assert_eq!(u["present_bytes"], 0, "{u}");
    assert_eq!(u["new_bytes"], tar + bound, "{u}");
    let peak = &report["peak_disk"];
    assert_eq!(peak["basis"], "growth");
    assert_eq!(peak["bytes"], sum(&all) + tar + bound, "{peak}");

    // Nothing was downloaded, unpacked or recorded.
    let blobs = files_under(&store.join("blobs"));
    assert!(blobs.is_empty(), "blobs written: {blobs:?}");
    assert!(!store.join("layers").exists());
    let index = read_json(&store.join("index.json"));
    assert_eq!(index["manifests"], serde_json::json!([]), "{index}");
}

#[test]
fn the_json_document_has_its_schema() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let report = s.dry_run_json(&store, &tasks, &["--jobs", "2"]);
    let want = Expected::of(&s);

    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|k| k.to_string()).collect() };
    assert_eq!(
        keys(&report),
        set(&[
            "schema",
            "mode",
            "tasks",
            "jobs",
            "platform",
            "images",
            "layers",
            "configs",
            "stored",
            "download",
            "unpacked",
            "peak_disk"
        ])
    );
    assert_eq!(report["mode"], "crane");
    assert_eq!(report["jobs"], 2);
    for k in ["layers", "configs", "stored", "download"] {
        assert_eq!(keys(&report[k]), set(&["count", "bytes"]), "{k}");
    }
    assert_eq!(
        keys(&report["unpacked"]),
        set(&[
            "bytes",
            "present_bytes",
            "new_bytes",
            "measured_bytes",
            "tar_bytes",
            "estimated_bytes",
            "bound_bytes",
            "estimate_ratio"
        ])
    );
    assert_eq!(
        keys(&report["peak_disk"]),
        set(&[
            "bytes",
            "basis",
            "max_store_size",
            "growth_bytes",
            "window_tasks",
            "window_bytes",
            "window_first_task",
            "not_counted"
        ])
    );

    // One line per distinct image, each pinned to the digest the samples
    // were built with.
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), s.swe_tasks.len() + 1, "{report}");
    let agent = images
        .iter()
        .find(|i| i["roles"] == serde_json::json!(["agent"]))
        .expect("the agent's line");
    assert_eq!(agent["ref"], s.r("agent-oracle"));
    assert_eq!(agent["digest"], sample_digest("agent-oracle"));
    assert_eq!(agent["tasks"], s.swe_tasks.len());
    assert_eq!(agent["layers"], want.agent.layers.len());
    assert_eq!(agent["bytes"], sum(&want.agent.blobs()));
    for (t, img) in s.swe_tasks.iter().zip(&want.benchmarks) {
        let tag = format!("swe-mini-{t}");
        let line = images
            .iter()
            .find(|i| i["ref"] == s.r(&tag))
            .unwrap_or_else(|| panic!("no line for {tag}: {report}"));
        assert_eq!(line["digest"], sample_digest(&tag));
        assert_eq!(line["manifest_digest"], sample_digest(&tag));
        assert_eq!(line["roles"], serde_json::json!(["benchmark"]));
        assert_eq!(line["tasks"], 1);
        assert_eq!(line["layers"], img.layers.len());
        assert_eq!(line["bytes"], sum(&img.blobs()));
        assert_eq!(line["missing_bytes"], sum(&img.blobs()));
    }
}

#[test]
fn pulling_one_image_lowers_the_download_by_exactly_its_blobs() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let want = Expected::of(&s);
    let before = s.dry_run_json(&store, &tasks, &[]);

    let first = &s.benchmarks()[0];
    ok(hoist(&store).arg("pull").arg(first));
    let after = s.dry_run_json(&store, &tasks, &[]);

    // Its blobs are all stored now, shared ones (the base layer) too: the
    // download is what the other images have and it has not.
    let pulled = want.benchmarks[0].blobs();
    let (n0, b0) = count(&before["download"]);
    let (n1, b1) = count(&after["download"]);
    assert_eq!(b0 - b1, sum(&pulled), "{}", after["download"]);
    assert_eq!(n0 - n1, pulled.len() as u64);
    assert_eq!(count(&after["stored"]), (pulled.len() as u64, sum(&pulled)));
    let rest: BTreeMap<String, u64> = want
        .all_blobs()
        .into_iter()
        .filter(|(d, _)| !pulled.contains_key(d))
        .collect();
    assert_eq!(b1, sum(&rest));
    let line = |r: &Value, reference: &str| -> Value {
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["ref"] == reference)
            .cloned()
            .unwrap()
    };
    assert_eq!(line(&after, first)["missing_bytes"], 0);
    // Nothing was unpacked by the pull, so the unpacked figures are
    // still those of the trailers (now read from the store's blobs).
    assert_eq!(after["unpacked"], before["unpacked"]);
}

#[test]
fn with_a_store_limit_the_peak_is_the_limit_or_the_busiest_window() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let want = Expected::of(&s);

    // With one job, two tasks' images are held at once (one running,
    // the next prefetched): the blobs, the benchmark layers' tar streams
    // and the agent's subtree (at most its image) of any two in a row.
    let agent_bound: u64 = want.agent.layers.iter().map(|(d, _)| s.isize(d)).sum();
    let need = |pair: &[Image]| -> u64 {
        let mut blobs = want.agent.blobs();
        let mut layers = BTreeSet::new();
        for img in pair {
            blobs.extend(img.blobs());
            layers.extend(img.layers.iter().map(|(d, _)| d.clone()));
        }
        sum(&blobs) + layers.iter().map(|d| s.isize(d)).sum::<u64>() + agent_bound
    };
    let busiest = want.benchmarks.windows(2).map(need).max().unwrap();

    let small = s.dry_run_json(&store, &tasks, &["--jobs", "1", "--max-store-size", "10M"]);
    let peak = &small["peak_disk"];
    assert_eq!(peak["basis"], "max_store_size");
    assert_eq!(peak["window_tasks"], 2);
    assert_eq!(peak["window_bytes"], busiest, "{peak}");
    assert_eq!(peak["bytes"], busiest, "{peak}");

    let big = s.dry_run_json(&store, &tasks, &["--jobs", "1", "--max-store-size", "100G"]);
    assert_eq!(big["peak_disk"]["bytes"], 100u64 << 30);
    assert_eq!(big["peak_disk"]["window_bytes"], busiest);
}

#[test]
fn the_table_shows_each_figure_and_how_it_is_known() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let o = ok(&mut s.dry_run(&store, &tasks, &[]));
    let text = stdout(&o);
    let n = s.swe_tasks.len();
    for line in [
        format!(
            "images          {} ({n} benchmark, 1 agent), for {n} tasks",
            n + 1
        ),
        "already stored  0 of ".to_string(),
        "to download     ".to_string(),
        "tar size, from layer sizes and gzip trailers".to_string(),
        "at most: agent and gateway subtrees not yet extracted".to_string(),
        "peak disk       +".to_string(),
        "writable layer".to_string(),
        "exact, from the manifests".to_string(),
    ] {
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn an_image_that_cannot_be_had_fails_naming_it() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let missing = s.r("no-such-agent");
    let o = run(hoist(&store)
        .arg("eval")
        .arg("--tasks")
        .arg(&tasks)
        .arg("--agent")
        .arg(&missing)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .arg("--dry-run"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{missing} was not resolved")),
        "{err}"
    );
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
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

/// `du -s -B1`: bytes on disk, hard links once, as eviction counts them.

#[test]
fn unpacked_layers_and_subtrees_in_the_cache_are_measured() {
    let Some(s) = samples() else { return };
    if !is_root() {
        skip("filling the layer cache takes an overlay materialize, which needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tasks = s.tasks_file(tmp.path());
    let want = Expected::of(&s);
    let rootfs = Mounted(tmp.path().join("rootfs"));
    ok(hoist(&store)
        .args([
            "--quiet",
            "materialize",
            "--rootfs",
            "overlay",
            "--benchmark",
        ])
        .arg(&s.benchmarks()[0])
        .arg("--agent")
        .arg(s.r("agent-oracle"))
        .arg("--out")
        .arg(&rootfs.0));
    let report = s.dry_run_json(&store, &tasks, &[]);

    // The first benchmark's layers and the agent's subtree are on disk.
    let first = &want.benchmarks[0];
    let layers = store.join("layers/sha256");
    let subtrees: Vec<PathBuf> = std::fs::read_dir(store.join("subtrees"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.extension().is_none())
        .collect();
    assert_eq!(subtrees.len(), 1, "{subtrees:?}");
    let measured: u64 = first
        .layers
        .iter()
        .map(|(d, _)| du(&layers.join(d.trim_start_matches("sha256:"))))
        .sum::<u64>()
        + du(&subtrees[0]);
    let u = &report["unpacked"];
    assert_eq!(u["measured_bytes"], measured, "{u}");
    assert_eq!(u["present_bytes"], measured, "{u}");
    assert_eq!(u["bound_bytes"], 0, "{u}");
    // The other benchmarks' layers that are not the first's: tar sizes.
    let first_layers: BTreeSet<&String> = first.layers.iter().map(|(d, _)| d).collect();
    let others: BTreeSet<&String> = want.benchmarks[1..]
        .iter()
        .flat_map(|i| i.layers.iter().map(|(d, _)| d))
        .filter(|d| !first_layers.contains(d))
        .collect();
    let tar: u64 = others.iter().map(|d| s.isize(d)).sum();
    assert_eq!(u["tar_bytes"], tar, "{u}");
    assert_eq!(u["new_bytes"], tar, "{u}");
}

/// A synthetic image whose one layer is a real gzip'd tar of a file of
/// `len` pseudo-random bytes, and that tar stream's size.
fn gzip_image(p: &Platform, len: usize, seed: u64) -> (fault::Image, u64) {
    let data = fault::pseudo_random(seed, len);
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "file", &data[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let layer = fault::Blob::new(gz.finish().unwrap());
    let config = json!({
        "architecture": p.architecture, "os": p.os,
        "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(&tar).to_string()]},
    });
    let config = fault::Blob::new(config.to_string().into_bytes());
    let desc = |b: &fault::Blob, media: &str| json!({"mediaType": media, "digest": b.digest.to_string(), "size": b.size()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(&config, OCI_CONFIG),
        "layers": [desc(&layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
    })
    .to_string()
    .into_bytes();
    let image = fault::Image {
        digest: Digest::sha256_of(&manifest),
        manifest,
        media_type: OCI_MANIFEST,
        config,
        layers: vec![layer],
    };
    (image, tar.len() as u64)
}

/// A fault registry serving, under `bench`, an index whose host entry is
/// a gzip image (its tar size returned) and whose other entry is for
/// another platform; and under `agent`, a gzip image.
struct Served {
    rt: tokio::runtime::Runtime,
    reg: Registry,
    bench: fault::Image,
    index: Digest,
    bench_tar: u64,
    agent: fault::Image,
}

fn served() -> Served {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt.block_on(Registry::start());
    let host = Platform::host();
    let other: Platform = if host.architecture == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    }
    .parse()
    .unwrap();
    let (bench, bench_tar) = gzip_image(&host, 300 << 10, 1);
    let foreign = fault::Image::for_platform(&other, 7);
    reg.serve("bench-host", &bench);
    reg.serve("bench-other", &foreign);
    let index = fault::index_of(&[(&other, &foreign), (&host, &bench)]);
    let index_digest = Digest::sha256_of(&index);
    reg.put_manifest("bench", OCI_INDEX, index.clone());
    reg.put_manifest(&index_digest.to_string(), OCI_INDEX, index);
    let (agent, _) = gzip_image(&host, 20 << 10, 2);
    reg.serve("agent", &agent);
    Served {
        rt,
        reg,
        bench,
        index: index_digest,
        bench_tar,
        agent,
    }
}

impl Served {
    fn pin(&self, tag: &str, digest: &Digest) -> Pin {
        Pin {
            reference: format!("{}/{}:{tag}", self.reg.host(), fault::REPO),
            digest: Some(digest.to_string()),
            unresolved: None,
        }
    }

    fn plan(&self) -> EvalPlan {
        EvalPlan {
            schema: hoist::eval::PLAN_SCHEMA.into(),
            created_at: String::new(),
            mode: "crane".into(),
            shard: None,
            total_tasks: 1,
            tasks: vec![PlannedTask {
                id: "t1".into(),
                benchmark: self.pin("bench", &self.index),
                agent: self.pin("agent", &self.agent.digest),
                gateway: None,
                agent_timeout_sec: None,
            }],
        }
    }

    // The library's errors carry what a user needs (as src/lib.rs allows).
    #[allow(clippy::result_large_err)]
    fn dry_run(&self, store: &hoist::store::Store) -> Result<DryRun, DryRunError> {
        let opts = DryRunOptions {
            jobs: 1,
            max_store_size: None,
        };
        dry_run(store, &fault::client(1), &self.rt, &self.plan(), opts)
    }
}

#[test]
fn an_index_is_resolved_to_the_host_platform_and_trailers_are_read_by_range() {
    let s = served();
    let (_dir, store) = fault::store();
    let report = s.dry_run(&store).expect("dry run");
    let bench = &report.images[0];
    assert_eq!(bench.digest, s.index);
    assert_eq!(bench.manifest_digest, s.bench.digest);
    assert_eq!(bench.layers, 1);
    assert_eq!(report.unpacked.tar_bytes, s.bench_tar);
    assert_eq!(report.unpacked.estimated_bytes, 0);
    let all: u64 = s
        .bench
        .blobs()
        .chain(s.agent.blobs())
        .map(|b| b.size() as u64)
        .sum();
    assert_eq!(report.download.bytes, all);
    // Only the layers' last 4 bytes were asked for; no config, no blob
    // whole, and nothing reached the store.
    for l in s.reg.log() {
        if let Target::Blob(d) = &l.target {
            let size = s
                .bench
                .blobs()
                .chain(s.agent.blobs())
                .find(|b| b.digest.to_string() == *d)
                .map(|b| b.size())
                .expect("a blob of the images");
            assert_eq!(l.range, Some(format!("bytes={}-", size - 4)), "{d}");
        }
    }
    assert!(fault::assert_store_clean(&store).is_empty());
}

#[test]
fn a_registry_that_ignores_range_gets_an_estimate_and_nothing_is_stored() {
    let s = served();
    let (_dir, store) = fault::store();
    let layer = &s.bench.layers[0];
    s.reg
        .fault(Target::blob(&layer.digest), 1, Fault::IgnoreRange);
    let report = s.dry_run(&store).expect("dry run");
    let u = &report.unpacked;
    assert_eq!(u.tar_bytes, 0, "{u:?}");
    // Estimated by the ratio of the layer whose trailer was read (the
    // agent's), and named so.
    let expected = (layer.size() as f64 * u.estimate_ratio).round() as u64;
    assert_eq!(u.estimated_bytes, expected, "{u:?}");
    assert!(fault::assert_store_clean(&store).is_empty());
}

#[test]
fn a_manifest_that_does_not_hash_to_its_pin_is_refused() {
    let s = served();
    let (_dir, store) = fault::store();
    let target = Target::Manifest(s.bench.digest.to_string());
    s.reg.fault(target, usize::MAX, Fault::WrongBytes);
    let e = s.dry_run(&store).expect_err("refused");
    let msg = format!("{e}");
    assert!(msg.contains(":bench"), "{msg}");
    let pull = std::error::Error::source(&e)
        .and_then(|c| c.downcast_ref::<PullError>())
        .expect("a pull error under it");
    assert!(pull.is_pin_mismatch(), "{pull}");
    assert!(fault::assert_store_clean(&store).is_empty());
}

#[test]
fn a_layer_the_registry_lacks_fails_naming_the_reference() {
    let s = served();
    let (_dir, store) = fault::store();
    let layer = &s.bench.layers[0];
    s.reg.fault(
        Target::blob(&layer.digest),
        usize::MAX,
        Fault::Status(404, vec![]),
    );
    let e = s.dry_run(&store).expect_err("a missing layer");
    assert!(matches!(e, DryRunError::LayerRegistry { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(":bench") && msg.contains(&layer.digest.to_string()),
        "{msg}"
    );
}

#[test]
fn layout_images_are_sized_as_their_registry_copies() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let by_registry = s.dry_run_json(&store, &s.tasks_file(tmp.path()), &[]);
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let mut text = String::new();
    for t in &s.swe_tasks {
        let b = format!("oci:{}:swe-mini-{t}", s.oci.display());
        text.push_str(&format!("{{\"id\": \"{t}\", \"benchmark\": \"{b}\"}}\n"));
    }
    let tasks = layout.join("tasks.jsonl");
    std::fs::write(&tasks, text).unwrap();
    let o = ok(hoist(&store)
        .arg("eval")
        .arg("--tasks")
        .arg(&tasks)
        .arg("--agent")
        .arg(format!("oci:{}:agent-oracle", s.oci.display()))
        .arg("--out")
        .arg(layout.join("out"))
        .args(["--dry-run", "--json"]));
    let by_layout: Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["layers", "configs", "download", "unpacked"] {
        assert_eq!(by_layout[k], by_registry[k], "{k}");
    }
    assert!(files_under(&store.join("blobs")).is_empty());
}
