//! The `hoist` binary: parse the command line, hand off to the library.

#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main().into()
}
