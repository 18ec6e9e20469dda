//! The agent's changes to the task's workdir, carried from the session that
//! ran the agent to the fresh tree the grader runs in (docs/pipeline.md).
//!
//! Grading must see the benchmark's pristine rootfs plus only what the agent
//! did to the workdir (`/testbed`, say): nothing `install.sh` or the agent
//! did elsewhere. So, before anything untrusted runs, the supervisor takes a
//! [`Snapshot`] of the workdir; once every agent process is dead,
//! [`write_changes`] walks it again and writes what differs as an OCI layer
//! tar (image-spec layer.md: changed entries, whiteouts for deletions).
//! The grading session, in a fresh rootfs, hands that tar to
//! [`apply_changes`], which is hoist's own layer unpacker: the tar comes back
//! from the host, so it is untrusted there, and the unpacker already refuses
//! `..`, absolute names and anything that would write through a symlink.
//!
//! Decisions:
//! - An entry changed when any of type, inode, device, ctime, mtime, size,
//!   mode, owner or link count differs from the snapshot. ctime cannot be
//!   set from user space, so a rewrite that restores the mtime is caught.
//!   The walk never follows a symlink and never descends into one.
//! - Only files, directories and symlinks are carried. FIFOs, sockets and
//!   devices are left out and listed in [`Written::skipped`]; so is a name
//!   beginning with `.wh.` (a layer reads it as a whiteout) with everything
//!   beneath it, and a path too long or too deep for the unpacker. When a
//!   left-out entry replaced something of another type, the old entry is
//!   whited out, so the grader does not see what the agent removed.
//! - setuid is dropped everywhere, and setgid on everything but
//!   directories: the grader may run as root, and the agent must not be
//!   able to leave it a privileged program. A directory keeps setgid (it
//!   only decides the group of new entries) and the sticky bit.
//! - Owners are numeric, times are kept (sub-second mtimes through a PAX
//!   record: Python's `.pyc` check and make compare them), no xattrs.
//!   Hardlinked files become independent files.
//! - A deleted directory gets one whiteout, not one per child. A changed
//!   type needs none: the unpacker replaces whatever is at a path.
//! - The first entry is always `./`, the workdir itself, so the tar never
//!   starts with a name the unpacker could take for compression magic (a
//!   file named `BZh91AY`, say).
//!
//! The rules that pick the entries are pure (`plan.rs`); `walk.rs` reads the
//! tree, `write.rs` the files, and writes the tar.

mod plan;
mod walk;
mod write;

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::unpack::{apply_layer, ApplyOptions, Fidelity, OutputMode, UnpackError};
use plan::{plan, RelPath, Step, Tree, Unlisted};
use walk::{open_workdir, statx_fd, walk};
use write::ChangesTar;

/// The media type the tar is applied as: an uncompressed layer.
const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// What a workdir held before anything untrusted ran: for each entry
/// beneath it (relative path), enough to tell whether it changed.
#[derive(Debug, Default)]
pub struct Snapshot {
    tree: Tree,
}

impl Snapshot {
    /// Walk `workdir` without following any symlink. Fails, naming the
    /// path, when a directory cannot be read: a snapshot with holes would
    /// make their contents look new.
    pub fn take(workdir: &Path) -> io::Result<Snapshot> {
        let root = open_workdir(workdir)?;
        let tree = walk(root.as_fd(), workdir)?;
        if let Some((path, Unlisted::Failed(why))) = tree
            .unlisted
            .iter()
            .find(|(_, u)| matches!(u, Unlisted::Failed(_)))
        {
            return Err(io::Error::other(format!(
                "{}: cannot read the directory: {why}",
                path.display_in(workdir)
            )));
        }
        Ok(Snapshot { tree })
    }

    /// The number of entries beneath the workdir.
    pub fn len(&self) -> usize {
        self.tree.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.entries.is_empty()
    }
}

