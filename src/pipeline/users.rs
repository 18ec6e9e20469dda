//! The `agent` user (docs/pipeline.md step 1), made by editing `/etc/passwd`,
//! `/etc/group` and `/etc/shadow` as text. Never `useradd` and never the
//! image's NSS libraries: both are code from an image, and the supervisor
//! runs as root.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::root::Root;

pub const AGENT_NAME: &str = "agent";
pub const AGENT_UID: u32 = 1000;
pub const AGENT_GID: u32 = 1000;
pub const AGENT_HOME: &str = "/home/agent";
pub const AGENT_SHELL: &str = "/bin/sh";

/// One of the three databases, and what a well-formed line of it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Passwd,
    Group,
    Shadow,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error(
        "/etc/{db} line {line}: {name:?} has id {found}, but hoist needs {name} to be {expected}"
    )]
    WrongId {
        db: &'static str,
        line: usize,
        name: String,
        found: String,
        expected: u32,
    },
    #[error(
        "/etc/{db} line {line}: id {id} belongs to {name:?}, but hoist needs it for {AGENT_NAME}"
    )]
    IdTaken {
        db: &'static str,
        line: usize,
        id: u32,
        name: String,
    },
    #[error("/etc/{db} line {line} is malformed ({fields} fields, {expected} expected) and names {AGENT_NAME} or id 1000")]
    Malformed {
        db: &'static str,
        line: usize,
        fields: usize,
        expected: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureUserError {
    #[error(transparent)]
    Db(#[from] UserError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Db {
    fn file(self) -> &'static str {
        match self {
            Db::Passwd => "passwd",
            Db::Group => "group",
            Db::Shadow => "shadow",
        }
    }

    fn fields(self) -> usize {
        match self {
            Db::Passwd => 7,
            Db::Group => 4,
            Db::Shadow => 9,
        }
    }

    /// The numeric id this database gives the agent, if it has one.
    fn agent_id(self) -> Option<u32> {
        match self {
            Db::Passwd => Some(AGENT_UID),
            Db::Group => Some(AGENT_GID),
            Db::Shadow => None,
        }
    }

    /// The line that [`ensure_entry`] appends.
    fn agent_line(self) -> String {
        match self {
            Db::Passwd => {
                format!("{AGENT_NAME}:x:{AGENT_UID}:{AGENT_GID}::{AGENT_HOME}:{AGENT_SHELL}")
            }
            Db::Group => format!("{AGENT_NAME}:x:{AGENT_GID}:"),
            // A locked password: the agent never logs in.
            Db::Shadow => format!("{AGENT_NAME}:!::0:99999:7:::"),
        }
    }
}

/// The text of `db` with the agent's entry present: `None` when it is
/// already there as hoist needs it, the new text when a line was appended,
/// an error when the name or the id is taken in a way hoist cannot keep.
/// Lines hoist does not understand are kept as they are, unless they could
/// be read as the agent's entry or as another owner of its id.
pub fn ensure_entry(db: Db, text: &str) -> Result<Option<String>, UserError> {
    let mut present = false;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        present |= check_line(db, i + 1, line)?;
    }
    if present {
        return Ok(None);
    }
    let mut out = text.to_string();
    // Appending to an unterminated last line would fuse two entries.
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&db.agent_line());
    out.push('\n');
    Ok(Some(out))
}

/// Whether `line` is the agent's entry; an error when it conflicts.
fn check_line(db: Db, line_no: usize, line: &str) -> Result<bool, UserError> {
    let fields: Vec<&str> = line.split(':').collect();
    let name = fields[0];
    let id = fields.get(2).and_then(|f| f.parse::<u32>().ok());
    let ours = name == AGENT_NAME;
    let holds_id = db.agent_id().is_some() && id == db.agent_id();
    if !ours && !holds_id {
        return Ok(false);
    }
    if fields.len() != db.fields() {
        return Err(UserError::Malformed {
            db: db.file(),
            line: line_no,
            fields: fields.len(),
            expected: db.fields(),
        });
    }
    match (ours, db.agent_id()) {
        (true, Some(expected)) if id != Some(expected) => Err(UserError::WrongId {
            db: db.file(),
            line: line_no,
            name: name.to_string(),
            found: fields[2].to_string(),
            expected,
        }),
        (true, _) => Ok(true),
        (false, _) => Err(UserError::IdTaken {
            db: db.file(),
            line: line_no,
            id: id.unwrap_or_default(),
            name: name.to_string(),
        }),
    }
}

