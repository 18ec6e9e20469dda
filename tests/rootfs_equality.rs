//! Byte-level equality of hoist's materialized rootfs with the trees Docker
//! and umoci produce for the same image (issue 3, docs/images.md, docs/isolation.md): paths,
//! types, modes, uid/gid, sizes, contents, link targets, hardlink groups
//! and xattrs, as `hoist tree-digest --list` prints them.
//!
//! - the fixtures `small` and `base`, pulled by Docker from the plain
//!   registry, against hoist from the same reference;
//! - one image built by `docker build` on the debootstrap base, with a RUN
//!   layer per tricky case (whiteouts, an opaque directory, hardlinks to
//!   files of earlier layers, setuid/setgid, root-only 0700/0600 trees,
//!   symlink chains, type replacements, ownership, a capability xattr);
//! - the fusion of that image with Docker-built agent and gateway images;
//! - a materialize into a non-empty directory, and the warm path plus gc.
//!
//! Every hoist tree is checked in `--rootfs overlay`, in `--rootfs copy` (the
//! union of the cached layers, copied) and in `--rootfs copy` with
//! `HOIST_COPY_FROM_BLOBS=1` (the layer blobs applied one after the other),
//! and the three are compared with each other entry for entry.
//! Needs root, Docker (`HOIST_TEST_DOCKER`, set by scripts/test-env), umoci
//! and skopeo; skips with the reason otherwise (fails under CI's
//! `HOIST_TEST_REQUIRE_ALL=1`). The images are built once per test process.

mod support;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use support::{env_or_skip, have_tool, hoist, is_root, ok, run, skip, stderr, stdout};

/// Files Docker's init layer puts into every container, whatever the image
/// has there; `docker export` shows them. Compared nowhere, on either side.
const DOCKER_INIT_FILES: &[&str] = &[
    // An empty marker file saying "this is a Docker container".
    ".dockerenv",
    // Empty placeholders Docker bind-mounts its generated files on when the
    // container starts; they shadow the image's own (debootstrap has
    // /etc/hostname and /etc/resolv.conf).
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    // A symlink to /proc/mounts, replacing whatever the image had.
    "etc/mtab",
    // An empty file the container's console is bind-mounted on.
    "dev/console",
];

/// Directories the init layer creates (0755 root) as mount points or as
/// parents of the files above. Checked on this Docker (20.10, overlay2):
/// when the image already has one of them, `docker export` shows the
/// image's own mode and owner (an imported image with /proc 0555, /sys
/// 0500, /dev 0750 5:6, /etc 0700 5:6, /dev/shm 1777 exported exactly so),
/// so such a line is compared. Only when the image lacks the directory is
/// the line Docker's invention, and only then is it left out.
const DOCKER_INIT_DIRS: &[&str] = &["dev", "dev/pts", "dev/shm", "etc", "proc", "sys"];

// ---------------------------------------------------------------- setup

struct Env {
    registry: String,
    base_tar: PathBuf,
    base_rootfs: PathBuf,
    /// $HOIST_TEST_DIR/rootfs-equality: the shared store lives here.
    work: PathBuf,
}

/// The test environment, or `None` after saying why the test is skipped.
fn env() -> Option<Env> {
    let registry = env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?;
    let base_tar = env_or_skip("HOIST_TEST_BASE_TAR")?;
    let base_rootfs = env_or_skip("HOIST_TEST_BASE_ROOTFS")?;
    let dir = env_or_skip("HOIST_TEST_DIR")?;
    if !is_root() {
        skip("rootfs equality needs root (exact ownership, overlay mounts, docker, umoci unpack)");
        return None;
    }
    env_or_skip("HOIST_TEST_DOCKER")?;
    if !(have_tool("umoci") && have_tool("skopeo") && have_tool("tar")) {
        return None;
    }
    if !run(docker().arg("info")).status.success() {
        skip("HOIST_TEST_DOCKER is set but `docker info` fails; run scripts/dockerd start");
        return None;
    }
    Some(Env {
        registry,
        base_tar: base_tar.into(),
        base_rootfs: base_rootfs.into(),
        work: Path::new(&dir).join("rootfs-equality"),
    })
}

