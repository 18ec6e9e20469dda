//! The ordering rules of the parallel unpack (issue 11): small files are
//! made by writer threads while the reader goes on, and what depends on
//! order must still happen in order. Each case applies its layer twice,
//! with the writer threads and with `single_writer` (every file on the
//! reading thread, in stream order), and asserts the same tree, entry for
//! entry, besides what the case itself promises.
//!
//! Each layer puts many small files before the entry under test, so the
//! writers are still busy with them when the reader reaches it.

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use hoist::unpack::{apply_layer, ApplyOptions, LayerStats, OutputMode, UnpackError};
use support::layer::{gzip, Layer, MTIME};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn fd(dir: &Path) -> OwnedFd {
    File::open(dir).unwrap().into()
}

fn opts(mode: OutputMode, single_writer: bool) -> ApplyOptions {
    ApplyOptions {
        mode,
        single_writer,
        ..ApplyOptions::default()
    }
}

/// Every entry under `root`: type, mode, owner, size, mtime, link count,
/// content digest or link target, xattrs, and which entries share an inode.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, String>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("l {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "d".to_string()
        } else if ft.is_file() {
            let data = fs::read(&p).unwrap();
            format!("f {}", hoist::digest::Digest::sha256_of(&data))
        } else if ft.is_char_device() {
            format!("c {}", m.rdev())
        } else {
            "?".to_string()
        };
        // The first path seen for an inode names its hardlink group.
        let group = if !ft.is_dir() && m.nlink() > 1 {
            inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone()
        } else {
            String::new()
        };
        let xattrs = xattrs(&p);
        // What the layer does not declare (a lower layer's entry, a parent
        // made on the way) has the time it was made or changed: not compared.
        let mtime = if m.mtime() != MTIME as i64 {
            "changed".to_string()
        } else {
            format!("{}.{}", m.mtime(), m.mtime_nsec())
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:o} uid={} gid={} size={} mtime={mtime} nlink={} group={group} xattrs={xattrs:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                if ft.is_dir() { 0 } else { m.size() },
                m.nlink(),
            ),
        );
        if ft.is_dir() {
            walk(root, &p, out, inodes);
        }
    }
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap_or(0);
        out.push((name, value[..len].to_vec()));
    }
    out
}

/// Applies `layer` onto a copy of `lower` (made by `lower`), with writer
/// threads and with one writer; asserts both give the same tree and
/// stats, and returns the tree's root (kept alive by the TempDir).
fn both_ways(
    lower: impl Fn(&Path),
    layer: &[u8],
    media_type: &str,
    mode: OutputMode,
) -> (tempfile::TempDir, LayerStats) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let parallel = tempfile::tempdir().unwrap();
    let single = tempfile::tempdir().unwrap();
    lower(parallel.path());
    lower(single.path());
    let got = apply_layer(layer, media_type, fd(parallel.path()), &opts(mode, false)).unwrap();
    let want = apply_layer(layer, media_type, fd(single.path()), &opts(mode, true)).unwrap();
    assert_eq!(got, want, "stats differ from one writer's");
    let (got_tree, want_tree) = (tree(parallel.path()), tree(single.path()));
    assert_eq!(got_tree.len(), want_tree.len(), "entry counts differ");
    for (path, want_line) in &want_tree {
        assert_eq!(
            got_tree.get(path),
            Some(want_line),
            "{path} differs from one writer's"
        );
    }
    (parallel, got)
}

fn nothing(_: &Path) {}

