//! `--rootfs copy` on a file system that clones (issue 11): on XFS the copy
//! from the layer cache clones file data (`FICLONE`) instead of writing it,
//! and still shares no inode with the cache. The test makes an XFS file
//! system on a loop device, puts the store and the copies on it, and
//! asserts:
//! - the clone: the copy of the base fixture (a Debian tree) grows the
//!   file system's used blocks by less than a tenth of its file data, where
//!   the copy from the blobs (which writes every byte) grows them by at
//!   least nine tenths;
//! - the same tree both ways (`hoist tree-digest`);
//! - no inode of the copy is one of the store's;
//! - writing into a copied file leaves the cache as it was (copy on write:
//!   `hoist store verify` is clean, the cached bytes unchanged).

mod support;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{env_or_skip, have_tool, hoist, ok, require_root, run, stdout};

/// A loop-mounted XFS file system, unmounted (and its loop device freed)
/// when dropped.
struct Xfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Xfs {
    fn new() -> Xfs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        fs::File::create(&img).unwrap().set_len(2 << 30).unwrap();
        ok(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img));
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Xfs { _dir: dir, mnt }
    }

    /// Bytes in use, after what was written reached its blocks.
    fn used(&self) -> u64 {
        ok(Command::new("sync").arg("-f").arg(&self.mnt));
        let s = rustix::fs::statvfs(&self.mnt).unwrap();
        (s.f_blocks - s.f_bfree) * s.f_frsize
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg(&self.mnt));
    }
}

/// Regular files under `root`: (inode, size) of each, by path.
fn files(root: &Path, out: &mut Vec<(PathBuf, u64, u64)>) {
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            files(&p, out);
        } else if m.is_file() {
            out.push((p, m.ino(), m.len()));
        }
    }
}

fn tree_digest(store: &Path, dir: &Path) -> String {
    stdout(&ok(hoist(store).arg("tree-digest").arg(dir)))
        .trim()
        .to_string()
}

#[test]
fn the_copy_clones_file_data_on_xfs_and_shares_no_inode() {
    if !require_root("the_copy_clones_file_data_on_xfs", "a loop-mounted XFS")
        || !have_tool("mkfs.xfs")
    {
        return;
    }
    let Some(oci) = env_or_skip("HOIST_FIXTURE_OCI") else {
        return;
    };
    let base = format!("oci:{oci}:base");
    let xfs = Xfs::new();
    let store = xfs.mnt.join("store");
    let materialize = |out: &Path, from_blobs: bool| {
        let mut cmd = hoist(&store);
        cmd.args([
            "--quiet",
            "materialize",
            "--benchmark",
            &base,
            "--rootfs",
            "copy",
        ])
        .arg("--out")
        .arg(out);
        if from_blobs {
            cmd.env("HOIST_COPY_FROM_BLOBS", "1");
        } else {
            cmd.env_remove("HOIST_COPY_FROM_BLOBS");
        }
        ok(&mut cmd);
    };
    // The first copy fills the layer cache (the unpack writes its data).
    materialize(&xfs.mnt.join("fill"), false);

    let before = xfs.used();
    let cloned = xfs.mnt.join("cloned");
    materialize(&cloned, false);
    let after_clone = xfs.used();
    let written = xfs.mnt.join("written");
    materialize(&written, true);
    let after_write = xfs.used();

    let mut copy = Vec::new();
    files(&cloned, &mut copy);
    let data: u64 = copy.iter().map(|(_, _, len)| len).sum();
    assert!(
        data > 100 << 20,
        "the base fixture holds {data} bytes of files"
    );
    let (clone_grew, write_grew) = (after_clone - before, after_write - after_clone);
    eprintln!(
        "{} files, {data} bytes: the copy from the cache took {clone_grew} bytes, from the blobs {write_grew}",
        copy.len()
    );
    assert!(
        clone_grew < data / 10,
        "the copy from the cache took {clone_grew} bytes for {data} bytes of files: not cloned"
    );
    assert!(
        write_grew > data / 10 * 9,
        "the copy from the blobs took {write_grew} bytes for {data} bytes of files"
    );
    assert_eq!(tree_digest(&store, &cloned), tree_digest(&store, &written));

    let mut stored = Vec::new();
    files(&store, &mut stored);
    let stored: HashSet<u64> = stored.iter().map(|(_, ino, _)| *ino).collect();
    let shared: Vec<_> = copy
        .iter()
        .filter(|(_, ino, _)| stored.contains(ino))
        .map(|(p, _, _)| p)
        .collect();
    assert!(
        shared.is_empty(),
        "inodes shared with the store: {shared:?}"
    );

    // Copy on write: a run writing into its rootfs changes nothing cached.
    let bash = cloned.join("usr/bin/bash");
    let original = fs::read(&bash).unwrap();
    fs::write(&bash, b"#!/bin/sh\necho changed by a run\n").unwrap();
    assert_eq!(fs::read(written.join("usr/bin/bash")).unwrap(), original);
    let layers = fs::read_dir(store.join("layers/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect::<Vec<_>>();
    let cached: Vec<_> = layers
        .iter()
        .map(|l| l.join("usr/bin/bash"))
        .filter(|p| p.exists())
        .collect();
    assert!(!cached.is_empty(), "no cached usr/bin/bash in {layers:?}");
    for c in cached {
        assert_eq!(fs::read(&c).unwrap(), original, "{}", c.display());
    }
    ok(hoist(&store).args(["store", "verify"]));
}
