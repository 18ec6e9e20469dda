//! `hoist store verify` on a real store (root, overlay mounts): a store
//! filled by pull and materialize verifies clean; each kind of tampering
//! with a blob, a cached layer or a cached subtree is reported as exactly
//! that entry dropped (exit 1); a second verify is clean; and the next
//! materialize fetches or unpacks what was dropped and gives the same tree
//! as before. An entry a mounted rootfs may use is moved aside, not
//! removed, and a real `hoist run` leaves the store verifying clean.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

fn samples_oci() -> Option<String> {
    if !is_root() {
        skip("store verify tests need root (overlay mounts over the layer cache)");
        return None;
    }
    env_or_skip("HOIST_SAMPLES_OCI")
}

fn axes(oci: &str) -> Vec<String> {
    let r = |tag: &str| format!("oci:{oci}:{tag}");
    vec![
        "--benchmark".into(),
        r("pyfix"),
        "--agent".into(),
        r("agent-oracle"),
        "--gateway".into(),
        r("gateway-replay"),
    ]
}

/// An overlay rootfs `hoist materialize` kept; unmounted on drop (also
/// when the test fails), before its tempdir goes.
struct Rootfs {
    dir: tempfile::TempDir,
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let dir = self.dir.path();
        if run(Command::new("mountpoint").arg("-q").arg(dir))
            .status
            .success()
        {
            ok(Command::new("umount").arg("-R").arg(dir));
        }
    }
}

fn materialize(store: &Path, oci: &str) -> Rootfs {
    let dir = tempfile::tempdir().unwrap();
    ok(hoist(store)
        .args(["--quiet", "materialize"])
        .args(axes(oci))
        .arg("--out")
        .arg(dir.path())
        .args(["--rootfs", "overlay"]));
    Rootfs { dir }
}

/// `hoist tree-digest` of the rootfs.
fn tree_digest(store: &Path, rootfs: &Rootfs) -> String {
    let o = ok(hoist(store).arg("tree-digest").arg(rootfs.dir.path()));
    stdout(&o).trim().to_string()
}

/// Materialize, digest the tree, unmount.
fn materialized_digest(store: &Path, oci: &str) -> String {
    let rootfs = materialize(store, oci);
    tree_digest(store, &rootfs)
}

/// `hoist store verify --json`: exit code and report.
fn verify(store: &Path) -> (i32, Value) {
    let o = run(hoist(store).args(["store", "verify", "--json"]));
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}):\n{}\n{}",
            stdout(&o),
            stderr(&o)
        )
    });
    (o.status.code().unwrap_or(-1), report)
}

fn layers(store: &Path) -> Vec<PathBuf> {
    entries(&store.join("layers/sha256"))
}

fn subtrees(store: &Path) -> Vec<PathBuf> {
    entries(&store.join("subtrees"))
}

/// The cache entries of a cache directory (names without a dot).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().contains('.'))
        .collect();
    v.sort();
    v
}

fn key(entry: &Path) -> String {
    format!("sha256:{}", entry.file_name().unwrap().to_string_lossy())
}

/// The first regular file (one link) under `dir`, depth first, sorted.
fn a_file(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut names: Vec<PathBuf> = fs::read_dir(dir).ok()?.map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_file() && m.nlink() == 1 {
            return Some(p);
        }
        if m.is_dir() {
            if let Some(f) = a_file(&p) {
                return Some(f);
            }
        }
    }
    None
}

/// The first cached layer holding a regular file, and that file.
fn layer_file(store: &Path) -> (PathBuf, PathBuf) {
    layers(store)
        .into_iter()
        .find_map(|l| a_file(&l).map(|f| (l, f)))
        .expect("a cached layer with a regular file")
}

/// The first directory under a cached layer's root.
fn layer_dir(store: &Path) -> (PathBuf, PathBuf) {
    layers(store)
        .into_iter()
        .find_map(|l| {
            let mut ds: Vec<PathBuf> = fs::read_dir(&l)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| fs::symlink_metadata(p).unwrap().is_dir())
                .collect();
            ds.sort();
            ds.into_iter().next().map(|d| (l, d))
        })
        .expect("a cached layer with a directory")
}

/// The first layer blob of the benchmark (the biggest blob in the store
/// is certainly a layer; any layer will do).
fn a_layer_blob(store: &Path) -> PathBuf {
    let mut blobs: Vec<(u64, PathBuf)> = fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (fs::metadata(&p).unwrap().len(), p)
        })
        .collect();
    blobs.sort();
    blobs.pop().expect("blobs in the store").1
}

/// One way to tamper with the store: what it changes, and what verify
/// must then report (kind, digest, problem).
struct Tamper {
    what: &'static str,
    apply: fn(&Path) -> (&'static str, String, &'static str),
}

