//! The byte pipeline under the tar parser:
//! blob → [`CountIn`] → decoder → buffer → [`Tap`] → tar.
//!
//! The tap hashes every uncompressed byte (the diff_id), enforces the
//! decompression bounds, and limits how much the tar parser may read while
//! it looks for the next entry (it buffers PAX records and GNU long names in
//! memory, so an unbounded header would be a memory bomb).

use std::cell::{Cell, RefCell};
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use crate::digest::{Digest, Hasher};

use super::error::BombKind;
use super::media::Compression;
use super::{Limits, UnpackError};

const BUF: usize = 256 * 1024;

/// Shared between the tap (owned by the tar parser) and the applier.
pub(crate) struct TapState {
    hasher: RefCell<Option<Hasher>>,
    compressed: Rc<Cell<u64>>,
    uncompressed: Cell<u64>,
    /// Bytes written to files (sparse entries expand beyond the stream).
    written: Cell<u64>,
    header_budget: Cell<Option<u64>>,
    fault: Cell<Option<Fault>>,
    limits: Limits,
    compression: Compression,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Bomb(BombKind),
    /// The blob or its decoder failed (not the tar parser).
    Stream,
}

impl TapState {
    /// Limits the bytes the parser may read until [`Self::disarm`].
    pub(crate) fn arm(&self, budget: u64) {
        self.header_budget.set(Some(budget));
    }

    pub(crate) fn disarm(&self) {
        self.header_budget.set(None);
    }

    pub(crate) fn compressed(&self) -> u64 {
        self.compressed.get()
    }

    pub(crate) fn uncompressed(&self) -> u64 {
        self.uncompressed.get()
    }

    pub(crate) fn finish(&self) -> Option<Digest> {
        self.hasher.borrow_mut().take().map(Hasher::finish)
    }

    /// Counts `n` bytes written to a file against the size cap.
    pub(crate) fn add_written(&self, n: u64) -> Result<(), UnpackError> {
        let total = self.written.get().saturating_add(n);
        self.written.set(total);
        if total > self.limits.max_uncompressed_bytes {
            return Err(self.bomb(BombKind::UncompressedSize));
        }
        Ok(())
    }

    fn bomb(&self, kind: BombKind) -> UnpackError {
        let limit = match kind {
            BombKind::UncompressedSize => self.limits.max_uncompressed_bytes,
            BombKind::Ratio => self.limits.max_ratio,
            BombKind::HeaderSize => super::HEADER_BUDGET,
        };
        UnpackError::BombLimit {
            kind,
            limit,
            compressed: self.compressed(),
            uncompressed: self.uncompressed(),
        }
    }

    /// Turns a read error seen by the parser into the error it really is:
    /// a bound the tap enforced, a corrupt compressed stream, or bad tar.
    pub(crate) fn read_error(&self, after: &str, source: io::Error) -> UnpackError {
        match self.fault.get() {
            Some(Fault::Bomb(kind)) => self.bomb(kind),
            Some(Fault::Stream) if self.compression == Compression::None => {
                UnpackError::io("<layer blob>", "read", source)
            }
            Some(Fault::Stream) => UnpackError::Decompress { source },
            None => UnpackError::Tar {
                after: after.to_string(),
                source,
            },
        }
    }

    fn account(&self, n: usize) -> Result<(), BombKind> {
        let total = self.uncompressed.get() + n as u64;
        self.uncompressed.set(total);
        if total > self.limits.max_uncompressed_bytes {
            return Err(BombKind::UncompressedSize);
        }
        let compressed = self.compressed.get();
        if self.compression != Compression::None
            && total > self.limits.ratio_grace_bytes
            && total / compressed.max(1) > self.limits.max_ratio
        {
            return Err(BombKind::Ratio);
        }
        if let Some(budget) = self.header_budget.get() {
            let left = budget.checked_sub(n as u64).ok_or(BombKind::HeaderSize)?;
            self.header_budget.set(Some(left));
        }
        Ok(())
    }
}

/// Counts the compressed bytes the decoder pulls from the blob.
struct CountIn<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// See the module documentation.
pub(crate) struct Tap<'r> {
    inner: Box<dyn Read + 'r>,
    state: Rc<TapState>,
}

impl Read for Tap<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(Fault::Bomb(_)) = self.state.fault.get() {
            return Err(io::Error::other("layer limit exceeded"));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.state.fault.set(Some(Fault::Stream));
                return Err(e);
            }
        };
        if let Some(h) = self.state.hasher.borrow_mut().as_mut() {
            h.update(&buf[..n]);
        }
        if let Err(kind) = self.state.account(n) {
            self.state.fault.set(Some(Fault::Bomb(kind)));
            return Err(io::Error::other(format!("layer {kind} limit exceeded")));
        }
        Ok(n)
    }
}

/// Builds the pipeline for `blob` (already checked for its magic bytes).
pub(crate) fn tap<'r>(
    blob: impl Read + 'r,
    compression: Compression,
    limits: &Limits,
    hasher: Hasher,
) -> Result<(Tap<'r>, Rc<TapState>), UnpackError> {
    let count = Rc::new(Cell::new(0));
    let counted = CountIn {
        inner: blob,
        count: count.clone(),
    };
    let inner: Box<dyn Read + 'r> = match compression {
        Compression::None => Box::new(BufReader::with_capacity(BUF, counted)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUF,
            // Multi-member, as Go's gzip reader (and so Docker) reads it.
            flate2::read::MultiGzDecoder::new(counted),
        )),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(counted)
                .map_err(|source| UnpackError::Decompress { source })?;
            Box::new(BufReader::with_capacity(BUF, decoder))
        }
    };
    let state = Rc::new(TapState {
        hasher: RefCell::new(Some(hasher)),
        compressed: count,
        uncompressed: Cell::new(0),
        written: Cell::new(0),
        header_budget: Cell::new(None),
        fault: Cell::new(None),
        limits: limits.clone(),
        compression,
    });
    let tap = Tap {
        inner,
        state: state.clone(),
    };
    Ok((tap, state))
}
