//! `hoist eval` (docs/eval.md): every task of a benchmark, each exactly as
//! `hoist run` runs it, with one store, resumable and interruptible.
//!
//! The plan ([`EvalPlan`], `OUT/eval.json`) lists the tasks of this shard
//! with every image pinned by digest. [`run_all`] runs them `jobs` at a
//! time: a task whose `OUT/tasks/<id>/task/result.json` is complete for
//! the same digests is kept ([`completed`]); an infrastructure error is
//! retried with backoff, an agent's failure never; a signal stops the
//! scheduling, the running tasks take their sandboxes down, and what
//! completed is kept. [`report`] sums the results up (`summary.json`,
//! the table, `junit.xml`).

pub mod dryrun;
pub mod emit;
pub mod report;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::interrupt::Interrupted;
use crate::pipeline::task::is_safe_id;
use crate::result::TaskResult;

/// `eval.json`'s schema.
pub const PLAN_SCHEMA: &str = "hoist.eval/v1";

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    TasksFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("task {id:?} is in both {first} and {second}; each task belongs to one shard")]
    Duplicate {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("the directories hold {found} of the {total} tasks planned{}; give every shard's directory, or --partial to sum up what is there", missing_shards(*.missing_count, .missing))]
    Incomplete {
        found: usize,
        total: usize,
        /// How many shards of the plan no directory holds.
        missing_count: usize,
        /// The first [`MISSING_SHOWN`] of them (`I/N`).
        missing: Vec<String>,
    },
    #[error("{path}: not an evaluation's plan: {why}")]
    BadPlan { path: PathBuf, why: String },
    #[error("--shard {0:?}: expected I/N with 0 <= I < N (e.g. 0/4)")]
    BadShard(String),
    #[error("{var}={value:?}: {why}")]
    BadShardEnv {
        var: &'static str,
        value: String,
        why: &'static str,
    },
}

/// One line of a tasks file (JSON Lines): a task and the image that
/// holds it; the agent, gateway and timeout default to the command's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLine {
    pub id: String,
    pub benchmark: String,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub agent_timeout_sec: Option<u64>,
}

/// Read a tasks file: one JSON object a line (blank lines and lines
/// starting with `#` are skipped), ids safe as directory names and
/// unique. Errors name the file and the line.
pub fn parse_tasks_file(path: &Path) -> Result<Vec<TaskLine>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tasks(path, &text)
}

fn parse_tasks(path: &Path, text: &str) -> Result<Vec<TaskLine>, EvalError> {
    let err = |line: usize, why: String| EvalError::TasksFile {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let t: TaskLine = serde_json::from_str(line).map_err(|e| err(i + 1, e.to_string()))?;
        if !is_safe_id(&t.id) {
            return Err(err(
                i + 1,
                format!(
                    "task id {:?} is not a plain name ([A-Za-z0-9._-], not . or ..)",
                    t.id
                ),
            ));
        }
        if !seen.insert(t.id.clone()) {
            return Err(err(i + 1, format!("task id {:?} appears twice", t.id)));
        }
        tasks.push(t);
    }
    if tasks.is_empty() {
        return Err(err(0, "no task in the file".into()));
    }
    Ok(tasks)
}

/// `--shard I/N`: this machine runs task `k` (in the plan's order) when
/// `k mod N = I`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Shard, EvalError> {
        let bad = || EvalError::BadShard(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard the batch system gives, when `--shard` is not set:
    /// `SLURM_ARRAY_TASK_ID` of `SLURM_ARRAY_TASK_COUNT` (a Slurm job
    /// array, ids from 0), else `JOB_COMPLETION_INDEX` (a Kubernetes
    /// Indexed Job, one task per index: `of` is the number of tasks).
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        of: usize,
    ) -> Result<Option<Shard>, EvalError> {
        let num = |var: &'static str, v: String| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| EvalError::BadShardEnv {
                    var,
                    value: v,
                    why: "not a number",
                })
        };
        if let (Some(id), Some(count)) = (get("SLURM_ARRAY_TASK_ID"), get("SLURM_ARRAY_TASK_COUNT"))
        {
            let index = num("SLURM_ARRAY_TASK_ID", id.clone())?;
            let count = num("SLURM_ARRAY_TASK_COUNT", count)?;
            if count == 0 || index >= count {
                return Err(EvalError::BadShardEnv {
                    var: "SLURM_ARRAY_TASK_ID",
                    value: id,
                    why: "not below SLURM_ARRAY_TASK_COUNT (the array must be 0..N-1)",
                });
            }
            return Ok(Some(Shard { index, count }));
        }
        if let Some(i) = get("JOB_COMPLETION_INDEX") {
            let index = num("JOB_COMPLETION_INDEX", i.clone())?;
            if index >= of {
                return Err(EvalError::BadShardEnv {
                    var: "JOB_COMPLETION_INDEX",
                    value: i,
                    why: "past the last task (completions must equal the number of tasks)",
                });
            }
            return Ok(Some(Shard { index, count: of }));
        }
        Ok(None)
    }

    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index
    }
}

