//! Layers shaped like the ones `docker build` writes, applied both ways:
//! onto one tree (what `docker export` shows), and each alone in overlay
//! form, then stacked with a real overlayfs mount. The two results must be
//! the same tree: that is what makes the layer cache's overlay form a
//! faithful stand-in for the copy path.

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hoist::digest::Digest;
use hoist::unpack::{apply_layer, ApplyOptions, OutputMode, Privileges};
use support::layer::Layer;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Base image: an OS tree with root-only corners, a setuid binary, a
/// hardlink pair and a symlink chain.
fn base() -> Vec<u8> {
    Layer::at(1_600_000_000)
        .dir("bin", 0o755)
        .file("bin/su", b"su", 0o4755)
        .symlink("bin/sh", "dash")
        .file("bin/dash", b"dash", 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .owned_file("etc/shadow", b"root:*:1::::::\n", 0o640, 0, 42)
        .file("etc/motd", b"hi\n", 0o644)
        .dir("tmp", 0o1777)
        .dir("tests", 0o700)
        .file("tests/grade.sh", b"#!/bin/sh\n", 0o700)
        .dir("tasks", 0o700)
        .dir("tasks/t1", 0o700)
        .file("tasks/t1/task.json", b"{}", 0o600)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"tool v1", 0o755)
        .hardlink_mode("usr/bin/tool-alias", "usr/bin/tool", 0o755)
        .symlink("usr/bin/a", "b")
        .symlink("usr/bin/b", "/usr/bin/tool")
        .dir("var", 0o755)
        .dir("var/cache", 0o755)
        .file("var/cache/big", b"cache", 0o644)
        .dir("opt", 0o755)
        .dir("opt/data", 0o755)
        .file("opt/data/one", b"1", 0o644)
        .file("opt/data/two", b"2", 0o644)
        .dir("srv", 0o755)
        .dir("srv/www", 0o755)
        .file("srv/www/index.html", b"<p>", 0o644)
        .dir("home", 0o755)
        .dir("home/agent", 0o750)
        .owned_file("home/agent/.profile", b"PS1=$", 0o644, 1000, 1000)
        .bytes()
}

/// `RUN rm /etc/shadow && rm -rf /var/cache && rm -rf /opt/data && mkdir
/// /opt/data && touch /opt/data/three`, in Docker's tar order (the opaque
/// marker last, as Docker's overlay2 diff writes it).
fn removals() -> Vec<u8> {
    Layer::at(1_600_000_100)
        .dir("etc", 0o755)
        .whiteout("etc/.wh.shadow")
        .dir("opt", 0o755)
        .dir("opt/data", 0o755)
        .file("opt/data/three", b"3", 0o644)
        .whiteout("opt/data/.wh..wh..opq")
        .dir("var", 0o755)
        .whiteout("var/.wh.cache")
        .bytes()
}

/// Type changes: a file over a hardlinked file, a symlink over a directory,
/// a directory over a file, and a long name.
fn changes() -> Vec<u8> {
    let long = format!("opt/{}/deep.txt", "long-directory-name".repeat(8));
    Layer::at(1_600_000_200)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"tool v2", 0o755)
        .dir("srv", 0o755)
        .symlink("srv/www", "/var/www")
        .dir("etc", 0o755)
        .dir("etc/motd", 0o755)
        .file("etc/motd/10-hello", b"hello\n", 0o644)
        .dir("opt", 0o755)
        .file(&long, b"deep", 0o644)
        .bytes()
}

fn layers() -> Vec<Vec<u8>> {
    vec![base(), removals(), changes()]
}

fn require_root(test: &str) -> bool {
    support::require_root(test, "ownership, devices, overlay mounts")
}

