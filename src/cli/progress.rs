//! Progress bars for blob downloads, shown only on a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use hoist::digest::Digest;
use hoist::pull::{NoProgress, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    /// Bars when stderr is a terminal and output is not quiet; else nothing.
    pub fn for_terminal(quiet: bool) -> Arc<dyn Progress> {
        if quiet || !std::io::stderr().is_terminal() {
            return Arc::new(NoProgress);
        }
        Arc::new(Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        })
    }
}

impl Progress for Bars {
    fn blob_started(&self, digest: &Digest, size: u64, resumed_from: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(digest.hex()[..12].to_string());
        bar.set_position(resumed_from);
        if let Ok(mut m) = self.bars.lock() {
            m.insert(digest.clone(), bar);
        }
    }

    fn blob_advanced(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.bars.lock().ok().and_then(|m| m.get(digest).cloned()) {
            b.inc(bytes);
        }
    }

    fn blob_finished(&self, digest: &Digest, _downloaded: bool) {
        if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(digest)) {
            b.finish_and_clear();
        }
    }
}