const TAMPERS: &[Tamper] = &[
    Tamper {
        what: "append a byte to a blob",
        apply: |store| {
            let blob = a_layer_blob(store);
            let mut bytes = fs::read(&blob).unwrap();
            bytes.push(b'\n');
            fs::write(&blob, bytes).unwrap();
            ("blob", key(&blob), "hash")
        },
    },
    Tamper {
        what: "change bytes of a blob, keeping its size (has_blob still says present)",
        apply: |store| {
            let blob = a_layer_blob(store);
            let mut bytes = fs::read(&blob).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            fs::write(&blob, bytes).unwrap();
            ("blob", key(&blob), "hash")
        },
    },
    Tamper {
        what: "change a file's content in a cached layer",
        apply: |store| {
            let (layer, file) = layer_file(store);
            let mut bytes = fs::read(&file).unwrap();
            bytes.extend_from_slice(b"# tampered\n");
            fs::write(&file, bytes).unwrap();
            ("layer", key(&layer), "tree_digest")
        },
    },
    Tamper {
        what: "chmod a file in a cached layer",
        apply: |store| {
            let (layer, file) = layer_file(store);
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
            let new = if mode == 0o4777 { 0o755 } else { 0o4777 };
            fs::set_permissions(&file, fs::Permissions::from_mode(new)).unwrap();
            ("layer", key(&layer), "tree_digest")
        },
    },
    Tamper {
        what: "set a file's modification time in a cached layer",
        apply: |store| {
            let (layer, file) = layer_file(store);
            let f = fs::File::options().write(true).open(&file).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
                .unwrap();
            ("layer", key(&layer), "tree_digest")
        },
    },
    Tamper {
        what: "add a file to a cached subtree",
        apply: |store| {
            let sub = subtrees(store).remove(0);
            fs::write(sub.join("planted.py"), b"import os\n").unwrap();
            ("subtree", key(&sub), "tree_digest")
        },
    },
    Tamper {
        what: "remove a subtree's record (as an older hoist left its entries)",
        apply: |store| {
            let sub = subtrees(store).remove(1);
            fs::remove_file(sub.with_extension("treedigest")).unwrap();
            ("subtree", key(&sub), "no_record")
        },
    },
    Tamper {
        what: "replace a file by a symlink in a cached layer",
        apply: |store| {
            let (layer, file) = layer_file(store);
            fs::remove_file(&file).unwrap();
            std::os::unix::fs::symlink("/etc/shadow", &file).unwrap();
            ("layer", key(&layer), "tree_digest")
        },
    },
    Tamper {
        what: "mark a directory of a cached layer opaque (hoist tree-digest leaves overlay xattrs out)",
        apply: |store| {
            let (layer, dir) = layer_dir(store);
            rustix::fs::lsetxattr(
                &dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
            ("layer", key(&layer), "tree_digest")
        },
    },
    Tamper {
        what: "replace a cached layer by a symlink to another directory",
        apply: |store| {
            let layer = layers(store).remove(0);
            let elsewhere = store.join("elsewhere");
            fs::rename(&layer, &elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &layer).unwrap();
            ("layer", key(&layer), "wrong_type")
        },
    },
];

#[test]
fn each_tampering_is_dropped_and_the_next_materialize_restores_the_tree() {
    let Some(oci) = samples_oci() else { return };
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    let before = materialized_digest(store, &oci);
    let (code, report) = verify(store);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["layers"], 3, "{report:#}");
    assert_eq!(report["subtrees"], 2, "{report:#}");
    for t in TAMPERS {
        let (kind, digest, problem) = (t.apply)(store);
        let (code, report) = verify(store);
        assert_eq!(code, 1, "{}: {report:#}", t.what);
        let dropped = report["dropped"].as_array().unwrap();
        assert_eq!(dropped.len(), 1, "{}: {report:#}", t.what);
        let d = &dropped[0];
        assert_eq!(
            (d["kind"].as_str(), d["digest"].as_str()),
            (Some(kind), Some(digest.as_str())),
            "{}: {report:#}",
            t.what
        );
        assert_eq!(d["reason"]["problem"], problem, "{}: {d:#}", t.what);
        // Nothing is mounted: dropped means removed, and nothing else.
        assert_eq!(d["action"]["action"], "removed", "{}: {d:#}", t.what);
        assert_eq!(report["not_checked"], serde_json::json!([]), "{}", t.what);
        let (code, again) = verify(store);
        assert_eq!(code, 0, "{}: second verify: {again:#}", t.what);
        assert_eq!(
            materialized_digest(store, &oci),
            before,
            "{}: the tree after re-fetching or re-unpacking",
            t.what
        );
        assert_store_clean(store);
        assert_store_verifies(store);
        assert_eq!(
            (layers(store).len(), subtrees(store).len()),
            (3, 2),
            "{}: every entry is back",
            t.what
        );
        // Unpacked again with a record of its own (its stored digest is
        // not the first one's: directories the layer does not list get
        // the time of the unpack).
        assert!(
            layers(store)
                .iter()
                .chain(&subtrees(store))
                .all(|e| e.with_extension("treedigest").is_file()),
            "{}",
            t.what
        );
        let _ = fs::remove_dir_all(store.join("elsewhere")); // only the last one makes it
    }
}

