//! The `hoist` binary: parse the command line, hand off to the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main().into()
}
