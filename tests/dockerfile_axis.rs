//! `dockerfile:PATH` axes (docs/dockerfile.md): an agent image built from a
//! Dockerfile by buildah (or docker) runs a real crane-mode task, is
//! pinned in result.json, run.json and hoist.lock, runs `--locked` with
//! neither the registry nor a builder asked, and a changed Dockerfile is
//! drift; bad paths and a missing builder are usage errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use support::*;

struct Env {
    oci: String,
    registry: String,
    task: String,
}

fn env() -> Option<Env> {
    if !is_root() {
        skip("hoist run tests need root (namespaces, overlay mounts)");
        return None;
    }
    Some(Env {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        registry: env_or_skip("HOIST_SAMPLES_REGISTRY")?,
        task: env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
            .split_whitespace()
            .next()?
            .to_string(),
    })
}

fn store() -> PathBuf {
    test_store("dockerfile-store")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A build context for the oracle agent of `task` (agents/oracle's run
/// and the task's gold patch), `FROM scratch`: nothing from a network.
fn oracle_context(task: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("opt/agent");
    std::fs::create_dir_all(agent.join("patches")).unwrap();
    std::fs::copy(repo().join("agents/oracle/run"), agent.join("run")).unwrap();
    std::fs::copy(
        repo().join(format!("benchmarks/pyfix/tasks/{task}/fix.diff")),
        agent.join(format!("patches/{task}.diff")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY opt /opt\n",
    )
    .unwrap();
    dir
}

fn dockerfile_ref(dir: &Path) -> String {
    format!("dockerfile:{}", dir.display())
}

fn hoist_run(args: &[&str], out: &Path) -> Output {
    run(hoist(&store()).arg("run").args(args).arg("--out").arg(out))
}

/// A PATH with neither buildah nor docker on it.
fn no_builders() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn an_agent_built_with_buildah_runs_is_pinned_and_locked() {
    let Some(e) = env() else { return };
    if !have_tool("buildah") {
        return;
    }
    let ctx = oracle_context(&e.task);
    let agent = dockerfile_ref(ctx.path());
    let benchmark = format!("{}/pyfix:latest", e.registry);
    let out = tempfile::tempdir().unwrap();
    let o = hoist_run(
        &[
            "--benchmark",
            &benchmark,
            "--agent",
            &agent,
            "--task",
            &e.task,
        ],
        out.path(),
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let result = read_json(&out.path().join("task/result.json"));
    assert_eq!(result["resolved"], true, "{result}");
    let built = result["images"]["agent"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(built.starts_with("sha256:"), "{built}");
    assert_eq!(result["images"]["agent"]["ref"], agent.as_str());
    let record = read_json(&out.path().join("run.json"));
    assert_eq!(record["images"]["agent"]["digest"], built.as_str());

    // `--timestamp 0`: building the same inputs again gives the same image.
    let again = run(hoist(&store()).args(["--json", "pull", &agent]));
    assert!(again.status.success(), "{}", stderr(&again));
    let pulled: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(pulled[0]["digest"], built.as_str());
    // inspect and materialize take it as any reference, for any axis.
    let o = run(hoist(&store()).args(["--json", "inspect", &agent]));
    assert!(o.status.success(), "{}", stderr(&o));
    let inspected: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inspected["reference"], agent.as_str());
    assert_eq!(inspected["manifest_digest"], built.as_str());
    let fused = tempfile::tempdir().unwrap();
    let rootfs = fused.path().join("rootfs");
    let o = run(hoist(&store())
        .args([
            "materialize",
            // A copy: an overlay would stay mounted on the temp directory.
            "--rootfs",
            "copy",
            // The built image as the benchmark: its whole tree.
            "--benchmark",
            &agent,
            "--out",
        ])
        .arg(&rootfs));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(rootfs.join("opt/agent/run")).unwrap(),
        std::fs::read(repo().join("agents/oracle/run")).unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("hoist.lock");
    let lock_s = lock.to_str().unwrap();
    let o = run(hoist(&store()).args([
        "lock",
        "--benchmark",
        &benchmark,
        "--agent",
        &agent,
        "--lock-file",
        lock_s,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&lock).unwrap();
    let pins: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(pins["agent"]["ref"].as_str(), Some(agent.as_str()));
    assert_eq!(pins["agent"]["digest"].as_str(), Some(built.as_str()));
    assert!(
        pins["agent"]["inputs"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{text}"
    );

    // --locked with --pull never and no builder on PATH: neither the
    // registry nor a builder can be asked, and the run still completes.
    let empty = no_builders();
    let run_locked = || {
        let out = tempfile::tempdir().unwrap();
        let o = run(hoist(&store())
            .env("PATH", empty.path())
            .env("HOIST_BUILDER", "buildah")
            .args([
                "run",
                "--benchmark",
                &benchmark,
                "--agent",
                &agent,
                "--task",
                &e.task,
                "--locked",
                "--pull",
                "never",
                "--lock-file",
                lock_s,
                "--out",
            ])
            .arg(out.path()));
        (out, o)
    };
    let (out, o) = run_locked();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let result = read_json(&out.path().join("task/result.json"));
    assert_eq!(result["images"]["agent"]["digest"], built.as_str());
    assert_eq!(result["resolved"], true);

    // A changed Dockerfile is drift, found without building: exit 3,
    // naming the reference and the file.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY opt /opt\nLABEL changed=1\n",
    )
    .unwrap();
    let (out, o) = run_locked();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&agent) && err.contains("Dockerfile") && err.contains(lock_s),
        "{err}"
    );
    assert!(!out.path().join("task/result.json").exists(), "nothing ran");
}

#[test]
fn an_evaluation_plans_a_built_agent_and_reuses_it() {
    let Some(e) = env() else { return };
    if !have_tool("buildah") {
        return;
    }
    let ctx = oracle_context(&e.task);
    let agent = dockerfile_ref(ctx.path());
    let out = tempfile::tempdir().unwrap();
    let o = run(hoist(&store())
        .args([
            "eval",
            "--benchmark",
            &format!("oci:{}:pyfix", e.oci),
            "--task",
            &e.task,
            "--agent",
            &agent,
            "--out",
        ])
        .arg(out.path()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let plan = read_json(&out.path().join("eval.json"));
    let planned = plan["tasks"][0]["agent"]["digest"].as_str().unwrap();
    assert!(planned.starts_with("sha256:"), "{plan:#}");
    let r = read_json(
        &out.path()
            .join("tasks")
            .join(&e.task)
            .join("task/result.json"),
    );
    assert_eq!(r["resolved"], true, "{r:#}");
    assert_eq!(r["images"]["agent"]["digest"], planned);

    // Evaluated again with no builder on PATH: the store's image for the
    // same build inputs is planned and run, nothing is built.
    let empty = no_builders();
    let again = tempfile::tempdir().unwrap();
    let o = run(hoist(&store())
        .env("PATH", empty.path())
        .env("HOIST_BUILDER", "buildah")
        .args([
            "eval",
            "--benchmark",
            &format!("oci:{}:pyfix", e.oci),
            "--task",
            &e.task,
            "--agent",
            &agent,
            "--out",
        ])
        .arg(again.path()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let plan = read_json(&again.path().join("eval.json"));
    assert_eq!(plan["tasks"][0]["agent"]["digest"].as_str(), Some(planned));

    // --dry-run reads the built image from the store.
    let dry = tempfile::tempdir().unwrap();
    let o = run(hoist(&store())
        .args([
            "--json",
            "eval",
            "--dry-run",
            "--benchmark",
            &format!("oci:{}:pyfix", e.oci),
            "--task",
            &e.task,
            "--agent",
            &agent,
            "--out",
        ])
        .arg(dry.path()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let line = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["roles"] == serde_json::json!(["agent"]))
        .cloned()
        .unwrap_or_default();
    assert_eq!(line["ref"], agent.as_str(), "{report:#}");
    assert_eq!(line["digest"].as_str(), Some(planned));
    assert_eq!(line["layers"], 1);
}

#[test]
fn docker_builds_where_it_is_the_builder() {
    let Some(e) = env() else { return };
    if !have_docker() {
        return;
    }
    let ctx = oracle_context(&e.task);
    // The Dockerfile named as a file, its directory the context.
    let agent = format!("dockerfile:{}", ctx.path().join("Dockerfile").display());
    let out = tempfile::tempdir().unwrap();
    let o = run(hoist(&store())
        .env("HOIST_BUILDER", "docker")
        .env("HOIST_DOCKER", docker_path())
        .args([
            "run",
            "--benchmark",
            &format!("oci:{}:pyfix", e.oci),
            "--agent",
            &agent,
            "--task",
            &e.task,
            "--out",
        ])
        .arg(out.path()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let result = read_json(&out.path().join("task/result.json"));
    assert_eq!(result["resolved"], true, "{result}");
    assert_eq!(result["images"]["agent"]["ref"], agent.as_str());
}

fn pull_error(reference: &str, path: Option<&Path>) -> (Option<i32>, String) {
    let mut c = hoist(&store());
    if let Some(p) = path {
        c.env("PATH", p).env_remove("HOIST_BUILDER");
    }
    let o = run(c.args(["pull", reference]));
    (o.status.code(), stderr(&o))
}

#[test]
fn what_cannot_be_built_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let r = dockerfile_ref(&missing);
    let (code, err) = pull_error(&r, None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&r) && err.contains("No such file"), "{err}");

    let r = dockerfile_ref(dir.path());
    let (code, err) = pull_error(&r, None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&r) && err.contains("Dockerfile") && err.contains("Containerfile"),
        "{err}"
    );

    // Neither builder on PATH: one error naming both and the variable
    // that picks one.
    std::fs::write(dir.path().join("Containerfile"), "FROM scratch\n").unwrap();
    let empty = no_builders();
    let (code, err) = pull_error(&r, Some(empty.path()));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&r)
            && err.contains("buildah")
            && err.contains("docker")
            && err.contains("HOIST_BUILDER"),
        "{err}"
    );
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1);

    // A pinned image the store does not hold is never rebuilt.
    let pinned = format!("{r}@sha256:{}", "0".repeat(64));
    let (code, err) = pull_error(&pinned, None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&pinned) && err.contains("never rebuilt"),
        "{err}"
    );
}

#[test]
fn an_unknown_builder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let o = run(hoist(&store())
        .env("HOIST_BUILDER", "kaniko")
        .args(["pull", &dockerfile_ref(dir.path())]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("kaniko"), "{}", stderr(&o));
}

#[test]
fn a_failed_build_names_the_reference_and_the_builder() {
    if !have_tool("buildah") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY not-in-the-context /x\n",
    )
    .unwrap();
    let r = dockerfile_ref(dir.path());
    // A store of its own: the other tests' builds come and go in theirs.
    let own = tempfile::tempdir().unwrap();
    let store = own.path().join("store");
    let o = run(hoist(&store)
        .env("HOIST_BUILDER", "buildah")
        .args(["pull", &r]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&r) && err.contains("buildah") && err.contains("not-in-the-context"),
        "{err}"
    );
    // The builder's scratch storage went with it.
    let left: Vec<_> = std::fs::read_dir(store.join("ingest"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("build-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A build killed midway leaves its scratch directory; `hoist gc` removes
/// it (no build can be running then: each holds the gc lock shared).
#[test]
fn gc_removes_what_a_killed_build_left() {
    let own = tempfile::tempdir().unwrap();
    let store = own.path().join("store");
    ok(hoist(&store).arg("images"));
    let left = store.join("ingest/build-killed");
    std::fs::create_dir_all(left.join("vfs/dir")).unwrap();
    std::fs::write(left.join("vfs/dir/layer.tar"), "half a layer").unwrap();
    // A partial download beside it is resumable: it stays.
    std::fs::write(store.join("ingest/partial"), "resumable").unwrap();
    let o = ok(hoist(&store).args(["--json", "gc"]));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["builds"], 1, "{report}");
    assert!(!left.exists(), "{} is left", left.display());
    assert!(store.join("ingest/partial").exists());
}
