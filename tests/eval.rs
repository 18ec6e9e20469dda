//! `hoist eval` end to end (docs/eval.md, issue 10) on the sample images: a
//! shared-environment benchmark and a tasks file of per-task images, the
//! plan, the summary, junit.xml, resume, retries of infrastructure errors
//! only, shards, and an evaluation interrupted half-way and resumed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

struct Samples {
    oci: String,
    pyfix_tasks: Vec<String>,
    swe_tasks: Vec<String>,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("hoist eval tests need root (namespaces, overlay mounts)");
        return None;
    }
    let words = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        pyfix_tasks: words(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?),
        swe_tasks: words(env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?),
    })
}

/// tests/run_crane.rs's store: its layer cache is filled already.
fn store() -> PathBuf {
    test_store("run-store")
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }

    fn eval(&self, agent: &str, out: &Path, args: &[&str]) -> Command {
        let mut c = hoist(&store());
        c.arg("eval")
            .arg("--agent")
            .arg(self.r(agent))
            .arg("--out")
            .arg(out)
            .args(args)
            .env("HOIST_EVAL_BACKOFF_MS", "100");
        c
    }

    /// A tasks file of the per-task images, plus `extra` lines.
    fn tasks_file(&self, dir: &Path, extra: &[String]) -> PathBuf {
        let mut text = String::new();
        for t in &self.swe_tasks {
            text.push_str(&format!(
                "{{\"id\": \"{t}\", \"benchmark\": \"{}\"}}\n",
                self.r(&format!("swe-mini-{t}"))
            ));
        }
        for l in extra {
            text.push_str(l);
            text.push('\n');
        }
        let p = dir.join("tasks.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// `hoist eval` on a store of the test's own: download counts and
/// eviction need one no other test fills.
fn eval_in(store: &Path, agent: &str, tasks: &Path, out: &Path, args: &[&str]) -> Output {
    ok(hoist(store)
        .arg("eval")
        .arg("--agent")
        .arg(agent)
        .arg("--tasks")
        .arg(tasks)
        .arg("--out")
        .arg(out)
        .args(args))
}

/// The distinct blobs (configs and layers) of the sample images `tags`,
/// from the samples' layout: what a fresh store must download, once each.
fn unique_blobs(oci: &str, tags: &[String]) -> (u64, u64) {
    let blob = |d: &str| read_json(&Path::new(oci).join("blobs/sha256").join(&d[7..]));
    let index = read_json(&Path::new(oci).join("index.json"));
    let mut seen = std::collections::BTreeMap::new();
    for m in index["manifests"].as_array().unwrap() {
        let name = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_default();
        if !tags.iter().any(|t| t == name) {
            continue;
        }
        let mut doc = blob(m["digest"].as_str().unwrap());
        if doc.get("layers").is_none() {
            doc = blob(doc["manifests"][0]["digest"].as_str().unwrap());
        }
        for d in std::iter::once(&doc["config"]).chain(doc["layers"].as_array().unwrap()) {
            seen.insert(
                d["digest"].as_str().unwrap().to_string(),
                d["size"].as_u64().unwrap(),
            );
        }
    }
    (seen.len() as u64, seen.values().sum())
}

fn summary(out: &Path) -> Value {
    read_json(&out.join("summary.json"))
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_shared_environment_benchmark_runs_every_task_and_resumes() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("eval");
    let bench = s.r("pyfix");
    let o = ok(&mut s.eval("agent-oracle", &out, &["--benchmark", &bench, "-j", "2"]));
    let table = stdout(&o);
    let n = s.pyfix_tasks.len();
    assert!(
        table.contains(&format!("{:<12} {n:>6}\n", "tasks")),
        "{table}"
    );
    assert!(
        table.contains(&format!("{:<12} {n:>6}  100.0%", "resolved")),
        "{table}"
    );

    // `hoist tasks` lists the same tasks the evaluation found.
    let listed = ok(hoist(&store()).arg("tasks").arg(&bench));
    assert_eq!(
        stdout(&listed).lines().collect::<Vec<_>>(),
        s.pyfix_tasks.iter().map(String::as_str).collect::<Vec<_>>()
    );

    // The plan: every task, every image pinned.
    let plan = read_json(&out.join("eval.json"));
    assert_eq!(plan["schema"], "hoist.eval/v1");
    let planned: Vec<&str> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(planned, s.pyfix_tasks);
    for t in plan["tasks"].as_array().unwrap() {
        assert_eq!(t["benchmark"]["digest"], sample_digest("pyfix"), "{t:#}");
        assert_eq!(t["agent"]["digest"], sample_digest("agent-oracle"), "{t:#}");
    }
    // Each task's directory is what `hoist run --out` writes.
    for t in &s.pyfix_tasks {
        let r = read_json(&out.join("tasks").join(t).join("task/result.json"));
        assert_eq!(r["task_id"], t.as_str());
        assert_eq!(r["resolved"], true, "{r:#}");
        assert!(out.join("tasks").join(t).join("run.json").is_file());
        assert_host_clean_output(&out.join("tasks").join(t));
    }
    let first = summary(&out);
    assert_eq!(first["schema"], "hoist.summary/v1");
    assert_eq!(first["total"], n);
    assert_eq!(first["completed"], n);
    assert_eq!(first["resolved"], n);
    assert_eq!(first["infra_error"], 0);
    assert_eq!(ids(&first["ids"]["resolved"]), s.pyfix_tasks);
    assert_eq!(first["resumed"], 0);
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(
        junit.contains(&format!(
            "tests=\"{n}\" failures=\"0\" errors=\"0\" skipped=\"0\""
        )),
        "{junit}"
    );
    for t in &s.pyfix_tasks {
        assert!(
            junit.contains(&format!("<testcase name=\"{t}\"")),
            "{junit}"
        );
    }

    // Again: every task is complete for the same digests, so none runs.
    let run_json = out.join("tasks").join(&s.pyfix_tasks[0]).join("run.json");
    let before = std::fs::read(&run_json).unwrap();
    ok(&mut s.eval("agent-oracle", &out, &["--benchmark", &bench]));
    let again = summary(&out);
    assert_eq!(again["resumed"], n);
    assert_eq!(comparable_summary(again), comparable_summary(first.clone()));
    assert_eq!(
        std::fs::read(&run_json).unwrap(),
        before,
        "a complete task ran again"
    );

    // --rerun runs them all; another agent (other digests) runs them all
    // too, and says what it found.
    ok(&mut s.eval("agent-oracle", &out, &["--benchmark", &bench, "--rerun"]));
    assert_eq!(summary(&out)["resumed"], 0);
    assert_ne!(std::fs::read(&run_json).unwrap(), before);
    let o = ok(&mut s.eval(
        "agent-noop",
        &out,
        &["--benchmark", &bench, "--task", &s.pyfix_tasks[0]],
    ));
    let noop = summary(&out);
    assert_eq!(noop["total"], 1, "{}", stdout(&o));
    assert_eq!(noop["unresolved"], 1);
    assert_eq!(noop["resumed"], 0);
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"1\""), "{junit}");
}

