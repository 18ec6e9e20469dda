//! `hoist run --mode crane|container --benchmark REF --agent REF [--gateway REF] ...`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use hoist::build::DockerfileRef;
use hoist::container::{self, ContainerRequest, Docker, ImageSource};
use hoist::crane::{check_lock, run, Agents, RunRequest};
use hoist::exit::{ExitStatus, UsageError};
use hoist::export::OutDir;
use hoist::lock::{LockFile, DEFAULT_FILE};
use hoist::phase::{self, Phase, PhaseHook};
use hoist::platform::Platform;
use hoist::pull::{stored_complete, Progress, PullPolicy, Pulled};
use hoist::reference::Reference;
use hoist::registry::Client;
use hoist::rootfs::RootfsMode;
use hoist::sandbox::cgroup::parse_size;
use hoist::sandbox::{Isolation, Network};
use hoist::store::Store;

use super::checks;
use super::colour::{self, Colour};
use super::fetch::{pull_axes, pull_showing, stored_notes, PullFlags};
use super::progress::RunSpinner;
use super::Global;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Daemonless: pull, fuse and sandbox here.
    Crane,
    /// A pre-baked combination image under Docker.
    Container,
}

impl Mode {
    /// As result.json and eval.json name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Crane => "crane",
            Mode::Container => "container",
        }
    }
}

#[derive(Args)]
#[command(after_help = "Examples:
  hoist run --benchmark oci:target/hoist-test/samples/oci:pyfix --agent oci:target/hoist-test/samples/oci:agent-oracle --task ini-quoted-values --out runs/oracle
  hoist run --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-scripted:latest --gateway localhost:5000/samples/gateway-replay:latest --task lru-get-recency --agent-timeout 10m --follow --out runs/scripted
  hoist run --mode container --locked --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-oracle:latest --task paginate-last-page --out runs/container")]
pub struct RunArgs {
    /// Where the run happens: crane fuses and sandboxes here, container
    /// runs the baked combination image under Docker.
    #[arg(long, value_enum, default_value = "crane")]
    mode: Mode,
    #[arg(
        long,
        value_name = "REF",
        env = "HOIST_BENCHMARK",
        help = ref_help!("The benchmark image: its root filesystem and tasks (/tasks/ID/task.json).")
    )]
    benchmark: String,
    #[arg(
        long,
        value_name = "REF",
        env = "HOIST_AGENT",
        help = ref_help!("The agent image: its /opt/agent (install.sh, run) is fused in.")
    )]
    agent: String,
    #[arg(
        long,
        value_name = "REF",
        env = "HOIST_GATEWAY",
        help = ref_help!("The model gateway image, if any: its /opt/gateway serves the agent's model calls.")
    )]
    gateway: Option<String>,
    /// The task to run (a directory of the benchmark's /tasks); may be
    /// left out when the image holds one task.
    #[arg(long, value_name = "ID", env = "HOIST_TASK")]
    task: Option<String>,
    /// Where task/result.json, the logs and run.json go: a new or empty
    /// directory, locked while the run lasts.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Clear a non-empty --out first (an earlier run's output is lost).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    flags: TaskFlags,
    #[command(flatten)]
    pull: PullFlags,
    /// Run the digests the lock file pins: those the store holds need no
    /// registry; an axis resolved anew (not stored, or --pull always) to
    /// another digest fails with exit 3.
    #[arg(long)]
    locked: bool,
    /// The lock file --locked reads (`hoist lock` writes it)
    /// [default: hoist.lock].
    #[arg(long = "lock-file", value_name = "FILE")]
    lock_file: Option<PathBuf>,
    /// Stream install.log and agent.log to stderr while the agent session
    /// runs (control characters and escape sequences neutralised). Crane
    /// mode shows each line as it is written; in container mode Docker
    /// gives the host the logs only when the session ends, so they are
    /// shown then.
    #[arg(long)]
    follow: bool,
    #[arg(
        long,
        value_name = "REF",
        help = ref_help!("With --mode container: run this combination image, made by `hoist bake`, instead of baking one; its labels must name the same axes.")
    )]
    image: Option<String>,
}