/// Debian's client: a /usr/local/bin/docker may shadow it on PATH.
fn docker() -> Command {
    if Path::new("/usr/bin/docker").exists() {
        Command::new("/usr/bin/docker")
    } else {
        Command::new("docker")
    }
}

/// One store for the cases that may share it (layers cached once), fresh
/// for each test process so no layer unpacked by an older hoist is reused.
/// The lock keeps two test processes from wiping each other's store.
fn shared_store(e: &Env) -> &'static Path {
    static STORE: OnceLock<(PathBuf, File)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            fs::create_dir_all(&e.work).unwrap();
            let lock = File::create(e.work.join("store.lock")).unwrap();
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
            let store = e.work.join("store");
            if store.exists() {
                // Take down what a killed earlier run left mounted first.
                for run_dir in fs::read_dir(store.join("runs"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let owner: Option<serde_json::Value> =
                        fs::read(run_dir.path().join("owner.json"))
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok());
                    if let Some(target) = owner.as_ref().and_then(|o| o["target"].as_str()) {
                        umount(Path::new(target));
                    }
                }
                fs::remove_dir_all(&store).unwrap();
            }
            (store, lock)
        })
        .0
}

/// The images `docker build` made, pushed to the plain registry.
struct Built {
    /// The benchmark-like image with one RUN layer per case.
    image: String,
    agent: String,
    gateway: String,
}

fn built(e: &Env) -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| build_images(e))
}

fn build_images(e: &Env) -> Built {
    let t0 = Instant::now();
    // The debootstrap base, imported once under a tag naming the tarball's
    // identity (a rebuilt base gets a new tag, an unchanged one is reused).
    let meta = fs::metadata(&e.base_tar).unwrap();
    let key = hoist::digest::Digest::sha256_of(
        format!(
            "{} {} {}",
            e.base_tar.display(),
            meta.len(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000
        )
        .as_bytes(),
    );
    let base = format!("hoist-test/base:{}", &key.hex()[..16]);
    if !run(docker().args(["image", "inspect", &base]))
        .status
        .success()
    {
        ok(docker().arg("import").arg(&e.base_tar).arg(&base));
    }

    let ctx = tempfile::tempdir().unwrap();
    let cap_step = capability_step(e, ctx.path());
    let image_df = format!(
        r#"FROM {base}
# whiteouts: a file, a directory, a symlink of the base
RUN rm /etc/debian_version && rm -r /usr/share/doc/apt && rm /etc/os-release
# opaque directory: emptied and recreated in one step
RUN rm -rf /var/lib/apt && mkdir /var/lib/apt && echo fresh > /var/lib/apt/fresh
# hardlinks to files of the base layer, one pair later losing its first name
RUN ln /usr/bin/ls /usr/bin/ls-hard && ln /usr/bin/cat /usr/local/cat-hard && ln /usr/bin/env /usr/local/env-hard
RUN rm /usr/bin/env
# setuid, setgid, sticky
RUN cp /bin/true /usr/local/bin/suid && chmod 4755 /usr/local/bin/suid && cp /bin/true /usr/local/bin/sgid && chmod 2755 /usr/local/bin/sgid && mkdir -m 1777 /sticky
# root-only trees (docs/images.md: /tests 0700, /tasks 0700 with 0600 files)
RUN mkdir -m 0700 /tests && echo x > /tests/t && chmod 0600 /tests/t && mkdir -p /tasks/toy && chmod 0700 /tasks && echo '{{}}' > /tasks/toy/task.json && chmod 0600 /tasks/toy/task.json
# symlink chains, relative and absolute, and a dangling one
RUN echo a > /a && ln -s a /b && ln -s /b /c && ln -s c /d && ln -s ../usr/bin /usrbin && ln -s /nonexistent /dangling
# type replacements across RUN steps: first the originals ...
RUN echo f > /f2d && mkdir -p /d2f/sub && echo y > /d2f/sub/y && mkdir /d2l && echo z > /d2l/z && ln -s /etc /l2d
# ... then file->dir, dir->file, dir->symlink, symlink->dir, and a base dir->file
RUN rm /f2d && mkdir /f2d && echo in > /f2d/in && rm -rf /d2f && echo now-a-file > /d2f && rm -rf /d2l && ln -s /usr /d2l && rm /l2d && mkdir /l2d && rm -rf /srv && echo x > /srv
# other owners, and metadata-only changes of base files
RUN mkdir /owned && echo o > /owned/f && chown -R 1234:5678 /owned && chmod 0640 /owned/f && chmod 0600 /etc/issue.net && chown 7:7 /etc/issue && echo more >> /etc/motd
{cap_step}"#
    );
    let agent_df = format!(
        r#"FROM {base}
RUN mkdir -p -m 0751 /opt/agent && printf '#!/bin/sh\necho agent\n' > /opt/agent/run && chmod 0755 /opt/agent/run && echo leak > /etc/agent-leak && mkdir -m 0755 /tests && echo planted > /tests/agent && mkdir -p /opt/gateway && echo planted > /opt/gateway/from-agent
"#
    );
    let gateway_df = format!(
        r#"FROM {base}
RUN mkdir -m 0700 /opt/gateway && printf '#!/bin/sh\n' > /opt/gateway/run && chmod 0700 /opt/gateway/run && echo secret > /opt/gateway/key && chmod 0600 /opt/gateway/key && echo leak > /etc/gateway-leak
"#
    );
    let mut refs = Vec::new();
    for (name, df) in [
        ("image", &image_df),
        ("agent", &agent_df),
        ("gateway", &gateway_df),
    ] {
        let file = ctx.path().join(format!("{name}.Dockerfile"));
        fs::write(&file, df).unwrap();
        let reference = format!("{}/hoist-eq/{name}:latest", e.registry);
        ok(docker()
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &reference, "-f"])
            .arg(&file)
            .arg(ctx.path()));
        ok(docker().args(["push", &reference]));
        refs.push(reference);
    }
    eprintln!("docker images built and pushed in {:.1?}", t0.elapsed());
    let gateway = refs.pop().unwrap();
    let agent = refs.pop().unwrap();
    Built {
        image: refs.pop().unwrap(),
        agent,
        gateway,
    }
}

