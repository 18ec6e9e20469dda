//! `hoist run --mode container` (docs/pipeline.md): the same task pipeline as
//! crane mode, run by the Docker Engine in the combination image.
//!
//! The image is made ready first ([`prepare`]): baked from the axes and
//! loaded (`docker load` of a `docker save` archive; skipped when Docker
//! already has that exact image), pulled by digest from a registry, or
//! loaded from a combination in the store. Its axis labels must name the
//! axes of the run, so a stale combination cannot pass for another.
//!
//! Then [`run`] starts the supervisor in it with the docker CLI, by image
//! ID, so the image recorded in `run.json` is the image that ran:
//! `--network none` unless asked otherwise, the run context (and
//! `--recordings`) bind-mounted read-only, and the same surroundings crane
//! mode's namespaces give (tmpfs `/tmp` and `/run`, no new privileges, 1024
//! pids, hostname `hoist`, 4096 open files). No host directory is mounted
//! read-write: the supervisor writes `/output/task` inside the container,
//! and when it has ended `docker cp` streams that directory out as a tar,
//! from which [`crate::export`] takes the regular files into `OUT/task`.
//! The supervisor enforces the task's timeouts; a backstop
//! ([`orchestrate::backstop`], from the same timeouts, read from the
//! container's `/tasks` before it starts) kills the container if it hangs. The container is removed in every case:
//! success, failure, timeout, SIGINT, SIGTERM or SIGHUP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use crate::bake::{self, BakeError, BakeInputs, Baked};
use crate::digest::Digest;
use crate::export::{self, ExportError, ExportReport, OutDir};
use crate::orchestrate::{
    self, host_info, run_sessions, totals, Backend, DockerFacts, Durations, OrchestrateError,
    RunRecord, SessionRan, SessionRecord, SessionSpec, Sessions, Start, Stopped, Timeouts, Tree,
};
use crate::phase::{self, Logs, Phase, PhaseHook};
use crate::pipeline::clock::rfc3339;
use crate::pipeline::context::{self as ctx, RunContext};
use crate::pull::Pulled;
use crate::reference::RegistryRef;
use crate::sandbox::cgroup::RunLimits;
use crate::sandbox::{Isolation, Limits, Network};
use crate::store::{Store, StoreError};

/// The repository baked combinations are loaded into Docker as; the tag
/// is the start of the manifest digest.
pub const LOADED_REPOSITORY: &str = "hoist/combination";

