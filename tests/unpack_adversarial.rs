//! Crafted hostile layers, one test each, against the real kernel.
//!
//! Each test builds its tar by hand (the `tar` crate's builder refuses to
//! write most of these names), applies it to `BASE/target`, and asserts the
//! exact outcome: the error variant, or the exact resulting tree. Each also
//! checks that nothing outside the target changed: `BASE/sentinel` beside
//! the target, `BASE/sibling/secret` in a sibling directory, and the host's
//! `/etc/passwd`. The cases follow containerd's `archive/tar_test.go`
//! breakouts and moby's `pkg/archive` tests.

mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hoist::digest::Digest;
use hoist::unpack::{
    apply_layer, ApplyOptions, BombKind, LayerStats, Limits, OutputMode, Privileges, UnpackError,
};
use support::layer::{gzip, header, zstd, Layer, MTIME};
use tar::EntryType;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

// ---- the fixture ----------------------------------------------------------

/// `BASE/target` (the root the layer is applied to), with a sentinel file
/// beside it and a sibling directory holding a secret.
struct Fixture {
    base: tempfile::TempDir,
    outside_before: BTreeMap<String, String>,
    passwd_before: Option<String>,
}

impl Fixture {
    fn new() -> Fixture {
        // Lower layers below are laid down with std::fs; pin their modes.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("target")).unwrap();
        fs::write(base.path().join("sentinel"), b"sentinel").unwrap();
        fs::create_dir(base.path().join("sibling")).unwrap();
        fs::write(base.path().join("sibling/secret"), b"secret").unwrap();
        fs::set_permissions(
            base.path().join("sibling/secret"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut f = Fixture {
            base,
            outside_before: BTreeMap::new(),
            passwd_before: host_passwd(),
        };
        f.outside_before = f.outside();
        f
    }

    fn target(&self) -> PathBuf {
        self.base.path().join("target")
    }

    fn sibling(&self) -> PathBuf {
        self.base.path().join("sibling")
    }

    fn fd(&self) -> OwnedFd {
        File::open(self.target()).unwrap().into()
    }

    /// Lays down a lower layer the plain way (the unpacker is not trusted
    /// to build its own preconditions).
    fn lower(&self, f: impl FnOnce(&Path)) {
        f(&self.target());
    }

    fn apply(&self, layer: &[u8]) -> Result<LayerStats, UnpackError> {
        self.apply_as(layer, TAR, &ApplyOptions::default())
    }

    fn apply_as(
        &self,
        layer: &[u8],
        media_type: &str,
        opts: &ApplyOptions,
    ) -> Result<LayerStats, UnpackError> {
        apply_layer(layer, media_type, self.fd(), opts)
    }

    fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(
            self.base.path(),
            self.base.path(),
            &mut out,
            Some(&self.target()),
        );
        out
    }

    /// Nothing outside the target changed.
    fn assert_outside_untouched(&self) {
        assert_eq!(
            self.outside(),
            self.outside_before,
            "something outside the target changed"
        );
        assert_eq!(
            host_passwd(),
            self.passwd_before,
            "the host's /etc/passwd changed"
        );
    }

    /// The exact tree under the target.
    fn tree(&self) -> Vec<String> {
        let mut out = BTreeMap::new();
        walk(&self.target(), &self.target(), &mut out, None);
        out.into_iter().map(|(k, v)| format!("{k} {v}")).collect()
    }
}

fn host_passwd() -> Option<String> {
    let m = fs::symlink_metadata("/etc/passwd").ok()?;
    Some(format!(
        "ino={} nlink={} size={} mtime={}",
        m.ino(),
        m.nlink(),
        m.size(),
        m.mtime()
    ))
}

/// One line per entry: type, mode, and content or link target.
fn describe(path: &Path) -> String {
    let m = fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let mode = m.mode() & 0o7777;
    if ft.is_symlink() {
        format!("l -> {}", fs::read_link(path).unwrap().display())
    } else if ft.is_dir() {
        format!("d {mode:o}")
    } else if ft.is_file() {
        format!(
            "f {mode:o} {:?}",
            String::from_utf8_lossy(&fs::read(path).unwrap())
        )
    } else if ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_char_device() { 'c' } else { 'b' };
        let (maj, min) = (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()));
        format!("{kind} {mode:o} {maj}/{min}")
    } else if ft.is_fifo() {
        format!("p {mode:o}")
    } else {
        "?".into()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>, skip: Option<&Path>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        if Some(p.as_path()) == skip {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = fs::symlink_metadata(&p).unwrap();
        out.insert(
            rel,
            format!("{} nlink={} mtime={}", describe(&p), m.nlink(), m.mtime()),
        );
        if m.file_type().is_dir() {
            walk(root, &p, out, skip);
        }
    }
}