#[test]
fn hardlink_to_a_file_another_thread_writes() {
    let mut layer = Layer::new().dir("links", 0o755);
    // Targets handed to writers, links right behind them in the stream.
    for i in 0..300 {
        layer = layer
            .file(
                &format!("links/t{i}"),
                format!("target {i}\n").as_bytes(),
                0o640,
            )
            .hardlink(&format!("links/l{i}"), &format!("links/t{i}"));
    }
    let layer = layer.busy("spread", 16, 500).bytes();
    for mode in [OutputMode::Tree, OutputMode::OverlayLayer] {
        let (root, _) = both_ways(nothing, &layer, TAR, mode);
        for i in [0, 150, 299] {
            let (t, l) = (
                root.path().join(format!("links/t{i}")),
                root.path().join(format!("links/l{i}")),
            );
            let (mt, ml) = (fs::metadata(&t).unwrap(), fs::metadata(&l).unwrap());
            assert_eq!((mt.ino(), mt.nlink()), (ml.ino(), 2), "{mode:?} l{i}");
            assert_eq!(fs::read(&l).unwrap(), format!("target {i}\n").as_bytes());
            // The link header's mode applies to the shared inode, after
            // the target's own (moby createTarFile).
            assert_eq!(mt.mode() & 0o7777, 0o644, "{mode:?} t{i}");
        }
    }
}

#[test]
fn whiteout_then_a_sibling_recreated_in_the_same_layer() {
    let lower = |root: &Path| {
        fs::create_dir_all(root.join("d/gone")).unwrap();
        fs::write(root.join("d/gone/inner"), b"lower").unwrap();
        fs::write(root.join("d/x"), b"lower x").unwrap();
        fs::write(root.join("d/kept"), b"lower kept").unwrap();
    };
    let layer = Layer::new()
        .busy("d/busy", 8, 400)
        .file("d/.wh.x", b"", 0o644)
        .file("d/x", b"new x", 0o600)
        .file("d/.wh.gone", b"", 0o644)
        .busy("d/gone", 4, 200)
        .file("d/late", b"late", 0o644)
        .file("d/.wh.late", b"", 0o644)
        .bytes();
    let (root, stats) = both_ways(lower, &layer, TAR, OutputMode::Tree);
    assert_eq!(stats.whiteouts, 3);
    let r = root.path();
    assert_eq!(fs::read(r.join("d/x")).unwrap(), b"new x");
    assert_eq!(fs::read(r.join("d/kept")).unwrap(), b"lower kept");
    // A whiteout hides only the lower layers' entry, wherever it is in
    // the stream: this layer's own d/gone/* and d/late stay.
    assert!(!r.join("d/gone/inner").exists());
    assert_eq!(fs::read_dir(r.join("d/gone")).unwrap().count(), 4);
    assert_eq!(fs::read(r.join("d/late")).unwrap(), b"late");

    // The overlay form: the whiteout device, then the file in its place.
    let layer = Layer::new()
        .busy("d/busy", 8, 400)
        .file("d/.wh.x", b"", 0o644)
        .file("d/x", b"new x", 0o600)
        .bytes();
    let (root, _) = both_ways(nothing, &layer, TAR, OutputMode::OverlayLayer);
    let m = fs::symlink_metadata(root.path().join("d/x")).unwrap();
    assert!(m.file_type().is_file());
}

#[test]
fn a_directory_whose_mode_forbids_writing_gets_it_only_at_the_end() {
    let mut layer = Layer::new().dir("ro", 0o500).dir("ro/sub", 0o555);
    for i in 0..400 {
        layer = layer.file(&format!("ro/f{i}"), b"data", 0o444);
        layer = layer.file(&format!("ro/sub/g{i}"), b"data", 0o444);
    }
    let layer = gzip(&layer.busy("other", 8, 300).bytes());
    let (root, stats) = both_ways(nothing, &layer, TAR_GZ, OutputMode::Tree);
    assert!(stats.entries > 1100);
    let r = root.path();
    assert_eq!(fs::read_dir(r.join("ro")).unwrap().count(), 401);
    assert_eq!(fs::read_dir(r.join("ro/sub")).unwrap().count(), 400);
    for (p, mode) in [("ro", 0o500), ("ro/sub", 0o555)] {
        let m = fs::metadata(r.join(p)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "{p}");
        // Children made later would have changed it: set last.
        assert_eq!(m.mtime(), MTIME as i64, "{p}");
    }
}

