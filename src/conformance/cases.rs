//! Running the cases: `hoist run` in both modes, `hoist materialize`
//! and `docker export` for the trees, `docker build` for the
//! informational comparison. Every tree is listed once per run: crane
//! trees per combination, exports per Docker image id.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;
use std::time::Instant;

use serde_json::Value;

use super::docker::{dockerfile, remove_all, Docker, IMAGE_PREFIX};
use super::jsondiff::{compare_results, FieldDiff};
use super::listing::{self, Listing, PathDiff};
use super::matrix::{Case, Combination};
use super::report::{case_status, CaseReport, Check, DockerBuildReport, ModeRun, Report, Verdict};
use super::{checked, output, slug, tail, ConformanceError};
use crate::digest::Digest;
use crate::treedigest::read_dir_tree;

pub struct Options {
    /// The hoist binary the runs use (the running one, normally).
    pub hoist: PathBuf,
    /// Global flags handed to every hoist subprocess (`--store`, ...).
    pub hoist_args: Vec<OsString>,
    pub docker: PathBuf,
    /// Registry hosts skopeo may reach without verified TLS.
    pub insecure: Vec<String>,
    /// Keep every OUT directory, tree and listing here.
    pub keep: Option<PathBuf>,
    /// Also build each combination with `docker build` (informational).
    pub docker_build: bool,
}

/// Progress, for the CLI to show; the library never prints.
pub enum Event<'a> {
    Case {
        index: usize,
        total: usize,
        name: &'a str,
    },
    /// A step outside the cases (the `docker build` comparisons).
    Step(String),
    CaseDone(&'a CaseReport),
    DockerBuildDone(&'a DockerBuildReport),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Crane,
    Container,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Crane => "crane",
            Mode::Container => "container",
        }
    }
}

/// Run `cases` and compare; `matrix` names the matrix in the report.
pub fn run_cases(
    matrix: &str,
    cases: &[&Case],
    opts: &Options,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Report, ConformanceError> {
    let mut runner = Runner::new(opts)?;
    let mut reports = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        on(Event::Case {
            index: i + 1,
            total: cases.len(),
            name: &case.name,
        });
        let r = runner.case(case);
        on(Event::CaseDone(&r));
        reports.push(r);
    }
    let mut builds = Vec::new();
    if opts.docker_build {
        let mut combos: Vec<&Combination> = Vec::new();
        for c in cases {
            if !combos.contains(&&c.axes) {
                combos.push(&c.axes);
            }
        }
        for combo in combos {
            on(Event::Step(format!("docker build of {}", combo.label())));
            let b = runner.docker_build(combo);
            on(Event::DockerBuildDone(&b));
            builds.push(b);
        }
    }
    Ok(Report::new(matrix.to_string(), reports, builds))
}

/// `hoist conformance --compare`: the differences between two runs'
/// results. Each side is an OUT directory (its `task/result.json`) or a
/// result.json itself.
pub fn compare_outputs(crane: &Path, container: &Path) -> Result<Vec<FieldDiff>, ConformanceError> {
    let load = |p: &Path| {
        let file = if p.is_dir() {
            p.join("task/result.json")
        } else {
            p.to_path_buf()
        };
        read_json(&file)?.ok_or_else(|| ConformanceError::Io {
            path: file,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (give an OUT directory, or a result.json)",
            ),
        })
    };
    Ok(compare_results(&load(crane)?, &load(container)?))
}

type Cached = Result<Rc<Listing>, String>;

struct Runner<'a> {
    opts: &'a Options,
    work: PathBuf,
    /// Removes the work directory at the end unless `--keep`.
    _temp: Option<tempfile::TempDir>,
    docker: Docker,
    crane_trees: HashMap<Combination, Cached>,
    exports: HashMap<String, Cached>,
    rootfs_diffs: HashMap<(Combination, String), Vec<PathDiff>>,
}