/// Tree lines without nlink/mtime, for exact comparisons.
fn shape(tree: Vec<String>) -> Vec<String> {
    tree.into_iter()
        .map(|l| l.split(" nlink=").next().unwrap().to_string())
        .collect()
}

fn require_root(test: &str) -> bool {
    support::require_root(test, "ownership, devices or trusted.* xattrs")
}

fn same_inode(a: &Path, b: &Path) -> bool {
    let (a, b) = (
        fs::symlink_metadata(a).unwrap(),
        fs::symlink_metadata(b).unwrap(),
    );
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {}: {e}", path.display()),
    }
}

macro_rules! assert_err {
    ($res:expr, $pat:pat $(if $guard:expr)?) => {
        match $res {
            Err($pat) $(if $guard)? => {}
            other => panic!("expected {}, got {:?}", stringify!($pat), other),
        }
    };
}

// ---- path traversal -------------------------------------------------------

#[test]
fn dotdot_traversal_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("../escaped", b"x", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::PathEscape { entry } if entry == "../escaped");
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn dotdot_after_a_directory_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .file("a/../../sentinel", b"overwritten", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::PathEscape { entry } if entry == "a/../../sentinel");
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn dotdot_that_stays_inside_is_resolved() {
    let fx = Fixture::new();
    let layer = Layer::new().file("a/b/../c", b"c", 0o640).bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(shape(fx.tree()), ["a d 755", "a/c f 640 \"c\""]);
    fx.assert_outside_untouched();
}

#[test]
fn absolute_paths_land_inside() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .file("/etc/hoist-adversarial-abs", b"inside", 0o600)
        .bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(
        shape(fx.tree()),
        ["etc d 755", "etc/hoist-adversarial-abs f 600 \"inside\""]
    );
    assert!(!Path::new("/etc/hoist-adversarial-abs").exists());
    fx.assert_outside_untouched();
}

#[test]
fn pax_path_override_with_dotdot_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .pax(&[("path", b"../pax-escape")])
        .file("innocent", b"x", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::PathEscape { entry } if entry == "../pax-escape");
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn gnu_long_name_traversal_is_refused() {
    let fx = Fixture::new();
    let long = format!("{}/../../../{}", "d".repeat(60), "x".repeat(120));
    let layer = Layer::new()
        .long_name(long.as_bytes())
        .file("short-name", b"x", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::PathEscape { entry } if entry == long);
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn device_node_name_traversal_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .node("dev/../../null-escape", EntryType::Char, 1, 3)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::PathEscape { entry } if entry == "dev/../../null-escape");
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn empty_name_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("", b"x", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadPath { entry, .. } if entry.is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn root_entry_that_is_not_a_directory_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("./", b"x", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadEntry { entry, .. } if entry == "./");
    assert!(fx.target().is_dir());
    fx.assert_outside_untouched();
}

// ---- symlink tricks -------------------------------------------------------

#[test]
fn symlink_to_root_is_never_written_through() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .symlink("link", "/")
        .file("link/etc/hoist-adversarial-x", b"x", 0o644)
        .bytes();
    assert_err!(
        fx.apply(&layer),
        UnpackError::SymlinkInPath { entry, component } if entry == "link/etc/hoist-adversarial-x" && component == "link"
    );
    assert_eq!(shape(fx.tree()), ["link l -> /"]);
    assert!(!Path::new("/etc/hoist-adversarial-x").exists());
    fx.assert_outside_untouched();
}

#[test]
fn symlink_to_parent_is_never_written_through() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .symlink("up", "..")
        .file("up/sentinel", b"overwritten", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::SymlinkInPath { component, .. } if component == "up");
    assert_eq!(shape(fx.tree()), ["up l -> .."]);
    fx.assert_outside_untouched();
}

