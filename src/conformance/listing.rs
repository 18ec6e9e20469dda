//! Comparing two root filesystems as `hoist tree-digest --list` sees them:
//! one line per path (type, mode, owner, size, content hash, link target,
//! device, hardlink group, xattrs), compared path by path so every
//! difference is named. Also what Docker adds to every container and must
//! be left out of the comparison.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::treedigest::Tree;

/// Path (`/etc/passwd`, escaped as the listing escapes it) to the rest of
/// its listing line (`f 0644 0 0 size=… sha256=…`).
pub type Listing = BTreeMap<String, String>;

/// Files Docker's init layer puts into every container whatever the image
/// has there (and bind-mounts over at start); `docker export` shows
/// Docker's empty placeholders. Left out on both sides, with everything
/// under them.
pub const DOCKER_INIT_FILES: &[&str] = &[
    "/.dockerenv",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/dev/console",
];

/// Directories the init layer creates (0755 root) as mount points or as
/// parents of the files above. When the image has one, `docker export`
/// shows the image's own metadata, so it is compared; only when the image
/// lacks it is the line Docker's invention and left out (see
/// tests/rootfs_equality.rs, which checked this on Docker 20.10).
pub const DOCKER_INIT_DIRS: &[&str] = &["/dev", "/dev/pts", "/dev/shm", "/etc", "/proc", "/sys"];

/// Where the combination image keeps the supervisor (docs/pipeline.md); crane
/// mode bind-mounts it instead, so it is not part of the fused tree.
pub const HOIST_DIR: &str = "/.hoist";

/// One path that differs: its line on each side, `None` when absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathDiff {
    pub path: String,
    pub crane: Option<String>,
    pub container: Option<String>,
}

/// A [`Tree`] as a [`Listing`].
pub fn from_tree(tree: &Tree) -> Listing {
    parse(&tree.listing())
}

/// Parse `hoist tree-digest --list` output. Paths are escaped (no spaces),
/// so the path is everything before the first space.
pub fn parse(text: &str) -> Listing {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (path, rest) = l.split_once(' ').unwrap_or((l, ""));
            (
                format!("/{}", path.trim_start_matches('/')),
                rest.to_string(),
            )
        })
        .collect()
}

/// Whether `path` is `prefix` or lies under it.
pub fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

/// The two listings as they are compared: `/.hoist` and Docker's init
/// files left out of both, and Docker's init directories left out of
/// `docker` where the `image` (the hoist side) lacks them.
pub fn for_docker_comparison(image: &Listing, docker: &Listing) -> (Listing, Listing) {
    let ignored = |p: &str| under(p, HOIST_DIR) || DOCKER_INIT_FILES.iter().any(|x| under(p, x));
    let a = image
        .iter()
        .filter(|(p, _)| !ignored(p))
        .map(|(p, l)| (p.clone(), l.clone()))
        .collect();
    // Docker's init directory is the image's own when the image has it.
    let invented = |p: &str| DOCKER_INIT_DIRS.contains(&p) && !image.contains_key(p);
    let b = docker
        .iter()
        .filter(|(p, _)| !ignored(p) && !invented(p))
        .map(|(p, l)| (p.clone(), l.clone()))
        .collect();
    (a, b)
}

/// Every path whose line differs or that only one side has, sorted.
pub fn diff(crane: &Listing, container: &Listing) -> Vec<PathDiff> {
    let paths: BTreeSet<&String> = crane.keys().chain(container.keys()).collect();
    paths
        .into_iter()
        .filter_map(|p| {
            let (a, b) = (crane.get(p), container.get(p));
            (a != b).then(|| PathDiff {
                path: p.clone(),
                crane: a.cloned(),
                container: b.cloned(),
            })
        })
        .collect()
}

