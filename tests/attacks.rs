//! The project's own hostile agents (agents/hostile-*, beyond agent-probe)
//! against the threat model of docs/threat-model.md, in every setting hoist runs in:
//!
//! - `namespaces`: `hoist run --isolation namespaces` on this host;
//! - `chroot`: `hoist run --isolation chroot` on this host;
//! - `runner`: the runner image under Docker's default profile (chroot
//!   isolation), with two runs at once in one runner container: a victim
//!   (agent-sleeper with the replay gateway) started by `docker run`, the
//!   attack started beside it by `docker exec`;
//! - `container`: `hoist run --mode container`.
//!
//! Each test runs one hostile agent in one setting and asserts the outcome
//! the threat model demands of every attempt the agent reports (its JSON
//! lines in install.log, agent.log or grade.log: `denied` true, or null
//! where only the host or a later phase can judge), that the run itself
//! completed, and then checks the host: nothing but plain files in
//! `--out`, the sentinel directory unchanged and no marker created, the
//! store's blobs intact and no marker in its layer cache, no process left,
//! and the test's listeners never reached. All failures of a test are
//! collected and reported together, one line per attempt (`ATTACK
//! SETTING/AGENT ROLE/ATTEMPT: denied|ESCAPED|prepared: detail` on stderr),
//! so a failing test is the "before" table of its setting. Where the
//! kernel's Landlock ABI lacks what an attempt needs (`KERNEL_GAPS`), an
//! escape passes only if run.json `not_isolated` names the gap.
//!
//! The hostile code gets no parameters (the agent's environment is
//! cleared): the values are fixed here and in agents/hostile-lib/hostile.py
//! — a TCP and a UDP listener on 127.0.0.1:47911, the abstract unix socket
//! `@hoist-attack-47911`, the directory `/tmp/hoist-attack-host` holding
//! `sentinel` (bind-mounted at the same path into the runner container,
//! the runner's "host"). Every test takes `/tmp/hoist-attack.lock` for its
//! whole length, so no two use them at once.
//!
//! In `namespaces` and `chroot`, hoist is started with one descriptor of
//! the host's left open (the sentinel directory, not close-on-exec), so
//! `open-fds` does not depend on what the test harness happens to leak.
//! The runner container runs with `--network host`, as
//! tests/runner_image.rs runs it (to reach a registry on the host's
//! loopback): the runner's network is the host's.
//!
//! The whole file takes about 2.5 minutes here (2 cores): 4-6 s a test in
//! namespaces, 9-13 s in chroot (the rootfs is copied), 14-25 s in the
//! runner and container mode.
//!
//! Needs root and the samples (`HOIST_SAMPLES_OCI` with the agent-hostile-*
//! tags); `runner` and `container` also need Docker (`HOIST_TEST_DOCKER=1`)
//! and the static hoist. Skips with the reason otherwise.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The fixed values the hostile code uses (agents/hostile-lib/hostile.py).
const PORT: u16 = 47911;
const ABSTRACT: &[u8] = b"hoist-attack-47911";
const HOST_DIR: &str = "/tmp/hoist-attack-host";
const SENTINEL_TEXT: &[u8] = b"hoist-attack-sentinel: the host side of an attack test\n";
const STORE_MARKER: &str = "hoist-attack-store-marker";
const LOCK: &str = "/tmp/hoist-attack.lock";

const RUNNER_IMAGE: &str = "hoist-runner:attacks";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setting {
    Namespaces,
    Chroot,
    Runner,
    Container,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Attack {
    Install,
    Run,
    Grader,
}

impl Attack {
    fn tag(self) -> &'static str {
        match self {
            Attack::Install => "agent-hostile-install",
            Attack::Run => "agent-hostile-run",
            Attack::Grader => "agent-hostile-grader",
        }
    }
}

/// What the threat model demands of one attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// `denied: true`: hoist stopped it.
    Denied,
    /// `true` or `null`: the attempt only prepared something (a file in
    /// /output, a planted trojan) that the host checks or a later attempt
    /// reports on; `false` is never right.
    Judged,
    /// `null`: the preparation must have worked, or the test proves nothing.
    Prepared,
}