/// The RUN (or ADD) step that gives a file a `security.capability` xattr:
/// `setcap` when the base has it; else a tar made here with the host's
/// `setcap`, which Docker's ADD extracts with its xattrs; else nothing.
fn capability_step(e: &Env, ctx: &Path) -> String {
    if e.base_rootfs.join("usr/sbin/setcap").exists() {
        return "RUN cp /bin/true /usr/local/bin/cap && setcap cap_net_bind_service+ep /usr/local/bin/cap\n"
            .into();
    }
    if !Path::new("/usr/sbin/setcap").exists() {
        skip("setcap is neither in the base nor on the host: no capability xattr case");
        return String::new();
    }
    let src = ctx.join("cap-src");
    fs::create_dir_all(src.join("usr/local/bin")).unwrap();
    let f = src.join("usr/local/bin/cap");
    fs::copy("/bin/true", &f).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    ok(Command::new("/usr/sbin/setcap")
        .arg("cap_net_bind_service+ep")
        .arg(&f));
    ok(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
        ])
        .arg("-cf")
        .arg(ctx.join("cap.tar"))
        .arg("usr/local/bin/cap"));
    "ADD cap.tar /\n".into()
}

// ---------------------------------------------------------------- trees

/// A materialized rootfs; an overlay one is unmounted on drop (also when
/// the test fails), before its tempdir goes.
struct Rootfs {
    dir: PathBuf,
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        umount(&self.dir);
    }
}

fn umount(dir: &Path) {
    if run(Command::new("mountpoint").arg("-q").arg(dir))
        .status
        .success()
    {
        let _ = run(Command::new("umount").arg("-R").arg(dir));
    }
}

