//! Image references (docs/pull.md): `HOST[:PORT]/REPO[:TAG][@DIGEST]` for a
//! registry and `oci:PATH[:TAG|@DIGEST]` for an image layout on disk.
//! Parsing is pure; Docker Hub short names normalise as `docker` does
//! (distribution/reference `ParseNormalizedNamed`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// A reference to an image in a registry or an OCI image layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Registry(RegistryRef),
    Layout(LayoutRef),
}

/// `registry/repository[:tag][@digest]`, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// Host and optional port, as written (after Docker Hub normalisation).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// `oci:path[:tag|@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    pub path: PathBuf,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference {reference:?}: it is empty")]
    Empty { reference: String },
    #[error("invalid reference {reference:?}: repository {repository:?} is not valid (lowercase letters, digits and . _ __ - separators, '/' between components)")]
    Repository {
        reference: String,
        repository: String,
    },
    #[error("invalid reference {reference:?}: tag {tag:?} is not valid (up to 128 of [A-Za-z0-9_.-], not starting with . or -)")]
    Tag { reference: String, tag: String },
    #[error("invalid reference {reference:?}: registry host {host:?} is not valid")]
    Host { reference: String, host: String },
    #[error("invalid reference {reference:?}: {source}")]
    Digest {
        reference: String,
        source: DigestError,
    },
    #[error("invalid reference {reference:?}: an oci: reference needs a path")]
    LayoutPath { reference: String },
    #[error("{reference:?}: hoist reads registries (HOST/REPO:TAG, or docker://HOST/REPO:TAG), OCI layouts (oci:PATH:TAG) and Dockerfiles (dockerfile:PATH), not {transport}: images; copy it into a layout first: skopeo copy {reference} oci:DIR:TAG")]
    Transport {
        reference: String,
        transport: String,
    },
}

/// skopeo's transports that hoist does not read: answered with the fix.
const OTHER_TRANSPORTS: [&str; 7] = [
    "docker-daemon",
    "containers-storage",
    "docker-archive",
    "oci-archive",
    "dir",
    "sif",
    "ostree",
];

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((transport, _)) = s.split_once(':') {
            if OTHER_TRANSPORTS.contains(&transport) {
                return Err(ReferenceError::Transport {
                    reference: s.to_string(),
                    transport: transport.to_string(),
                });
            }
        }
        // skopeo's spelling of a registry reference.
        if let Some(rest) = s.strip_prefix("docker://") {
            return parse_registry(rest).map(Reference::Registry);
        }
        match s.strip_prefix("oci:") {
            Some(rest) => parse_layout(s, rest).map(Reference::Layout),
            None => parse_registry(s).map(Reference::Registry),
        }
    }
}

impl Reference {
    /// The digest the reference is pinned to, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Reference::Registry(r) => r.digest.as_ref(),
            Reference::Layout(r) => r.digest.as_ref(),
        }
    }

    /// A copy of this reference pinned to `digest` (the tag is kept for
    /// readability; the digest wins when both are present).
    pub fn pinned(&self, digest: Digest) -> Reference {
        let mut r = self.clone();
        match &mut r {
            Reference::Registry(x) => x.digest = Some(digest),
            Reference::Layout(x) => x.digest = Some(digest),
        }
        r
    }
}

impl RegistryRef {
    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// A name used to record the image in the store's `index.json`
    /// (`org.opencontainers.image.ref.name`): `registry/repo:tag`, or
    /// `registry/repo@digest` when there is no tag.
    pub fn store_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{}", self.registry, self.repository, t),
            (None, Some(d)) => format!("{}/{}@{}", self.registry, self.repository, d),
            (None, None) => format!("{}/{}:{}", self.registry, self.repository, DEFAULT_TAG),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => r.fmt(f),
            Reference::Layout(r) => r.fmt(f),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.path.display())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")
        } else if let Some(t) = &self.tag {
            write!(f, ":{t}")
        } else {
            Ok(())
        }
    }
}

fn split_digest<'a>(whole: &str, s: &'a str) -> Result<(&'a str, Option<Digest>), ReferenceError> {
    match s.rsplit_once('@') {
        None => Ok((s, None)),
        Some((name, d)) => {
            let digest = d.parse().map_err(|source| ReferenceError::Digest {
                reference: whole.to_string(),
                source,
            })?;
            Ok((name, Some(digest)))
        }
    }
}

fn parse_layout(whole: &str, rest: &str) -> Result<LayoutRef, ReferenceError> {
    let (name, digest) = split_digest(whole, rest)?;
    // `oci:PATH:TAG` — the tag is whatever follows the last ':' when that
    // part has no '/', so paths with ':' in a directory name still work.
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && digest.is_none() => {
            check_tag(whole, t)?;
            (p, Some(t.to_string()))
        }
        _ => (name, None),
    };
    if path.is_empty() {
        return Err(ReferenceError::LayoutPath {
            reference: whole.to_string(),
        });
    }
    Ok(LayoutRef {
        path: PathBuf::from(path),
        tag,
        digest,
    })
}

