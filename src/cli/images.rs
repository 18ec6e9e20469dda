//! `hoist images`: the store's images, with sizes and whether their layers
//! are unpacked.

use std::time::SystemTime;

use clap::Args;
use hoist::doctor::human_bytes;
use hoist::exit::ExitStatus;
use hoist::inspect::StoredImage;

use super::Global;

#[derive(Args)]
#[command(
    after_help = "SIZE sums the image's blobs in the store as downloaded (compressed); \
blobs two images share count for each. UNPACKED is how many of its layers the layer cache holds.

Examples:
  hoist images                                   # every image the store holds
  hoist images --json | jq -r '.[] | select(.layers_unpacked == 0) | .name'"
)]
pub struct ImagesArgs {}

pub fn run(global: &Global, _args: &ImagesArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let images = hoist::inspect::list(&store)?;
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&images)?)?;
    } else if !global.quiet {
        out!("{}", render(&images, SystemTime::now()))?;
    }
    Ok(ExitStatus::Success)
}

fn render(images: &[StoredImage], now: SystemTime) -> String {
    let rows: Vec<[String; 6]> = images
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.digest.hex()[..12].to_string(),
                i.platform.as_ref().map_or("-".into(), |p| p.to_string()),
                format!(
                    "{}{}",
                    human_bytes(i.size),
                    if i.complete { "" } else { " (incomplete)" }
                ),
                format!("{}/{}", i.layers_unpacked, i.layers),
                i.last_used_at.map_or("-".into(), |t| ago(now, t)),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "DIGEST",
        "PLATFORM",
        "SIZE",
        "UNPACKED",
        "LAST USED",
    ]
    .map(String::from);
    let mut widths = [0; 6];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `3 minutes ago`, as docker and podman show times.
fn ago(now: SystemTime, then: SystemTime) -> String {
    let s = now.duration_since(then).map_or(0, |d| d.as_secs());
    let (n, unit) = match s {
        0..60 => return "just now".into(),
        60..3600 => (s / 60, "minute"),
        3600..86_400 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_read_as_podman_shows_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| now - Duration::from_secs(s);
        assert_eq!(ago(now, at(5)), "just now");
        assert_eq!(ago(now, at(60)), "1 minute ago");
        assert_eq!(ago(now, at(7200)), "2 hours ago");
        assert_eq!(ago(now, at(3 * 86_400)), "3 days ago");
        assert_eq!(ago(now, now + Duration::from_secs(9)), "just now");
    }
}
