//! `hoist eval --emit slurm`: the evaluation as a batch job of the
//! engines people already run (docs/eval.md). Each array task runs one shard
//! (`--shard I/N`) into a directory of its own, `OUT/shards/I`; `hoist
//! report OUT/shards/*` sums them up.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Slurm's default `MaxArraySize`: array indexes run from 0 to 1000, so
/// one array holds at most this many tasks; past it, the job is submitted
/// as several arrays, each told its offset.
pub const SLURM_MAX_ARRAY: usize = 1001;

/// What an emitted job runs.
pub struct Job {
    /// `hoist` and its global flags, then `eval` and its own (no `--out`,
    /// `--shard` or `--emit`): what every array task runs.
    pub command: Vec<String>,
    /// The plan as a tasks file, every image pinned
    /// (`OUT/slurm/tasks.jsonl`, which `command` names).
    pub tasks: String,
    /// The evaluation's directory; shard `I` writes `OUT/shards/I`.
    pub out: PathBuf,
    /// How many shards (array tasks).
    pub shards: usize,
    /// At most this many array tasks at once (Slurm's `%` throttle).
    pub max_running: usize,
    /// CPUs each array task asks for (its `--jobs`).
    pub cpus: usize,
}

/// Quote `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sbatch script (`OUT/slurm/job.sbatch`, its one argument the
/// offset of its array) and the script that submits the arrays
/// (`OUT/slurm/submit`).
pub fn slurm(job: &Job) -> (String, String) {
    let out = job.out.display().to_string();
    let logs = job.out.join("slurm");
    let mut sbatch = String::new();
    let _ = writeln!(sbatch, "#!/bin/bash");
    let _ = writeln!(
        sbatch,
        "# Written by `hoist eval --emit slurm`: one shard of {} per array task.",
        job.shards
    );
    let _ = writeln!(sbatch, "# Submit with {}/submit.", logs.display());
    let _ = writeln!(sbatch, "#SBATCH --job-name=hoist-eval");
    let _ = writeln!(sbatch, "#SBATCH --cpus-per-task={}", job.cpus.max(1));
    let _ = writeln!(
        sbatch,
        "#SBATCH --output={}",
        logs.join("shard-%A_%a.log").display()
    );
    let _ = writeln!(sbatch, "set -euo pipefail");
    let _ = writeln!(
        sbatch,
        "# The array's offset: arrays past Slurm's MaxArraySize ({SLURM_MAX_ARRAY}) are submitted in parts."
    );
    let _ = writeln!(sbatch, "offset=\"${{1:-0}}\"");
    let _ = writeln!(sbatch, "shard=$((SLURM_ARRAY_TASK_ID + offset))");
    let command: Vec<String> = job.command.iter().map(|a| shell_quote(a)).collect();
    let _ = writeln!(
        sbatch,
        "exec {} --shard \"$shard/{}\" --shard-dir --out {}",
        command.join(" "),
        job.shards,
        shell_quote(&out)
    );

    let mut submit = String::new();
    let _ = writeln!(submit, "#!/bin/sh");
    let _ = writeln!(
        submit,
        "# Submit the evaluation's {} shards as Slurm job arrays, at most {} running at once.",
        job.shards, job.max_running
    );
    let _ = writeln!(
        submit,
        "# Then: hoist report {}/shards/* --out {}",
        out, out
    );
    let _ = writeln!(submit, "set -eu");
    let script = shell_quote(&logs.join("job.sbatch").display().to_string());
    let mut offset = 0;
    while offset < job.shards {
        let size = (job.shards - offset).min(SLURM_MAX_ARRAY);
        let _ = writeln!(
            submit,
            "sbatch --parsable --array=0-{}%{} {script} {offset}",
            size - 1,
            job.max_running.max(1)
        );
        offset += size;
    }
    (sbatch, submit)
}

/// Where the Slurm job's tasks file goes: `OUT/slurm/tasks.jsonl`.
pub fn slurm_tasks_path(out: &Path) -> PathBuf {
    out.join("slurm").join("tasks.jsonl")
}