fn parse_registry(whole: &str) -> Result<RegistryRef, ReferenceError> {
    if whole.is_empty() {
        return Err(ReferenceError::Empty {
            reference: whole.to_string(),
        });
    }
    let (name, digest) = split_digest(whole, whole)?;
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => {
            check_tag(whole, t)?;
            (n, Some(t.to_string()))
        }
        _ => (name, None),
    };
    let (registry, repository) = split_domain(name);
    check_host(whole, &registry)?;
    check_repository(whole, &repository)?;
    let tag = match (&tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        _ => tag,
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Docker's rule: the first component is a registry host when it has a '.'
/// or a ':' or is `localhost`; otherwise the name is on Docker Hub, and a
/// single-component name lives under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    match rest {
        Some(rest) if first.contains(['.', ':']) || first == "localhost" => {
            let host = if first == "index.docker.io" {
                DOCKER_HUB
            } else {
                first
            };
            let repo = if host == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_string()
            };
            (host.to_string(), repo)
        }
        Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
        None => (DOCKER_HUB.to_string(), format!("library/{name}")),
    }
}

fn check_tag(whole: &str, tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Tag {
            reference: whole.to_string(),
            tag: tag.to_string(),
        })
    }
}

fn check_host(whole: &str, host: &str) -> Result<(), ReferenceError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !name.starts_with(['.', '-']);
    let ipv6_ok = name.starts_with('[') && name.ends_with(']');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if (name_ok || ipv6_ok) && port_ok {
        Ok(())
    } else {
        Err(ReferenceError::Host {
            reference: whole.to_string(),
            host: host.to_string(),
        })
    }
}

/// distribution/reference: path components of `[a-z0-9]+` joined by `.`,
/// `_`, `__` or runs of `-`.
fn check_repository(whole: &str, repo: &str) -> Result<(), ReferenceError> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        if bytes.is_empty()
            || !bytes[0].is_ascii_alphanumeric()
            || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_lowercase() || b.is_ascii_digit() {
                i += 1;
                continue;
            }
            let sep_len = match b {
                b'.' => 1,
                b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
                b'_' => 1,
                b'-' => bytes[i..].iter().take_while(|&&x| x == b'-').count(),
                _ => return false,
            };
            i += sep_len;
            if !bytes.get(i).is_some_and(|x| x.is_ascii_alphanumeric()) {
                return false;
            }
        }
        true
    };
    if repo.len() <= 255 && repo.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(ReferenceError::Repository {
            reference: whole.to_string(),
            repository: repo.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<Reference>().unwrap() {
            Reference::Registry(r) => r,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn docker_hub_short_names_normalise() {
        let r = reg("alpine");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/alpine", Some("latest"))
        );
        assert_eq!(reg("user/app:1").repository, "user/app");
        assert_eq!(reg("index.docker.io/alpine").repository, "library/alpine");
        assert_eq!(reg("index.docker.io/alpine").registry, "docker.io");
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let r = reg(&format!("127.0.0.1:5000/a/b:v1@{D}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(r.manifest_ref(), D);
        let r = reg(&format!("localhost/x@{D}"));
        assert_eq!((r.registry.as_str(), r.tag), ("localhost", None));
        let r = reg("localhost:5000/x");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.to_string(), "localhost:5000/x:latest");
    }

    #[test]
    fn malformed_references_name_the_bad_part() {
        let e = "Alpine".parse::<Reference>().unwrap_err();
        assert!(matches!(e, ReferenceError::Repository { .. }), "{e}");
        let e = "alpine:-bad".parse::<Reference>().unwrap_err();
        assert!(e.to_string().contains("tag \"-bad\""), "{e}");
        let e = "alpine@sha256:zz".parse::<Reference>().unwrap_err();
        assert!(matches!(e, ReferenceError::Digest { .. }), "{e}");
        let e = "host:99999/x".parse::<Reference>().unwrap_err();
        assert!(matches!(e, ReferenceError::Host { .. }), "{e}");
        assert!("a//b".parse::<Reference>().is_err());
        assert!("a/b-".parse::<Reference>().is_err());
        assert!("".parse::<Reference>().is_err());
    }

    #[test]
    fn skopeo_transports() {
        let docker: Reference = "docker://127.0.0.1:5000/a/b:t".parse().unwrap();
        assert_eq!(docker, Reference::Registry(reg("127.0.0.1:5000/a/b:t")));
        let hub: Reference = "docker://alpine".parse().unwrap();
        assert_eq!(hub.to_string(), "docker.io/library/alpine:latest");
        let e = "docker-daemon:alpine:latest"
            .parse::<Reference>()
            .unwrap_err();
        assert!(e.to_string().contains("skopeo copy"), "{e}");
        // A host named like a transport still has its port.
        assert!("dir:5000/x".parse::<Reference>().is_err());
        assert!("localhost:5000/x".parse::<Reference>().is_ok());
    }

    #[test]
    fn layout_references() {
        let Reference::Layout(l) = "oci:/tmp/lay:base".parse().unwrap() else {
            panic!()
        };
        assert_eq!(
            (l.path, l.tag.as_deref()),
            ("/tmp/lay".into(), Some("base"))
        );
        let Reference::Layout(l) = format!("oci:dir@{D}").parse().unwrap() else {
            panic!()
        };
        assert_eq!(
            (l.path, l.tag, l.digest.is_some()),
            ("dir".into(), None, true)
        );
        let Reference::Layout(l) = "oci:./a/b".parse().unwrap() else {
            panic!()
        };
        assert_eq!((l.path, l.tag), ("./a/b".into(), None));
        assert!("oci:".parse::<Reference>().is_err());
    }
}
