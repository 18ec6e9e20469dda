//! `confinement`: what every phase's confinement gets here (Landlock,
//! seccomp; see `crate::confine`).

use super::{Check, Status};
use crate::confine::{Shared, Support};

const NAME: &str = "confinement";

pub(super) fn read() -> Support {
    Support::probe(crate::confine::abi_pin_from_env())
}

pub(super) fn check(s: &Support) -> Check {
    let detail = format!(
        "Landlock ABI {} (kernel {}), seccomp filters {}",
        s.landlock_abi,
        s.kernel_landlock_abi,
        if s.seccomp { "yes" } else { "no" }
    );
    // chroot isolation shares the most: what it lacks, every mode lacks.
    let gaps = s.gaps(Shared::of(true, false));
    if gaps.is_empty() {
        Check::ok(NAME, detail)
    } else {
        Check::not_ok(NAME, Status::Degraded, detail, &gaps.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_landlock_or_seccomp_is_degraded() {
        let none = Support {
            landlock_abi: 0,
            kernel_landlock_abi: 0,
            seccomp: false,
        };
        let c = check(&none);
        assert_eq!(c.status, Status::Degraded, "{c:?}");
        assert_eq!(c.detail, "Landlock ABI 0 (kernel 0), seccomp filters no");
        assert!(!c.cost.unwrap().is_empty());
    }
}
