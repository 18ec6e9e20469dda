//! `container`: the signs, from what a process can see, that hoist runs
//! in a container (which decides what the other checks mean).

use std::path::Path;

use super::Check;

const NAME: &str = "container";

/// The hints found here.
pub(super) fn read() -> Vec<String> {
    hints(
        Path::new("/.dockerenv").exists(),
        Path::new("/run/.containerenv").exists(),
        &super::read("/proc/1/cgroup"),
        crate::rootfs::on_overlayfs(Path::new("/")),
    )
}

/// The signs of a container in what was seen.
fn hints(
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

pub(super) fn check(hints: &[String]) -> Check {
    if hints.is_empty() {
        Check::ok(NAME, "not inside a container, as far as can be seen")
    } else {
        Check::ok(
            NAME,
            format!("inside a container (hints: {})", hints.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_signs() {
        assert!(hints(false, false, "0::/\n", false).is_empty());
        assert_eq!(
            hints(true, false, "0::/docker/abc\n", true),
            vec![
                "/.dockerenv",
                "/proc/1/cgroup names docker",
                "/ is overlayfs"
            ]
        );
        assert_eq!(
            hints(false, true, "0::/kubepods/x\n", false),
            vec!["/run/.containerenv", "/proc/1/cgroup names kubepods"]
        );
        assert_eq!(
            check(&[]).detail,
            "not inside a container, as far as can be seen"
        );
        assert_eq!(
            check(&["/.dockerenv".into()]).detail,
            "inside a container (hints: /.dockerenv)"
        );
    }
}
