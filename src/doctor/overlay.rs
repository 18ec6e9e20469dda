//! `overlayfs`: whether `--rootfs auto` can mount the cached layers as an
//! overlay. As root the answer is a real mount in the store's directory,
//! as a run makes it. `/proc/filesystems` alone is not the answer: it
//! lists only what is registered, and on a fresh host (Debian 12 before
//! anything mounted an overlay) the `overlay` module is not loaded yet,
//! though the first mount loads it. So what is not listed counts as
//! available when this kernel's module tree holds the module, and the
//! trial mount decides.

use std::path::{Path, PathBuf};

use super::{Check, Status};

const NAME: &str = "overlayfs";
const COST: &str = "every run copies the benchmark's layers into a fresh rootfs (seconds per GB, and the disk space) instead of mounting the cached layers";

/// What was read and tried.
pub(super) struct Facts {
    /// `/proc/filesystems` lists `overlay` (built in, or loaded).
    registered: bool,
    /// Where the module tree of this kernel is (`/lib/modules/RELEASE`).
    modules_dir: PathBuf,
    /// The `overlay` module in it, when it is one (`modules.dep`).
    module: Option<String>,
    /// `/proc/sys/kernel/modules_disabled` is 1: nothing can be loaded.
    modules_disabled: bool,
    store: PathBuf,
    /// The existing directory the store is (or will be) in.
    probe_dir: PathBuf,
    store_on_overlayfs: bool,
    /// The trial mount: tried as root, the store not on overlayfs.
    trial: Option<Result<(), String>>,
    /// `/proc/filesystems` lists `overlay` after the trial, not before:
    /// the kernel loaded the module for it.
    loaded_by_trial: bool,
    /// The kernel's version, `(major, minor)`.
    kernel: Option<(u32, u32)>,
}

/// The first kernel with overlayfs's `lowerdir+`, which hoist mounts
/// layers with (`crate::rootfs::mount`); before it, one `lowerdir=` string.
const LOWERDIR_PLUS: (u32, u32) = (6, 8);

pub(super) fn read(probe_dir: &Path, store: &Path, root: bool) -> Facts {
    let registered = filesystems_has(&super::read("/proc/filesystems"), "overlay");
    let modules_dir = Path::new("/lib/modules").join(super::kernel_release());
    let module =
        module_in_dep(&super::read(modules_dir.join("modules.dep")), "overlay").map(str::to_string);
    let store_on_overlayfs = crate::rootfs::on_overlayfs(probe_dir);
    let trial = (root && !store_on_overlayfs)
        .then(|| test_overlay_mount(probe_dir).map_err(|e| e.to_string()));
    let loaded_by_trial = !registered
        && trial.is_some()
        && filesystems_has(&super::read("/proc/filesystems"), "overlay");
    Facts {
        registered,
        modules_dir,
        module,
        modules_disabled: super::read("/proc/sys/kernel/modules_disabled").trim() == "1",
        store: store.to_path_buf(),
        probe_dir: probe_dir.to_path_buf(),
        store_on_overlayfs,
        trial,
        loaded_by_trial,
        kernel: kernel_version(&super::kernel_release()),
    }
}

/// `(major, minor)` of a kernel release (`6.1.0-50-amd64`).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// How the layers are passed on this kernel, said for a user.
fn how(f: &Facts) -> String {
    match f.kernel {
        Some((major, minor)) if (major, minor) < LOWERDIR_PLUS => format!(
            "one lowerdir= string, as Linux {major}.{minor} needs: an image with more layers than fit in a page (about 40) gets a copy"
        ),
        _ => "lowerdir+, Linux 6.8+".into(),
    }
}

/// Whether `/proc/filesystems` lists `fs`.
fn filesystems_has(text: &str, fs: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

/// The path, in a `modules.dep` text, of the module `name`
/// (`kernel/fs/overlayfs/overlay.ko`, compressed or not): what `modprobe
/// -n name` would load. Module names treat `-` and `_` alike.
fn module_in_dep<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let norm = |s: &str| s.replace('-', "_");
    text.lines().find_map(|l| {
        let path = l.split(':').next()?.trim();
        let file = path.rsplit('/').next()?;
        let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))?;
        (norm(stem) == norm(name)).then_some(path)
    })
}

/// Whether the kernel has overlayfs or can load it, said for a user.
fn availability(f: &Facts) -> Result<String, String> {
    match (&f.module, f.registered, f.modules_disabled) {
        (_, true, _) => Ok("the kernel has overlayfs".into()),
        (Some(m), false, false) => Ok(format!(
            "the kernel can load overlayfs (module {m} in {}, not loaded yet)",
            f.modules_dir.display()
        )),
        (Some(_), false, true) => Err("the kernel has no overlay filesystem loaded (/proc/filesystems) and loads no modules (kernel.modules_disabled is 1)".into()),
        (None, false, _) => Err(format!(
            "the kernel has no overlay filesystem (/proc/filesystems, and no overlay module in {})",
            f.modules_dir.display()
        )),
    }
}