/// path → type, mode, owner, content or link target.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("l -> {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "d".to_string()
        } else if ft.is_file() {
            format!("f {:?}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
        } else if ft.is_char_device() {
            format!("c {}", m.rdev())
        } else {
            "other".to_string()
        };
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.insert(rel, format!("{mode:o} {}:{} {what}", m.uid(), m.gid()));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

fn apply_tree(layers: &[Vec<u8>]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for layer in layers {
        let stats = apply_layer(
            &layer[..],
            TAR,
            File::open(dir.path()).unwrap(),
            &ApplyOptions::default(),
        )
        .unwrap();
        assert_eq!(stats.diff_id, Digest::sha256_of(layer));
    }
    dir
}

#[test]
fn layers_apply_onto_one_tree_as_docker_export_shows() {
    if !require_root("layers_apply_onto_one_tree_as_docker_export_shows") {
        return;
    }
    let tree = apply_tree(&layers());
    let l = listing(tree.path());
    let get = |p: &str| l.get(p).map(String::as_str);
    // Whiteouts and the opaque directory.
    assert_eq!(get("etc/shadow"), None);
    assert_eq!(get("var/cache"), None);
    assert_eq!(get("opt/data/one"), None);
    assert_eq!(get("opt/data/two"), None);
    assert_eq!(get("opt/data/three"), Some("644 0:0 f \"3\""));
    // Root-only corners and special bits.
    assert_eq!(get("tests"), Some("700 0:0 d"));
    assert_eq!(get("tasks/t1/task.json"), Some("600 0:0 f \"{}\""));
    assert_eq!(get("bin/su"), Some("4755 0:0 f \"su\""));
    assert_eq!(get("tmp"), Some("1777 0:0 d"));
    assert_eq!(
        get("home/agent/.profile"),
        Some("644 1000:1000 f \"PS1=$\"")
    );
    // Type changes.
    assert_eq!(get("usr/bin/tool"), Some("755 0:0 f \"tool v2\""));
    assert_eq!(get("usr/bin/tool-alias"), Some("755 0:0 f \"tool v1\""));
    assert_eq!(get("srv/www"), Some("0 0:0 l -> /var/www"));
    assert_eq!(get("srv/www/index.html"), None);
    assert_eq!(get("etc/motd"), Some("755 0:0 d"));
    assert_eq!(get("etc/motd/10-hello"), Some("644 0:0 f \"hello\\n\""));
    assert_eq!(get("usr/bin/a"), Some("0 0:0 l -> b"));
    let long = format!("opt/{}/deep.txt", "long-directory-name".repeat(8));
    assert_eq!(get(&long), Some("644 0:0 f \"deep\""));
    // Directory mtimes come from the last layer that lists them.
    let etc = fs::metadata(tree.path().join("etc")).unwrap();
    assert_eq!(etc.mtime(), 1_600_000_200);
}

#[test]
fn hardlinks_in_one_layer_share_an_inode() {
    let tree = apply_tree(&[base()]);
    let (a, b) = (
        fs::metadata(tree.path().join("usr/bin/tool")).unwrap(),
        fs::metadata(tree.path().join("usr/bin/tool-alias")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

/// An overlay mount, detached on drop so a failing test leaves none behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("unmount {}: {e}", self.0.display());
        }
    }
}

#[test]
fn overlay_form_layers_stack_to_the_same_tree() {
    if !require_root("overlay_form_layers_stack_to_the_same_tree") {
        return;
    }
    let layers = layers();
    let work = tempfile::tempdir().unwrap();
    let mut lowers = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dir = work.path().join(format!("layer{i}"));
        fs::create_dir(&dir).unwrap();
        let opts = ApplyOptions {
            mode: OutputMode::OverlayLayer,
            ..ApplyOptions::default()
        };
        apply_layer(&layer[..], TAR, File::open(&dir).unwrap(), &opts).unwrap();
        lowers.push(dir.display().to_string());
    }
    // overlayfs lists the top layer first.
    lowers.reverse();
    let merged = work.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let data = std::ffi::CString::new(format!("lowerdir={}", lowers.join(":"))).unwrap();
    if let Err(e) = rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        data.as_c_str(),
    ) {
        if std::env::var("HOIST_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("overlay mount failed: {e}");
        }
        eprintln!("skipping overlay_form_layers_stack_to_the_same_tree: overlay mount failed: {e}");
        return;
    }
    let _mount = Mount(merged.clone());
    let tree = apply_tree(&layers);
    assert_eq!(listing(&merged), listing(tree.path()));
}

#[test]
fn overlay_form_whiteout_in_a_layer_that_recreates_a_directory_is_opaque() {
    if !require_root("overlay_form_whiteout_in_a_layer_that_recreates_a_directory_is_opaque") {
        return;
    }
    // `RUN rm -rf /d && mkdir /d` as some tools write it: whiteout first,
    // then the new directory.
    let layer = Layer::at(1)
        .whiteout(".wh.d")
        .dir("d", 0o755)
        .file("d/new", b"n", 0o644)
        .bytes();
    let dir = tempfile::tempdir().unwrap();
    let opts = ApplyOptions {
        mode: OutputMode::OverlayLayer,
        privileges: Privileges::Root,
        ..ApplyOptions::default()
    };
    apply_layer(&layer[..], TAR, File::open(dir.path()).unwrap(), &opts).unwrap();
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(dir.path().join("d"), "trusted.overlay.opaque", &mut buf[..])
        .unwrap();
    assert_eq!(&buf[..n], b"y");
    assert!(dir.path().join("d/new").is_file());
}

