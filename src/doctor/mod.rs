//! `hoist doctor`: what this host can do for hoist, and what each missing
//! piece costs (docs/isolation.md, docs/rootfs.md, docs/pipeline.md).
//!
//! One probe per file. Each reads what the kernel and the system say
//! (`/proc`, `/sys`, `/etc/subuid`, a socket) or tries the real thing (the
//! sandbox probe that `--isolation auto` runs, an overlay mount in the
//! store, a user namespace) into plain facts, and a pure function over
//! those facts gives its [`Check`], tested case by case. Nothing here
//! changes the host for good: whatever a probe creates it removes (the
//! cgroup probe, as a run does on cgroup v2, may move this process or
//! enable controllers, and says so). [`examine`] runs them in order;
//! [`render`] writes the text a user reads.

mod capabilities;
mod cgroups;
mod confinement;
mod container;
mod disk;
mod docker;
mod isolation;
mod overlay;
mod registry;
mod render;
mod seccomp;
mod static_binary;
mod subids;
mod userns;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::registry::RegistryOptions;

pub use disk::{disk_status, human_bytes, DISK_CRITICAL, DISK_LOW};
pub use render::render;

/// The value of the report's `schema` field.
pub const SCHEMA: &str = "hoist.doctor/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Degraded,
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Missing => "missing",
        }
    }
}

/// One fact about the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What the missing or degraded piece costs a run; `None` when ok.
    pub cost: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            cost: None,
        }
    }

    fn not_ok(name: &str, status: Status, detail: impl Into<String>, cost: &str) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            cost: Some(cost.into()),
        }
    }
}

/// What `hoist run --isolation auto` takes here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CraneIsolation {
    Namespaces,
    Chroot,
    /// Crane mode cannot sandbox at all.
    None,
}

impl CraneIsolation {
    pub fn as_str(self) -> &'static str {
        match self {
            CraneIsolation::Namespaces => "namespaces",
            CraneIsolation::Chroot => "chroot",
            CraneIsolation::None => "none",
        }
    }
}

/// What `hoist run --rootfs auto` builds here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CraneRootfs {
    Overlay,
    Copy,
}

impl CraneRootfs {
    pub fn as_str(self) -> &'static str {
        match self {
            CraneRootfs::Overlay => "overlay",
            CraneRootfs::Copy => "copy",
        }
    }
}

/// What `hoist doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub hoist_version: &'static str,
    pub kernel: String,
    pub uid: u32,
    pub isolation: CraneIsolation,
    pub rootfs: CraneRootfs,
    pub in_container: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether `hoist run --mode crane` can run a task here.
    pub fn crane_can_run(&self) -> bool {
        self.isolation != CraneIsolation::None
            && self
                .check(static_binary::NAME)
                .is_some_and(|c| c.status == Status::Ok)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// What to examine.
pub struct Options {
    /// The store root (it need not exist yet).
    pub store: PathBuf,
    /// This binary, run for the sandbox and user-namespace probes.
    pub self_exe: PathBuf,
    /// The static hoist `hoist run` would put in the sandbox, or why not.
    pub static_binary: Result<PathBuf, String>,
    /// Hosts (or image references) whose registry should answer.
    pub registries: Vec<String>,
    pub registry_options: RegistryOptions,
}

/// Examine this host: every probe reads, then says what it found, in the
/// order the report lists them.
pub fn examine(opts: &Options) -> Report {
    let uid = rustix::process::geteuid().as_raw();
    let root = uid == 0;
    let status = read("/proc/self/status");
    let sandbox = crate::sandbox::probe_reason(&opts.self_exe);
    let isolation = isolation::verdict(&sandbox, root);
    let probe_dir = nearest_existing(&opts.store);
    let overlay = overlay::check(&overlay::read(&probe_dir, &opts.store, root));
    let rootfs = match (isolation, overlay.status) {
        (CraneIsolation::Namespaces, Status::Ok) => CraneRootfs::Overlay,
        _ => CraneRootfs::Copy,
    };
    let hints = container::read();
    let mut checks = vec![
        isolation::check(&sandbox, root),
        confinement::check(&confinement::read()),
        userns::check(&userns::read(&opts.self_exe, root)),
        overlay,
        capabilities::check(capabilities::cap_eff(&status), root),
        seccomp::check(&status, sandbox.is_ok()),
        cgroups::check(&cgroups::read(root)),
        subids::check(&subids::read(uid)),
        container::check(&hints),
        static_binary::check(&static_binary::read(&opts.static_binary)),
        disk::check(&disk::read(&opts.store, &probe_dir)),
        docker::check(&docker::read()),
    ];
    checks.extend(registry::checks(&registry::read(
        &opts.registries,
        &opts.registry_options,
    )));
    Report {
        schema: SCHEMA,
        hoist_version: env!("CARGO_PKG_VERSION"),
        kernel: kernel_release(),
        uid,
        isolation,
        rootfs,
        in_container: !hints.is_empty(),
        checks,
    }
}

fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// A file's text, or empty when it cannot be read (the probes treat an
/// absent `/proc` or `/etc` file as "nothing there").
fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `path`, or its nearest ancestor that exists (the store need not).
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample_report() -> Report {
        Report {
            schema: SCHEMA,
            hoist_version: "0.1.0",
            kernel: "6.8.0".into(),
            uid: 0,
            isolation: CraneIsolation::Chroot,
            rootfs: CraneRootfs::Copy,
            in_container: true,
            checks: vec![
                Check::ok("static_binary", "/usr/local/bin/hoist"),
                Check::not_ok("overlayfs", Status::Missing, "no mount", "copies"),
            ],
        }
    }

    #[test]
    fn report_json_and_verdict() {
        let r = sample_report();
        assert!(r.crane_can_run());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["isolation"], "chroot");
        assert_eq!(v["rootfs"], "copy");
        assert_eq!(v["checks"][1]["status"], "missing");
        assert_eq!(v["checks"][0]["cost"], serde_json::Value::Null);
        let mut none = r.clone();
        none.isolation = CraneIsolation::None;
        assert!(!none.crane_can_run());
        let v = serde_json::to_value(&none).unwrap();
        assert_eq!(v["isolation"], "none");
    }

    #[test]
    fn the_store_is_measured_where_it_will_be() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(nearest_existing(&d.path().join("a/b")), d.path());
        assert_eq!(nearest_existing(d.path()), d.path());
    }
}
