//! `hoist eval` (docs/eval.md): every task of a benchmark, `--jobs` at a
//! time, resumable; `OUT/eval.json`, `OUT/tasks/<id>/`, `OUT/summary.json`,
//! `OUT/junit.xml`, and the summary table.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::Args;
use hoist::container::Docker;
use hoist::eval::report::Downloaded;
use hoist::eval::report::Entry;
use hoist::eval::{
    self, Attempt, EvalPlan, Event, Outcome, Pin, PlannedTask, Schedule, Shard, TaskLine,
};
use hoist::exit::ExitStatus;
use hoist::export::{self, OutDir};
use hoist::interrupt::Interrupted;
use hoist::orchestrate::{host_result, Stopped};
use hoist::pipeline::clock::rfc3339;
use hoist::pull::{resolve, NoProgress, Progress, Pulled, Resolved};
use hoist::reference::Reference;
use hoist::registry::Client;
use hoist::result::{Stage, TaskResult};
use hoist::rootfs::evict::{evict, Sizes};
use hoist::store::Store;

use super::checks;
use super::fetch::{pull_axes, stored_note, PullFlags, Wanted};
use super::progress::EvalBoard;
use super::report::publish;
use super::run::{execute, static_binary, How, Mode, TaskFlags};
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist eval --benchmark oci:target/hoist-test/samples/oci:pyfix --agent oci:target/hoist-test/samples/oci:agent-oracle --jobs 2 --out runs/pyfix
  hoist eval --tasks swe-mini.jsonl --agent localhost:5000/samples/agent-oracle:latest --out runs/swe-mini --dry-run
  hoist eval --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-noop:latest --out /shared/runs/pyfix --emit slurm --shards 3")]
pub struct EvalArgs {
    #[arg(
        long,
        value_name = "REF",
        conflicts_with = "tasks",
        help = ref_help!("A shared-environment benchmark image: its tasks (all of /tasks, or the --task ones).")
    )]
    benchmark: Option<String>,
    /// With --benchmark: run only these tasks (repeatable).
    #[arg(long = "task", value_name = "ID", requires = "benchmark")]
    task: Vec<String>,
    /// A per-task benchmark: JSON Lines, one task a line:
    /// {"id": "...", "benchmark": "REF"} (optional "agent", "gateway",
    /// "agent_timeout_sec").
    #[arg(long, value_name = "FILE", required_unless_present = "benchmark")]
    tasks: Option<PathBuf>,
    #[arg(
        long,
        value_name = "REF",
        env = "HOIST_AGENT",
        help = ref_help!("The agent image of every task (a --tasks line may name its own): its /opt/agent.")
    )]
    agent: String,
    #[arg(
        long,
        value_name = "REF",
        env = "HOIST_GATEWAY",
        help = ref_help!("The model gateway image, if any (a --tasks line may name its own): its /opt/gateway.")
    )]
    gateway: Option<String>,
    /// The evaluation's directory: eval.json, tasks/<id>/, summary.json,
    /// junit.xml. Run again to resume.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Tasks run at once [default: one per core, at most one per 2 GiB of
    /// memory (or per --memory)].
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// Pull the images of up to N tasks ahead while the running ones run;
    /// 0 pulls each when its task starts [default: as many as --jobs].
    #[arg(long, value_name = "N")]
    prefetch: Option<usize>,
    /// Run task k (in the plan's order) when k mod N = I. Unset: from
    /// SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX
    /// (one task per index).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Further tries of a task that ended with an infrastructure error
    /// (an agent's failure is never retried).
    #[arg(long, value_name = "K", default_value_t = 2)]
    retries: u32,
    /// Run every task again, even those complete in OUT.
    #[arg(long)]
    rerun: bool,
    /// Where each task runs: crane fuses and sandboxes here, container
    /// runs the baked combination image under Docker.
    #[arg(long, value_enum, default_value = "crane")]
    mode: Mode,
    /// How each task runs, as `hoist run`.
    #[command(flatten)]
    flags: TaskFlags,
    #[command(flatten)]
    pull: PullFlags,
    /// Write the evaluation as a batch job instead of running it here,
    /// one shard per array task or pod (see --shards).
    #[arg(long, value_enum, value_name = "ENGINE", conflicts_with = "shard")]
    emit: Option<Emit>,
    /// With a shard (--shard, or the batch system's index): write into
    /// OUT/shards/I, so the shards of one job can share OUT's volume.
    #[arg(long)]
    shard_dir: bool,
    /// With --emit: how many shards [default: one per task].
    #[arg(long, value_name = "N", requires = "emit")]
    shards: Option<usize>,
    /// With --emit: at most this many shards run at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_running: usize,
    #[arg(
        long,
        value_name = "REF",
        required_if_eq("emit", "k8s"),
        help = ref_help!("With --emit k8s: the runner image the pods run (runner-image/), best pinned by digest.")
    )]
    runner_image: Option<String>,
    /// With --emit k8s: each pod's node-local disk (store and trees).
    #[arg(long, value_name = "SIZE", default_value = "40Gi")]
    ephemeral_storage: String,
    /// Keep the store below SIZE (512M, 40G, bytes): after each task, the
    /// images least recently used that no running or pending task needs
    /// are dropped, and their blobs and unpacked layers removed.
    #[arg(long, value_name = "SIZE", value_parser = hoist::sandbox::cgroup::parse_bytes)]
    max_store_size: Option<u64>,
    /// Print what the evaluation would pull, from the manifests alone:
    /// the unique layers, the bytes to download and the peak disk. Runs
    /// nothing; with --tasks it writes nothing (with --benchmark, that
    /// image is pulled to list its tasks).
    #[arg(long, conflicts_with = "emit")]
    dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// OUT/slurm/job.sbatch (a job array) and OUT/slurm/submit.
    Slurm,
    /// OUT/k8s/*.json: an Indexed Job of the runner image.
    K8s,
}