/// What went into the tar.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// Entries written (new or changed), the workdir's own `./` not counted.
    pub changed: u64,
    /// Whiteouts written.
    pub deleted: u64,
    /// Bytes of the tar, end-of-archive blocks included.
    pub bytes: u64,
    /// Entries left out, with why (fifo, socket, device, a name starting
    /// with `.wh.`, unreadable, ...).
    pub skipped: Vec<Skipped>,
}

/// An entry [`write_changes`] left out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Relative to the workdir; bytes that are not UTF-8 shown as U+FFFD.
    pub path: String,
    pub why: String,
}

/// What applying the changes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Tar entries, `./` and whiteouts included.
    pub entries: u64,
    pub whiteouts: u64,
    /// What could not be reproduced (owners, when not root).
    pub not_reproduced: Fidelity,
}

/// Walk `workdir` again (after every agent process has ended) and write to
/// `out` an uncompressed tar of what differs from `before`, relative to the
/// workdir. Errors name the path; after one, what reached `out` is not a
/// valid changes tar and must be discarded.
pub fn write_changes(before: &Snapshot, workdir: &Path, out: impl Write) -> io::Result<Written> {
    let root = open_workdir(workdir)?;
    let now = walk(root.as_fd(), workdir)?;
    let root_record = statx_fd(root.as_fd()).map_err(at(workdir, &RelPath::root(), "stat"))?;
    let plan = plan(&before.tree, &now);
    let mut tar = ChangesTar::new(out, root.as_fd(), workdir);
    tar.directory(&RelPath::root(), &root_record)?;
    let mut written = Written {
        skipped: plan.skipped,
        ..Written::default()
    };
    for (path, step) in &plan.steps {
        match step {
            Step::Whiteout => {
                tar.whiteout(path)?;
                written.deleted += 1;
            }
            Step::Write(record) => match tar.entry(path, record)? {
                None => written.changed += 1,
                Some(why) => written.skipped.push(Skipped::new(path, why)),
            },
        }
    }
    written.bytes = tar.finish()?;
    Ok(written)
}

/// Apply a tar written by [`write_changes`] (untrusted bytes) beneath the
/// directory `workdir` of a fresh tree, with hoist's layer unpacker.
pub fn apply_changes(tar: impl Read, workdir: &Path) -> Result<Applied, UnpackError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rfs::open(workdir, flags, Mode::empty())
        .map_err(|e| UnpackError::io(&workdir.display().to_string(), "open the workdir", e))?;
    let opts = ApplyOptions {
        mode: OutputMode::Tree,
        ..ApplyOptions::default()
    };
    let stats = apply_layer(tar, MEDIA_TYPE, &dir, &opts)?;
    Ok(Applied {
        entries: stats.entries,
        whiteouts: stats.whiteouts,
        not_reproduced: stats.not_reproduced,
    })
}

impl Skipped {
    fn new(path: &RelPath, why: impl Into<String>) -> Skipped {
        Skipped {
            path: path.lossy(),
            why: why.into(),
        }
    }
}

