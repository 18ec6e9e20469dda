//! The command line (README.md; exit codes: docs/exit-codes.md). Each
//! subcommand lives in its own small file that turns parsed arguments into a
//! library call and prints.

/// `println!` that ends the command quietly when stdout's reader has gone
/// (`hoist tree-digest --list DIR | head`) instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!`, as [`outln`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// What every REF flag and argument accepts (src/reference.rs), said in
/// each one's help after what the image is for.
macro_rules! ref_help {
    ($what:literal) => {
        concat!(
            $what,
            " REF: HOST/REPO:TAG, HOST/REPO@sha256:HEX, docker://HOST/REPO:TAG, \
             oci:PATH[:TAG|@sha256:HEX] (an OCI layout on disk), or dockerfile:PATH \
             (a Dockerfile or a build context, built with buildah or docker); TAG \
             defaults to latest, and a name without HOST is Docker Hub's"
        )
    };
}

mod bake;
mod checks;
mod colour;
mod completions;
mod conformance;
mod doctor;
mod dryrun;
mod eval;
mod fetch;
mod follow;
mod gc;
mod grade;
mod images;
mod inspect;
mod lock;
mod man;
mod materialize;
mod progress;
mod pull;
mod report;
mod rmi;
mod run;
mod store;
mod system;
mod task_exec;
mod tasks;
mod tree_digest;

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use hoist::exit::ExitStatus;
use hoist::registry::config::{parse_mirror, RegistriesConf};
use hoist::registry::RegistryOptions;
use hoist::store::Store;

#[derive(Parser)]
#[command(
    name = "hoist",
    version,
    about = "Run agent evaluations from OCI images with no container daemon",
    long_about = "Run agent evaluations from OCI images with no container daemon.\n\n\
A run fuses three images: a benchmark (its tasks under /tasks), an agent \
(/opt/agent) and an optional model gateway (/opt/gateway); runs the agent \
on a task in a sandbox, grades its work in a fresh copy of the benchmark, \
and writes result.json. Images are pulled, verified, into a local store \
(`--store`).",
    after_help = "Examples (the sample images scripts/demo builds, in target/hoist-test/samples/oci):
  hoist tasks oci:target/hoist-test/samples/oci:pyfix
  hoist run --benchmark oci:target/hoist-test/samples/oci:pyfix --agent oci:target/hoist-test/samples/oci:agent-oracle --task ini-quoted-values --out runs/one
  hoist eval --benchmark oci:target/hoist-test/samples/oci:pyfix --agent oci:target/hoist-test/samples/oci:agent-noop --out runs/pyfix

`hoist COMMAND --help` explains a command; `hoist man DIR` writes the man pages, \
`hoist completions SHELL` the shell completions."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The whole command line, as clap builds it: for the completions, the
/// man pages and the tests that read every command's help.
pub fn command() -> clap::Command {
    Cli::command()
}

/// [`command`] as a user is shown it, without the hidden subcommands:
/// clap_complete completes those too (clap-rs/clap#1335). clap cannot
/// remove a subcommand, so the top level is built again from its parts;
/// no command below it has hidden subcommands.
pub fn public_command() -> clap::Command {
    let full = command();
    clap::Command::new("hoist")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .long_about(full.get_long_about().cloned().unwrap_or_default())
        .after_help(full.get_after_help().cloned().unwrap_or_default())
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// The options every command takes, listed apart under their own heading.
#[derive(Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The content-addressed store (an OCI image layout) of pulled images,
    /// unpacked layers and run trees [default: $XDG_CACHE_HOME/hoist, else
    /// ~/.cache/hoist].
    #[arg(long, value_name = "DIR", global = true, env = "HOIST_STORE")]
    pub store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of text; progress
    /// and warnings stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors: no progress, no verdict, no table.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Allow plain HTTP and unverified TLS for this registry, HOST[:PORT]
    /// as in its references (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST", global = true)]
    pub insecure: Vec<String>,
    /// Fetch HOST's images from the mirror at URL first (repeatable):
    /// docker.io=mirror.example:5000; a URL without a scheme is https.
    /// Mirrors of /etc/containers/registries.conf apply too.
    #[arg(long = "mirror", value_name = "HOST=URL", global = true)]
    pub mirrors: Vec<String>,
    /// Trust this PEM CA bundle for registry TLS, besides the system roots
    /// (repeatable).
    #[arg(long = "ca-file", value_name = "PEM", global = true)]
    pub ca_files: Vec<PathBuf>,
}

impl Global {
    /// Where the store is: `--store`, else `HOIST_STORE`, else the default.
    pub fn store_root(&self) -> std::path::PathBuf {
        self.store.clone().unwrap_or_else(Store::default_root)
    }