pub fn run(global: &Global, args: &EvalArgs) -> anyhow::Result<ExitStatus> {
    let started = Instant::now();
    let docker = match args.mode {
        Mode::Container => Some(Docker::detect()?),
        Mode::Crane => None,
    };
    // The cheap checks, before anything is pulled.
    checks::out_dir(&args.out)?;
    let how = args.flags.how(None, None, None)?;
    let here = args.emit.is_none() && !args.dry_run;
    if here {
        args.pull.check_runnable()?;
        if args.mode == Mode::Crane || how.image.is_none() {
            static_binary()?;
        }
    }
    let store = global.store()?;
    let client = Client::new(global.registry_options()?)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let plan = make_plan(global, &store, &client, &rt, args)?;
    if let Some(engine) = args.emit {
        return emit(global, args, &plan, engine);
    }
    if args.dry_run {
        let jobs = args
            .jobs
            .unwrap_or_else(|| eval::default_jobs(args.flags.memory));
        return super::dryrun::run(
            global,
            &store,
            &client,
            &rt,
            &plan,
            args.max_store_size,
            jobs,
        );
    }
    let out_path = match (args.shard_dir, plan.shard) {
        (true, Some(s)) => args.out.join("shards").join(s.index.to_string()),
        _ => args.out.clone(),
    };
    // OUT is this evaluation's (resumed when run again): locked, not
    // cleared.
    let out = OutDir::lock(&out_path)?;
    let bytes = serde_json::to_vec_pretty(&plan)?;
    export::write_file(&out, "eval.json", &bytes)?;

    let how = How {
        pull: args.pull.clone(),
        ..how
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| eval::default_jobs(args.flags.memory));
    let schedule = Schedule {
        jobs,
        prefetch: args.prefetch.unwrap_or(jobs),
        retries: args.retries,
        backoff: std::env::var("HOIST_EVAL_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis),
        rerun: args.rerun,
    };
    let quiet = global.quiet;
    if !quiet {
        hoist::errln!(
            "hoist eval: {} task(s){}, {} at a time, into {}",
            plan.tasks.len(),
            plan.shard
                .map(|s| format!(" (shard {}/{} of {})", s.index, s.count, plan.total_tasks))
                .unwrap_or_default(),
            schedule.jobs,
            out_path.display()
        );
    }
    let board = EvalBoard::new(quiet, plan.tasks.len());
    let runner = TaskRunner {
        global,
        board: &board,
        store: &store,
        client: &client,
        rt: &rt,
        docker: docker.as_ref(),
        how: &how,
        out: &out_path,
        mode: args.mode,
        downloads: Arc::new(Downloads::default()),
        max_store_size: args.max_store_size,
        sizes: Mutex::new((Sizes::default(), false)),
    };
    let attempt = |t: &PlannedTask| runner.attempt(t);
    let note = |e: Event<'_>| board.event(&e);
    // Held while tasks run: a signal stops the scheduling and each
    // running task takes its sandbox down; then the summary of what
    // completed is written.
    let region = hoist::interrupt::Region::enter();
    let (outcomes, stopped) = match region {
        Ok(_r) => eval::run_all(&out_path, &plan, &schedule, &attempt, &note, &runner),
        Err(sig) => (Vec::new(), Some(sig)),
    };
    board.finish();
    let wall_ms = started.elapsed().as_millis() as u64;
    let entries: Vec<Entry<'_>> = outcomes
        .iter()
        .map(|o: &Outcome| Entry {
            id: &o.id,
            result: o.result.as_ref(),
            resumed: o.resumed,
        })
        .collect();
    let summary = publish(
        global,
        Some(&out),
        &entries,
        wall_ms,
        Some(runner.downloads.total()),
    )?;
    Ok(match stopped.or_else(hoist::interrupt::pending) {
        Some(sig) => ExitStatus::Interrupted(sig),
        None if summary.infra_error > 0 => ExitStatus::Failure,
        None => ExitStatus::Success,
    })
}

/// The plan as a tasks file, every reference pinned to the digest it
/// resolved to (`REF@digest`; one that could not be resolved stays as
/// given, and fails in its shard as it would here).
fn pinned_tasks(plan: &EvalPlan) -> anyhow::Result<String> {
    // As each task pulls it, and a layout pinned too: the shards run
    // elsewhere, where its tag may point at something else.
    let pinned = |p: &Pin| -> anyhow::Result<String> {
        Ok(match (pinned_reference(p)?, &p.digest) {
            (Wanted::Image(Reference::Layout(mut l)), Some(d)) => {
                l.digest = Some(
                    d.parse()
                        .with_context(|| format!("the planned digest {d}"))?,
                );
                l.to_string()
            }
            (r, _) => r.to_string(),
        })
    };
    let mut text = String::new();
    for t in &plan.tasks {
        let mut line = serde_json::json!({
            "id": t.id,
            "benchmark": pinned(&t.benchmark)?,
            "agent": pinned(&t.agent)?,
        });
        if let Some(g) = &t.gateway {
            line["gateway"] = pinned(g)?.into();
        }
        if let Some(s) = t.agent_timeout_sec {
            line["agent_timeout_sec"] = s.into();
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    Ok(text)
}

/// `--emit`: write the job, say how to submit it.
fn emit(
    global: &Global,
    args: &EvalArgs,
    plan: &EvalPlan,
    engine: Emit,
) -> anyhow::Result<ExitStatus> {
    let shards = args
        .shards
        .unwrap_or(plan.total_tasks)
        .clamp(1, plan.total_tasks.max(1));
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)
        .with_context(|| format!("--out {}", args.out.display()))?;
    match engine {
        Emit::Slurm => {
            let mut command = vec![std::env::current_exe()
                .context("finding this hoist binary")?
                .display()
                .to_string()];
            let tasks_path = hoist::eval::emit::slurm_tasks_path(&out);
            command.extend(eval_command(
                global,
                args,
                &tasks_path.display().to_string(),
                true,
            )?);
            let job = hoist::eval::emit::Job {
                command,
                tasks: pinned_tasks(plan)?,
                out: out.clone(),
                shards,
                max_running: args.max_running,
                cpus: args.jobs.unwrap_or(1),
            };
            let submit = hoist::eval::emit::write_slurm(&job).with_context(|| {
                format!("writing the Slurm job into {}", out.join("slurm").display())
            })?;
            if global.json {
                outln!(
                    "{}",
                    serde_json::json!({"engine": "slurm", "written": submit, "shards": shards, "tasks": plan.total_tasks})
                )?;
            } else if !global.quiet {
                outln!(
                    "wrote {} ({} shards of {} tasks); submit it with:\n  {}\nthen sum the shards up with:\n  hoist report {}/shards/* --out {}",
                    submit.display(),
                    shards,
                    plan.total_tasks,
                    submit.display(),
                    out.display(),
                    out.display()
                )?;
            }
        }
        Emit::K8s => {
            if args.flags.recordings.is_some() {
                bail!("--recordings with --emit k8s: the pods cannot see this machine's files; bake the recordings into the gateway image");
            }
            let tasks_file = Some(pinned_tasks(plan)?);
            let k = hoist::eval::emit::K8s {
                name: "hoist-eval".into(),
                image: args.runner_image.clone().unwrap_or_default(),
                eval_args: eval_command(global, args, hoist::eval::emit::K8S_TASKS_PATH, false)?,
                tasks_file,
                tasks: plan.total_tasks,
                parallelism: args.max_running,
                retries: args.retries,
                cpus: args.jobs.unwrap_or(1),
                memory: args.flags.memory,
                ephemeral_storage: args.ephemeral_storage.clone(),
            };
            let dir = hoist::eval::emit::write_k8s(&out, &k).with_context(|| {
                format!("writing the manifests into {}", out.join("k8s").display())
            })?;
            if global.json {
                outln!(
                    "{}",
                    serde_json::json!({"engine": "k8s", "written": dir, "tasks": plan.total_tasks})
                )?;
            } else if !global.quiet {
                outln!(
                    "wrote {} (an Indexed Job of {} tasks, one per index); apply it with:\n  kubectl apply -f {}\nthen, from the results volume:\n  hoist report RESULTS/shards/* --out RESULTS",
                    dir.display(),
                    plan.total_tasks,
                    dir.display()
                )?;
            }
        }
    }
    Ok(ExitStatus::Success)
}

/// What every shard of an emitted job runs after hoist itself: the global
/// flags (`--store` only if `with_store`), `eval --tasks TASKS_AT` (the
/// pinned plan, see [`pinned_tasks`]) and this invocation's own flags but
/// `--out`, `--shard` and `--emit` (the job adds them per shard). Paths
/// are made absolute: the job runs elsewhere.
fn eval_command(
    global: &Global,
    args: &EvalArgs,
    tasks_at: &str,
    with_store: bool,
) -> anyhow::Result<Vec<String>> {
    use clap::ValueEnum;
    let abs = |p: &Path| -> anyhow::Result<String> {
        Ok(std::fs::canonicalize(p)
            .with_context(|| p.display().to_string())?
            .display()
            .to_string())
    };
    let name = |v: Option<clap::builder::PossibleValue>| {
        v.map(|p| p.get_name().to_string()).unwrap_or_default()
    };
    let mut c: Vec<String> = Vec::new();
    let globals: Vec<String> = global
        .forwarded()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut g = globals.iter();
    while let Some(flag) = g.next() {
        let value = g.next().cloned().unwrap_or_default();
        if flag != "--store" || with_store {
            c.extend([flag.clone(), value]);
        }
    }
    c.push("eval".into());
    let mut flag = |f: &str, v: String| {
        c.push(f.to_string());
        c.push(v);
    };
    // The plan's tasks, every image pinned, in a tasks file of the job's
    // own: each shard runs exactly the images planned here, even if a tag
    // moves before it starts.
    flag("--tasks", tasks_at.to_string());
    flag("--agent", args.agent.clone());
    if let Some(j) = args.jobs {
        flag("--jobs", j.to_string());
    }
    flag("--retries", args.retries.to_string());
    flag("--mode", name(args.mode.to_possible_value()));
    flag("--network", name(args.flags.network.to_possible_value()));
    flag(
        "--isolation",
        name(args.flags.isolation.to_possible_value()),
    );
    flag("--rootfs", name(args.flags.rootfs.to_possible_value()));
    if let Some(r) = &args.flags.recordings {
        flag("--recordings", abs(r)?);
    }
    if let Some(t) = args.flags.agent_timeout {
        flag("--agent-timeout", t.to_string());
    }
    if let Some(t) = args.flags.grade_timeout {
        flag("--grade-timeout", t.to_string());
    }
    if let Some(m) = args.flags.memory {
        flag("--memory", m.to_string());
    }
    c.extend(args.pull.forwarded());
    if args.rerun {
        c.push("--rerun".into());
    }
    Ok(c)
}

/// The plan: this shard's tasks, every image pinned by digest.
fn make_plan(
    global: &Global,
    store: &Store,
    client: &Client,
    rt: &tokio::runtime::Runtime,
    args: &EvalArgs,
) -> anyhow::Result<EvalPlan> {
    let lines: Vec<TaskLine> = match (&args.benchmark, &args.tasks) {
        (Some(benchmark), _) => {
            // One image holds every task: pull it (its tasks are listed
            // from it unless given).
            let pulled = pull_axes(global, store, &[benchmark.as_str()], &args.pull)?;
            let listed = checks::benchmark_tasks(store, &pulled[0])?;
            checks::require_tasks(benchmark, &listed)?;
            let ids = if args.task.is_empty() {
                listed
            } else {
                for id in &args.task {
                    checks::check_task(benchmark, &listed, Some(id))?;
                }
                args.task.clone()
            };
            ids.into_iter()
                .map(|id| TaskLine {
                    id,
                    benchmark: benchmark.clone(),
                    agent: None,
                    gateway: None,
                    agent_timeout_sec: None,
                })
                .collect()
        }
        (None, Some(file)) => eval::parse_tasks_file(file)?,
        (None, None) => bail!("give --benchmark REF or --tasks FILE"),
    };
    // Each distinct reference resolved once, a few at a time.
    let mut refs: Vec<String> = Vec::new();
    for l in &lines {
        refs.push(l.benchmark.clone());
        refs.push(l.agent.clone().unwrap_or_else(|| args.agent.clone()));
        refs.extend(l.gateway.clone().or_else(|| args.gateway.clone()));
    }
    refs.sort();
    refs.dedup();
    let opts = args.pull.options();
    let resolved: Vec<(String, Result<Resolved, String>)> = rt.block_on(async {
        use futures_util::stream::{self, StreamExt};
        stream::iter(refs.iter().map(|r| {
            let opts = &opts;
            async move {
                let d = async {
                    match Wanted::parse(r)? {
                        Wanted::Image(parsed) => {
                            anyhow::Ok(resolve(store, client, &parsed, opts).await?)
                        }
                        // Built (or found built) now: the plan pins the image.
                        built => {
                            let p = built
                                .obtain(store, client, opts, Arc::new(NoProgress))
                                .await?;
                            anyhow::Ok(Resolved {
                                digest: p.digest,
                                from_store: false,
                            })
                        }
                    }
                }
                .await
                .map_err(|e| format!("{e:#}"));
                (r.clone(), d)
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await
    });
    let mut digests: std::collections::HashMap<String, Result<String, String>> =
        std::collections::HashMap::new();
    for (r, d) in resolved {
        // A tag taken from the store is said, as `hoist run` says it.
        if let (Ok(found), false) = (&d, global.quiet) {
            if found.from_store {
                hoist::errln!("{}", stored_note(&r, &found.digest.to_string()));
            }
        }
        digests.insert(r, d.map(|found| found.digest.to_string()));
    }
    for (r, d) in &digests {
        if let Err(why) = d {
            tracing::warn!(reference = %r, error = %why, "could not resolve; its tasks try again when they run");
        }
    }
    let pin = |r: &str| Pin {
        reference: r.to_string(),
        digest: digests[r].as_ref().ok().cloned(),
        unresolved: digests[r].as_ref().err().cloned(),
    };
    let total = lines.len();
    let shard = match &args.shard {
        Some(s) => Some(Shard::parse(s)?),
        None => Shard::from_env(|k| std::env::var(k).ok(), total)?,
    };
    let tasks = lines
        .iter()
        .enumerate()
        .filter(|(k, _)| shard.is_none_or(|s| s.takes(*k)))
        .map(|(_, l)| PlannedTask {
            id: l.id.clone(),
            benchmark: pin(&l.benchmark),
            agent: pin(l.agent.as_deref().unwrap_or(&args.agent)),
            gateway: l.gateway.as_deref().or(args.gateway.as_deref()).map(pin),
            agent_timeout_sec: l.agent_timeout_sec,
        })
        .collect();
    Ok(EvalPlan {
        schema: eval::PLAN_SCHEMA.into(),
        created_at: rfc3339(SystemTime::now()),
        mode: args.mode.as_str().into(),
        shard,
        total_tasks: total,
        tasks,
    })
}

/// What every task's attempt shares.
struct TaskRunner<'a> {
    global: &'a Global,
    /// The progress display: each attempt's phases go to its line.
    board: &'a EvalBoard,
    store: &'a Store,
    client: &'a Client,
    rt: &'a tokio::runtime::Runtime,
    docker: Option<&'a Docker>,
    how: &'a How,
    out: &'a Path,
    mode: Mode,
    /// What this evaluation's pulls downloaded (summary.json).
    downloads: Arc<Downloads>,
    /// `--max-store-size`, kept after each task.
    max_store_size: Option<u64>,
    /// The store's measured cache entries, and whether the limit was
    /// found too small for the tasks in flight (said once).
    sizes: Mutex<(Sizes, bool)>,
}

/// Counts the blobs this evaluation's pulls downloaded (not those found
/// in the store): with one store, each blob is downloaded once, however
/// many tasks at once need it.
#[derive(Default)]
struct Downloads {
    /// Each blob started, with the bytes it still had to come.
    pending: Mutex<std::collections::HashMap<hoist::digest::Digest, u64>>,
    done: Mutex<Downloaded>,
}

impl Downloads {
    fn total(&self) -> Downloaded {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Progress for Downloads {
    fn blob_started(&self, digest: &hoist::digest::Digest, size: u64, resumed_from: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.clone(), size.saturating_sub(resumed_from));
    }

    fn blob_finished(&self, digest: &hoist::digest::Digest, downloaded: bool) {
        // A blob found present was never started here; another pull of
        // it may be downloading it right now, and its entry is that one's.
        if !downloaded {
            return;
        }
        let bytes = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest)
            .unwrap_or(0);
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        d.blobs += 1;
        d.bytes += bytes;
    }
}

impl eval::Housekeeping for TaskRunner<'_> {
    fn prefetch(&self, task: &PlannedTask) {
        match self.pull(task) {
            Ok(_) => tracing::debug!(task = %task.id, "images prefetched"),
            // The task meets (and retries) it when it runs.
            Err(PullFailed::Error(e)) => {
                tracing::debug!(task = %task.id, error = %format!("{e:#}"), "prefetch failed")
            }
            Err(PullFailed::Interrupted(_)) => {}
        }
    }

    fn tidy(&self, needed: &[&PlannedTask]) {
        let Some(max) = self.max_store_size else {
            return;
        };
        let keep: std::collections::BTreeSet<String> = needed
            .iter()
            .flat_map(|t| {
                [Some(&t.benchmark), Some(&t.agent), t.gateway.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.digest.clone())
            })
            .collect();
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let (sizes, warned) = &mut *sizes;
        match evict(self.store, max, &keep, sizes) {
            Ok(e) => {
                if !e.images.is_empty() {
                    tracing::info!(
                        images = e.images.len(),
                        before = e.before,
                        after = e.after,
                        "--max-store-size: evicted the least recently used images"
                    );
                }
                if e.after > max && !*warned {
                    *warned = true;
                    hoist::errln!(
                        "hoist eval: the store holds {} after eviction, above --max-store-size {}: the running and pending tasks need more (a smaller --jobs or --prefetch needs less)",
                        e.after, max
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not keep the store under --max-store-size"),
        }
    }
}

/// Why a task's images could not be had.
enum PullFailed {
    Interrupted(Interrupted),
    Error(anyhow::Error),
}

impl TaskRunner<'_> {
    /// One try at `task`: pull its pinned images, run it into
    /// `OUT/tasks/<id>` (cleared first), and read its result. What fails
    /// outside the sandbox is written there as an infrastructure error.
    fn attempt(&self, task: &PlannedTask) -> Attempt {
        let dir_path = eval::task_out(self.out, &task.id);
        let dir = match OutDir::claim(&dir_path, true) {
            Ok(d) => d,
            Err(e) => return self.host_error(task, None, Stage::Sandbox, &e.into()),
        };
        let hook = self.board.hook(&task.id);
        hoist::phase::enter(Some(&hook), hoist::phase::Phase::Pull);
        let t = Instant::now();
        let pulled = match self.pull(task) {
            Ok(p) => p,
            Err(PullFailed::Interrupted(sig)) => return Attempt::Interrupted(sig),
            Err(PullFailed::Error(e)) => return self.host_error(task, Some(&dir), Stage::Pull, &e),
        };
        let pull_ms = t.elapsed().as_millis() as u64;
        let how = How {
            task: Some(task.id.clone()),
            agent_timeout: task.agent_timeout_sec.or(self.how.agent_timeout),
            phase: Some(hook),
            ..self.how.clone()
        };
        match execute(
            self.global,
            self.store,
            self.docker,
            &pulled,
            &how,
            &dir,
            pull_ms,
        ) {
            Ok((value, _)) => {
                let result: Result<TaskResult, _> = serde_json::from_value(value);
                match (hoist::interrupt::pending(), result) {
                    (Some(sig), Ok(r))
                        if r.infra_error
                            .as_ref()
                            .is_some_and(|e| e.stage == Stage::Interrupted) =>
                    {
                        Attempt::Interrupted(sig)
                    }
                    (_, Ok(r)) => Attempt::Ran(Box::new(r)),
                    (_, Err(e)) => {
                        self.host_error(task, Some(&dir), Stage::Sandbox, &anyhow::Error::new(e))
                    }
                }
            }
            Err(e) => match hoist::interrupt::pending() {
                Some(sig) => Attempt::Interrupted(sig),
                None => self.host_error(task, Some(&dir), Stage::Sandbox, &e),
            },
        }
    }

    /// The task's images, pulled by the plan's digests; a signal abandons
    /// the pull (what was stored stays, and a later pull resumes).
    fn pull(&self, task: &PlannedTask) -> Result<Vec<Pulled>, PullFailed> {
        let mut pins = vec![&task.benchmark, &task.agent];
        pins.extend(task.gateway.as_ref());
        let fail = |e: anyhow::Error| PullFailed::Error(e);
        let refs = pins
            .iter()
            .map(|p| pinned_reference(p))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(fail)?;
        let store = self.store;
        let client = self.client;
        let pulls = futures_util::future::try_join_all(refs.iter().map(|r| async move {
            r.obtain(
                store,
                client,
                &self.how.pull.options(),
                self.downloads.clone(),
            )
            .await
        }));
        let pulled = self.rt.block_on(async {
            tokio::select! {
                p = pulls => Ok(p),
                sig = hoist::interrupt::signalled() => Err(sig),
            }
        });
        let pulled = pulled.map_err(PullFailed::Interrupted)?.map_err(fail)?;
        for (p, pin) in pulled.iter().zip(&pins) {
            if let Some(planned) = pin.digest.as_ref().filter(|d| **d != p.digest.to_string()) {
                return Err(fail(anyhow::anyhow!(
                    "{} now resolves to {}, but the evaluation's plan pinned {planned}",
                    pin.reference,
                    p.digest,
                )));
            }
        }
        Ok(pulled)
    }

    /// Write the task's result.json as an infrastructure error at `stage`
    /// (the task never reached its sandbox, or the run failed on the
    /// host's side), and return it.
    fn host_error(
        &self,
        task: &PlannedTask,
        dir: Option<&OutDir>,
        stage: Stage,
        e: &anyhow::Error,
    ) -> Attempt {
        let message = format!("{e:#}");
        let record = |p: &Pin| serde_json::json!({"ref": p.reference, "digest": p.digest.clone().unwrap_or_default()});
        let images = serde_json::json!({
            "benchmark": record(&task.benchmark),
            "agent": record(&task.agent),
            "gateway": task.gateway.as_ref().map(record),
        });
        let started_at = rfc3339(SystemTime::now());
        let facts = Stopped {
            task: Some(&task.id),
            images: &images,
            platform: hoist::platform::Platform::host().to_string(),
            mode: self.mode.as_str(),
            isolation: "none",
            started_at: &started_at,
        };
        let result = host_result(stage, message, &facts, None);
        let written = dir
            .ok_or_else(|| anyhow::anyhow!("no directory for the task"))
            .and_then(|d| Ok(d.subdir("task")?))
            .and_then(|t| {
                Ok(export::write_file(
                    &t,
                    "result.json",
                    result.to_json().as_bytes(),
                )?)
            });
        if let Err(w) = written {
            // Still counted, as the error it was.
            tracing::warn!(task = %task.id, error = %w, "could not write the task's result.json");
        }
        Attempt::Ran(Box::new(result))
    }
}

/// A registry reference pinned to the plan's digest (the registry serves
/// exactly those bytes), and an image built from a Dockerfile pinned to
/// the image the plan built (never rebuilt); a layout is pulled as named
/// and its digest checked after.
fn pinned_reference(pin: &Pin) -> anyhow::Result<Wanted> {
    let digest = || -> anyhow::Result<Option<hoist::digest::Digest>> {
        pin.digest
            .as_deref()
            .map(|d| d.parse().with_context(|| format!("the planned digest {d}")))
            .transpose()
    };
    Ok(match Wanted::parse(&pin.reference)? {
        Wanted::Image(Reference::Registry(mut reg)) => {
            reg.digest = digest()?.or(reg.digest);
            Wanted::Image(Reference::Registry(reg))
        }
        Wanted::Built(b) => match digest()? {
            Some(d) => Wanted::Built(b.pinned(d)),
            None => Wanted::Built(b),
        },
        other => other,
    })
}
