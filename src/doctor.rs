//! `hoist doctor`: what this host can do for hoist, and what each missing
//! piece costs (DESIGN §5 "sandbox", "materialize"; §6).
//!
//! Each check reads what the kernel and the system say (`/proc`, `/sys`,
//! `/etc/subuid`, a socket) or tries the real thing (the sandbox probe
//! that `--isolation auto` runs, an overlay mount in the store, a user
//! namespace), and never changes the host: whatever it creates it removes.
//! The parsing and the verdicts are pure functions with their tests below;
//! [`examine`] does the I/O and [`render`] the text a user reads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::registry::RegistryOptions;
use crate::sandbox::cgroup::{self, Controller};
use crate::sandbox::{self, Isolation, Network};

/// The value of the report's `schema` field.
pub const SCHEMA: &str = "hoist.doctor/v1";

/// Free space in the store below which runs are likely to fail.
pub const DISK_LOW: u64 = 5 << 30;
/// Free space below which they fail.
pub const DISK_CRITICAL: u64 = 512 << 20;
/// The widest check name that sets the name column in [`render`].
const NAME_WIDTH: usize = 24;
/// The uid the unprivileged user-namespace probe runs as (`nobody`).
const NOBODY: u32 = 65534;

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

/// What `hoist doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub hoist_version: &'static str,
    pub kernel: String,
    pub uid: u32,
    /// What `hoist run --isolation auto` takes here: `namespaces`,
    /// `chroot`, or `none` when crane mode cannot sandbox at all.
    pub isolation: String,
    /// What `hoist run --rootfs auto` builds here: `overlay` or `copy`.
    pub rootfs: String,
    pub in_container: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether `hoist run --mode crane` can run a task here.
    pub fn crane_can_run(&self) -> bool {
        self.isolation != "none"
            && self
                .checks
                .iter()
                .any(|c| c.name == "static_binary" && c.status == Status::Ok)
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

/// Examine this host.
pub fn examine(opts: &Options) -> Report {
    let uid = rustix::process::geteuid().as_raw();
    let root = uid == 0;
    let status = read("/proc/self/status");
    let sandbox = sandbox_probe(&opts.self_exe);
    let isolation = match (&sandbox, root) {
        (Ok(()), _) => "namespaces",
        (Err(_), true) => "chroot",
        (Err(_), false) => "none",
    };
    let probe_dir = nearest_existing(&opts.store);
    let overlay = overlay_check(&probe_dir, &opts.store, root);
    let rootfs = if isolation == "namespaces" && overlay.status == Status::Ok {
        "overlay"
    } else {
        "copy"
    };
    let hints = container_hints_here();
    let mut checks = vec![
        isolation_check(&sandbox, root),
        confinement_check(),
        userns_check(&opts.self_exe, root),
        overlay,
        capabilities_check(cap_eff(&status), root),
        seccomp_check(&status, sandbox.is_ok()),
        cgroups_check(),
        subids_check(uid),
        container_check(&hints),
        static_binary_check(&opts.static_binary),
        disk_check(&opts.store, &probe_dir),
        docker_check(),
    ];
    checks.extend(registry_checks(&opts.registries, &opts.registry_options));
    Report {
        schema: SCHEMA,
        hoist_version: env!("CARGO_PKG_VERSION"),
        kernel: rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
        uid,
        isolation: isolation.into(),
        rootfs: rootfs.into(),
        in_container: !hints.is_empty(),
        checks,
    }
}

/// A file's text, or empty when it cannot be read (the checks treat an
/// absent `/proc` or `/etc` file as "nothing there").
fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.is_dir() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return PathBuf::from("/"),
        }
    }
}

// ---- isolation ----------------------------------------------------------

/// The probe `--isolation auto` runs, with its reason when it fails.
fn sandbox_probe(self_exe: &Path) -> Result<(), String> {
    sandbox::probe_reason(self_exe)
}

fn isolation_check(probe: &Result<(), String>, root: bool) -> Check {
    const NAME: &str = "isolation";
    match probe {
        Ok(()) => Check::ok(
            NAME,
            "namespaces: the probe entered mount, pid, network, ipc and uts namespaces, brought up loopback and mounted a tmpfs",
        ),
        Err(why) if root => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("chroot: namespaces are refused here ({why})"),
            &chroot_cost(&Isolation::Chroot.not_isolated(Network::None)),
        ),
        Err(why) => Check::not_ok(
            NAME,
            Status::Missing,
            format!("none: not root ({why})"),
            "hoist run --mode crane cannot sandbox a task here: as an unprivileged user hoist needs a user namespace of its own (see user_namespaces and subordinate_ids); run as root, or in the runner image",
        ),
    }
}

