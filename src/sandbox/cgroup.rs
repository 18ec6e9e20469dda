//! The run's cgroup (docs/isolation.md "Limits"): `pids.max` (1024 by
//! default, as container mode's `--pids-limit`) and, with `--memory`, a
//! memory limit without swap, over every process of the run whatever its
//! uid: the supervisor, `install.sh`, the gateway, the agent, the grader.
//! RLIMIT_NPROC counts only one uid's processes and does not hold back
//! root; a cgroup holds them all.
//!
//! The cgroup is made beneath hoist's own (`/proc/self/cgroup`; on v2 beneath
//! `/sys/fs/cgroup/hoist` unless hoist is in the root cgroup) and named
//! `hoist-<pid>-<random>`: one directory with both controllers on cgroup
//! v2, one per controller hierarchy on v1. The sandbox stage joins it
//! between fork and exec, so nothing of the run ever runs outside it; after
//! the run whatever is left in it is killed and the directories removed.
//!
//! Where no cgroup can be made (an unprivileged user, a read-only
//! cgroupfs, a container without delegation, v2's rule that only a cgroup
//! without processes of its own may enable controllers for its children),
//! the reason goes to run.json and the run is bounded by rlimits only;
//! but `--memory` without a memory cgroup is an error, never a run without
//! the limit asked for.

use std::fs::File;
use std::io;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Limits, SandboxError};

const ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
/// How long a run's leftovers may take to die and its cgroups to go.
const CLEANUP: Duration = Duration::from_secs(5);
/// A `hoist-*` cgroup this old whose hoist is gone is a killed run's.
const STALE_AFTER: Duration = Duration::from_secs(60);
/// Docker's minimum for `--memory`; less cannot hold the supervisor.
const MIN_MEMORY: u64 = 6 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    Pids,
    Memory,
}

impl Controller {
    pub fn name(self) -> &'static str {
        match self {
            Controller::Pids => "pids",
            Controller::Memory => "memory",
        }
    }
}

/// One limit as run.json records it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Limit {
    /// The bound; `null`: none (memory without `--memory`).
    pub max: Option<u64>,
    /// What enforces it (`cgroup v1`, `cgroup v2`, `RLIMIT_NPROC`,
    /// `RLIMIT_NOFILE`, `docker`); `null`: nothing.
    pub enforced_by: Option<&'static str>,
    /// Why the cgroup that should enforce it could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applied: Option<String>,
}

impl Limit {
    fn by(max: u64, enforced_by: &'static str) -> Limit {
        Limit {
            max: Some(max),
            enforced_by: Some(enforced_by),
            not_applied: None,
        }
    }

    fn none() -> Limit {
        Limit {
            max: None,
            enforced_by: None,
            not_applied: None,
        }
    }
}

/// The limits a run got (run.json `limits`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RunLimits {
    /// Processes and threads of the whole run, whatever their uid.
    pub pids: Limit,
    /// Bytes of memory of the whole run; no swap.
    pub memory: Limit,
    /// Processes of one uid (the agent's), root exempt.
    pub processes_per_uid: Limit,
    /// Open files per process.
    pub open_files: Limit,
}

impl RunLimits {
    /// Before any cgroup: the rlimits the sandbox sets, nothing else.
    pub fn rlimits_only(limits: &Limits) -> RunLimits {
        RunLimits {
            pids: Limit {
                max: Some(limits.max_pids),
                enforced_by: None,
                not_applied: None,
            },
            memory: Limit {
                max: limits.max_memory,
                enforced_by: None,
                not_applied: None,
            },
            processes_per_uid: Limit::by(limits.max_processes, "RLIMIT_NPROC"),
            open_files: Limit::by(limits.max_open_files, "RLIMIT_NOFILE"),
        }
    }

    /// Container mode: Docker enforces them all (`--pids-limit`,
    /// `--memory`, `--ulimit nofile`), and sets no RLIMIT_NPROC.
    pub fn docker(limits: &Limits) -> RunLimits {
        RunLimits {
            pids: Limit::by(limits.max_pids, "docker"),
            memory: limits
                .max_memory
                .map_or_else(Limit::none, |m| Limit::by(m, "docker")),
            processes_per_uid: Limit::none(),
            open_files: Limit::by(limits.max_open_files, "docker"),
        }
    }

