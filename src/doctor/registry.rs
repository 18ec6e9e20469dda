//! `registry:HOST`, one per `--registry`: whether the registry answers
//! `GET /v2/` as the pull client reaches it.

use std::time::Duration;

use super::{Check, Status};
use crate::registry::RegistryOptions;

const COST: &str = "images cannot be pulled from this registry";

/// What was asked of the registries.
pub(super) enum Facts {
    /// The async runtime could not start: nothing was asked.
    NoRuntime(String),
    Asked(Vec<Asked>),
}

/// One `--registry` argument and what came of it.
pub(super) struct Asked {
    arg: String,
    answer: Answer,
}

enum Answer {
    /// The argument names no registry.
    BadArg(String),
    /// `GET /v2/` at the host's endpoint: the URL and its status.
    Reply {
        host: String,
        reply: Result<(url::Url, u16), String>,
    },
}

pub(super) fn read(args: &[String], opts: &RegistryOptions) -> Facts {
    if args.is_empty() {
        return Facts::Asked(Vec::new());
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Facts::NoRuntime(format!("cannot start the async runtime: {e}")),
    };
    let ask = |arg: &String| Asked {
        arg: arg.clone(),
        answer: match host(arg) {
            Ok(host) => Answer::Reply {
                reply: rt.block_on(ping(&host, opts)),
                host,
            },
            Err(e) => Answer::BadArg(e),
        },
    };
    Facts::Asked(args.iter().map(ask).collect())
}

/// The registry host of a `--registry` argument: a host itself, or an
/// image reference whose host is taken.
fn host(arg: &str) -> Result<String, String> {
    if !arg.contains('/') && !arg.contains('@') {
        return Ok(arg.to_string());
    }
    match arg.parse::<crate::reference::Reference>() {
        Ok(crate::reference::Reference::Registry(r)) => Ok(r.registry),
        Ok(crate::reference::Reference::Layout(_)) => {
            Err("an oci: layout, not a registry".to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A `GET /v2/` status that means the registry is there: 200, or 401
/// (it wants credentials, which a pull would then send).
fn reachable(status: u16) -> bool {
    status == 200 || status == 401
}

pub(super) fn checks(f: &Facts) -> Vec<Check> {
    let asked = match f {
        Facts::NoRuntime(why) => {
            return vec![Check::not_ok(
                "registry",
                Status::Missing,
                why.clone(),
                "registries not checked",
            )]
        }
        Facts::Asked(asked) => asked,
    };
    asked.iter().map(check).collect()
}

fn check(a: &Asked) -> Check {
    let (host, reply) = match &a.answer {
        Answer::BadArg(e) => {
            return Check::not_ok(
                &format!("registry:{}", a.arg),
                Status::Missing,
                e.clone(),
                COST,
            )
        }
        Answer::Reply { host, reply } => (host, reply),
    };
    let name = format!("registry:{host}");
    match reply {
        Ok((url, status)) if reachable(*status) => Check::ok(
            &name,
            format!(
                "{url} answered {status}{}",
                if *status == 401 {
                    " (credentials required)"
                } else {
                    ""
                }
            ),
        ),
        Ok((url, status)) => Check::not_ok(
            &name,
            Status::Missing,
            format!("{url} answered {status}, not a registry's 200 or 401"),
            COST,
        ),
        Err(e) => Check::not_ok(&name, Status::Missing, e.clone(), COST),
    }
}

/// `GET /v2/` at `host`'s endpoint as the pull client reaches it: HTTPS
/// with the system roots and any `--ca-file`; plain HTTP when HTTPS does
/// not connect and the host is loopback or named insecure.
async fn ping(host: &str, opts: &RegistryOptions) -> Result<(url::Url, u16), String> {
    let ep = opts
        .endpoints(host, "library/x")
        .into_iter()
        .rfind(|e| !e.is_mirror)
        .ok_or_else(|| format!("{host}: no endpoint"))?;
    let named_insecure = opts
        .insecure
        .iter()
        .any(|h| h == host || Some(h.as_str()) == ep.base.host_str());
    let mut b = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(named_insecure);
    for path in &opts.ca_files {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let get = |mut base: url::Url, scheme: &str| {
        // Only http and https reach here; set_scheme fails for neither.
        let _ = base.set_scheme(scheme);
        let url = base.join("v2/").unwrap_or(base);
        let client = client.clone();
        async move {
            let r = client.get(url.clone()).send().await;
            (url, r)
        }
    };
    let (url, https) = get(ep.base.clone(), "https").await;
    match https {
        Ok(r) => Ok((url, r.status().as_u16())),
        Err(e) if ep.insecure && (e.is_connect() || e.is_request()) => {
            // As the pull client does; but when plain HTTP is no registry
            // either, HTTPS's own error is the one that explains.
            let https_err = format!("{url}: {}", error_chain(&e));
            let (url, http) = get(ep.base.clone(), "http").await;
            match http {
                Ok(r) if reachable(r.status().as_u16()) => Ok((url, r.status().as_u16())),
                Ok(r) => Err(format!("{https_err}; {url} answered {}", r.status())),
                Err(e) => Err(format!("{https_err}; {url}: {}", error_chain(&e))),
            }
        }
        Err(e) => Err(format!("{url}: {}", error_chain(&e))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_args() {
        assert_eq!(host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            host("127.0.0.1:5000/samples/pyfix@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            "127.0.0.1:5000"
        );
        assert_eq!(host("alpine/git").unwrap(), "docker.io");
        assert!(host("oci:/x:tag").is_err());
    }

    #[test]
    fn reachable_statuses() {
        assert!(reachable(200));
        assert!(reachable(401));
        assert!(!reachable(404));
        assert!(!reachable(503));
    }

    fn asked(arg: &str, answer: Answer) -> Asked {
        Asked {
            arg: arg.into(),
            answer,
        }
    }

    #[test]
    fn verdicts() {
        let url = url::Url::parse("https://r.example/v2/").unwrap();
        let reply = |r| Answer::Reply {
            host: "r.example".into(),
            reply: r,
        };
        let f = Facts::Asked(vec![
            asked("r.example", reply(Ok((url.clone(), 401)))),
            asked("r.example", reply(Ok((url.clone(), 404)))),
            asked("r.example", reply(Err("refused".into()))),
            asked(
                "oci:/x",
                Answer::BadArg("an oci: layout, not a registry".into()),
            ),
        ]);
        let c = checks(&f);
        assert_eq!(c[0].status, Status::Ok);
        assert_eq!(
            c[0].detail,
            "https://r.example/v2/ answered 401 (credentials required)"
        );
        assert_eq!(c[1].status, Status::Missing);
        assert!(c[1].detail.contains("not a registry's 200 or 401"));
        assert_eq!(c[2].name, "registry:r.example");
        assert_eq!(c[3].name, "registry:oci:/x");
        assert!(checks(&Facts::Asked(vec![])).is_empty());
        let c = checks(&Facts::NoRuntime(
            "cannot start the async runtime: x".into(),
        ));
        assert_eq!(c[0].name, "registry");
    }
}
