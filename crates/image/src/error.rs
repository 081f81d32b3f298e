//! The image service's errors, each with the kind of failure it is, so the gRPC edge can pick a
//! status code without looking inside.

use crate::fetch::FetchError;
use crate::format::FormatError;
use crate::reference::ReferenceError;
use crate::translation::ConfigProblem;

pub use virtlet_core::ErrorKind;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullCause {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} did not serve a disk image: {source}")]
    Format {
        url: String,
        #[source]
        source: FormatError,
    },
    #[error("image digest mismatch: expected sha256:{expected}, got sha256:{actual} from {url}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("no space left in the image directory {dir}")]
    NoSpace { dir: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata store failed: {0}")]
    Store(#[from] virtlet_store::StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("pulling image {image:?} failed: {cause}{}", notes(.skipped_configs))]
    Pull {
        image: String,
        cause: Box<PullCause>,
        /// Translation configs that were skipped; one of them may have been meant to apply.
        skipped_configs: Vec<ConfigProblem>,
    },
    #[error("image {image:?} is not present; pull it first")]
    NotPresent { image: String },
    #[error("metadata store failed: {0}")]
    Store(#[from] virtlet_store::StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn notes(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!(" (note: {p})")).collect()
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Reference(_) => ErrorKind::InvalidArgument,
            ImageError::NotPresent { .. } => ErrorKind::NotFound,
            ImageError::Store(_) | ImageError::Io { .. } => ErrorKind::Internal,
            ImageError::Pull { cause, .. } => cause.kind(),
        }
    }
}

impl PullCause {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PullCause::Fetch(f) => match f {
                FetchError::BadUrl { .. }
                | FetchError::Scheme { .. }
                | FetchError::NotRegularFile { .. } => ErrorKind::InvalidArgument,
                FetchError::HttpStatus { code, .. } => match code {
                    404 | 410 => ErrorKind::NotFound,
                    401 | 403 => ErrorKind::PermissionDenied,
                    408 => ErrorKind::DeadlineExceeded,
                    429 | 500..=599 => ErrorKind::Unavailable,
                    _ => ErrorKind::FailedPrecondition,
                },
                FetchError::FileNotFound { .. } => ErrorKind::NotFound,
                FetchError::Connect { .. }
                | FetchError::Transfer { .. }
                | FetchError::Redirects { .. } => ErrorKind::Unavailable,
                FetchError::Timeout { .. } => ErrorKind::DeadlineExceeded,
                FetchError::Tls { .. } | FetchError::Settings { .. } => {
                    ErrorKind::FailedPrecondition
                }
                FetchError::FileRead { .. } => ErrorKind::Internal,
            },
            PullCause::Format { .. } => ErrorKind::FailedPrecondition,
            PullCause::DigestMismatch { .. } => ErrorKind::DataLoss,
            PullCause::NoSpace { .. } => ErrorKind::ResourceExhausted,
            PullCause::Io { .. } | PullCause::Store(_) => ErrorKind::Internal,
        }
    }
}