const CRANE_HINT: &str =
    "container mode needs a running Docker Engine; crane mode (--mode crane) needs no daemon";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot run the docker CLI {program}: {source}; {CRANE_HINT}")]
    NoDocker {
        program: String,
        source: std::io::Error,
    },
    #[error("the Docker daemon does not answer ({message}); {CRANE_HINT}")]
    DaemonDown { message: String },
    #[error("`docker {what}` failed (exit {code}): {message}")]
    Docker {
        what: String,
        code: i32,
        message: String,
    },
    #[error(transparent)]
    Bake(#[from] BakeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the image {image} was baked with {axis} {found}, but this run's {axis} is {expected}; bake the combination again or pass the axes it was baked from")]
    ImageMismatch {
        image: String,
        axis: String,
        expected: String,
        found: String,
    },
    #[error(
        "docker start failed (exit {code}) before the supervisor started; Docker's message is above"
    )]
    RunFailed { code: i32 },
    /// The sessions' hand-over and result, the run record (shared with
    /// crane mode).
    #[error(transparent)]
    Orchestrate(#[from] OrchestrateError),
    #[error("the container did not finish within {0:?}; it was killed and removed")]
    Timeout(Duration),
    #[error("{0}; the container was removed")]
    Interrupted(#[from] crate::interrupt::Interrupted),
    #[error("{0}")]
    Strict(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The docker CLI, checked to reach a daemon.
#[derive(Clone, Debug)]
pub struct Docker {
    program: String,
}

/// What Docker says about an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerImage {
    /// `sha256:…` of the config: the image Docker runs.
    pub id: String,
    pub repo_digests: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectImage {
    id: String,
    #[serde(default)]
    repo_digests: Option<Vec<String>>,
    #[serde(default)]
    config: Option<InspectConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

impl Docker {
    /// `HOIST_DOCKER`, else `docker` on PATH; fails with a message naming
    /// crane mode when the CLI is missing or the daemon does not answer.
    pub fn detect() -> Result<Docker, ContainerError> {
        let program = std::env::var("HOIST_DOCKER").unwrap_or_else(|_| "docker".into());
        let d = Docker { program };
        let out = d.run(&["version", "--format", "{{.Server.Version}}"])?;
        if !out.status.success() {
            return Err(ContainerError::DaemonDown {
                message: last_line(&out.stderr),
            });
        }
        Ok(d)
    }

    /// Run `docker ARGS` and capture its output, whatever its exit status;
    /// only a CLI that cannot be started is an error.
    fn run(&self, args: &[&str]) -> Result<Output, ContainerError> {
        Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ContainerError::NoDocker {
                program: self.program.clone(),
                source,
            })
    }

    /// Run `docker ARGS`, capturing its output; a failure quotes stderr.
    fn output(&self, args: &[&str]) -> Result<Output, ContainerError> {
        let out = self.run(args)?;
        if out.status.success() {
            return Ok(out);
        }
        Err(ContainerError::Docker {
            what: args.first().copied().unwrap_or_default().to_string(),
            code: out.status.code().unwrap_or(-1),
            message: last_line(&out.stderr),
        })
    }

    /// The image `reference` names, or `None` when Docker does not have it.
    pub fn inspect_image(&self, reference: &str) -> Result<Option<DockerImage>, ContainerError> {
        let out = self.run(&["image", "inspect", reference])?;
        if !out.status.success() {
            return Ok(None);
        }
        let parsed: Vec<InspectImage> =
            serde_json::from_slice(&out.stdout).map_err(|e| ContainerError::Docker {
                what: "image inspect".into(),
                code: 0,
                message: format!("unexpected output: {e}"),
            })?;
        Ok(parsed.into_iter().next().map(|i| DockerImage {
            id: i.id,
            repo_digests: i.repo_digests.unwrap_or_default(),
            labels: i.config.and_then(|c| c.labels).unwrap_or_default(),
        }))
    }

    pub fn load(&self, archive: &Path) -> Result<(), ContainerError> {
        let path = archive.to_string_lossy();
        self.output(&["load", "-q", "-i", &path]).map(drop)
    }

    pub fn pull(&self, reference: &str) -> Result<(), ContainerError> {
        self.output(&["pull", "-q", reference]).map(drop)
    }

    /// `hoist gc --docker`: remove the combination images hoist loaded
    /// (`hoist/combination:*`) that no container uses. Docker itself
    /// refuses to remove an image a container (running or stopped) was
    /// made from; those are kept and named. Returns (removed, kept).
    pub fn remove_combinations(&self) -> Result<(Vec<String>, Vec<String>), ContainerError> {
        let filter = format!("reference={LOADED_REPOSITORY}");
        let out = self.output(&[
            "images",
            "--filter",
            &filter,
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])?;
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for tag in String::from_utf8_lossy(&out.stdout).lines() {
            let tag = tag.trim();
            if tag.is_empty() || tag.ends_with(":<none>") {
                continue;
            }
            let o = self.run(&["rmi", tag])?;
            if o.status.success() {
                removed.push(tag.to_string());
            } else {
                tracing::info!(image = tag, why = %last_line(&o.stderr), "kept");
                kept.push(tag.to_string());
            }
        }
        Ok((removed, kept))
    }

    /// `docker rm -f NAME`; a container already gone is fine.
    fn remove(&self, name: &str) {
        match self.run(&["rm", "-f", name]) {
            Ok(o) if o.status.success() => {}
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No such container") => {}
            Ok(o) => {
                tracing::warn!(container = name, error = %last_line(&o.stderr), "could not remove the container")
            }
            Err(e) => {
                tracing::warn!(container = name, error = %e, "could not remove the container")
            }
        }
    }
}

/// The last non-empty line of a tool's stderr, for an error message.
fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// The axes of a run, already pulled.
pub struct Axes<'a> {
    pub benchmark: &'a Pulled,
    pub agent: &'a Pulled,
    pub gateway: Option<&'a Pulled>,
}

/// Where the combination image comes from.
pub enum ImageSource<'a> {
    /// Bake it from the axes with this static hoist binary.
    Bake { hoist_binary: &'a Path, epoch: u64 },
    /// A combination in a registry, pinned to a digest hoist resolved.
    Registry(RegistryRef),
    /// A combination complete in the store (pulled from an `oci:` layout).
    Stored(&'a Pulled),
}

/// The image Docker will run.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The reference it was loaded or pulled as.
    pub reference: String,
    pub image: DockerImage,
    /// The manifest digest, when hoist baked or read the image.
    pub manifest_digest: Option<Digest>,
    pub elapsed: Duration,
}

/// Make the combination image ready in Docker, and check that it was
/// baked from `axes`.
pub fn prepare(
    docker: &Docker,
    store: &Store,
    axes: &Axes<'_>,
    source: &ImageSource<'_>,
) -> Result<Prepared, ContainerError> {
    let t = Instant::now();
    let (reference, manifest_digest) = match source {
        ImageSource::Bake {
            hoist_binary,
            epoch,
        } => {
            let inputs = BakeInputs {
                benchmark: axes.benchmark,
                agent: axes.agent,
                gateway: axes.gateway,
                hoist_binary,
                epoch: *epoch,
            };
            // Held until the archive is written: gc must leave the
            // unrecorded blobs of this bake alone.
            let _gc = store.gc_lock_shared()?;
            let baked = bake::bake(store, &inputs, None)?;
            (
                load_baked(docker, store, &baked)?,
                Some(baked.manifest_digest),
            )
        }
        ImageSource::Stored(p) => {
            let _gc = store.gc_lock_shared()?;
            let baked = Baked::from_pulled(store, p)?;
            (
                load_baked(docker, store, &baked)?,
                Some(baked.manifest_digest),
            )
        }
        ImageSource::Registry(r) => {
            let reference = format!("{}/{}", r.registry, r.repository);
            let pinned = match &r.digest {
                Some(d) => format!("{reference}@{d}"),
                None => reference,
            };
            if docker.inspect_image(&pinned)?.is_none() {
                docker.pull(&pinned)?;
            }
            (pinned, None)
        }
    };
    let image = docker
        .inspect_image(&reference)?
        .ok_or_else(|| ContainerError::Docker {
            what: "image inspect".into(),
            code: 1,
            message: format!("{reference} is not in Docker after loading it"),
        })?;
    check_labels(&reference, &image, axes)?;
    Ok(Prepared {
        reference,
        image,
        manifest_digest,
        elapsed: t.elapsed(),
    })
}

/// Load `baked` into Docker as `hoist/combination:HEX16`, unless Docker
/// has that tag for this exact config already.
fn load_baked(docker: &Docker, store: &Store, baked: &Baked) -> Result<String, ContainerError> {
    let reference = format!("{LOADED_REPOSITORY}:{}", &baked.manifest_digest.hex()[..16]);
    let want = baked.config_digest.to_string();
    if docker
        .inspect_image(&reference)?
        .is_some_and(|i| i.id == want)
    {
        tracing::debug!(%reference, "Docker has the combination already");
        return Ok(reference);
    }
    let dir = work_dir(store, "load-")?;
    let archive = dir.path().join("image.tar");
    bake::write_docker_archive(store, baked, &archive, Some(&reference))?;
    docker.load(&archive)?;
    Ok(reference)
}

/// The axis labels of the image must name this run's axes.
pub fn check_labels(
    image: &str,
    found: &DockerImage,
    axes: &Axes<'_>,
) -> Result<(), ContainerError> {
    let wanted = [
        ("benchmark", Some(axes.benchmark)),
        ("agent", Some(axes.agent)),
        ("gateway", axes.gateway),
    ];
    for (axis, pulled) in wanted {
        let (_, key) = bake::image::axis_keys(axis);
        let expected = pulled.map(|p| p.digest.to_string());
        let label = found.labels.get(&key).cloned();
        if label != expected {
            return Err(ContainerError::ImageMismatch {
                image: image.to_string(),
                axis: axis.to_string(),
                expected: expected.unwrap_or_else(|| "none".into()),
                found: label.unwrap_or_else(|| "none".into()),
            });
        }
    }
    Ok(())
}

fn work_dir(store: &Store, prefix: &str) -> Result<tempfile::TempDir, ContainerError> {
    let base = store.root().join("work");
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(io(&base))
}

/// One container-mode run, the image prepared.
pub struct ContainerRequest<'a> {
    pub axes: Axes<'a>,
    pub task: Option<String>,
    /// `--out`, claimed for this run (see [`OutDir::claim`]).
    pub out: &'a OutDir,
    pub network: Network,
    pub recordings: Option<PathBuf>,
    pub agent_timeout_sec: Option<u64>,
    pub grade_timeout_sec: Option<u64>,
    /// `--memory`: the container's memory in bytes, swap excluded.
    pub memory: Option<u64>,
    /// The lock file checked (`--locked`), for run.json.
    pub lock_file: Option<PathBuf>,
    pub command_line: Vec<String>,
    pub pull_ms: u64,
    /// `--isolation strict`: refuse to run with anything in
    /// `not_isolated`, here and in the supervisor.
    pub strict: bool,
    /// Told as each phase begins (see [`crate::phase`]); the caller tells
    /// [`Phase::Fuse`] before [`prepare`].
    pub phase: Option<PhaseHook>,
}

/// The limits of the run: the sandbox's defaults and `--memory`.
fn limits(req: &ContainerRequest<'_>) -> Limits {
    Limits {
        max_memory: req.memory,
        ..Limits::default()
    }
}

fn images_json(axes: &Axes<'_>) -> Value {
    crate::pull::images_json(axes.benchmark, axes.agent, axes.gateway)
}

/// The run context: the axes' references and digests, exactly as crane
/// mode records them, so the two modes' result.json compare equal.
fn context(
    req: &ContainerRequest<'_>,
    prepare_ms: u64,
    session: ctx::Session,
    gateway_port: u16,
) -> RunContext {
    RunContext {
        // Both sides are the same three records: this cannot fail.
        images: serde_json::from_value(images_json(&req.axes)).unwrap_or_default(),
        platform: req.axes.benchmark.platform.to_string(),
        mode: ctx::Mode::Container,
        isolation: ctx::Isolation::Namespaces,
        network: match req.network {
            Network::None => ctx::Network::None,
            Network::Host => ctx::Network::Host,
        },
        // Only the gateway's container gets them.
        recordings: req.recordings.is_some() && session == ctx::Session::Gateway,
        materialize_ms: prepare_ms,
        agent_timeout_sec: req.agent_timeout_sec,
        grade_timeout_sec: req.grade_timeout_sec,
        gateway_port,
        landlock_abi_max: crate::confine::abi_pin_from_env(),
        strict: req.strict,
        session,
        ..RunContext::default()
    }
}

/// A container's network: its own (`--network none|host`), or that of the
/// run's gateway container, so the agent reaches it on loopback.
#[derive(Clone, Copy, Debug)]
pub enum Net<'a> {
    Own(Network),
    Join(&'a str),
}

/// The label naming the `--out` a container's results go to (for people
/// and tests looking for the container of a run; nothing reads it back).
pub const OUT_LABEL: &str = "io.github.hoist.out";

/// The `docker create` arguments (after `docker`), pure. The limits are
/// the ones crane mode's sandbox sets, so both modes bound a run alike.
/// Nothing of the host is mounted writable: `/output` is the container's
/// own, copied out after the run; `read_only` (host path, path inside:
/// the context, the recordings, the grading session's changes) are bound
/// read-only (a read-only bind carries nothing back, and needs no `docker
/// cp` into the container before it starts). `out` only labels the
/// container.
pub fn run_args(
    name: &str,
    network: Net<'_>,
    limits: &Limits,
    out: &Path,
    read_only: &[(&Path, &str)],
    image_id: &str,
    task: Option<&str>,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "create",
        "--name",
        name,
        "--label",
        "io.github.hoist.run=1",
        "--label",
    ]
    .map(String::from)
    .to_vec();
    a.push(format!("{OUT_LABEL}={}", out.display()));
    match network {
        Net::Own(Network::None) => {
            a.extend(["--network", "none", "--hostname", "hoist"].map(String::from))
        }
        // Docker refuses a hostname with the host's network or another
        // container's.
        Net::Own(Network::Host) => a.extend(["--network", "host"].map(String::from)),
        Net::Join(gateway) => a.extend(["--network".into(), format!("container:{gateway}")]),
    }
    a.extend([
        "--pids-limit".into(),
        limits.max_pids.to_string(),
        "--ulimit".into(),
        format!("nofile={0}:{0}", limits.max_open_files),
    ]);
    if let Some(m) = limits.max_memory {
        // --memory-swap is memory plus swap: the same value means no swap,
        // as crane mode's cgroup.
        a.extend([
            "--memory".into(),
            m.to_string(),
            "--memory-swap".into(),
            m.to_string(),
        ]);
    }
    a.extend(
        [
            "--security-opt",
            "no-new-privileges",
            "--user",
            "0:0",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,mode=1777",
            "--tmpfs",
            "/run:rw,nosuid,nodev,mode=755",
            "--entrypoint",
            "/.hoist/hoist",
        ]
        .map(String::from),
    );
    for (host, inside) in read_only {
        a.push("-v".into());
        a.push(format!("{}:{inside}:ro", host.display()));
    }
    a.push(image_id.into());
    a.extend(["task-exec", "--context", ctx::CONTEXT_PATH].map(String::from));
    if let Some(t) = task {
        a.extend(["--task".to_string(), t.to_string()]);
    }
    a
}