/// What running in chroot isolation costs, given what this kernel cannot
/// make up for (`not_isolated`).
fn chroot_cost(gaps: &[String]) -> String {
    let shared = "runs use the chroot isolation, which shares the container's pid, network and ipc namespaces";
    if gaps.is_empty() {
        format!("{shared}; Landlock, hoist's seccomp filter and reduced capabilities make up for them on this kernel (nothing in not_isolated)")
    } else {
        format!(
            "{shared}; this kernel cannot make up for: {}",
            gaps.join("; ")
        )
    }
}

/// What every phase's confinement gets here (see `crate::confine`).
fn confinement_check() -> Check {
    const NAME: &str = "confinement";
    let s = crate::confine::Support::probe(crate::confine::abi_pin_from_env());
    let detail = format!(
        "Landlock ABI {} (kernel {}), seccomp filters {}",
        s.landlock_abi,
        s.kernel_landlock_abi,
        if s.seccomp { "yes" } else { "no" }
    );
    // chroot isolation shares the most: what it lacks, every mode lacks.
    let gaps = s.gaps(crate::confine::Shared::of(true, false));
    if gaps.is_empty() {
        Check::ok(NAME, detail)
    } else {
        Check::not_ok(NAME, Status::Degraded, detail, &gaps.join("; "))
    }
}

// ---- user namespaces ----------------------------------------------------

/// What the sysctls say about user namespaces for unprivileged users:
/// `None` when they allow them, else the reason they do not.
pub fn userns_sysctl_verdict(
    unprivileged_clone: Option<&str>,
    max_user_namespaces: Option<&str>,
    apparmor_restrict: Option<&str>,
) -> Option<String> {
    let num = |v: Option<&str>| v.and_then(|s| s.trim().parse::<u64>().ok());
    if num(max_user_namespaces) == Some(0) {
        return Some("user.max_user_namespaces is 0".into());
    }
    if num(unprivileged_clone) == Some(0) {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    if num(apparmor_restrict) == Some(1) {
        return Some("kernel.apparmor_restrict_unprivileged_userns is 1".into());
    }
    None
}

/// How a user-namespace probe went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Made,
    /// The kernel refused (the reason the helper printed).
    Refused(String),
    /// The probe could not be started (e.g. `nobody` cannot execute it).
    NotRun(String),
}

/// Try to create a user (and network) namespace, as `uid` if given: the
/// same helper the sandbox uses for its network namespace.
fn userns_probe(self_exe: &Path, uid: Option<u32>) -> Probe {
    let mut cmd = Command::new(self_exe);
    cmd.arg("__sandbox-netns")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, u);
        std::os::unix::process::CommandExt::gid(&mut cmd, u);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Probe::NotRun(format!("cannot start {}: {e}", self_exe.display())),
    };
    let mut ready = [0u8; 1];
    let made = child
        .stdout
        .take()
        .is_some_and(|mut o| o.read_exact(&mut ready).is_ok());
    drop(child.stdin.take());
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Probe::NotRun(format!("waiting for the probe: {e}")),
    };
    if made {
        return Probe::Made;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim().trim_start_matches("hoist sandbox: ");
    Probe::Refused(if err.is_empty() {
        format!("the probe failed ({})", out.status)
    } else {
        err.to_string()
    })
}

fn userns_check(self_exe: &Path, root: bool) -> Check {
    let sysctl = |p: &str| std::fs::read_to_string(p).ok();
    let verdict = userns_sysctl_verdict(
        sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        sysctl("/proc/sys/user/max_user_namespaces").as_deref(),
        sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref(),
    );
    let me = userns_probe(self_exe, None);
    let nobody = if root && me == Probe::Made {
        userns_probe(self_exe, Some(NOBODY))
    } else {
        me.clone()
    };
    userns_verdict(root, &me, &nobody, verdict)
}

/// The user-namespace check from the probes (as this user, and as
/// `nobody` when this user is root) and the sysctls' verdict.
pub fn userns_verdict(root: bool, me: &Probe, nobody: &Probe, sysctl: Option<String>) -> Check {
    const NAME: &str = "user_namespaces";
    const COST_ROOT: &str = "in a runner container without CAP_NET_ADMIN (the --cap-add SYS_ADMIN profile), namespaces isolation cannot bring up its loopback and runs fall back to chroot";
    const COST_ROOTLESS: &str = "none as root; an unprivileged user cannot run hoist rootless (it needs a user namespace of its own for materialize and run)";
    let made = "a probe created a user and a network namespace";
    match (me, nobody) {
        (Probe::Made, _) if !root => Check::ok(NAME, format!("{made} as this (unprivileged) user")),
        (Probe::Made, Probe::Made) => Check::ok(NAME, format!("{made} as root and as nobody")),
        (Probe::Made, Probe::NotRun(why)) if sysctl.is_none() => Check::ok(
            NAME,
            format!("{made} as root; not tried as nobody ({why}), and the sysctls allow unprivileged ones"),
        ),
        (Probe::Made, Probe::Refused(why) | Probe::NotRun(why)) => Check::not_ok(
            NAME,
            Status::Degraded,
            format!(
                "root can create user namespaces; an unprivileged user cannot ({})",
                sysctl.unwrap_or_else(|| why.clone())
            ),
            COST_ROOTLESS,
        ),
        (Probe::Refused(why) | Probe::NotRun(why), _) => {
            let because = match sysctl {
                Some(s) => format!("{why}; {s}"),
                None => format!("{why}; the sysctls allow them, so a seccomp filter or a missing capability refuses them"),
            };
            Check::not_ok(
                NAME,
                Status::Missing,
                format!("a probe could not create a user namespace: {because}"),
                if root { COST_ROOT } else { COST_ROOTLESS },
            )
        }
    }
}