    fn record(&mut self, c: Controller, outcome: Result<Version, String>) {
        let limit = match c {
            Controller::Pids => &mut self.pids,
            Controller::Memory => &mut self.memory,
        };
        match outcome {
            Ok(v) => limit.enforced_by = Some(v.label()),
            Err(why) => limit.not_applied = Some(format!("no {} cgroup: {why}", c.name())),
        }
    }
}

/// One directory of the run's cgroup, its `cgroup.procs` (v2) or `tasks`
/// (v1) open for the sandbox stage to join.
struct Dir {
    path: PathBuf,
    procs: File,
}

/// The run's cgroup: made before the sandbox starts, emptied and removed
/// by [`RunCgroup::remove`] (or on drop).
pub(crate) struct RunCgroup {
    dirs: Vec<Dir>,
    limits: RunLimits,
}

impl RunCgroup {
    /// Make the run's cgroup for `limits`. Fails only when `--memory` was
    /// given and no memory cgroup can be made; any other missing cgroup is
    /// recorded in [`RunCgroup::limits`].
    pub(crate) fn create(limits: &Limits) -> Result<RunCgroup, SandboxError> {
        let name = run_name();
        let mut cg = RunCgroup::none_yet(limits);
        let mut wanted = vec![Controller::Pids];
        if limits.max_memory.is_some() {
            wanted.push(Controller::Memory);
        }
        for c in wanted {
            let outcome = cg.add(c, &name, limits);
            cg.limits.record(c, outcome);
        }
        if let (Some(max), Some(why)) = (limits.max_memory, &cg.limits.memory.not_applied) {
            return Err(SandboxError::Unsupported(format!(
                "cannot limit the run's memory to {max} bytes (--memory): {why}"
            )));
        }
        Ok(cg)
    }

    /// No directory made yet: bounded by the rlimits alone.
    fn none_yet(limits: &Limits) -> RunCgroup {
        RunCgroup {
            dirs: Vec::new(),
            limits: RunLimits::rlimits_only(limits),
        }
    }

    /// What the run is bounded by.
    pub(crate) fn limits(&self) -> &RunLimits {
        &self.limits
    }

    /// Make (on v2: reuse) the cgroup directory for `c` and set its limit.
    fn add(&mut self, c: Controller, name: &str, limits: &Limits) -> Result<Version, String> {
        let (version, own) = locate(c)?;
        let parent = match version {
            Version::V2 => v2_parent(&own, c)?,
            Version::V1 => own,
        };
        let dir = parent.join(name);
        if !self.dirs.iter().any(|d| d.path == dir) {
            remove_stale(&parent);
            std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            // v1: the child joins through `tasks`, moving only itself (it
            // is single-threaded between fork and exec). That skips the
            // global threadgroup lock a `cgroup.procs` write takes, whose
            // RCU grace period cost every run milliseconds here.
            let procs = dir.join(match version {
                Version::V1 => "tasks",
                Version::V2 => "cgroup.procs",
            });
            match std::fs::OpenOptions::new().write(true).open(&procs) {
                Ok(procs) => self.dirs.push(Dir {
                    path: dir.clone(),
                    procs,
                }),
                Err(e) => {
                    // Empty and ours: removing it cannot hurt anyone.
                    let _ = std::fs::remove_dir(&dir);
                    return Err(format!("opening {}: {e}", procs.display()));
                }
            }
        }
        // Should a limit not take, the directory stays and the run still
        // joins it: a cgroup without that limit, recorded as not applied.
        for (file, value, required) in settings(c, version, limits) {
            let path = dir.join(file);
            if required || path.exists() {
                write(&path, &value)?;
            }
        }
        Ok(version)
    }

    /// Spawn `cmd` so that the child joins the run's cgroup before it
    /// execs: nothing it starts can run outside it. `cmd` is taken, so it
    /// cannot be spawned again once the descriptors are closed.
    pub(crate) fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let procs: Vec<&File> = self.dirs.iter().map(|d| &d.procs).collect();
        crate::sys::spawn_joining(cmd, &procs)
    }

    /// Kill whatever is left in the run's cgroup and remove it. Every
    /// directory is tried; the first failure is returned.
    pub(crate) fn remove(&mut self) -> Result<(), String> {
        let mut first = Ok(());
        for d in std::mem::take(&mut self.dirs) {
            drop(d.procs);
            let removed = empty(&d.path).and_then(|()| rmdir(&d.path));
            if first.is_ok() {
                first = removed;
            }
        }
        first
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "could not remove the run's cgroup");
        }
    }
}