#[test]
fn a_tasks_file_of_per_task_images_retries_only_infrastructure_errors() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!(
        "{{\"id\": \"missing\", \"benchmark\": \"oci:{}/no-such-layout:x\"}}",
        tmp.path().display()
    );
    let tasks = s.tasks_file(tmp.path(), &[missing]);
    let out = tmp.path().join("eval");
    let o = run(s.eval("agent-noop", &out, &["--tasks"]).arg(&tasks).args([
        "--retries",
        "2",
        "-j",
        "2",
    ]));
    // An infrastructure error after its retries: exit 1, the others run.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("missing: attempt 3"), "{err}");
    assert!(!err.contains("missing: attempt 4"), "{err}");
    // The agent's failures (noop resolves nothing) are never retried.
    for t in &s.swe_tasks {
        assert!(!err.contains(&format!("{t}: attempt 2")), "{err}");
    }
    let sum = summary(&out);
    assert_eq!(sum["total"], s.swe_tasks.len() + 1);
    assert_eq!(sum["unresolved"], s.swe_tasks.len());
    assert_eq!(ids(&sum["ids"]["infra_error"]), ["missing"]);
    let r = read_json(&out.join("tasks/missing/task/result.json"));
    assert_eq!(r["infra_error"]["stage"], "pull", "{r:#}");
    assert!(
        r["infra_error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-layout"),
        "{r:#}"
    );
    let plan = read_json(&out.join("eval.json"));
    let m = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "missing")
        .unwrap()
        .clone();
    assert!(m["benchmark"]["digest"].is_null(), "{m:#}");
    assert!(m["benchmark"]["unresolved"].is_string(), "{m:#}");
    for t in &s.swe_tasks {
        let r = read_json(&out.join("tasks").join(t).join("task/result.json"));
        assert_eq!(
            r["images"]["benchmark"]["digest"],
            sample_digest(&format!("swe-mini-{t}"))
        );
    }
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("<error type=\"pull\""), "{junit}");

    // A resume runs only the task with the infrastructure error.
    let o = run(s
        .eval("agent-noop", &out, &["--tasks"])
        .arg(&tasks)
        .args(["--retries", "0"]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(summary(&out)["resumed"], s.swe_tasks.len());

    // A bad tasks file names its line.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"a\", \"benchmark\": \"x\"}\n{\"id\": \"a/b\"}\n",
    )
    .unwrap();
    let o = run(s
        .eval("agent-noop", &tmp.path().join("e2"), &["--tasks"])
        .arg(&bad));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.jsonl:2:"), "{}", stderr(&o));
}

