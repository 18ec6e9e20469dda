//! Where to reach a registry: plain HTTP or TLS, mirrors, extra CAs, and the
//! `registries.conf` that podman and skopeo read (containers-registries.conf(5),
//! version 2, plus the version 1 `[registries.insecure]` table).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Everything that decides how hoist talks to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Hosts (`host[:port]`) allowed plain HTTP and unverified TLS.
    pub insecure: Vec<String>,
    /// Mirrors tried before the origin, in order.
    pub mirrors: Vec<Mirror>,
    /// Extra PEM CA bundles trusted besides the system roots.
    pub ca_files: Vec<PathBuf>,
    pub retry: RetryPolicy,
    /// A body that delivers nothing for this long is a failed attempt.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// `registries.conf` rules, applied after the explicit flags.
    pub conf: RegistriesConf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The registry host this mirror serves, e.g. `docker.io`.
    pub host: String,
    /// Base URL of the mirror, e.g. `http://127.0.0.1:5001`.
    pub url: Url,
    /// Whether tags (not only digests) may be resolved through it.
    pub tags: bool,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with up to 50% jitter so concurrent pulls spread
    /// out; a server's `Retry-After` wins when it asks for longer.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let jitter = exp.mul_f64(rand::random::<f64>() * 0.5);
        let backoff = exp + jitter;
        match retry_after {
            Some(ra) => ra.min(Duration::from_secs(60)).max(backoff),
            None => backoff,
        }
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: vec![],
            mirrors: vec![],
            ca_files: vec![],
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            conf: RegistriesConf::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--mirror {0:?}: expected HOST=URL, e.g. docker.io=http://127.0.0.1:5001")]
    MirrorSyntax(String),
    #[error("--mirror {arg:?}: {source}")]
    MirrorUrl {
        arg: String,
        source: url::ParseError,
    },
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid registries.conf: {source}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

/// Parse `--mirror HOST=URL`.
pub fn parse_mirror(arg: &str) -> Result<Mirror, ConfigError> {
    let (host, url) = arg
        .split_once('=')
        .filter(|(h, u)| !h.is_empty() && !u.is_empty())
        .ok_or_else(|| ConfigError::MirrorSyntax(arg.to_string()))?;
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let url = Url::parse(&url).map_err(|source| ConfigError::MirrorUrl {
        arg: arg.to_string(),
        source,
    })?;
    Ok(Mirror {
        host: host.to_string(),
        url,
        tags: true,
    })
}

