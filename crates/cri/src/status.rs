//! Errors to gRPC status codes: the only place that decides them.

use virtlet_image::{ErrorKind, ImageError};
use virtlet_manager::ManagerError;

fn code(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::DataLoss => tonic::Code::DataLoss,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

/// The status for an image error; its message is the error's full sentence.
pub fn image_error_status(e: &ImageError) -> tonic::Status {
    let kind = e.kind();
    let message = virtlet_core::error::chain(e);
    if kind == ErrorKind::Internal {
        tracing::error!("{message}");
    } else {
        tracing::warn!("{message}");
    }
    tonic::Status::new(code(kind), message)
}

/// The status for a manager error; its message is the error and its causes.
pub fn manager_error_status(e: &ManagerError) -> tonic::Status {
    let message = virtlet_core::error::chain(e);
    if e.kind() == ErrorKind::Internal {
        tracing::error!("{message}");
    } else {
        tracing::warn!("{message}");
    }
    tonic::Status::new(code(e.kind()), message)
}
