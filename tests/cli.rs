//! What the command line does with arguments hoist itself never passes:
//! no panic reaches a user (issue 14), a usage error says why.

mod support;

use std::process::Command;

use support::*;

#[test]
fn an_internal_stage_behind_a_global_flag_is_a_usage_error_not_a_panic() {
    for args in [
        &["--quiet", "__sandbox", "x"][..],
        &["--json", "__sandbox-probe"][..],
        &["--quiet", "__sandbox-chroot", "/nowhere"][..],
    ] {
        let o = Command::new(hoist_bin()).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("internal stages"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}
