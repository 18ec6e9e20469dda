//! The owners, modes and ACLs of what the agent may not see, kept across
//! `install.sh`. Landlock denies `install.sh` every right on `/tests`,
//! `/tasks` and `/opt/gateway`, but it has no right for chmod, chown or
//! setxattr: a script running as root — the owner of those paths — could
//! still open them to everyone by name (`chmod 755 /tests; chmod 644
//! /tests/grade.sh`), for the agent to read after it. So the supervisor
//! records them before the script runs and, once the script and everything
//! it left are gone, puts back whatever changed, before any later phase
//! starts.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::root::Root;

/// The POSIX ACL xattrs: a changed ACL opens a file as surely as a mode.
const ACLS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// One recorded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    acls: Vec<(&'static str, Vec<u8>)>,
}

/// What the hidden trees looked like before `install.sh`.
#[derive(Debug, Default)]
pub struct Guard {
    entries: Vec<Entry>,
}

impl Guard {
    /// Record every entry of `hidden` (absolute paths of the sandbox) under
    /// `root`, not following symlinks.
    pub fn record(root: &Root, hidden: &[&str]) -> io::Result<Guard> {
        let mut entries = Vec::new();
        for abs in hidden {
            let top = root.path(abs);
            if std::fs::symlink_metadata(&top).is_ok() {
                walk(&top, &mut entries)?;
            }
        }
        Ok(Guard { entries })
    }

    /// Put back the mode, owner and ACLs of each recorded entry that
    /// changed; the paths put back.
    pub fn restore(&self) -> io::Result<Vec<PathBuf>> {
        let mut restored = Vec::new();
        for e in &self.entries {
            let now = match std::fs::symlink_metadata(&e.path) {
                Ok(m) => m,
                // Nothing may remove them (Landlock), but if one is gone it
                // cannot be read either.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if now.file_type().is_symlink() {
                continue;
            }
            let acls = read_acls(&e.path)?;
            if (now.mode(), now.uid(), now.gid()) == (e.mode, e.uid, e.gid) && acls == e.acls {
                continue;
            }
            std::os::unix::fs::lchown(&e.path, Some(e.uid), Some(e.gid))?;
            for (name, _) in &acls {
                if !e.acls.iter().any(|(n, _)| n == name) {
                    rustix::fs::lremovexattr(&e.path, *name)?;
                }
            }
            for (name, value) in &e.acls {
                rustix::fs::lsetxattr(&e.path, *name, value, rustix::fs::XattrFlags::empty())?;
            }
            // After the chown, which clears setuid and setgid bits.
            rustix::fs::chmod(&e.path, rustix::fs::Mode::from_raw_mode(e.mode & 0o7777))?;
            restored.push(e.path.clone());
        }
        Ok(restored)
    }
}

fn walk(path: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    if m.file_type().is_symlink() {
        return Ok(());
    }
    out.push(Entry {
        path: path.to_path_buf(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        acls: read_acls(path)?,
    });
    if m.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            walk(&path.join(n), out)?;
        }
    }
    Ok(())
}

fn read_acls(path: &Path) -> io::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut v = Vec::new();
    for name in ACLS {
        let mut buf = vec![0u8; 4096];
        match rustix::fs::lgetxattr(path, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                v.push((name, buf));
            }
            // Absent, or a filesystem without ACLs: nothing to keep.
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn changed_modes_and_owners_are_put_back_and_nothing_else_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        std::fs::create_dir_all(d.path().join("tests/t1")).unwrap();
        std::fs::write(d.path().join("tests/t1/hidden.py"), "secret").unwrap();
        std::fs::write(d.path().join("other"), "").unwrap();
        let set = |p: &str, m| {
            std::fs::set_permissions(d.path().join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        set("tests", 0o700);
        set("tests/t1", 0o700);
        set("tests/t1/hidden.py", 0o600);
        let g = Guard::record(&root, &["/tests", "/tasks"]).unwrap();
        assert!(g.restore().unwrap().is_empty());
        set("tests", 0o755);
        set("tests/t1/hidden.py", 0o4755);
        set("other", 0o777);
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::lchown(d.path().join("tests/t1"), Some(1000), Some(1000)).unwrap();
        }
        let mut back = g.restore().unwrap();
        back.sort();
        let mode = |p: &str| std::fs::metadata(d.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tests"), 0o700);
        assert_eq!(mode("tests/t1/hidden.py"), 0o600);
        assert_eq!(mode("other"), 0o777, "outside the hidden trees");
        assert!(back.contains(&d.path().join("tests")));
        if rustix::process::geteuid().is_root() {
            let m = std::fs::metadata(d.path().join("tests/t1")).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
    }
}