/// Removes the container when dropped, whatever happened.
struct Cleanup<'a> {
    docker: &'a Docker,
    name: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.docker.remove(&self.name);
    }
}

enum Ended {
    Exited(i32),
    Signal(crate::interrupt::Interrupted),
    Timeout,
}

/// Run the task in the prepared image; returns result.json and run.json.
pub fn run(
    docker: &Docker,
    store: &Store,
    req: &ContainerRequest<'_>,
    image: &Prepared,
) -> Result<(Value, RunRecord), ContainerError> {
    let started = Instant::now();
    let started_at = rfc3339(SystemTime::now());
    let requested = if req.strict {
        Isolation::Strict
    } else {
        Isolation::Auto
    };
    orchestrate::refuse_gaps_when_strict(
        requested,
        Isolation::Namespaces,
        &Isolation::Namespaces.not_isolated(req.network),
    )?;
    // From here the run has containers: a signal is the run's to act on.
    let _region = crate::interrupt::Region::enter()?;
    let out = req.out;
    let task_dir = out.subdir("task")?;
    orchestrate::clear_stale(&task_dir, &Start::Agent)?;
    let out_label = std::fs::canonicalize(out.path()).map_err(io(out.path()))?;
    let work = work_dir(store, "container-")?;
    let prepare_ms = image.elapsed.as_millis() as u64;
    let backend = Plan {
        docker,
        gateway_port: ctx::gateway_port(req.network == Network::Host),
        req,
        image,
        work: work.path(),
        out_label: &out_label,
        prepare_ms,
        task_timeouts: std::cell::OnceCell::new(),
    };
    let images = images_json(&req.axes);
    let facts = Stopped {
        task: req.task.as_deref(),
        images: &images,
        platform: req.axes.benchmark.platform.to_string(),
        mode: "container",
        isolation: "docker",
        started_at: &started_at,
    };
    let Sessions {
        ran: sessions,
        interrupted,
    } = run_sessions(
        &backend,
        Start::Agent,
        &task_dir,
        work.path(),
        &facts,
        req.phase.as_ref(),
    )?;
    let t = totals(sessions, interrupted);
    let record = RunRecord {
        schema: "hoist.run/v1",
        command_line: req.command_line.clone(),
        mode: "container",
        isolation: Isolation::Namespaces.as_str(),
        not_isolated: Isolation::Namespaces.not_isolated(req.network),
        // Docker's own user namespace remapping is off by default; it drops
        // root's capabilities to its default set instead.
        user_namespace: false,
        rootless: crate::userns::entered().cloned(),
        not_reproduced: Default::default(),
        limits: RunLimits::docker(&limits(req)),
        network: req.network,
        rootfs: Tree::Docker,
        images,
        lock_file: req.lock_file.clone(),
        host: host_info(),
        hoist_version: env!("CARGO_PKG_VERSION"),
        started_at,
        durations_ms: Durations {
            pull: req.pull_ms,
            materialize: prepare_ms,
            sandbox: t.sandbox_ms,
            total: req.pull_ms + prepare_ms + started.elapsed().as_millis() as u64,
        },
        supervisor_exit_code: t.exit_code,
        interrupted: interrupted.map(|s| s.name()),
        sessions: t.sessions,
        output: t.output,
        docker: Some(DockerFacts {
            docker_containers: t.containers,
            docker_image: image.reference.clone(),
            docker_image_id: image.image.id.clone(),
            docker_repo_digests: image.image.repo_digests.clone(),
            combination_manifest_digest: image.manifest_digest.as_ref().map(|d| d.to_string()),
        }),
    };
    let result = orchestrate::finish(out, &task_dir, "run.json", &record)?;
    Ok((result, record))
}