/// Ensure the agent user, its group, its shadow entry (when the image has
/// a shadow file) and its home directory under `root`.
pub fn ensure_agent_user(root: &Root) -> Result<(), EnsureUserError> {
    ensure_db(root, Db::Passwd, true)?;
    ensure_db(root, Db::Group, true)?;
    ensure_db(root, Db::Shadow, false)?;
    ensure_home(&root.path(AGENT_HOME))
}

fn ensure_db(root: &Root, db: Db, create: bool) -> Result<(), EnsureUserError> {
    let path = root.path(&format!("/etc/{}", db.file()));
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => seed(db),
        Err(source) => return Err(io_err("read", &path, source)),
    };
    match ensure_entry(db, &text)? {
        Some(new) => replace_file(&path, new.as_bytes(), mode_of(db)),
        None => Ok(()),
    }
}

/// An image without /etc/passwd still needs root to be named.
fn seed(db: Db) -> String {
    match db {
        Db::Passwd => "root:x:0:0:root:/root:/bin/sh\n".into(),
        Db::Group => "root:x:0:\n".into(),
        Db::Shadow => String::new(),
    }
}

fn mode_of(db: Db) -> u32 {
    match db {
        Db::Shadow => 0o640,
        Db::Passwd | Db::Group => 0o644,
    }
}

/// Write `path` whole, by a temp file renamed over it, so a crash never
/// leaves a half-written passwd. An existing file's mode is kept.
fn replace_file(path: &Path, bytes: &[u8], default_mode: u32) -> Result<(), EnsureUserError> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default_mode);
    crate::atomic::write(path, bytes, mode, crate::atomic::Durability::Synced)
        .map_err(|e| io_err("replace", path, e))
}

