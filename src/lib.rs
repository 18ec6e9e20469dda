//! hoist: run agent evaluations from OCI images without a container daemon.
//!
//! The modules follow the data's journey (README.md, "Layout"): a [`reference`]
//! is resolved by the [`registry`] client (or read from an OCI layout), its
//! blobs land in the content-addressed [`store`], layers are applied by
//! [`unpack`] into the layer cache, fused into a root filesystem, and run in a
//! sandbox by the task pipeline. The `cli` module in the binary is thin.

// Errors carry the facts a user needs (URLs, references, paths), which
// makes them larger than clippy likes; they are built once, on the cold
// path, so boxing every variant would buy nothing but noise.
#![allow(clippy::result_large_err)]
// `unsafe` lives in `sys` alone, each block with its SAFETY line, the two
// `pre_exec` hooks between fork and exec included.
#![deny(unsafe_code)]

/// `eprintln!` that never panics: a closed or broken stderr (`2>&-`, a
/// reader that went away, a host that stopped reading a sandbox stage)
/// loses the line instead of taking the process down mid-cleanup.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` as [`errln!`].
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod atomic;
pub mod bake;
pub mod beneath;
pub mod build;
pub mod confine;
pub mod conformance;
pub mod container;
pub mod crane;
pub mod digest;
pub mod doctor;
pub mod eval;
pub mod exit;
pub mod export;
pub mod inspect;
pub mod interrupt;
pub mod json;
pub mod lock;
pub mod manifest;
pub mod orchestrate;
pub mod phase;
pub mod pipeline;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod result;
pub mod rootfs;
pub mod sandbox;
pub mod store;
pub mod sys;
pub mod treedigest;
pub mod unpack;
pub mod userns;