/// The files to write for `c`: (name, value, whether it must exist).
/// Swap is switched off where the kernel accounts it, so the limit is the
/// whole memory of the run, as Docker's `--memory` with `--memory-swap`
/// set to the same value.
fn settings(c: Controller, v: Version, limits: &Limits) -> Vec<(&'static str, String, bool)> {
    match (c, limits.max_memory) {
        (Controller::Pids, _) => vec![("pids.max", limits.max_pids.to_string(), true)],
        (Controller::Memory, None) => vec![],
        (Controller::Memory, Some(m)) => match v {
            Version::V2 => vec![
                ("memory.max", m.to_string(), true),
                ("memory.swap.max", "0".into(), false),
            ],
            // memsw is memory plus swap, and may not be below the memory
            // limit: set after it, to the same value.
            Version::V1 => vec![
                ("memory.limit_in_bytes", m.to_string(), true),
                ("memory.memsw.limit_in_bytes", m.to_string(), false),
            ],
        },
    }
}

/// Which cgroup version holds `c` here, and this process's cgroup
/// directory in it (the parent of the run's).
fn locate(c: Controller) -> Result<(Version, PathBuf), String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    let root = Path::new(ROOT);
    let version = match fs_type(root) {
        Some(CGROUP2_SUPER_MAGIC) => Version::V2,
        // v1: a tmpfs holding one mount per hierarchy.
        Some(_) if fs_type(&root.join(c.name())) == Some(CGROUP_SUPER_MAGIC) => Version::V1,
        Some(_) => {
            return Err(format!(
                "no cgroup v1 {} hierarchy at {ROOT}/{}",
                c.name(),
                c.name()
            ))
        }
        None => return Err(format!("nothing mounted at {ROOT}")),
    };
    // Without it the mount is taken to hold the whole hierarchy.
    // Lossy: one mount point that is not UTF-8 must not hide the others.
    let mountinfo = std::fs::read("/proc/self/mountinfo")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let dir = own_dir(root, version, &own, c, |m| mount_root(&mountinfo, m))?;
    if !dir.is_dir() {
        return Err(format!(
            "{} (this process's cgroup) is not visible here",
            dir.display()
        ));
    }
    // v2: whether `c` is delegated is asked where the run's cgroup goes
    // (`enabled`), which need not be here: once hoist moved into a cgroup
    // namespace's `init`, this is a leaf that has only what it was given.
    Ok((version, dir))
}

/// This process's cgroup directory for `c` under `root`, from its
/// `/proc/self/cgroup` text: v2 `root/PATH` of the `0::PATH` line, v1
/// `root/CONTROLLER/PATH` of the controller's line, less the part of PATH
/// the mount leaves out (`mount_root` says which: a container without a
/// cgroup namespace gets its own cgroup, `/docker/ID`, mounted as the root
/// of the hierarchy while `/proc/self/cgroup` still names `/docker/ID`).
fn own_dir<'a>(
    root: &Path,
    v: Version,
    own: &str,
    c: Controller,
    mount_root: impl FnOnce(&Path) -> Option<&'a str>,
) -> Result<PathBuf, String> {
    let (mount, path) = match v {
        Version::V2 => (
            root.to_path_buf(),
            own_path(own, "").ok_or("/proc/self/cgroup has no cgroup v2 line")?,
        ),
        Version::V1 => (
            root.join(c.name()),
            own_path(own, c.name())
                .ok_or_else(|| format!("/proc/self/cgroup has no {} line", c.name()))?,
        ),
    };
    let hidden = mount_root(&mount).unwrap_or("/");
    // A path that climbs (a cgroup outside our cgroup namespace's root
    // shows as /../..), or that the mount does not hold, names nothing here.
    let normal = |p: &Path| {
        p.components()
            .all(|p| matches!(p, std::path::Component::Normal(_)))
    };
    let rel = Path::new(path.trim_start_matches('/'));
    match rel.strip_prefix(hidden.trim_start_matches('/')) {
        Ok(rel) if normal(rel) => Ok(mount.join(rel)),
        _ => Err(format!(
            "this process's {} cgroup, {path}, is outside the hierarchy mounted at {} (its root: {hidden})",
            c.name(),
            mount.display()
        )),
    }
}

