//! `seccomp`: the filters this process runs under (`Seccomp` in
//! `/proc/self/status`), weighed against the sandbox probe's outcome.

use super::capabilities::status_field;
use super::{Check, Status};

const NAME: &str = "seccomp";

pub(super) fn check(status: &str, namespaces_ok: bool) -> Check {
    let filters = status_field(status, "Seccomp_filters").unwrap_or("?");
    match status_field(status, "Seccomp") {
        Some("0") => Check::ok(NAME, "no seccomp filter"),
        Some("2") if namespaces_ok => Check::ok(
            NAME,
            format!("{filters} filter(s) installed; they allow what namespaces isolation needs"),
        ),
        Some("2") => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("{filters} filter(s) installed (Docker's default profile refuses unshare and mount)"),
            "runs use chroot instead of namespaces; run the runner with --cap-add SYS_ADMIN --security-opt seccomp=unconfined for namespaces",
        ),
        Some("1") => Check::not_ok(
            NAME,
            Status::Missing,
            "strict mode",
            "nothing but read, write and exit is allowed: hoist cannot run",
        ),
        other => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("unknown (Seccomp: {})", other.unwrap_or("absent")),
            "whether namespaces are refused is known only from the isolation probe",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\thoist\nCapEff:\t00000000a80425fb\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn verdicts() {
        assert_eq!(check("Seccomp:\t0\n", false).status, Status::Ok);
        assert_eq!(check(STATUS, true).status, Status::Ok);
        let c = check(STATUS, false);
        assert_eq!(c.status, Status::Degraded);
        assert!(c.cost.unwrap().contains("seccomp=unconfined"));
        assert_eq!(check("Seccomp:\t1\n", false).status, Status::Missing);
        assert_eq!(check("", false).status, Status::Degraded);
    }
}
