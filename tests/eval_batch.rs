//! `hoist eval --emit slurm|k8s` on the engines people run (docs/eval.md,
//! issue 10): a Slurm job array on the single-node cluster of
//! `scripts/slurm`, and a Kubernetes Indexed Job validated offline
//! against the API schema (`kubernetes-validate`), whose container
//! command runs per index under `docker run` of the runner image. Either
//! way, `hoist report` over the shards equals one machine's `hoist eval`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

struct Samples {
    oci: String,
    swe_tasks: Vec<String>,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("hoist eval tests need root (namespaces, overlay mounts)");
        return None;
    }
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        swe_tasks: env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
}

/// tests/run_crane.rs's store (its layer cache is filled already).
fn store() -> PathBuf {
    test_dir().join("run-store")
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }

    fn tasks_file(&self, dir: &Path) -> PathBuf {
        let mut text = String::new();
        for t in &self.swe_tasks {
            text.push_str(&format!(
                "{{\"id\": \"{t}\", \"benchmark\": \"{}\"}}\n",
                self.r(&format!("swe-mini-{t}"))
            ));
        }
        let p = dir.join("tasks.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `hoist eval --tasks FILE --agent agent-oracle --out OUT ARGS`.
    fn eval(&self, tasks: &Path, out: &Path, args: &[&str]) -> Command {
        let mut c = hoist(&store());
        c.arg("eval")
            .arg("--tasks")
            .arg(tasks)
            .arg("--agent")
            .arg(self.r("agent-oracle"))
            .arg("--out")
            .arg(out)
            .args(args);
        c
    }
}

/// A tasks file of the swe-mini tasks, in order, each image pinned by
/// its digest.
fn assert_pinned(s: &Samples, text: &str) {
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, s.swe_tasks, "{text}");
    for (l, t) in lines.iter().zip(&s.swe_tasks) {
        let bench = format!("oci:{}@{}", s.oci, sample_digest(&format!("swe-mini-{t}")));
        assert_eq!(l["benchmark"], bench, "{text}");
        let agent = format!("oci:{}@{}", s.oci, sample_digest("agent-oracle"));
        assert_eq!(l["agent"], agent, "{text}");
    }
}

