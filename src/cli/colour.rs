//! When hoist colours what it prints: only on a terminal, and never when
//! `NO_COLOR` is set to anything but the empty string (no-color.org).
//! Colour is a reading aid for a person; a log file, a pipe or a CI
//! transcript gets plain text.

use std::io::IsTerminal as _;

/// Whether `NO_COLOR` asks for no colour (set, and not empty).
fn refused() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether what goes to stdout may be coloured.
pub fn stdout() -> bool {
    !refused() && std::io::stdout().is_terminal()
}

/// Whether what goes to stderr (warnings, errors) may be coloured.
pub fn stderr() -> bool {
    !refused() && std::io::stderr().is_terminal()
}

/// The colours hoist uses (SGR codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    Green = 32,
    Red = 31,
    Yellow = 33,
}

/// `text` in `colour` when `on`, else as it is.
pub fn paint(on: bool, colour: Colour, text: &str) -> String {
    match on {
        true => format!("\x1b[{}m{text}\x1b[0m", colour as u8),
        false => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_only_when_on() {
        assert_eq!(paint(false, Colour::Green, "RESOLVED"), "RESOLVED");
        assert_eq!(paint(true, Colour::Red, "x"), "\x1b[31mx\x1b[0m");
    }
}
