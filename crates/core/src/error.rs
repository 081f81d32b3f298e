//! The vocabulary of failure kinds shared by every crate; the gRPC edge maps each to a status code.

/// The kinds of failure, as callers need to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong.
    InvalidArgument,
    /// The image or its source does not exist.
    NotFound,
    /// The source refused us.
    PermissionDenied,
    /// The source could not be reached or failed; trying later may work.
    Unavailable,
    /// The source was too slow.
    DeadlineExceeded,
    /// No room for the image.
    ResourceExhausted,
    /// The source or the node's settings are not in a state that allows this.
    FailedPrecondition,
    /// The content is not what was pinned.
    DataLoss,
    /// A fault of virtlet or its host.
    Internal,
}
