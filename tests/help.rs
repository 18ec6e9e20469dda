//! The help a user reads (issue 13 §7): `--help` of every command and
//! subcommand against its insta snapshot in tests/snapshots/help__*.snap,
//! every flag described, the reference syntax on every REF, global options
//! under their own heading, examples that parse, and completions, man pages
//! and error suggestions without the internal commands.
//!
//! The commands are enumerated from the clap definitions themselves (the
//! binary's `cli` module, compiled in here), so a new command without a
//! snapshot fails, and so does a snapshot whose command is gone. Each help
//! is the real binary's output, in an empty environment (an `[env: X=]`
//! shows the variable's value).
//!
//! The snapshots are committed. insta compares and never writes when `CI`
//! is set; locally a drift or a new command leaves a `.snap.new` to review
//! (`cargo insta review`, or `INSTA_UPDATE=always` to accept it). Under
//! `HOIST_TEST_REQUIRE_ALL=1` (CI) the test refuses the settings that would
//! accept a drift.

// The binary's command line; only its clap definitions are used here.
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../src/cli/mod.rs"]
mod cli;
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

const GLOBAL_HEADING: &str = "Global options";

/// The flags every command takes, from `cli::Global`.
const GLOBALS: &[&str] = &[
    "store",
    "json",
    "quiet",
    "insecure-registry",
    "mirror",
    "ca-file",
];

/// What an internal command's name looks like in any output.
const INTERNAL: &[&str] = &["task-exec", "__sandbox"];

/// The full command line, built (global flags propagated, help flags
/// added), as clap parses it.
fn built() -> clap::Command {
    let mut cmd = cli::command();
    cmd.build();
    cmd
}

/// Every command a user can run, as the words after `hoist` (the first is
/// `hoist` itself, with none): hidden ones and clap's `help` left out (its
/// help is clap's own).
fn public_paths(cmd: &clap::Command) -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            walk(sub, p.clone(), out);
            out.push(p);
        }
    }
    let mut out = vec![Vec::new()];
    walk(cmd, Vec::new(), &mut out);
    out.sort();
    out
}

fn find<'a>(cmd: &'a clap::Command, path: &[String]) -> &'a clap::Command {
    path.iter().fold(cmd, |c, name| {
        c.find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand {name}"))
    })
}

/// `hoist-store-verify`: the man page's and the snapshot's name.
fn page_name(path: &[String]) -> String {
    std::iter::once("hoist".to_string())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join("-")
}

/// The real binary, in an empty environment.
fn hoist_bare() -> Command {
    let mut c = Command::new(hoist_bin());
    c.env_clear();
    c
}

fn snapshot_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

#[test]
fn every_commands_help_matches_its_snapshot() {
    let cmd = built();
    let paths = public_paths(&cmd);
    let names: Vec<String> = paths.iter().map(|p| page_name(p)).collect();
    snapshots_must_be_compared("help", &names);
    for (path, name) in paths.iter().zip(&names) {
        let o = ok(hoist_bare().args(path).arg("--help"));
        insta::assert_snapshot!(name.as_str(), stdout(&o));
    }
    // A snapshot whose command is gone fails too.
    let wanted: BTreeSet<String> = names.iter().map(|n| format!("help__{n}.snap")).collect();
    let stale: Vec<String> = std::fs::read_dir(snapshot_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("help__") && f.ends_with(".snap"))
        .filter(|f| !wanted.contains(f))
        .collect();
    assert!(stale.is_empty(), "snapshots of no command: {stale:?}");
}

