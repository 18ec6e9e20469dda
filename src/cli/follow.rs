//! `hoist run --follow`: the agent session's `install.log` and
//! `agent.log`, line by line on stderr as they grow (crane mode), or as
//! soon as the host has them (container mode: when the session ends).
//!
//! Their bytes are the sandbox's. A hostile agent could write escape
//! sequences that retitle the terminal, rewrite what is on screen, set
//! its clipboard (OSC 52) or answer-back queries into the user's shell;
//! so every line is [`neutralise`]d before it is printed: no ESC, no C0
//! or C1 control is ever written, only printable text and tabs. The files
//! are opened beneath the directory the run names, never through a link,
//! and only when they are regular files (a device node or fifo in their
//! place is never opened).

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hoist::beneath::{self, Access};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The logs followed, in the order a session writes them, and the label
/// each line is printed with.
const LOGS: [(&str, &str); 2] = [("install.log", "install"), ("agent.log", "agent")];

/// How often the logs are read while the session runs.
const POLL: Duration = Duration::from_millis(200);

/// The longest line kept before it is printed anyway: an agent that never
/// writes a newline must not grow hoist's memory without bound.
const MAX_LINE: usize = 4096;

/// Where followed lines go: above the progress line on a terminal, plain
/// stderr off one.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// Follows one session's logs at a time, on a thread of its own.
pub struct Follow {
    sink: Sink,
    running: Mutex<Option<Tail>>,
}

struct Tail {
    /// Dropped to end the tail (nothing is ever sent).
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Follow {
    pub fn new(sink: Sink) -> Follow {
        Follow {
            sink,
            running: Mutex::new(None),
        }
    }

    /// Start following the logs in `rel` beneath `base`.
    pub fn start(&self, base: &Path, rel: &str) {
        self.end();
        let (stop, stopped) = mpsc::channel();
        let (base, rel, sink) = (base.to_path_buf(), rel.to_string(), self.sink.clone());
        let spawned = std::thread::Builder::new()
            .name("follow-logs".into())
            .spawn(move || tail(&base, &rel, &sink, &stopped));
        match spawned {
            Ok(thread) => *self.lock() = Some(Tail { stop, thread }),
            // Following is not worth failing the run over; the logs are in
            // OUT/task when it ends.
            Err(e) => (self.sink)(&format!("hoist: cannot follow the logs: {e}")),
        }
    }

    /// Print what is left of the logs and stop; again is harmless.
    pub fn end(&self) {
        let Some(Tail { stop, thread }) = self.lock().take() else {
            return;
        };
        drop(stop);
        if thread.join().is_err() {
            tracing::debug!("the log follower panicked");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tail>> {
        // A follower that panicked left no half-made state behind.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Read the logs every [`POLL`] until `stopped` says the session ended,
/// then once more, to the end.
fn tail(base: &Path, rel: &str, sink: &Sink, stopped: &mpsc::Receiver<()>) {
    let mut logs: Vec<Log> = LOGS.iter().map(|(n, l)| Log::new(n, l)).collect();
    let mut dir: Option<OwnedFd> = None;
    loop {
        let over = !matches!(stopped.recv_timeout(POLL), Err(RecvTimeoutError::Timeout));
        if dir.is_none() {
            dir = open_logs_dir(base, rel);
        }
        if let Some(d) = &dir {
            for log in &mut logs {
                log.read(d, sink);
            }
        }
        if over {
            for log in &mut logs {
                log.flush(sink);
            }
            return;
        }
    }
}

/// `rel` beneath `base`, no link followed; none while it is not there.
fn open_logs_dir(base: &Path, rel: &str) -> Option<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let base_fd = rustix::fs::open(base, flags, Mode::empty()).ok()?;
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() {
        return Some(base_fd);
    }
    beneath::open_dir(base_fd.as_fd(), &comps, false, Access::Read).ok()
}

/// One log: its file once it is there (and which file that is), and the
/// line read so far.
struct Log {
    name: &'static str,
    label: &'static str,
    file: Option<(File, FileId)>,
    partial: Vec<u8>,
}

/// A file's identity: device and inode.
type FileId = (u64, u64);

impl Log {
    fn new(name: &'static str, label: &'static str) -> Log {
        Log {
            name,
            label,
            file: None,
            partial: Vec::new(),
        }
    }

    /// Print the whole lines added since the last read. The supervisor
    /// makes each log anew (a chroot rootfs may have shipped one at that
    /// name): once the name is another file, the old one is read to its
    /// end and the new one followed.
    fn read(&mut self, dir: &OwnedFd, sink: &Sink) {
        self.drain(sink);
        let now = open_regular(dir, self.name);
        let known = self.file.as_ref().map(|(_, id)| *id);
        if let Some((fd, id)) = now.filter(|(_, id)| Some(*id) != known) {
            self.flush(sink);
            self.file = Some((File::from(fd), id));
            self.drain(sink);
        }
    }

    /// Read the open file to its current end.
    fn drain(&mut self, sink: &Sink) {
        let Some((mut file, id)) = self.file.take() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.take(&buf[..n], sink),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, log = self.name, "reading a followed log");
                    break;
                }
            }
        }
        self.file = Some((file, id));
    }

