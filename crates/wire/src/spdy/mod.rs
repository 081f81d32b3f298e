//! SPDY/3.1 as Kubernetes uses it for `attach`, `exec` and `port-forward`.
//!
//! The kubelet (and `kubectl` towards the API server) speaks SPDY/3.1 through
//! `github.com/moby/spdystream`, whose framer is a copy of `golang.org/x/net/spdy`. This
//! module provides:
//!
//! * [`Frame`] and [`FrameCodec`] (split into [`FrameDecoder`] and [`FrameEncoder`]): the
//!   frame layouts of SPDY/3 and the per-connection zlib header compression with the SPDY/3
//!   [`DICTIONARY`] ([`compression`]: flate2, every block ending at a sync flush).
//! * [`Session`]: a multiplexed connection over any `AsyncRead + AsyncWrite`, as server or
//!   client, handing out [`Stream`]s. See its documentation for flow control and for the
//!   interoperability rules with spdystream.

pub mod compression;
mod dictionary;
mod frame;
mod session;

pub use dictionary::DICTIONARY;
pub use frame::{
    DEFAULT_MAX_FRAME_LEN, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameCodec, FrameDecoder,
    FrameEncoder, Headers, MAX_PAYLOAD, SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS, Setting, VERSION, decode_header_block, encode_header_block,
    frame_type, goaway, rst,
};
pub use session::{Session, SessionConfig, Stream, StreamAcceptor, StreamReader, StreamWriter};

use compression::CompressionError;

/// Errors of the SPDY codec and session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    #[error("invalid SPDY frame: {0}")]
    InvalidFrame(&'static str),
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    #[error("SPDY frame payload of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("SPDY header compression: {0}")]
    Compression(#[from] CompressionError),
    #[error("invalid SPDY header block: {0}")]
    HeaderBlock(&'static str),
    #[error("SPDY connection closed")]
    ConnectionClosed,
    #[error("peer sent GOAWAY; no new streams")]
    GoingAway,
    #[error("SPDY stream reset (status {0})")]
    StreamReset(u32),
    #[error("SPDY stream closed for writing")]
    StreamClosed,
    #[error("SPDY stream opened by the peer must be replied to first")]
    NotReplied,
    #[error("SPDY stream cannot be replied to (already replied, or opened locally)")]
    CannotReply,
    #[error("SPDY stream ids exhausted")]
    StreamIdsExhausted,
}