#[test]
fn symlink_to_dot_is_never_written_through() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .symlink("self", ".")
        .file("self/x", b"x", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::SymlinkInPath { component, .. } if component == "self");
    assert_eq!(shape(fx.tree()), ["self l -> ."]);
    fx.assert_outside_untouched();
}

#[test]
fn symlink_chain_is_never_written_through() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("dummy", 0o755)
        .symlink("dummy/etc", "/etc")
        .symlink("localetc", "./dummy/etc")
        .file("localetc/hoist-adversarial-chain", b"x", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::SymlinkInPath { component, .. } if component == "localetc");
    assert_eq!(
        shape(fx.tree()),
        [
            "dummy d 755",
            "dummy/etc l -> /etc",
            "localetc l -> ./dummy/etc"
        ]
    );
    assert!(!Path::new("/etc/hoist-adversarial-chain").exists());
    fx.assert_outside_untouched();
}

#[test]
fn deep_symlinked_component_is_refused() {
    let fx = Fixture::new();
    let sibling = fx.sibling().display().to_string();
    let layer = Layer::new()
        .dir("d", 0o755)
        .symlink("d/l", &sibling)
        .file("d/l/secret", b"overwritten", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::SymlinkInPath { component, .. } if component == "d/l");
    fx.assert_outside_untouched();
}

#[test]
fn file_replacing_symlink_does_not_write_through() {
    let fx = Fixture::new();
    let sentinel = fx.base.path().join("sentinel");
    fx.lower(|t| std::os::unix::fs::symlink(&sentinel, t.join("f")).unwrap());
    let layer = Layer::new().file("f", b"new", 0o644).bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(shape(fx.tree()), ["f f 644 \"new\""]);
    fx.assert_outside_untouched();
}

#[test]
fn dir_replacing_symlink_does_not_write_into_its_target() {
    let fx = Fixture::new();
    let sibling = fx.sibling();
    fx.lower(|t| std::os::unix::fs::symlink(&sibling, t.join("d")).unwrap());
    let layer = Layer::new()
        .dir("d", 0o750)
        .file("d/secret", b"mine", 0o644)
        .bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(shape(fx.tree()), ["d d 750", "d/secret f 644 \"mine\""]);
    fx.assert_outside_untouched();
}

#[test]
fn symlink_replaces_directory() {
    let fx = Fixture::new();
    fx.lower(|t| {
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d/child"), b"old").unwrap();
    });
    let layer = Layer::new().symlink("d", "/etc").bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(shape(fx.tree()), ["d l -> /etc"]);
    fx.assert_outside_untouched();
}

#[test]
fn file_replaces_directory() {
    let fx = Fixture::new();
    fx.lower(|t| {
        fs::create_dir_all(t.join("d/sub")).unwrap();
        fs::write(t.join("d/sub/child"), b"old").unwrap();
    });
    let layer = Layer::new().file("d", b"now a file", 0o644).bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(shape(fx.tree()), ["d f 644 \"now a file\""]);
    fx.assert_outside_untouched();
}

#[test]
fn redeclared_directory_keeps_contents_and_takes_new_metadata() {
    let fx = Fixture::new();
    fx.lower(|t| {
        fs::create_dir(t.join("d")).unwrap();
        fs::write(t.join("d/old"), b"old").unwrap();
    });
    let layer = Layer::new()
        .dir("d", 0o711)
        .file("d/new", b"new", 0o644)
        .bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(
        shape(fx.tree()),
        ["d d 711", "d/new f 644 \"new\"", "d/old f 644 \"old\""]
    );
    assert_eq!(
        fs::metadata(fx.target().join("d")).unwrap().mtime(),
        MTIME as i64
    );
    fx.assert_outside_untouched();
}

#[test]
fn duplicate_entries_last_wins() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .file("f", b"first", 0o600)
        .dir("f", 0o755)
        .file("f", b"last", 0o640)
        .bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(shape(fx.tree()), ["f f 640 \"last\""]);
    fx.assert_outside_untouched();
}

// ---- hardlink tricks ------------------------------------------------------

