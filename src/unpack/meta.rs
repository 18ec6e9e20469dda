//! An entry's metadata: the ustar header with its PAX overrides
//! (POSIX.1-2008 pax "Extended Header Keywords"; `SCHILY.xattr.*` as GNU tar
//! and Go's archive/tar write them).

use std::io::Read;

use rustix::fs::{Timespec, Timestamps};

use super::UnpackError;

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Overlayfs reads these names as instructions (whiteouts, opaque and
/// redirect directories, metacopy), and hoist reads `user.hoist.owner` as
/// an entry's true owner. A layer must not be able to plant them: only
/// hoist's own whiteout translation and ownership records may.
const IGNORED_XATTR_PREFIXES: [&[u8]; 3] = [b"trusted.overlay.", b"user.overlay.", b"user.hoist."];

#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub times: TimesOf,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Seconds and nanoseconds of atime and mtime.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimesOf {
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
}

impl TimesOf {
    pub(crate) fn timestamps(&self) -> Timestamps {
        let ts = |(s, n): (i64, i64)| Timespec {
            tv_sec: s,
            tv_nsec: n as _,
        };
        Timestamps {
            last_access: ts(self.atime),
            last_modification: ts(self.mtime),
        }
    }
}

pub(crate) fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
) -> Result<Meta, UnpackError> {
    let bad = |reason: String| UnpackError::BadEntry {
        entry: name.to_string(),
        reason,
    };
    let header = entry.header();
    let mode = header
        .mode()
        .map_err(|e| bad(format!("bad mode field: {e}")))?
        & 0o7777;
    // The tar crate has already applied PAX uid/gid to the header.
    let uid = header
        .uid()
        .map_err(|e| bad(format!("bad uid field: {e}")))?;
    let gid = header
        .gid()
        .map_err(|e| bad(format!("bad gid field: {e}")))?;
    let id = |v: u64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|&v| v != u32::MAX)
            .ok_or_else(|| bad(format!("{what} {v} is out of range")))
    };
    let (uid, gid) = (id(uid, "uid")?, id(gid, "gid")?);
    let header_mtime = header
        .mtime()
        .map_err(|e| bad(format!("bad mtime field: {e}")))?;
    let mut mtime = (i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);
    let mut atime = None;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| bad(format!("bad PAX header: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| bad(format!("bad PAX record: {e}")))?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            match key {
                b"mtime" => {
                    mtime = parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime".into()))?
                }
                b"atime" => {
                    atime = Some(parse_pax_time(value).ok_or_else(|| bad("bad PAX atime".into()))?)
                }
                // PAX sparse files (GNU formats 0.1 and 1.0) would unpack as
                // their raw map and data: refuse rather than write wrong bytes.
                _ if key.starts_with(b"GNU.sparse.") => {
                    return Err(bad("PAX sparse files are not supported".into()))
                }
                _ => {
                    if let Some(xname) = key.strip_prefix(XATTR_PREFIX) {
                        if !xname.is_empty()
                            && !IGNORED_XATTR_PREFIXES.iter().any(|p| xname.starts_with(p))
                        {
                            xattrs.push((xname.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
    }
    // Docker sets atime to max(atime, mtime) (moby pkg/archive); the tree
    // digest ignores atime, but there is no reason to differ.
    let atime = atime.filter(|a| *a > mtime).unwrap_or(mtime);
    Ok(Meta {
        mode,
        uid,
        gid,
        times: TimesOf { atime, mtime },
        xattrs,
    })
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(match (neg, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_pax_time;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b""), None);
        assert_eq!(parse_pax_time(b"1e9"), None);
        assert_eq!(parse_pax_time(b"99999999999999999999999"), None);
    }
}