// ---- overlayfs ----------------------------------------------------------

/// Whether `/proc/filesystems` lists `fs`.
pub fn filesystems_has(text: &str, fs: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

fn overlay_check(probe_dir: &Path, store: &Path, root: bool) -> Check {
    const NAME: &str = "overlayfs";
    const COST: &str = "every run copies the benchmark's layers into a fresh rootfs (seconds per GB, and the disk space) instead of mounting the cached layers";
    if !filesystems_has(&read("/proc/filesystems"), "overlay") {
        return Check::not_ok(
            NAME,
            Status::Missing,
            "the kernel has no overlay filesystem (/proc/filesystems)",
            COST,
        );
    }
    if crate::rootfs::on_overlayfs(probe_dir) {
        return Check::not_ok(
            NAME,
            Status::Missing,
            format!(
                "the store {} is on overlayfs (a container's root?), which cannot hold an overlay upper directory",
                store.display()
            ),
            "runs in namespaces mode fail to mount their rootfs; put the store on a volume (docker run -v …:/store) or use --rootfs copy",
        );
    }
    if !root {
        return Check::not_ok(
            NAME,
            Status::Degraded,
            "the kernel has overlayfs, but hoist mounts it only as root",
            COST,
        );
    }
    match test_overlay_mount(probe_dir) {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "a test overlay mounted in {} (lowerdir+, Linux 6.8+)",
                probe_dir.display()
            ),
        ),
        Err(e) => Check::not_ok(
            NAME,
            Status::Missing,
            format!("a test overlay in {} failed: {e}", probe_dir.display()),
            COST,
        ),
    }
}

/// Mount a one-layer overlay in a temp dir under `dir`, look through it,
/// and take it down.
fn test_overlay_mount(dir: &Path) -> std::io::Result<()> {
    use crate::rootfs::mount::{mount_overlay, unmount_all, Overlay};
    let tmp = tempfile::Builder::new()
        .prefix(".hoist-doctor-")
        .tempdir_in(dir)?;
    let p = |n: &str| tmp.path().join(n);
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(p(d))?;
    }
    std::fs::write(p("lower/probe"), b"hoist")?;
    let target = std::fs::File::open(p("merged"))?;
    mount_overlay(
        &Overlay {
            lowers: &[p("lower")],
            upper: &p("upper"),
            work: &p("work"),
            userxattr: false,
        },
        std::os::fd::AsFd::as_fd(&target),
    )?;
    drop(target);
    let seen = std::fs::read(p("merged/probe"));
    unmount_all(&p("merged"))?;
    match seen {
        Ok(b) if b == b"hoist" => Ok(()),
        Ok(_) => Err(std::io::Error::other("the overlay shows other content")),
        Err(e) => Err(e),
    }
}

// ---- capabilities and seccomp --------------------------------------------

/// The value of a `Key:\tvalue` field of a `/proc/PID/status` text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

fn cap_eff(status: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, "CapEff")?, 16).ok()
}

/// The capabilities a run uses, by bit number (capability.h).
const CHROOT_CAPS: &[(u32, &str)] = &[
    (0, "CHOWN"),
    (1, "DAC_OVERRIDE"),
    (3, "FOWNER"),
    (5, "KILL"),
    (6, "SETGID"),
    (7, "SETUID"),
    (18, "SYS_CHROOT"),
    (27, "MKNOD"),
];
const SYS_ADMIN: (u32, &str) = (21, "SYS_ADMIN");
const NET_ADMIN: (u32, &str) = (12, "NET_ADMIN");