/// How each task runs: `hoist run`'s flags, which `hoist eval` passes to
/// every task.
#[derive(Args, Clone)]
pub struct TaskFlags {
    /// The network the gateway and the agent see.
    #[arg(long, value_enum, default_value = "none")]
    pub network: Network,
    /// How the sandbox isolates the run; `run.json` records what it got
    /// and what it could not isolate (`not_isolated`).
    #[arg(long, value_enum, default_value = "auto")]
    pub isolation: Isolation,
    /// How the root filesystem is fused from the images' layers.
    #[arg(long, value_enum, default_value = "auto")]
    pub rootfs: RootfsMode,
    /// Recorded model responses for the gateway, mounted at /recordings.
    #[arg(long, value_name = "DIR")]
    pub recordings: Option<PathBuf>,
    /// Override the task's agent timeout: seconds, or 90s, 10m, 1h
    /// [default: task.json's agent_timeout_sec, else 600 s].
    #[arg(long, value_name = "DURATION", value_parser = super::checks::parse_duration)]
    pub agent_timeout: Option<u64>,
    /// Override the task's grade timeout: seconds, or 90s, 10m, 1h
    /// [default: task.json's grade.timeout_sec, else 300 s].
    #[arg(long, value_name = "DURATION", value_parser = super::checks::parse_duration)]
    pub grade_timeout: Option<u64>,
    /// Limit the run's memory, swap excluded (512M, 2G, bytes): a cgroup
    /// in crane mode, where a run that cannot have one fails; Docker's
    /// --memory in container mode.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
}

impl TaskFlags {
    /// How to run `task`, `--recordings` checked and made absolute (it is
    /// bound into the sandbox or the container by path).
    pub fn how(
        &self,
        task: Option<String>,
        image: Option<String>,
        lock_file: Option<PathBuf>,
    ) -> Result<How, UsageError> {
        Ok(How {
            task,
            network: self.network,
            isolation: self.isolation,
            rootfs: self.rootfs,
            recordings: self
                .recordings
                .as_deref()
                .map(checks::recordings_dir)
                .transpose()?,
            agent_timeout: self.agent_timeout,
            grade_timeout: self.grade_timeout,
            memory: self.memory,
            image,
            lock_file,
            phase: None,
            pull: PullFlags::default(),
        })
    }
}

pub fn run_cmd(global: &Global, args: &RunArgs) -> anyhow::Result<ExitStatus> {
    if args.follow && global.quiet {
        return Err(UsageError::new(
            "--follow",
            "streams the logs to stderr, and --quiet prints only errors: give one of them",
        )
        .into());
    }
    // First, so a missing daemon is reported before anything is pulled.
    let docker = match args.mode {
        Mode::Container => Some(Docker::detect()?),
        Mode::Crane if args.image.is_some() => {
            bail!("--image names a combination image for --mode container; crane mode fuses the axes itself")
        }
        Mode::Crane => None,
    };
    // The cheap checks, before anything is pulled or unpacked.
    checks::out_dir(&args.out)?;
    args.pull.check_runnable()?;
    let how = args.flags.how(
        args.task.clone(),
        args.image.clone(),
        args.locked.then(|| args.lock_file()),
    )?;
    if args.image.is_none() {
        static_binary()?;
    }
    if args.lock_file.is_some() && !args.locked && !global.quiet {
        hoist::errln!("warning: --lock-file is read only with --locked; this run does not check its images against it");
    }
    let store = global.store()?;
    let out = OutDir::claim(&args.out, args.force)?;
    // As pull.rs's bars: stdout may be a --json document, stderr a
    // terminal.
    let container = args.mode == Mode::Container;
    let spinner = RunSpinner::new(
        global.quiet || global.json,
        &args.out,
        args.follow,
        container,
    );
    let hook = spinner.hook();
    phase::enter(hook.as_ref(), Phase::Pull);
    let (pulled, notes, pull_ms) = pull_checked(global, &store, args, spinner.bars())?;
    for line in notes.iter().filter(|_| !global.quiet) {
        spinner.note(line);
    }
    let tasks = checks::benchmark_tasks(&store, &pulled[0])?;
    checks::check_task(&args.benchmark, &tasks, args.task.as_deref())?;
    let how = How {
        phase: hook,
        pull: args.pull.clone(),
        ..how
    };
    let (result, isolation) = execute(
        global,
        &store,
        docker.as_ref(),
        &pulled,
        &how,
        &out,
        pull_ms,
    )?;
    spinner.finish();
    let status = print_result(global, &result, isolation)?;
    if !global.json && !global.quiet {
        let at = std::path::absolute(out.path()).unwrap_or_else(|_| out.path().to_path_buf());
        outln!("results in {}", at.display())?;
    }
    Ok(status)
}