use Expect::*;

/// The network attempts every role makes (hostile.py `network`).
const NETWORK: &[Attempt] = &[
    ("tcp-host-listener", Denied),
    ("abstract-unix", Denied),
    ("udp-host-listener", Judged),
    ("udp-dns-8.8.8.8", Denied),
    ("udp-dns-127.0.0.1", Denied),
];

const PROCESSES: &[Attempt] = &[
    ("kill-bruteforce", Denied),
    ("ptrace-supervisor", Denied),
    ("ptrace-others", Denied),
];

const OUTPUT: &[Attempt] = &[
    ("output-setuid-task", Judged),
    ("output-setuid", Judged),
    ("output-symlink", Judged),
    ("output-fifo", Judged),
    ("output-device", Judged),
];

/// Attempts that Landlock denies only from some ABI on: (attempt, the ABI
/// that gives it, a word the run.json `not_isolated` line about the gap
/// must hold). On a kernel below that ABI an escape is accepted only when
/// run.json names the gap; on this kernel (ABI 7) none is accepted.
const KERNEL_GAPS: &[(&str, u32, &str)] = &[
    ("tcp-host-listener", 4, "tcp"),
    ("tcp-portscan", 4, "tcp"),
    ("kill-bruteforce", 6, "signal"),
    ("abstract-unix", 6, "abstract"),
    ("abstract-unix-listed", 6, "abstract"),
];