/// The ways hoist builds a rootfs: `--rootfs` and whether the copy is made
/// from the layer blobs (`HOIST_COPY_FROM_BLOBS=1`) instead of the cache.
#[derive(Clone, Copy, Debug)]
struct Way {
    name: &'static str,
    rootfs: &'static str,
    from_blobs: bool,
    /// Run hoist under `umask 0077`: the copy creates each file with its
    /// permission bits and chmods only where the umask took some away.
    umask_077: bool,
}

const OVERLAY: Way = Way {
    name: "overlay",
    rootfs: "overlay",
    from_blobs: false,
    umask_077: false,
};
const COPY: Way = Way {
    name: "copy",
    rootfs: "copy",
    from_blobs: false,
    umask_077: false,
};
const COPY_FROM_BLOBS: Way = Way {
    name: "copy-from-blobs",
    rootfs: "copy",
    from_blobs: true,
    umask_077: false,
};
const COPY_UMASK_077: Way = Way {
    name: "copy-under-umask-077",
    rootfs: "copy",
    from_blobs: false,
    umask_077: true,
};
/// The copy first: with each test's fresh store it finds the layer cache
/// empty, and fills it for the overlay.
const WAYS: [Way; 4] = [COPY, OVERLAY, COPY_FROM_BLOBS, COPY_UMASK_077];

fn materialize(store: &Path, axes: &[(&str, &str)], out: &Path, way: Way) -> Rootfs {
    let t0 = Instant::now();
    let mut cmd = hoist(store);
    cmd.args(["--quiet", "materialize"]);
    for (axis, reference) in axes {
        cmd.arg(format!("--{axis}")).arg(reference);
    }
    cmd.arg("--out").arg(out).args(["--rootfs", way.rootfs]);
    if way.from_blobs {
        cmd.env("HOIST_COPY_FROM_BLOBS", "1");
    } else {
        cmd.env_remove("HOIST_COPY_FROM_BLOBS");
    }
    if way.umask_077 {
        cmd = support::after_shell(&[], "umask 0077", &cmd);
    }
    let rootfs = Rootfs {
        dir: out.to_path_buf(),
    };
    ok(&mut cmd);
    eprintln!("materialize {way:?} {axes:?}: {:.1?}", t0.elapsed());
    rootfs
}

/// The copy from the cache against the overlay, the copy from the blobs
/// and the copy under another umask, whole listings (`listings` in
/// [`WAYS`] order).
fn compare_ways(what: &str, listings: &[Vec<String>], failures: &mut Vec<String>) {
    let [copy, overlay, blobs, umask] = listings else {
        panic!("one listing per way, got {}", listings.len());
    };
    let name = |w: Way| format!("{what} --rootfs {}", w.name);
    compare(&name(COPY), &name(OVERLAY), copy, overlay, failures);
    compare(&name(COPY), &name(COPY_FROM_BLOBS), copy, blobs, failures);
    compare(&name(COPY), &name(COPY_UMASK_077), copy, umask, failures);
}

/// `hoist tree-digest --list DIR`, as lines.
fn listing(store: &Path, dir: &Path, exclude: &[&str]) -> Vec<String> {
    let mut cmd = hoist(store);
    cmd.arg("tree-digest").arg("--list").arg(dir);
    for x in exclude {
        cmd.arg("--exclude").arg(format!("/{x}"));
    }
    let out = stdout(&ok(&mut cmd));
    out.lines().map(str::to_owned).collect()
}