/// The root, within its filesystem, of the mount seen at `mount_point`,
/// from a `/proc/self/mountinfo` text: the one with the mount id statx
/// gives, else (before Linux 5.8) the last listed there.
fn mount_root<'a>(mountinfo: &'a str, mount_point: &Path) -> Option<&'a str> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let id = statx(CWD, mount_point, AtFlags::empty(), StatxFlags::MNT_ID)
        .ok()
        .filter(|st| st.stx_mask & StatxFlags::MNT_ID.bits() != 0)
        .map(|st| st.stx_mnt_id);
    root_of_mount(mountinfo, mount_point, id)
}

/// The root field of the `/proc/self/mountinfo` line of mount `id`, or
/// without an id of the last line for `mount_point`.
fn root_of_mount<'a>(mountinfo: &'a str, mount_point: &Path, id: Option<u64>) -> Option<&'a str> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let (line_id, root, point) = (f.first()?, f.get(3)?, f.get(4)?);
        let hit = match id {
            Some(id) => line_id.parse() == Ok(id),
            None => Path::new(point) == mount_point,
        };
        hit.then_some(*root)
    })
}

/// Where the run's v2 cgroup goes, with `c` enabled for its children.
///
/// v2 lets only the root cgroup, or a cgroup without processes of its
/// own, enable domain controllers (memory) for its children, and hoist is
/// a process of its own cgroup `own`. The threaded ones (pids) are exempt,
/// but enabling one in a cgroup with processes turns its new children
/// "domain invalid": nothing can join them (Linux answers EOPNOTSUPP). So
/// the place is chosen from where hoist is, never per controller, and both
/// controllers go into the same directory (a process is in one v2 cgroup):
/// 1. `own`, when it is the host's root cgroup (exempt from the rule);
/// 2. else, as root, `/sys/fs/cgroup/hoist`, as Docker's cgroupfs driver
///    puts containers under `/sys/fs/cgroup/docker` (what a systemd
///    service or a shell in a session scope gets). The run is then outside
///    hoist's caller's cgroup: that cgroup's limits do not bound it, the
///    run's own do. Where `/sys/fs/cgroup` is the top of a cgroup
///    namespace (a container's own cgroup, as Docker makes it on v2 with
///    `--cgroupns private`), its processes are all the container's: as
///    Docker-in-Docker's entrypoint does, they move into a leaf `init`
///    beside `hoist` first.
///
/// The answer does not depend on `c` nor change once processes moved, so
/// both controllers land in the same directory.
fn v2_parent(own: &Path, c: Controller) -> Result<PathBuf, String> {
    if is_host_root(own) {
        return enabled(own, c);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(format!(
            "{} holds processes (hoist among them), and cgroup v2 lets only a cgroup without processes of its own enable controllers for its children; as root, hoist would use {ROOT}/hoist",
            own.display()
        ));
    }
    let root = Path::new(ROOT);
    if !is_host_root(root) {
        evacuate(root)?;
    }
    enabled(root, c)?;
    let ours = root.join("hoist");
    match std::fs::create_dir(&ours) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", ours.display())),
    }
    enabled(&ours, c)
}

