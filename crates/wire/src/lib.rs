//! Wire protocols of the CRI streaming server.
//!
//! `kubectl attach`, `exec` and `port-forward` reach the runtime through the kubelet, which
//! connects to the streaming server URL the runtime returned and upgrades the HTTP connection
//! to **SPDY/3.1** (the kubelet's client is `github.com/moby/spdystream` on top of the
//! `golang.org/x/net/spdy` framer); newer clients may speak **WebSocket** (RFC 6455) with the
//! Kubernetes channel sub-protocols instead. This crate holds the byte-level protocols only;
//! the HTTP upgrade and the Kubernetes stream semantics (which stream is stdin, the error
//! stream, port headers) live with the streaming server.
//!
//! Everything here is written by hand: when this crate was written the crates.io registry was
//! unreachable, so only crates already in the lock file could be used, and none of them
//! implements zlib, SPDY or WebSocket framing. SPDY would have needed hand-written code anyway:
//! it has no maintained Rust crate.
//!
//! * [`zlib`]: RFC 1950/1951. A streaming [`zlib::Inflater`] (state kept across calls, preset
//!   dictionary, stored/fixed/dynamic blocks, output limit) and a [`zlib::Deflater`] that
//!   writes stored blocks ending at sync-flush points: what SPDY header compression needs.
//! * [`spdy`]: SPDY/3.1 frames ([`spdy::Frame`], [`spdy::FrameCodec`] with the per-connection
//!   header compression contexts and the SPDY/3 dictionary) and an async multiplexed
//!   [`spdy::Session`] usable as server or client, with streams, flow control, PING, RST and
//!   GOAWAY.
//! * [`websocket`]: RFC 6455 framing over an already-upgraded connection
//!   ([`websocket::WebSocket`], server or client, splittable into reader and writer halves),
//!   plus the handshake key helpers [`websocket::accept_key`] and [`websocket::client_key`].
//!
//! The pure codecs (inflater, SPDY frame decoder, WebSocket frame decoder) never panic on any
//! input; malformed input is an error. Their tests include fixed-seed random-input loops.

pub mod spdy;
pub mod websocket;
pub mod zlib;
