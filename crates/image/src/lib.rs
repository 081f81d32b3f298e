//! VM images for virtlet: references, name translation, fetching over HTTP(S) or from local
//! files with the sha256 computed while streaming, and the content-addressed store.
//!
//! Pure parts (reference parsing, translation, format detection) are separate from the parts
//! that touch the network and the disk (`fetch`, `download`, `store`).

pub mod digest;
pub mod download;
pub mod error;
pub mod fetch;
pub mod format;
pub mod reference;
pub mod store;
pub mod translation;

pub use digest::Digest;
pub use error::{ErrorKind, ImageError, PullCause};
pub use store::{FsUsage, GcReport, ImageInfo, ImageStore, ImageStoreConfig, Pulled};