#[test]
fn compressed_forms_give_the_same_tree_and_diff_id() {
    let tar = base();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    // pigz and some registries write several gzip members; Go reads them
    // all, and so must we.
    let multi = {
        let (a, b) = tar.split_at(tar.len() / 3);
        let mut out = Vec::new();
        for part in [a, b] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    };
    let zst = zstd::encode_all(&tar[..], 19).unwrap();
    let expected = Digest::sha256_of(&tar);
    let mut listings = Vec::new();
    for (blob, mt) in [
        (&tar, TAR),
        (&gz, TAR_GZ),
        (&multi, TAR_GZ),
        (&zst, TAR_ZST),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = ApplyOptions {
            expected_diff_id: Some(expected.clone()),
            ..ApplyOptions::default()
        };
        let stats = apply_layer(&blob[..], mt, File::open(dir.path()).unwrap(), &opts).unwrap();
        assert_eq!(stats.diff_id, expected, "{mt}");
        assert_eq!(stats.uncompressed_bytes, tar.len() as u64, "{mt}");
        assert_eq!(stats.compressed_bytes, blob.len() as u64, "{mt}");
        listings.push(listing(dir.path()));
    }
    assert!(listings.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn overlay_form_unprivileged_uses_user_xattrs() {
    // Works without root: user.* xattrs on directories, and Linux (5.8+)
    // lets anyone create the 0/0 whiteout device.
    let layer = Layer::at(1)
        .dir("d", 0o755)
        .whiteout("d/.wh..wh..opq")
        .whiteout(".wh.gone")
        .bytes();
    let dir = tempfile::tempdir().unwrap();
    let opts = ApplyOptions {
        mode: OutputMode::OverlayLayer,
        privileges: Privileges::Unprivileged,
        ..ApplyOptions::default()
    };
    let stats = apply_layer(&layer[..], TAR, File::open(dir.path()).unwrap(), &opts).unwrap();
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (1, 1));
    let mut buf = [0u8; 8];
    let n =
        rustix::fs::lgetxattr(dir.path().join("d"), "user.overlay.opaque", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"y");
    let gone = fs::symlink_metadata(dir.path().join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
}

/// The subtree filter (used to take only `/opt/agent` from an agent image)
/// applies what can affect the subtree, including whiteouts and opaque
/// markers on the way to it, and nothing else, while the diff_id still
/// covers the whole stream.
#[test]
fn subtree_filter_takes_only_the_subtree() {
    let target = tempfile::tempdir().unwrap();
    let opts = |diff: Option<Digest>| ApplyOptions {
        mode: OutputMode::Tree,
        subtree: Some("opt/agent".into()),
        expected_diff_id: diff,
        privileges: Privileges::Detect,
        ..Default::default()
    };
    let l1 = Layer::at(1)
        .dir("etc", 0o755)
        .file("etc/leak", b"outside", 0o644)
        .dir("opt", 0o755)
        .dir("opt/agent", 0o751)
        .file("opt/agent/old", b"old", 0o644)
        .file("opt/other", b"other", 0o644)
        .bytes();
    let l2 = Layer::at(2)
        .whiteout("opt/.wh.agent")
        .dir("opt/agent", 0o750)
        .file("opt/agent/run", b"#!/bin/sh\n", 0o755)
        .file("root-file", b"x", 0o644)
        .bytes();
    let diff = Digest::sha256_of(&l2);
    let fd = File::open(target.path()).unwrap();
    apply_layer(&l1[..], TAR, &fd, &opts(None)).unwrap();
    let stats = apply_layer(&l2[..], TAR, &fd, &opts(Some(diff.clone()))).unwrap();
    assert_eq!(stats.diff_id, diff);
    let t = target.path();
    assert!(
        !t.join("etc").exists() && !t.join("root-file").exists() && !t.join("opt/other").exists()
    );
    assert!(
        !t.join("opt/agent/old").exists(),
        "the whiteout of opt/agent applied"
    );
    assert_eq!(fs::read(t.join("opt/agent/run")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::metadata(t.join("opt/agent")).unwrap().mode() & 0o7777,
        0o750
    );
}