/// What both containers of a run share.
struct Plan<'a> {
    docker: &'a Docker,
    /// One port for the run: the gateway's container and the agent's
    /// share it.
    gateway_port: u16,
    req: &'a ContainerRequest<'a>,
    image: &'a Prepared,
    work: &'a Path,
    out_label: &'a Path,
    /// Time spent baking and loading the image: result.json's
    /// `materialize`.
    prepare_ms: u64,
    /// The task's own timeouts, read from the first container made
    /// (every session runs the same image and task).
    task_timeouts: std::cell::OnceCell<Option<Timeouts>>,
}

/// The run's gateway container while it runs.
struct GatewayContainer<'a> {
    cleanup: Cleanup<'a>,
}

impl GatewayContainer<'_> {
    /// Kill it (the agent session is over), copy its `gateway.log` into
    /// `task_dir`, remove it.
    fn finish(self, docker: &Docker, task_dir: &OutDir) -> Result<ExportReport, ContainerError> {
        if let Err(e) = docker.output(&["kill", &self.cleanup.name]) {
            // It may have exited already: the agent session reported that.
            tracing::debug!(error = %e, "docker kill of the gateway container");
        }
        copy_out(docker, &self.cleanup.name, task_dir)
    }
}

impl<'p> Plan<'p> {
    /// Create and start the gateway's container: a gateway session
    /// (`task-exec` serving only the gateway) in a fresh container of the
    /// image, on the run's network.
    fn gateway(&self, prepare_ms: u64) -> Result<GatewayContainer<'p>, ContainerError> {
        let mut context = context(
            self.req,
            prepare_ms,
            ctx::Session::Gateway,
            self.gateway_port,
        );
        context.recordings = self.req.recordings.is_some();
        let (name, args) =
            self.container_args("gateway", &context, Net::Own(self.req.network), None)?;
        let g = GatewayContainer {
            cleanup: Cleanup {
                docker: self.docker,
                name,
            },
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker.output(&argv)?;
        self.docker.output(&["start", &g.cleanup.name])?;
        Ok(g)
    }