fn path_of(line: &str) -> &str {
    line.split(' ').next().unwrap_or_default()
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

/// Docker's tree without what the init layer added to it (see the two
/// constants above); `image` is the listing of the image itself (hoist's).
fn without_init_layer(docker: Vec<String>, image: &[String]) -> Vec<String> {
    let paths: BTreeSet<&str> = image.iter().map(|l| path_of(l)).collect();
    docker
        .into_iter()
        .filter(|l| {
            let p = path_of(l);
            !(DOCKER_INIT_FILES.iter().any(|x| under(p, x))
                || DOCKER_INIT_DIRS.contains(&p) && !paths.contains(p))
        })
        .collect()
}

/// Compare two listings; a difference is described line by line, sorted
/// by path, `-` for hoist's line and `+` for the other tool's.
fn compare(
    what: &str,
    other: &str,
    hoist: &[String],
    theirs: &[String],
    failures: &mut Vec<String>,
) {
    let a: BTreeSet<&String> = hoist.iter().collect();
    let b: BTreeSet<&String> = theirs.iter().collect();
    let mut diff: Vec<(&str, char, &str)> = a
        .difference(&b)
        .map(|l| (path_of(l), '-', l.as_str()))
        .chain(b.difference(&a).map(|l| (path_of(l), '+', l.as_str())))
        .collect();
    if diff.is_empty() {
        eprintln!("{what}: equal to {other} ({} entries)", hoist.len());
        return;
    }
    diff.sort();
    let shown = diff.len().min(200);
    let mut msg = format!(
        "{what} differs from {other} in {} lines (- hoist, + {other}):\n",
        diff.len()
    );
    for (_, sign, line) in &diff[..shown] {
        msg.push_str(&format!("{sign} {line}\n"));
    }
    if shown < diff.len() {
        msg.push_str(&format!("... and {} more\n", diff.len() - shown));
    }
    eprint!("{msg}");
    failures.push(msg);
}

/// `docker export` of a container of `image`, extracted into `dir` as
/// root with ownership, modes and xattrs.
fn docker_export(image: &str, dir: &Path) {
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = run(docker().args(["rm", "-f", &self.0]));
        }
    }
    // The command is never run: a container only needs one to exist.
    let c = Container(
        stdout(&ok(docker().args(["create", image, "/hoist-never-run"])))
            .trim()
            .to_string(),
    );
    let tar = dir.with_extension("tar");
    ok(docker().arg("export").arg("-o").arg(&tar).arg(&c.0));
    fs::create_dir_all(dir).unwrap();
    ok(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar));
    fs::remove_file(&tar).unwrap();
}

