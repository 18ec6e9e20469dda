//! Docker's side of the comparison: the tree of a container as
//! `docker export` gives it, the axis images loaded into the daemon with
//! `skopeo`, and the combination as `docker build` makes it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::listing::{self, Listing};
use super::{checked, output, slug, ConformanceError};
use crate::reference::{Reference, ReferenceError};
use crate::treedigest::read_dir_tree;

/// Where images this suite puts into the daemon are named.
pub const IMAGE_PREFIX: &str = "hoist-conformance";

/// The docker client: `HOIST_DOCKER`, else Debian's `/usr/bin/docker`
/// (a `/usr/local/bin/docker` may shadow it on PATH), else `docker`.
pub fn default_docker() -> PathBuf {
    if let Some(p) = std::env::var_os("HOIST_DOCKER") {
        return p.into();
    }
    let debian = Path::new("/usr/bin/docker");
    if debian.exists() {
        return debian.into();
    }
    "docker".into()
}

pub struct Docker {
    pub bin: PathBuf,
    /// Registry hosts skopeo may reach over plain HTTP or unverified TLS
    /// (`--insecure-registry`); loopback hosts always may.
    pub insecure: Vec<String>,
    /// Axis reference to the name it was loaded under, once per run.
    loaded: HashMap<String, String>,
}

impl Docker {
    pub fn new(bin: PathBuf, insecure: Vec<String>) -> Docker {
        Docker {
            bin,
            insecure,
            loaded: HashMap::new(),
        }
    }

    fn cmd(&self) -> Command {
        Command::new(&self.bin)
    }

    /// `docker create` a container of `image` (never started), export it
    /// to `work.tar`, extract that into `work` as tar does for root
    /// (ownership, modes, xattrs) and list it. The tar and, unless `keep`,
    /// the tree are removed again.
    pub fn export_listing(
        &self,
        image: &str,
        work: &Path,
        keep: bool,
    ) -> Result<Listing, ConformanceError> {
        let created = checked(
            self.cmd().args(["create", image, "/hoist-never-run"]),
            &format!("docker create {image}"),
        )?;
        let container = Container {
            docker: self,
            id: String::from_utf8_lossy(&created.stdout).trim().to_string(),
        };
        let tar = work.with_extension("tar");
        remove_all(work)?;
        fs::create_dir_all(work).map_err(ConformanceError::io(work))?;
        checked(
            self.cmd()
                .arg("export")
                .arg("-o")
                .arg(&tar)
                .arg(&container.id),
            &format!("docker export of a container of {image}"),
        )?;
        drop(container);
        let extracted = checked(
            Command::new("tar")
                .arg("-C")
                .arg(work)
                .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
                .arg(&tar),
            &format!("extracting {}", tar.display()),
        );
        fs::remove_file(&tar).map_err(ConformanceError::io(&tar))?;
        extracted?;
        let tree = read_dir_tree(work)?;
        if !keep {
            remove_all(work)?;
        }
        Ok(listing::from_tree(&tree))
    }

    /// The name under which the daemon has the image `reference` (an
    /// `oci:` layout or a registry image), copied in by skopeo when it is
    /// not there yet. Named by manifest digest, so a rebuilt sample is
    /// copied again and an unchanged one never is.
    pub fn load(&mut self, reference: &str) -> Result<String, ConformanceError> {
        if let Some(name) = self.loaded.get(reference) {
            return Ok(name.clone());
        }
        let source = skopeo_source(reference, &self.insecure)?;
        let mut inspect = skopeo();
        inspect.arg("inspect");
        if source.insecure {
            inspect.arg("--tls-verify=false");
        }
        let o = checked(
            inspect
                .args(["--format", "{{.Digest}}"])
                .arg(&source.transport),
            &format!("skopeo inspect {}", source.transport),
        )?;
        let digest = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let name = daemon_name(&super::matrix::short_name(reference), &digest);
        let present = output(
            self.cmd()
                .args(["image", "inspect", "--format", "{{.Id}}", &name]),
        )?;
        if !present.status.success() {
            let mut copy = skopeo();
            copy.args(["copy", "-q"]);
            if source.insecure {
                copy.arg("--src-tls-verify=false");
            }
            checked(
                copy.arg(&source.transport)
                    .arg(format!("docker-daemon:{name}")),
                &format!("skopeo copy {} docker-daemon:{name}", source.transport),
            )?;
        }
        self.loaded.insert(reference.to_string(), name.clone());
        Ok(name)
    }

    /// `docker build` of `dockerfile` with the classic builder (Docker
    /// 20.10 may have no BuildKit), in `dir`, which holds nothing else.
    pub fn build(&self, dockerfile: &str, dir: &Path, tag: &str) -> Result<(), ConformanceError> {
        remove_all(dir)?;
        fs::create_dir_all(dir).map_err(ConformanceError::io(dir))?;
        let file = dir.join("Dockerfile");
        fs::write(&file, dockerfile).map_err(ConformanceError::io(&file))?;
        checked(
            self.cmd()
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "-q", "-t", tag, "-f"])
                .arg(&file)
                .arg(dir),
            &format!("docker build -t {tag}"),
        )?;
        Ok(())
    }
}