#[test]
fn shards_split_the_plan_and_together_cover_it() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tasks = s.tasks_file(tmp.path(), &[]);
    let n = s.swe_tasks.len();
    let mut seen = Vec::new();
    for i in 0..2 {
        let out = tmp.path().join(format!("shard{i}"));
        ok(s.eval("agent-oracle", &out, &["--tasks"])
            .arg(&tasks)
            .args(["--shard", &format!("{i}/2")]));
        let plan = read_json(&out.join("eval.json"));
        assert_eq!(plan["shard"]["index"], i);
        assert_eq!(plan["total_tasks"], n);
        let sum = summary(&out);
        seen.extend(ids(&sum["ids"]["resolved"]));
    }
    seen.sort();
    let mut all = s.swe_tasks.clone();
    all.sort();
    assert_eq!(seen, all);

    // `hoist report` sums the shards up as one evaluation of every task.
    let whole = tmp.path().join("whole");
    ok(s.eval("agent-oracle", &whole, &["--tasks"]).arg(&tasks));
    let merged = tmp.path().join("merged");
    let shards = [tmp.path().join("shard0"), tmp.path().join("shard1")];
    let o = ok(hoist(&store())
        .arg("report")
        .args(&shards)
        .arg("--out")
        .arg(&merged));
    assert!(stdout(&o).contains("resolved"), "{}", stdout(&o));
    assert_eq!(
        comparable_summary(summary(&merged)),
        comparable_summary(summary(&whole))
    );
    let junit = std::fs::read_to_string(merged.join("junit.xml")).unwrap();
    assert!(junit.contains(&format!("tests=\"{n}\"")), "{junit}");
    // A shard missing (its job never wrote it) is an error naming it,
    // unless --partial.
    let o = run(hoist(&store()).arg("report").arg(&shards[0]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "hold {} of the {n} tasks planned (missing shards: 1/2)",
            n.div_ceil(2)
        )),
        "{}",
        stderr(&o)
    );
    let partial = tmp.path().join("partial");
    let o = ok(hoist(&store())
        .arg("report")
        .arg(&shards[0])
        .arg("--partial")
        .arg("--out")
        .arg(&partial));
    assert!(stderr(&o).contains("missing shards: 1/2"), "{}", stderr(&o));
    assert_eq!(summary(&partial)["total"], n.div_ceil(2));
    // A task in two directories is an error naming both.
    let o = run(hoist(&store()).arg("report").args([&shards[0], &shards[0]]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is in both"), "{}", stderr(&o));

    // A Kubernetes Indexed Job: one task per index.
    let out = tmp.path().join("k8s-2");
    ok(s.eval("agent-oracle", &out, &["--tasks"])
        .arg(&tasks)
        .env("JOB_COMPLETION_INDEX", "2"));
    assert_eq!(
        ids(&summary(&out)["ids"]["resolved"]),
        [s.swe_tasks[2].clone()]
    );
    // A Slurm array task.
    let out = tmp.path().join("slurm");
    ok(s.eval("agent-oracle", &out, &["--tasks"])
        .arg(&tasks)
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", n.to_string()));
    assert_eq!(
        ids(&summary(&out)["ids"]["resolved"]),
        [s.swe_tasks[1].clone()]
    );
    let o = run(s
        .eval("agent-oracle", &tmp.path().join("bad"), &["--tasks"])
        .arg(&tasks)
        .args(["--shard", "2/2"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--shard \"2/2\""), "{}", stderr(&o));
}

#[test]
fn an_interrupted_evaluation_leaves_nothing_and_resumes_to_the_same_summary() {
    let Some(s) = samples() else { return };
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let bench = s.r("pyfix");
    // The sleeper never ends by itself: with a short agent timeout each
    // task ends unresolved (timed out) a few seconds in.
    let args = [
        "--benchmark",
        bench.as_str(),
        "-j",
        "2",
        "--agent-timeout",
        "4",
    ];
    let out = tmp.path().join("eval");
    let mut child = s
        .eval("agent-sleeper", &out, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    // The runs' work directories, from their sandbox stages' command
    // lines (`__sandbox STORE/work/run-XXXX/agent/sandbox.json`).
    let mut works = std::collections::BTreeSet::new();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the eval ended early");
        let live = live_descendants();
        for cmd in &live {
            if let Some((_, rest)) = cmd.split_once(" __sandbox ") {
                let config = PathBuf::from(rest.trim());
                works.extend(
                    config
                        .parent()
                        .and_then(Path::parent)
                        .map(Path::to_path_buf),
                );
            }
        }
        let sleeping = live
            .iter()
            .filter(|c| c.starts_with("sleep 100000"))
            .count();
        // Both jobs' agents (two sleeps each) are running.
        if sleeping >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the agents never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(works.len(), 2, "{works:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let o: Output = ok_child_status(child);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let left = live_descendants();
    assert!(left.is_empty(), "left running: {left:?}");
    let mounts = mountinfo();
    for w in &works {
        assert!(!w.exists(), "{} is left", w.display());
        let w = w.to_string_lossy();
        assert!(!mounts.lines().any(|l| l.contains(w.as_ref())), "{mounts}");
    }
    let sum = summary(&out);
    assert_eq!(sum["completed"], 0, "{sum:#}");
    assert_eq!(sum["infra_error"], 2, "the two running tasks: {sum:#}");
    assert_eq!(sum["not_run"], s.pyfix_tasks.len() - 2, "{sum:#}");
    for t in ids(&sum["ids"]["infra_error"]) {
        let r = read_json(&out.join("tasks").join(&t).join("task/result.json"));
        assert_eq!(r["infra_error"]["stage"], "interrupted", "{r:#}");
    }
    assert_store_verifies(&store());

    // Resumed, it runs what did not complete, and sums up as an
    // evaluation that was never interrupted.
    ok(&mut s.eval("agent-sleeper", &out, &args));
    let resumed = summary(&out);
    let fresh_out = tmp.path().join("fresh");
    ok(&mut s.eval("agent-sleeper", &fresh_out, &args));
    let fresh = summary(&fresh_out);
    assert_eq!(
        comparable_summary(resumed.clone()),
        comparable_summary(fresh),
        "{resumed:#}"
    );
    assert_eq!(resumed["unresolved"], s.pyfix_tasks.len());
    assert_eq!(resumed["timed_out"], s.pyfix_tasks.len());
}

fn ok_child_status(child: std::process::Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "hoist eval did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn four_jobs_on_one_store_give_one_jobs_results_and_download_each_blob_once() {
    let Some(s) = samples() else { return };
    let Some(registry) = env_or_skip("HOIST_SAMPLES_REGISTRY") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let reg = |tag: &str| format!("{registry}/{tag}@{}", sample_digest(tag));
    let mut text = String::new();
    for t in &s.swe_tasks {
        let image = reg(&format!("swe-mini-{t}"));
        text.push_str(&format!(
            "{{\"id\": \"{t}\", \"benchmark\": \"{image}\"}}\n"
        ));
    }
    let tasks = tmp.path().join("tasks.jsonl");
    std::fs::write(&tasks, text).unwrap();
    let mut tags: Vec<String> = s
        .swe_tasks
        .iter()
        .map(|t| format!("swe-mini-{t}"))
        .collect();
    tags.push("agent-oracle".into());
    let (blobs, bytes) = unique_blobs(&s.oci, &tags);

    let mut summaries = Vec::new();
    for jobs in ["1", "4"] {
        let store = tmp.path().join(format!("store-{jobs}"));
        let out = tmp.path().join(format!("eval-{jobs}"));
        eval_in(&store, &reg("agent-oracle"), &tasks, &out, &["-j", jobs]);
        let sum = summary(&out);
        assert_eq!(sum["resolved"], s.swe_tasks.len(), "-j {jobs}: {sum:#}");
        // Every blob came over the network exactly once, however many
        // tasks wanted it at the same time.
        assert_eq!(sum["downloaded"]["blobs"], blobs, "-j {jobs}: {sum:#}");
        assert_eq!(sum["downloaded"]["bytes"], bytes, "-j {jobs}: {sum:#}");
        for t in &s.swe_tasks {
            assert_host_clean_output(&out.join("tasks").join(t));
        }
        assert_store_verifies(&store);
        summaries.push(comparable_summary(sum));
    }
    assert_eq!(summaries[0], summaries[1]);
}

#[test]
fn a_store_size_limit_evicts_only_what_no_running_or_pending_task_needs() {
    let Some(s) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tasks = s.tasks_file(tmp.path(), &[]);
    let store = tmp.path().join("store");
    let out = tmp.path().join("eval");
    // Smaller than any one task's images: after each task, everything no
    // other task still needs goes.
    let o = eval_in(
        &store,
        &s.r("agent-oracle"),
        &tasks,
        &out,
        &["-j", "2", "--max-store-size", "6M"],
    );
    let sum = summary(&out);
    assert_eq!(sum["resolved"], s.swe_tasks.len(), "{sum:#}");
    // What a pending task needed was never evicted: each blob was fetched
    // once (the shared base layer, too).
    let mut tags: Vec<String> = s
        .swe_tasks
        .iter()
        .map(|t| format!("swe-mini-{t}"))
        .collect();
    tags.push("agent-oracle".into());
    let (blobs, _) = unique_blobs(&s.oci, &tags);
    assert_eq!(sum["downloaded"]["blobs"], blobs, "{sum:#}");
    // The limit above what the tasks in flight need is said once.
    let err = stderr(&o);
    assert_eq!(err.matches("above --max-store-size").count(), 1, "{err}");
    // With nothing left to run, the least recently used images went
    // until the store fit: every benchmark image (they share the large
    // base layer), their blobs, their unpacked layers. The agent, used as
    // late as the last benchmark and small, may stay.
    let index = read_json(&store.join("index.json"));
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(names.iter().all(|n| *n == s.r("agent-oracle")), "{index:#}");
    let mut used = 0;
    for entry in std::fs::read_dir(&store).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "blobs" || name.starts_with("layers") || name.starts_with("subtrees") {
            used += du(&entry.path());
        }
    }
    assert!(used <= 6 << 20, "the store holds {used} bytes");
    assert_store_verifies(&store);
    // The same tasks without a limit give the same summary.
    let whole = tmp.path().join("whole");
    eval_in(&store, &s.r("agent-oracle"), &tasks, &whole, &["-j", "2"]);
    assert_eq!(comparable_summary(summary(&whole)), comparable_summary(sum));
}