#[test]
fn every_flag_and_argument_is_described() {
    let cmd = built();
    let mut missing = Vec::new();
    for path in public_paths(&cmd) {
        let c = find(&cmd, &path);
        if c.get_about().is_none() && !path.is_empty() {
            missing.push(format!("{}: no about", page_name(&path)));
        }
        for arg in c.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = arg
                .get_help()
                .or(arg.get_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("{}: {}", page_name(&path), arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "undescribed: {missing:#?}");
}

/// Every argument that takes an image reference states its syntax
/// (src/reference.rs): a registry by tag and by digest, skopeo's
/// `docker://`, and an `oci:` layout.
#[test]
fn every_reference_states_the_reference_syntax() {
    let cmd = built();
    let mut checked = 0;
    for path in public_paths(&cmd) {
        let c = find(&cmd, &path);
        for arg in c.get_arguments().filter(|a| !a.is_hide_set()) {
            let takes_ref = arg
                .get_value_names()
                .is_some_and(|v| v.iter().any(|n| n.split('|').any(|w| w == "REF")));
            if !takes_ref || page_name(&path) == "hoist-doctor" {
                // doctor's --registry takes a host as well as a REF, and
                // only its host is used.
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            for form in [
                "HOST/REPO:TAG",
                "HOST/REPO@sha256:",
                "docker://",
                "oci:PATH[:TAG|@sha256:HEX]",
            ] {
                assert!(
                    help.contains(form),
                    "{} {}: {form} not in {help:?}",
                    page_name(&path),
                    arg.get_id()
                );
            }
            checked += 1;
        }
    }
    // run's four, eval's four, materialize's, lock's and bake's three,
    // pull's, tasks', inspect's and tree-digest's one.
    assert!(checked >= 21, "only {checked} REF arguments found");
}

#[test]
fn global_options_are_listed_apart_with_their_defaults() {
    let cmd = built();
    for path in public_paths(&cmd) {
        let c = find(&cmd, &path);
        for name in GLOBALS {
            let arg = c
                .get_arguments()
                .find(|a| a.get_long() == Some(name))
                .unwrap_or_else(|| panic!("{}: no --{name}", page_name(&path)));
            assert_eq!(
                arg.get_help_heading(),
                Some(GLOBAL_HEADING),
                "{} --{name}",
                page_name(&path)
            );
        }
    }
    let o = ok(hoist_bare().args(["run", "--help"]));
    let help = stdout(&o);
    let (own, global) = help.split_once("\nGlobal options:\n").expect(&help);
    assert!(
        own.contains("--benchmark") && !own.contains("--store"),
        "{own}"
    );
    assert!(
        global.contains("[default: $XDG_CACHE_HOME/hoist, else ~/.cache/hoist]"),
        "{global}"
    );
    for default in [
        "[default: missing]",
        "[default: task.json's agent_timeout_sec, else 600 s]",
        "[default: task.json's grade.timeout_sec, else 300 s]",
    ] {
        assert!(own.contains(default), "{default} not in {own}");
    }
    let o = ok(hoist_bare().args(["eval", "--help"]));
    assert!(
        stdout(&o).contains("[default: one per core, at most one per 2 GiB of memory"),
        "{}",
        stdout(&o)
    );
}

/// The `hoist ...` lines of a help's "Examples:", up to a pipe, a
/// `&&`, a redirection or a comment, split into words (the examples quote
/// with single quotes only).
fn examples(after_help: &str) -> Vec<Vec<String>> {
    let Some((_, section)) = after_help.split_once("Examples") else {
        return Vec::new();
    };
    section
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("  ")?;
            let line = line.strip_prefix("sudo ").unwrap_or(line);
            line.starts_with("hoist ").then_some(())?;
            let end = [" |", " &&", " >", " #"]
                .iter()
                .filter_map(|cut| line.find(cut))
                .min()
                .unwrap_or(line.len());
            let words = line[..end]
                .split_whitespace()
                .map(|w| w.trim_matches('\'').to_string())
                .collect();
            Some(words)
        })
        .collect()
}

#[test]
fn every_command_has_examples_that_parse() {
    let cmd = built();
    for path in public_paths(&cmd) {
        let c = find(&cmd, &path);
        let text = c
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let lines = examples(&text);
        assert!(
            (2..=3).contains(&lines.len()),
            "{}: {} examples in {text:?}",
            page_name(&path),
            lines.len()
        );
        let own = lines.iter().filter(|l| l[1..].starts_with(&path)).count();
        assert!(own >= 1, "{}: no example of itself", page_name(&path));
        for argv in lines {
            if let Err(e) = cli::command().try_get_matches_from(&argv) {
                panic!(
                    "{}: example {argv:?} does not parse:\n{e}",
                    page_name(&path)
                );
            }
        }
    }
}

#[test]
fn bash_completions_parse_and_name_no_internal_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = ok(hoist_bare().args(["completions", shell]));
        let script = stdout(&o);
        for name in INTERNAL {
            assert!(!script.contains(name), "{shell}: {name} completed");
        }
        for public in ["materialize", "tree-digest", "completions"] {
            assert!(script.contains(public), "{shell}: {public} missing");
        }
        if shell == "bash" && have_tool("bash") {
            let file = dir.path().join("hoist.bash");
            std::fs::write(&file, &script).unwrap();
            ok(Command::new("bash").arg("-n").arg(&file));
        }
    }
}