    fn take(&mut self, bytes: &[u8], sink: &Sink) {
        for &b in bytes {
            if b == b'\n' {
                self.emit(sink);
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    self.emit(sink);
                }
            }
        }
    }

    /// The last line, if it had no newline.
    fn flush(&mut self, sink: &Sink) {
        if !self.partial.is_empty() {
            self.emit(sink);
        }
    }

    fn emit(&mut self, sink: &Sink) {
        sink(&format!("{} | {}", self.label, neutralise(&self.partial)));
        self.partial.clear();
    }
}

/// Open `name` in `dir` for reading if it is a regular file of one link
/// (as the export copies only those): never a link, and never a device
/// node or fifo, whose open alone can act.
fn open_regular(dir: &OwnedFd, name: &str) -> Option<(OwnedFd, FileId)> {
    let plain = |st: &rustix::fs::Stat| {
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink == 1
    };
    let seen = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    if !plain(&seen) {
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = beneath::open_file(dir.as_fd(), name, flags, Mode::empty()).ok()?;
    let now = rustix::fs::fstat(&fd).ok()?;
    let id = (now.st_dev, now.st_ino);
    (plain(&now) && id == (seen.st_dev, seen.st_ino)).then_some((fd, id))
}

/// A line of the sandbox's as text that cannot drive a terminal.
/// Escape sequences (CSI such as colours and cursor moves; OSC, DCS, APC,
/// PM and SOS strings; two-character ESC sequences) are removed whole;
/// any other control character (C0 but tab, DEL, C1, a lone ESC) is
/// shown as `\xNN` or `\u{NN}`. Bytes that are not UTF-8 are shown as
/// U+FFFD. A carriage return that ends the line (CRLF) is dropped.
pub fn neutralise(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    chars.next();
                    skip_string(&mut chars);
                }
                // ESC and one final character (ESC c resets the terminal,
                // ESC 7/8 save and restore the cursor).
                Some(&f) if ('\x20'..='\x7e').contains(&f) => {
                    chars.next();
                    // ESC SP..'/' takes one more (character set choices).
                    if ('\x20'..='\x2f').contains(&f) {
                        chars.next_if(|c| ('\x30'..='\x7e').contains(c));
                    }
                }
                _ => out.push_str("\\x1b"),
            },
            '\t' => out.push('\t'),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\u{{{:02x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The rest of a CSI sequence: parameter and intermediate bytes, then its
/// final byte; a character outside them ends it (and is kept).
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| ('\x20'..='\x3f').contains(c)).is_some() {}
    chars.next_if(|c| ('\x40'..='\x7e').contains(c));
}

/// The rest of a string sequence (OSC, DCS, ...): up to BEL or ST (ESC
/// `\`), or the end of the line.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\x07' => return,
            '\x1b' => {
                chars.next_if_eq(&'\\');
                return;
            }
            _ => {}
        }
    }
}

