//! `hoist eval` end to end (DESIGN §10, issue 10) on the sample images: a
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
    std::env::var("HOIST_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir())
        .join("run-store")
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
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
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