/// Write the Slurm job (its tasks file, the sbatch script and the submit
/// script) into `OUT/slurm/`; returns the submit script.
pub fn write_slurm(job: &Job) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = job.out.join("slurm");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(slurm_tasks_path(&job.out), &job.tasks)?;
    let (sbatch, submit) = slurm(job);
    let write = |name: &str, text: &str| -> std::io::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(p)
    };
    write("job.sbatch", &sbatch)?;
    write("submit", &submit)
}

/// What a Kubernetes Indexed Job of the evaluation needs beyond [`Job`].
pub struct K8s {
    /// The Job's name (and the prefix of its ConfigMap and claim).
    pub name: String,
    /// The runner image (`runner-image/`): hoist at /usr/local/bin/hoist,
    /// nothing else.
    pub image: String,
    /// `eval` and its flags, as the runner runs them (a tasks file at
    /// [`K8S_TASKS_PATH`]).
    pub eval_args: Vec<String>,
    /// The tasks file's text, for a ConfigMap the pods mount.
    pub tasks_file: Option<String>,
    /// The number of tasks: one index each.
    pub tasks: usize,
    pub parallelism: usize,
    /// Tries of an index beyond the first (infrastructure failures).
    pub retries: u32,
    pub cpus: usize,
    /// Each pod's memory request, bytes.
    pub memory: Option<u64>,
    /// Each pod's node-local disk (the store, the runs' trees), e.g. 40Gi.
    pub ephemeral_storage: String,
}

/// Where the pods see the tasks file.
pub const K8S_TASKS_PATH: &str = "/etc/hoist-eval/tasks.jsonl";

/// The runner image's hoist.
const RUNNER_HOIST: &str = "/usr/local/bin/hoist";

/// The manifests of an Indexed Job that runs the runner image once per
/// task (`JOB_COMPLETION_INDEX` is its shard): (file name, manifest).
/// Each index writes `/results/shards/I` on the claim `NAME-results`;
/// the store is a node-local directory shared by the pods of a node.
/// An index is tried `retries` more times after a failure; exit 2 (a bad
/// task file or flag) or 3 (a pinned digest that does not match) fails it
/// at once; a pod evicted or preempted does not count.
pub fn k8s(k: &K8s) -> Vec<(String, serde_json::Value)> {
    use serde_json::json;
    let mut command = vec![RUNNER_HOIST.to_string()];
    command.extend(k.eval_args.iter().cloned());
    command.extend(["--shard-dir".into(), "--out".into(), "/results".into()]);
    let mut requests = json!({
        "cpu": k.cpus.max(1).to_string(),
        "ephemeral-storage": k.ephemeral_storage,
    });
    if let Some(m) = k.memory {
        requests["memory"] = json!(m.to_string());
    }
    let mut mounts = vec![
        json!({"name": "store", "mountPath": "/store"}),
        json!({"name": "results", "mountPath": "/results"}),
    ];
    let mut volumes = vec![
        json!({"name": "store", "hostPath": {"path": "/var/lib/hoist-store", "type": "DirectoryOrCreate"}}),
        json!({"name": "results", "persistentVolumeClaim": {"claimName": format!("{}-results", k.name)}}),
    ];
    let mut out = Vec::new();
    if let Some(text) = &k.tasks_file {
        let cm = format!("{}-tasks", k.name);
        mounts.push(json!({"name": "tasks", "mountPath": "/etc/hoist-eval", "readOnly": true}));
        volumes.push(json!({"name": "tasks", "configMap": {"name": cm}}));
        out.push((
            "tasks-configmap.json".to_string(),
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": cm},
                "data": {"tasks.jsonl": text},
            }),
        ));
    }
    out.push((
        "results-pvc.json".to_string(),
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("{}-results", k.name)},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "10Gi"}},
            },
        }),
    ));
    out.push((
        "job.json".to_string(),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": k.name, "labels": {"app.kubernetes.io/name": "hoist-eval"}},
            "spec": {
                "completionMode": "Indexed",
                "completions": k.tasks,
                "parallelism": k.parallelism.max(1),
                "backoffLimitPerIndex": k.retries,
                "podFailurePolicy": {"rules": [
                    {"action": "FailIndex", "onExitCodes": {"containerName": "hoist", "operator": "In", "values": [2, 3]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "hoist-eval"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": "hoist",
                            "image": k.image,
                            "command": command,
                            "env": [{"name": "HOIST_STORE", "value": "/store"}],
                            "resources": {
                                "requests": requests,
                                "limits": {"ephemeral-storage": k.ephemeral_storage},
                            },
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                    },
                },
            },
        }),
    ));
    out
}