/// `hoist report OUT/shards/* --out OUT`.
fn report(out: &Path) {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(out.join("shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shards.sort();
    ok(hoist(&store())
        .arg("report")
        .args(&shards)
        .arg("--out")
        .arg(out));
}

#[test]
fn a_slurm_job_array_runs_the_shards_and_reports_as_one_machine() {
    let Some(s) = samples() else { return };
    let Some(conf) = env_or_skip("HOIST_TEST_SLURM_CONF") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tasks = s.tasks_file(tmp.path());
    let out = tmp.path().join("eval");
    let o = ok(&mut s.eval(
        &tasks,
        &out,
        &["--emit", "slurm", "--shards", "2", "--max-running", "2"],
    ));
    assert!(stdout(&o).contains("submit"), "{}", stdout(&o));
    let sbatch = std::fs::read_to_string(out.join("slurm/job.sbatch")).unwrap();
    assert!(
        sbatch.contains("--shard \"$shard/2\" --shard-dir"),
        "{sbatch}"
    );
    // The shards run the plan, every image pinned by digest.
    assert!(sbatch.contains("slurm/tasks.jsonl"), "{sbatch}");
    assert_pinned(
        &s,
        &std::fs::read_to_string(out.join("slurm/tasks.jsonl")).unwrap(),
    );
    let submitted = ok(Command::new(out.join("slurm/submit")).env("SLURM_CONF", &conf));
    let jobs: Vec<String> = stdout(&submitted)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(jobs.len(), 1, "one array: {jobs:?}");
    // Until the array has left the queue.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let q = ok(Command::new("squeue")
            .args(["-h", "-j", &jobs[0]])
            .env("SLURM_CONF", &conf));
        if stdout(&q).trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new("scancel")
                .arg(&jobs[0])
                .env("SLURM_CONF", &conf)
                .status();
            panic!("the array did not finish:\n{}", stdout(&q));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let logs = || {
        std::fs::read_dir(out.join("slurm"))
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                p.extension().is_some_and(|x| x == "log").then(|| {
                    format!(
                        "{}:\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for i in 0..2 {
        let dir = out.join("shards").join(i.to_string());
        assert!(
            dir.join("summary.json").is_file(),
            "shard {i} did not finish:\n{}",
            logs()
        );
        let plan = read_json(&dir.join("eval.json"));
        assert_eq!(plan["shard"]["index"], i);
        assert_eq!(plan["shard"]["count"], 2);
    }
    report(&out);
    let whole = tmp.path().join("whole");
    ok(&mut s.eval(&tasks, &whole, &[]));
    assert_eq!(
        comparable_summary(read_json(&out.join("summary.json"))),
        comparable_summary(read_json(&whole.join("summary.json"))),
        "{}",
        logs()
    );
    assert_eq!(
        read_json(&out.join("summary.json"))["resolved"],
        s.swe_tasks.len()
    );
}

#[test]
fn the_kubernetes_indexed_job_validates_and_runs_per_index_in_the_runner_image() {
    let Some(s) = samples() else { return };
    let Some(kv) = env_or_skip("HOIST_TEST_KUBERNETES_VALIDATE") else {
        return;
    };
    if env_or_skip("HOIST_TEST_DOCKER").as_deref() != Some("1") {
        return;
    }
    build_runner_image().expect("the runner image");
    let tmp = tempfile::tempdir().unwrap();
    let tasks = s.tasks_file(tmp.path());
    let out = tmp.path().join("eval");
    ok(&mut s.eval(
        &tasks,
        &out,
        &[
            "--emit",
            "k8s",
            "--runner-image",
            RUNNER_IMAGE,
            "--max-running",
            "2",
            "--retries",
            "1",
        ],
    ));
    let dir = out.join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    // Offline, against the API schema, rejecting unknown fields.
    let v = run(Command::new(&kv).arg("--strict").args(&files));
    assert!(
        v.status.success(),
        "kubernetes-validate:\n{}{}",
        stdout(&v),
        stderr(&v)
    );
    let job = read_json(&dir.join("job.json"));
    let n = s.swe_tasks.len();
    assert_eq!(job["spec"]["completions"], n);
    assert_eq!(job["spec"]["parallelism"], 2);
    // The pods get the plan, every image pinned by digest.
    let cm = read_json(&dir.join("tasks-configmap.json"));
    let pinned = cm["data"]["tasks.jsonl"].as_str().unwrap().to_string();
    assert_pinned(&s, &pinned);
    let pinned_file = tmp.path().join("pinned.jsonl");
    std::fs::write(&pinned_file, &pinned).unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    // What the Job's pods do, one index at a time: the runner image with
    // JOB_COMPLETION_INDEX set, the tasks file where the ConfigMap puts
    // it, the store and the results where the volumes are.
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let runner_store = test_dir().join("runner-store");
    std::fs::create_dir_all(&runner_store).unwrap();
    for i in 0..n {
        let mut d = docker();
        d.args(["run", "--rm", "--network", "host"])
            .args(["-e", &format!("JOB_COMPLETION_INDEX={i}")])
            .arg("-v")
            .arg(format!("{}:/store", runner_store.display()))
            .arg("-v")
            .arg(format!("{}:/results", results.display()))
            .arg("-v")
            .arg(format!(
                "{}:/etc/hoist-eval/tasks.jsonl:ro",
                pinned_file.display()
            ))
            .arg("-v")
            .arg(format!("{0}:{0}:ro", s.oci))
            .args(["--entrypoint", &command[0], RUNNER_IMAGE])
            .args(&command[1..]);
        ok(&mut d);
        let plan = read_json(&results.join("shards").join(i.to_string()).join("eval.json"));
        assert_eq!(plan["shard"]["index"], i);
        assert_eq!(plan["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(plan["tasks"][0]["id"], s.swe_tasks[i].as_str());
    }
    report(&results);
    let whole = tmp.path().join("whole");
    ok(&mut s.eval(&tasks, &whole, &[]));
    assert_eq!(
        comparable_summary(read_json(&results.join("summary.json"))),
        comparable_summary(read_json(&whole.join("summary.json")))
    );
}