#[test]
fn hardlink_to_host_etc_passwd_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().hardlink("mypasswd", "/etc/passwd").bytes();
    assert_err!(
        fx.apply(&layer),
        UnpackError::BadHardlink { entry, target, reason } if entry == "mypasswd" && target == "/etc/passwd" && reason == "the target does not exist"
    );
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn hardlink_absolute_resolves_inside_the_root() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"inside", 0o644)
        .hardlink("localpasswd", "/etc/passwd")
        .bytes();
    fx.apply(&layer).unwrap();
    let t = fx.target();
    assert!(same_inode(&t.join("localpasswd"), &t.join("etc/passwd")));
    assert_eq!(fs::read(t.join("localpasswd")).unwrap(), b"inside");
    fx.assert_outside_untouched();
}

#[test]
fn hardlink_to_dotdot_outside_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().hardlink("stolen", "../sentinel").bytes();
    assert_err!(fx.apply(&layer), UnpackError::PathEscape { entry } if entry == "stolen");
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn hardlink_through_symlinked_directory_is_refused() {
    let fx = Fixture::new();
    let sibling = fx.sibling().display().to_string();
    let layer = Layer::new()
        .symlink("outside", &sibling)
        .hardlink("stolen", "outside/secret")
        .bytes();
    assert_err!(
        fx.apply(&layer),
        UnpackError::SymlinkInPath { entry, component } if entry == "stolen" && component == "outside"
    );
    assert_eq!(
        fs::metadata(fx.sibling().join("secret")).unwrap().nlink(),
        1
    );
    fx.assert_outside_untouched();
}

#[test]
fn hardlink_to_symlink_pointing_outside_links_the_symlink() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .symlink("passwdlink", "/etc/passwd")
        .hardlink("localpasswd", "passwdlink")
        .bytes();
    fx.apply(&layer).unwrap();
    let t = fx.target();
    assert!(same_inode(&t.join("localpasswd"), &t.join("passwdlink")));
    assert_eq!(
        shape(fx.tree()),
        [
            "localpasswd l -> /etc/passwd",
            "passwdlink l -> /etc/passwd"
        ]
    );
    fx.assert_outside_untouched();
}

#[test]
fn hardlink_to_directory_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().dir("d", 0o755).hardlink("h", "d").bytes();
    assert_err!(
        fx.apply(&layer),
        UnpackError::BadHardlink { reason, .. } if reason == "the target is a directory"
    );
    assert_eq!(shape(fx.tree()), ["d d 755"]);
    fx.assert_outside_untouched();
}

#[test]
fn hardlink_to_file_of_a_lower_layer() {
    let fx = Fixture::new();
    fx.lower(|t| fs::write(t.join("lower"), b"from below").unwrap());
    let layer = Layer::new().hardlink("upper", "lower").bytes();
    fx.apply(&layer).unwrap();
    assert!(same_inode(
        &fx.target().join("upper"),
        &fx.target().join("lower")
    ));
    fx.assert_outside_untouched();
}

// ---- whiteouts --------------------------------------------------------------

#[test]
fn whiteout_with_empty_name_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("d/.wh.", b"", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadWhiteout { entry, .. } if entry == "d/.wh.");
    fx.assert_outside_untouched();
}

#[test]
fn whiteout_of_dot_is_refused() {
    let fx = Fixture::new();
    fx.lower(|t| fs::write(t.join("keep"), b"keep").unwrap());
    let layer = Layer::new().file(".wh..", b"", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadWhiteout { entry, .. } if entry == ".wh..");
    assert_eq!(shape(fx.tree()), ["keep f 644 \"keep\""]);
    fx.assert_outside_untouched();
}

#[test]
fn whiteout_of_dotdot_is_refused() {
    let fx = Fixture::new();
    fx.lower(|t| fs::create_dir(t.join("d")).unwrap());
    let layer = Layer::new().file("d/.wh...", b"", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadWhiteout { entry, .. } if entry == "d/.wh...");
    assert_eq!(shape(fx.tree()), ["d d 755"]);
    fx.assert_outside_untouched();
}

#[test]
fn whiteout_used_as_directory_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file(".wh../sentinel", b"", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadWhiteout { entry, .. } if entry == ".wh../sentinel");
    fx.assert_outside_untouched();
}