/// Loopback hosts may use plain HTTP without being named insecure, as
/// Docker treats 127.0.0.0/8.
pub fn is_loopback(host: &str) -> bool {
    let name = strip_port(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// One place a registry's content can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:port` (a mirror may add a path prefix).
    pub base: Url,
    /// Plain HTTP may be tried, and TLS errors tolerated, for this one.
    pub insecure: bool,
    /// Repository name at this endpoint (a `location` rewrite may change it).
    pub repository: String,
    pub is_mirror: bool,
    /// Whether tags may be resolved here (`pull-from-mirror = digest-only`).
    pub tags: bool,
}

impl RegistryOptions {
    fn host_insecure(&self, host: &str) -> bool {
        self.insecure
            .iter()
            .any(|h| h == host || h == strip_port(host))
            || self.conf.insecure(host)
    }

    /// The endpoints for `host/repository`, mirrors first, then the origin.
    /// Docker Hub's API lives at `registry-1.docker.io`.
    pub fn endpoints(&self, host: &str, repository: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for m in self.mirrors.iter().filter(|m| m.host == host) {
            let mh = m.url.host_str().unwrap_or_default();
            out.push(Endpoint {
                base: m.url.clone(),
                insecure: self.host_insecure(mh) || m.url.scheme() == "http",
                repository: repository.to_string(),
                is_mirror: true,
                tags: m.tags,
            });
        }
        let (origin_host, origin_repo, conf_mirrors, rest) = self.conf.rewrite(host, repository);
        for m in conf_mirrors {
            // A mirror's location replaces the matched prefix.
            let full = format!("{}{}", m.location.trim_end_matches('/'), rest);
            let Some((mhost, mrepo)) = full.split_once('/') else {
                continue;
            };
            let (mhost, mrepo) = (mhost.to_string(), mrepo.to_string());
            if let Ok(base) = Url::parse(&format!("https://{mhost}")) {
                out.push(Endpoint {
                    base,
                    insecure: m.insecure || is_loopback(&mhost),
                    repository: mrepo,
                    is_mirror: true,
                    tags: m.pull_from_mirror.as_deref() != Some("digest-only"),
                });
            }
        }
        let api_host = if origin_host == crate::reference::DOCKER_HUB {
            "registry-1.docker.io".to_string()
        } else {
            origin_host.clone()
        };
        if let Ok(base) = Url::parse(&format!("https://{api_host}")) {
            out.push(Endpoint {
                base,
                insecure: self.host_insecure(&origin_host) || is_loopback(&origin_host),
                repository: origin_repo,
                is_mirror: false,
                tags: true,
            });
        }
        out
    }
}

/// The parts of registries.conf hoist honours.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RegistriesConf {
    #[serde(default, rename = "registry")]
    pub registries: Vec<ConfRegistry>,
    #[serde(default, rename = "registries")]
    pub v1: Option<ConfV1>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfV1 {
    #[serde(default)]
    pub insecure: Option<ConfV1List>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfV1List {
    #[serde(default)]
    pub registries: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfRegistry {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<ConfMirror>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfMirror {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub pull_from_mirror: Option<String>,
}

impl ConfRegistry {
    fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref().or(self.location.as_deref())
    }
}

impl RegistriesConf {
    /// Read `/etc/containers/registries.conf` then the user's
    /// `~/.config/containers/registries.conf`; entries of the later file
    /// come first, so they win on equal prefixes. A missing file is fine.
    pub fn load_default() -> Result<RegistriesConf, ConfigError> {
        let mut paths = vec![PathBuf::from("/etc/containers/registries.conf")];
        if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
            paths = vec![PathBuf::from(p)];
        } else if let Some(home) = std::env::var_os("HOME") {
            paths.push(Path::new(&home).join(".config/containers/registries.conf"));
        }
        let mut merged = RegistriesConf::default();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ConfigError::Read { path, source }),
            };
            let conf = Self::parse(&text).map_err(|source| ConfigError::Toml {
                path: path.clone(),
                source: Box::new(source),
            })?;
            let mut regs = conf.registries;
            regs.append(&mut merged.registries);
            merged.registries = regs;
            if conf.v1.is_some() {
                merged.v1 = conf.v1;
            }
        }
        Ok(merged)
    }

    pub fn parse(text: &str) -> Result<RegistriesConf, toml::de::Error> {
        toml::from_str(text)
    }

    /// The longest-prefix entry for `host/repo`, as containers/image does.
    fn find(&self, host: &str, repo: &str) -> Option<&ConfRegistry> {
        let full = format!("{host}/{repo}");
        self.registries
            .iter()
            .filter(|r| {
                r.prefix().is_some_and(|p| {
                    full == p
                        || full.starts_with(&format!("{}/", p.trim_end_matches('/')))
                        || p == host
                })
            })
            .max_by_key(|r| r.prefix().map_or(0, str::len))
    }

    fn insecure(&self, host: &str) -> bool {
        let v1 = self
            .v1
            .as_ref()
            .and_then(|v| v.insecure.as_ref())
            .is_some_and(|l| l.registries.iter().any(|h| h == host));
        v1 || self.registries.iter().any(|r| {
            r.insecure
                && r.prefix()
                    .is_some_and(|p| p == host || p.starts_with(&format!("{host}/")))
        })
    }

    /// Whether pulls from `host/repo` are blocked by configuration.
    pub fn blocked(&self, host: &str, repo: &str) -> bool {
        self.find(host, repo).is_some_and(|r| r.blocked)
    }

    /// Apply a `location` rewrite; returns the origin host and repository,
    /// the configured mirrors, and what follows the matched prefix (with
    /// its leading '/'), which a mirror's location is put before.
    fn rewrite(&self, host: &str, repo: &str) -> (String, String, Vec<ConfMirror>, String) {
        let full = format!("{host}/{repo}");
        let Some(entry) = self.find(host, repo) else {
            return (host.to_string(), repo.to_string(), vec![], String::new());
        };
        let mirrors = entry.mirrors.clone();
        let prefix = entry.prefix().unwrap_or(host);
        let rest = full.strip_prefix(prefix).unwrap_or(&full).to_string();
        let Some(location) = entry.location.as_deref() else {
            return (host.to_string(), repo.to_string(), mirrors, rest);
        };
        let rewritten = format!("{}{}", location.trim_end_matches('/'), rest);
        match rewritten.split_once('/') {
            Some((h, r)) => (h.to_string(), r.to_string(), mirrors, rest),
            None => (host.to_string(), repo.to_string(), mirrors, rest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_flag() {
        let m = parse_mirror("docker.io=http://127.0.0.1:5001").unwrap();
        assert_eq!(m.host, "docker.io");
        assert_eq!(m.url.as_str(), "http://127.0.0.1:5001/");
        assert!(parse_mirror("docker.io").is_err());
        assert!(parse_mirror("=x").is_err());
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("example.com"));
    }

    #[test]
    fn endpoints_order_and_docker_hub() {
        let mut o = RegistryOptions::default();
        o.mirrors
            .push(parse_mirror("docker.io=http://127.0.0.1:5001").unwrap());
        let e = o.endpoints("docker.io", "library/alpine");
        assert_eq!(e.len(), 2);
        assert!(e[0].is_mirror && e[0].insecure);
        assert_eq!(e[1].base.as_str(), "https://registry-1.docker.io/");
        assert!(!e[1].insecure);
        let e = o.endpoints("example.com", "x");
        assert_eq!(e.len(), 1);
        assert!(!e[0].insecure);
        o.insecure.push("example.com".into());
        assert!(o.endpoints("example.com:5000", "x")[0].insecure);
    }

    #[test]
    fn registries_conf_v2_rules() {
        let conf = RegistriesConf::parse(
            r#"
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "example.com/team"
location = "internal.example.com/mirror/team"
[[registry.mirror]]
location = "127.0.0.1:6000/cache"
pull-from-mirror = "digest-only"
[[registry]]
location = "insecure.example.com"
insecure = true
[[registry]]
prefix = "blocked.example.com"
blocked = true
"#,
        )
        .unwrap();
        let o = RegistryOptions {
            conf,
            ..Default::default()
        };
        let e = o.endpoints("example.com", "team/app");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].repository, "cache/app");
        assert!(e[0].insecure && !e[0].tags);
        assert_eq!(e[1].base.host_str(), Some("internal.example.com"));
        assert_eq!(e[1].repository, "mirror/team/app");
        assert!(o.endpoints("insecure.example.com", "a")[0].insecure);
        assert!(o.conf.blocked("blocked.example.com", "x"));
        assert!(!o.conf.blocked("example.com", "other"));
    }

    #[test]
    fn registries_conf_v1_insecure() {
        let conf =
            RegistriesConf::parse("[registries.insecure]\nregistries = ['old.example.com']\n")
                .unwrap();
        assert!(conf.insecure("old.example.com"));
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, None) >= Duration::from_millis(250));
        assert!(p.delay(10, None) <= Duration::from_secs(15));
        assert!(p.delay(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