    /// A new container's name and its `docker create` arguments, its
    /// context written to the run's work directory.
    fn container_args(
        &self,
        session: &str,
        context: &RunContext,
        net: Net<'_>,
        changes: Option<&Path>,
    ) -> Result<(String, Vec<String>), ContainerError> {
        let req = self.req;
        let context_path = self.work.join(format!("context-{session}.json"));
        crate::json::to_vec_pretty(context, "the run context")
            .map_err(std::io::Error::from)
            .and_then(|bytes| std::fs::write(&context_path, bytes))
            .map_err(io(&context_path))?;
        let mut read_only = vec![(context_path.as_path(), ctx::CONTEXT_PATH)];
        if let (Some(r), true) = (req.recordings.as_deref(), context.recordings) {
            read_only.push((r, "/recordings"));
        }
        if let Some(c) = changes {
            read_only.push((c, ctx::CHANGES_PATH));
        }
        let name = format!("hoist-{:016x}", rand::random::<u64>());
        let args = run_args(
            &name,
            net,
            &limits(req),
            self.out_label,
            &read_only,
            &self.image.image.id,
            req.task.as_deref(),
        );
        Ok((name, args))
    }
}

impl Plan<'_> {
    /// The run's timeouts: the overrides, else the task's own, read once
    /// from the created (not yet started) container `name`.
    fn timeouts(&self, name: &str) -> Timeouts {
        let task = *self
            .task_timeouts
            .get_or_init(|| task_timeouts_in(self.docker, name, self.req.task.as_deref()));
        let t = Timeouts::resolve(self.req.agent_timeout_sec, self.req.grade_timeout_sec, task);
        tracing::debug!(?t, read = task.is_some(), "the run's timeouts");
        t
    }
}