#[test]
fn whiteout_through_symlinked_directory_is_refused() {
    let fx = Fixture::new();
    let sibling = fx.sibling();
    fx.lower(|t| std::os::unix::fs::symlink(&sibling, t.join("link")).unwrap());
    let layer = Layer::new().file("link/.wh.secret", b"", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::SymlinkInPath { component, .. } if component == "link");
    fx.assert_outside_untouched();
}

#[test]
fn opaque_marker_through_symlinked_directory_is_refused() {
    let fx = Fixture::new();
    fx.lower(|t| std::os::unix::fs::symlink("../sibling", t.join("link")).unwrap());
    let layer = Layer::new().file("link/.wh..wh..opq", b"", 0o644).bytes();
    assert_err!(fx.apply(&layer), UnpackError::SymlinkInPath { component, .. } if component == "link");
    assert_eq!(shape(fx.tree()), ["link l -> ../sibling"]);
    fx.assert_outside_untouched();
}

#[test]
fn whiteout_deletes_lower_entry_and_keeps_its_symlink_target() {
    let fx = Fixture::new();
    let sibling = fx.sibling();
    fx.lower(|t| {
        std::os::unix::fs::symlink(&sibling, t.join("link")).unwrap();
        fs::create_dir(t.join("gone")).unwrap();
        fs::write(t.join("gone/x"), b"x").unwrap();
        fs::write(t.join("kept"), b"kept").unwrap();
    });
    let layer = Layer::new()
        .file(".wh.link", b"", 0o644)
        .file(".wh.gone", b"", 0o644)
        .bytes();
    let stats = fx.apply(&layer).unwrap();
    assert_eq!(stats.whiteouts, 2);
    assert_eq!(shape(fx.tree()), ["kept f 644 \"kept\""]);
    fx.assert_outside_untouched();
}

#[test]
fn opaque_marker_after_siblings_keeps_them() {
    let fx = Fixture::new();
    fx.lower(|t| {
        fs::create_dir_all(t.join("d/sub")).unwrap();
        fs::write(t.join("d/old"), b"old").unwrap();
        fs::write(t.join("d/sub/old2"), b"old2").unwrap();
        fs::write(t.join("outside-d"), b"stays").unwrap();
    });
    let layer = Layer::new()
        .dir("d", 0o755)
        .file("d/new", b"new", 0o644)
        .file("d/sub/new2", b"new2", 0o644)
        .file("d/.wh..wh..opq", b"", 0o644)
        .bytes();
    let stats = fx.apply(&layer).unwrap();
    assert_eq!(stats.opaque_dirs, 1);
    assert_eq!(
        shape(fx.tree()),
        [
            "d d 755",
            "d/new f 644 \"new\"",
            "d/sub d 755",
            "d/sub/new2 f 644 \"new2\"",
            "outside-d f 644 \"stays\"",
        ]
    );
    fx.assert_outside_untouched();
}

// ---- stream tricks ----------------------------------------------------------

#[test]
fn pax_size_larger_than_data_is_truncation() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .pax(&[("size", b"1048576")])
        .file("big", b"only ten b", 0o644)
        .bytes();
    // The declared megabyte swallows the padding and end-of-archive blocks.
    assert_err!(
        fx.apply(&layer),
        UnpackError::Truncated { entry, expected: 1_048_576, found: 1536 } if entry == "big"
    );
    fx.assert_outside_untouched();
}

#[test]
fn oversized_pax_header_is_a_bomb() {
    let fx = Fixture::new();
    let huge = vec![b'a'; 5 << 20];
    let layer = Layer::new()
        .pax(&[("comment", &huge)])
        .file("f", b"x", 0o644)
        .bytes();
    assert_err!(
        fx.apply(&layer),
        UnpackError::BombLimit {
            kind: BombKind::HeaderSize,
            ..
        }
    );
    fx.assert_outside_untouched();
}

