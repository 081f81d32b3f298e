//! Manager errors. A refusal (bad input, a missing object, a state that does not allow the
//! call) is a sentence naming the field, the value or the object; a failure of something the
//! manager used keeps that error as its source, so the whole cause chain reaches the log and
//! the caller ([`virtlet_core::error::chain`]). The gRPC edge maps [`ManagerError::kind`] to
//! a status code, in one place.

use virtlet_core::ErrorKind;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The state of things does not allow the call.
    #[error("{0}")]
    Precondition(String),
    /// Something the call needs cannot be reached now; trying later may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A limited resource is all in use.
    #[error("{0}")]
    Exhausted(String),
    /// A fault of virtlet or its host, without a cause to show.
    #[error("{0}")]
    Internal(String),
    /// Doing `context` failed because of `source`.
    #[error("{context}")]
    Failed {
        kind: ErrorKind,
        context: String,
        #[source]
        source: Source,
    },
}

impl ManagerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ManagerError {
        let m = message.into();
        match kind {
            ErrorKind::InvalidArgument => ManagerError::Invalid(m),
            ErrorKind::NotFound => ManagerError::NotFound(m),
            ErrorKind::FailedPrecondition => ManagerError::Precondition(m),
            ErrorKind::Unavailable => ManagerError::Unavailable(m),
            ErrorKind::DeadlineExceeded => ManagerError::DeadlineExceeded(m),
            ErrorKind::ResourceExhausted => ManagerError::Exhausted(m),
            _ => ManagerError::Internal(m),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ManagerError {
        ManagerError::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> ManagerError {
        ManagerError::NotFound(message.into())
    }

    pub fn precondition(message: impl Into<String>) -> ManagerError {
        ManagerError::Precondition(message.into())
    }

    pub fn internal(message: impl Into<String>) -> ManagerError {
        ManagerError::Internal(message.into())
    }

    /// Doing `context` failed because of `source`; `kind` says how the caller should see it.
    pub fn failed(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Source>,
    ) -> ManagerError {
        ManagerError::Failed {
            kind,
            context: context.into(),
            source: source.into(),
        }
    }

    /// How the caller should see the error (the gRPC edge maps it to a code).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::Invalid(_) => ErrorKind::InvalidArgument,
            ManagerError::NotFound(_) => ErrorKind::NotFound,
            ManagerError::Precondition(_) => ErrorKind::FailedPrecondition,
            ManagerError::Unavailable(_) => ErrorKind::Unavailable,
            ManagerError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ManagerError::Exhausted(_) => ErrorKind::ResourceExhausted,
            ManagerError::Internal(_) => ErrorKind::Internal,
            ManagerError::Failed { kind, .. } => *kind,
        }
    }
}

/// `context: <error>` for an I/O failure, as an internal error with its source.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ManagerError {
    let context = context.into();
    move |e| ManagerError::failed(ErrorKind::Internal, context, e)
}

impl From<virtlet_store::StoreError> for ManagerError {
    fn from(e: virtlet_store::StoreError) -> Self {
        ManagerError::failed(ErrorKind::Internal, "the metadata store failed", e)
    }
}

impl From<virtlet_vm::DriverError> for ManagerError {
    fn from(e: virtlet_vm::DriverError) -> Self {
        let kind = match e {
            virtlet_vm::DriverError::Connect { .. } => ErrorKind::Unavailable,
            virtlet_vm::DriverError::Call { .. } | virtlet_vm::DriverError::Agent { .. } => {
                ErrorKind::Internal
            }
        };
        ManagerError::failed(kind, "libvirt failed", e)
    }
}

impl From<virtlet_core::AnnotationError> for ManagerError {
    fn from(e: virtlet_core::AnnotationError) -> Self {
        ManagerError::failed(ErrorKind::InvalidArgument, "bad pod annotation", e)
    }
}

impl From<virtlet_cloudinit::CloudInitError> for ManagerError {
    fn from(e: virtlet_cloudinit::CloudInitError) -> Self {
        let kind = match e {
            virtlet_cloudinit::CloudInitError::Seed { .. } => ErrorKind::Internal,
            // What the named ConfigMap or Secret holds, not the request, is wrong.
            virtlet_cloudinit::CloudInitError::SourceKey { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::InvalidArgument,
        };
        ManagerError::failed(kind, "cloud-init", e)
    }
}

impl From<virtlet_image::ImageError> for ManagerError {
    fn from(e: virtlet_image::ImageError) -> Self {
        ManagerError::failed(e.kind(), "the image store", e)
    }
}

impl From<virtlet_core::TransitionError> for ManagerError {
    fn from(e: virtlet_core::TransitionError) -> Self {
        ManagerError::failed(ErrorKind::FailedPrecondition, "state change refused", e)
    }
}

impl From<tokio::task::JoinError> for ManagerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ManagerError::failed(ErrorKind::Internal, "a background task failed", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtlet_core::error::chain;

    #[test]
    fn failures_keep_their_cause_chain() {
        let io_err = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = io("cannot write the seed /x")(io_err);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(e.to_string(), "cannot write the seed /x");
        assert_eq!(chain(&e), "cannot write the seed /x: no such file");
        let e = ManagerError::invalid("config.metadata.name is empty");
        assert_eq!(chain(&e), "config.metadata.name is empty");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
