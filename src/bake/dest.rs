//! Where `hoist bake --tag DEST` writes the combination image. Parsing is
//! pure.
//!
//! - `oci:PATH:TAG`: an OCI image layout (created if missing), the image
//!   named TAG in its `index.json`;
//! - `HOST[:PORT]/REPO[:TAG]`: a registry, pushed with the distribution API;
//! - `docker-archive:PATH[:NAME[:TAG]]`: the format of `docker save`, which
//!   `docker load` reads, tagged NAME:TAG when a name is given.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::reference::{Reference, RegistryRef};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Layout { path: PathBuf, tag: String },
    Registry(RegistryRef),
    DockerArchive { path: PathBuf, name: Option<String> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid bake destination {dest:?}: {reason}")]
pub struct DestinationError {
    pub dest: String,
    pub reason: String,
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(s: &str) -> Result<Destination, DestinationError> {
        let err = |reason: &str| DestinationError {
            dest: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, name) = match rest.split_once(':') {
                Some((p, n)) => (p, Some(n)),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(err("docker-archive: needs a file path"));
            }
            let name = name
                .map(|n| archive_name(n).map_err(|r| err(&r)))
                .transpose()?;
            return Ok(Destination::DockerArchive {
                path: PathBuf::from(path),
                name,
            });
        }
        match s.parse::<Reference>().map_err(|e| err(&e.to_string()))? {
            Reference::Layout(l) => {
                if l.digest.is_some() {
                    return Err(err(
                        "an image is written under a tag, not a digest (oci:PATH:TAG)",
                    ));
                }
                let tag = l
                    .tag
                    .ok_or_else(|| err("an oci: destination needs a tag (oci:PATH:TAG)"))?;
                Ok(Destination::Layout { path: l.path, tag })
            }
            Reference::Registry(r) => {
                if r.digest.is_some() {
                    return Err(err(
                        "an image is pushed under a tag, not a digest (HOST/REPO:TAG)",
                    ));
                }
                Ok(Destination::Registry(r))
            }
        }
    }
}

/// A repository name for `docker load`, with `:latest` when untagged.
fn archive_name(n: &str) -> Result<String, String> {
    match n.parse::<Reference>() {
        Ok(Reference::Registry(r)) if r.digest.is_none() => {
            let last = n.rsplit('/').next().unwrap_or(n);
            Ok(if last.contains(':') {
                n.to_string()
            } else {
                format!("{n}:latest")
            })
        }
        Ok(_) => Err(format!("{n:?} is not a NAME[:TAG] for docker load")),
        Err(e) => Err(e.to_string()),
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Layout { path, tag } => write!(f, "oci:{}:{tag}", path.display()),
            Destination::Registry(r) => write!(f, "{r}"),
            Destination::DockerArchive { path, name } => {
                write!(f, "docker-archive:{}", path.display())?;
                if let Some(n) = name {
                    write!(f, ":{n}")?;
                }
                Ok(())
            }
        }
    }
}

impl Destination {
    /// The name the combination is recorded under in the store's
    /// `index.json`: what a later `hoist pull` of it would record.
    pub fn store_name(&self) -> String {
        match self {
            Destination::Layout { path, tag } => {
                let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                format!("oci:{}:{tag}", abs.display())
            }
            Destination::Registry(r) => r.store_name(),
            Destination::DockerArchive { .. } => format!("bake:{self}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Destination, DestinationError> {
        s.parse()
    }

    #[test]
    fn layouts_need_a_tag() {
        assert_eq!(
            parse("oci:/tmp/x:combo").unwrap(),
            Destination::Layout {
                path: "/tmp/x".into(),
                tag: "combo".into()
            }
        );
        assert!(parse("oci:/tmp/x").is_err());
        assert!(parse(&format!("oci:/tmp/x@sha256:{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn registries_take_a_tag_or_latest() {
        let Destination::Registry(r) = parse("127.0.0.1:5000/combo/x:v1").unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "combo/x")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(parse(&format!("r.example/x@sha256:{}", "a".repeat(64))).is_err());
        assert!(parse("r.example/UPPER:x").is_err());
    }

    #[test]
    fn docker_archives_with_and_without_a_name() {
        assert_eq!(
            parse("docker-archive:/tmp/a.tar").unwrap(),
            Destination::DockerArchive {
                path: "/tmp/a.tar".into(),
                name: None
            }
        );
        assert_eq!(
            parse("docker-archive:/tmp/a.tar:hoist/combo:t1").unwrap(),
            Destination::DockerArchive {
                path: "/tmp/a.tar".into(),
                name: Some("hoist/combo:t1".into())
            }
        );
        assert_eq!(
            parse("docker-archive:a.tar:localhost:5000/combo").unwrap(),
            Destination::DockerArchive {
                path: "a.tar".into(),
                name: Some("localhost:5000/combo:latest".into())
            }
        );
        assert!(parse("docker-archive:").is_err());
        assert!(parse("docker-archive:a.tar:Bad Name").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "oci:/tmp/x:combo",
            "127.0.0.1:5000/combo:v1",
            "docker-archive:/tmp/a.tar:hoist/combo:t1",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }
}
