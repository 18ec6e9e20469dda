//! Pure rules for entry names: normalisation and the OCI whiteout grammar
//! (image-spec layer.md "Whiteouts"). No I/O here, so each rule has a unit
//! test on plain bytes.

/// Longest normalised name accepted. Linux's PATH_MAX is 4096 including the
/// NUL; Docker resolves every entry as one path, so it cannot go further.
pub(crate) const MAX_PATH_BYTES: usize = 4095;
/// Deepest name accepted. Removing a tree recurses once per level and holds
/// one descriptor per level, so depth is bounded well under RLIMIT_NOFILE.
pub(crate) const MAX_DEPTH: usize = 512;
/// `NAME_MAX` on every Linux file system hoist writes to.
const MAX_COMPONENT_BYTES: usize = 255;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Why a name was refused; the caller attaches the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProblem {
    /// A `..` would climb above the root.
    Escape,
    /// The name is empty or not a valid file name.
    Invalid(&'static str),
}

/// A normalised entry name: components relative to the root, none of them
/// empty, `.` or `..`, none containing `/` or NUL. Empty means the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EntryPath {
    comps: Vec<Vec<u8>>,
}

impl EntryPath {
    pub(crate) fn components(&self) -> &[Vec<u8>] {
        &self.comps
    }

    pub(crate) fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    /// The parent's components and the final name; `None` for the root.
    pub(crate) fn split_last(&self) -> Option<(&[Vec<u8>], &[u8])> {
        let (last, parent) = self.comps.split_last()?;
        Some((parent, last))
    }

    /// The `/`-joined form, used as a key and in messages.
    pub(crate) fn key(&self) -> Vec<u8> {
        self.comps.join(&b'/')
    }

    pub(crate) fn from_components(comps: Vec<Vec<u8>>) -> EntryPath {
        EntryPath { comps }
    }
}

/// Normalises a raw tar name: leading `/` and `./` are dropped, `.` and empty
/// components vanish, `..` pops, and a `..` that would climb above the root
/// is an error rather than being clamped, so a hostile name is reported.
pub(crate) fn normalize(raw: &[u8]) -> Result<EntryPath, PathProblem> {
    if raw.is_empty() {
        return Err(PathProblem::Invalid("empty name"));
    }
    if raw.contains(&0) {
        return Err(PathProblem::Invalid("name contains a NUL byte"));
    }
    let mut comps: Vec<Vec<u8>> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                comps.pop().ok_or(PathProblem::Escape)?;
            }
            _ if comp.len() > MAX_COMPONENT_BYTES => {
                return Err(PathProblem::Invalid("a component is longer than 255 bytes"))
            }
            _ => comps.push(comp.to_vec()),
        }
    }
    let len: usize = comps.iter().map(|c| c.len() + 1).sum();
    if len > MAX_PATH_BYTES + 1 {
        return Err(PathProblem::Invalid("name is longer than PATH_MAX"));
    }
    if comps.len() > MAX_DEPTH {
        return Err(PathProblem::Invalid("name is nested too deeply"));
    }
    Ok(EntryPath { comps })
}

/// What an entry name means under the whiteout grammar.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// An ordinary entry.
    Plain,
    /// `DIR/.wh.NAME`: hide `NAME` of the lower layers.
    Whiteout { target: EntryPath },
    /// `DIR/.wh..wh..opq`: hide all of `DIR`'s lower contents.
    Opaque { dir: EntryPath },
    /// AUFS bookkeeping at the root (`.wh..wh.plnk`, `.wh..wh.aufs`, ...):
    /// skipped, as Docker skips it, so layers made on aufs hosts still apply.
    AufsMeta,
}