/// An image as the plan pins it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    #[serde(rename = "ref")]
    pub reference: String,
    /// None when it could not be resolved as the plan was made: the task
    /// tries again when it runs (and ends as an infrastructure error if
    /// it still cannot), so one bad image does not stop the others.
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unresolved: Option<String>,
}

/// One task of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTask {
    pub id: String,
    pub benchmark: Pin,
    pub agent: Pin,
    pub gateway: Option<Pin>,
    pub agent_timeout_sec: Option<u64>,
}

/// `OUT/eval.json`: what this evaluation runs, every image pinned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalPlan {
    pub schema: String,
    pub created_at: String,
    pub mode: String,
    pub shard: Option<Shard>,
    /// Tasks in the whole benchmark, before sharding.
    pub total_tasks: usize,
    /// This shard's tasks, in the plan's order.
    pub tasks: Vec<PlannedTask>,
}

/// The tasks a shared-environment image holds: the directories under its
/// `/tasks` with a `task.json`, sorted. The benchmark is materialized
/// alone (an overlay where this process may mount, else a copy) and read
/// without following any link the image put there.
pub fn list_tasks(
    store: &crate::store::Store,
    benchmark: &crate::pull::Pulled,
) -> Result<Vec<String>, EvalError> {
    use crate::rootfs::{self, Axes, RootfsMode};
    use std::os::fd::AsFd;
    let work = store.root().join("work");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalError::Io { path, source }
    };
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let tmp = tempfile::Builder::new()
        .prefix("tasks-")
        .tempdir_in(&work)
        .map_err(io(&work))?;
    let root = tmp.path().join("rootfs");
    let axes = Axes {
        benchmark,
        agent: None,
        gateway: None,
    };
    let m = rootfs::materialize(store, &axes, &root, RootfsMode::Auto, false).map_err(|e| {
        EvalError::Io {
            path: root.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    let listed = (|| -> std::io::Result<Vec<String>> {
        let top = std::fs::File::open(&m.root)?;
        let tasks = crate::beneath::open_dir_beneath(top.as_fd(), "tasks")?;
        let mut ids = Vec::new();
        for name in crate::unpack::fsops::list(tasks.as_fd())? {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if !is_safe_id(&name) {
                continue;
            }
            // A directory (never through a link) holding a regular task.json.
            let has_spec = crate::beneath::open_dir_beneath(tasks.as_fd(), &name)
                .and_then(|d| {
                    rustix::fs::statat(&d, "task.json", rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(std::io::Error::from)
                })
                .is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::RegularFile
                });
            if has_spec {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    })();
    if let Err(e) = rootfs::teardown(&m) {
        tracing::warn!(error = %e, "could not take down the tree the tasks were listed from");
    }
    listed.map_err(io(&root.join("tasks")))
}

/// Where a task's run goes: `OUT/tasks/<id>`.
pub fn task_out(out: &Path, id: &str) -> PathBuf {
    out.join("tasks").join(id)
}

/// A task's result.json in `out`, if it has a valid one.
pub fn read_result(out: &Path, id: &str) -> Option<TaskResult> {
    let path = task_out(out, id).join("task/result.json");
    TaskResult::from_json(&std::fs::read_to_string(path).ok()?).ok()
}

/// The result of a task that need not run again: complete, no
/// infrastructure error, and made from the plan's digests.
pub fn completed(out: &Path, task: &PlannedTask) -> Option<TaskResult> {
    let r = read_result(out, &task.id)?;
    let pinned = |found: &str, pin: &Pin| pin.digest.as_deref() == Some(found);
    let same = r.task_id == task.id
        && pinned(&r.images.benchmark.digest, &task.benchmark)
        && pinned(&r.images.agent.digest, &task.agent)
        && match (&r.images.gateway, &task.gateway) {
            (None, None) => true,
            (Some(g), Some(pin)) => pinned(&g.digest, pin),
            _ => false,
        };
    (same && r.infra_error.is_none()).then_some(r)
}

/// How many missing shards an error names.
pub const MISSING_SHOWN: usize = 10;

fn missing_shards(count: usize, first: &[String]) -> String {
    match count {
        0 => String::new(),
        n if n <= first.len() => format!(" (missing shards: {})", first.join(", ")),
        n => format!(" ({n} shards missing, first {})", first.join(", ")),
    }
}

/// One task of evaluations being merged (`hoist report DIR...`).
pub struct Gathered {
    pub id: String,
    pub result: Option<TaskResult>,
    /// Its place in the whole benchmark's order.
    pub position: usize,
}

/// The tasks of evaluations `dirs` (shards of one, or whole ones), each
/// from its `eval.json` and `tasks/<id>/task/result.json`, in the whole
/// plan's order (shard `I/N`'s `j`-th task is the benchmark's task
/// `I + j*N`), so that merged shards sum up as one evaluation would.
/// Fewer tasks than the plans' whole benchmark is an error (a shard whose
/// job died before writing anything), unless `partial`.
pub fn gather(dirs: &[PathBuf], partial: bool) -> Result<Vec<Gathered>, EvalError> {
    let mut all: Vec<Gathered> = Vec::new();
    let mut from: std::collections::HashMap<String, PathBuf> = Default::default();
    let mut total = 0;
    let mut shards: std::collections::BTreeMap<usize, BTreeSet<usize>> = Default::default();
    for dir in dirs {
        let path = dir.join("eval.json");
        let text = std::fs::read_to_string(&path).map_err(|source| EvalError::Io {
            path: path.clone(),
            source,
        })?;
        let plan: EvalPlan = serde_json::from_str(&text).map_err(|e| EvalError::BadPlan {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if plan.schema != PLAN_SCHEMA {
            return Err(EvalError::BadPlan {
                path,
                why: format!("schema {:?}, expected {PLAN_SCHEMA:?}", plan.schema),
            });
        }
        let (index, count) = plan.shard.map_or((0, 1), |s| (s.index, s.count));
        if count == 0 || index >= count {
            return Err(EvalError::BadPlan {
                path,
                why: format!("shard {index}/{count} is not I/N with 0 <= I < N"),
            });
        }
        total = total.max(plan.total_tasks);
        shards.entry(count).or_default().insert(index);
        for (j, t) in plan.tasks.iter().enumerate() {
            if let Some(first) = from.insert(t.id.clone(), dir.clone()) {
                return Err(EvalError::Duplicate {
                    id: t.id.clone(),
                    first,
                    second: dir.clone(),
                });
            }
            all.push(Gathered {
                id: t.id.clone(),
                result: read_result(dir, &t.id),
                // Saturating: a plan's numbers are whatever its file says.
                position: index.saturating_add(j.saturating_mul(count)),
            });
        }
    }
    if all.len() < total && !partial {
        // Shard I of N holds tasks I, I+N, ...: only the first `total`
        // shards hold any. Counted, and the first few named, without
        // walking an N that may be as large as a plan's file says.
        let (mut missing_count, mut missing) = (0usize, Vec::new());
        for (&count, have) in &shards {
            let holding = count.min(total);
            let present = have.iter().filter(|&&i| i < holding).count();
            missing_count = missing_count.saturating_add(holding - present);
            let room = MISSING_SHOWN.saturating_sub(missing.len());
            missing.extend(
                (0..holding)
                    .filter(|i| !have.contains(i))
                    .take(room)
                    .map(|i| format!("{i}/{count}")),
            );
        }
        return Err(EvalError::Incomplete {
            found: all.len(),
            total,
            missing_count,
            missing,
        });
    }
    all.sort_by_key(|g| g.position);
    Ok(all)
}

/// How one attempt at a task ended.
#[derive(Debug)]
pub enum Attempt {
    /// The run completed or ended with an infrastructure error; its
    /// result.json is written.
    Ran(Box<TaskResult>),
    /// A signal stopped it (its sandbox taken down).
    Interrupted(Interrupted),
}

/// What became of each task.
#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    /// None when a signal stopped the evaluation before the task ran.
    pub result: Option<TaskResult>,
    /// Kept from an earlier evaluation, not run now.
    pub resumed: bool,
    pub attempts: u32,
}

/// How [`run_all`] runs.
pub struct Schedule {
    pub jobs: usize,
    /// How many tasks ahead of the running ones have their images pulled
    /// while those run (0: none).
    pub prefetch: usize,
    /// Further tries of a task that ended with an infrastructure error.
    pub retries: u32,
    /// The pause before the first retry; doubled each time, at most 5 min.
    pub backoff: Duration,
    /// Run even what is complete (`--rerun`).
    pub rerun: bool,
}

/// What an evaluation does to its store around the tasks.
pub trait Housekeeping: Sync {
    /// Pull a task's images before its turn. A failure is the task's to
    /// meet (and retry) when it runs.
    fn prefetch(&self, task: &PlannedTask);
    /// After a task ended; `needed` are the tasks still running or not
    /// yet started, whose images must stay.
    fn tidy(&self, needed: &[&PlannedTask]);
}

/// No prefetching, no limit on the store.
pub struct NoHousekeeping;

impl Housekeeping for NoHousekeeping {
    fn prefetch(&self, _: &PlannedTask) {}
    fn tidy(&self, _: &[&PlannedTask]) {}
}

/// Run the plan's tasks, `schedule.jobs` at a time. `attempt` runs one
/// task into `task_out(out, id)` (and must leave its result.json there);
/// `note` hears each task's start and end, for the progress lines;
/// `keeper` pulls the next `schedule.prefetch` tasks' images ahead and
/// tidies the store after each task.
pub fn run_all(
    out: &Path,
    plan: &EvalPlan,
    schedule: &Schedule,
    attempt: &(dyn Fn(&PlannedTask) -> Attempt + Sync),
    note: &(dyn Fn(Event<'_>) + Sync),
    keeper: &dyn Housekeeping,
) -> (Vec<Outcome>, Option<Interrupted>) {
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Option<Outcome>>> =
        Mutex::new((0..plan.tasks.len()).map(|_| None).collect());
    let stopped: Mutex<Option<Interrupted>> = Mutex::new(None);
    let total = plan.tasks.len();
    let done = AtomicUsize::new(0);
    let running: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());
    // No more workers than tasks: the rest would find none.
    let workers = schedule.jobs.clamp(1, total.max(1));
    let workers_left = AtomicUsize::new(workers);
    // The tasks whose images must stay: running, or not yet started.
    let tidy = || {
        // Read together with the task being taken (below), so a task is
        // always either pending or running.
        let (from, running) = {
            let r = running.lock().unwrap_or_else(|e| e.into_inner());
            (next.load(Ordering::SeqCst), r.clone())
        };
        let needed: Vec<&PlannedTask> = running
            .iter()
            .chain(&(from..total).collect::<Vec<_>>())
            .filter_map(|&k| plan.tasks.get(k))
            .collect();
        keeper.tidy(&needed);
    };
    // Pulls the images of the tasks after the running ones, at most
    // `prefetch` ahead of the next to start, while any worker runs.
    let prefetcher = || {
        let mut k = 0;
        while k < total && workers_left.load(Ordering::SeqCst) > 0 {
            if crate::interrupt::pending().is_some() {
                return;
            }
            let started = next.load(Ordering::SeqCst);
            if k < started {
                k = started;
                continue;
            }
            if k >= started.saturating_add(schedule.prefetch) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let task = &plan.tasks[k];
            if schedule.rerun || completed(out, task).is_none() {
                keeper.prefetch(task);
            }
            k += 1;
        }
    };
    let worker = || loop {
        if let Err(sig) = crate::interrupt::check() {
            stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(sig);
            return;
        }
        let k = {
            let mut r = running.lock().unwrap_or_else(|e| e.into_inner());
            let k = next.fetch_add(1, Ordering::SeqCst);
            r.insert(k);
            k
        };
        let Some(task) = plan.tasks.get(k) else {
            return;
        };
        let outcome = match (!schedule.rerun).then(|| completed(out, task)).flatten() {
            Some(r) => Outcome {
                id: task.id.clone(),
                result: Some(r),
                resumed: true,
                attempts: 0,
            },
            None => match run_one(task, schedule, attempt, note) {
                Ok(o) => o,
                Err(sig) => {
                    stopped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(sig);
                    // The run it stopped says so in its result.json.
                    let result = read_result(out, &task.id);
                    let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                    o[k] = Some(Outcome {
                        id: task.id.clone(),
                        result,
                        resumed: false,
                        attempts: 1,
                    });
                    return;
                }
            },
        };
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        note(Event::Ended {
            task,
            outcome: &outcome,
            done: n,
            total,
        });
        let ran = !outcome.resumed;
        outcomes.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(outcome);
        running.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
        if ran {
            tidy();
        }
    };
    std::thread::scope(|s| {
        let work = || {
            worker();
            workers_left.fetch_sub(1, Ordering::SeqCst);
        };
        // This thread is a worker too.
        let others = spawn_many(s, workers - 1, work, "task workers");
        workers_left.fetch_sub(workers - 1 - others, Ordering::SeqCst);
        if schedule.prefetch > 0 {
            spawn_many(s, 1, prefetcher, "the prefetcher");
        }
        work();
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    let list = outcomes
        .into_iter()
        .zip(&plan.tasks)
        .map(|(o, t)| {
            o.unwrap_or_else(|| Outcome {
                id: t.id.clone(),
                result: None,
                resumed: false,
                attempts: 0,
            })
        })
        .collect();
    (
        list,
        stopped.into_inner().unwrap_or_else(|e| e.into_inner()),
    )
}

/// Start `n` threads of `f` in `s`, or as many as the system gives
/// (`--jobs` may ask for any number), saying so; how many started.
fn spawn_many<'scope, F>(
    s: &'scope std::thread::Scope<'scope, '_>,
    n: usize,
    f: F,
    what: &str,
) -> usize
where
    F: Fn() + Copy + Send + 'scope,
{
    for started in 0..n {
        if let Err(e) = std::thread::Builder::new().spawn_scoped(s, f) {
            tracing::warn!("started {started} of {n} threads for {what}: {e}");
            return started;
        }
    }
    n
}

/// One task, retried after an infrastructure error.
fn run_one(
    task: &PlannedTask,
    schedule: &Schedule,
    attempt: &(dyn Fn(&PlannedTask) -> Attempt + Sync),
    note: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Outcome, Interrupted> {
    let mut pause = schedule.backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        note(Event::Started {
            task,
            attempt: tries,
        });
        let result = match attempt(task) {
            Attempt::Ran(r) => *r,
            Attempt::Interrupted(sig) => return Err(sig),
        };
        if result.infra_error.is_none() || tries > schedule.retries {
            return Ok(Outcome {
                id: task.id.clone(),
                result: Some(result),
                resumed: false,
                attempts: tries,
            });
        }
        note(Event::Retrying {
            task,
            after: pause,
            stage: result.infra_error.as_ref().map(|e| e.stage),
            why: result
                .infra_error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        });
        sleep_unless_interrupted(pause)?;
        pause = (pause * 2).min(Duration::from_secs(300));
    }
}

fn sleep_unless_interrupted(d: Duration) -> Result<(), Interrupted> {
    let end = std::time::Instant::now() + d;
    loop {
        crate::interrupt::check()?;
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// What [`run_all`] tells its caller as it goes.
pub enum Event<'a> {
    Started {
        task: &'a PlannedTask,
        attempt: u32,
    },
    Retrying {
        task: &'a PlannedTask,
        after: Duration,
        /// Where the infrastructure error happened.
        stage: Option<crate::result::Stage>,
        why: String,
    },
    Ended {
        task: &'a PlannedTask,
        outcome: &'a Outcome,
        done: usize,
        total: usize,
    },
}

/// The default `--jobs`: one run per core, but no more than one per 2 GiB
/// of memory (per `--memory` when given), and at least one.
pub fn default_jobs(memory_per_run: Option<u64>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = rustix::system::sysinfo();
    let total = mem.totalram.saturating_mul(u64::from(mem.mem_unit));
    let per = memory_per_run.unwrap_or(2 << 30).max(1);
    cores
        .min(usize::try_from(total / per).unwrap_or(usize::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_file_names_its_line_when_wrong() {
        let p = Path::new("tasks.jsonl");
        let ok = parse_tasks(
            p,
            "# a comment\n{\"id\":\"a\",\"benchmark\":\"r/a\"}\n\n{\"id\":\"b\",\"benchmark\":\"r/b\",\"agent_timeout_sec\":5}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].agent_timeout_sec, Some(5));
        for (text, line, says) in [
            ("{\"id\":\"a\"}", 1, "benchmark"),
            (
                "{\"id\":\"../x\",\"benchmark\":\"r\"}",
                1,
                "not a plain name",
            ),
            (
                "{\"id\":\"a\",\"benchmark\":\"r\"}\n{\"id\":\"a\",\"benchmark\":\"s\"}",
                2,
                "twice",
            ),
            (
                "{\"id\":\"a\",\"benchmark\":\"r\",\"agnet\":\"x\"}",
                1,
                "agnet",
            ),
            ("not json", 1, "expected"),
            ("", 0, "no task"),
        ] {
            let e = parse_tasks(p, text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("tasks.jsonl:{line}: ")), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn shards_take_every_nth_task() {
        let s = Shard::parse("1/3").unwrap();
        let taken: Vec<usize> = (0..8).filter(|&k| s.takes(k)).collect();
        assert_eq!(taken, [1, 4, 7]);
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_shard_comes_from_slurm_or_an_indexed_job() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Shard::from_env(env(&[]), 10).unwrap(), None);
        assert_eq!(
            Shard::from_env(
                env(&[
                    ("SLURM_ARRAY_TASK_ID", "2"),
                    ("SLURM_ARRAY_TASK_COUNT", "4")
                ]),
                10
            )
            .unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        assert_eq!(
            Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "7")]), 10).unwrap(),
            Some(Shard {
                index: 7,
                count: 10
            })
        );
        let e = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "10")]), 10).unwrap_err();
        assert!(e.to_string().contains("past the last task"), "{e}");
        let e = Shard::from_env(
            env(&[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ]),
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("SLURM_ARRAY_TASK_COUNT"), "{e}");
    }

    #[test]
    fn default_jobs_is_at_least_one() {
        assert!(default_jobs(None) >= 1);
        assert_eq!(default_jobs(Some(u64::MAX)), 1);
    }

    /// An evaluation directory whose eval.json plans `ids` as shard
    /// `index`/`count` of `total` tasks.
    fn plan_dir(index: usize, count: usize, total: usize, ids: &[&str]) -> tempfile::TempDir {
        let pin = serde_json::json!({"ref": "oci:/x:y", "digest": null});
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                serde_json::json!({"id": id, "benchmark": pin, "agent": pin,
                                          "gateway": null, "agent_timeout_sec": null})
            })
            .collect();
        let plan = serde_json::json!({"schema": PLAN_SCHEMA, "created_at": "t", "mode": "crane",
            "shard": {"index": index, "count": count}, "total_tasks": total, "tasks": tasks});
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("eval.json"), plan.to_string()).unwrap();
        dir
    }

    fn gather_err(dir: &tempfile::TempDir) -> EvalError {
        match gather(&[dir.path().to_path_buf()], false) {
            Err(e) => e,
            Ok(all) => panic!("gathered {} tasks", all.len()),
        }
    }

    #[test]
    fn a_plan_with_absurd_shards_is_refused_or_counted_not_walked() {
        let bad = plan_dir(usize::MAX, 2, 2, &["a", "b"]);
        let e = gather_err(&bad);
        assert!(matches!(e, EvalError::BadPlan { .. }), "{e}");
        assert!(e.to_string().contains("is not I/N"), "{e}");

        let huge = plan_dir(0, usize::MAX, usize::MAX, &["a", "b"]);
        match gather_err(&huge) {
            EvalError::Incomplete {
                missing_count,
                missing,
                ..
            } => {
                assert_eq!(missing_count, usize::MAX - 1);
                assert_eq!(missing.len(), MISSING_SHOWN);
                assert_eq!(missing[0], format!("1/{}", usize::MAX));
            }
            e => panic!("{e}"),
        }
        let all = gather(&[huge.path().to_path_buf()], true).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn only_shards_that_hold_tasks_can_be_missing() {
        // Three tasks in four shards: shard 3 holds none.
        let first = plan_dir(0, 4, 3, &["a"]);
        let e = gather_err(&first);
        assert!(e.to_string().contains("(missing shards: 1/4, 2/4)"), "{e}");
    }
}
