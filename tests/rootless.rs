//! Rootless hoist, for real: the tests run as root, and run hoist as the
//! unprivileged user `scripts/test-env` makes (`hoist-rootless`, with
//! subordinate ids) through `setpriv`, and as `nobody` (without any).
//! Images come from the test registry by digest, since the build
//! directory may not be readable by other users.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::*;

struct Rootless {
    user: String,
    uid: u32,
    /// The first subordinate uid: image uid 1 lands there on the host.
    subuid: u32,
    registry: String,
    pyfix_tasks: Vec<String>,
    swe_tasks: Vec<String>,
    /// Tasks the replay gateway has recordings for.
    replay_tasks: Vec<String>,
    /// A static hoist that the user can execute.
    bin: PathBuf,
    /// A directory the user owns, removed at the end.
    home: tempfile::TempDir,
}

fn setup() -> Option<Rootless> {
    if !is_root() {
        skip("the rootless tests switch users with setpriv, which needs root");
        return None;
    }
    let user = env_or_skip("HOIST_TEST_ROOTLESS_USER")?;
    let registry = env_or_skip("HOIST_SAMPLES_REGISTRY")?;
    let words = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let pyfix_tasks = words(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?);
    let swe_tasks = words(env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?);
    let replay_tasks = words(env_or_skip("HOIST_SAMPLES_REPLAY_TASKS")?);
    let uid = id_of(&user);
    let subuid = std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == user).then(|| f[1].parse().unwrap())
        })
        .expect("scripts/test-env gives the rootless user subordinate ids");
    let home = tempfile::Builder::new()
        .prefix("hoist-rootless-")
        .tempdir_in("/tmp")
        .unwrap();
    chown(home.path(), &user);
    let bin = reachable_binary(&user, home.path());
    Some(Rootless {
        user,
        uid,
        subuid,
        registry,
        pyfix_tasks,
        swe_tasks,
        replay_tasks,
        bin,
        home,
    })
}

fn id_of(user: &str) -> u32 {
    let o = ok(Command::new("id").args(["-u", user]));
    stdout(&o).trim().parse().unwrap()
}

fn chown(path: &Path, user: &str) {
    ok(Command::new("chown").arg(format!("{user}:")).arg(path));
}

/// The static hoist, or a copy of it in `dir` when the user cannot reach
/// the build directory (a clone under /root).
fn reachable_binary(user: &str, dir: &Path) -> PathBuf {
    let built = static_hoist()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .expect("the static hoist (scripts/build-static) is built before the tests");
    let can_run = as_user(user, &[])
        .arg("test")
        .arg("-x")
        .arg(&built)
        .status()
        .unwrap()
        .success();
    if can_run {
        return built;
    }
    let copy = dir.join("hoist");
    std::fs::copy(&built, &copy).unwrap();
    copy
}

/// The `tree-digest --list` of what root materializes (a copy) from the
/// axis arguments `axes`.
fn root_listing(axes: &[&str]) -> String {
    let store = tempfile::tempdir().unwrap();
    let out = store.path().join("rootfs");
    let out_arg = out.to_str().unwrap();
    ok(hoist(store.path())
        .args(["materialize", "--rootfs", "copy", "--out", out_arg])
        .args(axes));
    stdout(&ok(hoist(store.path()).args([
        "tree-digest",
        "--list",
        out_arg,
    ])))
}

/// `setpriv` to `user` (and its primary group) with a clean environment
/// and `env`.
fn as_user(user: &str, env: &[(&str, &str)]) -> Command {
    let gid = stdout(&ok(Command::new("id").args(["-g", user])));
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        user,
        "--regid",
        gid.trim(),
        "--init-groups",
        "--reset-env",
    ]);
    c.arg("env");
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c
}

impl Rootless {
    fn image(&self, tag: &str) -> String {
        format!("{}/{tag}@{}", self.registry, sample_digest(tag))
    }

    fn store(&self) -> PathBuf {
        self.home.path().join("store")
    }

    /// hoist as the rootless user, with its own store.
    fn hoist(&self, args: &[&str]) -> Output {
        let store = self.store();
        let home = self.home.path().to_str().unwrap();
        let mut c = as_user(
            &self.user,
            &[
                ("HOME", home),
                ("HOIST_STORE", store.to_str().unwrap()),
                ("RUST_LOG", "warn"),
                ("DOCKER_CONFIG", &format!("{home}/no-docker-config")),
                ("CONTAINERS_REGISTRIES_CONF", "/nonexistent"),
            ],
        );
        c.arg(&self.bin).args(args);
        run(&mut c)
    }

    fn out_dir(&self, name: &str) -> PathBuf {
        let d = self.home.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        chown(&d, &self.user);
        d
    }