/// An io::Error that names the path and what was being done.
fn at<'a>(
    workdir: &'a Path,
    path: &'a RelPath,
    op: &'a str,
) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{}: {op}: {e}", path.display_in(workdir)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::fs::File;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rustix::fs::{AtFlags, FileType};
    use tar::{Builder, EntryType};

    use super::write::{append_raw, blank, DIR_MODE_KEPT, FILE_MODE_KEPT};

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// File times come from a coarse clock (one tick, up to 10 ms): a
    /// change made in the same tick as the snapshot could keep the ctime.
    /// The agent runs for minutes, a test for microseconds.
    fn settle() {
        std::thread::sleep(Duration::from_millis(30));
    }

    fn os(bytes: &[u8]) -> &OsStr {
        OsStr::from_bytes(bytes)
    }

    /// `x/work` (the agent's workdir, A), `y/work` (the fresh tree, B), and
    /// things outside both that a hostile tar would aim at.
    struct Case {
        tmp: tempfile::TempDir,
    }

    impl Case {
        fn new() -> Case {
            let c = Case {
                tmp: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir_all(c.a()).unwrap();
            std::fs::create_dir_all(c.tmp.path().join("y")).unwrap();
            std::fs::write(c.sentinel(), b"sentinel").unwrap();
            std::fs::create_dir(c.outside_dir()).unwrap();
            c
        }
        fn a(&self) -> PathBuf {
            self.tmp.path().join("x/work")
        }
        fn b(&self) -> PathBuf {
            self.tmp.path().join("y/work")
        }
        /// What `../../outside` from either workdir's top names.
        fn sentinel(&self) -> PathBuf {
            self.tmp.path().join("outside")
        }
        fn outside_dir(&self) -> PathBuf {
            self.tmp.path().join("outside_dir")
        }
        fn at(&self, rel: &str) -> PathBuf {
            self.a().join(rel)
        }
        fn write(&self, rel: &str, content: &[u8]) {
            let p = self.at(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        /// B becomes a copy of A as it is now (the pristine tree).
        fn pristine_copy(&self) {
            copy_tree(&self.a(), &self.b());
        }
        fn changes(&self, snap: &Snapshot) -> (Vec<u8>, Written) {
            let mut tar = Vec::new();
            let w = write_changes(snap, &self.a(), &mut tar).unwrap();
            assert_eq!(w.bytes, tar.len() as u64);
            (tar, w)
        }
        fn outside_untouched(&self) {
            assert_eq!(std::fs::read(self.sentinel()).unwrap(), b"sentinel");
            let left: Vec<_> = std::fs::read_dir(self.outside_dir()).unwrap().collect();
            assert!(left.is_empty(), "written outside: {left:?}");
        }
    }

    fn set_mtime(p: &Path, t: SystemTime) {
        let f = File::options().write(true).open(p).unwrap();
        f.set_times(std::fs::FileTimes::new().set_modified(t))
            .unwrap();
    }

    /// A copy with types, contents, modes, owners, link targets and times.
    fn copy_tree(src: &Path, dst: &Path) {
        let meta = std::fs::symlink_metadata(src).unwrap();
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(dst).unwrap();
            for e in std::fs::read_dir(src).unwrap() {
                let e = e.unwrap();
                copy_tree(&e.path(), &dst.join(e.file_name()));
            }
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(src).unwrap(), dst).unwrap();
        } else {
            std::fs::copy(src, dst).unwrap();
        }
        if is_root() {
            std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).unwrap();
        }
        if !ft.is_symlink() {
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode())).unwrap();
        }
        let ts = |s, n| rfs::Timespec {
            tv_sec: s,
            tv_nsec: n as _,
        };
        let times = rfs::Timestamps {
            last_access: ts(meta.atime(), meta.atime_nsec()),
            last_modification: ts(meta.mtime(), meta.mtime_nsec()),
        };
        rfs::utimensat(rfs::CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    /// What the grader could tell apart, per path. Directory times are
    /// left out: an unchanged directory holding a rewritten file has a new
    /// mtime in B (the unpacker replaces the file), which no one reads.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        kind: &'static str,
        mode: u32,
        owner: (u32, u32),
        content: Vec<u8>,
        mtime: Option<(i64, i64)>,
    }

    fn seen(dir: &Path, agent_side: bool) -> BTreeMap<Vec<u8>, Seen> {
        let mut out = BTreeMap::new();
        seen_into(dir, b"", agent_side, &mut out);
        out
    }

    fn seen_into(p: &Path, rel: &[u8], agent_side: bool, out: &mut BTreeMap<Vec<u8>, Seen>) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let ft = m.file_type();
        let mut mode = m.mode() & 0o7777;
        let (kind, content, mtime) = if ft.is_dir() {
            mode &= if agent_side { DIR_MODE_KEPT } else { 0o7777 };
            ("dir", Vec::new(), None)
        } else if ft.is_symlink() {
            let target = std::fs::read_link(p).unwrap();
            mode = 0;
            let t = Some((m.mtime(), m.mtime_nsec()));
            ("symlink", target.as_os_str().as_bytes().to_vec(), t)
        } else {
            mode &= if agent_side { FILE_MODE_KEPT } else { 0o7777 };
            let t = Some((m.mtime(), m.mtime_nsec()));
            ("file", std::fs::read(p).unwrap(), t)
        };
        let s = Seen {
            kind,
            mode,
            owner: (m.uid(), m.gid()),
            content,
            mtime,
        };
        out.insert(rel.to_vec(), s);
        if ft.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                let child = RelPath(rel.to_vec()).child(e.file_name().as_bytes()).0;
                seen_into(&e.path(), &child, agent_side, out);
            }
        }
    }

    /// Names, types and link targets of a tar, in order.
    fn listing(tar: &[u8]) -> Vec<(String, EntryType, Option<Vec<u8>>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                (name, e.header().entry_type(), link)
            })
            .collect()
    }

    fn names(tar: &[u8]) -> Vec<String> {
        listing(tar).into_iter().map(|(n, _, _)| n).collect()
    }

    fn apply(c: &Case, tar: &[u8]) -> Applied {
        apply_changes(tar, &c.b()).unwrap()
    }

    // ---- against the real file system ------------------------------------

    #[test]
    fn nothing_changed_is_the_workdir_alone() {
        let c = Case::new();
        c.write("src/a.py", b"print(1)\n");
        c.write("README", b"hi\n");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        assert_eq!(snap.len(), 3);
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./"]);
        assert_eq!((w.changed, w.deleted), (0, 0));
        assert!(w.skipped.is_empty());
        assert_eq!(apply(&c, &tar).entries, 1);
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
    }

    #[test]
    fn same_size_rewrite_with_the_mtime_put_back_is_caught_by_ctime() {
        let c = Case::new();
        c.write("f.py", b"hello");
        let then = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        set_mtime(&c.at("f.py"), then);
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        std::fs::write(c.at("f.py"), b"HELLO").unwrap();
        set_mtime(&c.at("f.py"), then);
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", "f.py"]);
        assert_eq!(w.changed, 1);
        apply(&c, &tar);
        assert_eq!(std::fs::read(c.b().join("f.py")).unwrap(), b"HELLO");
        let m = std::fs::metadata(c.b().join("f.py")).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    }

    #[test]
    fn new_file_in_new_nested_directories() {
        let c = Case::new();
        c.write("keep", b"k");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        c.write("new/deeper/f.py", b"x = 1\n");
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", "new", "new/deeper", "new/deeper/f.py"]);
        assert_eq!(w.changed, 3);
        apply(&c, &tar);
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
    }

    #[test]
    fn deleted_file_and_deleted_tree_get_one_whiteout_each() {
        let c = Case::new();
        c.write("gone.txt", b"g");
        c.write("old/a/b/c.txt", b"c");
        c.write("old/d.txt", b"d");
        c.write("keep", b"k");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        std::fs::remove_file(c.at("gone.txt")).unwrap();
        std::fs::remove_dir_all(c.at("old")).unwrap();
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", ".wh.gone.txt", ".wh.old"]);
        assert_eq!((w.changed, w.deleted), (0, 2));
        let applied = apply(&c, &tar);
        assert_eq!((applied.entries, applied.whiteouts), (3, 2));
        assert!(!c.b().join("gone.txt").exists() && !c.b().join("old").exists());
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
    }

    #[test]
    fn type_changes_replace_the_old_entry() {
        let c = Case::new();
        c.write("to_dir", b"was a file");
        c.write("to_link/inner/x", b"was in a dir");
        c.write("src/m.py", b"m");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        std::fs::remove_file(c.at("to_dir")).unwrap();
        c.write("to_dir/now.txt", b"in a dir now");
        std::fs::remove_dir_all(c.at("to_link")).unwrap();
        std::os::unix::fs::symlink("src", c.at("to_link")).unwrap();
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", "to_dir", "to_dir/now.txt", "to_link"]);
        assert_eq!(w.deleted, 0, "the unpacker replaces; no whiteout needed");
        apply(&c, &tar);
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
    }

    #[test]
    fn symlinks_out_are_carried_as_links_and_never_followed() {
        let c = Case::new();
        c.write("keep", b"k");
        c.pristine_copy();
        let passwd = std::fs::read("/etc/passwd").ok();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        std::os::unix::fs::symlink("/etc/passwd", c.at("passwd")).unwrap();
        std::os::unix::fs::symlink("../../outside", c.at("escape")).unwrap();
        std::os::unix::fs::symlink("../../outside_dir", c.at("escape_dir")).unwrap();
        let (tar, _) = c.changes(&snap);
        let links: Vec<_> = listing(&tar)
            .into_iter()
            .filter(|(_, t, _)| *t == EntryType::Symlink)
            .map(|(n, _, l)| (n, l.unwrap()))
            .collect();
        assert_eq!(
            links,
            [
                ("escape".to_string(), b"../../outside".to_vec()),
                ("escape_dir".to_string(), b"../../outside_dir".to_vec()),
                ("passwd".to_string(), b"/etc/passwd".to_vec()),
            ]
        );
        apply(&c, &tar);
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
        c.outside_untouched();
        assert_eq!(std::fs::read("/etc/passwd").ok(), passwd);
    }

    /// A tar entry as [`append_raw`] writes it: name, type, link target.
    type RawEntry<'a> = (&'a [u8], EntryType, Option<&'a [u8]>);

    /// A tar of empty entries with these names, as bytes, unchecked.
    fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let h = blank(*kind, 0o644, 0);
            append_raw(&mut b, h, name, *link, (0, 0), io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A hostile tar in session 2: an entry through a symlink to outside,
    /// or climbing out with `..`. The unpacker refuses both.
    #[test]
    fn a_hostile_tar_cannot_write_outside_the_workdir() {
        let c = Case::new();
        std::fs::create_dir_all(c.b()).unwrap();
        let outside = c.outside_dir();
        let through: &[RawEntry] = &[
            (b"./", EntryType::Directory, None),
            (
                b"esc",
                EntryType::Symlink,
                Some(outside.as_os_str().as_bytes()),
            ),
            (b"esc/planted", EntryType::Regular, None),
        ];
        let climb: &[RawEntry] = &[
            (b"./", EntryType::Directory, None),
            (b"../planted", EntryType::Regular, None),
        ];
        for (entries, want) in [(through, "symlink"), (climb, "escapes")] {
            let tar = raw_tar(entries);
            let e = apply_changes(&tar[..], &c.b()).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            c.outside_untouched();
            assert!(!c.tmp.path().join("y/planted").exists());
        }
    }

    #[test]
    fn fifos_and_sockets_are_left_out_without_blocking() {
        let c = Case::new();
        c.write("was_file", b"f");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        let fifo = |p: PathBuf| {
            rfs::mknodat(rfs::CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap()
        };
        fifo(c.at("pipe"));
        std::fs::remove_file(c.at("was_file")).unwrap();
        fifo(c.at("was_file"));
        let _sock = std::os::unix::net::UnixListener::bind(c.at("sock")).unwrap();
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", ".wh.was_file"]);
        let skipped: Vec<_> = w
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), &s.why[..6]))
            .collect();
        assert_eq!(
            skipped,
            [
                ("pipe", "a fifo"),
                ("sock", "a sock"),
                ("was_file", "a fifo")
            ]
        );
        apply(&c, &tar);
        assert!(std::fs::symlink_metadata(c.b().join("was_file")).is_err());
    }

    #[test]
    fn device_nodes_are_left_out() {
        let c = Case::new();
        let snap = Snapshot::take(&c.a()).unwrap();
        let made = rfs::mknodat(
            rfs::CWD,
            c.at("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rfs::makedev(1, 3),
        );
        if let Err(e) = made {
            crate::errln!("SKIPPED: mknod of a device node: {e} (needs root with CAP_MKNOD)");
            return;
        }
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./"]);
        assert_eq!(w.skipped[0].path, "null");
    }

    #[test]
    fn whiteout_names_are_left_out() {
        let c = Case::new();
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        c.write(".wh.x", b"not a whiteout");
        c.write(".wh.d/inner/f", b"f");
        c.write("ok", b"ok");
        let (tar, w) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", "ok"]);
        let skipped: Vec<_> = w.skipped.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(skipped, [".wh.d", ".wh.x"]);
        apply(&c, &tar);
        assert!(c.b().join("ok").exists() && !c.b().join(".wh.x").exists());
    }

    #[test]
    fn setuid_and_setgid_are_dropped_from_files() {
        let c = Case::new();
        c.write("tool", b"#!/bin/sh\n");
        c.write("dir/f", b"f");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        let chmod = |p: &str, m| {
            std::fs::set_permissions(c.at(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        chmod("tool", 0o6755);
        chmod("dir", 0o3775);
        let (tar, _) = c.changes(&snap);
        apply(&c, &tar);
        let mode = |p: &str| std::fs::metadata(c.b().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tool"), 0o755);
        assert_eq!(mode("dir"), 0o3775, "a directory keeps setgid and sticky");
    }

    #[test]
    fn long_paths_long_targets_and_names_that_are_not_utf8() {
        let c = Case::new();
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        let long = format!("{0}/{0}/{0}/file.py", "d".repeat(90));
        assert!(long.len() > 200);
        c.write(&long, b"deep");
        std::os::unix::fs::symlink("t".repeat(150), c.at("longlink")).unwrap();
        std::fs::write(c.a().join(os(b"caf\xe9")), b"latin-1").unwrap();
        // Long and not UTF-8 from its first byte: the tar crate's own path
        // setter fails on this one.
        let mut odd = b"\xff".to_vec();
        odd.extend_from_slice("o".repeat(120).as_bytes());
        std::fs::create_dir(c.a().join(os(&odd))).unwrap();
        std::fs::write(c.a().join(os(&odd)).join("f"), b"odd").unwrap();
        let (tar, w) = c.changes(&snap);
        assert!(w.skipped.is_empty(), "{:?}", w.skipped);
        assert!(names(&tar).contains(&long));
        apply(&c, &tar);
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
    }

    #[test]
    fn a_top_level_name_like_compression_magic_still_applies() {
        let c = Case::new();
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        c.write("BZh91AY", b"not bzip2");
        let (tar, _) = c.changes(&snap);
        assert_eq!(names(&tar), ["./", "BZh91AY"], "the workdir comes first");
        // Its header, or the PAX record of its mtime (nameless: zeros).
        assert!(tar.starts_with(b"./\0") || tar.starts_with(&[0; 100]));
        apply(&c, &tar);
        assert_eq!(std::fs::read(c.b().join("BZh91AY")).unwrap(), b"not bzip2");
        // Why `./` comes first: a tar starting with that name is refused.
        let tar = raw_tar(&[(b"BZh91AY", EntryType::Regular, None)]);
        let e = apply_changes(&tar[..], &c.b()).unwrap_err();
        assert!(matches!(e, UnpackError::CompressionMismatch { .. }), "{e}");
    }

    #[test]
    fn hardlinks_become_independent_files() {
        let c = Case::new();
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        c.write("h1", b"shared");
        std::fs::hard_link(c.at("h1"), c.at("h2")).unwrap();
        let (tar, _) = c.changes(&snap);
        let kinds: Vec<_> = listing(&tar).into_iter().map(|(_, t, _)| t).collect();
        assert_eq!(
            kinds,
            [EntryType::Directory, EntryType::Regular, EntryType::Regular]
        );
        apply(&c, &tar);
        let m1 = std::fs::metadata(c.b().join("h1")).unwrap();
        let m2 = std::fs::metadata(c.b().join("h2")).unwrap();
        assert_ne!(m1.ino(), m2.ino());
        assert_eq!(std::fs::read(c.b().join("h2")).unwrap(), b"shared");
    }

    #[test]
    fn owners_are_carried() {
        if !is_root() {
            crate::errln!("SKIPPED: chown to uid 1000 needs root");
            return;
        }
        let c = Case::new();
        c.write("src/m.py", b"m");
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        c.write("src/new/n.py", b"n");
        for p in ["src/m.py", "src/new", "src/new/n.py"] {
            std::os::unix::fs::lchown(c.at(p), Some(1000), Some(1000)).unwrap();
        }
        std::os::unix::fs::symlink("m.py", c.at("src/l")).unwrap();
        std::os::unix::fs::lchown(c.at("src/l"), Some(1000), Some(1001)).unwrap();
        let (tar, _) = c.changes(&snap);
        let applied = apply(&c, &tar);
        assert!(applied.not_reproduced.is_exact());
        let owner = |p: &str| {
            let m = std::fs::symlink_metadata(c.b().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("src/m.py"), (1000, 1000));
        assert_eq!(owner("src/l"), (1000, 1001));
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
    }

    #[test]
    fn round_trip_of_a_mix_of_changes() {
        let c = Case::new();
        c.write("README", b"readme\n");
        c.write("src/lib.py", b"def f(): pass\n");
        c.write("src/pkg/mod.py", b"x = 1\n");
        c.write("src/pkg/data.bin", &[0u8, 1, 2, 255]);
        c.write("docs/a.md", b"a");
        c.write("old/nested/deep.txt", b"deep");
        c.write("gone.txt", b"gone");
        c.write("becomes_dir", b"file");
        c.write("becomes_link/child", b"child");
        c.write("tool", b"#!/bin/sh\n");
        std::os::unix::fs::symlink("src", c.at("link_same")).unwrap();
        c.pristine_copy();
        let snap = Snapshot::take(&c.a()).unwrap();
        settle();
        let mut f = File::options()
            .append(true)
            .open(c.at("src/lib.py"))
            .unwrap();
        f.write_all(b"def g(): pass\n").unwrap();
        drop(f);
        c.write("src/new/deeper/f.py", b"new");
        set_mtime(
            &c.at("src/new/deeper/f.py"),
            UNIX_EPOCH + Duration::new(1_000, 1),
        );
        std::fs::remove_file(c.at("gone.txt")).unwrap();
        std::fs::remove_dir_all(c.at("old")).unwrap();
        std::fs::remove_file(c.at("becomes_dir")).unwrap();
        c.write("becomes_dir/inside", b"inside");
        std::fs::remove_dir_all(c.at("becomes_link")).unwrap();
        std::os::unix::fs::symlink("docs", c.at("becomes_link")).unwrap();
        std::fs::set_permissions(c.at("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::set_permissions(c.at("docs"), std::fs::Permissions::from_mode(0o2775)).unwrap();
        std::fs::remove_file(c.at("src/pkg/data.bin")).unwrap();
        c.write("src/pkg/data.bin", &[9u8; 4]);
        std::os::unix::fs::symlink("../../outside", c.at("src/escape")).unwrap();
        c.write("BZh91AY", b"b");
        std::fs::write(c.a().join(os(b"\xe9t\xe9")), b"summer").unwrap();
        if is_root() {
            std::os::unix::fs::lchown(c.at("src/pkg/mod.py"), Some(1000), Some(1000)).unwrap();
        }
        let (tar, w) = c.changes(&snap);
        assert!(w.skipped.is_empty(), "{:?}", w.skipped);
        assert_eq!(w.deleted, 2);
        apply(&c, &tar);
        assert_eq!(seen(&c.b(), false), seen(&c.a(), true));
        c.outside_untouched();
    }

    #[test]
    fn a_symlinked_workdir_is_refused_naming_it() {
        let c = Case::new();
        let link = c.tmp.path().join("link");
        std::os::unix::fs::symlink(c.a(), &link).unwrap();
        let e = Snapshot::take(&link).unwrap_err();
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        let e = apply_changes(&b""[..], &link).unwrap_err();
        assert!(e.to_string().contains("link"), "{e}");
    }
}