/// How much of `docker cp CONTAINER:/tasks -` is read for task.json: a
/// benchmark's /tasks holds small files; past this, the backstop assumes
/// [`Timeouts::UNREAD`].
const MAX_TASKS_TAR: u64 = 256 << 20;

/// The timeouts of the task the container `name` will pick, from its
/// `/tasks` (`docker cp` reads a created container's tree); `None`, said,
/// when they cannot be read.
fn task_timeouts_in(docker: &Docker, name: &str, requested: Option<&str>) -> Option<Timeouts> {
    let source = format!("{name}:/tasks");
    let child = Command::new(&docker.program)
        .args(["cp", &source, "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let found = match child {
        Ok(mut child) => {
            let found = child.stdout.take().and_then(|out| {
                orchestrate::tar_task_timeouts(std::io::Read::take(out, MAX_TASKS_TAR), requested)
            });
            // Done reading, whatever docker cp still has to write; it may
            // have ended already, which wait reports.
            let _ = child.kill();
            let _ = child.wait();
            found
        }
        Err(e) => {
            tracing::debug!(error = %e, "docker cp {source}");
            None
        }
    };
    if found.is_none() {
        tracing::warn!(
            container = name,
            "could not read the task's timeouts from {source}; the hang backstop assumes {:?}",
            Timeouts::UNREAD
        );
    }
    found
}

impl Plan<'_> {
    /// Tell the watch that the agent session's logs, copied into
    /// `OUT/task`, can be read, all of them at once: Docker keeps the
    /// container's `/output` to itself while it runs.
    fn logs_copied(&self, session: &ctx::Session, task_dir: &OutDir) {
        if *session != ctx::Session::Agent {
            return;
        }
        let hook = self.req.phase.as_ref();
        let logs = Logs::Readable {
            base: task_dir.path(),
            rel: "",
        };
        phase::logs(hook, logs);
        phase::logs(hook, Logs::Ended);
    }
}

