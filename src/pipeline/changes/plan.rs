//! Which entries go into the changes tar, from two walks of the workdir:
//! pure rules over plain data, so each has a test on an in-memory tree.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Statx};

use super::Skipped;
use crate::unpack::path::{classify, normalize, PathProblem, Role};

/// A path relative to the workdir: `/`-separated names, none empty; empty
/// for the workdir itself. Ordered name by name, so a directory sorts
/// right before its contents (as bytes, `a-b` would fall between `a` and
/// `a/b`, since `-` sorts before `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub(super) struct RelPath(pub(super) Vec<u8>);

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.names().cmp(other.names())
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl RelPath {
    pub(super) fn root() -> RelPath {
        RelPath(Vec::new())
    }

    pub(super) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|n| !n.is_empty())
    }

    pub(super) fn depth(&self) -> usize {
        self.names().count()
    }

    pub(super) fn child(&self, name: &[u8]) -> RelPath {
        let mut p = self.0.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        RelPath(p)
    }

    /// The parent directory and the last name; `None` for the workdir.
    pub(super) fn split(&self) -> Option<(RelPath, &[u8])> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (RelPath(self.0[..i].to_vec()), &self.0[i + 1..]),
            None => (RelPath::root(), &self.0[..]),
        })
    }

    /// `DIR/.wh.NAME`, the whiteout of this path.
    pub(super) fn whiteout(&self) -> Option<RelPath> {
        let (parent, name) = self.split()?;
        Some(parent.child(&[b".wh.", name].concat()))
    }

    pub(super) fn components(&self) -> Vec<Vec<u8>> {
        self.names().map(<[u8]>::to_vec).collect()
    }

    pub(super) fn display_in(&self, workdir: &Path) -> String {
        workdir
            .join(OsStr::from_bytes(&self.0))
            .display()
            .to_string()
    }

    pub(super) fn lossy(&self) -> String {
        match self.is_root() {
            true => ".".to_string(),
            false => String::from_utf8_lossy(&self.0).into_owned(),
        }
    }
}

/// One entry's stat, as compared between the snapshot and the second walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) kind: FileType,
    pub(super) dev: (u32, u32),
    pub(super) ino: u64,
    pub(super) ctime: (i64, u32),
    pub(super) mtime: (i64, u32),
    pub(super) size: u64,
    /// Permission bits with setuid, setgid and sticky.
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) nlink: u32,
}

impl Record {
    pub(super) fn of(st: &Statx) -> Record {
        let raw = u32::from(st.stx_mode);
        Record {
            kind: FileType::from_raw_mode(raw),
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            size: st.stx_size,
            mode: raw & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            nlink: st.stx_nlink,
        }
    }
}

/// Why a directory's contents are not in a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Unlisted {
    /// Its children would be too long or too deep for a layer, so the walk
    /// does not go there (and a hostile depth cannot make it slow).
    TooDeep,
    Failed(String),
}

impl std::fmt::Display for Unlisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlisted::TooDeep => f.write_str("its entries would be nested too deep for a layer"),
            Unlisted::Failed(why) => f.write_str(why),
        }
    }
}

/// Every entry beneath a workdir, and the directories whose contents are
/// unknown.
#[derive(Debug, Default)]
pub(super) struct Tree {
    pub(super) entries: BTreeMap<RelPath, Record>,
    pub(super) unlisted: BTreeMap<RelPath, Unlisted>,
}

impl Tree {
    /// Whether `dir` is a directory whose contents were all read.
    fn listed_dir(&self, dir: &RelPath) -> bool {
        let is_dir = dir.is_root()
            || matches!(self.entries.get(dir), Some(r) if r.kind == FileType::Directory);
        is_dir && !self.unlisted.contains_key(dir)
    }
}

/// One tar entry of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The entry as it is now (new or changed).
    Write(Record),
    /// A whiteout; the plan's key is its own name, `DIR/.wh.NAME`.
    Whiteout,
}

/// The tar's entries, keyed by their names, so a directory comes before
/// what is in it; and what is left out.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) steps: BTreeMap<RelPath, Step>,
    pub(super) skipped: Vec<Skipped>,
    /// Directories left out with everything beneath them.
    dropped: HashSet<RelPath>,
}