pub(super) fn check(f: &Facts) -> Check {
    if f.store_on_overlayfs {
        return Check::not_ok(
            NAME,
            Status::Missing,
            format!(
                "the store {} is on overlayfs (a container's root?), which cannot hold an overlay upper directory",
                f.store.display()
            ),
            "runs in namespaces mode fail to mount their rootfs; put the store on a volume (docker run -v …:/store) or use --rootfs copy",
        );
    }
    let dir = f.probe_dir.display();
    match (&f.trial, availability(f)) {
        (Some(Ok(())), _) => Check::ok(
            NAME,
            format!(
                "a test overlay mounted in {dir} ({}){}",
                how(f),
                if f.loaded_by_trial {
                    "; the kernel loaded the overlay module for it, as it does for a run"
                } else {
                    ""
                }
            ),
        ),
        (Some(Err(e)), Ok(_)) => Check::not_ok(
            NAME,
            Status::Missing,
            format!("a test overlay in {dir} failed: {e}"),
            COST,
        ),
        (Some(Err(e)), Err(none)) => Check::not_ok(
            NAME,
            Status::Missing,
            format!("{none}; a test overlay in {dir} failed: {e}"),
            COST,
        ),
        (None, Ok(has)) => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("{has}, but hoist mounts it only as root"),
            COST,
        ),
        (None, Err(none)) => Check::not_ok(NAME, Status::Missing, none, COST),
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

    /// Debian 12's modules.dep (Linux 6.1), abridged.
    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\nkernel/fs/overlayfs/overlay.ko:\nkernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko\n";

    #[test]
    fn the_module_is_found_in_modules_dep() {
        assert_eq!(
            module_in_dep(DEP, "overlay"),
            Some("kernel/fs/overlayfs/overlay.ko")
        );
        assert_eq!(
            module_in_dep("kernel/fs/overlayfs/overlay.ko.zst:\n", "overlay"),
            Some("kernel/fs/overlayfs/overlay.ko.zst")
        );
        assert_eq!(
            module_in_dep(DEP, "br-netfilter"),
            Some("kernel/net/bridge/br_netfilter.ko")
        );
        assert_eq!(module_in_dep(DEP, "btrfs"), None);
        assert_eq!(module_in_dep("", "overlay"), None);
        // Not a prefix match.
        assert_eq!(module_in_dep("kernel/fs/x/overlayx.ko:\n", "overlay"), None);
    }

    /// `trial` is `None` unless root.
    fn facts(registered: bool, module: bool, trial: Option<Result<(), &str>>) -> Facts {
        Facts {
            registered,
            modules_dir: PathBuf::from("/lib/modules/6.1.0-50-amd64"),
            module: module.then(|| "kernel/fs/overlayfs/overlay.ko".to_string()),
            modules_disabled: false,
            store: PathBuf::from("/var/cache/hoist"),
            probe_dir: PathBuf::from("/var/cache"),
            store_on_overlayfs: false,
            trial: trial.map(|t| t.map_err(str::to_string)),
            loaded_by_trial: false,
            kernel: Some((6, 18)),
        }
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(kernel_version("5.15"), Some((5, 15)));
        assert_eq!(kernel_version("x"), None);
    }

    #[test]
    fn registered_and_mounted() {
        let c = check(&facts(true, false, Some(Ok(()))));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "a test overlay mounted in /var/cache (lowerdir+, Linux 6.8+)"
        );
    }

    #[test]
    fn an_unloaded_module_is_not_missing_overlayfs() {
        // A fresh Debian 12 host as root: the trial loads the module.
        let mut f = facts(false, true, Some(Ok(())));
        f.loaded_by_trial = true;
        let c = check(&f);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c
            .detail
            .ends_with("the kernel loaded the overlay module for it, as it does for a run"));
        // Linux 6.1 has no lowerdir+: one string instead (Debian 12,
        // scripts/vm).
        let mut f = facts(false, true, Some(Ok(())));
        f.kernel = Some((6, 1));
        let c = check(&f);
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "a test overlay mounted in /var/cache (one lowerdir= string, as Linux 6.1 needs: an image with more layers than fit in a page (about 40) gets a copy)"
        );
        let f = facts(false, true, Some(Err("Invalid argument (os error 22)")));
        let c = check(&f);
        assert_eq!(c.status, Status::Missing);
        assert_eq!(
            c.detail,
            "a test overlay in /var/cache failed: Invalid argument (os error 22)"
        );
        // Not root: nothing is tried, the module is enough to say so.
        let c = check(&facts(false, true, None));
        assert_eq!(c.status, Status::Degraded);
        assert!(c.detail.starts_with("the kernel can load overlayfs (module kernel/fs/overlayfs/overlay.ko in /lib/modules/6.1.0-50-amd64, not loaded yet)"), "{c:?}");
        assert!(c.detail.ends_with("but hoist mounts it only as root"));
    }

    #[test]
    fn no_overlay_anywhere() {
        let c = check(&facts(false, false, None));
        assert_eq!(c.status, Status::Missing);
        assert!(
            c.detail
                .contains("no overlay module in /lib/modules/6.1.0-50-amd64"),
            "{c:?}"
        );
        // As root the trial still runs (a container may lack the host's
        // module tree, and the host's modprobe loads it); when it fails,
        // both are said.
        let c = check(&facts(
            false,
            false,
            Some(Err("No such device (os error 19)")),
        ));
        assert_eq!(c.status, Status::Missing);
        assert!(
            c.detail.starts_with("the kernel has no overlay filesystem"),
            "{c:?}"
        );
        assert!(
            c.detail.ends_with("failed: No such device (os error 19)"),
            "{c:?}"
        );
        let c = check(&facts(false, false, Some(Ok(()))));
        assert_eq!(c.status, Status::Ok);
        let mut f = facts(false, true, None);
        f.modules_disabled = true;
        assert!(check(&f).detail.contains("modules_disabled is 1"));
    }

    #[test]
    fn registered_but_not_root() {
        let c = check(&facts(true, false, None));
        assert_eq!(c.status, Status::Degraded);
        assert_eq!(
            c.detail,
            "the kernel has overlayfs, but hoist mounts it only as root"
        );
    }

    #[test]
    fn a_store_on_overlayfs_cannot_hold_an_upper() {
        let mut f = facts(true, false, None);
        f.store_on_overlayfs = true;
        let c = check(&f);
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.contains("/var/cache/hoist is on overlayfs"));
    }
}
