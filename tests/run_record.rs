//! One run record for both modes (issue 14): the oracle on one pyfix task
//! in crane mode and in container mode writes `run.json` files with the
//! same keys, at every depth, and the same values but where the backend
//! makes them differ (listed in [`DIFFERS_BY_MODE`], each with why); and
//! each mode's `run.json` and `result.json` match the insta snapshots in
//! tests/snapshots/, volatile fields redacted. A field added to one mode
//! only, or a value that drifts, fails here.
//!
//! The snapshots are committed. insta compares and never writes when `CI`
//! is set (its `INSTA_UPDATE=auto` is then `no`); locally a drift leaves a
//! `.snap.new` to review (`cargo insta review`, or `INSTA_UPDATE=always`
//! to accept it). Under `HOIST_TEST_REQUIRE_ALL=1` (CI) the test refuses
//! the settings that would accept a drift.
//!
//! Needs root, Docker (`HOIST_TEST_DOCKER`), the samples and the static
//! hoist; skips with the reason otherwise.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::*;

struct Samples {
    oci: String,
    task: String,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("the run record tests need root (crane mode's sandbox, docker)");
        return None;
    }
    if !have_docker() {
        return None;
    }
    if static_hoist().is_none() {
        skip("no static hoist: run scripts/build-static");
        return None;
    }
    let task = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
        .split_whitespace()
        .next()?
        .to_string();
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        task,
    })
}

/// tests/container_mode.rs's store: its layers and bakes are made already.
fn store() -> PathBuf {
    test_store("container-store")
}

/// What one `hoist run` wrote.
struct Ran {
    out: tempfile::TempDir,
    run: Value,
    result: Value,
}

/// The oracle on the task in `mode`, which must succeed.
fn run_in(s: &Samples, mode: &str) -> Ran {
    let out = tempfile::tempdir().unwrap();
    ok(hoist(&store())
        .env("HOIST_DOCKER", docker_path())
        .args(["run", "--mode", mode, "--benchmark"])
        .arg(format!("oci:{}:pyfix", s.oci))
        .arg("--agent")
        .arg(format!("oci:{}:agent-oracle", s.oci))
        .args(["--task", &s.task, "--out"])
        .arg(out.path()));
    let run = read_json(&out.path().join("run.json"));
    let result = read_json(&out.path().join("task/result.json"));
    Ran { out, run, result }
}

/// What container mode adds to `run.json`: the image and the containers
/// Docker ran.
const DOCKER_FACTS: &[&str] = &[
    "docker_containers",
    "docker_image",
    "docker_image_id",
    "docker_repo_digests",
    "combination_manifest_digest",
];

/// The `run.json` fields (JSON pointers, `*` for every element or key)
/// whose values differ between the modes by design; everything else must
/// be equal.
const DIFFERS_BY_MODE: &[(&str, &str)] = &[
    ("/mode", "the mode itself"),
    (
        "/command_line",
        "compared apart: the same but for --mode and --out",
    ),
    (
        "/user_namespace",
        "crane mode makes one for the sandbox; Docker's containers run in none",
    ),
    (
        "/rootfs",
        "overlay or copy in crane mode, docker in container mode",
    ),
    (
        "/sessions/*/rootfs",
        "how crane mode built each session's tree; Docker builds its own",
    ),
    (
        "/limits/*/enforced_by",
        "a cgroup or an rlimit in crane mode, docker's flags in container mode",
    ),
    (
        "/limits/processes_per_uid",
        "RLIMIT_NPROC in crane mode's sandbox; container mode bounds processes with --pids-limit",
    ),
    ("/started_at", "a time"),
    ("/durations_ms/*", "times"),
    ("/sessions/*/materialize_ms", "times"),
    ("/sessions/*/sandbox_ms", "times"),
    (
        "/output/bytes",
        "result.json holds durations, whose digits vary",
    ),
    (
        "/output/copied",
        "compared apart: the same files, in the order each backend read them",
    ),
];

/// Every key path in `v`, arrays' elements as `*`.
fn key_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}/{k}");
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                key_paths(v, &format!("{prefix}/*"), out);
            }
        }
        _ => {}
    }
}

/// `v` with the value at `pointer` (`*` for every element or key) set to
/// null.
fn blank(v: &mut Value, pointer: &str) {
    let Some(pointer) = pointer.strip_prefix('/') else {
        *v = Value::Null;
        return;
    };
    let (first, rest) = match pointer.split_once('/') {
        Some((first, rest)) => (first, format!("/{rest}")),
        None => (pointer, String::new()),
    };
    match (first, v) {
        ("*", Value::Array(a)) => a.iter_mut().for_each(|x| blank(x, &rest)),
        ("*", Value::Object(o)) => o.values_mut().for_each(|x| blank(x, &rest)),
        (key, Value::Object(o)) => {
            if let Some(x) = o.get_mut(key) {
                blank(x, &rest);
            }
        }
        _ => {}
    }
}

/// The command line without what names the mode and the output.
fn command_line(run: &Value) -> Vec<String> {
    let args: Vec<&str> = run["command_line"]
        .as_array()
        .expect("command_line")
        .iter()
        .map(|a| a.as_str().expect("command_line holds strings"))
        .collect();
    let mut kept = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--mode" || *a == "--out" {
            it.next();
            continue;
        }
        kept.push(a.to_string());
    }
    kept
}