/// Compares the two walks (pure: no I/O).
pub(super) fn plan(before: &Tree, now: &Tree) -> Plan {
    let mut plan = Plan::default();
    for (path, record) in &now.entries {
        plan.present(before.entries.get(path), path, record);
    }
    for (dir, why) in &now.unlisted {
        if !plan.dropped.contains(dir) {
            plan.skip(dir, format!("its contents were not compared: {why}"));
        }
    }
    for path in before.entries.keys() {
        if !now.entries.contains_key(path) {
            plan.deleted(now, path);
        }
    }
    plan
}

impl Plan {
    /// An entry of the second walk, and what was at its path before.
    fn present(&mut self, old: Option<&Record>, path: &RelPath, record: &Record) {
        let is_dir = record.kind == FileType::Directory;
        // Beneath a directory left out: reported there, once.
        if matches!(path.split(), Some((p, _)) if self.dropped.contains(&p)) {
            if is_dir {
                self.dropped.insert(path.clone());
            }
            return;
        }
        if let Err(why) = reads_back(path, None) {
            let beneath = if is_dir {
                ", with everything in it"
            } else {
                ""
            };
            self.skip(path, format!("{why}{beneath}"));
            if is_dir {
                self.dropped.insert(path.clone());
            }
            return;
        }
        if let Some(what) = not_carried(record.kind) {
            let why = format!("{what}: only files, directories and symlinks are carried");
            self.skip(path, why);
            if old.is_some_and(|o| o.kind != record.kind) {
                self.whiteout(path);
            }
            return;
        }
        if old != Some(record) {
            self.steps.insert(path.clone(), Step::Write(*record));
        }
    }

    /// An entry of the snapshot that is gone. Whited out only where its
    /// parent is still a directory that was read: a deleted or replaced
    /// directory takes its contents with it.
    fn deleted(&mut self, now: &Tree, path: &RelPath) {
        let Some((parent, _)) = path.split() else {
            return;
        };
        if now.listed_dir(&parent) && !self.dropped.contains(&parent) {
            self.whiteout(path);
        }
    }

    fn skip(&mut self, path: &RelPath, why: impl Into<String>) {
        self.skipped.push(Skipped::new(path, why));
    }

    fn whiteout(&mut self, deleted: &RelPath) {
        let Some(name) = deleted.whiteout() else {
            return;
        };
        match reads_back(&name, Some(deleted)) {
            Ok(()) => {
                self.steps.insert(name, Step::Whiteout);
            }
            Err(why) => self.skip(
                deleted,
                format!("deleted, but no whiteout can say so: {why}"),
            ),
        }
    }
}

/// The kinds of entry a layer of changes does not carry, by name.
fn not_carried(kind: FileType) -> Option<&'static str> {
    match kind {
        FileType::RegularFile | FileType::Directory | FileType::Symlink => None,
        FileType::Fifo => Some("a fifo"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        FileType::Unknown => Some("an entry of unknown type"),
    }
}