/// The names among `wanted` missing from the capability mask `eff`.
pub fn missing_caps(eff: u64, wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    wanted
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

fn capabilities_check(eff: Option<u64>, root: bool) -> Check {
    const NAME: &str = "capabilities";
    let Some(eff) = eff else {
        return Check::not_ok(
            NAME,
            Status::Missing,
            "no CapEff in /proc/self/status",
            "unknown",
        );
    };
    let chroot = missing_caps(eff, CHROOT_CAPS);
    let ns = missing_caps(eff, &[SYS_ADMIN, NET_ADMIN]);
    if !chroot.is_empty() {
        return Check::not_ok(
            NAME,
            Status::Missing,
            format!("CapEff {eff:016x} lacks {}", chroot.join(", ")),
            if root {
                "the chroot isolation cannot prepare the rootfs or drop to the agent user; give the runner Docker's default capabilities"
            } else {
                "not root: crane mode cannot sandbox (see isolation)"
            },
        );
    }
    match ns.as_slice() {
        [] => Check::ok(NAME, format!("CapEff {eff:016x}: everything a run uses")),
        ["NET_ADMIN"] => Check::ok(
            NAME,
            format!("CapEff {eff:016x}: no NET_ADMIN, so the sandbox's network namespace is made inside a user namespace"),
        ),
        _ => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("CapEff {eff:016x} lacks {}", ns.join(", ")),
            "namespaces isolation needs SYS_ADMIN (unshare, mount, pivot_root): runs use chroot; give the runner --cap-add SYS_ADMIN --security-opt seccomp=unconfined",
        ),
    }
}

fn seccomp_check(status: &str, namespaces_ok: bool) -> Check {
    const NAME: &str = "seccomp";
    let filters = status_field(status, "Seccomp_filters").unwrap_or("?");
    match status_field(status, "Seccomp") {
        Some("0") => Check::ok(NAME, "no seccomp filter"),
        Some("2") if namespaces_ok => Check::ok(
            NAME,
            format!("{filters} filter(s) installed; they allow what namespaces isolation needs"),
        ),
        Some("2") => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("{filters} filter(s) installed (Docker's default profile refuses unshare and mount)"),
            "runs use chroot instead of namespaces; run the runner with --cap-add SYS_ADMIN --security-opt seccomp=unconfined for namespaces",
        ),
        Some("1") => Check::not_ok(
            NAME,
            Status::Missing,
            "strict mode",
            "nothing but read, write and exit is allowed: hoist cannot run",
        ),
        other => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("unknown (Seccomp: {})", other.unwrap_or("absent")),
            "whether namespaces are refused is known only from the isolation probe",
        ),
    }
}

// ---- cgroups --------------------------------------------------------------

/// Whether a run's cgroup (pids, and memory for `--memory`) can be made
/// here: the sandbox's own code makes one and removes it.
fn cgroups_check() -> Check {
    const NAME: &str = "cgroups";
    let probed = cgroup::probe();
    let version = probed
        .iter()
        .find_map(|(_, r)| r.as_ref().ok())
        .map_or("no cgroup", |v| v.label());
    let failed: Vec<(Controller, &String)> = probed
        .iter()
        .filter_map(|(c, r)| r.as_ref().err().map(|why| (*c, why)))
        .collect();
    if failed.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "{version}; a run's cgroup holds pids (pids.max 1024) and, with --memory, memory"
            ),
        );
    }
    let detail = failed
        .iter()
        .map(|(c, why)| format!("{}: {why}", c.name()))
        .collect::<Vec<_>>()
        .join("; ");
    let cost = failed
        .iter()
        .map(|(c, _)| match c {
            Controller::Pids => "the run's processes are bounded only by RLIMIT_NPROC, per uid (the agent's uid to 1024; root without a user namespace not at all)",
            Controller::Memory => "memory is not limited, and `hoist run --memory` fails",
        })
        .collect::<Vec<_>>()
        .join("; ");
    Check::not_ok(
        NAME,
        if failed.len() == probed.len() {
            Status::Missing
        } else {
            Status::Degraded
        },
        format!("{version}; {detail}"),
        &cost,
    )
}

// ---- subordinate ids --------------------------------------------------------

fn subids_check(uid: u32) -> Check {
    const NAME: &str = "subordinate_ids";
    let passwd = read("/etc/passwd");
    let name = crate::userns::user_name(&passwd, uid);
    let who = name.clone().unwrap_or_else(|| uid.to_string());
    let count = |file: &str| -> u64 {
        crate::userns::ranges_for(&read(file), name.as_deref(), uid)
            .iter()
            .map(|r| u64::from(r.count))
            .sum()
    };
    let (u, g) = (count("/etc/subuid"), count("/etc/subgid"));
    let tools: Vec<&str> = ["newuidmap", "newgidmap"]
        .into_iter()
        // Where hoist itself looks for them, not along PATH.
        .filter(|t| crate::userns::find_helper(t).is_none())
        .collect();
    let detail = format!(
        "{who}: {u} subordinate uids, {g} subordinate gids; {}",
        if tools.is_empty() {
            "newuidmap and newgidmap present".to_string()
        } else {
            format!("{} not found (package uidmap)", tools.join(" and "))
        }
    );
    if u >= 65536 && g >= 65536 && tools.is_empty() {
        Check::ok(NAME, detail)
    } else {
        Check::not_ok(
            NAME,
            Status::Missing,
            detail,
            "as this user, hoist maps only its own uid: image files of other owners become this user's (counted in not_reproduced) and `hoist run` refuses to start an agent; give the user 65536 subordinate ids of each (usermod --add-subuids/--add-subgids) and install uidmap",
        )
    }
}

