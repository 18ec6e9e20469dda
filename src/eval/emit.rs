//! `hoist eval --emit slurm`: the evaluation as a batch job of the
//! engines people already run (DESIGN §10). Each array task runs one shard
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
        "exec {} --shard \"$shard/{}\" --out {}/shards/\"$shard\"",
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

/// Write the Slurm job into `OUT/slurm/`; returns the submit script.
pub fn write_slurm(job: &Job) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = job.out.join("slurm");
    std::fs::create_dir_all(&dir)?;
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
                "exec /usr/bin/hoist eval --agent 'reg/agent'\\''s:1' --shard \"$shard/10\" --out /shared/eval/shards/\"$shard\""
            ),
            "{sbatch}"
        );
        assert!(
            submit.contains("sbatch --parsable --array=0-9%8 /shared/eval/slurm/job.sbatch 0\n"),
            "{submit}"
        );
        assert_eq!(submit.matches("sbatch ").count(), 1, "{submit}");
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
    fn quoting() {
        assert_eq!(shell_quote("a/b:c@d"), "a/b:c@d");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$x"), "'$x'");
    }
}
