//! The README's CI examples for `hoist eval` (issue 10): a GitHub Actions
//! matrix and GitLab `parallel` jobs, one shard each, then `hoist report`.
//! Each is taken from the README where it is marked
//! (`<!-- ci-example: NAME -->` before its fence), validated offline
//! against its platform's schema as check-jsonschema vendors it, and run
//! the way its platform would run it, on two shards: every job in a fresh
//! workspace, its shell steps through the shell the platform uses, with
//! the matrix or node index the platform would give, and the artifacts
//! carried between jobs as the platform carries them. `docker run` of the
//! runner image is carried out by the host's hoist (see [`DOCKER_SHIM`]),
//! so what is tested is the examples' own command lines. The report must
//! equal one machine's `hoist eval` of the same tasks.
//!
//! Needs `HOIST_TEST_CHECK_JSONSCHEMA` (scripts/test-env installs it; its
//! venv's ruamel.yaml also parses the YAML here), and for the runs root and
//! the sample images.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::*;

/// The shards the runs use, whatever the examples' own count.
const SHARDS: usize = 2;

/// What the examples call the runner image and the agent; the runs give
/// them the sample images instead.
const IMAGE_VAR: &str = "IMAGE";
const AGENT_VAR: &str = "AGENT";

/// `docker run` of the runner image, as the CI examples call it, carried
/// out by the host's hoist: the image's entrypoint is hoist and its
/// `HOIST_STORE` is `/store`; `-v HOST:CONTAINER` maps a path (the host
/// directory is created when missing, as Docker does) and `-w` is the
/// working directory. Anything else fails, so an example that grows an
/// option the model does not know cannot pass unseen. The security
/// options are accepted as given: hoist runs here as root, which is what
/// they give it in the container (namespaces isolation).
const DOCKER_SHIM: &str = r#"#!/bin/bash
set -euo pipefail
fail() { echo "docker (tests/ci_examples.rs): $*" >&2; exit 125; }
[[ ${1-} == run ]] || fail "only 'docker run' is modelled: $*"
shift
srcs=() dsts=() wd=/
while (($#)); do
    case $1 in
    --rm) shift ;;
    -v)
        [[ $2 == /*:/* ]] || fail "-v $2 is not HOST:CONTAINER"
        srcs+=("${2%%:*}") dsts+=("${2#*:}")
        mkdir -p "${2%%:*}"
        shift 2 ;;
    -w) wd=$2; shift 2 ;;
    --cap-add | --security-opt) shift 2 ;;
    -*) fail "option $1 is not modelled" ;;
    *) break ;;
    esac
done
(($#)) || fail "no image"
[[ $1 == "$HOIST_CI_IMAGE" ]] || fail "image $1, not $HOIST_CI_IMAGE"
shift
# The host path of the container path $1: mounts here do not nest, and a
# path on the container's own root has no host path.
host_path() {
    local i found=
    for i in "${!dsts[@]}"; do
        if [[ $1 == "${dsts[i]}" || $1 == "${dsts[i]}/"* ]]; then
            found=${srcs[i]}${1#"${dsts[i]}"}
        fi
    done
    [[ -n $found ]] || fail "$1 is on the container's own root"
    printf '%s\n' "$found"
}
dir=$(host_path "$wd")
mkdir -p "$dir"
cd "$dir"
# Without a volume at /store, Docker gives it an anonymous one.
store=$(host_path /store 2>/dev/null) || store=$(mktemp -d -p "$HOIST_CI_TMP" anon-store.XXXX)
args=()
for a in "$@"; do
    if [[ $a == /* ]]; then a=$(host_path "$a"); fi
    args+=("$a")
done
HOIST_STORE=$store exec "$HOIST_CI_HOIST" "${args[@]}"
"#;

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fenced block after `<!-- ci-example: NAME -->` in `text`, which
/// must be there exactly once.
fn snippet(text: &str, name: &str) -> String {
    let marker = format!("<!-- ci-example: {name} -->");
    let found: Vec<usize> = text.match_indices(&marker).map(|(i, _)| i).collect();
    assert_eq!(found.len(), 1, "README.md: {marker} should occur once");
    let mut lines = text[found[0] + marker.len()..].lines().skip(1);
    assert_eq!(
        lines.next(),
        Some("```yaml"),
        "README.md: {marker} must be followed by a ```yaml fence"
    );
    let mut body = String::new();
    for l in lines {
        if l == "```" {
            return body;
        }
        body.push_str(l);
        body.push('\n');
    }
    panic!("README.md: the fence after {marker} is not closed");
}

/// check-jsonschema, or `None` after printing why the test is skipped.
fn check_jsonschema() -> Option<PathBuf> {
    let cj = PathBuf::from(env_or_skip("HOIST_TEST_CHECK_JSONSCHEMA")?);
    if !cj.is_file() {
        skip(&format!(
            "{} is not installed (scripts/test-env)",
            cj.display()
        ));
        return None;
    }
    Some(cj)
}

/// `text` as YAML 1.2 (GitHub's and GitLab's reading: `on` is a string),
/// parsed by ruamel.yaml from check-jsonschema's venv.
fn yaml(cj: &Path, text: &str) -> Value {
    let python = cj.with_file_name("python");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys\nfrom ruamel.yaml import YAML\n\
             json.dump(YAML(typ='safe').load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = ok_child(child, "ruamel.yaml");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// check-jsonschema against a builtin (vendored) schema. As root it runs
/// in a network namespace of its own with nothing but a loopback that is
/// down, so a schema fetched from the network would fail it.
fn validate(cj: &Path, schema: &str, text: &str, dir: &Path) -> Output {
    let file = dir.join(format!("{}.yml", schema.replace('.', "-")));
    std::fs::write(&file, text).unwrap();
    let mut c = if is_root() {
        let mut c = Command::new("unshare");
        c.arg("--net").arg(cj);
        c
    } else {
        eprintln!("not root: check-jsonschema runs with the network (builtin schemas only)");
        Command::new(cj)
    };
    c.args(["--builtin-schema", schema]).arg(&file);
    run(&mut c)
}

/// The flags of the runner image's namespaces profile, as
/// runner-image/README.md's table gives them.
fn namespaces_profile() -> String {
    let text = repo_file("runner-image/README.md");
    let row = text
        .lines()
        .find(|l| l.starts_with("| `--cap-add") && l.contains("| `namespaces` |"))
        .expect("runner-image/README.md: the namespaces profile's row");
    row.split('`').nth(1).unwrap().to_string()
}

#[test]
fn each_ci_example_is_in_the_readme_once_and_uses_the_runner_images_profile() {
    let readme = repo_file("README.md");
    let profile = namespaces_profile();
    for name in ["github", "gitlab"] {
        let s = snippet(&readme, name);
        let evals: Vec<&str> = s.lines().filter(|l| l.contains("eval --")).collect();
        assert_eq!(evals.len(), 1, "{name}: one hoist eval line:\n{s}");
        assert!(
            s.contains(&profile),
            "{name}: the eval's docker run should use runner-image/README.md's namespaces flags `{profile}`:\n{s}"
        );
        assert!(s.contains("--shard-dir"), "{name}:\n{s}");
        assert!(s.contains("report "), "{name}:\n{s}");
    }
    // runner-image/README.md points at them rather than holding a copy
    // that could drift.
    let runner = repo_file("runner-image/README.md");
    assert!(readme.contains("\n### In GitHub Actions and GitLab CI\n"));
    assert!(
        runner.contains("(../README.md#in-github-actions-and-gitlab-ci)"),
        "runner-image/README.md should link to the README's CI examples"
    );
    assert!(!runner.contains("<!-- ci-example:"));
}

#[test]
fn the_ci_examples_validate_offline_against_their_schemas() {
    let Some(cj) = check_jsonschema() else { return };
    let readme = repo_file("README.md");
    let tmp = tempfile::tempdir().unwrap();
    // Each example, and a copy with one key misspelt that the schema must
    // reject (so a pass means the schema was applied).
    let cases = [
        (
            "github",
            "vendor.github-workflows",
            "        with:\n",
            "        wiht:\n",
        ),
        (
            "gitlab",
            "vendor.gitlab-ci",
            "      junit:",
            "      junitt:",
        ),
    ];
    for (name, schema, good, bad) in cases {
        let s = snippet(&readme, name);
        let o = validate(&cj, schema, &s, tmp.path());
        assert!(
            o.status.success(),
            "{name} against {schema}:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(s.contains(good), "{name}: no {good:?} to misspell");
        let o = validate(&cj, schema, &s.replacen(good, bad, 1), tmp.path());
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name} with {bad:?} should fail {schema}:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(
            stdout(&o).contains(bad.trim().trim_end_matches(':')),
            "{}",
            stdout(&o)
        );
    }
}

/// What the runs need: the YAML parser, root and the sample images.
struct Env {
    cj: PathBuf,
    oci: String,
    swe_tasks: Vec<String>,
}

fn env() -> Option<Env> {
    let cj = check_jsonschema()?;
    if !is_root() {
        skip("running the CI examples needs root (hoist eval: namespaces, overlay mounts)");
        return None;
    }
    Some(Env {
        cj,
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        swe_tasks: env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
}

/// One CI run's world: the repository (a tasks file of the per-task
/// sample images, pinned by digest as the README asks), the shim's
/// directory, and where the jobs' workspaces and artifacts go.
struct World {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    bin: PathBuf,
    agent: String,
    image: String,
}

impl World {
    fn new(e: &Env) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let mut tasks = String::new();
        for t in &e.swe_tasks {
            let digest = sample_digest(&format!("swe-mini-{t}"));
            tasks.push_str(&format!(
                "{{\"id\": \"{t}\", \"benchmark\": \"oci:{}@{digest}\"}}\n",
                e.oci
            ));
        }
        std::fs::write(repo.join("tasks.jsonl"), tasks).unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let shim = bin.join("docker");
        std::fs::write(&shim, DOCKER_SHIM).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        World {
            agent: format!("oci:{}@{}", e.oci, sample_digest("agent-oracle")),
            image: "hoist-runner:ci-examples".into(),
            tmp,
            repo,
            bin,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A fresh workspace holding the repository, as a job's checkout.
    fn checkout(&self, job: &str) -> PathBuf {
        let ws = self.path(&format!("jobs/{job}"));
        copy_tree(&self.repo, &ws);
        ws
    }

    /// `script` run by `shell` in `ws` with `vars` (the example's own,
    /// with the image and the agent replaced by the samples) and the
    /// docker shim first on PATH, as hoist's tests run it (no registry
    /// credentials, no host configuration).
    fn shell(
        &self,
        shell: &[&str],
        script: &str,
        ws: &Path,
        vars: &BTreeMap<String, String>,
    ) -> Output {
        let file = ws.join("..").join(format!(
            "{}.script",
            ws.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, script).unwrap();
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap());
        let mut c = Command::new(shell[0]);
        c.args(&shell[1..])
            .arg(&file)
            .current_dir(ws)
            .envs(vars)
            .env(IMAGE_VAR, &self.image)
            .env(AGENT_VAR, &self.agent)
            .env("PATH", path)
            .env("HOIST_CI_HOIST", hoist_bin())
            .env("HOIST_CI_IMAGE", &self.image)
            .env("HOIST_CI_TMP", self.tmp.path())
            .env_remove("HOIST_STORE")
            .env_remove("HOIST_AGENT")
            .env_remove("HOIST_GATEWAY")
            .env_remove("HOIST_REGISTRY_USER")
            .env_remove("HOIST_REGISTRY_PASSWORD")
            .env("DOCKER_CONFIG", self.path("no-docker-config"))
            .env("CONTAINERS_REGISTRIES_CONF", "/nonexistent")
            .env("RUST_LOG", "warn");
        let o = run(&mut c);
        assert!(
            o.status.success(),
            "{shell:?} in {}: {}\n--- script\n{script}--- stdout\n{}--- stderr\n{}",
            ws.display(),
            o.status,
            stdout(&o),
            stderr(&o)
        );
        o
    }

    /// `hoist eval` of the same tasks on one machine, into `whole/`.
    fn one_machine(&self) -> PathBuf {
        let whole = self.path("whole");
        let store = std::env::var("HOIST_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir())
            .join("run-store");
        ok(hoist(&store)
            .arg("eval")
            .arg("--tasks")
            .arg(self.repo.join("tasks.jsonl"))
            .args(["--agent", &self.agent])
            .arg("--out")
            .arg(&whole));
        whole
    }
}

/// `cp -a SRC/. DST/`: DST gets SRC's contents, merged over what it has.
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    ok(Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(format!("{}/", dst.display())));
}

/// Every file and directory under `dir` can be read by anyone: the CI's
/// upload step does not run as root, and the container wrote as root.
fn assert_world_readable(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let need = if m.is_dir() { 0o005 } else { 0o004 };
        assert_eq!(
            m.permissions().mode() & need,
            need,
            "{} is not readable by the CI's upload step ({:o})",
            p.display(),
            m.permissions().mode()
        );
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
}

/// A directory that exists and holds something (what a cache would save).
fn assert_non_empty_dir(p: &Path, what: &str) {
    let n = std::fs::read_dir(p)
        .unwrap_or_else(|e| panic!("{what} {}: {e}", p.display()))
        .count();
    assert!(n > 0, "{what} {} is empty", p.display());
}

/// junit.xml without its times, which differ between two evaluations.
fn timeless(junit: &str) -> String {
    let mut out = String::new();
    let mut rest = junit;
    while let Some(i) = rest.find(" time=\"") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 7..];
        rest = &after[after.find('"').expect("a closed time attribute") + 1..];
    }
    out.push_str(rest);
    out
}

/// The merged report in `dir` is what one machine gives for the same tasks.
fn assert_same_as_one_machine(dir: &Path, whole: &Path, tasks: usize) {
    let merged = read_json(&dir.join("summary.json"));
    assert_eq!(merged["total"], tasks, "{merged:#}");
    assert_eq!(merged["resolved"], tasks, "{merged:#}");
    assert_eq!(
        comparable_summary(merged),
        comparable_summary(read_json(&whole.join("summary.json")))
    );
    let junit = |d: &Path| std::fs::read_to_string(d.join("junit.xml")).unwrap();
    assert_eq!(timeless(&junit(dir)), timeless(&junit(whole)));
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// The example's variables (`env:` or `variables:`), which must define
/// the image and the agent the runs replace.
fn vars_of(v: &Value, what: &str) -> BTreeMap<String, String> {
    let vars: BTreeMap<String, String> = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no variables"))
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect();
    for k in [IMAGE_VAR, AGENT_VAR] {
        assert!(vars.contains_key(k), "{what} does not define {k}");
    }
    vars
}

/// GitHub's `${{ expr }}` replaced by `values`; any other expression fails
/// the test, since the model would not know its value.
fn expand(text: &str, values: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${{") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("}}").expect("a closed ${{") + i;
        let expr = rest[i + 3..end].trim();
        let (_, v) = values
            .iter()
            .find(|(k, _)| *k == expr)
            .unwrap_or_else(|| panic!("${{{{ {expr} }}}} is not modelled (in {text:?})"));
        out.push_str(v);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// One GitHub Actions job in a fresh workspace: its steps in order, with
/// `values` for the expressions, artifacts under `artifacts/NAME/`.
fn github_job(
    w: &World,
    name: &str,
    job: &Value,
    env: &BTreeMap<String, String>,
    values: &[(&str, String)],
) -> PathBuf {
    let ws = w.path(&format!("jobs/{name}"));
    std::fs::create_dir_all(&ws).unwrap();
    let summary = w.path(&format!("jobs/{name}.summary"));
    std::fs::write(&summary, "").unwrap();
    let mut vars = env.clone();
    vars.insert("GITHUB_STEP_SUMMARY".into(), summary.display().to_string());
    let mut cached = Vec::new();
    let artifacts = w.path("artifacts");
    for step in job["steps"].as_array().expect("steps") {
        let with = |k: &str| expand(str_of(&step["with"][k], k), values);
        let uses = step["uses"].as_str().unwrap_or("");
        let action = uses.split('@').next().unwrap();
        if let Some(script) = step["run"].as_str() {
            // GitHub's shell for a `run` without `shell:` on Linux.
            w.shell(
                &["bash", "--noprofile", "--norc", "-e"],
                &expand(script, values),
                &ws,
                &vars,
            );
        } else if action == "actions/checkout" {
            copy_tree(&w.repo, &ws);
        } else if action == "actions/cache" {
            // Restored from nothing (a first run); saved after the job.
            let key = str_of(&step["with"]["key"], "key");
            assert!(key.contains("hashFiles('tasks.jsonl')"), "cache key {key}");
            cached.push(str_of(&step["with"]["path"], "path").to_string());
        } else if action == "actions/upload-artifact" {
            // One path: the artifact holds that directory's contents, and
            // names are unique within a run.
            let (n, p) = (with("name"), ws.join(with("path")));
            assert!(
                p.is_dir(),
                "upload-artifact: {} is not a directory",
                p.display()
            );
            assert_world_readable(&p);
            let dst = artifacts.join(&n);
            assert!(
                !dst.exists(),
                "upload-artifact: a second artifact named {n}"
            );
            copy_tree(&p, &dst);
        } else if action == "actions/download-artifact" {
            // v4: by pattern, each artifact into path/NAME unless
            // merge-multiple, then all into path.
            let pattern = with("pattern");
            let prefix = pattern.strip_suffix('*').expect("a pattern PREFIX*");
            let merge = step["with"]["merge-multiple"] == true;
            let into = ws.join(with("path"));
            let mut found = 0;
            for e in std::fs::read_dir(&artifacts).unwrap() {
                let e = e.unwrap();
                let n = e.file_name().into_string().unwrap();
                if n.starts_with(prefix) {
                    found += 1;
                    copy_tree(&e.path(), &if merge { into.clone() } else { into.join(&n) });
                }
            }
            assert!(found > 0, "download-artifact: nothing matches {pattern}");
        } else {
            panic!("step {step} is not modelled");
        }
    }
    for p in cached {
        assert_non_empty_dir(&ws.join(&p), "actions/cache path");
    }
    ws
}

#[test]
fn the_github_matrix_runs_its_shards_and_reports_as_one_machine() {
    let Some(e) = env() else { return };
    let wf = yaml(&e.cj, &snippet(&repo_file("README.md"), "github"));
    let env_vars = vars_of(&wf["env"], "the workflow's env");
    let jobs = wf["jobs"].as_object().expect("jobs");
    let (fan, fan_job) = jobs
        .iter()
        .find(|(_, j)| j.get("strategy").is_some())
        .expect("a job with a strategy.matrix");
    let (rep, rep_job) = jobs
        .iter()
        .find(|(_, j)| j["needs"] == fan.as_str())
        .expect("a job that needs the matrix");
    let matrix: Vec<u64> = fan_job["strategy"]["matrix"]["shard"]
        .as_array()
        .expect("matrix.shard")
        .iter()
        .map(|v| v.as_u64().expect("a shard index"))
        .collect();
    assert_eq!(
        matrix,
        (0..matrix.len() as u64).collect::<Vec<_>>(),
        "0..N-1"
    );
    assert!(matrix.len() >= SHARDS);

    let w = World::new(&e);
    for i in 0..SHARDS {
        let values = [
            ("matrix.shard", i.to_string()),
            ("strategy.job-total", SHARDS.to_string()),
        ];
        let ws = github_job(&w, &format!("{fan}-{i}"), fan_job, &env_vars, &values);
        let plan = read_json(&ws.join(format!("out/shards/{i}/eval.json")));
        assert_eq!(plan["shard"]["index"], i);
        assert_eq!(plan["shard"]["count"], SHARDS);
    }
    let ws = github_job(&w, rep, rep_job, &env_vars, &[]);
    let whole = w.one_machine();
    assert!(
        w.path("artifacts/report/summary.json").is_file(),
        "the report artifact"
    );
    assert_same_as_one_machine(&w.path("artifacts/report"), &whole, e.swe_tasks.len());
    // The run's summary shows the table, as a code block.
    let summary = std::fs::read_to_string(w.path(&format!("jobs/{rep}.summary"))).unwrap();
    let tasks_row = format!("{:<12} {:>6}\n", "tasks", e.swe_tasks.len());
    assert!(
        summary.starts_with("```\n") && summary.ends_with("```\n"),
        "{summary}"
    );
    assert!(summary.contains(&tasks_row), "{summary}");
    assert!(ws.join("report/junit.xml").is_file());
}

/// One GitLab CI job in a fresh workspace: the artifacts of the jobs it
/// needs (kept at their paths), its script through `sh -e` (the
/// docker:cli image's shell is busybox sh), then its artifacts kept
/// under `artifacts/NAME/`.
fn gitlab_job(
    w: &World,
    name: &str,
    job: &Value,
    vars: &BTreeMap<String, String>,
    needs: &[String],
) -> PathBuf {
    let ws = w.checkout(name);
    for n in needs {
        copy_tree(&w.path(&format!("artifacts/{n}")), &ws);
    }
    let mut vars = vars.clone();
    vars.insert("CI_PROJECT_DIR".into(), ws.display().to_string());
    let script: Vec<&str> = job["script"]
        .as_array()
        .expect("script")
        .iter()
        .map(|l| str_of(l, "a script line"))
        .collect();
    w.shell(&["sh", "-e"], &(script.join("\n") + "\n"), &ws, &vars);
    for p in job["artifacts"]["paths"]
        .as_array()
        .expect("artifacts.paths")
    {
        let rel = str_of(p, "an artifacts path").trim_end_matches('/');
        assert!(ws.join(rel).exists(), "artifacts path {rel} missing");
        copy_tree(&ws.join(rel), &w.path(&format!("artifacts/{name}/{rel}")));
    }
    if let Some(paths) = job["cache"]["paths"].as_array() {
        let key = &job["cache"]["key"]["files"];
        assert_eq!(key, &serde_json::json!(["tasks.jsonl"]), "cache key");
        for p in paths {
            assert_non_empty_dir(&ws.join(str_of(p, "a cache path")), "cache path");
        }
    }
    ws
}

#[test]
fn the_gitlab_parallel_jobs_run_their_shards_and_report_as_one_machine() {
    let Some(e) = env() else { return };
    let pipeline = yaml(&e.cj, &snippet(&repo_file("README.md"), "gitlab"));
    let vars = vars_of(&pipeline["variables"], "the pipeline's variables");
    let jobs: Vec<(&String, &Value)> = pipeline
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, j)| j.get("script").is_some())
        .collect();
    let (fan, fan_job) = *jobs
        .iter()
        .find(|(_, j)| j.get("parallel").is_some())
        .expect("a job with parallel");
    let (rep, rep_job) = *jobs
        .iter()
        .find(|(_, j)| j["needs"] == serde_json::json!([fan]))
        .expect("a job that needs the parallel one");
    let parallel = fan_job["parallel"].as_u64().expect("parallel: N");
    assert!(parallel >= SHARDS as u64);
    assert_eq!(
        fan_job["artifacts"]["when"], "always",
        "shards with errors are kept too"
    );
    assert_eq!(
        rep_job["when"], "always",
        "the report runs after a failed shard too"
    );

    let w = World::new(&e);
    let mut shard_jobs = Vec::new();
    for i in 0..SHARDS {
        // GitLab numbers a parallel job's instances from 1, and names
        // them "NAME i/N".
        let mut v = vars.clone();
        v.insert("CI_NODE_INDEX".into(), (i + 1).to_string());
        v.insert("CI_NODE_TOTAL".into(), SHARDS.to_string());
        let job = format!("{fan}-{}-{SHARDS}", i + 1);
        let ws = gitlab_job(&w, &job, fan_job, &v, &[]);
        let plan = read_json(&ws.join(format!("out/shards/{i}/eval.json")));
        assert_eq!(plan["shard"]["index"], i);
        assert_eq!(plan["shard"]["count"], SHARDS);
        shard_jobs.push(job);
    }
    let ws = gitlab_job(&w, rep, rep_job, &vars, &shard_jobs);
    let whole = w.one_machine();
    let junit = str_of(&rep_job["artifacts"]["reports"]["junit"], "reports.junit");
    let kept = w.path(&format!("artifacts/{rep}"));
    assert!(
        kept.join(junit).is_file(),
        "{junit} is not among the report's artifacts"
    );
    assert_same_as_one_machine(
        &kept.join(Path::new(junit).parent().unwrap()),
        &whole,
        e.swe_tasks.len(),
    );
    assert!(ws.join(junit).is_file());
}