impl Backend for Plan<'_> {
    type Error = ContainerError;

    fn interruption(e: &ContainerError) -> Option<crate::interrupt::Interrupted> {
        match e {
            ContainerError::Interrupted(sig) => Some(*sig),
            _ => None,
        }
    }

    /// Create a container of the image for the session (the agent
    /// session's gateway in one of its own first), start it, copy its
    /// `/output/task` into `OUT/task`, remove it.
    fn session(
        &self,
        spec: &SessionSpec<'_>,
        task_dir: &OutDir,
    ) -> Result<SessionRan, ContainerError> {
        let (docker, req) = (self.docker, self.req);
        let (name, session, changes) = (spec.name, spec.session.clone(), spec.changes);
        let prepare_ms = self.prepare_ms;
        if session == ctx::Session::Agent {
            // The host cannot see install.sh end and the agent start inside
            // the container (only `docker cp` after it ends reads its
            // /output): the whole session shows as `install`.
            phase::enter(req.phase.as_ref(), Phase::Install);
        }
        // The agent session's gateway runs in a container of its own, from
        // the untouched image, whose network the agent's container joins.
        let gateway = match (&session, req.axes.gateway) {
            (ctx::Session::Agent, Some(_)) => Some(self.gateway(prepare_ms)?),
            _ => None,
        };
        let mut context = context(req, prepare_ms, session, self.gateway_port);
        context.gateway_elsewhere = gateway.is_some();
        let (container, args) = self.container_args(
            name,
            &context,
            gateway
                .as_ref()
                .map_or(Net::Own(req.network), |g| Net::Join(&g.cleanup.name)),
            changes,
        )?;
        let t = Instant::now();
        // Made before the container, so that one half created is removed too.
        let cleanup = Cleanup {
            docker,
            name: container.clone(),
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        docker.output(&argv)?;
        let backstop = orchestrate::backstop(self.timeouts(&container));
        let start = ["start", "-a", container.as_str()].map(String::from);
        let ended = supervise(docker, &start, backstop);
        let container_ms = t.elapsed().as_millis() as u64;
        // Its log, whatever happened; then it goes.
        let gateway_name = gateway.as_ref().map(|g| g.cleanup.name.clone());
        let gateway_log = gateway.map(|g| g.finish(docker, task_dir));
        let ended = ended?;
        let gateway_log = match gateway_log {
            Some(Err(e)) => return Err(e),
            Some(Ok(report)) => Some(report),
            None => None,
        };
        match ended {
            Ended::Timeout => {
                // Kill first so the supervisor's processes stop at once; the
                // logs are still copied out, then the cleanup removes it.
                if let Err(e) = docker.output(&["kill", &container]) {
                    tracing::debug!(error = %e, "docker kill after the backstop");
                }
                if let Err(e) = copy_out(docker, &container, task_dir) {
                    tracing::warn!(error = %e, "could not copy the container's output");
                }
                self.logs_copied(&spec.session, task_dir);
                drop(cleanup);
                Err(ContainerError::Timeout(backstop))
            }
            Ended::Signal(sig) => {
                drop(cleanup);
                Err(ContainerError::Interrupted(sig))
            }
            Ended::Exited(code) => {
                let output = copy_out(docker, &container, task_dir);
                self.logs_copied(&spec.session, task_dir);
                drop(cleanup);
                let output = output?;
                // 125: the docker CLI or daemon failed; 126/127: the entry
                // point could not be run. Neither reached the supervisor.
                let handed_over = ["result.json", "agent.json"]
                    .iter()
                    .any(|f| output.copied.iter().any(|n| n == f));
                if matches!(code, 125..=127) && !handed_over {
                    return Err(ContainerError::RunFailed { code });
                }
                let mut output = output;
                if let Some(g) = gateway_log {
                    output.copied.extend(g.copied);
                    output.skipped.extend(g.skipped);
                    output.bytes += g.bytes;
                }
                Ok(SessionRan {
                    record: SessionRecord {
                        session: name,
                        rootfs: None,
                        materialize_ms: 0,
                        sandbox_ms: container_ms,
                        supervisor_exit_code: code,
                    },
                    limits: None,
                    not_reproduced: Default::default(),
                    output,
                    containers: gateway_name.into_iter().chain([container]).collect(),
                })
            }
        }
    }
}

/// `docker cp NAME:/output/task -` into `task_dir`, through
/// [`export::extract_tar`]: only plain regular files, 0644, bounded. A
/// container that never made `/output/task` gives an empty report.
fn copy_out(
    docker: &Docker,
    name: &str,
    task_dir: &OutDir,
) -> Result<ExportReport, ContainerError> {
    let source = format!("{name}:{}", crate::pipeline::OUTPUT_DIR);
    let mut child = Command::new(&docker.program)
        .args(["cp", &source, "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ContainerError::NoDocker {
            program: docker.program.clone(),
            source,
        })?;
    let what = format!("docker cp {source}");
    let extracted = match child.stdout.take() {
        Some(mut stdout) => {
            let r = export::extract_tar(&mut stdout, "task", task_dir, &what);
            if r.as_ref().is_ok_and(|r| !r.limit_reached) {
                // The tar ends before the stream does (its last zero block,
                // padding): read that, so docker cp is not cut off mid-write.
                // What is left to read cannot matter, so errors are ignored.
                let mut rest = std::io::Read::take(&mut stdout, 1 << 20);
                let _ = std::io::copy(&mut rest, &mut std::io::sink());
            }
            r
        }
        None => Ok(ExportReport::default()),
    };
    // Past the byte limit the rest of the stream is not read: end it. It
    // may have ended already, which wait reports.
    if extracted.as_ref().is_ok_and(|r| r.limit_reached) {
        let _ = child.kill();
    }
    let status = child.wait_with_output().map_err(io(Path::new(&what)))?;
    let report = extracted?;
    if !status.status.success() && !report.limit_reached {
        // No /output/task: the supervisor never started. Said, not fatal:
        // the missing result.json is the error the caller reports.
        tracing::warn!(error = %last_line(&status.stderr), "{what} failed");
    }
    if !report.skipped.is_empty() {
        tracing::warn!(skipped = ?report.skipped, "entries of the container's /output/task were not copied");
    }
    Ok(report)
}