fn sorted_copied(run: &Value) -> Vec<String> {
    let mut v: Vec<String> = run["output"]["copied"]
        .as_array()
        .expect("output.copied")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn assert_records_agree(crane: &Value, container: &Value) {
    let mut container_only = container.clone();
    for k in DOCKER_FACTS {
        let fact = container_only.as_object_mut().unwrap().remove(*k);
        assert!(fact.is_some(), "container mode's run.json lacks {k}");
        assert!(crane.get(*k).is_none(), "crane mode's run.json has {k}");
    }
    let (mut a, mut b) = (Default::default(), Default::default());
    key_paths(crane, "", &mut a);
    key_paths(&container_only, "", &mut b);
    assert_eq!(
        a.difference(&b).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys only crane mode's run.json has"
    );
    assert_eq!(
        b.difference(&a).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "keys only container mode's run.json has"
    );

    assert_eq!(command_line(crane), command_line(container));
    assert_eq!(sorted_copied(crane), sorted_copied(container));
    let (mut a, mut b) = (crane.clone(), container_only);
    for (pointer, _why) in DIFFERS_BY_MODE {
        blank(&mut a, pointer);
        blank(&mut b, pointer);
    }
    // Field by field, for a message that names the field.
    let mut fields = std::collections::BTreeSet::new();
    key_paths(&a, "", &mut fields);
    for f in fields.iter().filter(|f| !f.contains('*')) {
        assert_eq!(a.pointer(f), b.pointer(f), "run.json {f} differs by mode");
    }
    assert_eq!(a, b, "run.json differs by mode");
}

/// The host's architecture as an image platform names it.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `v` with what names this machine's paths, the sample images' digests
/// (rebuilt samples get new ones) and the host's architecture replaced by
/// placeholders that say what stood there.
fn placeholders(v: &Value, s: &Samples, out: &Path) -> Value {
    let mut swaps: Vec<(String, String)> = vec![
        (hoist_bin().display().to_string(), "[hoist]".into()),
        (store().display().to_string(), "[store]".into()),
        (out.display().to_string(), "[out]".into()),
        (s.oci.clone(), "[samples]".into()),
        (format!("linux/{}", goarch()), "linux/[host arch]".into()),
    ];
    for tag in ["pyfix", "agent-oracle"] {
        swaps.push((sample_digest(tag), format!("[{tag} digest]")));
    }
    let text = swaps
        .iter()
        .fold(v.to_string(), |t, (from, to)| t.replace(from, to));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn crane_and_container_mode_write_one_record_that_matches_its_snapshots() {
    let Some(s) = samples() else { return };
    snapshots_must_be_compared(
        "run_record",
        &[
            "crane_run_json",
            "crane_result_json",
            "container_run_json",
            "container_result_json",
        ],
    );
    let crane = run_in(&s, "crane");
    let container = run_in(&s, "container");

    // What must hold whatever the snapshots say.
    for ran in [&crane, &container] {
        assert_eq!(ran.run["schema"], "hoist.run/v1");
        assert_eq!(ran.result["schema"], "hoist.result/v1");
        assert_eq!(ran.result["task_id"], s.task.as_str());
        assert_eq!(ran.result["resolved"], true, "{}", ran.result);
        assert_eq!(ran.run["hoist_version"], env!("CARGO_PKG_VERSION"));
        for (axis, tag) in [("benchmark", "pyfix"), ("agent", "agent-oracle")] {
            assert_eq!(ran.run["images"][axis]["digest"], sample_digest(tag));
            assert_eq!(ran.result["images"][axis]["digest"], sample_digest(tag));
        }
    }
    assert_records_agree(&crane.run, &container.run);
    let normalised = |r: &Value| {
        let mut r = r.clone();
        hoist::result::normalise_json(&mut r);
        r
    };
    assert_eq!(normalised(&crane.result), normalised(&container.result));

    for (mode, ran) in [("crane", &crane), ("container", &container)] {
        let run = placeholders(&ran.run, &s, ran.out.path());
        let result = placeholders(&ran.result, &s, ran.out.path());
        insta::assert_json_snapshot!(format!("{mode}_run_json"), run, {
            ".started_at" => "[time]",
            ".durations_ms.pull" => "[ms]",
            ".durations_ms.materialize" => "[ms]",
            ".durations_ms.sandbox" => "[ms]",
            ".durations_ms.total" => "[ms]",
            ".sessions[].materialize_ms" => "[ms]",
            ".sessions[].sandbox_ms" => "[ms]",
            ".host.kernel" => "[kernel]",
            ".host.machine" => "[machine]",
            ".hoist_version" => "[version]",
            ".output.bytes" => "[bytes]",
            ".output.copied" => insta::sorted_redaction(),
            // The host's cgroup version.
            ".limits.*.enforced_by" => insta::dynamic_redaction(|value, _| {
                match value.as_str() {
                    Some(s) if s.starts_with("cgroup v") => "[cgroup]".into(),
                    _ => value,
                }
            }),
            // Random names, and the combination image, whose layer holds
            // this build's static hoist.
            ".docker_containers[]" => "[container]",
            ".docker_image" => "[combination image]",
            ".docker_image_id" => "[image id]",
            // Whatever registries Docker knows this image from: other tests
            // push the same combination image.
            ".docker_repo_digests" => "[repo digests]",
            ".combination_manifest_digest" => "[combination digest]",
        });
        insta::assert_json_snapshot!(format!("{mode}_result_json"), result, {
            ".started_at" => "[time]",
            ".durations_ms.materialize" => "[ms]",
            ".durations_ms.agent" => "[ms]",
            ".durations_ms.grade" => "[ms]",
            ".hoist_version" => "[version]",
        });
    }
}
