//! SIGINT, SIGTERM and SIGHUP (docs/exit-codes.md: exit 129, 130 or 143,
//! the sandbox torn down first).
//!
//! [`install`] takes the three signals for the whole process. While no run
//! holds anything that must be taken down (pulling, planning), a signal
//! ends hoist at once: what the store holds is written atomically, so
//! nothing is lost. While a run has a tree, a sandbox or a container (it
//! holds a [`Region`]), the signal is only recorded: the run's waits see
//! [`pending`], kill what they started, take their trees down, write the
//! result as an infrastructure error at stage `interrupted`, and the
//! command exits `128 + signal`. Further signals while that happens are
//! said and otherwise ignored: giving up half-way is what left sandboxes
//! running before.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The first signal received, 0 while none was.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// How many regions are open; the signal thread decides under this lock,
/// so no region opens between its check and its exit.
static OPEN: Mutex<usize> = Mutex::new(0);

/// A signal that interrupted the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", self.name())]
pub struct Interrupted(pub i32);

impl Interrupted {
    pub fn name(self) -> &'static str {
        match self.0 {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            SIGHUP => "SIGHUP",
            _ => "a signal",
        }
    }

    /// What a shell reports for a death by this signal (130 for SIGINT,
    /// 143 for SIGTERM).
    pub fn exit_code(self) -> u8 {
        u8::try_from(128 + self.0).unwrap_or(1)
    }
}

/// Take SIGINT, SIGTERM and SIGHUP for the process (once; later calls do
/// nothing). A thread of its own handles them, outside signal context.
pub fn install() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let _ = INSTALLED.set(());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                received(sig);
            }
        })?;
    Ok(())
}

fn received(sig: i32) {
    let first = RECEIVED
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    let open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let name = Interrupted(sig).name();
    if *open == 0 {
        crate::errln!("hoist: interrupted by {name}");
        let code = Interrupted(RECEIVED.load(Ordering::SeqCst)).exit_code();
        std::process::exit(i32::from(code));
    }
    if first {
        crate::errln!("hoist: interrupted by {name}: stopping the sandbox and taking it down");
    } else {
        crate::errln!("hoist: {name}: still taking the sandbox down; it ends on its own");
    }
}

/// The signal that interrupted the command, if one did.
pub fn pending() -> Option<Interrupted> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(Interrupted(sig)),
    }
}

/// `Err` once a signal came.
pub fn check() -> Result<(), Interrupted> {
    pending().map_or(Ok(()), Err)
}

/// Resolves when a signal has come, looked for every tenth of a second:
/// for a `select!` beside work that a signal should abandon (a pull, a
/// container's wait).
pub async fn signalled() -> Interrupted {
    loop {
        if let Some(sig) = pending() {
            return sig;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// While one is held, a signal is left to the holder to act on.
#[derive(Debug)]
pub struct Region(());

impl Region {
    /// Open a region, unless a signal came already.
    pub fn enter() -> Result<Region, Interrupted> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        check()?;
        *open += 1;
        Ok(Region(()))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        *open = open.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_shells() {
        assert_eq!(Interrupted(SIGINT).exit_code(), 130);
        assert_eq!(Interrupted(SIGTERM).exit_code(), 143);
        assert_eq!(Interrupted(SIGHUP).exit_code(), 129);
        assert_eq!(Interrupted(SIGINT).to_string(), "interrupted by SIGINT");
    }
}
