//! `hoist man [DIR]`: the man pages, generated from the clap definitions
//! (clap_mangen), one per command as podman ships them: hoist.1,
//! hoist-run.1, hoist-store-verify.1, ... written to DIR; without DIR,
//! hoist.1 on stdout.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use hoist::exit::ExitStatus;

use super::Global;

#[derive(Args)]
#[command(
    after_help = "Pages already in DIR by the same names are replaced. With --json, \
the paths written are printed as a JSON array.

Examples:
  hoist man ~/.local/share/man/man1 && man hoist-run
  hoist man | man -l -                           # read hoist(1) without installing it
  sudo hoist man /usr/local/share/man/man1"
)]
pub struct ManArgs {
    /// The directory to write the pages to, created if missing (a man1
    /// directory of MANPATH, for `man hoist-run`).
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(global: &Global, args: &ManArgs) -> anyhow::Result<ExitStatus> {
    let pages = pages()?;
    let Some(dir) = &args.dir else {
        for (_, top) in pages.iter().take(1) {
            out!("{top}")?;
        }
        return Ok(ExitStatus::Success);
    };
    let written = write_pages(dir, &pages)?;
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&written)?)?;
    } else if !global.quiet {
        for path in &written {
            outln!("{}", path.display())?;
        }
    }
    Ok(ExitStatus::Success)
}

/// Every page, hoist.1 first, as (file name, roff text): the commands a
/// user can run, without the internal ones or clap's `help`.
pub fn pages() -> anyhow::Result<Vec<(String, String)>> {
    let mut cmd = super::public_command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    add_pages(&cmd, &mut pages)?;
    Ok(pages)
}

fn add_pages(cmd: &clap::Command, pages: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let name = man.get_filename();
    let mut roff = Vec::new();
    man.render(&mut roff)
        .with_context(|| format!("rendering {name}"))?;
    let text = String::from_utf8(roff).with_context(|| format!("rendering {name}"))?;
    pages.push((name, text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        add_pages(sub, pages)?;
    }
    Ok(())
}

fn write_pages(dir: &Path, pages: &[(String, String)]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, text) in pages {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
