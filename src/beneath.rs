//! Directories beneath a root that nothing in the tree can redirect: every
//! component resolved inside the root, no symlink (nor magic link)
//! followed, `..` never leaving it. The one primitive unpacking, rootfs,
//! the sandbox stages, the install jail and the mounts of `confine` share.
//!
//! One `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` opens a whole path (cap-std's `open_impl.rs`
//! takes the same approach); its EAGAIN, a concurrent rename racing the
//! lookup, is retried as openat2(2) asks. Where openat2 is refused
//! (kernels before 5.6, seccomp profiles that predate it) a walk of one
//! `openat(O_NOFOLLOW)` per component is just as strict, at a syscall per
//! component. The walk also finds which component is wrong, and makes the
//! missing ones.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a directory could not be opened.
#[derive(Debug)]
pub enum DirError {
    /// A component does not exist (only when not creating).
    Missing,
    /// Component `i` is a symbolic link.
    Symlink(usize),
    /// Component `i` exists and is not a directory.
    NotDir(usize),
    Io(io::Error),
}

/// What the handle is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// An `O_PATH` handle: enough for `*at` calls, mounts and fd paths, and
    /// it needs no permission on the directory itself (an unprivileged
    /// unpack meets image directories of mode 0500 or less).
    Path,
    /// A readable handle, for `fchmod`, `fchown` and listing.
    Read,
}

/// Mode and owner of the directories made on the way: Docker's
/// `MkdirAll(parent, 0755)` as root: a missing `/opt` is made 0755 root
/// (docs/images.md).
const MADE_DIR_MODE: u32 = 0o755;

/// How often openat2's EAGAIN is retried before it is reported.
const EAGAIN_RETRIES: usize = 16;

/// False once openat2 turned out to be refused in this process; the walk
/// is used from then on.
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Open (creating as needed, 0755) the directory `rel` beneath `root`,
/// readable, refusing any symlink on the way: image paths are resolved
/// inside the rootfs or refused, never followed out of it.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    open_dir(root, &comps, true, Access::Read).map_err(|e| match e {
        DirError::Symlink(i) | DirError::NotDir(i) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "/{rel}: {:?} is a symlink or not a directory in the image",
                comps[i]
            ),
        ),
        DirError::Missing => io::Error::new(
            io::ErrorKind::NotFound,
            format!("/{rel}: removed while it was being made"),
        ),
        DirError::Io(e) => e,
    })
}

/// Open the directory at `comps` (plain names, none `.` or `..` or
/// holding `/`) beneath `root`, making missing components (0755) when
/// `create` is set.
pub fn open_dir(
    root: BorrowedFd<'_>,
    comps: &[impl AsRef<[u8]>],
    create: bool,
    access: Access,
) -> Result<OwnedFd, DirError> {
    open_dir_via(root, comps, create, access, true)
}

/// Open the subdirectory `name` of `dir` without following a symlink: a
/// symlink is `ELOOP`, a non-directory `ENOTDIR`, whichever way it is
/// opened.
pub fn child_dir(dir: BorrowedFd<'_>, name: &[u8], access: Access) -> Result<OwnedFd, Errno> {
    child_dir_via(dir, name, access, true)
}

/// Open the file `name` (a plain name) in `dir` with `flags` (and `mode`,
/// when they create it), never following a link: a symlink is `ELOOP`.
/// For a file to read, to write or to mount on; directories are
/// [`open_dir`]'s.
pub fn open_file(
    dir: BorrowedFd<'_>,
    name: impl AsRef<[u8]>,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    open_file_via(dir, name.as_ref(), flags, mode, true)
}

fn open_file_via(
    dir: BorrowedFd<'_>,
    name: &[u8],
    flags: OFlags,
    mode: Mode,
    openat2: bool,
) -> Result<OwnedFd, Errno> {
    if !is_plain(name) {
        return Err(Errno::INVAL);
    }
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if openat2 && OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match openat2_at(dir, name, flags, mode, how) {
            Err(Errno::NOSYS) => {}
            r => return r,
        }
    }
    // One plain name: O_NOFOLLOW is all openat2 would add.
    rfs::openat(dir, name, flags, mode)
}

/// [`open_dir`]; with `openat2` false (for tests), by the walk alone.
fn open_dir_via(
    root: BorrowedFd<'_>,
    comps: &[impl AsRef<[u8]>],
    create: bool,
    access: Access,
    openat2: bool,
) -> Result<OwnedFd, DirError> {
    if let Some(bad) = comps.iter().map(AsRef::as_ref).find(|c| !is_plain(c)) {
        return Err(DirError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a plain name: the path climbs or is not normal",
                String::from_utf8_lossy(bad)
            ),
        )));
    }
    if openat2 && OPENAT2.load(Ordering::Relaxed) {
        let path = comps
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(&b'/');
        let path: &[u8] = if path.is_empty() { b"." } else { &path };
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // Any failure: the walk says which component, or makes it.
        if let Ok(fd) = openat2_dir(root, path, flags(access), how) {
            return Ok(fd);
        }
    }
    walk(root, comps, create, access, openat2)
}