// ---- container ----------------------------------------------------------------

/// The signs, from what a process can see, that it runs in a container.
pub fn container_hints(
    dockerenv: bool,
    containerenv: bool,
    pid1_cgroup: &str,
    root_is_overlay: bool,
) -> Vec<String> {
    let mut v = Vec::new();
    if dockerenv {
        v.push("/.dockerenv".to_string());
    }
    if containerenv {
        v.push("/run/.containerenv".to_string());
    }
    for word in ["docker", "kubepods", "containerd", "libpod", "lxc"] {
        if pid1_cgroup.contains(word) {
            v.push(format!("/proc/1/cgroup names {word}"));
        }
    }
    if root_is_overlay {
        v.push("/ is overlayfs".to_string());
    }
    v
}

fn container_hints_here() -> Vec<String> {
    container_hints(
        Path::new("/.dockerenv").exists(),
        Path::new("/run/.containerenv").exists(),
        &read("/proc/1/cgroup"),
        crate::rootfs::on_overlayfs(Path::new("/")),
    )
}

fn container_check(hints: &[String]) -> Check {
    const NAME: &str = "container";
    if hints.is_empty() {
        Check::ok(NAME, "not inside a container, as far as can be seen")
    } else {
        Check::ok(
            NAME,
            format!("inside a container (hints: {})", hints.join(", ")),
        )
    }
}

// ---- the static binary, the store's disk ------------------------------------------

fn static_binary_check(found: &Result<PathBuf, String>) -> Check {
    const NAME: &str = "static_binary";
    match found {
        Ok(p) => {
            let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            Check::ok(NAME, format!("{} (runs inside any image)", p.display()))
        }
        Err(e) => Check::not_ok(
            NAME,
            Status::Missing,
            e.clone(),
            "hoist run --mode crane cannot start the supervisor inside the sandbox",
        ),
    }
}

/// `n` bytes as a short human figure (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The verdict on `free` bytes in the store.
pub fn disk_status(free: u64) -> Status {
    if free < DISK_CRITICAL {
        Status::Missing
    } else if free < DISK_LOW {
        Status::Degraded
    } else {
        Status::Ok
    }
}

fn disk_check(store: &Path, probe_dir: &Path) -> Check {
    const NAME: &str = "store_disk";
    let s = match rustix::fs::statvfs(probe_dir) {
        Ok(s) => s,
        Err(e) => {
            return Check::not_ok(
                NAME,
                Status::Missing,
                format!("statvfs {}: {e}", probe_dir.display()),
                "unknown free space",
            )
        }
    };
    let free = s.f_bavail.saturating_mul(s.f_frsize);
    let total = s.f_blocks.saturating_mul(s.f_frsize);
    let ro = s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY);
    let where_ = if probe_dir == store {
        store.display().to_string()
    } else {
        format!(
            "{} (not created yet; measured at {})",
            store.display(),
            probe_dir.display()
        )
    };
    let detail = format!(
        "{where_}: {} free of {}{}",
        human_bytes(free),
        human_bytes(total),
        if ro { ", read-only" } else { "" }
    );
    let status = if ro {
        Status::Missing
    } else {
        disk_status(free)
    };
    match status {
        Status::Ok => Check::ok(NAME, detail),
        s => Check::not_ok(
            NAME,
            s,
            detail,
            "blobs, the unpacked layer cache and copied rootfs trees live in the store: a benchmark image needs two to three times its size; pulls or materialize fail when it is full (hoist gc frees space)",
        ),
    }
}

// ---- Docker ----------------------------------------------------------------------

/// The Docker Engine's unix socket: `DOCKER_HOST` when it is `unix://`,
/// else the default. `Err` names a `DOCKER_HOST` that is not a socket.
pub fn docker_socket(docker_host: Option<&str>) -> Result<PathBuf, String> {
    match docker_host.filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from("/var/run/docker.sock")),
        Some(h) => h
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| format!("DOCKER_HOST={h} is not a unix socket; not checked")),
    }
}

/// The server version and API version from the raw HTTP answer to
/// `GET /version`.
pub fn parse_docker_version(response: &str) -> Result<(String, String), String> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("not an HTTP answer")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the engine answered {status:?}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let field = |k: &str| v[k].as_str().map(str::to_string);
    match (field("Version"), field("ApiVersion")) {
        (Some(ver), Some(api)) => Ok((ver, api)),
        _ => Err("the answer has no Version and ApiVersion".into()),
    }
}

fn docker_version(socket: &Path) -> Result<(String, String), String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let timeout = Some(Duration::from_secs(10));
    // Setting a timeout fails only for a zero duration.
    let _ = s.set_read_timeout(timeout);
    let _ = s.set_write_timeout(timeout);
    s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    parse_docker_version(&String::from_utf8_lossy(&answer))
}