    /// How the store was named, for an error about it.
    pub fn store_flag(&self) -> &'static str {
        match (&self.store, std::env::var_os("HOIST_STORE")) {
            (Some(_), Some(_)) => "--store (or HOIST_STORE)",
            (Some(_), None) => "--store",
            (None, _) => "the default store",
        }
    }

    pub fn store(&self) -> anyhow::Result<Store> {
        let root = self.store_root();
        checks::store_dir(&root, self.store_flag())?;
        Ok(Store::open(&root)?)
    }

    /// The global flags every hoist subprocess needs to see the same store
    /// and registries (conformance's runs, an emitted job's command).
    pub fn forwarded(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = Vec::new();
        if let Some(s) = &self.store {
            v.extend(["--store".into(), s.clone().into_os_string()]);
        }
        for h in &self.insecure {
            v.extend(["--insecure-registry".into(), h.into()]);
        }
        for m in &self.mirrors {
            v.extend(["--mirror".into(), m.into()]);
        }
        for c in &self.ca_files {
            v.extend(["--ca-file".into(), c.clone().into_os_string()]);
        }
        v
    }

    pub fn registry_options(&self) -> anyhow::Result<RegistryOptions> {
        let mut o = RegistryOptions {
            insecure: self.insecure.clone(),
            ca_files: self.ca_files.clone(),
            conf: RegistriesConf::load_default()?,
            ..Default::default()
        };
        for m in &self.mirrors {
            o.mirrors.push(parse_mirror(m)?);
        }
        if let Some(ms) = env_u64("HOIST_STALL_TIMEOUT_MS") {
            o.stall_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(n) = env_u64("HOIST_RETRY_ATTEMPTS") {
            o.retry.attempts = n.max(1) as u32;
        }
        if let Some(ms) = env_u64("HOIST_RETRY_BASE_MS") {
            o.retry.base_delay = std::time::Duration::from_millis(ms);
        }
        Ok(o)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[derive(Subcommand)]
enum Command {
    /// Pull images into the store, verified, and print their digests.
    Pull(pull::PullArgs),
    /// Build the fused root filesystem of benchmark + agent + gateway.
    Materialize(materialize::MaterializeArgs),
    /// Print the canonical digest (or listing) of a file tree.
    TreeDigest(tree_digest::TreeDigestArgs),
    /// Remove runs, layers and blobs no image or live run references.
    Gc(gc::GcArgs),
    /// Check the store: `hoist store verify`.
    Store(store::StoreArgs),
    /// Run one task: pull, fuse, sandbox, grade; writes OUT/task/result.json.
    Run(run::RunArgs),
    /// Run every task of a benchmark (a shared-environment image, or a
    /// JSON Lines file of per-task images), --jobs at a time, resumable;
    /// writes OUT/summary.json and OUT/junit.xml.
    Eval(eval::EvalArgs),
    /// List the tasks a benchmark image holds (the directories of /tasks).
    Tasks(tasks::TasksArgs),
    /// Show an image's digest, platform, layers, labels and the axes it
    /// can serve, from its manifest and config (no layer download).
    Inspect(inspect::InspectArgs),
    /// List the images in the store, with sizes and unpacked layers.
    Images(images::ImagesArgs),
    /// Remove images from the store, and what no other image uses.
    Rmi(rmi::RmiArgs),
    /// The store's disk use: `hoist system df`.
    System(system::SystemArgs),
    /// Sum evaluations up as one: the shards of an evaluation run on many
    /// machines (summary table, --out DIR for summary.json and junit.xml).
    Report(report::ReportArgs),
    /// Grade a saved run again: a fresh rootfs of its benchmark (by the
    /// digest in OUT/run.json) plus the agent's changes (OUT/task/changes.tar).
    Grade(grade::GradeArgs),
    /// Pin every axis reference to its digest in hoist.lock.
    Lock(lock::LockArgs),
    /// Write the combination image (benchmark + /opt/agent + /opt/gateway +
    /// /.hoist/hoist) to an OCI layout, a registry or a docker-archive.
    Bake(bake::BakeArgs),
    /// Run every matrix case in crane and container mode and compare the
    /// results and the root filesystems (see conformance/README.md).
    Conformance(conformance::ConformanceArgs),
    /// Report what this host can do for hoist (namespaces, overlay,
    /// cgroups, Docker, registries, disk) and what each missing piece costs.
    Doctor(doctor::DoctorArgs),
    /// Print the completion script of SHELL (bash, zsh, fish, elvish,
    /// powershell) on stdout.
    Completions(completions::CompletionsArgs),
    /// Write a man page per command (hoist.1, hoist-run.1, ...) to DIR, or
    /// print hoist.1 on stdout.
    Man(man::ManArgs),
    /// Internal: the sandbox stage (namespaces or chroot).
    #[command(name = "__sandbox", hide = true)]
    SandboxStage { config: PathBuf },
    /// Internal: chroot into ROOTFS and exec the supervisor.
    #[command(name = "__sandbox-chroot", hide = true)]
    SandboxChroot {
        rootfs: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: the supervisor inside the sandbox (see docs/pipeline.md).
    #[command(hide = true)]
    TaskExec(task_exec::TaskExecArgs),
    /// Internal: can this host enter namespaces and mount?
    #[command(name = "__sandbox-probe", hide = true)]
    SandboxProbe,
}

pub fn main() -> ExitStatus {
    // The sandbox stages run before logging or any thread starts: entering
    // namespaces needs a single-threaded process.
    if let Some(code) = sandbox_stage() {
        std::process::exit(code);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let e = without_internal_commands(help_of_internal_command(e));
            // clap prints help and version to stdout with exit 0.
            let code = if e.use_stderr() {
                ExitStatus::Usage
            } else {
                ExitStatus::Success
            };
            let _ = e.print(); // nothing useful to do if stderr is gone
            return code;
        }
    };
    init_logging(cli.global.quiet);
    if let Err(e) = enter_user_namespace_if_unprivileged(&cli.command) {
        return report(&e);
    }
    // After the user namespace's maps are written (newuidmap opens our
    // /proc files): from here no process of our uid without
    // CAP_SYS_PTRACE — a root grader in chroot isolation — may trace us.
    if let Err(e) = hoist::confine::not_dumpable() {
        return report(&anyhow::Error::new(e).context("making hoist non-dumpable"));
    }
    // A run holds trees and a sandbox: a signal tears them down before
    // hoist exits (hoist::interrupt).
    if matches!(
        cli.command,
        Command::Run(_) | Command::Grade(_) | Command::Eval(_)
    ) {
        if let Err(e) = hoist::interrupt::install() {
            return report(&anyhow::Error::new(e).context("taking SIGINT and SIGTERM"));
        }
    }
    let result = match &cli.command {
        Command::Pull(a) => pull::run(&cli.global, a),
        Command::Materialize(a) => materialize::run(&cli.global, a),
        Command::TreeDigest(a) => tree_digest::run(&cli.global, a),
        Command::Gc(a) => gc::run(&cli.global, a),
        Command::Store(a) => store::run(&cli.global, a),
        Command::Run(a) => run::run_cmd(&cli.global, a),
        Command::Grade(a) => grade::run_cmd(&cli.global, a),
        Command::Eval(a) => eval::run(&cli.global, a),
        Command::Report(a) => report::run(&cli.global, a),
        Command::Tasks(a) => tasks::run(&cli.global, a),
        Command::Inspect(a) => inspect::run(&cli.global, a),
        Command::Images(a) => images::run(&cli.global, a),
        Command::Rmi(a) => rmi::run(&cli.global, a),
        Command::System(a) => system::run(&cli.global, a),
        Command::Lock(a) => lock::run(&cli.global, a),
        Command::Bake(a) => bake::run(&cli.global, a),
        Command::Conformance(a) => conformance::run(&cli.global, a),
        Command::Doctor(a) => doctor::run(&cli.global, a),
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => man::run(&cli.global, a),
        Command::TaskExec(a) => task_exec::run(a),
        // Only reached when the stage name is not argv[1] (a global flag
        // before it): hoist itself never starts a stage so.
        Command::SandboxStage { .. } | Command::SandboxChroot { .. } | Command::SandboxProbe => {
            hoist::errln!("error: internal stages are started by hoist itself, as `hoist STAGE ...` with nothing before STAGE");
            return ExitStatus::Usage;
        }
    };
    match result {
        Ok(status) => status,
        Err(e) => report(&e),
    }
}

/// A parse error without the internal commands clap would name: "did you
/// mean" suggestions and the list of subcommands of a command that needs
/// one include hidden subcommands (clap-rs/clap#4853, #5471), and no user
/// should be sent to `task-exec` or a sandbox stage.
fn without_internal_commands(mut e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let hidden = hidden_subcommands(&command());
    for kind in [
        ContextKind::SuggestedSubcommand,
        ContextKind::ValidSubcommand,
    ] {
        let Some(ContextValue::Strings(names)) = e.get(kind) else {
            continue;
        };
        let public: Vec<String> = names
            .iter()
            .filter(|n| !hidden.contains(n))
            .cloned()
            .collect();
        if public.is_empty() {
            e.remove(kind);
        } else {
            e.insert(kind, ContextValue::Strings(public));
        }
    }
    // An empty list of other tips still prints a blank line.
    if let Some(ContextValue::StyledStrs(tips)) = e.get(ContextKind::Suggested) {
        if tips.is_empty() {
            e.remove(ContextKind::Suggested);
        }
    }
    e
}

/// `hoist help task-exec`: clap shows an internal command's help when it
/// is asked for by name. Asked of the command as users see it, that is an
/// unknown command, as any other name they cannot run.
fn help_of_internal_command(e: clap::Error) -> clap::Error {
    if e.kind() != clap::error::ErrorKind::DisplayHelp {
        return e;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let hidden = hidden_subcommands(&command());
    let asked = args
        .windows(2)
        .any(|w| w[0] == "help" && hidden.iter().any(|h| w[1] == h.as_str()));
    if !asked {
        return e;
    }
    match public_command().try_get_matches_from(args) {
        Err(public) if public.kind() != clap::error::ErrorKind::DisplayHelp => public,
        _ => e,
    }
}

/// The names of the hidden subcommands of `cmd`, at any depth.
fn hidden_subcommands(cmd: &clap::Command) -> Vec<String> {
    let mut names = Vec::new();
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            names.push(sub.get_name().to_string());
        }
        names.extend(hidden_subcommands(sub));
    }
    names
}

/// As an unprivileged user, the commands that create or read image-owned
/// files run as root of hoist's own user namespace (see `hoist::userns`).
/// Still single-threaded here, as entering one requires.
fn enter_user_namespace_if_unprivileged(command: &Command) -> anyhow::Result<()> {
    let needs = match command {
        Command::Materialize(_)
        | Command::Run(_)
        | Command::Grade(_)
        | Command::Eval(_)
        | Command::Tasks(_)
        | Command::Gc(_)
        | Command::Rmi(_)
        | Command::System(_)
        | Command::Store(_)
        | Command::Bake(_) => true,
        Command::TreeDigest(a) => a.is_directory(),
        _ => false,
    };
    if !needs
        || rustix::process::geteuid().is_root()
        || std::env::var_os("HOIST_NO_USERNS").is_some()
    {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let ns = hoist::userns::enter(&exe)?;
    if let Some(why) = &ns.limitation {
        tracing::warn!("only your own uid is mapped in hoist's user namespace ({why}): files an image gives to other owners will be yours instead, and are reported");
    }
    Ok(())
}

/// The internal stages hoist starts itself, as `hoist STAGE ARGS...` with
/// nothing before STAGE, and the arguments each takes.
const STAGES: &[(&str, &str)] = &[
    ("__sandbox", "CONFIG"),
    ("__sandbox-chroot", "ROOTFS SUPERVISOR-ARGS..."),
    ("__sandbox-probe", "[userns]"),
    ("__sandbox-probe-proc", "DIR"),
    ("__sandbox-netns", ""),
    (hoist::pipeline::jail::STAGE, "POLICY SCRIPT"),
    (hoist::confine::STAGE, "POLICY PROGRAM [ARGS...]"),
    ("__userns-map", "NEWUIDMAP NEWGIDMAP UIDMAP GIDMAP"),
];

/// Dispatch the internal sandbox stages by hand (no clap, no threads);
/// arguments hoist would never pass are a usage error (exit 2).
fn sandbox_stage() -> Option<i32> {
    use std::path::Path;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (stage, rest) = match args.get(1..)? {
        [stage, rest @ ..] => (stage.to_str()?, rest),
        [] => return None,
    };
    let (_, synopsis) = STAGES.iter().find(|(name, _)| *name == stage)?;
    Some(match (stage, rest) {
        ("__sandbox", [config]) => hoist::sandbox::sandbox_stage(Path::new(config)),
        (hoist::pipeline::jail::STAGE, [_, _]) => hoist::pipeline::jail::jail_stage(rest),
        (hoist::confine::STAGE, [_, _, ..]) => hoist::confine::stage(rest),
        ("__sandbox-probe-proc", [dir]) => hoist::sandbox::probe_proc(Path::new(dir)),
        ("__sandbox-probe", []) => hoist::sandbox::probe_stage(false),
        ("__sandbox-probe", [userns]) if userns == "userns" => hoist::sandbox::probe_stage(true),
        ("__sandbox-netns", []) => hoist::sandbox::netns_holder_stage(),
        ("__userns-map", _) => hoist::userns::map_stage(rest),
        ("__sandbox-chroot", [rootfs, supervisor @ ..]) if !supervisor.is_empty() => {
            let supervisor: Vec<String> = supervisor
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            hoist::sandbox::chroot_exec(Path::new(rootfs), &supervisor)
        }
        _ => {
            let usage = format!("hoist {stage} {synopsis}");
            hoist::errln!(
                "usage: {}\n(an internal stage, which hoist starts itself)",
                usage.trim_end()
            );
            2 // ExitStatus::Usage: the stage exits before main's ExitCode
        }
    })
}

fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        .with_ansi(colour::stderr())
        .with_target(false)
        .init();
}

/// stdout's reader has gone (`hoist tree-digest --list DIR | head`): the
/// command ends, quietly and successfully, as ripgrep's does.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Write to stdout (see [`outln`]); a closed pipe is [`StdoutClosed`].
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Print `error: …` and one `caused by: …` per cause that says more than
/// the line above it; pick the exit code.
fn report(e: &anyhow::Error) -> ExitStatus {
    if e.chain().any(|c| c.is::<StdoutClosed>()) {
        return ExitStatus::Success;
    }
    for line in error_lines(e) {
        hoist::errln!("{line}");
    }
    exit_status_for(e)
}

/// `error: …` and the causes, without one that its parent already showed
/// (a `{path}: {source}` message followed by its source).
fn error_lines(e: &anyhow::Error) -> Vec<String> {
    let mut shown: Vec<String> = vec![e.to_string()];
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        let last = shown.last().map(String::as_str).unwrap_or_default();
        if last.contains(&text) {
            continue;
        }
        // "pulling REF" then "REF: what went wrong": the cause says it all.
        let subject = last.split_once(' ').map_or("", |(_, s)| s);
        if subject.len() > 3 && text.contains(subject) {
            shown.pop();
        }
        shown.push(text);
    }
    shown
        .into_iter()
        .enumerate()
        .map(|(i, t)| match i {
            0 => format!("error: {t}"),
            _ => format!("  caused by: {t}"),
        })
        .collect()
}