impl<'a> Runner<'a> {
    fn new(opts: &'a Options) -> Result<Runner<'a>, ConformanceError> {
        let (work, temp) = match &opts.keep {
            Some(k) => {
                fs::create_dir_all(k).map_err(ConformanceError::io(k))?;
                (k.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("hoist-conformance-")
                    .tempdir()
                    .map_err(ConformanceError::io(std::env::temp_dir()))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Runner {
            opts,
            work,
            _temp: temp,
            docker: Docker::new(opts.docker.clone(), opts.insecure.clone()),
            crane_trees: HashMap::new(),
            exports: HashMap::new(),
            rootfs_diffs: HashMap::new(),
        })
    }

    fn hoist(&self) -> Command {
        let mut c = Command::new(&self.opts.hoist);
        c.args(&self.opts.hoist_args).arg("--quiet");
        c
    }

    fn case(&mut self, case: &Case) -> CaseReport {
        let dir = self.work.join("cases").join(slug(&case.name));
        let (crane_out, container_out) = (dir.join("crane"), dir.join("container"));
        // A kept directory of an earlier run must go first, or its
        // result.json could pass for this run's.
        let ((crane, crane_result), (container, container_result)) = match remove_all(&dir) {
            Ok(()) => (
                self.run_mode(Mode::Crane, case, &crane_out),
                self.run_mode(Mode::Container, case, &container_out),
            ),
            Err(e) => (
                (not_run(&crane_out, &e), None),
                (not_run(&container_out, &e), None),
            ),
        };
        let result = match (&crane_result, &container_result) {
            (Some(a), Some(b)) => Check::of(compare_results(a, b)),
            (None, _) => Check::not_compared("crane mode wrote no readable result.json"),
            (_, None) => Check::not_compared("container mode wrote no readable result.json"),
        };
        let rootfs = self.rootfs_check(&case.axes, container.docker_image_id.as_deref());
        let status = case_status(
            &crane,
            &container,
            &result,
            &rootfs,
            case.expect_differ.as_deref(),
        );
        CaseReport {
            name: case.name.clone(),
            benchmark: case.axes.benchmark.clone(),
            agent: case.axes.agent.clone(),
            gateway: case.axes.gateway.clone(),
            task: case.task.clone(),
            container_image_override: case.container.image.clone(),
            container_agent_override: case.container.agent.clone(),
            expect_differ: case.expect_differ.clone(),
            crane,
            container,
            result,
            rootfs,
            status,
        }
    }

    /// `hoist run --mode MODE` of the case into `out`; its record and the
    /// result.json, if one was written.
    fn run_mode(&self, mode: Mode, case: &Case, out: &Path) -> (ModeRun, Option<Value>) {
        let t = Instant::now();
        let spawned = output(&mut self.run_command(mode, case, out));
        let seconds = t.elapsed().as_secs_f64();
        let (result, read_error) = match read_json(&out.join("task/result.json")) {
            Ok(r) => (r, None),
            Err(e) => (None, Some(e.to_string())),
        };
        // An unreadable run.json only means no image id: the rootfs check
        // then says it could not be made.
        let docker_image_id = read_json(&out.join("run.json"))
            .ok()
            .flatten()
            .and_then(|r| r["docker_image_id"].as_str().map(str::to_string));
        let verdict = Verdict::of(result.as_ref());
        let error = match (&spawned, &result) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(o), r) => run_error(o, r.as_ref(), read_error),
        };
        let run = ModeRun {
            verdict,
            exit_code: spawned.as_ref().ok().and_then(|o| o.status.code()),
            seconds,
            out: out.display().to_string(),
            error,
            docker_image_id,
        };
        (run, result)
    }

    fn run_command(&self, mode: Mode, case: &Case, out: &Path) -> Command {
        let agent = match mode {
            Mode::Container => case.container.agent.as_ref().unwrap_or(&case.axes.agent),
            Mode::Crane => &case.axes.agent,
        };
        let mut cmd = self.hoist();
        cmd.args(["run", "--mode", mode.name(), "--benchmark"])
            .arg(&case.axes.benchmark)
            .arg("--agent")
            .arg(agent);
        if let Some(g) = &case.axes.gateway {
            cmd.arg("--gateway").arg(g);
        }
        if let Some(t) = &case.task {
            cmd.arg("--task").arg(t);
        }
        if let (Mode::Container, Some(image)) = (mode, &case.container.image) {
            cmd.arg("--image").arg(image);
        }
        cmd.arg("--out").arg(out);
        cmd
    }

    fn rootfs_check(&mut self, axes: &Combination, image_id: Option<&str>) -> Check<PathDiff> {
        let Some(id) = image_id else {
            return Check::not_compared("container mode recorded no docker_image_id in run.json");
        };
        let key = (axes.clone(), id.to_string());
        if let Some(d) = self.rootfs_diffs.get(&key) {
            return Check::of(d.clone());
        }
        let crane = match self.crane_tree(axes) {
            Ok(l) => l,
            Err(e) => return Check::not_compared(format!("the crane tree: {e}")),
        };
        let export = match self.export(id) {
            Ok(l) => l,
            Err(e) => return Check::not_compared(format!("docker export of {id}: {e}")),
        };
        let d = listing::compare_with_docker(&crane, &export);
        self.rootfs_diffs.insert(key, d.clone());
        Check::of(d)
    }

    /// `hoist materialize --rootfs copy` of the axes, listed (once).
    fn crane_tree(&mut self, axes: &Combination) -> Cached {
        if let Some(c) = self.crane_trees.get(axes) {
            return c.clone();
        }
        let c = self
            .materialize(axes)
            .map(Rc::new)
            .map_err(|e| e.to_string());
        self.crane_trees.insert(axes.clone(), c.clone());
        c
    }

    fn materialize(&self, axes: &Combination) -> Result<Listing, ConformanceError> {
        let dir = self
            .trees()
            .join(format!("crane-{}", combination_slug(axes)));
        remove_all(&dir)?;
        let mut cmd = self.hoist();
        cmd.args(["materialize", "--rootfs", "copy", "--benchmark"])
            .arg(&axes.benchmark)
            .arg("--agent")
            .arg(&axes.agent);
        if let Some(g) = &axes.gateway {
            cmd.arg("--gateway").arg(g);
        }
        cmd.arg("--out").arg(&dir);
        checked(
            &mut cmd,
            &format!("hoist materialize --rootfs copy of {}", axes.label()),
        )?;
        let l = listing::from_tree(&read_dir_tree(&dir)?);
        self.finish_tree(&dir, &l)?;
        Ok(l)
    }

    /// The export of a container of Docker image `id`, listed (once).
    fn export(&mut self, id: &str) -> Cached {
        if let Some(c) = self.exports.get(id) {
            return c.clone();
        }
        let hex = id.rsplit(':').next().unwrap_or(id);
        let dir = self
            .trees()
            .join(format!("export-{}", slug(&hex[..hex.len().min(16)])));
        let c = self
            .docker
            .export_listing(id, &dir, self.opts.keep.is_some())
            .and_then(|l| {
                self.finish_tree(&dir, &l)?;
                Ok(l)
            })
            .map(Rc::new)
            .map_err(|e| e.to_string());
        self.exports.insert(id.to_string(), c.clone());
        c
    }

    fn trees(&self) -> PathBuf {
        self.work.join("trees")
    }

    /// Keep the tree and write its listing beside it, or remove it.
    fn finish_tree(&self, dir: &Path, l: &Listing) -> Result<(), ConformanceError> {
        if self.opts.keep.is_none() {
            return remove_all(dir);
        }
        let file = dir.with_extension("list");
        let text: String = l.iter().map(|(p, rest)| format!("{p} {rest}\n")).collect();
        fs::write(&file, text).map_err(ConformanceError::io(file))
    }

    fn docker_build(&mut self, axes: &Combination) -> DockerBuildReport {
        let t = Instant::now();
        let mut text = String::new();
        let rootfs = match self.try_docker_build(axes, &mut text) {
            Ok(d) => Check::of(d),
            Err(e) => Check::not_compared(e),
        };
        DockerBuildReport {
            combination: axes.label(),
            benchmark: axes.benchmark.clone(),
            agent: axes.agent.clone(),
            gateway: axes.gateway.clone(),
            dockerfile: text,
            rootfs,
            seconds: t.elapsed().as_secs_f64(),
        }
    }

    fn try_docker_build(
        &mut self,
        axes: &Combination,
        text: &mut String,
    ) -> Result<Vec<PathDiff>, String> {
        let s = |e: ConformanceError| e.to_string();
        let benchmark = self.docker.load(&axes.benchmark).map_err(s)?;
        let agent = self.docker.load(&axes.agent).map_err(s)?;
        let gateway = match &axes.gateway {
            Some(g) => Some(self.docker.load(g).map_err(s)?),
            None => None,
        };
        *text = dockerfile(&benchmark, &agent, gateway.as_deref());
        let name = combination_slug(axes);
        let tag = format!("{IMAGE_PREFIX}/docker-build:{name}");
        let context = self.work.join("docker-build").join(&name);
        self.docker.build(text, &context, &tag).map_err(s)?;
        let dir = self.trees().join(format!("docker-build-{name}"));
        let built = self
            .docker
            .export_listing(&tag, &dir, self.opts.keep.is_some())
            .map_err(s)?;
        self.finish_tree(&dir, &built).map_err(s)?;
        let crane = self
            .crane_tree(axes)
            .map_err(|e| format!("the crane tree: {e}"))?;
        Ok(listing::compare_with_docker(&crane, &built))
    }
}

/// Why a run that was started did not complete: the result's
/// `infra_error`, or hoist's exit status and the end of its stderr.
fn run_error(o: &Output, result: Option<&Value>, read_error: Option<String>) -> Option<String> {
    match result {
        Some(r) if !r["infra_error"].is_null() => Some(format!(
            "infra_error at {}: {}",
            r["infra_error"]["stage"], r["infra_error"]["message"]
        )),
        None => Some(format!(
            "hoist run exited with {}, and {}\n{}",
            o.status,
            read_error.unwrap_or_else(|| "wrote no task/result.json".into()),
            tail(&o.stderr)
        )),
        Some(_) if !o.status.success() => Some(format!(
            "hoist run exited with {}\n{}",
            o.status,
            tail(&o.stderr)
        )),
        Some(_) => None,
    }
}

/// The record of a run that could not be started.
fn not_run(out: &Path, why: &ConformanceError) -> ModeRun {
    ModeRun {
        verdict: Verdict::NoResult,
        exit_code: None,
        seconds: 0.0,
        out: out.display().to_string(),
        error: Some(why.to_string()),
        docker_image_id: None,
    }
}

/// `pyfix_agent-oracle-1a2b3c4d`: readable, and distinct for images of
/// the same short names from different places.
fn combination_slug(axes: &Combination) -> String {
    let id = format!(
        "{}\n{}\n{}",
        axes.benchmark,
        axes.agent,
        axes.gateway.as_deref().unwrap_or("")
    );
    let hash = Digest::sha256_of(id.as_bytes());
    let label = axes.label().replace(" + ", "_");
    format!("{}-{}", slug(&label), &hash.hex()[..8])
}

/// A JSON file, or `None` when there is no such file.
fn read_json(path: &Path) -> Result<Option<Value>, ConformanceError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConformanceError::io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ConformanceError::Json {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, stderr: &str) -> Output {
        use std::os::unix::process::ExitStatusExt;
        Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn run_errors_say_why_a_run_did_not_complete() {
        let ok = serde_json::json!({"resolved": false, "infra_error": null});
        assert_eq!(run_error(&exited(0, ""), Some(&ok), None), None);
        let infra =
            serde_json::json!({"infra_error": {"stage": "gateway", "message": "no /health"}});
        let e = run_error(&exited(1, ""), Some(&infra), None).unwrap();
        assert_eq!(e, r#"infra_error at "gateway": "no /health""#);
        let e = run_error(&exited(1, "error: no docker\n"), None, None).unwrap();
        assert!(e.contains("exit status: 1"), "{e}");
        assert!(
            e.contains("wrote no task/result.json\nerror: no docker"),
            "{e}"
        );
        let e = run_error(&exited(2, "bad flag"), Some(&ok), None).unwrap();
        assert!(
            e.contains("exit status: 2") && e.contains("bad flag"),
            "{e}"
        );
    }

    #[test]
    fn combination_slugs_are_distinct_and_plain() {
        let a = Combination {
            benchmark: "oci:/one:pyfix".into(),
            agent: "oci:/one:agent-oracle".into(),
            gateway: None,
        };
        let mut b = a.clone();
        b.benchmark = "oci:/two:pyfix".into();
        let (sa, sb) = (combination_slug(&a), combination_slug(&b));
        assert!(sa.starts_with("pyfix_agent-oracle-"), "{sa}");
        assert_ne!(sa, sb);
        assert!(sa
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }

    #[test]
    fn compare_outputs_reads_out_dirs_and_files() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir_all(a.join("task")).unwrap();
        fs::write(
            a.join("task/result.json"),
            r#"{"resolved": true, "mode": "crane"}"#,
        )
        .unwrap();
        let b = t.path().join("b.json");
        fs::write(&b, r#"{"resolved": false, "mode": "container"}"#).unwrap();
        let d = compare_outputs(&a, &b).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "resolved");
        assert!(matches!(
            compare_outputs(&a, &t.path().join("missing")),
            Err(ConformanceError::Io { .. })
        ));
        fs::write(&b, "{").unwrap();
        assert!(matches!(
            compare_outputs(&a, &b),
            Err(ConformanceError::Json { .. })
        ));
    }
}
