//! `static_binary`: the static hoist `hoist run` puts in the sandbox.

use std::path::PathBuf;

use super::{Check, Status};

pub(super) const NAME: &str = "static_binary";

/// The binary found, resolved, or why there is none.
pub(super) fn read(found: &Result<PathBuf, String>) -> Result<PathBuf, String> {
    found
        .as_ref()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .map_err(String::clone)
}

pub(super) fn check(found: &Result<PathBuf, String>) -> Check {
    match found {
        Ok(p) => Check::ok(NAME, format!("{} (runs inside any image)", p.display())),
        Err(e) => Check::not_ok(
            NAME,
            Status::Missing,
            e.clone(),
            "hoist run --mode crane cannot start the supervisor inside the sandbox",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_or_not() {
        let c = check(&Ok(PathBuf::from("/usr/local/bin/hoist")));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(c.detail, "/usr/local/bin/hoist (runs inside any image)");
        let c = check(&Err("dynamically linked".into()));
        assert_eq!(c.status, Status::Missing);
        assert_eq!(c.detail, "dynamically linked");
    }
}
