//! The report as a user reads it: a summary, then one line per check and,
//! under each that is not ok, what it costs.

use super::Report;

/// The widest check name that sets the name column.
const NAME_WIDTH: usize = 24;

pub fn render(r: &Report) -> String {
    let mut s = format!(
        "hoist {} doctor: kernel {}, uid {}{}\n",
        r.hoist_version,
        r.kernel,
        r.uid,
        if r.in_container {
            ", inside a container"
        } else {
            ""
        }
    );
    s.push_str(&format!(
        "crane mode here: isolation {}, rootfs {}\n\n",
        r.isolation.as_str(),
        r.rootfs.as_str()
    ));
    // A long registry name overflows its line rather than widen them all.
    let width = r
        .checks
        .iter()
        .map(|c| c.name.len())
        .filter(|&n| n <= NAME_WIDTH)
        .max()
        .unwrap_or(0);
    for c in &r.checks {
        s.push_str(&format!(
            "{:<8}  {:<width$}  {}\n",
            c.status.as_str(),
            c.name,
            c.detail
        ));
        if let Some(cost) = &c.cost {
            s.push_str(&format!("{:<8}  {:<width$}  costs: {cost}\n", "", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        let text = render(&super::super::tests::sample_report());
        assert_eq!(
            text,
            "hoist 0.1.0 doctor: kernel 6.8.0, uid 0, inside a container\n\
             crane mode here: isolation chroot, rootfs copy\n\
             \n\
             ok        static_binary  /usr/local/bin/hoist\n\
             missing   overlayfs      no mount\n\
             \x20                        costs: copies\n"
        );
    }
}