/// Write the Kubernetes manifests into `OUT/k8s/`; returns the directory.
pub fn write_k8s(out: &Path, k: &K8s) -> std::io::Result<PathBuf> {
    let dir = out.join("k8s");
    std::fs::create_dir_all(&dir)?;
    for (name, manifest) in k8s(k) {
        let mut text = serde_json::to_string_pretty(&manifest).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir)
}

/// The directories the shards of an emitted job write.
pub fn shard_dirs(out: &Path, shards: usize) -> Vec<PathBuf> {
    (0..shards)
        .map(|i| out.join("shards").join(i.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(shards: usize) -> Job {
        Job {
            command: vec![
                "/usr/bin/hoist".into(),
                "eval".into(),
                "--agent".into(),
                "reg/agent's:1".into(),
            ],
            tasks: String::new(),
            out: PathBuf::from("/shared/eval"),
            shards,
            max_running: 8,
            cpus: 2,
        }
    }

    #[test]
    fn one_array_with_a_throttle() {
        let (sbatch, submit) = slurm(&job(10));
        assert!(sbatch.contains("#SBATCH --cpus-per-task=2"), "{sbatch}");
        assert!(
            sbatch.contains(
                "exec /usr/bin/hoist eval --agent 'reg/agent'\\''s:1' --shard \"$shard/10\" --shard-dir --out /shared/eval"
            ),
            "{sbatch}"
        );
        assert!(
            submit.contains("sbatch --parsable --array=0-9%8 /shared/eval/slurm/job.sbatch 0\n"),
            "{submit}"
        );
        assert_eq!(
            submit.lines().filter(|l| l.starts_with("sbatch")).count(),
            1,
            "{submit}"
        );
    }

    #[test]
    fn arrays_are_split_past_max_array_size() {
        let (_, submit) = slurm(&job(2294));
        let lines: Vec<&str> = submit.lines().filter(|l| l.starts_with("sbatch")).collect();
        assert_eq!(
            lines,
            [
                "sbatch --parsable --array=0-1000%8 /shared/eval/slurm/job.sbatch 0",
                "sbatch --parsable --array=0-1000%8 /shared/eval/slurm/job.sbatch 1001",
                "sbatch --parsable --array=0-291%8 /shared/eval/slurm/job.sbatch 2002",
            ]
        );
    }

    #[test]
    fn an_indexed_job_runs_one_task_per_index() {
        let k = K8s {
            name: "hoist-eval".into(),
            image: "reg/hoist-runner@sha256:1".into(),
            eval_args: vec!["eval".into(), "--tasks".into(), K8S_TASKS_PATH.into()],
            tasks_file: Some("{\"id\":\"a\",\"benchmark\":\"r\"}\n".into()),
            tasks: 2294,
            parallelism: 50,
            retries: 2,
            cpus: 2,
            memory: Some(4 << 30),
            ephemeral_storage: "40Gi".into(),
        };
        let m = k8s(&k);
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["tasks-configmap.json", "results-pvc.json", "job.json"]
        );
        let job = &m[2].1;
        assert_eq!(job["spec"]["completionMode"], "Indexed");
        assert_eq!(job["spec"]["completions"], 2294);
        assert_eq!(job["spec"]["backoffLimitPerIndex"], 2);
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["command"],
            serde_json::json!([
                RUNNER_HOIST,
                "eval",
                "--tasks",
                K8S_TASKS_PATH,
                "--shard-dir",
                "--out",
                "/results"
            ])
        );
        assert_eq!(c["resources"]["requests"]["ephemeral-storage"], "40Gi");
        assert_eq!(
            c["resources"]["requests"]["memory"],
            (4u64 << 30).to_string()
        );
        assert_eq!(
            job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"],
            serde_json::json!([2, 3])
        );
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b:c@d"), "a/b:c@d");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$x"), "'$x'");
    }
}
