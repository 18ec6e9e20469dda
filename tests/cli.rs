//! What the command line does with arguments hoist itself never passes:
//! no panic reaches a user (issue 14), a usage error says why. Every
//! subcommand, the hidden one and the internal stages get nonsense, and
//! garbage files where they read files (an OCI layout, an evaluation, a
//! saved run, a matrix); none may exit 101 (Rust's panic), die of a
//! signal, or print a panic message.

mod support;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

/// `hoist --help`'s subcommands.
const PUBLIC: &[&str] = &[
    "pull",
    "materialize",
    "tree-digest",
    "gc",
    "store",
    "run",
    "eval",
    "tasks",
    "inspect",
    "images",
    "rmi",
    "system",
    "report",
    "grade",
    "lock",
    "bake",
    "conformance",
    "doctor",
    "completions",
    "man",
    "help",
];

/// The hidden subcommand clap parses (the supervisor).
const HIDDEN: &[&str] = &["task-exec"];

/// The internal stages, dispatched by hand before clap (src/cli/mod.rs).
const STAGES: &[&str] = &[
    "__sandbox",
    "__sandbox-chroot",
    "__sandbox-probe",
    "__sandbox-probe-proc",
    "__sandbox-netns",
    "__install-jail",
    "__confine",
    "__userns-map",
];

/// What a panic leaves: exit 101, or a message on stderr. A signal (an
/// abort) is a crash too.
fn assert_no_panic(what: &str, o: &Output) {
    let err = stderr(o);
    assert!(
        o.status.code().is_some(),
        "{what}: killed by a signal ({}):\n{err}",
        o.status
    );
    assert_ne!(o.status.code(), Some(101), "{what}: exit 101:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: a panic:\n{err}"
    );
}