fn docker_check() -> Check {
    const NAME: &str = "docker";
    const COST: &str = "hoist run --mode container and hoist conformance need a Docker Engine; crane mode does not";
    let socket = match docker_socket(std::env::var("DOCKER_HOST").ok().as_deref()) {
        Ok(s) => s,
        Err(e) => return Check::not_ok(NAME, Status::Degraded, e, COST),
    };
    match docker_version(&socket) {
        Ok((ver, api)) => Check::ok(
            NAME,
            format!("engine {ver} (API {api}) at {}", socket.display()),
        ),
        Err(e) => Check::not_ok(NAME, Status::Missing, e, COST),
    }
}

// ---- registries -------------------------------------------------------------------

/// The registry host of a `--registry` argument: a host itself, or an
/// image reference whose host is taken.
pub fn registry_host(arg: &str) -> Result<String, String> {
    if !arg.contains('/') && !arg.contains('@') {
        return Ok(arg.to_string());
    }
    match arg.parse::<crate::reference::Reference>() {
        Ok(crate::reference::Reference::Registry(r)) => Ok(r.registry),
        Ok(crate::reference::Reference::Layout(_)) => {
            Err("an oci: layout, not a registry".to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A `GET /v2/` status that means the registry is there: 200, or 401
/// (it wants credentials, which a pull would then send).
pub fn registry_reachable(status: u16) -> bool {
    status == 200 || status == 401
}

fn registry_checks(args: &[String], opts: &RegistryOptions) -> Vec<Check> {
    if args.is_empty() {
        return Vec::new();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![Check::not_ok(
                "registry",
                Status::Missing,
                format!("cannot start the async runtime: {e}"),
                "registries not checked",
            )]
        }
    };
    args.iter()
        .map(|arg| {
            const COST: &str = "images cannot be pulled from this registry";
            let host = match registry_host(arg) {
                Ok(h) => h,
                Err(e) => {
                    return Check::not_ok(&format!("registry:{arg}"), Status::Missing, e, COST)
                }
            };
            let name = format!("registry:{host}");
            match rt.block_on(ping_registry(&host, opts)) {
                Ok((url, status)) if registry_reachable(status) => Check::ok(
                    &name,
                    format!(
                        "{url} answered {status}{}",
                        if status == 401 {
                            " (credentials required)"
                        } else {
                            ""
                        }
                    ),
                ),
                Ok((url, status)) => Check::not_ok(
                    &name,
                    Status::Missing,
                    format!("{url} answered {status}, not a registry's 200 or 401"),
                    COST,
                ),
                Err(e) => Check::not_ok(&name, Status::Missing, e, COST),
            }
        })
        .collect()
}

/// `GET /v2/` at `host`'s endpoint as the pull client reaches it: HTTPS
/// with the system roots and any `--ca-file`; plain HTTP when HTTPS does
/// not connect and the host is loopback or named insecure.
async fn ping_registry(host: &str, opts: &RegistryOptions) -> Result<(url::Url, u16), String> {
    let ep = opts
        .endpoints(host, "library/x")
        .into_iter()
        .rfind(|e| !e.is_mirror)
        .ok_or_else(|| format!("{host}: no endpoint"))?;
    let named_insecure = opts
        .insecure
        .iter()
        .any(|h| h == host || Some(h.as_str()) == ep.base.host_str());
    let mut b = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(named_insecure);
    for path in &opts.ca_files {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let get = |mut base: url::Url, scheme: &str| {
        // Only http and https reach here; set_scheme fails for neither.
        let _ = base.set_scheme(scheme);
        let url = base.join("v2/").unwrap_or(base);
        let client = client.clone();
        async move {
            let r = client.get(url.clone()).send().await;
            (url, r)
        }
    };
    let (url, https) = get(ep.base.clone(), "https").await;
    match https {
        Ok(r) => Ok((url, r.status().as_u16())),
        Err(e) if ep.insecure && (e.is_connect() || e.is_request()) => {
            // As the pull client does; but when plain HTTP is no registry
            // either, HTTPS's own error is the one that explains.
            let https_err = format!("{url}: {}", error_chain(&e));
            let (url, http) = get(ep.base.clone(), "http").await;
            match http {
                Ok(r) if registry_reachable(r.status().as_u16()) => Ok((url, r.status().as_u16())),
                Ok(r) => Err(format!("{https_err}; {url} answered {}", r.status())),
                Err(e) => Err(format!("{https_err}; {url}: {}", error_chain(&e))),
            }
        }
        Err(e) => Err(format!("{url}: {}", error_chain(&e))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

// ---- rendering ------------------------------------------------------------------------

/// The report as a user reads it: a summary, then one line per check and,
/// under each that is not ok, what it costs.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "hoist {} doctor: kernel {}, uid {}{}\n",
        r.hoist_version,
        r.kernel,
        r.uid,
        if r.in_container {
            ", inside a container"
        } else {
            ""
        }
    );
    s.push_str(&format!(
        "crane mode here: isolation {}, rootfs {}\n\n",
        r.isolation, r.rootfs
    ));
    // A long registry name overflows its line rather than widen them all.
    let width = r
        .checks
        .iter()
        .map(|c| c.name.len())
        .filter(|&n| n <= NAME_WIDTH)
        .max()
        .unwrap_or(0);
    for c in &r.checks {
        s.push_str(&format!(
            "{:<8}  {:<width$}  {}\n",
            c.status.as_str(),
            c.name,
            c.detail
        ));
        if let Some(cost) = &c.cost {
            s.push_str(&format!("{:<8}  {:<width$}  costs: {cost}\n", "", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystems_lists_overlay_with_nodev() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        assert!(filesystems_has(text, "overlay"));
        assert!(filesystems_has(text, "ext4"));
        assert!(!filesystems_has(text, "btrfs"));
        assert!(!filesystems_has("nodev\toverlayfs\n", "overlay"));
    }

    #[test]
    fn userns_sysctls() {
        assert_eq!(userns_sysctl_verdict(None, Some("96365\n"), None), None);
        assert_eq!(
            userns_sysctl_verdict(Some("1\n"), Some("0\n"), None).as_deref(),
            Some("user.max_user_namespaces is 0")
        );
        assert_eq!(
            userns_sysctl_verdict(Some("0\n"), Some("100"), None).as_deref(),
            Some("kernel.unprivileged_userns_clone is 0")
        );
        assert_eq!(
            userns_sysctl_verdict(None, None, Some("1\n")).as_deref(),
            Some("kernel.apparmor_restrict_unprivileged_userns is 1")
        );
        assert_eq!(userns_sysctl_verdict(Some("1"), None, Some("0")), None);
    }

    const STATUS: &str = "Name:\thoist\nUid:\t0\t0\t0\t0\nCapEff:\t00000000a80425fb\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn status_fields() {
        assert_eq!(status_field(STATUS, "Seccomp"), Some("2"));
        assert_eq!(status_field(STATUS, "Seccomp_filters"), Some("1"));
        assert_eq!(status_field(STATUS, "NoSuch"), None);
        assert_eq!(cap_eff(STATUS), Some(0xa80425fb));
    }

    #[test]
    fn docker_default_caps_allow_chroot_not_namespaces() {
        // Docker's default capability set.
        let eff = 0xa80425fb;
        assert!(missing_caps(eff, CHROOT_CAPS).is_empty());
        assert_eq!(
            missing_caps(eff, &[SYS_ADMIN, NET_ADMIN]),
            vec!["SYS_ADMIN", "NET_ADMIN"]
        );
        let c = capabilities_check(Some(eff), true);
        assert_eq!(c.status, Status::Degraded);
        assert!(c.detail.contains("SYS_ADMIN"), "{c:?}");
    }

    #[test]
    fn sys_admin_without_net_admin_is_enough() {
        let c = capabilities_check(Some(0xa80425fb | 1 << 21), true);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("no NET_ADMIN"));
    }

    #[test]
    fn no_caps_is_missing() {
        let c = capabilities_check(Some(0), false);
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.contains("SYS_CHROOT"));
    }

    #[test]
    fn seccomp_verdicts() {
        assert_eq!(seccomp_check("Seccomp:\t0\n", false).status, Status::Ok);
        assert_eq!(seccomp_check(STATUS, true).status, Status::Ok);
        let c = seccomp_check(STATUS, false);
        assert_eq!(c.status, Status::Degraded);
        assert!(c.cost.unwrap().contains("seccomp=unconfined"));
        assert_eq!(
            seccomp_check("Seccomp:\t1\n", false).status,
            Status::Missing
        );
        assert_eq!(seccomp_check("", false).status, Status::Degraded);
    }

    #[test]
    fn container_signs() {
        assert!(container_hints(false, false, "0::/\n", false).is_empty());
        assert_eq!(
            container_hints(true, false, "0::/docker/abc\n", true),
            vec![
                "/.dockerenv",
                "/proc/1/cgroup names docker",
                "/ is overlayfs"
            ]
        );
        assert_eq!(
            container_hints(false, true, "0::/kubepods/x\n", false),
            vec!["/run/.containerenv", "/proc/1/cgroup names kubepods"]
        );
    }

    #[test]
    fn bytes_for_humans() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn disk_thresholds() {
        assert_eq!(disk_status(100 << 30), Status::Ok);
        assert_eq!(disk_status(1 << 30), Status::Degraded);
        assert_eq!(disk_status(1 << 20), Status::Missing);
    }

    #[test]
    fn docker_socket_from_docker_host() {
        assert_eq!(docker_socket(None), Ok("/var/run/docker.sock".into()));
        assert_eq!(docker_socket(Some("")), Ok("/var/run/docker.sock".into()));
        assert_eq!(
            docker_socket(Some("unix:///run/user/1000/docker.sock")),
            Ok("/run/user/1000/docker.sock".into())
        );
        assert!(docker_socket(Some("tcp://10.0.0.1:2376"))
            .unwrap_err()
            .contains("not a unix socket"));
    }

    #[test]
    fn docker_version_answer() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Version\":\"20.10.24+dfsg1\",\"ApiVersion\":\"1.41\"}\n";
        assert_eq!(
            parse_docker_version(ok),
            Ok(("20.10.24+dfsg1".into(), "1.41".into()))
        );
        let err = "HTTP/1.0 500 Internal Server Error\r\n\r\n{}";
        assert!(parse_docker_version(err).unwrap_err().contains("500"));
        assert!(parse_docker_version("garbage").is_err());
        assert!(parse_docker_version("HTTP/1.0 200 OK\r\n\r\n{}").is_err());
    }

    #[test]
    fn registry_hosts_from_args() {
        assert_eq!(registry_host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            registry_host("127.0.0.1:5000/samples/pyfix@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_host("alpine/git").unwrap(), "docker.io");
        assert!(registry_host("oci:/x:tag").is_err());
    }

    #[test]
    fn reachable_statuses() {
        assert!(registry_reachable(200));
        assert!(registry_reachable(401));
        assert!(!registry_reachable(404));
        assert!(!registry_reachable(503));
    }

    #[test]
    fn userns_verdicts() {
        let refused = Probe::Refused("unshare: EPERM".into());
        let ok = userns_verdict(true, &Probe::Made, &Probe::Made, None);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.detail.ends_with("as root and as nobody"));
        let v = userns_verdict(false, &Probe::Made, &Probe::Made, None);
        assert_eq!(v.status, Status::Ok);
        assert!(v.detail.contains("unprivileged"));
        let v = userns_verdict(true, &Probe::Made, &refused, Some("x is 0".into()));
        assert_eq!(v.status, Status::Degraded);
        assert!(v.detail.contains("x is 0"), "{v:?}");
        let not_run = Probe::NotRun("cannot start: EACCES".into());
        let v = userns_verdict(true, &Probe::Made, &not_run, None);
        assert_eq!(v.status, Status::Ok);
        assert!(v.detail.contains("not tried as nobody"), "{v:?}");
        let v = userns_verdict(true, &refused, &refused, None);
        assert_eq!(v.status, Status::Missing);
        assert!(v.detail.contains("seccomp"), "{v:?}");
        assert!(v.cost.unwrap().contains("CAP_NET_ADMIN"));
        let v = userns_verdict(false, &refused, &refused, None);
        assert!(v.cost.unwrap().contains("rootless"));
    }

    #[test]
    fn isolation_verdicts() {
        assert_eq!(isolation_check(&Ok(()), true).status, Status::Ok);
        let c = isolation_check(&Err("unshare: EPERM".into()), true);
        assert_eq!(c.status, Status::Degraded);
        assert!(c.detail.starts_with("chroot"));
        assert!(c
            .cost
            .unwrap()
            .contains("shares the container's pid, network and ipc namespaces"));
        assert!(chroot_cost(&[]).contains("make up for them"));
        assert!(chroot_cost(&["network: x".into()]).ends_with("cannot make up for: network: x"));
        assert_eq!(
            isolation_check(&Err("x".into()), false).status,
            Status::Missing
        );
    }

    fn sample_report() -> Report {
        Report {
            schema: SCHEMA,
            hoist_version: "0.1.0",
            kernel: "6.8.0".into(),
            uid: 0,
            isolation: "chroot".into(),
            rootfs: "copy".into(),
            in_container: true,
            checks: vec![
                Check::ok("static_binary", "/usr/local/bin/hoist"),
                Check::not_ok("overlayfs", Status::Missing, "no mount", "copies"),
            ],
        }
    }

    #[test]
    fn rendering() {
        let text = render(&sample_report());
        assert_eq!(
            text,
            "hoist 0.1.0 doctor: kernel 6.8.0, uid 0, inside a container\n\
             crane mode here: isolation chroot, rootfs copy\n\
             \n\
             ok        static_binary  /usr/local/bin/hoist\n\
             missing   overlayfs      no mount\n\
             \x20                        costs: copies\n"
        );
    }

    #[test]
    fn report_json_and_verdict() {
        let r = sample_report();
        assert!(r.crane_can_run());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["checks"][1]["status"], "missing");
        assert_eq!(v["checks"][0]["cost"], serde_json::Value::Null);
        let mut none = r.clone();
        none.isolation = "none".into();
        assert!(!none.crane_can_run());
    }
}