/// A component a path may hold: not empty, `.` or `..`, and without `/`
/// or NUL.
fn is_plain(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// The open flags for `access`. Not `O_NOFOLLOW`: openat2's
/// `RESOLVE_NO_SYMLINKS` refuses a final symlink with ELOOP, where
/// `O_PATH|O_NOFOLLOW` would open the link and fail with ENOTDIR; the walk
/// adds it.
fn flags(access: Access) -> OFlags {
    let base = OFlags::DIRECTORY | OFlags::CLOEXEC;
    match access {
        Access::Path => base | OFlags::PATH,
        Access::Read => base | OFlags::RDONLY,
    }
}

/// openat2 of a directory (see [`openat2_at`]).
fn openat2_dir(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    how: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    openat2_at(dir, path, flags, Mode::empty(), how)
}

/// openat2 with EAGAIN retried; `Err(NOSYS)` when openat2 cannot be used
/// here, which it then never is again in this process.
fn openat2_at(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
    how: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    for _ in 0..EAGAIN_RETRIES {
        match rfs::openat2(dir, path, flags, mode, how) {
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS) | Err(Errno::PERM) => {
                OPENAT2.store(false, Ordering::Relaxed);
                return Err(Errno::NOSYS);
            }
            r => return r,
        }
    }
    Err(Errno::AGAIN)
}

/// Component by component from `root`: finds which component is wrong,
/// and makes missing ones when `create` is set.
fn walk(
    root: BorrowedFd<'_>,
    comps: &[impl AsRef<[u8]>],
    create: bool,
    access: Access,
    openat2: bool,
) -> Result<OwnedFd, DirError> {
    let access_of = |i: usize| match i + 1 == comps.len() {
        true => access,
        false => Access::Path,
    };
    let first = if comps.is_empty() {
        access
    } else {
        Access::Path
    };
    let mut cur =
        rfs::openat(root, ".", flags(first), Mode::empty()).map_err(|e| DirError::Io(e.into()))?;
    for (i, name) in comps.iter().map(AsRef::as_ref).enumerate() {
        cur = match child_dir_via(cur.as_fd(), name, access_of(i), openat2) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                make_dir(cur.as_fd(), name, access_of(i), openat2).map_err(|e| classify(e, i))?
            }
            Err(e) => return Err(classify(e, i)),
        };
    }
    Ok(cur)
}

fn child_dir_via(
    dir: BorrowedFd<'_>,
    name: &[u8],
    access: Access,
    openat2: bool,
) -> Result<OwnedFd, Errno> {
    if openat2 && OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match openat2_dir(dir, name, flags(access), how) {
            Err(Errno::NOSYS) => {}
            r => return r,
        }
    }
    if !is_plain(name) {
        return Err(Errno::INVAL);
    }
    match rfs::openat(dir, name, flags(access) | OFlags::NOFOLLOW, Mode::empty()) {
        // O_NOFOLLOW|O_DIRECTORY on a symlink fails with ENOTDIR (O_PATH)
        // or ELOOP; say ELOOP as openat2 does, so both ways report the
        // same thing.
        Err(Errno::NOTDIR) if is_symlink(dir, name) => Err(Errno::LOOP),
        r => r,
    }
}

/// Make the directory `name` in `dir` (0755 whatever the umask) and open
/// it; one another process made meanwhile is opened as it is.
fn make_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    access: Access,
    openat2: bool,
) -> Result<OwnedFd, Errno> {
    match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(Errno::EXIST) => return child_dir_via(dir, name, access, openat2),
        Err(e) => return Err(e),
    }
    // Readable, whatever was asked: fchmod needs more than O_PATH, and the
    // handle of a directory just made as 0700 is ours to open.
    let made = child_dir_via(dir, name, Access::Read, openat2)?;
    rfs::fchmod(&made, Mode::from_raw_mode(MADE_DIR_MODE))?;
    Ok(made)
}

fn classify(e: Errno, i: usize) -> DirError {
    match e {
        Errno::NOENT => DirError::Missing,
        Errno::LOOP => DirError::Symlink(i),
        Errno::NOTDIR => DirError::NotDir(i),
        e => DirError::Io(e.into()),
    }
}