#[test]
fn the_text_report_names_what_was_dropped_one_line_each() {
    let Some(oci) = samples_oci() else { return };
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    materialized_digest(store, &oci);
    let blob = a_layer_blob(store);
    fs::write(&blob, b"not the layer").unwrap();
    let (layer, file) = layer_file(store);
    fs::write(&file, b"changed").unwrap();
    let o = run(hoist(store).args(["store", "verify"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let found = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"not the layer"))
    );
    assert_eq!(lines[0], format!("blob {} hashes to {found}", key(&blob)));
    let prefix = format!(
        "layer {} tree digest differs: recorded sha256:",
        key(&layer)
    );
    assert!(lines[1].starts_with(&prefix), "{text}");
    assert!(lines[1].contains(", found sha256:"), "{text}");
    assert_eq!(
        lines[2],
        "verified 11 blobs, 3 layers, 2 subtrees: 2 dropped, 0 not checked"
    );
    assert_store_verifies(store);
}

/// A cache entry a mounted rootfs may use is not removed under it: verify
/// moves it aside (a new materialize unpacks a clean copy), and removes
/// it once nothing is mounted.
#[test]
fn an_entry_a_mounted_rootfs_may_use_is_moved_aside_then_removed() {
    let Some(oci) = samples_oci() else { return };
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    let mounted = materialize(store, &oci);
    let before = tree_digest(store, &mounted);
    let (layer, file) = layer_file(store);
    fs::write(&file, b"changed under a mounted rootfs").unwrap();
    let (code, report) = verify(store);
    assert_eq!(code, 1, "{report:#}");
    let d = &report["dropped"][0];
    assert_eq!(d["digest"], key(&layer), "{report:#}");
    assert_eq!(d["action"]["action"], "moved_aside", "{report:#}");
    let aside = PathBuf::from(d["action"]["to"].as_str().unwrap());
    assert!(aside.is_dir() && !layer.exists(), "{report:#}");
    // The mounted rootfs still reads its (moved) lower layer.
    assert!(fs::read_dir(mounted.dir.path()).unwrap().count() > 0);
    // A new rootfs gets a fresh unpack of the layer, not the tampered one.
    assert_eq!(materialized_digest(store, &oci), before);
    assert!(layer.is_dir());
    let (code, report) = verify(store);
    assert_eq!(code, 0, "{report:#}");
    assert!(aside.is_dir(), "still mounted: kept");
    drop(mounted);
    assert_store_verifies(store);
    assert!(!aside.exists(), "removed once nothing is mounted");
}

/// A whole `hoist run` (overlay rootfs, sandbox, agent, grader) writes
/// nothing into the store: the cached layers are read-only lower layers.
#[test]
fn a_run_leaves_the_store_verifying_clean() {
    let Some(oci) = samples_oci() else { return };
    let Some(tasks) = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS") else {
        return;
    };
    if static_hoist().is_none() {
        skip("no static hoist beside the test build: run scripts/build-static");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    let task = tasks.split_whitespace().next().unwrap();
    let out = tempfile::tempdir().unwrap();
    ok(hoist(store)
        .arg("run")
        .args(axes(&oci))
        .args(["--task", task, "--rootfs", "overlay", "--out"])
        .arg(out.path()));
    let result: Value =
        serde_json::from_slice(&fs::read(out.path().join("task/result.json")).unwrap()).unwrap();
    assert_eq!(result["resolved"], true, "{result:#}");
    assert_store_verifies(store);
}

/// A symlink planted in place of a cached layer is not a cache hit: the
/// next materialize unpacks the layer again instead of mounting what the
/// link points to, even before any verify.
#[test]
fn a_symlink_in_place_of_a_cached_layer_is_never_mounted() {
    let Some(oci) = samples_oci() else { return };
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    let before = materialized_digest(store, &oci);
    let layer = layers(store).remove(0);
    let elsewhere = store.join("elsewhere");
    fs::rename(&layer, &elsewhere).unwrap();
    fs::write(elsewhere.join("planted"), b"x").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &layer).unwrap();
    assert_eq!(materialized_digest(store, &oci), before);
    let m = fs::symlink_metadata(&layer).unwrap();
    assert!(m.is_dir() && !layer.join("planted").exists());
    assert!(
        elsewhere.join("planted").exists(),
        "the link's target is left alone"
    );
    assert_store_verifies(store);
}
