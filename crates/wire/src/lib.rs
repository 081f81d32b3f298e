//! SPDY/3.1, the wire protocol of the CRI streaming server.
//!
//! `kubectl attach`, `exec` and `port-forward` reach the runtime through the kubelet, which
//! connects to the streaming server URL the runtime returned and upgrades the HTTP connection
//! to **SPDY/3.1** (the kubelet's client is `github.com/moby/spdystream` on top of the
//! `golang.org/x/net/spdy` framer). This crate holds the byte-level protocol only; the HTTP
//! upgrade, WebSocket (tokio-tungstenite) and the Kubernetes stream semantics (which stream is
//! stdin, the error stream, port headers) live with the streaming server (`virtlet-stream`).
//!
//! SPDY/3.1 is written here: it has no maintained Rust crate, and the kubelet still speaks it.
//! Its header compression is zlib from [`flate2`] (see [`spdy::compression`]).
//!
//! * [`spdy`]: SPDY/3.1 frames ([`spdy::Frame`], [`spdy::FrameCodec`] with the per-connection
//!   header compression contexts and the SPDY/3 dictionary) and an async multiplexed
//!   [`spdy::Session`] usable as server or client, with streams, flow control, PING, RST and
//!   GOAWAY.
//!
//! The frame decoder never panics on any input; malformed input is an error. Its tests include
//! fixed-seed random-input loops, and `crates/fuzz` fuzzes it.

pub mod spdy;