fn is_symlink(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn root() -> (tempfile::TempDir, std::fs::File) {
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(t.path()).unwrap();
        (t, f)
    }

    /// Both ways: openat2 (where this kernel has it) and the walk alone.
    const WAYS: [bool; 2] = [true, false];

    fn open(
        root: &std::fs::File,
        path: &str,
        create: bool,
        openat2: bool,
    ) -> Result<OwnedFd, DirError> {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        open_dir_via(root.as_fd(), &comps, create, Access::Path, openat2)
    }

    #[test]
    fn makes_missing_directories_0755_whatever_the_umask() {
        for openat2 in WAYS {
            let (t, r) = root();
            open(&r, "a/b/c", true, openat2).unwrap();
            for p in ["a", "a/b", "a/b/c"] {
                let m = std::fs::metadata(t.path().join(p)).unwrap();
                assert!(m.is_dir());
                assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{p}");
            }
        }
    }

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        for openat2 in WAYS {
            let (t, r) = root();
            std::fs::create_dir(t.path().join("a")).unwrap();
            std::fs::set_permissions(t.path().join("a"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
            open(&r, "a/b", true, openat2).unwrap();
            let m = std::fs::metadata(t.path().join("a")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        }
    }

    #[test]
    fn a_symlink_on_the_way_is_refused_and_named() {
        for openat2 in WAYS {
            let (t, r) = root();
            let outside = tempfile::tempdir().unwrap();
            std::fs::create_dir(t.path().join("a")).unwrap();
            symlink(outside.path(), t.path().join("a/link")).unwrap();
            let got = open(&r, "a/link/x", true, openat2);
            assert!(
                matches!(got, Err(DirError::Symlink(1))),
                "{openat2}: {got:?}"
            );
            assert!(!outside.path().join("x").exists());
            // A relative link that stays inside is refused too.
            symlink("..", t.path().join("a/up")).unwrap();
            assert!(matches!(
                open(&r, "a/up", false, openat2),
                Err(DirError::Symlink(1))
            ));
        }
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        for openat2 in WAYS {
            let (t, r) = root();
            std::fs::write(t.path().join("f"), b"").unwrap();
            assert!(matches!(
                open(&r, "f/x", true, openat2),
                Err(DirError::NotDir(0))
            ));
        }
    }

    #[test]
    fn missing_without_create() {
        for openat2 in WAYS {
            let (t, r) = root();
            assert!(matches!(
                open(&r, "a/b", false, openat2),
                Err(DirError::Missing)
            ));
            assert!(!t.path().join("a").exists());
        }
    }

    #[test]
    fn dot_and_dotdot_are_refused() {
        let (_t, r) = root();
        for p in ["..", "a/../b", "./a"] {
            let comps: Vec<&str> = p.split('/').collect();
            assert!(
                matches!(
                    open_dir(r.as_fd(), &comps, true, Access::Path),
                    Err(DirError::Io(ref e)) if e.kind() == io::ErrorKind::InvalidInput
                ),
                "{p}"
            );
        }
        let e = open_dir_beneath(r.as_fd(), "a/../../etc").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_root_itself() {
        for openat2 in WAYS {
            let (_t, r) = root();
            let none: [&str; 0] = [];
            let fd = open_dir_via(r.as_fd(), &none, false, Access::Read, openat2).unwrap();
            // Readable: it lists.
            assert!(rfs::Dir::read_from(&fd).is_ok());
        }
    }

    #[test]
    fn files_are_opened_and_made_without_following_a_link() {
        for openat2 in WAYS {
            let (t, r) = root();
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(t.path().join("f"), b"x").unwrap();
            symlink(outside.path().join("made"), t.path().join("link")).unwrap();
            let rd = OFlags::RDONLY | OFlags::NONBLOCK;
            assert!(open_file_via(r.as_fd(), b"f", rd, Mode::empty(), openat2).is_ok());
            let create = OFlags::CREATE | OFlags::RDONLY;
            let mode = Mode::from_raw_mode(0o644);
            assert_eq!(
                open_file_via(r.as_fd(), b"link", create, mode, openat2).unwrap_err(),
                Errno::LOOP
            );
            assert!(!outside.path().join("made").exists());
            open_file_via(r.as_fd(), b"new", create, mode, openat2).unwrap();
            assert!(t.path().join("new").is_file());
            assert_eq!(
                open_file_via(r.as_fd(), b"../x", rd, Mode::empty(), openat2).unwrap_err(),
                Errno::INVAL
            );
        }
    }

    #[test]
    fn beneath_names_the_component_in_its_error() {
        let (t, r) = root();
        symlink("/etc", t.path().join("etc")).unwrap();
        let e = open_dir_beneath(r.as_fd(), "etc/x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("\"etc\" is a symlink"), "{e}");
        let fd = open_dir_beneath(r.as_fd(), "/opt//agent/").unwrap();
        // Readable, so the caller may fchmod it.
        rfs::fchmod(&fd, Mode::from_raw_mode(0o700)).unwrap();
        assert!(t.path().join("opt/agent").is_dir());
    }
}