#[test]
fn later_entries_at_a_path_a_writer_holds_wait_for_it() {
    let mut layer = Layer::new().busy("w", 8, 300);
    // A file, then a directory in its place; a directory full of files
    // being written, then a file in its place; a file repeated; a
    // symlink over a file.
    layer = layer.file("a", b"file a", 0o644).dir("a", 0o750);
    for i in 0..50 {
        layer = layer.file(&format!("b/f{i}"), b"in b", 0o644);
    }
    layer = layer
        .file("b", b"file b", 0o600)
        .file("c", b"first", 0o644)
        .file("c", b"second", 0o600)
        .file("s", b"file s", 0o644)
        .symlink("s", "c");
    let layer = layer.bytes();
    for mode in [OutputMode::Tree, OutputMode::OverlayLayer] {
        let (root, _) = both_ways(nothing, &layer, TAR, mode);
        let r = root.path();
        assert!(fs::symlink_metadata(r.join("a")).unwrap().is_dir());
        assert_eq!(fs::read(r.join("b")).unwrap(), b"file b");
        assert_eq!(fs::read(r.join("c")).unwrap(), b"second");
        assert_eq!(fs::read_link(r.join("s")).unwrap(), Path::new("c"));
    }
}

#[test]
fn five_thousand_small_files_as_one_writer_makes_them() {
    // A repository-like layer: nested directories, small files of many
    // sizes, a few large ones (streamed by the reader), executables,
    // symlinks, hardlinks and xattrs, deterministic.
    let mut layer = Layer::new().dir("repo", 0o755);
    let mut seed: u64 = 11;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for d in 0..120 {
        let dir = format!("repo/pkg{}/mod{}", d % 12, d);
        layer = layer.dir(&format!("repo/pkg{}", d % 12), 0o755);
        layer = layer.dir(&dir, 0o755);
    }
    for i in 0..5000 {
        let dir = format!("repo/pkg{}/mod{}", i % 12, (i * 7) % 120);
        let len = (next() % 4000) as usize;
        let byte = (next() % 251) as u8;
        let mode = if i % 9 == 0 { 0o755 } else { 0o644 };
        if i % 97 == 0 {
            layer = layer.pax(&[("SCHILY.xattr.user.tag", format!("t{i}").as_bytes())]);
        }
        layer = layer.file(&format!("{dir}/f{i}.py"), &vec![byte; len], mode);
        if i % 250 == 0 {
            layer = layer.hardlink(&format!("{dir}/hl{i}"), &format!("{dir}/f{i}.py"));
        }
        if i % 333 == 0 {
            layer = layer.symlink(&format!("{dir}/sl{i}"), &format!("f{i}.py"));
        }
    }
    for i in 0..3 {
        let big = vec![i as u8 + 1; (3 << 20) + i * 4097];
        layer = layer.file(&format!("repo/big{i}.bin"), &big, 0o644);
    }
    let layer = gzip(&layer.bytes());
    for mode in [OutputMode::Tree, OutputMode::OverlayLayer] {
        let (root, stats) = both_ways(nothing, &layer, TAR_GZ, mode);
        assert!(stats.entries > 5000, "{stats:?}");
        assert_eq!(
            fs::metadata(root.path().join("repo/big2.bin"))
                .unwrap()
                .len(),
            (3 << 20) + 2 * 4097
        );
    }
}

#[test]
fn a_writer_error_stops_the_unpack_and_names_the_entry() {
    // An xattr value larger than Linux allows (64 KiB): setting it fails
    // with E2BIG on the writer thread that made the file.
    let huge = vec![b'x'; 70 * 1024];
    let layer = Layer::new()
        .busy("w", 8, 300)
        .pax(&[("SCHILY.xattr.user.huge", &huge)])
        .file("w/bad-file", b"data", 0o644)
        .busy("after", 4, 100)
        .bytes();
    let dir = tempfile::tempdir().unwrap();
    let got = apply_layer(
        &layer[..],
        TAR,
        fd(dir.path()),
        &opts(OutputMode::Tree, false),
    );
    match got {
        Err(UnpackError::Io { entry, op, .. }) => {
            assert_eq!(entry, "w/bad-file");
            assert_eq!(op, "set xattr");
        }
        other => panic!("expected the writer's error, got {other:?}"),
    }
}