#[test]
fn gzip_bomb_exceeding_ratio_cap_is_refused() {
    let fx = Fixture::new();
    let zeros = vec![0u8; 16 << 20];
    let layer = gzip(&Layer::new().file("zeros", &zeros, 0o644).bytes());
    let opts = ApplyOptions {
        limits: Limits {
            max_ratio: 50,
            ratio_grace_bytes: 1 << 20,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    };
    assert_err!(
        fx.apply_as(&layer, TAR_GZ, &opts),
        UnpackError::BombLimit {
            kind: BombKind::Ratio,
            limit: 50,
            ..
        }
    );
    fx.assert_outside_untouched();
}

#[test]
fn tar_bomb_exceeding_size_cap_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("big", &vec![7u8; 3 << 20], 0o644).bytes();
    let opts = ApplyOptions {
        limits: Limits {
            max_uncompressed_bytes: 1 << 20,
            ..Limits::default()
        },
        ..ApplyOptions::default()
    };
    assert_err!(
        fx.apply_as(&layer, TAR, &opts),
        UnpackError::BombLimit {
            kind: BombKind::UncompressedSize,
            limit: 1_048_576,
            ..
        }
    );
    fx.assert_outside_untouched();
}

#[test]
fn diff_id_mismatch_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("f", b"x", 0o644).bytes();
    let wrong = Digest::sha256_of(b"another layer");
    let opts = ApplyOptions {
        expected_diff_id: Some(wrong.clone()),
        ..ApplyOptions::default()
    };
    assert_err!(
        fx.apply_as(&layer, TAR, &opts),
        UnpackError::DiffIdMismatch { expected, found } if expected == wrong && found == Digest::sha256_of(&layer)
    );
    fx.assert_outside_untouched();
}

#[test]
fn diff_id_is_of_the_uncompressed_stream() {
    let fx = Fixture::new();
    let tar = Layer::new().file("f", b"x", 0o644).bytes();
    let opts = ApplyOptions {
        expected_diff_id: Some(Digest::sha256_of(&tar)),
        ..ApplyOptions::default()
    };
    let stats = fx.apply_as(&zstd(&tar), TAR_ZST, &opts).unwrap();
    assert_eq!(stats.diff_id, Digest::sha256_of(&tar));
    assert_eq!(shape(fx.tree()), ["f f 644 \"x\""]);
    fx.assert_outside_untouched();
}

