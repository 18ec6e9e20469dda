//! The Landlock domain of a phase: files beneath the run's tree minus
//! what the phase may not see, TCP as the policy says, signals and
//! abstract unix sockets scoped to the domain.
//!
//! Landlock only grants (a rule allows access beneath a directory), so
//! "everything but `/tests`" is built as rules on every sibling along the
//! way: each entry of `/` but `tests`, `tasks` and `opt`, then each entry
//! of `/opt` but `gateway`. The directories on the way (`/`, `/opt`) get no
//! rule of their own, so a phase can resolve paths through them but not
//! list them or create entries in them. A symlinked entry gets no rule:
//! what it points to is granted (or not) by its own path, so an image's
//! `/answers -> /tests` opens nothing.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope, ABI,
};
use rustix::fs::{Mode, OFlags};

use super::{Policy, Tcp};

/// A rule to add: read and execute on `path`, and with `write` every
/// other right too.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub path: PathBuf,
    pub write: bool,
}

fn abi_of(n: u32) -> ABI {
    match n {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => ABI::V7,
    }
}

/// Enter the phase's Landlock domain, using at most ABI `abi`.
pub fn restrict(policy: &Policy, abi: u32) -> Result<(), Box<dyn std::error::Error>> {
    let v = abi_of(abi);
    let all = AccessFs::from_all(v);
    let read = AccessFs::from_read(v);
    let mut ruleset = Ruleset::default()
        // Every right requested here exists at `abi`: never silently less.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)?;
    let handles_tcp = abi >= 4 && policy.tcp != Tcp::Unrestricted;
    if handles_tcp {
        let net = match policy.tcp {
            Tcp::BindOnly(_) => BitFlags::from(AccessNet::BindTcp),
            _ => AccessNet::from_all(v),
        };
        ruleset = ruleset.handle_access(net)?;
    }
    if abi >= 6 {
        ruleset = ruleset.scope(Scope::AbstractUnixSocket | Scope::Signal)?;
    }
    let mut created = ruleset.create()?;
    for g in grants(policy)?
        .into_iter()
        .chain(policy.host.iter().cloned())
    {
        let Some((fd, dir)) = open_rule_target(&g.path)? else {
            continue;
        };
        let mut access = if g.write { all } else { read };
        if !dir {
            // Directory rights on a file are an error, not a no-op.
            access &= AccessFs::from_file(v);
        }
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    if handles_tcp {
        match &policy.tcp {
            Tcp::ConnectOnly(ports) => {
                for p in ports {
                    created = created.add_rule(NetPort::new(*p, AccessNet::ConnectTcp))?;
                }
            }
            Tcp::BindOnly(p) => {
                created = created.add_rule(NetPort::new(*p, AccessNet::BindTcp))?;
            }
            Tcp::Unrestricted => {}
        }
    }
    created.restrict_self()?;
    Ok(())
}

/// The rules of `policy`: read (and execute) on every entry beneath the
/// root but the hidden ones; write too, where the policy lets the phase
/// write (everywhere, or only its `writable` paths).
pub fn grants(policy: &Policy) -> std::io::Result<Vec<Grant>> {
    let hidden = trie(&policy.hidden);
    let mut out = Vec::new();
    walk(&policy.root, &hidden, &mut out)?;
    let write_everywhere = policy.writable.is_none();
    for g in &mut out {
        g.write = write_everywhere;
    }
    for w in policy.writable.iter().flatten() {
        out.push(Grant {
            path: policy.root.join(w),
            write: true,
        });
    }
    Ok(out)
}

/// The hidden paths as a tree of components; a leaf (empty map) is hidden
/// whole.
#[derive(Default, Debug)]
struct Trie(BTreeMap<String, Trie>);

fn trie(paths: &[String]) -> Trie {
    let mut t = Trie::default();
    for p in paths {
        let mut node = &mut t;
        for c in p.split('/').filter(|c| !c.is_empty()) {
            node = node.0.entry(c.to_string()).or_default();
        }
    }
    t
}

fn walk(dir: &Path, hidden: &Trie, out: &mut Vec<Grant>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        match name.to_str().and_then(|n| hidden.0.get(n)) {
            Some(sub) if sub.0.is_empty() => {}
            Some(sub) => {
                // Only a real directory is descended; a symlink standing in
                // the way of a hidden path gets no rule at all.
                if std::fs::symlink_metadata(&path)?.is_dir() {
                    walk(&path, sub, out)?;
                }
            }
            None => out.push(Grant { path, write: false }),
        }
    }
    Ok(())
}

/// An `O_PATH` descriptor of `path` itself and whether it is a directory,
/// or `None` for a symlink (or something gone since it was listed).
fn open_rule_target(path: &Path) -> std::io::Result<Option<(OwnedFd, bool)>> {
    match rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
            let dir = kind == rustix::fs::FileType::Directory;
            Ok((kind != rustix::fs::FileType::Symlink).then_some((fd, dir)))
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::{NetFacts, Phase};

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for p in [
            "tests/t1",
            "tasks/a",
            "opt/agent",
            "opt/gateway",
            "usr/bin",
            "testbed",
        ] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(d.path().join("etc"), "").unwrap();
        std::os::unix::fs::symlink("tests", d.path().join("answers")).unwrap();
        d
    }

    fn names(root: &Path, g: &[Grant]) -> Vec<String> {
        g.iter()
            .map(|g| g.path.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn every_sibling_of_a_hidden_path_is_granted_and_nothing_else() {
        let d = tree();
        let p = Policy::for_phase(Phase::Agent, d.path(), &NetFacts::default());
        let g = grants(&p).unwrap();
        assert_eq!(
            names(d.path(), &g),
            ["answers", "etc", "opt/agent", "testbed", "usr"]
        );
        assert!(g.iter().all(|g| g.write));
    }

    #[test]
    fn the_gateway_reads_everywhere_but_writes_only_its_directory() {
        let d = tree();
        let p = Policy::for_phase(Phase::Gateway, d.path(), &NetFacts::default());
        let g = grants(&p).unwrap();
        let written: Vec<_> = g.iter().filter(|g| g.write).cloned().collect();
        assert_eq!(
            names(d.path(), &written),
            ["run/hoist/gateway", "dev/null", "dev/zero", "dev/full"]
        );
        assert!(names(d.path(), &g).contains(&"opt".to_string()));
        assert!(!names(d.path(), &g).contains(&"tests".to_string()));
    }

    #[test]
    fn symlinks_get_no_rule() {
        let d = tree();
        assert!(open_rule_target(&d.path().join("answers"))
            .unwrap()
            .is_none());
        assert!(open_rule_target(&d.path().join("usr")).unwrap().is_some());
        assert!(open_rule_target(&d.path().join("missing"))
            .unwrap()
            .is_none());
    }
}
