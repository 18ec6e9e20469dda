//! `hoist.lock` (docs/pull.md, "The lock file"): every axis reference pinned to
//! the digest it resolved to. `hoist run --locked` fails on drift (exit 3),
//! naming the axis and both digests. An image built from a Dockerfile
//! (`dockerfile:PATH`) also pins the digest of its build inputs: a
//! changed Dockerfile or context is drift too, found without building.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const DEFAULT_FILE: &str = "hoist.lock";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    /// Axis name (`benchmark`, `agent`, `gateway`) to its pin.
    #[serde(flatten)]
    pub axes: BTreeMap<String, Pin>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: Digest,
    /// `dockerfile:` references: the digest of the build inputs (the
    /// context's tree and the Dockerfile) the image was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid lock file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{axis}: {path} pins no digest for {reference}; run `hoist lock` to update it")]
    Unpinned {
        axis: String,
        reference: String,
        path: PathBuf,
    },
    #[error("{axis}: {reference} is pinned to {pinned} in {path} but resolves to {found} now")]
    Drift {
        axis: String,
        reference: String,
        pinned: Digest,
        found: Digest,
        path: PathBuf,
    },
    #[error("{axis}: {reference}: {file} or its build context changed since {path} pinned it (build inputs {pinned}, now {found}); run `hoist lock` to rebuild and pin it again")]
    InputsDrift {
        axis: String,
        reference: String,
        file: PathBuf,
        pinned: Digest,
        found: Digest,
        path: PathBuf,
    },
}

impl LockError {
    /// What was found differs from its pin: exit code 3.
    pub fn is_drift(&self) -> bool {
        matches!(
            self,
            LockError::Drift { .. } | LockError::InputsDrift { .. }
        )
    }
}

impl LockFile {
    pub fn read(path: &Path) -> Result<LockFile, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let lock: LockFile = toml::from_str(&text).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if lock.version != 1 {
            return Err(LockError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "version {} (this hoist writes and reads version 1)",
                    lock.version
                ),
            });
        }
        Ok(lock)
    }

    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let body = toml::to_string(self).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let text =
            format!("# hoist.lock: every axis pinned by digest. Written by `hoist lock`.\n{body}");
        std::fs::write(path, text).map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The pinned digest for `axis`, which must be recorded for `reference`.
    pub fn pinned(&self, axis: &str, reference: &str, path: &Path) -> Result<&Digest, LockError> {
        match self.axes.get(axis) {
            Some(p) if p.reference == reference => Ok(&p.digest),
            _ => Err(LockError::Unpinned {
                axis: axis.to_string(),
                reference: reference.to_string(),
                path: path.to_path_buf(),
            }),
        }
    }

    /// Compare the build inputs of `axis` (a `dockerfile:` reference,
    /// `file` its Dockerfile) with those pinned.
    pub fn check_inputs(
        &self,
        axis: &str,
        reference: &str,
        file: &Path,
        found: &Digest,
        path: &Path,
    ) -> Result<(), LockError> {
        self.pinned(axis, reference, path)?;
        let unpinned = || LockError::Unpinned {
            axis: axis.to_string(),
            reference: reference.to_string(),
            path: path.to_path_buf(),
        };
        let pinned = self.axes[axis].inputs.as_ref().ok_or_else(unpinned)?;
        if pinned == found {
            return Ok(());
        }
        Err(LockError::InputsDrift {
            axis: axis.to_string(),
            reference: reference.to_string(),
            file: file.to_path_buf(),
            pinned: pinned.clone(),
            found: found.clone(),
            path: path.to_path_buf(),
        })
    }

    /// Compare what `axis` resolved to with its pin.
    pub fn check(
        &self,
        axis: &str,
        reference: &str,
        found: &Digest,
        path: &Path,
    ) -> Result<(), LockError> {
        let pinned = self.pinned(axis, reference, path)?;
        if pinned == found {
            return Ok(());
        }
        Err(LockError::Drift {
            axis: axis.to_string(),
            reference: reference.to_string(),
            pinned: pinned.clone(),
            found: found.clone(),
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const B: &str = "sha256:a3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trip_and_drift() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hoist.lock");
        let mut lock = LockFile {
            version: 1,
            ..Default::default()
        };
        lock.axes.insert(
            "agent".into(),
            Pin {
                reference: "r/a:1".into(),
                digest: A.parse().unwrap(),
                inputs: None,
            },
        );
        lock.axes.insert(
            "gateway".into(),
            Pin {
                reference: "dockerfile:gw".into(),
                digest: A.parse().unwrap(),
                inputs: Some(B.parse().unwrap()),
            },
        );
        lock.write(&path).unwrap();
        let back = LockFile::read(&path).unwrap();
        assert_eq!(back, lock);
        assert!(back
            .check("agent", "r/a:1", &A.parse().unwrap(), &path)
            .is_ok());
        let e = back
            .check("agent", "r/a:1", &B.parse().unwrap(), &path)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("agent") && msg.contains(A) && msg.contains(B),
            "{msg}"
        );
        assert!(matches!(
            back.check("benchmark", "x", &A.parse().unwrap(), &path),
            Err(LockError::Unpinned { .. })
        ));
    }

    #[test]
    fn changed_build_inputs_are_drift_naming_the_file() {
        let path = Path::new("hoist.lock");
        let mut lock = LockFile {
            version: 1,
            ..Default::default()
        };
        let pin = |inputs: Option<&str>| Pin {
            reference: "dockerfile:ag".into(),
            digest: A.parse().unwrap(),
            inputs: inputs.map(|d| d.parse().unwrap()),
        };
        lock.axes.insert("agent".into(), pin(Some(B)));
        let file = Path::new("ag/Dockerfile");
        let check = |lock: &LockFile, found: &str| {
            lock.check_inputs(
                "agent",
                "dockerfile:ag",
                file,
                &found.parse().unwrap(),
                path,
            )
        };
        assert!(check(&lock, B).is_ok());
        let e = check(&lock, A).unwrap_err();
        assert!(e.is_drift(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("ag/Dockerfile") && msg.contains("dockerfile:ag"),
            "{msg}"
        );
        lock.axes.insert("agent".into(), pin(None));
        assert!(matches!(check(&lock, B), Err(LockError::Unpinned { .. })));
    }

    #[test]
    fn refuses_bad_digest_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hoist.lock");
        std::fs::write(
            &path,
            "version = 1\n[agent]\nref = \"x\"\ndigest = \"sha256:../../etc\"\n",
        )
        .unwrap();
        assert!(matches!(
            LockFile::read(&path),
            Err(LockError::Parse { .. })
        ));
        std::fs::write(&path, "version = 2\n").unwrap();
        assert!(matches!(
            LockFile::read(&path),
            Err(LockError::Parse { .. })
        ));
    }
}