impl RunArgs {
    fn lock_file(&self) -> PathBuf {
        self.lock_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE))
    }
}

/// How to run one task, whichever command asks (`hoist run`, and each
/// task of `hoist eval`).
#[derive(Clone)]
pub struct How {
    pub task: Option<String>,
    pub network: Network,
    pub isolation: Isolation,
    pub rootfs: RootfsMode,
    pub recordings: Option<PathBuf>,
    pub agent_timeout: Option<u64>,
    pub grade_timeout: Option<u64>,
    pub memory: Option<u64>,
    /// Container mode: a combination image to run instead of baking one.
    pub image: Option<String>,
    /// The lock file checked, for run.json.
    pub lock_file: Option<PathBuf>,
    /// Told as each phase of the run begins (`hoist run`'s spinner,
    /// `hoist eval`'s board); the caller tells [`Phase::Pull`].
    pub phase: Option<PhaseHook>,
    /// `--pull` and `--platform`, for a combination image `--image`
    /// names.
    pub pull: PullFlags,
}

/// Run one task on the pulled axes (benchmark, agent, gateway) into
/// `out`: in crane mode, or under `docker` (container mode). Returns
/// result.json and the isolation it ran in.
pub fn execute(
    global: &Global,
    store: &Store,
    docker: Option<&Docker>,
    pulled: &[Pulled],
    how: &How,
    out: &OutDir,
    pull_ms: u64,
) -> anyhow::Result<(serde_json::Value, &'static str)> {
    let (benchmark, agent, gateway) = (&pulled[0], &pulled[1], pulled.get(2));
    let Some(docker) = docker else {
        let req = RunRequest {
            benchmark,
            agents: Agents::Run { agent, gateway },
            task: how.task.clone(),
            out,
            isolation: how.isolation,
            network: how.network,
            rootfs: how.rootfs,
            recordings: how.recordings.clone(),
            agent_timeout_sec: how.agent_timeout,
            grade_timeout_sec: how.grade_timeout,
            memory: how.memory,
            hoist_binary: static_binary()?,
            lock_file: how.lock_file.clone(),
            command_line: std::env::args().collect(),
            pull_ms,
            phase: how.phase.clone(),
        };
        let (result, record) = run(store, &req)?;
        return Ok((result, record.isolation));
    };
    // --mode container: the same task in the combination image, under
    // Docker (docs/pipeline.md).
    let axes = || container::Axes {
        benchmark,
        agent,
        gateway,
    };
    // Baking and loading the combination image is container mode's
    // counterpart of fusing the rootfs.
    phase::enter(how.phase.as_ref(), Phase::Fuse);
    let hoist_binary;
    let stored;
    let source = match how.image.as_deref() {
        None => {
            hoist_binary = static_binary()?;
            ImageSource::Bake {
                hoist_binary: &hoist_binary,
                epoch: hoist::bake::source_date_epoch(),
            }
        }
        Some(image) => match image.parse::<Reference>()? {
            Reference::Registry(r) => ImageSource::Registry(resolve_digest(global, r)?),
            Reference::Layout(_) => {
                stored = pull_axes(global, store, &[image], &how.pull)?;
                ImageSource::Stored(&stored[0])
            }
        },
    };
    let prepared = container::prepare(docker, store, &axes(), &source)
        .context("preparing the combination image")?;
    let req = ContainerRequest {
        axes: axes(),
        task: how.task.clone(),
        out,
        network: how.network,
        recordings: how.recordings.clone(),
        agent_timeout_sec: how.agent_timeout,
        grade_timeout_sec: how.grade_timeout,
        memory: how.memory,
        lock_file: how.lock_file.clone(),
        command_line: std::env::args().collect(),
        pull_ms,
        strict: how.isolation == Isolation::Strict,
        phase: how.phase.clone(),
    };
    let (result, _record) = container::run(docker, store, &req, &prepared)?;
    Ok((result, "docker"))
}

