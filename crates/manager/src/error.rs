//! Manager errors: a kind for the gRPC edge and a sentence naming the field, the value or the
//! object concerned.

use virtlet_core::ErrorKind;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ManagerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ManagerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ManagerError {
        ManagerError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ManagerError {
        ManagerError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> ManagerError {
        ManagerError::new(ErrorKind::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> ManagerError {
        ManagerError::new(ErrorKind::FailedPrecondition, message)
    }

    pub fn internal(message: impl Into<String>) -> ManagerError {
        ManagerError::new(ErrorKind::Internal, message)
    }
}

impl From<virtlet_store::StoreError> for ManagerError {
    fn from(e: virtlet_store::StoreError) -> Self {
        ManagerError::internal(format!("metadata store failed: {e}"))
    }
}

impl From<virtlet_vm::DriverError> for ManagerError {
    fn from(e: virtlet_vm::DriverError) -> Self {
        let kind = match e {
            virtlet_vm::DriverError::Connect { .. } => ErrorKind::Unavailable,
            virtlet_vm::DriverError::Call { .. } => ErrorKind::Internal,
        };
        ManagerError::new(kind, e.to_string())
    }
}

impl From<virtlet_core::AnnotationError> for ManagerError {
    fn from(e: virtlet_core::AnnotationError) -> Self {
        ManagerError::invalid(e.to_string())
    }
}

impl From<virtlet_core::TransitionError> for ManagerError {
    fn from(e: virtlet_core::TransitionError) -> Self {
        ManagerError::precondition(e.to_string())
    }
}

impl From<tokio::task::JoinError> for ManagerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ManagerError::internal(format!("a background task failed: {e}"))
    }
}