/// Follow the logs in `dir` once, to their end: the lines printed.
#[cfg(test)]
fn lines_in(dir: &Path) -> Vec<String> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let follow = Follow::new(Arc::new(move |l: &str| {
        s.lock().unwrap().push(l.to_string())
    }));
    follow.start(dir, "");
    follow.end();
    let v = seen.lock().unwrap().clone();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        neutralise(s.as_bytes())
    }

    #[test]
    fn plain_text_and_tabs_pass() {
        assert_eq!(n("collected 3 items\tok é ✓"), "collected 3 items\tok é ✓");
        assert_eq!(n("windows line\r"), "windows line");
    }

    #[test]
    fn colours_and_cursor_moves_are_removed() {
        assert_eq!(n("\x1b[31mred\x1b[0m"), "red");
        assert_eq!(n("a\x1b[2J\x1b[H\x1b[?25lb"), "ab");
        assert_eq!(n("\x1b[38;5;196mx"), "x");
    }

    #[test]
    fn osc_dcs_and_apc_strings_are_removed() {
        // Retitle the window; set the clipboard (OSC 52); a hyperlink.
        assert_eq!(n("\x1b]0;pwned\x07after"), "after");
        assert_eq!(n("\x1b]52;c;cm0gLXJmIH4=\x1b\\after"), "after");
        assert_eq!(n("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"), "link");
        assert_eq!(n("\x1bP$q\"p\x1b\\x"), "x");
        assert_eq!(n("\x1b_apc\x1b\\x\x1b^pm\x07y"), "xy");
        // Unterminated: to the end of the line.
        assert_eq!(n("a\x1b]0;title"), "a");
    }

    #[test]
    fn two_character_sequences_are_removed() {
        assert_eq!(n("\x1bcreset"), "reset");
        assert_eq!(n("\x1b7\x1b8x"), "x");
        assert_eq!(n("\x1b(0x"), "x");
    }

    #[test]
    fn other_controls_are_shown_not_sent() {
        assert_eq!(n("bell\x07"), "bell\\x07");
        assert_eq!(n("a\rb"), "a\\x0db");
        assert_eq!(n("back\x08\x08"), "back\\x08\\x08");
        assert_eq!(n("del\x7f"), "del\\x7f");
        assert_eq!(n("lone\x1b"), "lone\\x1b");
        // C1 CSI, as UTF-8 (some terminals act on it) and as a raw byte.
        assert_eq!(n("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(neutralise(b"\x9b31m"), "\u{fffd}31m");
    }

    #[test]
    fn no_control_character_survives_any_input() {
        let mut all: Vec<u8> = (0u8..=255).collect();
        all.extend_from_slice("\u{9b}\u{85}\x1b[\x1b]".as_bytes());
        for start in 0..all.len() {
            let out = neutralise(&all[start..]);
            assert!(
                !out.chars()
                    .any(|c| c != '\t' && (c.is_control() || ('\u{80}'..='\u{9f}').contains(&c))),
                "{out:?}"
            );
        }
    }

    #[test]
    fn the_follower_prints_each_line_labelled_then_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("install.log"), "pip install\n").unwrap();
        std::fs::write(
            dir.path().join("agent.log"),
            "one\n\x1b]0;pwned\x07two\x1b[31m\nno newline",
        )
        .unwrap();
        assert_eq!(
            lines_in(dir.path()),
            [
                "install | pip install",
                "agent | one",
                "agent | two",
                "agent | no newline"
            ]
        );
    }

    #[test]
    fn links_and_fifos_are_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret\n").unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(&secret, logs.join("agent.log")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            logs.join("install.log"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(lines_in(&logs).is_empty());
        // Nor a directory reached through a link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&logs, &link).unwrap();
        std::fs::remove_file(logs.join("agent.log")).unwrap();
        std::fs::write(logs.join("agent.log"), "x\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let follow = Follow::new(Arc::new(move |l: &str| {
            s.lock().unwrap().push(l.to_string())
        }));
        follow.start(dir.path(), "link");
        follow.end();
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_log_made_anew_is_followed_after_the_old_ones_end() {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: Sink = Arc::new(move |l: &str| s.lock().unwrap().push(l.to_string()));
        let path = dir.path().join("agent.log");
        std::fs::write(&path, "shipped\nhalf").unwrap();
        let mut log = Log::new("agent.log", "agent");
        log.read(&fd, &sink);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        log.read(&fd, &sink);
        assert_eq!(
            *seen.lock().unwrap(),
            ["agent | shipped", "agent | half", "agent | fresh"]
        );
    }

    #[test]
    fn a_hard_link_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::write(dir.path().join("secret"), "host secret\n").unwrap();
        std::fs::hard_link(dir.path().join("secret"), logs.join("agent.log")).unwrap();
        assert!(lines_in(&logs).is_empty());
    }

    #[test]
    fn a_line_without_end_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.log"), vec![b'a'; MAX_LINE * 2 + 1]).unwrap();
        let lines = lines_in(dir.path());
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], "agent | a");
    }
}