/// [`for_docker_comparison`] then [`diff`].
pub fn compare_with_docker(image: &Listing, docker: &Listing) -> Vec<PathDiff> {
    let (a, b) = for_docker_comparison(image, docker);
    diff(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(lines: &[&str]) -> Listing {
        parse(&lines.join("\n"))
    }

    #[test]
    fn parses_tree_digest_lines() {
        let l = listing(&[
            "etc d 0755 0 0",
            "etc/passwd f 0644 0 0 size=3 sha256=ab",
            "a\\x20b l 0777 0 0 -> x",
        ]);
        assert_eq!(l["/etc/passwd"], "f 0644 0 0 size=3 sha256=ab");
        assert_eq!(l["/a\\x20b"], "l 0777 0 0 -> x");
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn from_tree_matches_the_listing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"x").unwrap();
        let tree = crate::treedigest::read_dir_tree(t.path()).unwrap();
        let l = from_tree(&tree);
        assert_eq!(l.keys().collect::<Vec<_>>(), ["/d", "/d/f"]);
        assert!(l["/d/f"].starts_with("f "), "{l:?}");
    }

    #[test]
    fn names_changed_missing_and_extra_paths() {
        let a = listing(&[
            "x f 0644 0 0 size=1 sha256=aa",
            "y d 0755 0 0",
            "z d 0700 0 0",
        ]);
        let b = listing(&[
            "x f 0644 0 0 size=2 sha256=bb",
            "z d 0700 0 0",
            "w d 0755 0 0",
        ]);
        let d = diff(&a, &b);
        assert_eq!(
            d,
            vec![
                PathDiff {
                    path: "/w".into(),
                    crane: None,
                    container: Some("d 0755 0 0".into())
                },
                PathDiff {
                    path: "/x".into(),
                    crane: Some("f 0644 0 0 size=1 sha256=aa".into()),
                    container: Some("f 0644 0 0 size=2 sha256=bb".into())
                },
                PathDiff {
                    path: "/y".into(),
                    crane: Some("d 0755 0 0".into()),
                    container: None
                },
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn docker_init_files_and_hoist_dir_are_ignored_on_both_sides() {
        let image = listing(&[
            "etc d 0755 0 0",
            "etc/hostname f 0644 0 0 size=5 sha256=aa",
            "usr d 0755 0 0",
        ]);
        let docker = listing(&[
            ".dockerenv f 0755 0 0 size=0 sha256=e3",
            ".hoist d 0755 0 0",
            ".hoist/hoist f 0755 0 0 size=9 sha256=cc",
            "etc d 0755 0 0",
            "etc/hostname f 0755 0 0 size=0 sha256=e3",
            "etc/hosts f 0755 0 0 size=0 sha256=e3",
            "etc/mtab l 0777 0 0 -> /proc/mounts",
            "etc/resolv.conf f 0755 0 0 size=0 sha256=e3",
            "usr d 0755 0 0",
        ]);
        assert!(compare_with_docker(&image, &docker).is_empty());
    }

    #[test]
    fn init_dirs_are_ignored_only_when_the_image_lacks_them() {
        let docker = listing(&[
            "dev d 0755 0 0",
            "dev/console f 0755 0 0 size=0 sha256=e3",
            "dev/pts d 0755 0 0",
            "dev/shm d 0755 0 0",
            "proc d 0755 0 0",
            "sys d 0755 0 0",
        ]);
        assert!(compare_with_docker(&Listing::new(), &docker).is_empty());
        // The image has /proc with its own mode: Docker's must match it.
        let image = listing(&["proc d 0555 0 0"]);
        let d = compare_with_docker(&image, &docker);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "/proc");
        assert_eq!(d[0].crane.as_deref(), Some("d 0555 0 0"));
        assert_eq!(d[0].container.as_deref(), Some("d 0755 0 0"));
    }

    #[test]
    fn a_path_merely_sharing_a_prefix_is_compared() {
        assert!(under("/.hoist/hoist", "/.hoist"));
        assert!(!under("/.hoistx", "/.hoist"));
        let image = listing(&[
            "etc d 0755 0 0",
            "etc/hostsfile f 0644 0 0 size=1 sha256=aa",
        ]);
        let docker = listing(&["etc d 0755 0 0"]);
        let d = compare_with_docker(&image, &docker);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "/etc/hostsfile");
    }
}
