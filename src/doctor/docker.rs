//! `docker`: whether a Docker Engine answers on its socket, for container
//! mode and the conformance suite.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Check, Status};

const NAME: &str = "docker";
const COST: &str =
    "hoist run --mode container and hoist conformance need a Docker Engine; crane mode does not";

/// What was found: the socket (or why it was not looked at), and what the
/// engine answered there.
pub(super) struct Facts {
    socket: Result<PathBuf, String>,
    version: Result<(String, String), String>,
}

pub(super) fn read() -> Facts {
    let socket = socket(std::env::var("DOCKER_HOST").ok().as_deref());
    let version = match &socket {
        Ok(s) => version(s),
        Err(e) => Err(e.clone()),
    };
    Facts { socket, version }
}

/// The Docker Engine's unix socket: `DOCKER_HOST` when it is `unix://`,
/// else the default. `Err` names a `DOCKER_HOST` that is not a socket.
fn socket(docker_host: Option<&str>) -> Result<PathBuf, String> {
    match docker_host.filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from("/var/run/docker.sock")),
        Some(h) => h
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| format!("DOCKER_HOST={h} is not a unix socket; not checked")),
    }
}

/// The server version and API version from the raw HTTP answer to
/// `GET /version`.
fn parse_version(response: &str) -> Result<(String, String), String> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("not an HTTP answer")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the engine answered {status:?}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let field = |k: &str| v[k].as_str().map(str::to_string);
    match (field("Version"), field("ApiVersion")) {
        (Some(ver), Some(api)) => Ok((ver, api)),
        _ => Err("the answer has no Version and ApiVersion".into()),
    }
}

fn version(socket: &Path) -> Result<(String, String), String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let timeout = Some(Duration::from_secs(10));
    // Setting a timeout fails only for a zero duration.
    let _ = s.set_read_timeout(timeout);
    let _ = s.set_write_timeout(timeout);
    s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    parse_version(&String::from_utf8_lossy(&answer))
}

pub(super) fn check(f: &Facts) -> Check {
    let socket = match &f.socket {
        Ok(s) => s,
        Err(e) => return Check::not_ok(NAME, Status::Degraded, e.clone(), COST),
    };
    match &f.version {
        Ok((ver, api)) => Check::ok(
            NAME,
            format!("engine {ver} (API {api}) at {}", socket.display()),
        ),
        Err(e) => Check::not_ok(NAME, Status::Missing, e.clone(), COST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_from_docker_host() {
        assert_eq!(socket(None), Ok("/var/run/docker.sock".into()));
        assert_eq!(socket(Some("")), Ok("/var/run/docker.sock".into()));
        assert_eq!(
            socket(Some("unix:///run/user/1000/docker.sock")),
            Ok("/run/user/1000/docker.sock".into())
        );
        assert!(socket(Some("tcp://10.0.0.1:2376"))
            .unwrap_err()
            .contains("not a unix socket"));
    }

    #[test]
    fn version_answer() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Version\":\"20.10.24+dfsg1\",\"ApiVersion\":\"1.41\"}\n";
        assert_eq!(
            parse_version(ok),
            Ok(("20.10.24+dfsg1".into(), "1.41".into()))
        );
        let err = "HTTP/1.0 500 Internal Server Error\r\n\r\n{}";
        assert!(parse_version(err).unwrap_err().contains("500"));
        assert!(parse_version("garbage").is_err());
        assert!(parse_version("HTTP/1.0 200 OK\r\n\r\n{}").is_err());
    }

    #[test]
    fn verdicts() {
        let c = check(&Facts {
            socket: Ok("/var/run/docker.sock".into()),
            version: Ok(("24.0".into(), "1.43".into())),
        });
        assert_eq!(c.status, Status::Ok);
        assert_eq!(c.detail, "engine 24.0 (API 1.43) at /var/run/docker.sock");
        let c = check(&Facts {
            socket: Err("DOCKER_HOST=tcp://x is not a unix socket; not checked".into()),
            version: Err(String::new()),
        });
        assert_eq!(c.status, Status::Degraded);
        let c = check(&Facts {
            socket: Ok("/nope".into()),
            version: Err("/nope: No such file or directory (os error 2)".into()),
        });
        assert_eq!(c.status, Status::Missing);
    }
}