/// The host's root cgroup, the one cgroup v2 has no `cgroup.type` in (the
/// top of a cgroup namespace is a cgroup like any other, and has one).
fn is_host_root(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// `dir`, once `c` is enabled for its children.
fn enabled(dir: &Path, c: Controller) -> Result<PathBuf, String> {
    let ctls = read(&dir.join("cgroup.controllers"))?;
    if !ctls.split_whitespace().any(|x| x == c.name()) {
        return Err(format!(
            "the {} controller is not delegated to {} (cgroup.controllers: {:?})",
            c.name(),
            dir.display(),
            ctls.trim()
        ));
    }
    match enable(dir, c) {
        Ok(()) => Ok(dir.to_path_buf()),
        Err(Enable::Busy) => Err(format!(
            "{} holds processes, and cgroup v2 lets only a cgroup without processes of its own enable controllers for its children",
            dir.display()
        )),
        Err(Enable::Failed(why)) => Err(why),
    }
}

/// Move every process of the v2 cgroup `dir` into its leaf `dir/init`
/// (made if missing). A process that exits meanwhile is no matter; one
/// that cannot be moved (a kernel thread) fails it.
fn evacuate(dir: &Path) -> Result<(), String> {
    let init = dir.join("init");
    match std::fs::create_dir(&init) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", init.display())),
    }
    let procs = init.join("cgroup.procs");
    // Processes may fork while they move: list again until none is left.
    for _ in 0..10 {
        let left = parse_pids(&read(&dir.join("cgroup.procs"))?);
        if left.is_empty() {
            return Ok(());
        }
        for pid in left {
            match std::fs::write(&procs, pid.as_raw_nonzero().to_string()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {}
                Err(e) => {
                    return Err(format!(
                        "moving process {} into {}: {e}",
                        pid.as_raw_nonzero(),
                        init.display()
                    ))
                }
            }
        }
    }
    Err(format!(
        "{} keeps gaining processes while they move into {}",
        dir.display(),
        init.display()
    ))
}

enum Enable {
    /// The cgroup holds processes (EBUSY), or its type forbids (EOPNOTSUPP).
    Busy,
    Failed(String),
}

/// Enable `c` for the children of the v2 cgroup `parent`, unless it is.
fn enable(parent: &Path, c: Controller) -> Result<(), Enable> {
    let control = parent.join("cgroup.subtree_control");
    if read(&control)
        .map_err(Enable::Failed)?
        .split_whitespace()
        .any(|x| x == c.name())
    {
        return Ok(());
    }
    match std::fs::write(&control, format!("+{}", c.name())) {
        Ok(()) => Ok(()),
        // EOPNOTSUPP: the cgroup's type forbids it (a threaded one, or one
        // whose parent enabled a threaded controller while it held processes).
        Err(e)
            if [rustix::io::Errno::BUSY, rustix::io::Errno::OPNOTSUPP]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            Err(Enable::Busy)
        }
        Err(e) => Err(Enable::Failed(format!(
            "cannot enable {} in {}: {e}",
            c.name(),
            control.display()
        ))),
    }
}

/// Kill every process in the cgroup `dir` until none is left (`cgroup.kill`
/// first where the kernel has it; SIGKILL each listed process meanwhile,
/// since a process may fork between the listing and the kill).
fn empty(dir: &Path) -> Result<(), String> {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        write(&kill, "1")?;
    }
    let procs = dir.join("cgroup.procs");
    let start = Instant::now();
    loop {
        let pids = parse_pids(&read(&procs)?);
        if pids.is_empty() {
            return Ok(());
        }
        if start.elapsed() > CLEANUP {
            return Err(format!(
                "{}: {} processes left after {CLEANUP:?} of SIGKILL",
                procs.display(),
                pids.len()
            ));
        }
        for pid in pids {
            // ESRCH: it died meanwhile; anything else repeats on the next pass.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Remove the emptied cgroup `dir`; it stays busy while its last
/// processes finish exiting, so retry a while.
fn rmdir(dir: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if start.elapsed() > CLEANUP => {
                return Err(format!("removing {}: {e}", dir.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Remove from `parent` the `hoist-*` cgroups that runs killed before
/// their own cleanup left behind: older than [`STALE_AFTER`] (so never one
/// another hoist is setting up, even in another pid namespace), their
/// hoist gone. rmdir refuses a cgroup that still holds processes; those
/// are left alone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(run_pid) else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_AFTER));
        let gone = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH));
        if old && gone {
            // Best effort: a busy or vanished leftover does not matter here.
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

// f_type is i64 here, u32 or c_long on other architectures.
#[allow(clippy::unnecessary_cast)]
fn fs_type(path: &Path) -> Option<i64> {
    rustix::fs::statfs(path).ok().map(|s| s.f_type as i64)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value} to {}: {e}", path.display()))
}

/// Whether the run's cgroup can be made here, per controller: a real
/// cgroup is made and removed (no limit is set). For `hoist doctor`.
pub fn probe() -> Vec<(Controller, Result<Version, String>)> {
    let name = run_name();
    let limits = Limits::default();
    let mut cg = RunCgroup::none_yet(&limits);
    // Dropping `cg` removes what was made (a failure is logged there).
    [Controller::Pids, Controller::Memory]
        .into_iter()
        .map(|c| (c, cg.add(c, &name, &limits)))
        .collect()
}

// ---- pure parts --------------------------------------------------------

/// This process's cgroup path for `controller` (v1), or its unified path
/// (v2, `controller` = ""), from a `/proc/self/cgroup` text.
pub fn own_path<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            ctls.is_empty()
        } else {
            ctls.split(',').any(|c| c == controller)
        };
        hit.then_some(path)
    })
}