/// Start `docker ARGS` and wait for it, a signal or the backstop.
fn supervise(
    docker: &Docker,
    args: &[String],
    backstop: Duration,
) -> Result<Ended, ContainerError> {
    use std::os::fd::AsFd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(Path::new("the async runtime")))?;
    // The container's output goes to stderr: stdout is for --json.
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io(Path::new("stderr")))?;
    rt.block_on(async {
        // Its own process group: a Ctrl-C reaches hoist, which removes
        // the container, not the docker CLI, which would only detach.
        let mut child = tokio::process::Command::new(&docker.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ContainerError::NoDocker {
                program: docker.program.clone(),
                source,
            })?;
        let ended = tokio::select! {
            status = child.wait() => {
                let status = status.map_err(io(Path::new("docker run")))?;
                Ended::Exited(status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                }))
            }
            sig = crate::interrupt::signalled() => Ended::Signal(sig),
            _ = tokio::time::sleep(backstop) => Ended::Timeout,
        };
        Ok(ended)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_create_arguments() {
        let a = run_args(
            "hoist-1",
            Net::Own(Network::None),
            &Limits::default(),
            Path::new("/out"),
            &[
                (Path::new("/w/context.json"), ctx::CONTEXT_PATH),
                (Path::new("/rec"), "/recordings"),
            ],
            "sha256:abc",
            Some("t1"),
        );
        let s = a.join(" ");
        assert!(
            s.starts_with(
                "create --name hoist-1 --label io.github.hoist.run=1 --label io.github.hoist.out=/out "
            ),
            "{s}"
        );
        // Removed by hoist after `docker cp`, not by Docker when it exits.
        assert!(!s.contains("--rm"), "{s}");
        assert!(s.contains("--network none --hostname hoist"), "{s}");
        assert!(s.contains("--pids-limit 1024"), "{s}");
        assert!(s.contains("--ulimit nofile=4096:4096"), "{s}");
        assert!(!s.contains("--memory"), "{s}");
        // No host directory is mounted writable: /output is the
        // container's own; only the two read-only binds remain.
        let binds: Vec<&str> = a
            .iter()
            .zip(a.iter().skip(1))
            .filter(|(flag, _)| ["-v", "--volume", "--mount"].contains(&flag.as_str()))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            binds,
            [
                "/w/context.json:/.hoist/context.json:ro",
                "/rec:/recordings:ro"
            ],
            "{s}"
        );
        assert!(!s.contains(":/output"), "{s}");
        assert!(
            s.contains("-v /w/context.json:/.hoist/context.json:ro"),
            "{s}"
        );
        assert!(s.contains("-v /rec:/recordings:ro"), "{s}");
        assert!(
            s.ends_with("sha256:abc task-exec --context /.hoist/context.json --task t1"),
            "{s}"
        );
        let limited = Limits {
            max_memory: Some(64 << 20),
            ..Limits::default()
        };
        let host = run_args(
            "n",
            Net::Own(Network::Host),
            &limited,
            Path::new("/o"),
            &[(Path::new("/c"), ctx::CONTEXT_PATH)],
            "i",
            None,
        )
        .join(" ");
        assert!(
            host.contains("--network host") && !host.contains("--hostname"),
            "{host}"
        );
        assert!(!host.contains("/recordings"), "{host}");
        assert!(
            host.contains("--memory 67108864 --memory-swap 67108864"),
            "{host}"
        );
        assert!(
            host.ends_with("i task-exec --context /.hoist/context.json"),
            "{host}"
        );
    }

    #[test]
    fn last_line_of_stderr() {
        assert_eq!(last_line(b"a\nCannot connect\n\n"), "Cannot connect");
        assert_eq!(last_line(b""), "no message");
    }
}