fn exit_status_for(e: &anyhow::Error) -> ExitStatus {
    if let Some(sig) = hoist::interrupt::pending() {
        return ExitStatus::Interrupted(sig);
    }
    for cause in e.chain() {
        if let Some(l) = cause.downcast_ref::<hoist::lock::LockError>() {
            if l.is_drift() {
                return ExitStatus::DigestMismatch;
            }
        }
        if let Some(b) = cause.downcast_ref::<hoist::build::BuildError>() {
            if b.is_usage() {
                return ExitStatus::Usage;
            }
        }
        if let Some(p) = cause.downcast_ref::<hoist::pull::PullError>() {
            if p.is_pin_mismatch() {
                return ExitStatus::DigestMismatch;
            }
            if p.is_usage() {
                return ExitStatus::Usage;
            }
        }
        if cause.is::<hoist::exit::UsageError>() {
            return ExitStatus::Usage;
        }
        if let Some(
            hoist::export::ExportError::OutNotEmpty { .. }
            | hoist::export::ExportError::OutInUse { .. },
        ) = cause.downcast_ref::<hoist::export::ExportError>()
        {
            return ExitStatus::Usage;
        }
        if let Some(
            hoist::eval::EvalError::TasksFile { .. }
            | hoist::eval::EvalError::BadShard(_)
            | hoist::eval::EvalError::BadShardEnv { .. },
        ) = cause.downcast_ref::<hoist::eval::EvalError>()
        {
            return ExitStatus::Usage;
        }
        if cause.is::<hoist::reference::ReferenceError>()
            || cause.is::<hoist::platform::PlatformError>()
            || cause.is::<hoist::registry::config::ConfigError>()
        {
            return ExitStatus::Usage;
        }
    }
    ExitStatus::Failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct AtPath {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_its_parent_showed_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "File exists");
        let e = anyhow::Error::new(AtPath {
            path: "/tmp/x".into(),
            source: io,
        })
        .context("claiming --out");
        assert_eq!(
            error_lines(&e),
            vec!["error: claiming --out", "  caused by: /tmp/x: File exists"]
        );
    }

    #[test]
    fn a_cause_naming_its_parents_subject_replaces_it() {
        let e = anyhow::anyhow!(
            "r.example/a:1: image platform linux/amd64 does not match the requested linux/arm64"
        )
        .context("pulling r.example/a:1");
        assert_eq!(
            error_lines(&e),
            vec!["error: r.example/a:1: image platform linux/amd64 does not match the requested linux/arm64"]
        );
    }
}