/// Create the home directory, owned by the agent, when the image has none.
/// An existing one is left as the image made it.
fn ensure_home(home: &Path) -> Result<(), EnsureUserError> {
    if std::fs::symlink_metadata(home).is_ok() {
        return Ok(());
    }
    if let Some(parent) = home.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| io_err("create", parent, e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(home)
        .map_err(|e| io_err("create", home, e))?;
    // The mode given to mkdir is filtered by the umask; make it exact.
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err("chmod", home, e))?;
    std::os::unix::fs::lchown(home, Some(AGENT_UID), Some(AGENT_GID))
        .map_err(|e| io_err("chown", home, e))
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> EnsureUserError {
    EnsureUserError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn passwd_gains_agent_line() {
        let new = ensure_entry(Db::Passwd, PASSWD).unwrap().unwrap();
        assert_eq!(
            new,
            format!("{PASSWD}agent:x:1000:1000::/home/agent:/bin/sh\n")
        );
    }

    #[test]
    fn existing_agent_with_uid_1000_is_kept() {
        let text = format!("{PASSWD}agent:x:1000:1000:Agent:/home/agent:/bin/bash\n");
        assert_eq!(ensure_entry(Db::Passwd, &text).unwrap(), None);
    }

    #[test]
    fn agent_with_another_uid_is_refused() {
        let text = format!("{PASSWD}agent:x:1001:1001::/home/agent:/bin/sh\n");
        assert!(matches!(
            ensure_entry(Db::Passwd, &text),
            Err(UserError::WrongId { line: 3, .. })
        ));
    }

    #[test]
    fn uid_1000_taken_by_another_name_is_refused() {
        let text = format!("{PASSWD}ubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n");
        let e = ensure_entry(Db::Passwd, &text).unwrap_err();
        assert!(matches!(&e, UserError::IdTaken { name, .. } if name == "ubuntu"));
    }

    #[test]
    fn unterminated_last_line_is_not_fused() {
        let text = "root:x:0:0:root:/root:/bin/bash";
        let new = ensure_entry(Db::Passwd, text).unwrap().unwrap();
        assert_eq!(new.lines().count(), 2);
        assert_eq!(
            new.lines().nth(1),
            Some("agent:x:1000:1000::/home/agent:/bin/sh")
        );
    }

    #[test]
    fn empty_file_gains_agent_line() {
        let new = ensure_entry(Db::Passwd, "").unwrap().unwrap();
        assert_eq!(new, "agent:x:1000:1000::/home/agent:/bin/sh\n");
    }

    #[test]
    fn agent_line_with_extra_colons_is_refused() {
        let text = format!("{PASSWD}agent:x:1000:1000::/home/agent:/bin/sh:extra\n");
        assert!(matches!(
            ensure_entry(Db::Passwd, &text),
            Err(UserError::Malformed { fields: 8, .. })
        ));
    }

    #[test]
    fn uid_1000_line_with_extra_colons_is_refused() {
        let text = format!("{PASSWD}evil:x:1000:0:::/root:/bin/sh\n");
        assert!(matches!(
            ensure_entry(Db::Passwd, &text),
            Err(UserError::Malformed { .. })
        ));
    }

    #[test]
    fn unrelated_malformed_lines_are_kept_verbatim() {
        let text = format!("{PASSWD}weird:line:with:too:many:colons:x:y:z\n+::::::\n");
        let new = ensure_entry(Db::Passwd, &text).unwrap().unwrap();
        assert!(new.starts_with(&text));
    }

    #[test]
    fn comments_and_blank_lines_are_kept() {
        let text = format!("# users\n\n{PASSWD}");
        let new = ensure_entry(Db::Passwd, &text).unwrap().unwrap();
        assert!(new.starts_with(&text));
    }

    #[test]
    fn agent_name_as_prefix_is_not_agent() {
        let text = format!("{PASSWD}agent2:x:1002:1002::/home/agent2:/bin/sh\n");
        let new = ensure_entry(Db::Passwd, &text).unwrap().unwrap();
        assert!(new.ends_with("agent:x:1000:1000::/home/agent:/bin/sh\n"));
    }

    #[test]
    fn group_gains_agent_line() {
        let text = "root:x:0:\nusers:x:100:\n";
        let new = ensure_entry(Db::Group, text).unwrap().unwrap();
        assert_eq!(new, format!("{text}agent:x:1000:\n"));
    }

    #[test]
    fn existing_agent_group_is_kept() {
        let text = "root:x:0:\nagent:x:1000:alice\n";
        assert_eq!(ensure_entry(Db::Group, text).unwrap(), None);
    }

    #[test]
    fn gid_1000_taken_is_refused() {
        let text = "root:x:0:\nstaff:x:1000:\n";
        assert!(matches!(
            ensure_entry(Db::Group, text),
            Err(UserError::IdTaken { id: 1000, .. })
        ));
    }

    #[test]
    fn shadow_gains_locked_agent_line() {
        let text = "root:*:19000:0:99999:7:::\n";
        let new = ensure_entry(Db::Shadow, text).unwrap().unwrap();
        assert_eq!(new, format!("{text}agent:!::0:99999:7:::\n"));
    }

    #[test]
    fn shadow_ignores_numbers_in_its_third_field() {
        // The third shadow field is a date, not an id.
        let text = "root:*:1000:0:99999:7:::\n";
        assert!(ensure_entry(Db::Shadow, text).unwrap().is_some());
    }

    #[test]
    fn appended_lines_are_well_formed() {
        for db in [Db::Passwd, Db::Group, Db::Shadow] {
            let line = db.agent_line();
            assert_eq!(line.split(':').count(), db.fields(), "{line}");
            assert_eq!(ensure_entry(db, &format!("{line}\n")).unwrap(), None);
        }
    }
}