/// Pull every axis and, with `--locked`, check it against the lock file;
/// also the lines that say which images came from the store.
fn pull_checked(
    global: &Global,
    store: &Store,
    args: &RunArgs,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<(Vec<Pulled>, Vec<String>, u64)> {
    let mut axes = vec![
        ("benchmark", args.benchmark.as_str()),
        ("agent", args.agent.as_str()),
    ];
    axes.extend(args.gateway.as_deref().map(|g| ("gateway", g)));
    let t = Instant::now();
    if !args.locked {
        let refs: Vec<&str> = axes.iter().map(|(_, r)| *r).collect();
        let pulled = pull_showing(global, store, &refs, &args.pull, progress)?;
        let notes = stored_notes(global, &pulled);
        return Ok((pulled, notes, t.elapsed().as_millis() as u64));
    }
    let path = args.lock_file();
    let lock = LockFile::read(&path)?;
    let wanted = args.pull.platform.clone().unwrap_or_else(Platform::host);
    // A pinned image the store holds complete is run as stored: no
    // registry is asked (uv's --frozen); the others are resolved and
    // checked against their pins.
    let mut refs = Vec::new();
    let mut notes = Vec::new();
    for (axis, reference) in &axes {
        let pin = lock.pinned(axis, reference, &path)?;
        if let Some(built) = DockerfileRef::parse(reference) {
            // Built from a Dockerfile: unchanged inputs run the pinned
            // image as stored, built nothing; changed ones are drift.
            let built = built?;
            let inputs = hoist::build::inputs(&built)?;
            lock.check_inputs(axis, reference, &inputs.dockerfile, &inputs.digest, &path)?;
            notes.push(format!(
                "note: {reference}: using {}'s pin {pin} from the store (its build inputs are unchanged)",
                path.display()
            ));
            refs.push(built.pinned(pin.clone()).to_string());
            continue;
        }
        let parsed: Reference = reference.parse()?;
        match parsed {
            Reference::Registry(r)
                if args.pull.policy != PullPolicy::Always
                    && stored_complete(store, pin, &wanted) =>
            {
                notes.push(format!(
                    "note: {reference}: using {}'s pin {pin} from the store",
                    path.display()
                ));
                refs.push(Reference::Registry(r).pinned(pin.clone()).to_string());
            }
            _ => refs.push(reference.to_string()),
        }
    }
    let refs_str: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut pulled = pull_showing(global, store, &refs_str, &args.pull, progress)?;
    notes.extend(stored_notes(global, &pulled));
    for (p, (_, reference)) in pulled.iter_mut().zip(&axes) {
        // result.json and run.json name each image as it was given.
        p.reference = reference.to_string();
    }
    let checked: Vec<(&str, &Pulled, &str)> = axes
        .iter()
        .zip(&pulled)
        .map(|((axis, reference), p)| (*axis, p, *reference))
        .collect();
    check_lock(&lock, &path, &checked)?;
    Ok((pulled, notes, t.elapsed().as_millis() as u64))
}

/// The digest `r` resolves to now, by hoist's own client, so Docker
/// pulls exactly that.
fn resolve_digest(
    global: &Global,
    mut r: hoist::reference::RegistryRef,
) -> anyhow::Result<hoist::reference::RegistryRef> {
    if r.digest.is_none() {
        let client = Client::new(global.registry_options()?)?;
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let m = rt
            .block_on(client.get_manifest(&r, &r.manifest_ref()))
            .with_context(|| format!("resolving {r}"))?;
        r.digest = Some(m.digest);
    }
    Ok(r)
}

/// Print a run's result as crane and container mode both do; the exit
/// status says whether it completed without an infrastructure error.
pub fn print_result(
    global: &Global,
    result: &serde_json::Value,
    isolation: &str,
) -> anyhow::Result<ExitStatus> {
    if global.json {
        outln!("{}", serde_json::to_string_pretty(result)?)?;
    } else if !global.quiet {
        print_verdict(result, isolation)?;
    } else if let Some(line) = infra_line(result, false) {
        // --quiet prints errors, and the run's infrastructure error is one.
        hoist::errln!("error: {line}");
    }
    Ok(if let Some(sig) = hoist::interrupt::pending() {
        ExitStatus::Interrupted(sig)
    } else if result["infra_error"].is_null() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// `TASK: infrastructure error at STAGE: MESSAGE`, for a result that has
/// one: the one place a run's infrastructure error is printed.
fn infra_line(r: &serde_json::Value, on: bool) -> Option<String> {
    let e = r["infra_error"].as_object()?;
    Some(format!(
        "{}: {} at {}: {}",
        r["task_id"].as_str().unwrap_or("?"),
        colour::paint(on, Colour::Red, "infrastructure error"),
        e.get("stage").and_then(|s| s.as_str()).unwrap_or("?"),
        e.get("message").and_then(|s| s.as_str()).unwrap_or("?")
    ))
}

fn print_verdict(r: &serde_json::Value, isolation: &str) -> anyhow::Result<()> {
    let on = colour::stdout();
    if let Some(line) = infra_line(r, on) {
        return outln!("{line}");
    }
    let task = r["task_id"].as_str().unwrap_or("?");
    let verdict = if r["resolved"].as_bool() == Some(true) {
        colour::paint(on, Colour::Green, "RESOLVED")
    } else {
        colour::paint(on, Colour::Yellow, "unresolved")
    };
    outln!(
        "{task}: {verdict} (score {}, agent exit {}{}, isolation {isolation})",
        r["score"],
        r["agent"]["exit_code"],
        if r["agent"]["timed_out"].as_bool() == Some(true) {
            ", timed out"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// The hoist binary to put in the sandbox at /.hoist/hoist: it must be
/// static, since it runs inside any image. `HOIST_STATIC_BINARY`, else
/// this binary if it is static, else the static build beside it
/// (`target/x86_64-unknown-linux-gnu/PROFILE/hoist`, made by
/// `scripts/build-static`).
pub fn static_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOIST_STATIC_BINARY") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(UsageError::new(
                "HOIST_STATIC_BINARY",
                format!(
                    "{} is not a file; build the static hoist with scripts/build-static, or unset the variable to use the one beside this hoist",
                    p.display()
                ),
            )
            .into());
        }
        return Ok(p);
    }
    let exe = std::fs::read_link("/proc/self/exe").context("finding this binary")?;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if !maps.contains("/ld-linux") {
        return Ok(exe);
    }
    if let (Some(dir), Some(profile)) = (exe.parent(), exe.parent().and_then(Path::file_name)) {
        let sibling = dir
            .join("..")
            .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
            .join(profile)
            .join("hoist");
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    bail!("this hoist is dynamically linked and cannot run inside an image; build the static one with scripts/build-static, or set HOIST_STATIC_BINARY")
}
