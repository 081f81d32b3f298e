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

/// An error and its causes, outermost first, joined by `: `. Causes whose text the outer
/// message already ends with are left out, so wrapped messages are not repeated.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[test]
    fn chains_list_every_cause_once() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner detail");
        assert_eq!(chain(&Inner), "inner detail");
    }
}
