//! Looking inside images and the store without running anything:
//! `hoist inspect` ([`image`], [`axes`]), `hoist images` and the names
//! `hoist rmi` takes ([`images`]), `hoist system df` ([`df`]). The
//! removal itself is `rootfs::gc`'s, under its lock.

pub mod axes;
pub mod df;
pub mod image;
pub mod images;

pub use axes::{Axes, AxesSource};
pub use df::{usage, DiskUsage, Row};
pub use image::{inspect, InspectOptions, Inspection};
pub use images::{list, names_for, StoredImage};

use crate::rootfs::RootfsError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{query} is ambiguous: it begins the digests of {} images ({}); give more of it", .digests.len(), .digests.join(", "))]
    Ambiguous { query: String, digests: Vec<String> },
}
