//! Where the supervisor's absolute paths live, and the root-owned files it
//! writes there. In the sandbox the root is `/`; tests point it at a
//! throwaway tree (`--root`), and every path the pipeline touches or hands
//! to a child is resolved under it by plain prefixing.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root(dir.into())
    }

    /// `abs` (an absolute path of the sandbox) under this root. Callers
    /// pass constants or paths already checked to have no `..`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
    }

    /// Whether this is the real root, as in the sandbox (not a test's
    /// scratch tree).
    pub fn is_slash(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// [`Root::path`] as an OsString, for argv and the environment.
    pub fn os(&self, abs: &str) -> OsString {
        self.path(abs).into_os_string()
    }
}

/// Make `dir` a directory owned by root with exactly `mode`. A symlink or
/// a file in its place is refused rather than followed.
pub fn ensure_root_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", dir.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
        }
        Err(e) => return Err(e),
    }
    std::os::unix::fs::lchown(dir, Some(0), Some(0))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Create or truncate a root-owned 0644 file, never through a symlink.
pub fn create_root_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    // An existing file keeps its owner and mode on open; a fresh one has
    // the umask applied. Either way, make it exactly what §3 promises.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    std::os::unix::fs::fchown(&f, Some(0), Some(0))?;
    Ok(f)
}

/// Write `path` whole and atomically ([`crate::atomic`], synced), 0644.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::atomic::write(path, bytes, 0o644, crate::atomic::Durability::Synced)
}

/// Remove `path` if it is there (a file or a symlink, not followed).
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_root_is_identity() {
        assert_eq!(
            Root::new("/").path("/tasks/a/task.json"),
            Path::new("/tasks/a/task.json")
        );
    }

    #[test]
    fn other_root_prefixes() {
        assert_eq!(
            Root::new("/tmp/r").path("/opt/agent/run"),
            Path::new("/tmp/r/opt/agent/run")
        );
        assert_eq!(Root::new("/tmp/r").path("/"), Path::new("/tmp/r/"));
    }

    #[test]
    fn create_root_file_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("agent.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_root_file(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn ensure_root_dir_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("task");
        std::fs::write(&f, "").unwrap();
        assert!(ensure_root_dir(&f, 0o755).is_err());
    }

    #[test]
    fn write_atomic_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        std::fs::write(&p, "old and long").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