    /// `hoist run` of `task` in the sample `bench` with the sample `agent`
    /// (both pinned by digest), plus `extra` arguments.
    fn run_sample(
        &self,
        out: &Path,
        (bench, agent, task): (&str, &str, &str),
        extra: &[&str],
    ) -> (Value, Value) {
        let (b, a) = (self.image(bench), self.image(agent));
        let mut args = vec!["--benchmark", &b, "--agent", &a, "--task", task];
        args.extend_from_slice(extra);
        self.run_task(out, &args)
    }

    fn run_task(&self, out: &Path, args: &[&str]) -> (Value, Value) {
        let mut all = vec!["run", "--mode", "crane", "--out", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = self.hoist(&all);
        assert!(
            o.status.success(),
            "rootless hoist {all:?} failed:\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
        let read = |p: &str| -> Value { read_json(&out.join(p)) };
        (read("task/result.json"), read("run.json"))
    }
}

#[test]
fn rootless_materialize_reproduces_the_tree_root_makes() {
    let Some(r) = setup() else { return };
    let (bench, agent, gw) = (
        r.image("pyfix"),
        r.image("agent-oracle"),
        r.image("gateway-replay"),
    );
    let out = r.home.path().join("rootfs");
    let o = r.hoist(&[
        "--json",
        "materialize",
        "--benchmark",
        &bench,
        "--agent",
        &agent,
        "--gateway",
        &gw,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Mounts in hoist's own namespace end with it: a kept rootfs is a copy.
    assert_eq!(m["mode"], "copy", "{m}");
    assert_eq!(
        m["not_reproduced"],
        serde_json::json!({"ownership_not_reproduced": 0, "devices_not_created": 0, "xattrs_not_set": 0})
    );

    // On the host: root's files are the user's, the agent's a subuid's,
    // and the hidden tests keep 0700.
    let tests = std::fs::metadata(out.join("tests")).unwrap();
    assert_eq!((tests.uid(), tests.mode() & 0o7777), (r.uid, 0o700));
    let agent_home = std::fs::metadata(out.join("home/agent")).unwrap();
    assert_eq!(agent_home.uid(), r.subuid + 999, "image uid 1000");
    let gateway = std::fs::metadata(out.join("opt/gateway")).unwrap();
    assert_eq!((gateway.uid(), gateway.mode() & 0o777), (r.uid, 0o700));

    // Through the user's namespace, the tree is the one root materializes.
    let o = r.hoist(&["tree-digest", "--list", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rootless_listing = stdout(&o);
    let root_listing = root_listing(&["--benchmark", &bench, "--agent", &agent, "--gateway", &gw]);
    assert!(root_listing.lines().count() > 10_000);
    if rootless_listing != root_listing {
        let diff: Vec<_> = rootless_listing
            .lines()
            .zip(root_listing.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        panic!("rootless and root trees differ, first lines: {diff:#?}");
    }

    // The user can take its own store apart again.
    let o = r.hoist(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn rootless_runs_resolve_with_the_agent_as_a_subordinate_uid() {
    let Some(r) = setup() else { return };
    for (bench, task) in [
        ("pyfix".to_string(), r.pyfix_tasks[0].clone()),
        (
            format!("swe-mini-{}", r.swe_tasks[0]),
            r.swe_tasks[0].clone(),
        ),
    ] {
        let out = r.out_dir(&format!("out-{task}"));
        let (res, run_json) = r.run_sample(&out, (&bench, "agent-oracle", &task), &[]);
        assert_eq!(res["resolved"], true, "{res}");
        assert_eq!(res["infra_error"], Value::Null);
        assert_eq!(res["isolation"], "namespaces");
        assert_eq!(run_json["isolation"], "namespaces");
        assert_eq!(
            run_json["rootfs"], "overlay",
            "a run mounts in its namespace"
        );
        assert_eq!(run_json["user_namespace"], true);
        assert_eq!(run_json["host"]["uid"], r.uid);
        let ns = &run_json["rootless"];
        assert_eq!(ns["host_uid"], r.uid, "{run_json}");
        assert_eq!(ns["subuids"][0]["start"], r.subuid);
        assert_eq!(ns["mapped_uids"], 65537);
        assert_eq!(ns.get("limitation"), None);
        assert_eq!(
            run_json["not_reproduced"]["ownership_not_reproduced"], 0,
            "{run_json}"
        );
        // What the run wrote is the user's, on the host.
        let meta = std::fs::metadata(out.join("task/result.json")).unwrap();
        assert_eq!(meta.uid(), r.uid);
    }
    // The layer cache is the user namespace's own flavour, and gc reaps.
    let names: Vec<String> = std::fs::read_dir(r.store())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("layers-userns-")),
        "{names:?}"
    );
    let o = r.hoist(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs = std::fs::read_dir(r.store().join("runs")).map_or(0, |d| d.count());
    assert_eq!(runs, 0, "no run directory outlives its run");
}

#[test]
fn rootless_scripted_agent_with_the_replay_gateway_resolves_and_noop_does_not() {
    let Some(r) = setup() else { return };
    let task = &r.replay_tasks[0];
    let out = r.out_dir("scripted");
    let (res, _) = r.run_sample(
        &out,
        ("pyfix", "agent-scripted", task),
        &["--gateway", &r.image("gateway-replay")],
    );
    assert_eq!(res["resolved"], true, "{res}");
    let gw_log = std::fs::read_to_string(out.join("task/gateway.log")).unwrap();
    assert!(gw_log.contains("chat/completions"), "gateway log: {gw_log}");

    let out = r.out_dir("noop");
    let (res, _) = r.run_sample(&out, ("pyfix", "agent-noop", task), &[]);
    assert_eq!(res["resolved"], false, "{res}");
    assert_eq!(res["infra_error"], Value::Null, "{res}");
}

#[test]
fn rootless_probe_agent_is_denied_everything() {
    let Some(r) = setup() else { return };
    adopt_orphans();
    let out = r.out_dir("probe");
    let (res, _) = r.run_sample(&out, ("pyfix", "agent-probe", &r.pyfix_tasks[0]), &[]);
    assert_eq!(res["infra_error"], Value::Null, "{res}");
    assert_probe_denied(&out);
    // Nothing of the agent (a subordinate uid on the host) runs on.
    let agent_uid = r.subuid + 999;
    let left = processes_of(agent_uid, "");
    assert!(left.is_empty(), "left running as {agent_uid}: {left:?}");
}

#[test]
fn rootless_timeout_and_chroot_isolation() {
    let Some(r) = setup() else { return };
    adopt_orphans();
    let out = r.out_dir("sleeper");
    let (res, _) = r.run_sample(
        &out,
        ("pyfix", "agent-sleeper", &r.pyfix_tasks[0]),
        &["--agent-timeout", "2"],
    );
    assert_eq!(res["agent"]["timed_out"], true, "{res}");
    assert_eq!(res["agent"]["exit_code"], 124);
    assert_eq!(res["grade"]["exit_code"], 0, "grading ran: {res}");
    assert!(processes_of(r.subuid + 999, "").is_empty());

    let out = r.out_dir("chroot");
    let (res, run_json) = r.run_sample(
        &out,
        ("pyfix", "agent-oracle", &r.pyfix_tasks[1]),
        &["--isolation", "chroot"],
    );
    assert_eq!(res["resolved"], true, "{res}");
    assert_eq!(run_json["isolation"], "chroot");
    assert_eq!(run_json["rootfs"], "copy");
}

#[test]
fn without_subordinate_ids_ownership_is_reported_and_runs_are_refused() {
    let Some(r) = setup() else { return };
    let dir = tempfile::Builder::new()
        .prefix("hoist-nobody-")
        .tempdir_in("/tmp")
        .unwrap();
    chown(dir.path(), "nobody");
    let home = dir.path().to_str().unwrap();
    let store = format!("{home}/store");
    let bin = reachable_binary("nobody", dir.path());
    let nobody = |args: &[&str]| {
        let mut c = as_user("nobody", &[("HOME", home), ("HOIST_STORE", &store)]);
        c.arg(&bin).args(args);
        run(&mut c)
    };
    let out = format!("{home}/rootfs");
    let o = nobody(&[
        "--json",
        "materialize",
        "--benchmark",
        &r.image("pyfix"),
        "--agent",
        &r.image("agent-oracle"),
        "--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    let lost = m["not_reproduced"]["ownership_not_reproduced"]
        .as_u64()
        .unwrap();
    assert!(lost > 0, "{m}");
    let err = stderr(&o);
    assert!(err.contains("no subordinate ids for nobody"), "{err}");
    assert!(err.contains(&format!("{lost} entries' owners")), "{err}");
    // On disk every entry is nobody's; the true owners are recorded, so the
    // tree hoist reports is the image's, as root materializes it.
    let agent_home = std::fs::metadata(format!("{out}/home/agent")).unwrap();
    assert_eq!(agent_home.uid(), 65534);
    let o = nobody(&["tree-digest", "--list", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recorded = stdout(&o);
    let truth = root_listing(&[
        "--benchmark",
        &r.image("pyfix"),
        "--agent",
        &r.image("agent-oracle"),
    ]);
    // Symlinks cannot carry a user.* record: only their owners may differ.
    let differ: Vec<(&str, &str)> = recorded
        .lines()
        .zip(truth.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(recorded.lines().count(), truth.lines().count());
    for (a, b) in &differ {
        assert!(a.contains(" -> "), "not a symlink: {a}\nvs {b}");
    }

    let run_out = format!("{home}/out");
    let o = nobody(&[
        "run",
        "--mode",
        "crane",
        "--benchmark",
        &r.image("pyfix"),
        "--agent",
        &r.image("agent-oracle"),
        "--task",
        &r.pyfix_tasks[0],
        "--out",
        &run_out,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("maps only your uid") && err.contains("subordinate ids"),
        "{err}"
    );
}
