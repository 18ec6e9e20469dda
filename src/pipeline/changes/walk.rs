//! Walking a workdir: every entry beneath it, stat'ed without following a
//! symlink, each directory reached from the workdir's handle with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)` (see `unpack::fsops`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use super::at;
use super::plan::{Record, RelPath, Tree, Unlisted};
use crate::unpack::fsops::{self, DirError, Root};
use crate::unpack::path::{MAX_DEPTH, MAX_PATH_BYTES};

fn statx_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Record>> {
    match rfs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => Ok(Some(Record::of(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn statx_fd(fd: BorrowedFd<'_>) -> io::Result<Record> {
    let st = rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    Ok(Record::of(&st))
}

pub(super) fn open_workdir(workdir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rfs::open(workdir, flags, Mode::empty()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: cannot open the workdir: {e}", workdir.display()),
        )
    })
}

/// Lists every entry beneath `root`, reaching each directory from the root
/// handle without following a symlink (see `unpack::fsops`).
pub(super) fn walk(root: BorrowedFd<'_>, workdir: &Path) -> io::Result<Tree> {
    let dirs = Root::new(root);
    let mut tree = Tree::default();
    let mut pending = vec![RelPath::root()];
    while let Some(dir) = pending.pop() {
        let (fd, names) = match list(&dirs, &dir) {
            Ok(listed) => listed,
            Err(why) => {
                tree.unlisted.insert(dir, why);
                continue;
            }
        };
        for name in names {
            let path = dir.child(&name);
            // Gone since the listing: nothing else runs now, and it is not
            // there either way.
            let Some(record) = statx_at(fd.as_fd(), &name).map_err(at(workdir, &path, "stat"))?
            else {
                continue;
            };
            if record.kind == FileType::Directory {
                pending.push(path.clone());
            }
            tree.entries.insert(path, record);
        }
    }
    Ok(tree)
}

/// A handle on `dir` and the names in it, or why they are not known.
fn list(dirs: &Root<'_>, dir: &RelPath) -> Result<(Rc<OwnedFd>, Vec<Vec<u8>>), Unlisted> {
    // A child's path is at least the directory's, a '/' and one byte.
    if dir.0.len() + 2 > MAX_PATH_BYTES || dir.depth() + 1 > MAX_DEPTH {
        return Err(Unlisted::TooDeep);
    }
    let fd = dirs
        .open_dir(&dir.components(), false)
        .map_err(|e| Unlisted::Failed(describe(e)))?;
    let names =
        fsops::list(fd.as_fd()).map_err(|e| Unlisted::Failed(format!("cannot list it: {e}")))?;
    Ok((fd, names))
}

pub(super) fn describe(e: DirError) -> String {
    match e {
        DirError::Missing => "it is gone".into(),
        DirError::Symlink(_) => "a symlink is in the place of a directory on its path".into(),
        DirError::NotDir(_) => "a non-directory is in the place of one on its path".into(),
        DirError::Io(e) => format!("cannot open it: {e}"),
    }
}