fn show(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Arguments that are nonsense to every command.
fn nonsense() -> Vec<Vec<OsString>> {
    let s = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    vec![
        s(&["--no-such-flag"]),
        s(&["%%"]),
        s(&[""]),
        s(&["-", "--", "-"]),
        vec![OsStr::from_bytes(b"\xff\xfe%").to_owned()],
        s(&["%%", "%%", "%%", "%%", "%%"]),
    ]
}

/// A directory of garbage where each command reads something: an OCI
/// layout (`oci:G:x`), an evaluation, a saved run, a matrix, a tasks
/// file and a lock file.
fn garbage(dir: &Path) {
    let files: &[(&str, &str)] = &[
        ("oci-layout", r#"{"imageLayoutVersion": "9"}"#),
        (
            "index.json",
            r#"{"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
               "digest": "sha256:zz", "size": -1, "annotations": {"org.opencontainers.image.ref.name": "x"}},
               {"digest": 5}, null, "y"]}"#,
        ),
        ("summary.json", "not json"),
        (
            "run.json",
            r#"{"schema": "hoist.run/v1", "images": 5, "sessions": [null]}"#,
        ),
        ("task/result.json", "[]"),
        ("task/changes.tar", "not a tar"),
        ("results/t/result.json", r#"{"schema": "hoist.result/v1"}"#),
        ("matrix.toml", "[[case]]\nbenchmark = 5\n"),
        ("tasks.jsonl", "{\n[]\n\"x\"\n{\"id\": null}\n"),
        ("hoist.lock", "version = \"x\"\n[[image]]\n"),
        ("task/agent.json", r#"{"task_id": 5}"#),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    layout_of_lies(&dir.join("lies"));
    // Evaluations whose plans' shards are absurd: past the last, and one
    // of usize::MAX shards of usize::MAX tasks.
    let max = usize::MAX;
    eval_plan(&dir.join("past"), max, 2, 2);
    eval_plan(&dir.join("huge"), 0, max, max);
}

/// `dir/eval.json`: a plan of tasks `a` and `b` as shard `index`/`count`
/// of `total` tasks.
fn eval_plan(dir: &Path, index: usize, count: usize, total: usize) {
    let pin = serde_json::json!({"ref": "oci:/x:y", "digest": null});
    let task = |id: &str| {
        serde_json::json!({"id": id, "benchmark": pin, "agent": pin,
                           "gateway": null, "agent_timeout_sec": null})
    };
    let plan = serde_json::json!({
        "schema": "hoist.eval/v1", "created_at": "t", "mode": "crane",
        "shard": {"index": index, "count": count}, "total_tasks": total,
        "tasks": [task("a"), task("b")],
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("eval.json"), plan.to_string()).unwrap();
}

/// An OCI layout whose blobs hash to their names but say nothing true:
/// tag `x` is a manifest of two layers whose config lists one diff_id,
/// `y` the same manifest called an index, `z` one whose config matches
/// but whose layers are not what their media types say, `w` one whose
/// layers say they are u64::MAX bytes.
fn layout_of_lies(dir: &Path) {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        format!(r#""digest": "{digest}", "size": {}"#, bytes.len())
    };
    let layer = blob(b"not a tar, not gzip either");
    let manifest = |diff_ids: usize, env: &str, layer: &str| {
        let ids = vec![format!(r#""sha256:{}""#, "0".repeat(64)); diff_ids].join(", ");
        let config = blob(
            format!(
                r#"{{"architecture": "amd64", "os": "linux", "config": {{"Env": {env}, "Labels": null}},
                    "rootfs": {{"type": "layers", "diff_ids": [{ids}]}}}}"#
            )
            .as_bytes(),
        );
        blob(
            format!(
                r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {{"mediaType": "application/vnd.oci.image.config.v1+json", {config}}},
                    "layers": [{{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", {layer}}},
                               {{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", {layer}}}]}}"#
            )
            .as_bytes(),
        )
    };
    let (short, matching) = (manifest(1, "[5]", &layer), manifest(2, "[5]", &layer));
    // The layers said to be as large as a u64 can say.
    let huge_layer = layer.replace(r#""size": 26"#, &format!(r#""size": {}"#, u64::MAX));
    assert_ne!(huge_layer, layer);
    let huge = manifest(2, r#"["A=b"]"#, &huge_layer);
    let entry = |media: &str, manifest: &str, tag: &str| {
        format!(
            r#"{{"mediaType": "application/vnd.oci.image.{media}.v1+json", {manifest},
                 "annotations": {{"org.opencontainers.image.ref.name": "{tag}"}}}}"#
        )
    };
    let index = format!(
        r#"{{"schemaVersion": 2, "manifests": [{}, {}, {}, {}]}}"#,
        entry("manifest", &short, "x"),
        entry("index", &short, "y"),
        entry("manifest", &matching, "z"),
        entry("manifest", &huge, "w"),
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    // A tasks file of `w` images, for `eval --dry-run`, which sums what
    // the manifests state.
    let w = format!("oci:{}:w", dir.display());
    let tasks = format!(
        "{{\"id\": \"a\", \"benchmark\": \"{w}\"}}\n{{\"id\": \"b\", \"benchmark\": \"{w}\"}}\n"
    );
    std::fs::write(dir.join("tasks.jsonl"), tasks).unwrap();
}

/// Each command's arguments that get past clap to garbage: `G` is the
/// garbage directory, `O` an output directory.
fn deeper(cmd: &str) -> Vec<Vec<&'static str>> {
    const AXES: &[&str] = &["--benchmark", "oci:G:x", "--agent", "oci:G:y"];
    const LIES: &[&str] = &["--benchmark", "oci:G/lies:z", "--agent", "oci:G/lies:x"];
    let with = |extra: &[&'static str]| [AXES, extra].concat();
    let lies = |extra: &[&'static str]| [LIES, extra].concat();
    let mut v = match cmd {
        "pull" => vec![
            vec!["oci:G:x"],
            vec!["oci:G:y"],
            vec!["--platform", "%%/%%", "oci:G:x"],
            vec!["--jobs", "0", "oci:G:x"],
            vec!["%%@sha256:zz"],
        ],
        "materialize" => vec![
            with(&["--out", "O"]),
            with(&["--out", "O", "--platform", "a/b/c/d"]),
        ],
        "tree-digest" => vec![vec!["G"], vec!["oci:G:x"], vec!["G/index.json"]],
        "store" => vec![vec!["verify", "%%"]],
        "run" => vec![
            with(&["--out", "O"]),
            with(&["--out", "O", "--agent-timeout", "0"]),
            with(&["--out", "O", "--agent-timeout", "99999999999999999999h"]),
            with(&["--out", "O", "--memory", "-1"]),
            with(&["--out", "O", "--memory", "99999999999999999999G"]),
            with(&["--out", "O", "--task", "../../etc"]),
            with(&["--out", "G/run.json"]),
        ],
        "eval" => vec![
            with(&["--out", "O", "--jobs", "0"]),
            with(&["--out", "O", "--shard", "3/2"]),
            with(&["--out", "O", "--shard", "0/0"]),
            vec![
                "--tasks",
                "G/tasks.jsonl",
                "--agent",
                "oci:G:y",
                "--out",
                "O",
            ],
            with(&["--out", "G"]),
            vec![
                "--dry-run",
                "--tasks",
                "G/lies/tasks.jsonl",
                "--agent",
                "oci:G/lies:w",
                "--jobs",
                "18446744073709551615",
                "--out",
                "O",
            ],
        ],
        "tasks" | "inspect" | "rmi" => vec![vec!["oci:G:x"]],
        "system" => vec![vec!["df", "%%"]],
        "report" => vec![
            vec!["G"],
            vec!["G", "G"],
            vec!["G/task"],
            vec!["G/past"],
            vec!["G/huge"],
            vec!["G/huge", "--partial"],
            vec!["G/huge", "G/past"],
        ],
        "grade" => vec![vec!["G"], vec!["G/task"]],
        "lock" => vec![with(&["--lock-file", "G/hoist.lock"])],
        "bake" => vec![with(&["--tag", "%%"]), with(&["--tag", "oci:G:z"])],
        "conformance" => vec![
            vec!["--compare", "G/run.json", "G/summary.json"],
            vec!["--compare", "G/task/result.json", "G/results/t/result.json"],
            vec!["--matrix", "G/matrix.toml", "--list"],
        ],
        "doctor" => vec![vec!["--registry", "%%"]],
        _ => vec![],
    };
    v.extend(match cmd {
        "pull" | "tasks" | "inspect" | "tree-digest" => {
            vec![
                vec!["oci:G/lies:x"],
                vec!["oci:G/lies:y"],
                vec!["oci:G/lies:z"],
                vec!["oci:G/lies:w"],
            ]
        }
        "materialize" => vec![
            lies(&["--out", "O"]),
            vec!["--benchmark", "oci:G/lies:z", "--out", "O"],
        ],
        "run" => vec![lies(&["--out", "O"])],
        "lock" => vec![lies(&["--lock-file", "O"])],
        "bake" => vec![lies(&["--tag", "oci:O:z"])],
        _ => vec![],
    });
    v
}

/// `hoist --help` lists the subcommands above, and every internal stage
/// src/ names is in [`STAGES`]: a new one is checked here too.
#[test]
fn the_lists_here_hold_every_subcommand_and_stage() {
    let o = ok(Command::new(hoist_bin()).arg("--help"));
    let help = stdout(&o);
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, PUBLIC);

    let mut named = std::collections::BTreeSet::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let stage = piece.starts_with("__")
                && piece.len() > 2
                && piece[2..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-');
            if stage {
                named.insert(piece.to_string());
            }
        }
    }
    let ours: std::collections::BTreeSet<String> = STAGES.iter().map(|s| s.to_string()).collect();
    assert_eq!(named, ours, "the internal stages src/ names");
}

#[test]
fn no_subcommand_panics_on_nonsense_or_garbage() {
    let t = tempfile::tempdir().unwrap();
    let g = t.path().join("garbage");
    garbage(&g);
    let store = t.path().join("store");
    // The stages run where no name the nonsense gives exists (`grade X`
    // creates X).
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut runs = 0;
    let mut check = |args: Vec<OsString>, with_store: bool, cwd: &Path| {
        let o = t.path().join(format!("out-{runs}"));
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| {
                let text = a.to_string_lossy();
                let swapped = text
                    .replace("oci:G:", &format!("oci:{}:", g.display()))
                    .replace("oci:O:", &format!("oci:{}:", o.display()))
                    .replace("G/", &format!("{}/", g.display()));
                match text.as_ref() {
                    "G" => g.clone().into_os_string(),
                    "O" => o.clone().into_os_string(),
                    _ if swapped != text => swapped.into(),
                    _ => a,
                }
            })
            .collect();
        let mut cmd = if with_store {
            hoist(&store)
        } else {
            Command::new(hoist_bin())
        };
        // Nothing may reach a registry or the test's own directory.
        cmd.current_dir(cwd)
            .env("HOIST_RETRY_ATTEMPTS", "1")
            .env("HOIST_STALL_TIMEOUT_MS", "2000")
            .stdin(std::process::Stdio::null())
            .args(&args);
        let out = run(&mut cmd);
        assert_no_panic(&show(&args), &out);
        runs += 1;
        out
    };
    for cmd in PUBLIC.iter().chain(HIDDEN) {
        for args in nonsense() {
            for global in [&[][..], &["--quiet"], &["--json"]] {
                let mut argv: Vec<OsString> = global.iter().map(OsString::from).collect();
                argv.push(cmd.into());
                argv.extend(args.iter().cloned());
                check(argv, true, t.path());
            }
        }
        for args in deeper(cmd) {
            let mut argv = vec![OsString::from(cmd)];
            argv.extend(args.iter().map(OsString::from));
            check(argv, true, t.path());
        }
    }
    // The store itself garbage.
    for args in [
        &["images"][..],
        &["system", "df"],
        &["store", "verify"],
        &["gc"],
    ] {
        let mut argv: Vec<OsString> = vec!["--store".into(), "G".into()];
        argv.extend(args.iter().map(OsString::from));
        check(argv, false, t.path());
    }
    // The internal stages: arguments of the wrong number are a usage
    // error before anything runs; a global flag in front sends them to
    // clap, which refuses them.
    for stage in STAGES {
        for args in nonsense() {
            let mut argv = vec![OsString::from(stage)];
            argv.extend(args.iter().cloned());
            let fits = match *stage {
                "__sandbox" | "__sandbox-probe-proc" => args.len() == 1,
                "__install-jail" => args.len() == 2,
                "__sandbox-chroot" | "__confine" => args.len() >= 2,
                "__userns-map" => args.len() == 4,
                _ => false,
            };
            let o = check(argv.clone(), false, &empty);
            if !fits {
                assert_eq!(o.status.code(), Some(2), "{}: {}", show(&argv), stderr(&o));
                assert!(stderr(&o).contains("usage: hoist"), "{}", stderr(&o));
            }
            if *stage == "__sandbox-probe-proc" {
                // Only ever PID 1 of the probe's own pid namespace.
                assert_eq!(o.status.code(), Some(2), "{}: {}", show(&argv), stderr(&o));
            }
            argv.insert(0, "--quiet".into());
            let o = check(argv.clone(), false, &empty);
            assert_eq!(o.status.code(), Some(2), "{}: {}", show(&argv), stderr(&o));
        }
    }
    eprintln!("{runs} command lines, none panicked");
    // Nothing was mounted here (`__sandbox-probe-proc DIR` outside its
    // pid namespace once mounted a procfs on DIR).
    let mounts = std::fs::read("/proc/self/mountinfo").unwrap();
    let here = t.path().as_os_str().as_bytes();
    assert!(
        !mounts.windows(here.len()).any(|w| w == here),
        "a mount under {}",
        t.path().display()
    );
}

#[test]
fn an_internal_stage_behind_a_global_flag_is_a_usage_error_not_a_panic() {
    for args in [
        &["--quiet", "__sandbox", "x"][..],
        &["--json", "__sandbox-probe"][..],
        &["--quiet", "__sandbox-chroot", "/nowhere"][..],
    ] {
        let o = Command::new(hoist_bin()).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("internal stages"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

/// `--agent-timeout` and `--grade-timeout` take any number of seconds up
/// to `u64::MAX` (as a task.json may): a timeout too long for the clock
/// is one that never comes, not an overflow in the supervisor.
#[test]
fn a_timeout_too_long_for_the_clock_never_comes() {
    if !is_root() {
        skip("hoist run needs root here (namespaces, overlay mounts)");
        return;
    }
    let (Some(oci), Some(tasks)) = (
        env_or_skip("HOIST_SAMPLES_OCI"),
        env_or_skip("HOIST_SAMPLES_PYFIX_TASKS"),
    ) else {
        return;
    };
    let task = tasks.split_whitespace().next().unwrap();
    let out = tempfile::tempdir().unwrap();
    let forever = u64::MAX.to_string();
    let o = run(hoist(&test_store("run-store"))
        .args(["run", "--benchmark", &format!("oci:{oci}:pyfix")])
        .args(["--agent", &format!("oci:{oci}:agent-oracle")])
        .args(["--task", task])
        .args(["--agent-timeout", &forever, "--grade-timeout", &forever])
        .arg("--out")
        .arg(out.path()));
    assert_no_panic("hoist run --agent-timeout u64::MAX", &o);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_json(&out.path().join("task/result.json"));
    assert_eq!(r["resolved"], true, "{r}");
    assert_eq!(r["agent"]["timed_out"], false, "{r}");
}

/// `--jobs` and `--prefetch` as large as a usize: as many workers as
/// there are tasks (threads the system gives), not a spawn until one
/// fails.
#[test]
fn absurd_jobs_and_prefetch_still_run_an_evaluation() {
    if !is_root() {
        skip("hoist eval needs root here (namespaces, overlay mounts)");
        return;
    }
    let (Some(oci), Some(tasks)) = (
        env_or_skip("HOIST_SAMPLES_OCI"),
        env_or_skip("HOIST_SAMPLES_PYFIX_TASKS"),
    ) else {
        return;
    };
    let tasks: Vec<&str> = tasks.split_whitespace().take(2).collect();
    let out = tempfile::tempdir().unwrap();
    let most = usize::MAX.to_string();
    let mut cmd = hoist(&test_store("run-store"));
    cmd.args(["eval", "--benchmark", &format!("oci:{oci}:pyfix")])
        .args(["--agent", &format!("oci:{oci}:agent-noop")])
        .args(["--jobs", &most, "--prefetch", &most]);
    for t in &tasks {
        cmd.args(["--task", t]);
    }
    let o = run(cmd.arg("--out").arg(out.path()));
    assert_no_panic("hoist eval --jobs usize::MAX", &o);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = read_json(&out.path().join("summary.json"));
    assert_eq!(summary["total"], tasks.len(), "{summary}");
    assert_eq!(summary["infra_error"], 0, "{summary}");
}

/// An error printed to a stderr nobody reads any more (`2>&1 | head`, a
/// host gone) is lost, not a panic: the same exit as with a reader.
#[test]
fn an_error_to_a_broken_stderr_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = hoist(&dir.path().join("store"));
        c.arg("tree-digest").arg(dir.path().join("missing"));
        c
    };
    let read = cmd().output().unwrap();
    assert!(!stderr(&read).is_empty(), "no error to lose");
    let mut child = cmd()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the only read end before hoist writes its error.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "panicked");
    assert_eq!(status.code(), read.status.code(), "{status}");
}