/// `skopeo copy` of `reference` into an OCI layout, then `umoci unpack`;
/// returns the bundle's rootfs.
fn umoci_unpack(reference: &str, work: &Path) -> PathBuf {
    let layout = work.join("umoci-layout");
    let bundle = work.join("umoci-bundle");
    ok(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:img", layout.display())));
    ok(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:img", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

/// The whole equality check for one registry reference. `docker_image` is
/// the name Docker knows it by (pulled first when `pull` is set).
fn check_equal(e: &Env, reference: &str, docker_image: &str, pull: bool, must_have: &[&str]) {
    let store = shared_store(e);
    let t = tempfile::tempdir().unwrap();
    let docker_dir = t.path().join("docker");
    if pull {
        ok(docker().args(["pull", "-q", docker_image]));
    }
    docker_export(docker_image, &docker_dir);
    let umoci_dir = umoci_unpack(reference, t.path());
    let docker_list = listing(store, &docker_dir, DOCKER_INIT_FILES);
    let umoci_list = listing(store, &umoci_dir, &[]);

    let mut failures = Vec::new();
    let mut listings = Vec::new();
    for way in WAYS {
        let mode = way.name;
        let out = t.path().join(mode);
        let _rootfs = materialize(store, &[("benchmark", reference)], &out, way);
        let full = listing(store, &out, &[]);
        for p in must_have {
            assert!(
                full.iter().any(|l| path_of(l) == *p),
                "{reference} ({mode}): /{p} missing; the listing has {} lines",
                full.len()
            );
        }
        let what = format!("hoist --rootfs {mode} of {reference}");
        compare(&what, "umoci unpack", &full, &umoci_list, &mut failures);
        let hoist_for_docker: Vec<String> = full
            .iter()
            .filter(|l| !DOCKER_INIT_FILES.iter().any(|x| under(path_of(l), x)))
            .cloned()
            .collect();
        let docker = without_init_layer(docker_list.clone(), &full);
        compare(
            &what,
            "docker export",
            &hoist_for_docker,
            &docker,
            &mut failures,
        );
        listings.push(full);
    }
    compare_ways(&format!("hoist of {reference}"), &listings, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------- tests

#[test]
fn fixture_small_equals_docker_export_and_umoci() {
    let Some(e) = env() else { return };
    let r = format!("{}/small", e.registry);
    check_equal(
        &e,
        &r,
        &r,
        true,
        &["secret/key", "usr/local/bin/suid", "fifo"],
    );
}

#[test]
fn fixture_base_equals_docker_export_and_umoci() {
    let Some(e) = env() else { return };
    let r = format!("{}/base", e.registry);
    check_equal(&e, &r, &r, true, &["usr/bin/ls", "etc/debian_version"]);
}

#[test]
fn docker_built_image_equals_docker_export_and_umoci() {
    let Some(e) = env() else { return };
    let b = built(&e);
    // Docker's own view of what it built, against hoist and umoci reading
    // the layers Docker pushed.
    check_equal(
        &e,
        &b.image,
        &b.image,
        false,
        &[
            "tests/t",
            "tasks/toy/task.json",
            "usr/bin/ls-hard",
            "f2d/in",
            "d2f",
            "var/lib/apt/fresh",
        ],
    );
}

#[test]
fn fusion_takes_only_the_axis_subtrees_and_keeps_permissions() {
    let Some(e) = env() else { return };
    let b = built(&e);
    let store = shared_store(&e);
    let t = tempfile::tempdir().unwrap();
    let axes = [
        ("benchmark", b.image.as_str()),
        ("agent", b.agent.as_str()),
        ("gateway", b.gateway.as_str()),
    ];
    // The benchmark alone, to show the fusion changed nothing else.
    let alone = t.path().join("benchmark-alone");
    let alone_rootfs = materialize(store, &axes[..1], &alone, OVERLAY);
    let outside_axes = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|l| !under(path_of(l), "opt/agent") && !under(path_of(l), "opt/gateway"))
            .cloned()
            .collect()
    };
    let benchmark_only = outside_axes(&listing(store, &alone, &[]));
    drop(alone_rootfs);

    let mut failures = Vec::new();
    let mut listings = Vec::new();
    for way in WAYS {
        let mode = way.name;
        let out = t.path().join(mode);
        let _rootfs = materialize(store, &axes, &out, way);
        let at = |p: &str| out.join(p);
        let mut problems = Vec::new();
        let mut expect = |p: &str, dir: bool, mode_bits: u32| match fs::symlink_metadata(at(p)) {
            Err(err) => problems.push(format!("/{p}: {err}")),
            Ok(m) => {
                let got = (m.is_dir(), m.mode() & 0o7777, m.uid(), m.gid());
                if got != (dir, mode_bits, 0, 0) {
                    problems.push(format!(
                        "/{p}: (dir, mode, uid, gid) is ({}, {:04o}, {}, {}), want ({dir}, {mode_bits:04o}, 0, 0)",
                        got.0, got.1, got.2, got.3
                    ));
                }
            }
        };
        // The agent axis: only /opt/agent, with its own metadata.
        expect("opt/agent", true, 0o751);
        expect("opt/agent/run", false, 0o755);
        // The gateway axis: only /opt/gateway, root-only.
        expect("opt/gateway", true, 0o700);
        expect("opt/gateway/key", false, 0o600);
        expect("opt/gateway/run", false, 0o700);
        // The benchmark's root-only trees stay so.
        expect("tests", true, 0o700);
        expect("tests/t", false, 0o600);
        expect("tasks", true, 0o700);
        expect("tasks/toy/task.json", false, 0o600);
        if fs::read(at("opt/agent/run")).ok().as_deref()
            != Some(b"#!/bin/sh\necho agent\n".as_slice())
        {
            problems.push("/opt/agent/run: not the agent's script".into());
        }
        // What the agent and gateway images have elsewhere never appears.
        for p in [
            "etc/agent-leak",
            "tests/agent",
            "opt/gateway/from-agent",
            "etc/gateway-leak",
        ] {
            if fs::symlink_metadata(at(p)).is_ok() {
                problems.push(format!("/{p} leaked into the fused rootfs"));
            }
        }
        if !problems.is_empty() {
            let msg = format!("fused rootfs ({mode}):\n  {}\n", problems.join("\n  "));
            eprint!("{msg}");
            failures.push(msg);
        }
        let list = listing(store, &out, &[]);
        compare(
            &format!("fused hoist --rootfs {mode} outside /opt/agent and /opt/gateway"),
            "the benchmark alone",
            &outside_axes(&list),
            &benchmark_only,
            &mut failures,
        );
        listings.push(list);
    }
    compare_ways("fused hoist", &listings, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn materialize_into_a_non_empty_directory_fails_and_leaves_it_alone() {
    let Some(e) = env() else { return };
    let store = shared_store(&e);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    fs::create_dir_all(out.join("sub")).unwrap();
    fs::write(out.join("keep"), b"mine\n").unwrap();
    fs::write(out.join("sub/also"), b"also mine\n").unwrap();
    fs::set_permissions(out.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    let before = listing(store, &out, &[]);
    for mode in ["overlay", "copy"] {
        let o = run(hoist(store)
            .args(["materialize", "--benchmark"])
            .arg(format!("{}/small", e.registry))
            .arg("--out")
            .arg(&out)
            .args(["--rootfs", mode]));
        let mounted = run(Command::new("mountpoint").arg("-q").arg(&out))
            .status
            .success();
        if mounted {
            umount(&out);
        }
        assert_eq!(
            o.status.code(),
            Some(1),
            "{mode}: exit status; stderr:\n{}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("not an empty directory"),
            "{mode}: {}",
            stderr(&o)
        );
        assert!(!mounted, "{mode}: something was mounted on the directory");
        assert_eq!(
            listing(store, &out, &[]),
            before,
            "{mode}: the directory changed"
        );
    }
}

#[test]
fn warm_materialize_is_identical_and_gc_removes_only_the_runs() {
    let Some(e) = env() else { return };
    let b = built(&e);
    // Its own store: gc must see no other test's runs.
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let first = materialize(
        &store,
        &[("benchmark", &b.image)],
        &t.path().join("cold"),
        OVERLAY,
    );
    let t0 = Instant::now();
    let second = materialize(
        &store,
        &[("benchmark", &b.image)],
        &t.path().join("warm"),
        OVERLAY,
    );
    eprintln!(
        "warm materialize (including the registry check): {:.1?}",
        t0.elapsed()
    );
    let digest = |dir: &Path| {
        stdout(&ok(hoist(&store).arg("tree-digest").arg(dir)))
            .trim()
            .to_string()
    };
    let (d1, d2) = (digest(&first.dir), digest(&second.dir));
    assert!(d1.starts_with("sha256:"), "{d1}");
    assert_eq!(d1, d2, "a warm materialize gives another tree");

    drop(first);
    drop(second);
    let runs = store.join("runs");
    assert_eq!(
        fs::read_dir(&runs).unwrap().count(),
        2,
        "one run directory per rootfs"
    );
    ok(hoist(&store).args(["--quiet", "gc"]));
    let left: Vec<_> = fs::read_dir(&runs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "gc left run directories: {left:?}");

    // Every layer of the image (still in index.json) stays unpacked.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        store
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let mut layers = 0;
    for m in index["manifests"].as_array().unwrap() {
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(blob(m["digest"].as_str().unwrap())).unwrap())
                .unwrap();
        for l in manifest["layers"].as_array().unwrap() {
            let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            assert!(
                store.join("layers/sha256").join(hex).is_dir(),
                "gc removed the unpacked layer {hex} of an image in index.json"
            );
            assert!(blob(hex).is_file(), "gc removed the blob {hex}");
            layers += 1;
        }
    }
    assert!(
        layers >= 10,
        "expected the built image's layers, found {layers}"
    );
}