/// `hoist man DIR` writes one page per command a user can run, and each
/// renders; none names an internal command.
#[test]
fn man_pages_render_one_per_command() {
    let dir = tempfile::tempdir().unwrap();
    // A page says which variable a flag reads, never the value it has
    // where the pages were made.
    let o = ok(hoist_bare()
        .env("HOIST_AGENT", "oci:/leaked:here")
        .arg("man")
        .arg(dir.path()));
    let cmd = built();
    let wanted: BTreeSet<String> = public_paths(&cmd)
        .iter()
        .map(|p| format!("{}.1", page_name(p)))
        .collect();
    let written: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, wanted);
    let run_page = std::fs::read_to_string(dir.path().join("hoist-run.1")).unwrap();
    assert!(
        run_page.contains("\\fBHOIST_AGENT\\fR environment variable"),
        "{run_page}"
    );
    assert_eq!(stdout(&o).lines().count(), wanted.len(), "{}", stdout(&o));
    let man = have_tool("man");
    for page in &written {
        let path = dir.path().join(page);
        let roff = std::fs::read_to_string(&path).unwrap();
        let name = page.trim_end_matches(".1");
        assert!(roff.starts_with(".ie \\n(.g"), "{page}: {roff}");
        assert!(roff.contains(&format!(".TH {name} 1")), "{page}");
        assert!(roff.contains(".SH NAME"), "{page}");
        for internal in INTERNAL {
            assert!(!roff.contains(internal), "{page} names {internal}");
        }
        assert!(!roff.contains("/leaked"), "{page}");
        if man {
            let o = render(&path);
            let text = without_overstrike(&stdout(&o));
            assert!(
                o.status.success() && stderr(&o).is_empty(),
                "{page}: {}",
                stderr(&o)
            );
            assert!(
                text.contains("NAME") && text.contains(name),
                "{page}: {text}"
            );
        }
    }
    // Without DIR, hoist.1 on stdout.
    let o = ok(hoist_bare().arg("man"));
    let top = std::fs::read_to_string(dir.path().join("hoist.1")).unwrap();
    assert_eq!(stdout(&o), top);
}

/// `man -l PAGE`, warnings on stderr.
fn render(page: &Path) -> Output {
    run(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat"))
}

/// The text of a page as man renders it into a pipe, without its
/// overstrikes (`N\bN` for bold, `_\bx` for underline).
fn without_overstrike(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// clap suggests hidden subcommands and lists them when one is missing;
/// hoist's errors name only what a user can run.
#[test]
fn errors_suggest_no_internal_command() {
    for (args, suggested) in [
        (&["task-exe"][..], Some("'tasks'")),
        (&["sandbox"], None),
        (&["__sandbo"], None),
        (&["--json"], Some("doctor")),
        (&["stor"], Some("'store'")),
    ] {
        let o = run(hoist_bare().args(args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for name in INTERNAL {
            assert!(!err.contains(name), "{args:?} names {name}: {err}");
        }
        match suggested {
            Some(s) => assert!(err.contains(s), "{args:?}: {s} not in {err}"),
            None => assert!(!err.contains("tip:"), "{args:?}: {err}"),
        }
        assert!(!err.contains("\n\n\n"), "{args:?}: a blank tip: {err:?}");
    }
    // Hidden is not removed: hoist itself starts the supervisor so.
    ok(hoist_bare().args(["task-exec", "--help"]));
    // But `hoist help` offers only what a user can run.
    for name in ["task-exec", "__sandbox-probe"] {
        let o = run(hoist_bare().args(["help", name]));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "help {name}: {err}");
        assert!(
            err.contains("unrecognized subcommand"),
            "help {name}: {err}"
        );
        assert!(o.stdout.is_empty(), "help {name} printed help");
    }
}