/// Whether the unpacker reads the tar name `name` back as that very entry
/// (`whiteout_of: None`) or as the whiteout of `whiteout_of`; if not, why.
/// The unpacker's own rules decide, so the two cannot disagree.
fn reads_back(name: &RelPath, whiteout_of: Option<&RelPath>) -> Result<(), &'static str> {
    let entry = normalize(&name.0).map_err(|p| match p {
        PathProblem::Invalid(reason) => reason,
        PathProblem::Escape => "the path climbs out of the workdir",
    })?;
    match (classify(&entry), whiteout_of) {
        (Ok(Role::Plain), None) => Ok(()),
        (Ok(Role::Whiteout { target }), Some(deleted)) if target.key() == deleted.0 => Ok(()),
        _ => Err("a name starting with .wh. would be read as a whiteout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_sorts_right_before_its_contents() {
        let mut v: Vec<RelPath> = ["ab", "a.b", "a-b", "a/b", "a", "a/b/c", "a/a"]
            .iter()
            .map(|s| RelPath(s.as_bytes().to_vec()))
            .collect();
        v.sort();
        let got: Vec<String> = v.iter().map(RelPath::lossy).collect();
        assert_eq!(got, ["a", "a/a", "a/b", "a/b/c", "a-b", "a.b", "ab"]);
    }

    #[test]
    fn whiteout_names() {
        let p = |s: &str| RelPath(s.as_bytes().to_vec());
        assert_eq!(p("a/b/c").whiteout(), Some(p("a/b/.wh.c")));
        assert_eq!(p("c").whiteout(), Some(p(".wh.c")));
        assert_eq!(RelPath::root().whiteout(), None);
    }

    fn rec(kind: FileType, ino: u64) -> Record {
        Record {
            kind,
            dev: (0, 1),
            ino,
            ctime: (1, 0),
            mtime: (1, 0),
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
        }
    }

    fn tree(entries: &[(&str, FileType, u64)]) -> Tree {
        let entries = entries
            .iter()
            .map(|(p, k, i)| (RelPath(p.as_bytes().to_vec()), rec(*k, *i)))
            .collect();
        Tree {
            entries,
            unlisted: BTreeMap::new(),
        }
    }

    fn steps(p: &Plan) -> Vec<(String, bool)> {
        p.steps
            .iter()
            .map(|(k, s)| (k.lossy(), *s == Step::Whiteout))
            .collect()
    }

    const DIR: FileType = FileType::Directory;
    const REG: FileType = FileType::RegularFile;

    #[test]
    fn plan_unchanged_is_empty() {
        let t = [("d", DIR, 1), ("d/f", REG, 2)];
        let p = plan(&tree(&t), &tree(&t));
        assert!(p.steps.is_empty() && p.skipped.is_empty());
    }

    #[test]
    fn plan_whites_out_a_deleted_tree_once() {
        let before = tree(&[
            ("d", DIR, 1),
            ("d/e", DIR, 2),
            ("d/e/f", REG, 3),
            ("g", REG, 4),
        ]);
        let p = plan(&before, &tree(&[("g", REG, 4)]));
        assert_eq!(steps(&p), [(".wh.d".to_string(), true)]);
    }

    #[test]
    fn plan_type_change_is_a_write_and_nothing_beneath_is_whited_out() {
        let before = tree(&[("d", DIR, 1), ("d/f", REG, 2)]);
        let now = tree(&[("d", FileType::Symlink, 9)]);
        assert_eq!(steps(&plan(&before, &now)), [("d".to_string(), false)]);
    }

    #[test]
    fn plan_recreated_directory_whites_out_the_children_not_recreated() {
        let before = tree(&[("d", DIR, 1), ("d/f", REG, 2), ("d/g", REG, 3)]);
        let now = tree(&[("d", DIR, 7), ("d/f", REG, 8)]);
        let want = [("d", false), ("d/.wh.g", true), ("d/f", false)];
        let want: Vec<_> = want.iter().map(|(p, w)| (p.to_string(), *w)).collect();
        assert_eq!(steps(&plan(&before, &now)), want);
    }

    #[test]
    fn plan_a_fifo_in_place_of_a_file_whites_the_file_out() {
        let before = tree(&[("f", REG, 1), ("p", FileType::Fifo, 2)]);
        let mut now = tree(&[("f", FileType::Fifo, 3), ("p", FileType::Fifo, 2)]);
        now.entries.get_mut(&RelPath(b"p".to_vec())).unwrap().mode = 0o600;
        let p = plan(&before, &now);
        assert_eq!(steps(&p), [(".wh.f".to_string(), true)]);
        let skipped: Vec<_> = p.skipped.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            skipped,
            ["f", "p"],
            "a changed fifo is left out, not whited out"
        );
    }

    #[test]
    fn plan_leaves_out_wh_names_and_everything_beneath_reported_once() {
        let now = tree(&[
            (".wh.d", DIR, 1),
            (".wh.d/e", DIR, 2),
            (".wh.d/e/f", REG, 3),
        ]);
        let p = plan(&Tree::default(), &now);
        assert!(p.steps.is_empty());
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].path, ".wh.d");
    }

    #[test]
    fn plan_does_not_white_out_what_an_unread_directory_may_still_hold() {
        let before = tree(&[("d", DIR, 1), ("d/f", REG, 2)]);
        let mut now = tree(&[("d", DIR, 1)]);
        let d = RelPath(b"d".to_vec());
        now.unlisted
            .insert(d, Unlisted::Failed("cannot list it".into()));
        let p = plan(&before, &now);
        assert!(p.steps.is_empty());
        assert_eq!(p.skipped[0].path, "d");
    }

    #[test]
    fn plan_deleted_name_too_long_for_its_whiteout_is_reported() {
        let long = "n".repeat(253);
        let before = tree(&[(long.as_str(), REG, 1)]);
        let p = plan(&before, &Tree::default());
        assert!(p.steps.is_empty());
        assert!(
            p.skipped[0].why.starts_with("deleted, but"),
            "{:?}",
            p.skipped
        );
    }
}