/// Classifies a normalised name. Whiteout names anywhere but the last
/// component, a whiteout with no name or naming `.`/`..`, and reserved
/// `.wh..wh.` names outside the root are errors: the spec gives them no
/// meaning and guessing one is how unpackers disagree.
pub(crate) fn classify(path: &EntryPath) -> Result<Role, &'static str> {
    let Some((parent, last)) = path.split_last() else {
        return Ok(Role::Plain);
    };
    if let Some(first) = parent.first() {
        if first.starts_with(WHITEOUT_META_PREFIX) && first.as_slice() != OPAQUE_MARKER {
            return Ok(Role::AufsMeta);
        }
    }
    if parent.iter().any(|c| c.starts_with(WHITEOUT_PREFIX)) {
        return Err("a whiteout name is used as a directory");
    }
    let dir = EntryPath::from_components(parent.to_vec());
    if last == OPAQUE_MARKER {
        return Ok(Role::Opaque { dir });
    }
    if last.starts_with(WHITEOUT_META_PREFIX) {
        return match parent.is_empty() {
            true => Ok(Role::AufsMeta),
            false => Err("reserved .wh..wh. name"),
        };
    }
    let Some(name) = last.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(Role::Plain);
    };
    match name {
        b"" => Err("whiteout with an empty name"),
        b"." | b".." => Err("whiteout of . or .."),
        _ => {
            let mut comps = parent.to_vec();
            comps.push(name.to_vec());
            Ok(Role::Whiteout {
                target: EntryPath::from_components(comps),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<Vec<String>, PathProblem> {
        normalize(s.as_bytes()).map(|p| {
            p.components()
                .iter()
                .map(|c| String::from_utf8(c.clone()).unwrap())
                .collect()
        })
    }

    fn role(s: &str) -> Result<Role, &'static str> {
        classify(&normalize(s.as_bytes()).unwrap())
    }

    fn path(s: &str) -> EntryPath {
        normalize(s.as_bytes()).unwrap()
    }

    #[test]
    fn strips_leading_slash_and_dot() {
        assert_eq!(norm("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(norm("./etc//x/./y/").unwrap(), ["etc", "x", "y"]);
        assert_eq!(norm("./").unwrap(), Vec::<String>::new());
        assert_eq!(norm("/").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn dotdot_inside_is_resolved_lexically() {
        assert_eq!(norm("a/b/../c").unwrap(), ["a", "c"]);
        assert_eq!(norm("a/..").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn dotdot_above_root_is_an_escape() {
        assert_eq!(norm("../x"), Err(PathProblem::Escape));
        assert_eq!(norm("a/../../x"), Err(PathProblem::Escape));
        assert_eq!(norm("/../x"), Err(PathProblem::Escape));
        assert_eq!(norm(".."), Err(PathProblem::Escape));
    }

    #[test]
    fn empty_nul_and_oversized_names_are_invalid() {
        assert!(matches!(norm(""), Err(PathProblem::Invalid(_))));
        assert!(matches!(norm("a\0b"), Err(PathProblem::Invalid(_))));
        assert!(matches!(
            norm(&"x".repeat(256)),
            Err(PathProblem::Invalid(_))
        ));
        assert!(matches!(
            norm(&"a/".repeat(MAX_DEPTH + 1)),
            Err(PathProblem::Invalid(_))
        ));
        assert!(matches!(
            norm(&"abcdefg/".repeat(600)),
            Err(PathProblem::Invalid(_))
        ));
        assert!(norm(&"a/".repeat(MAX_DEPTH)).is_ok());
    }

    #[test]
    fn plain_names() {
        assert_eq!(role("etc/passwd"), Ok(Role::Plain));
        assert_eq!(role("a/.whx"), Ok(Role::Plain));
        assert_eq!(role("a/x.wh.y"), Ok(Role::Plain));
        assert_eq!(classify(&EntryPath::default()), Ok(Role::Plain));
    }

    #[test]
    fn whiteout_names_the_sibling() {
        assert_eq!(
            role("a/b/.wh.c"),
            Ok(Role::Whiteout {
                target: path("a/b/c")
            })
        );
        assert_eq!(
            role(".wh.etc"),
            Ok(Role::Whiteout {
                target: path("etc")
            })
        );
        assert_eq!(
            role("a/.wh...x"),
            Ok(Role::Whiteout {
                target: path("a/..x")
            })
        );
    }

    #[test]
    fn opaque_marker_names_its_directory() {
        assert_eq!(
            role("a/b/.wh..wh..opq"),
            Ok(Role::Opaque { dir: path("a/b") })
        );
        assert_eq!(
            role(".wh..wh..opq"),
            Ok(Role::Opaque {
                dir: EntryPath::default()
            })
        );
    }

    #[test]
    fn bad_whiteouts() {
        assert!(role(".wh.").is_err());
        assert!(role("a/.wh.").is_err());
        assert!(role(".wh..").is_err());
        assert!(role("a/.wh...").is_err());
        assert!(role(".wh../x").is_err());
        assert!(role("a/.wh.b/c").is_err());
        assert!(role("a/.wh..wh..opq/x").is_err());
        assert!(role("a/.wh..wh.plnk").is_err());
    }

    #[test]
    fn aufs_metadata_at_root_is_skipped() {
        assert_eq!(role(".wh..wh.plnk"), Ok(Role::AufsMeta));
        assert_eq!(role(".wh..wh.plnk/123.456"), Ok(Role::AufsMeta));
        assert_eq!(role(".wh..wh.aufs"), Ok(Role::AufsMeta));
    }
}
