//! `store_disk`: the free space where the store is (or will be).

use std::path::{Path, PathBuf};

use super::{Check, Status};

const NAME: &str = "store_disk";

/// Free space in the store below which runs are likely to fail.
pub const DISK_LOW: u64 = 5 << 30;
/// Free space below which they fail.
pub const DISK_CRITICAL: u64 = 512 << 20;

/// What statvfs said of the store's file system.
struct Space {
    free: u64,
    total: u64,
    read_only: bool,
}

/// What was read.
pub(super) struct Facts {
    store: PathBuf,
    /// The existing directory measured: the store, or its nearest
    /// ancestor.
    probe_dir: PathBuf,
    space: Result<Space, String>,
}

pub(super) fn read(store: &Path, probe_dir: &Path) -> Facts {
    let space = rustix::fs::statvfs(probe_dir)
        .map(|s| Space {
            free: s.f_bavail.saturating_mul(s.f_frsize),
            total: s.f_blocks.saturating_mul(s.f_frsize),
            read_only: s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        })
        .map_err(|e| format!("statvfs {}: {e}", probe_dir.display()));
    Facts {
        store: store.to_path_buf(),
        probe_dir: probe_dir.to_path_buf(),
        space,
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

pub(super) fn check(f: &Facts) -> Check {
    let s = match &f.space {
        Ok(s) => s,
        Err(e) => return Check::not_ok(NAME, Status::Missing, e.clone(), "unknown free space"),
    };
    let where_ = if f.probe_dir == f.store {
        f.store.display().to_string()
    } else {
        format!(
            "{} (not created yet; measured at {})",
            f.store.display(),
            f.probe_dir.display()
        )
    };
    let detail = format!(
        "{where_}: {} free of {}{}",
        human_bytes(s.free),
        human_bytes(s.total),
        if s.read_only { ", read-only" } else { "" }
    );
    let status = if s.read_only {
        Status::Missing
    } else {
        disk_status(s.free)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn facts(store: &str, probe_dir: &str, space: Result<Space, String>) -> Facts {
        Facts {
            store: store.into(),
            probe_dir: probe_dir.into(),
            space,
        }
    }

    #[test]
    fn verdicts() {
        let space = |free, read_only| {
            Ok(Space {
                free,
                total: 100 << 30,
                read_only,
            })
        };
        let c = check(&facts("/s", "/s", space(50 << 30, false)));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(c.detail, "/s: 50.0 GiB free of 100.0 GiB");
        let c = check(&facts("/s/h", "/s", space(1 << 30, false)));
        assert_eq!(c.status, Status::Degraded);
        assert_eq!(
            c.detail,
            "/s/h (not created yet; measured at /s): 1.0 GiB free of 100.0 GiB"
        );
        let c = check(&facts("/s", "/s", space(50 << 30, true)));
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.ends_with(", read-only"));
        let c = check(&facts("/s", "/s", Err("statvfs /s: EIO".into())));
        assert_eq!(c.status, Status::Missing);
        assert_eq!(c.cost.as_deref(), Some("unknown free space"));
    }
}