#[test]
fn gzip_media_type_on_plain_tar_is_refused() {
    let fx = Fixture::new();
    let layer = Layer::new().file("f", b"x", 0o644).bytes();
    assert_err!(
        fx.apply_as(&layer, DOCKER_GZ, &ApplyOptions::default()),
        UnpackError::CompressionMismatch { .. }
    );
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn zstd_media_type_on_gzip_is_refused() {
    let fx = Fixture::new();
    let layer = gzip(&Layer::new().file("f", b"x", 0o644).bytes());
    assert_err!(
        fx.apply_as(&layer, TAR_ZST, &ApplyOptions::default()),
        UnpackError::CompressionMismatch { .. }
    );
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn plain_tar_media_type_on_gzip_is_refused() {
    let fx = Fixture::new();
    let layer = gzip(&Layer::new().file("f", b"x", 0o644).bytes());
    assert_err!(
        fx.apply_as(&layer, TAR, &ApplyOptions::default()),
        UnpackError::CompressionMismatch { .. }
    );
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn unsupported_media_types_are_never_parsed() {
    let fx = Fixture::new();
    let layer = Layer::new().file("f", b"x", 0o644).bytes();
    for mt in [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        "application/octet-stream",
    ] {
        assert_err!(
            fx.apply_as(&layer, mt, &ApplyOptions::default()),
            UnpackError::UnsupportedMediaType { media_type } if media_type == mt
        );
    }
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn trailing_garbage_is_hashed() {
    let fx = Fixture::new();
    let mut layer = Layer::new().file("f", b"x", 0o644).bytes();
    layer.extend_from_slice(&[0xAB; 3000]);
    let stats = fx.apply(&layer).unwrap();
    assert_eq!(stats.diff_id, Digest::sha256_of(&layer));
    assert_eq!(stats.uncompressed_bytes, layer.len() as u64);
    assert_eq!(shape(fx.tree()), ["f f 644 \"x\""]);
    fx.assert_outside_untouched();
}

#[test]
fn corrupt_gzip_is_a_decompress_error() {
    let fx = Fixture::new();
    let mut layer = gzip(&Layer::new().file("f", &[1u8; 100_000], 0o644).bytes());
    // Flip the CRC-32 in the gzip trailer: the data decodes, the check fails.
    let n = layer.len();
    layer[n - 8] ^= 0xFF;
    assert_err!(
        fx.apply_as(&layer, TAR_GZ, &ApplyOptions::default()),
        UnpackError::Decompress { .. }
    );
    fx.assert_outside_untouched();
}

// ---- modes, owners, xattrs --------------------------------------------------

#[test]
fn setuid_and_setgid_survive_chown() {
    if !require_root("setuid_and_setgid_survive_chown") {
        return;
    }
    let fx = Fixture::new();
    let mut dir = header(b"shared", EntryType::Directory, 0, 0o2775, b"");
    dir.set_uid(1000);
    dir.set_gid(1000);
    dir.set_cksum();
    let layer = Layer::new()
        .owned_file("su", b"#!/bin/sh\n", 0o4755, 0, 0)
        .owned_file("sg", b"#!/bin/sh\n", 0o2711, 1000, 50)
        .raw(&dir, b"")
        .dir("tmp", 0o1777)
        .bytes();
    fx.apply(&layer).unwrap();
    let meta = |n: &str| fs::symlink_metadata(fx.target().join(n)).unwrap();
    assert_eq!(
        (
            meta("su").mode() & 0o7777,
            meta("su").uid(),
            meta("su").gid()
        ),
        (0o4755, 0, 0)
    );
    assert_eq!(
        (
            meta("sg").mode() & 0o7777,
            meta("sg").uid(),
            meta("sg").gid()
        ),
        (0o2711, 1000, 50)
    );
    assert_eq!(
        (meta("shared").mode() & 0o7777, meta("shared").uid()),
        (0o2775, 1000)
    );
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    fx.assert_outside_untouched();
}

/// `cap_net_bind_service=ep` as a VFS_CAP_REVISION_2 blob.
const CAP_NET_BIND_SERVICE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn security_capability_xattr_is_preserved() {
    if !require_root("security_capability_xattr_is_preserved") {
        return;
    }
    let fx = Fixture::new();
    let layer = Layer::new()
        .pax(&[
            ("SCHILY.xattr.security.capability", &CAP_NET_BIND_SERVICE),
            ("SCHILY.xattr.user.note", b"hello"),
        ])
        .owned_file("ping", b"\x7fELF", 0o755, 0, 0)
        .bytes();
    let stats = fx.apply(&layer).unwrap();
    assert_eq!(stats.not_reproduced.xattrs_not_set, 0);
    let p = fx.target().join("ping");
    assert_eq!(
        xattr(&p, "security.capability").as_deref(),
        Some(&CAP_NET_BIND_SERVICE[..])
    );
    assert_eq!(xattr(&p, "user.note").as_deref(), Some(&b"hello"[..]));
    fx.assert_outside_untouched();
}

#[test]
fn overlay_xattrs_and_ownership_records_in_a_layer_are_ignored() {
    if !require_root("overlay_xattrs_and_ownership_records_in_a_layer_are_ignored") {
        return;
    }
    let fx = Fixture::new();
    let layer = Layer::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .dir("d", 0o755)
        .pax(&[
            ("SCHILY.xattr.user.overlay.whiteout", b"y"),
            ("SCHILY.xattr.user.hoist.owner", b"0:0"),
        ])
        .file("d/f", b"x", 0o644)
        .bytes();
    fx.apply(&layer).unwrap();
    let t = fx.target();
    assert_eq!(xattr(&t.join("d/f"), "user.hoist.owner"), None);
    assert_eq!(xattr(&t.join("d"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&t.join("d"), "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&t.join("d/f"), "user.overlay.whiteout"), None);
    assert_eq!(shape(fx.tree()), ["d d 755", "d/f f 644 \"x\""]);
    fx.assert_outside_untouched();
}

#[test]
fn unprivileged_mode_records_ownership_it_did_not_reproduce() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .owned_file("mine", b"x", 0o644, 4242, 4242)
        .node("dev/null", EntryType::Char, 1, 3)
        .bytes();
    let opts = ApplyOptions {
        privileges: Privileges::Unprivileged,
        ..ApplyOptions::default()
    };
    let stats = fx.apply_as(&layer, TAR, &opts).unwrap();
    assert_eq!(stats.not_reproduced.ownership_not_reproduced, 1);
    let m = fs::metadata(fx.target().join("mine")).unwrap();
    assert_eq!(m.uid(), rustix::process::geteuid().as_raw());
    // The true owner is recorded, and the tree digest reports it.
    assert_eq!(
        xattr(&fx.target().join("mine"), "user.hoist.owner").as_deref(),
        Some(&b"4242:4242"[..])
    );
    let tree = hoist::treedigest::read_dir_tree(&fx.target()).unwrap();
    let e = &tree.entries[&b"mine"[..]];
    assert_eq!((e.uid, e.gid), (4242, 4242));
    assert!(e.xattrs.is_empty(), "the record is not an image xattr");
    // As root the device is made anyway (mknod succeeds); unprivileged it
    // is skipped and counted.
    let made = fx.target().join("dev/null").exists();
    assert_eq!(stats.not_reproduced.devices_not_created, u64::from(!made));
    fx.assert_outside_untouched();
}

#[test]
fn device_nodes_and_fifos_are_created() {
    if !require_root("device_nodes_and_fifos_are_created") {
        return;
    }
    let fx = Fixture::new();
    let layer = Layer::new()
        .node("dev/null", EntryType::Char, 1, 3)
        .node("dev/loop0", EntryType::Block, 7, 0)
        .node("run/fifo", EntryType::Fifo, 0, 0)
        .bytes();
    fx.apply(&layer).unwrap();
    assert_eq!(
        shape(fx.tree()),
        [
            "dev d 755",
            "dev/loop0 b 666 7/0",
            "dev/null c 666 1/3",
            "run d 755",
            "run/fifo p 666",
        ]
    );
    fx.assert_outside_untouched();
}

// ---- overlay form -----------------------------------------------------------

fn overlay_opts() -> ApplyOptions {
    ApplyOptions {
        mode: OutputMode::OverlayLayer,
        privileges: Privileges::Root,
        ..ApplyOptions::default()
    }
}

#[test]
fn overlay_form_whiteout_is_a_0_0_char_device() {
    if !require_root("overlay_form_whiteout_is_a_0_0_char_device") {
        return;
    }
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/.wh.shadow", b"", 0o644)
        .bytes();
    fx.apply_as(&layer, TAR, &overlay_opts()).unwrap();
    assert_eq!(shape(fx.tree()), ["etc d 755", "etc/shadow c 0 0/0"]);
    fx.assert_outside_untouched();
}

#[test]
fn overlay_form_opaque_marker_sets_the_xattr() {
    if !require_root("overlay_form_opaque_marker_sets_the_xattr") {
        return;
    }
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("d", 0o755)
        .file("d/keep", b"k", 0o644)
        .file("d/.wh..wh..opq", b"", 0o644)
        .bytes();
    fx.apply_as(&layer, TAR, &overlay_opts()).unwrap();
    assert_eq!(shape(fx.tree()), ["d d 755", "d/keep f 644 \"k\""]);
    assert_eq!(
        xattr(&fx.target().join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    fx.assert_outside_untouched();
}

#[test]
fn overlay_form_needs_an_empty_target() {
    let fx = Fixture::new();
    fx.lower(|t| fs::write(t.join("leftover"), b"x").unwrap());
    let layer = Layer::new().file("f", b"x", 0o644).bytes();
    assert_err!(
        fx.apply_as(&layer, TAR, &overlay_opts()),
        UnpackError::TargetNotEmpty
    );
    assert_eq!(shape(fx.tree()), ["leftover f 644 \"x\""]);
    fx.assert_outside_untouched();
}

#[test]
fn pax_sparse_file_is_refused_not_written_wrong() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.realsize", b"1000000"),
        ])
        .file("sparse", b"1\n0\n512\n", 0o644)
        .bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadEntry { entry, .. } if entry == "sparse");
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}

#[test]
fn unknown_entry_type_is_refused() {
    let fx = Fixture::new();
    let h = header(b"volume", EntryType::new(b'V'), 0, 0o644, b"");
    let layer = Layer::new().raw(&h, b"").bytes();
    assert_err!(fx.apply(&layer), UnpackError::BadEntry { entry, reason } if entry == "volume" && reason.contains("'V'"));
    assert!(fx.tree().is_empty());
    fx.assert_outside_untouched();
}