/// A created container, removed when dropped (also on an error path).
struct Container<'a> {
    docker: &'a Docker,
    id: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        // Best effort: a leftover stopped container costs only disk, and
        // its removal failing must not hide the error being returned.
        let _ = output(self.docker.cmd().args(["rm", "-f", &self.id]));
    }
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // The images are the suite's own inputs, verified by digest by hoist;
    // no signature policy applies (and the host may have no policy.json).
    c.arg("--insecure-policy");
    c
}

pub(crate) fn remove_all(path: &Path) -> Result<(), ConformanceError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ConformanceError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A hoist reference as skopeo names it.
#[derive(Debug, PartialEq, Eq)]
pub struct SkopeoSource {
    pub transport: String,
    /// Plain HTTP or unverified TLS is allowed for this registry.
    pub insecure: bool,
}

/// `oci:PATH:TAG` is the same in both; a registry image is `docker://…`,
/// insecure when its host is loopback or listed.
pub fn skopeo_source(reference: &str, insecure: &[String]) -> Result<SkopeoSource, ReferenceError> {
    Ok(match reference.parse::<Reference>()? {
        Reference::Layout(_) => SkopeoSource {
            transport: reference.to_string(),
            insecure: false,
        },
        Reference::Registry(r) => {
            let host = r
                .registry
                .rsplit_once(':')
                .map_or(r.registry.as_str(), |(h, _)| h);
            // skopeo takes a tag or a digest, never both.
            let transport = match &r.digest {
                Some(d) => format!("docker://{}/{}@{d}", r.registry, r.repository),
                None => format!("docker://{r}"),
            };
            SkopeoSource {
                insecure: is_loopback(host)
                    || insecure.iter().any(|i| i == &r.registry || i == host),
                transport,
            }
        }
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// `hoist-conformance/<name>:<digest hex, 20>`.
pub fn daemon_name(short: &str, digest: &str) -> String {
    let hex = digest.rsplit(':').next().unwrap_or(digest);
    let name: String = slug(&short.to_lowercase())
        .trim_start_matches(['.', '-', '_'])
        .to_string();
    let name = if name.is_empty() {
        "image".into()
    } else {
        name
    };
    format!("{IMAGE_PREFIX}/{name}:{}", &hex[..hex.len().min(20)])
}

/// The combination as `docker build` makes it (issue 5): the benchmark,
/// then `/opt/agent` and `/opt/gateway` copied from the other images. The
/// arguments are names the daemon knows.
pub fn dockerfile(benchmark: &str, agent: &str, gateway: Option<&str>) -> String {
    let mut s = format!(
        "# Generated by hoist conformance: the combination image as docker build makes it.\n\
         FROM {benchmark}\n\
         COPY --from={agent} /opt/agent /opt/agent\n"
    );
    if let Some(g) = gateway {
        s.push_str(&format!("COPY --from={g} /opt/gateway /opt/gateway\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_copies_only_the_axis_subtrees() {
        assert_eq!(
            dockerfile("b:1", "a:2", Some("g:3")),
            "# Generated by hoist conformance: the combination image as docker build makes it.\n\
             FROM b:1\n\
             COPY --from=a:2 /opt/agent /opt/agent\n\
             COPY --from=g:3 /opt/gateway /opt/gateway\n"
        );
        assert!(!dockerfile("b:1", "a:2", None).contains("gateway"));
    }

    #[test]
    fn skopeo_sources() {
        assert_eq!(
            skopeo_source("oci:/s/oci:pyfix", &[]).unwrap(),
            SkopeoSource {
                transport: "oci:/s/oci:pyfix".into(),
                insecure: false
            }
        );
        let local = skopeo_source("127.0.0.1:5000/samples/pyfix:latest", &[]).unwrap();
        assert_eq!(
            local.transport,
            "docker://127.0.0.1:5000/samples/pyfix:latest"
        );
        assert!(local.insecure);
        let remote = skopeo_source("registry.example:443/x/y:1", &[]).unwrap();
        assert!(!remote.insecure);
        let listed = skopeo_source(
            "registry.example:443/x/y:1",
            &["registry.example:443".into()],
        )
        .unwrap();
        assert!(listed.insecure);
        let pinned = format!("127.0.0.1:5000/x:1@sha256:{}", "a".repeat(64));
        assert_eq!(
            skopeo_source(&pinned, &[]).unwrap().transport,
            format!("docker://127.0.0.1:5000/x@sha256:{}", "a".repeat(64))
        );
        let hub = skopeo_source("alpine", &[]).unwrap();
        assert_eq!(hub.transport, "docker://docker.io/library/alpine:latest");
        assert!(skopeo_source("Not A Ref", &[]).is_err());
    }

    #[test]
    fn daemon_names_are_valid_docker_names() {
        assert_eq!(
            daemon_name(
                "agent-oracle",
                "sha256:63174d44fae1f0710a3fb2ddf61488bc8bb9c487"
            ),
            "hoist-conformance/agent-oracle:63174d44fae1f0710a3f"
        );
        assert_eq!(
            daemon_name("Pyfix:V2", "sha256:ab"),
            "hoist-conformance/pyfix_v2:ab"
        );
        assert_eq!(
            daemon_name("@0123", "sha256:ab"),
            "hoist-conformance/0123:ab"
        );
    }
}
