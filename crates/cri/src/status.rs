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
    if kind == ErrorKind::Internal {
        tracing::error!("{e}");
    } else {
        tracing::warn!("{e}");
    }
    tonic::Status::new(code(kind), e.to_string())
}

/// The status for a manager error.
pub fn manager_error_status(e: &ManagerError) -> tonic::Status {
    if e.kind == ErrorKind::Internal {
        tracing::error!("{e}");
    } else {
        tracing::warn!("{e}");
    }
    tonic::Status::new(code(e.kind), e.message.clone())
}