/// The kernel's Landlock ABI version (`landlock_create_ruleset(NULL, 0,
/// LANDLOCK_CREATE_RULESET_VERSION)`, x86_64 syscall 444), asked through the
/// host's python3 (tests keep `unsafe` out); 0 when it cannot tell.
fn landlock_abi() -> u32 {
    let o = Command::new("python3")
        .args([
            "-c",
            "import ctypes; print(ctypes.CDLL(None, use_errno=True).syscall(444, None, 0, 1))",
        ])
        .output();
    o.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

/// One attempt's name and what is demanded of it.
type Attempt = (&'static str, Expect);

/// (log file in OUT/task, role in its summary line, attempts).
fn expected(attack: Attack) -> Vec<(&'static str, &'static str, Vec<Attempt>)> {
    let cat = |parts: &[&[Attempt]]| parts.concat();
    match attack {
        Attack::Install => vec![
            (
                "install.log",
                "install",
                cat(&[
                    &[
                        ("open-fds", Denied),
                        ("read-hidden", Denied),
                        ("copy-for-agent", Denied),
                        // chmod is no Landlock right: it may go through, and
                        // the agent's read-hidden says whether it mattered.
                        ("chmod-hidden", Judged),
                        ("plant-trojan", Judged),
                        ("setuid-for-agent", Judged),
                    ],
                    OUTPUT,
                    &[
                        ("chroot-escape", Denied),
                        ("mount-tmpfs", Denied),
                        ("unshare-mount-ns", Denied),
                        ("unshare-user-ns", Denied),
                    ],
                    PROCESSES,
                    NETWORK,
                ]),
            ),
            (
                "agent.log",
                "agent-after-install",
                vec![
                    ("open-fds", Denied),
                    ("read-hidden", Denied),
                    ("leak-home", Denied),
                    ("leak-tmp", Denied),
                    ("trojan-ran", Denied),
                    // Through the gateway's HTTP server: only a gateway
                    // that runs the trojan could answer.
                    ("trojan-served", Denied),
                    ("setuid-shell", Denied),
                ],
            ),
        ],
        Attack::Run => vec![(
            "agent.log",
            "agent",
            cat(&[
                &[("open-fds", Denied)],
                PROCESSES,
                &[("tcp-portscan", Denied), ("abstract-unix-listed", Denied)],
                NETWORK,
                &[
                    ("io_uring_setup", Denied),
                    ("bpf", Denied),
                    ("perf_event_open", Denied),
                    ("userfaultfd", Denied),
                    ("keyctl", Denied),
                    ("unshare-user-ns", Denied),
                    ("clone-newuser", Denied),
                ],
            ]),
        )],
        Attack::Grader => vec![
            (
                "agent.log",
                "agent-planting",
                vec![("plant-grader-hook", Prepared)],
            ),
            (
                "grade.log",
                "grader",
                cat(&[
                    OUTPUT,
                    &[("chroot-escape", Denied), ("store-write", Denied)],
                    PROCESSES,
                    NETWORK,
                ]),
            ),
        ],
    }
}

struct Env {
    oci: PathBuf,
    task: String,
}

fn env(setting: Setting) -> Option<Env> {
    if !is_root() {
        skip("the attack tests need root (namespaces, chroot, docker)");
        return None;
    }
    let oci = PathBuf::from(env_or_skip("HOIST_SAMPLES_OCI")?);
    let tags = env_or_skip("HOIST_SAMPLES_TAGS")?;
    for a in [Attack::Install, Attack::Run, Attack::Grader] {
        if !tags.split_whitespace().any(|t| t == a.tag()) {
            skip(&format!(
                "the samples lack {}: rebuild them (scripts/build-samples)",
                a.tag()
            ));
            return None;
        }
    }
    let task = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
        .split_whitespace()
        .next()?
        .to_string();
    if matches!(setting, Setting::Runner | Setting::Container) {
        if !have_docker() {
            return None;
        }
        if static_hoist().is_none() {
            skip("no static hoist: run scripts/build-static");
            return None;
        }
    }
    Some(Env { oci, task })
}

// ---- the host side of an attack test --------------------------------------------

/// `/tmp/hoist-attack.lock`, held for the whole test: the port, the
/// abstract name and the sentinel directory are fixed.
struct AttackLock(#[allow(dead_code)] std::fs::File);

fn lock() -> AttackLock {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap_or_else(|e| panic!("{LOCK}: {e}"));
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("flock {LOCK}: {e}"));
    AttackLock(f)
}

/// A fresh `/tmp/hoist-attack-host` holding only `sentinel`.
fn fresh_host_dir() {
    let dir = Path::new(HOST_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{HOST_DIR}: {e}"));
    }
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sentinel = dir.join("sentinel");
    std::fs::write(&sentinel, SENTINEL_TEXT).unwrap();
    std::fs::set_permissions(&sentinel, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The sentinel directory after the run: only `sentinel`, unchanged; what
/// else is there (an escape's marker, a file written through a link from
/// --out) is a failure. Leaves the directory fresh.
fn check_host_dir(failures: &mut Vec<String>) {
    let dir = Path::new(HOST_DIR);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in names.iter().filter(|n| *n != "sentinel") {
        let text = std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        failures.push(format!(
            "host: {HOST_DIR}/{n} was created from inside the run: {:?}",
            text.chars().take(120).collect::<String>()
        ));
    }
    match std::fs::read(dir.join("sentinel")) {
        Ok(b) if b == SENTINEL_TEXT => {}
        Ok(b) => failures.push(format!(
            "host: {HOST_DIR}/sentinel changed: {:?}",
            String::from_utf8_lossy(&b)
        )),
        Err(e) => failures.push(format!("host: {HOST_DIR}/sentinel: {e}")),
    }
    fresh_host_dir();
}

/// What reached the test's listeners on 127.0.0.1:47911 (TCP, UDP) and
/// `@hoist-attack-47911`.
struct Listeners {
    stop: Arc<AtomicBool>,
    tcp: Arc<AtomicUsize>,
    udp: Arc<AtomicUsize>,
    unix: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listeners {
    fn start() -> Listeners {
        use std::os::linux::net::SocketAddrExt;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", PORT))
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:{PORT} (TCP): {e}"));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", PORT))
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:{PORT} (UDP): {e}"));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(ABSTRACT).unwrap();
        let unix = std::os::unix::net::UnixListener::bind_addr(&addr)
            .unwrap_or_else(|e| panic!("binding @hoist-attack-47911: {e}"));
        for r in [
            tcp.set_nonblocking(true),
            udp.set_nonblocking(true),
            unix.set_nonblocking(true),
        ] {
            r.unwrap();
        }
        let l = Listeners {
            stop: Arc::new(AtomicBool::new(false)),
            tcp: Arc::new(AtomicUsize::new(0)),
            udp: Arc::new(AtomicUsize::new(0)),
            unix: Arc::new(AtomicUsize::new(0)),
            peers: Arc::new(Mutex::new(Vec::new())),
            thread: None,
        };
        let (stop, nt, nu, nx, peers) = (
            l.stop.clone(),
            l.tcp.clone(),
            l.udp.clone(),
            l.unix.clone(),
            l.peers.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                while let Ok((_, peer)) = tcp.accept() {
                    nt.fetch_add(1, Ordering::Relaxed);
                    peers.lock().unwrap().push(format!("tcp from {peer}"));
                }
                while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    nu.fetch_add(1, Ordering::Relaxed);
                    peers.lock().unwrap().push(format!(
                        "udp from {peer}: {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    ));
                }
                while unix.accept().is_ok() {
                    nx.fetch_add(1, Ordering::Relaxed);
                    peers.lock().unwrap().push("abstract unix".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Listeners {
            thread: Some(thread),
            ..l
        }
    }

    fn check(mut self, failures: &mut Vec<String>) {
        // What is still queued is counted on the last pass.
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let (t, u, x) = (
            self.tcp.load(Ordering::Relaxed),
            self.udp.load(Ordering::Relaxed),
            self.unix.load(Ordering::Relaxed),
        );
        if t + u + x > 0 {
            failures.push(format!(
                "host: the test's listeners were reached ({t} TCP connections, {u} UDP datagrams, {x} abstract unix connections): {:?}",
                self.peers.lock().unwrap()
            ));
        }
    }
}

/// A uid-1000 process of the host's that is not the run's: what a chroot
/// agent shares a pid namespace with.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> Bystander {
        Bystander(
            Command::new("setpriv")
                .args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
                .args(["sleep", "4791"])
                .spawn()
                .expect("setpriv (util-linux)"),
        )
    }

    fn check(mut self, failures: &mut Vec<String>) {
        if self.0.try_wait().unwrap().is_some() {
            failures.push("host: the bystander (uid 1000, not the run's) was killed".into());
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A panicking check of tests/support, as one more failure of the list.
fn caught(failures: &mut Vec<String>, what: &str, check: impl FnOnce() + std::panic::UnwindSafe) {
    if let Err(e) = std::panic::catch_unwind(check) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failures.push(format!("host: {what}: {msg}"));
    }
}

/// The store: `hoist store verify` finds every blob and cached layer as
/// it was made, and no marker of the hostile grader is anywhere in it (the
/// layer cache included). Markers found are removed, so that one escape
/// does not fail the tests after it.
fn check_store(store: &Path, failures: &mut Vec<String>) {
    caught(failures, "the store", || assert_store_verifies(store));
    let mut stack = vec![store.to_path_buf()];
    let mut depth = BTreeMap::new();
    depth.insert(store.to_path_buf(), 0usize);
    while let Some(dir) = stack.pop() {
        let d = depth[&dir];
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name() == STORE_MARKER {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let _ = std::fs::remove_file(&p);
                failures.push(format!(
                    "host: the store was written from inside a run: {} ({:?})",
                    p.display(),
                    text.trim()
                ));
            }
            // The marker goes at most three levels below the store (a
            // layer's top directory, STORE/layers/sha256/DIGEST); the rest
            // of the cache need not be walked.
            if d < 3 && e.file_type().is_ok_and(|t| t.is_dir()) {
                depth.insert(p.clone(), d + 1);
                stack.push(p);
            }
        }
    }
}

/// No process of the run is left (a descendant of this test, any uid).
fn check_no_leftovers(failures: &mut Vec<String>) {
    for uid in [1000, 0] {
        let left = processes_of(uid, "");
        if !left.is_empty() {
            failures.push(format!("host: uid {uid} processes left running: {left:?}"));
        }
    }
}

// ---- reading what the hostile code reported --------------------------------------

/// Every expected attempt against what the logs in `task` say; one line per
/// attempt on stderr (the table), failures collected.
fn check_attempts(
    label: &str,
    attack: Attack,
    task: &Path,
    not_isolated: &[String],
    failures: &mut Vec<String>,
) {
    let abi = landlock_abi();
    for (log, role, attempts) in expected(attack) {
        let (text, lines) = json_lines(&task.join(log));
        let done = lines
            .iter()
            .find(|l| l["hostile"] == "done" && l["role"] == role);
        if done.is_none() {
            let tail: String = text
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            failures.push(format!(
                "{log}: the hostile {role} never finished (no summary line); the log ends: {tail:?}"
            ));
        }
        for (name, expect) in attempts {
            let found = lines.iter().find(|l| l["attempt"] == name).map(|l| {
                (
                    l["denied"].clone(),
                    l["detail"].as_str().unwrap_or("").to_string(),
                )
            });
            let Some((denied, detail)) = found else {
                eprintln!("ATTACK {label} {role}/{name}: NOT RUN");
                if done.is_some() || expect != Judged {
                    failures.push(format!(
                        "{log}: {role}/{name}: no report (the attempt did not run)"
                    ));
                }
                continue;
            };
            // What this kernel cannot give, stated in run.json.
            let gap = KERNEL_GAPS
                .iter()
                .find(|(a, needs, _)| *a == name && abi < *needs)
                .and_then(|(_, _, word)| {
                    not_isolated
                        .iter()
                        .find(|l| l.to_lowercase().contains(word))
                });
            if let (Some(line), Value::Bool(false)) = (gap, &denied) {
                eprintln!("ATTACK {label} {role}/{name}: not isolated on Landlock ABI {abi}, as run.json says: {line}");
                continue;
            }
            let ok = match expect {
                Denied => denied == Value::Bool(true),
                Judged => denied != Value::Bool(false),
                Prepared => denied == Value::Null,
            };
            let shown = match &denied {
                Value::Bool(true) => "denied",
                Value::Bool(false) => "ESCAPED",
                _ => "prepared",
            };
            eprintln!("ATTACK {label} {role}/{name}: {shown}: {detail}");
            if !ok {
                failures.push(format!(
                    "{log}: {role}/{name}: {shown} (wanted {expect:?}): {detail}"
                ));
            }
        }
    }
}

// ---- running one attack in one setting ----------------------------------------------

fn store_of(setting: Setting) -> PathBuf {
    let name = match setting {
        Setting::Namespaces | Setting::Chroot => "attacks-store",
        Setting::Runner => "attacks-runner-store",
        Setting::Container => "attacks-container-store",
    };
    let p = test_dir().join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The `hoist run` arguments of the attack, with image references built by
/// `r` (an `oci:` layout on the host, or as mounted in the runner).
fn run_args(e: &Env, attack: Attack, r: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut v = vec![
        "--benchmark".to_string(),
        r("pyfix"),
        "--agent".into(),
        r(attack.tag()),
        "--task".into(),
        e.task.clone(),
        "--agent-timeout".into(),
        "150".into(),
        "--grade-timeout".into(),
        "150".into(),
    ];
    if attack == Attack::Install {
        // The trojan's chance: a root process started after install.sh.
        v.extend(["--gateway".to_string(), r("gateway-replay")]);
    }
    v
}

/// The host directory holding `task/` and `run.json` of the attack's run.
struct Ran {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    output: Output,
}

fn run_crane(e: &Env, setting: Setting, attack: Attack) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let isolation = if setting == Setting::Chroot {
        "chroot"
    } else {
        "namespaces"
    };
    let oci = e.oci.display().to_string();
    // A descriptor of the host's that hoist inherits (not close-on-exec),
    // of the sentinel directory: none may reach a phase in the sandbox
    // (`open-fds`, which creates a marker through it), whatever hoist's
    // caller left open. Open until the run ends.
    let inherited = std::fs::File::open(HOST_DIR).unwrap();
    rustix::io::fcntl_setfd(&inherited, rustix::io::FdFlags::empty()).unwrap();
    let output = run(hoist(&store_of(setting))
        .args(["run", "--mode", "crane", "--isolation", isolation])
        .args(run_args(e, attack, &|t| format!("oci:{oci}:{t}")))
        .arg("--out")
        .arg(&out));
    drop(inherited);
    Ran {
        _tmp: tmp,
        out,
        output,
    }
}

fn run_container_mode(e: &Env, attack: Attack) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let oci = e.oci.display().to_string();
    let output = run(hoist(&store_of(Setting::Container))
        .env("HOIST_DOCKER", DOCKER)
        .args(["run", "--mode", "container"])
        .args(run_args(e, attack, &|t| format!("oci:{oci}:{t}")))
        .arg("--out")
        .arg(&out));
    Ran {
        _tmp: tmp,
        out,
        output,
    }
}

/// Removes the named container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER).args(["rm", "-f", &self.0]).output();
    }
}

fn build_runner_image() {
    let bin = static_hoist().expect("the static hoist");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner-image");
    ok(Command::new(script)
        .arg("--binary")
        .arg(bin)
        .args(["--tag", RUNNER_IMAGE]));
}

/// Two runs in one runner container under Docker's default profile: the
/// victim (the sleeper, with a gateway) as the container's own command,
/// the attack beside it through `docker exec`, once the victim's agent
/// runs. The victim must still be running when the attack is done.
fn run_in_runner(e: &Env, attack: Attack, failures: &mut Vec<String>) -> Ran {
    build_runner_image();
    let tmp = tempfile::tempdir().unwrap();
    let out_root = tmp.path().join("out");
    std::fs::create_dir(&out_root).unwrap();
    let name = format!("hoist-attacks-{}", std::process::id());
    let _c = Container(name.clone());
    let _ = Command::new(DOCKER).args(["rm", "-f", &name]).output();
    let r = |t: &str| format!("oci:/samples:{t}");
    ok(Command::new(DOCKER)
        .args(["run", "-d", "--name", &name, "--network", "host"])
        .arg("-v")
        .arg(format!("{}:/out", out_root.display()))
        .arg("-v")
        .arg(format!("{}:/store", store_of(Setting::Runner).display()))
        .arg("-v")
        .arg(format!("{}:/samples:ro", e.oci.display()))
        .arg("-v")
        .arg(format!("{HOST_DIR}:{HOST_DIR}"))
        .arg(RUNNER_IMAGE)
        .args([
            "run",
            "--benchmark",
            &r("pyfix"),
            "--agent",
            &r("agent-sleeper"),
        ])
        .args(["--gateway", &r("gateway-replay"), "--task", &e.task])
        .args(["--agent-timeout", "300", "--out", "/out/victim"]));
    let started = Instant::now();
    loop {
        let top = run(Command::new(DOCKER).args(["top", &name]));
        if stdout(&top).contains("sleep 100000") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the victim's agent never started: {}{}",
            stdout(&top),
            stderr(&top)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = run(Command::new(DOCKER)
        .args(["exec", &name, "/usr/local/bin/hoist", "run"])
        .args(run_args(e, attack, &r))
        .args(["--out", "/out/attack"]));
    let top = run(Command::new(DOCKER).args(["top", &name]));
    if !stdout(&top).contains("sleep 100000") {
        failures.push(format!(
            "runner: the victim run's agent is gone after the attack: {}",
            stdout(&top)
        ));
    }
    drop(_c);
    // The victim was killed with its container: its rootfs copy stays in
    // the store's work directory (only these tests use this store, one at
    // a time).
    if let Ok(entries) = std::fs::read_dir(store_of(Setting::Runner).join("work")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("run-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ran {
        _tmp: tmp,
        out: out_root.join("attack"),
        output,
    }
}

/// One attack in one setting, and every check; panics with all failures.
fn attack_in(setting: Setting, attack: Attack) {
    let Some(e) = env(setting) else { return };
    let _lock = lock();
    adopt_orphans();
    fresh_host_dir();
    let label = format!("{setting:?}/{attack:?}");
    let listeners = Listeners::start();
    let bystander = Bystander::start();
    let mut failures = Vec::new();
    let started = Instant::now();
    let ran = match setting {
        Setting::Namespaces | Setting::Chroot => run_crane(&e, setting, attack),
        Setting::Runner => run_in_runner(&e, attack, &mut failures),
        Setting::Container => run_container_mode(&e, attack),
    };
    eprintln!("ATTACK {label}: the run took {:.1?}", started.elapsed());

    // The run itself completed.
    if !ran.output.status.success() {
        failures.push(format!(
            "the run failed ({}): {}{}",
            ran.output.status,
            stdout(&ran.output),
            stderr(&ran.output)
        ));
    }
    let task = ran.out.join("task");
    let result: Option<Value> = std::fs::read(task.join("result.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match &result {
        None => failures.push("no result.json".into()),
        Some(r) => {
            if r["infra_error"] != Value::Null {
                failures.push(format!("infra_error: {}", r["infra_error"]));
            }
            if attack == Attack::Grader
                && r["grade"]["tests"].as_object().is_none_or(|t| t.is_empty())
            {
                failures.push(format!("the grader reported no tests: {r}"));
            }
        }
    }
    // run.json is read without following a link: a planted one is
    // reported by the output check, not read through.
    let run_json = ran.out.join("run.json");
    let not_isolated: Vec<String> = std::fs::symlink_metadata(&run_json)
        .ok()
        .filter(|m| m.is_file())
        .and_then(|_| std::fs::read(&run_json).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["not_isolated"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    check_attempts(&label, attack, &task, &not_isolated, &mut failures);
    // The gateway runs from a tree install.sh never touched, and grading
    // in a fresh rootfs: no root process of the run but install.sh's own
    // may run what install.sh planted.
    for log in ["gateway.log", "grade.log"] {
        let text = std::fs::read_to_string(task.join(log)).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("HOIST-ATTACK-TROJAN-RAN")) {
            failures.push(format!("{log}: the trojan ran: {line}"));
        }
    }

    // The host afterwards.
    caught(&mut failures, "--out", || {
        assert_host_clean_output(&ran.out)
    });
    listeners.check(&mut failures);
    check_host_dir(&mut failures);
    check_store(&store_of(setting), &mut failures);
    bystander.check(&mut failures);
    check_no_leftovers(&mut failures);
    if !failures.is_empty() {
        let mut log = String::new();
        for f in ["install.log", "agent.log", "grade.log"] {
            if let Ok(mut h) = std::fs::File::open(task.join(f)) {
                let mut s = String::new();
                let _ = h.read_to_string(&mut s);
                log.push_str(&format!("---- {f}\n{s}"));
            }
        }
        panic!(
            "{label}: {} failures:\n  {}\nrun.json not_isolated: {not_isolated:?}\n{log}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

#[test]
fn hostile_install_namespaces() {
    attack_in(Setting::Namespaces, Attack::Install);
}

#[test]
fn hostile_install_chroot() {
    attack_in(Setting::Chroot, Attack::Install);
}

#[test]
fn hostile_install_runner() {
    attack_in(Setting::Runner, Attack::Install);
}

#[test]
fn hostile_install_container() {
    attack_in(Setting::Container, Attack::Install);
}

#[test]
fn hostile_run_namespaces() {
    attack_in(Setting::Namespaces, Attack::Run);
}

#[test]
fn hostile_run_chroot() {
    attack_in(Setting::Chroot, Attack::Run);
}

#[test]
fn hostile_run_runner() {
    attack_in(Setting::Runner, Attack::Run);
}

#[test]
fn hostile_run_container() {
    attack_in(Setting::Container, Attack::Run);
}

#[test]
fn hostile_grader_namespaces() {
    attack_in(Setting::Namespaces, Attack::Grader);
}

#[test]
fn hostile_grader_chroot() {
    attack_in(Setting::Chroot, Attack::Grader);
}

#[test]
fn hostile_grader_runner() {
    attack_in(Setting::Runner, Attack::Grader);
}

#[test]
fn hostile_grader_container() {
    attack_in(Setting::Container, Attack::Grader);
}
