//! `hoist completions SHELL`: the shell's completion script on stdout,
//! generated from the clap definitions (clap_complete), as `podman
//! completion SHELL` and `rustup completions SHELL` print theirs.

use anyhow::Context as _;
use clap::Args;
use clap_complete::Shell;
use hoist::exit::ExitStatus;

#[derive(Args)]
#[command(after_help = "The script is printed as is; --json does not apply.

Examples:
  hoist completions bash > ~/.local/share/bash-completion/completions/hoist
  hoist completions zsh > ~/.zfunc/_hoist        # with fpath+=(~/.zfunc) before compinit
  hoist completions fish > ~/.config/fish/completions/hoist.fish")]
pub struct CompletionsArgs {
    /// The shell whose completion script to print.
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> anyhow::Result<ExitStatus> {
    outln!("{}", script(args.shell)?)?;
    Ok(ExitStatus::Success)
}

/// The completion script of `shell`, without the internal commands.
pub fn script(shell: Shell) -> anyhow::Result<String> {
    let mut cmd = super::public_command();
    let mut bytes = Vec::new();
    clap_complete::generate(shell, &mut cmd, "hoist", &mut bytes);
    let text =
        String::from_utf8(bytes).with_context(|| format!("the {shell} completion script"))?;
    Ok(text.trim_end().to_string())
}