/// A name for a run's cgroup: `hoist-<pid>-<random hex>`, never one of a
/// run before, and telling [`remove_stale`] whose it is.
fn run_name() -> String {
    format!("hoist-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// The pid in the name of a run's cgroup, `hoist-<pid>-<hex>`.
fn run_pid(name: &str) -> Option<i32> {
    let (pid, suffix) = name.strip_prefix("hoist-")?.split_once('-')?;
    let hex = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    (hex && digits).then(|| pid.parse().ok()).flatten()
}

/// The processes listed in a `cgroup.procs` text (pid 0: one outside our
/// pid namespace, which we could not signal anyway).
fn parse_pids(text: &str) -> Vec<rustix::process::Pid> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter_map(rustix::process::Pid::from_raw)
        .collect()
}

/// A size as `--memory` takes it: bytes, or a whole number with a binary
/// unit, `K`, `M`, `G` or `T` (`512M`, `2G`; any case, and a `B` or `iB`
/// after the unit is allowed), as Docker reads its `--memory`. At least
/// 6M, Docker's minimum.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if bytes < MIN_MEMORY {
        return Err(format!("{s:?} is too little memory for a run: at least 6M"));
    }
    Ok(bytes)
}

/// A size in bytes as [`parse_size`] reads it, with no minimum (a disk
/// size: `--max-store-size`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad =
        || format!("{s:?} is not a size: write bytes, or a number and K, M, G or T (512M, 2G)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HYBRID: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/2d69\n3:cpu,cpuacct:/x\n0::/\n";

    #[test]
    fn own_paths_v1_and_v2() {
        assert_eq!(own_path(V1_HYBRID, "pids"), Some("/"));
        assert_eq!(own_path(V1_HYBRID, "memory"), Some("/process_api/2d69"));
        assert_eq!(own_path(V1_HYBRID, "cpuacct"), Some("/x"));
        assert_eq!(own_path(V1_HYBRID, ""), Some("/"));
        assert_eq!(own_path(V1_HYBRID, "blkio"), None);
        // A named hierarchy is not a controller.
        assert_eq!(own_path(V1_HYBRID, "systemd"), None);
        let v2 = "0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            own_path(v2, ""),
            Some("/user.slice/user-1000.slice/session-2.scope")
        );
        assert_eq!(own_path(v2, "pids"), None);
        // A path may hold a colon.
        assert_eq!(own_path("0::/a:b\n", ""), Some("/a:b"));
        let docker =
            "12:pids:/docker/abc\n4:memory:/docker/abc\n3:cpu,cpuacct:/x\n0::/system.slice/y\n";
        assert_eq!(own_path(docker, "pids"), Some("/docker/abc"));
        assert_eq!(own_path(docker, "cpuacct"), Some("/x"));
        assert_eq!(own_path(docker, ""), Some("/system.slice/y"));
        assert_eq!(own_path(docker, "blkio"), None);
        assert_eq!(own_path("1:name=systemd:/\n", "systemd"), None);
        assert_eq!(own_path("", ""), None);
    }

    #[test]
    fn own_dirs() {
        let root = Path::new("/sys/fs/cgroup");
        let dir = |v, own, c| own_dir(root, v, own, c, |_| None);
        assert_eq!(
            dir(Version::V1, V1_HYBRID, Controller::Memory),
            Ok(PathBuf::from("/sys/fs/cgroup/memory/process_api/2d69"))
        );
        assert_eq!(
            dir(Version::V1, V1_HYBRID, Controller::Pids),
            Ok(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        let v2 = "0::/system.slice/hoist.service\n";
        assert_eq!(
            dir(Version::V2, v2, Controller::Memory),
            Ok(PathBuf::from("/sys/fs/cgroup/system.slice/hoist.service"))
        );
        assert_eq!(
            dir(Version::V2, "0::/\n", Controller::Pids),
            Ok(PathBuf::from("/sys/fs/cgroup"))
        );
        assert!(dir(Version::V2, "4:memory:/x\n", Controller::Pids)
            .unwrap_err()
            .contains("no cgroup v2 line"));
        assert!(dir(Version::V1, v2, Controller::Pids)
            .unwrap_err()
            .contains("no pids line"));
        // Outside our cgroup namespace's root.
        assert!(dir(Version::V2, "0::/../../x\n", Controller::Pids)
            .unwrap_err()
            .contains("outside"));
    }

    /// Docker on cgroup v1 without a cgroup namespace: each hierarchy is
    /// mounted from the container's own cgroup.
    const DOCKER_MOUNTINFO: &str = "\
800 799 0:60 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
801 800 0:26 /docker/abc /sys/fs/cgroup/pids ro,nosuid shared:9 - cgroup cgroup rw,pids
802 800 0:27 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
";

    #[test]
    fn own_dirs_under_a_mount_of_part_of_the_hierarchy() {
        let root = Path::new("/sys/fs/cgroup");
        let own = "8:pids:/docker/abc\n4:memory:/docker/abc/inner\n";
        let dir = |own, c| {
            own_dir(root, Version::V1, own, c, |m| {
                root_of_mount(DOCKER_MOUNTINFO, m, None)
            })
        };
        assert_eq!(
            dir(own, Controller::Pids),
            Ok(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        assert_eq!(
            dir(own, Controller::Memory),
            Ok(PathBuf::from("/sys/fs/cgroup/memory/inner"))
        );
        let err = dir("8:pids:/other\n", Controller::Pids).unwrap_err();
        assert!(
            err.contains("outside") && err.contains("/docker/abc"),
            "{err}"
        );
        // The last mount at a point is the one seen.
        // Without a mount id, the last mount listed at a point; with
        // one, that mount, wherever it is listed.
        let twice = format!(
            "{DOCKER_MOUNTINFO}803 800 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        );
        let pids = Path::new("/sys/fs/cgroup/pids");
        assert_eq!(root_of_mount(&twice, pids, None), Some("/"));
        assert_eq!(root_of_mount(&twice, pids, Some(801)), Some("/docker/abc"));
        assert_eq!(root_of_mount(&twice, pids, Some(9)), None);
        assert_eq!(root_of_mount("", pids, None), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("8192k"), Ok(8 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("67108864"), Ok(64 << 20));
        assert_eq!(parse_size("67108864b"), Ok(64 << 20));
        for bad in ["", "M", "-1M", "1.5G", "12X", "64 M", "0x10M", "1MM"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("5M").unwrap_err().contains("at least 6M"));
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn run_cgroup_names() {
        assert_eq!(run_pid("hoist-123-0a1b2c3d"), Some(123));
        assert_eq!(run_pid("hoist-123-probe"), None);
        assert_eq!(run_pid("hoist--0a"), None);
        assert_eq!(run_pid("hoist-12-"), None);
        assert_eq!(run_pid("other-123-0a"), None);
        assert_eq!(run_pid("hoist-99999999999-0a"), None);
    }

    #[test]
    fn procs_lists() {
        let pids: Vec<i32> = parse_pids("12\n0\n345\n\n")
            .iter()
            .map(|p| p.as_raw_nonzero().get())
            .collect();
        assert_eq!(pids, [12, 345]);
    }

    #[test]
    fn settings_turn_swap_off() {
        let limits = Limits {
            max_memory: Some(64 << 20),
            ..Limits::default()
        };
        let v1 = settings(Controller::Memory, Version::V1, &limits);
        assert_eq!(
            v1.iter().map(|s| s.0).collect::<Vec<_>>(),
            ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        );
        let v2 = settings(Controller::Memory, Version::V2, &limits);
        assert_eq!(v2[1], ("memory.swap.max", "0".to_string(), false));
        let pids = settings(Controller::Pids, Version::V2, &Limits::default());
        assert_eq!(pids, [("pids.max", "1024".to_string(), true)]);
        assert!(settings(Controller::Memory, Version::V1, &Limits::default()).is_empty());
    }
}
