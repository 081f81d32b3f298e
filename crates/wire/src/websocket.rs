//! WebSocket (RFC 6455) framing over an already-upgraded connection.
//!
//! The HTTP/1.1 upgrade is done by whoever owns the HTTP server; [`accept_key`] computes the
//! `Sec-WebSocket-Accept` answer and [`client_key`] a fresh `Sec-WebSocket-Key`. After the
//! `101 Switching Protocols`, hand the connection to [`WebSocket::server`] (or
//! [`WebSocket::client`]).
//!
//! * Messages: text, binary, ping, pong and close ([`Message`]). Fragmented messages are
//!   reassembled (control frames may arrive between fragments); messages are sent as single
//!   frames.
//! * Pings are answered with pongs automatically; a received close is answered with a close
//!   (echoing the status code) and the write side is shut down, completing the closing
//!   handshake.
//! * A server rejects unmasked frames, a client masked ones (RFC 6455 section 5.1), and a
//!   client masks what it sends with a fresh random key per frame. Reserved bits (no extension
//!   is negotiated), unknown opcodes, fragmented or oversized control frames, invalid UTF-8 in
//!   text and close reasons, invalid close codes and messages over the size limit
//!   ([`DEFAULT_MAX_MESSAGE`]) are errors; the peer gets a close frame with the matching code.
//! * [`WebSocket::into_split`] gives a [`WsReader`] and a cloneable [`WsWriter`] for two tasks;
//!   the reader sends its automatic replies through the shared writer.
//!
//! The frame codec ([`decode_frame`], [`encode_frame`], [`MessageAssembler`]) is pure and never
//! panics on any input.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, BytesMut};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;

/// The GUID RFC 6455 appends to the client's key.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Default limit on a message (or single frame) payload: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// Frame opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xa;
}

/// Close status codes (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(sec_websocket_key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(sec_websocket_key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn client_key() -> String {
    let key: [u8; 16] = rand::rng().random();
    BASE64.encode(key)
}

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// At most 125 bytes of payload.
    Ping(Vec<u8>),
    /// At most 125 bytes of payload.
    Pong(Vec<u8>),
    /// Status code and reason (at most 123 bytes), or no status.
    Close(Option<(u16, String)>),
}

/// WebSocket errors.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("websocket i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket frame from the client is not masked")]
    Unmasked,
    #[error("websocket frame from the server is masked")]
    Masked,
    #[error("websocket message exceeds {0} bytes")]
    TooLarge(usize),
    #[error("websocket text is not valid UTF-8")]
    InvalidUtf8,
    #[error("websocket control frame payload exceeds 125 bytes")]
    ControlTooLong,
    #[error("websocket connection is closed")]
    Closed,
    #[error("websocket connection ended in the middle of a frame or message")]
    UnexpectedEof,
}

impl WsError {
    /// The close code to send the peer for this error, if any.
    fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Io(_) | WsError::Closed | WsError::UnexpectedEof => None,
            WsError::TooLarge(_) => Some(close_code::MESSAGE_TOO_BIG),
            WsError::InvalidUtf8 => Some(close_code::INVALID_PAYLOAD),
            _ => Some(close_code::PROTOCOL_ERROR),
        }
    }
}

/// One frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Removes one complete frame from the front of `buf` (unmasking its payload). `role` is our
/// role: a server requires masked frames, a client unmasked ones. `Ok(None)`: more bytes are
/// needed. Frames longer than `max_payload` are rejected before their payload arrives.
pub fn decode_frame(
    buf: &mut BytesMut,
    role: Role,
    max_payload: usize,
) -> Result<Option<Frame>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0f;
    let control = match op {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => false,
        opcode::CLOSE | opcode::PING | opcode::PONG => true,
        _ => return Err(WsError::Protocol("unknown opcode")),
    };
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(WsError::Unmasked),
        (Role::Client, true) => return Err(WsError::Masked),
        _ => {}
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let len = u64::from_be_bytes(a);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("64-bit length with the high bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if control {
        if !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        if len > 125 {
            return Err(WsError::ControlTooLong);
        }
    }
    if len > max_payload as u64 {
        return Err(WsError::TooLarge(max_payload));
    }
    let len = len as usize;
    let mut mask = None;
    if masked {
        let Some(m) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        mask = Some([m[0], m[1], m[2], m[3]]);
        pos += 4;
    }
    let total = pos + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(pos);
    let mut payload = buf.split_to(len).to_vec();
    if let Some(m) = mask {
        apply_mask(&mut payload, m);
    }
    Ok(Some(Frame {
        fin,
        opcode: op,
        payload,
    }))
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends `frame` to `out`, masked with `mask` if given (clients must mask).
pub fn encode_frame(frame: &Frame, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(if frame.fin { 0x80 } else { 0 } | (frame.opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = frame.payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            let start = out.len();
            out.extend_from_slice(&frame.payload);
            apply_mask(&mut out[start..], m);
        }
        None => out.extend_from_slice(&frame.payload),
    }
}

fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame's payload.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// Reassembles frames into messages.
#[derive(Debug)]
pub struct MessageAssembler {
    partial: Option<(u8, Vec<u8>)>,
    max: usize,
}

impl MessageAssembler {
    /// An assembler refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            partial: None,
            max: max_message,
        }
    }

    /// True while a fragmented message is incomplete.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Adds a frame; returns a message when one is complete. Control frames are messages of
    /// their own, even between the fragments of another message.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, WsError> {
        let Frame {
            fin,
            opcode: op,
            payload,
        } = frame;
        match op {
            opcode::PING => Ok(Some(Message::Ping(payload))),
            opcode::PONG => Ok(Some(Message::Pong(payload))),
            opcode::CLOSE => Ok(Some(Message::Close(parse_close(&payload)?))),
            opcode::TEXT | opcode::BINARY => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("new message before the last one ended"));
                }
                if payload.len() > self.max {
                    return Err(WsError::TooLarge(self.max));
                }
                if fin {
                    complete(op, payload).map(Some)
                } else {
                    self.partial = Some((op, payload));
                    Ok(None)
                }
            }
            opcode::CONTINUATION => {
                let Some((first, mut data)) = self.partial.take() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if data.len().saturating_add(payload.len()) > self.max {
                    return Err(WsError::TooLarge(self.max));
                }
                data.extend_from_slice(&payload);
                if fin {
                    complete(first, data).map(Some)
                } else {
                    self.partial = Some((first, data));
                    Ok(None)
                }
            }
            _ => Err(WsError::Protocol("unknown opcode")),
        }
    }
}

fn complete(op: u8, data: Vec<u8>) -> Result<Message, WsError> {
    if op == opcode::TEXT {
        String::from_utf8(data)
            .map(Message::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Message::Binary(data))
    }
}

struct WriterState<T> {
    io: WriteHalf<T>,
    close_sent: bool,
    shut: bool,
}

/// The sending half of a [`WebSocket`] (cloneable; sends are serialised).
pub struct WsWriter<T> {
    state: Arc<Mutex<WriterState<T>>>,
    role: Role,
}

impl<T> Clone for WsWriter<T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            role: self.role,
        }
    }
}

impl<T: AsyncRead + AsyncWrite> WsWriter<T> {
    /// Sends a message. After a close was sent (by us or as the answer to the peer's), sending
    /// fails with [`WsError::Closed`]. Ping/pong payloads and close reasons are limited by the
    /// 125-byte control frame payload.
    pub async fn send(&self, msg: Message) -> Result<(), WsError> {
        let (op, payload) = match msg {
            Message::Text(t) => (opcode::TEXT, t.into_bytes()),
            Message::Binary(b) => (opcode::BINARY, b),
            Message::Ping(p) => (opcode::PING, p),
            Message::Pong(p) => (opcode::PONG, p),
            Message::Close(c) => (opcode::CLOSE, close_payload(c)?),
        };
        if op >= opcode::CLOSE && payload.len() > 125 {
            return Err(WsError::ControlTooLong);
        }
        let mut st = self.state.lock().await;
        if st.close_sent || st.shut {
            return Err(WsError::Closed);
        }
        self.write_frame(&mut st, op, payload).await
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), WsError> {
        self.send(Message::Close(Some((code, reason.to_string()))))
            .await
    }

    async fn write_frame(
        &self,
        st: &mut WriterState<T>,
        op: u8,
        payload: Vec<u8>,
    ) -> Result<(), WsError> {
        let mask = match self.role {
            Role::Client => Some(rand::rng().random::<[u8; 4]>()),
            Role::Server => None,
        };
        let mut out = Vec::with_capacity(payload.len() + 14);
        encode_frame(
            &Frame {
                fin: true,
                opcode: op,
                payload,
            },
            mask,
            &mut out,
        );
        if op == opcode::CLOSE {
            st.close_sent = true;
        }
        st.io.write_all(&out).await?;
        st.io.flush().await?;
        Ok(())
    }

    /// Automatic answer to a ping (skipped once we sent a close).
    async fn pong(&self, payload: Vec<u8>) -> Result<(), WsError> {
        let mut st = self.state.lock().await;
        if st.close_sent || st.shut {
            return Ok(());
        }
        self.write_frame(&mut st, opcode::PONG, payload).await
    }

    /// Ends our side: sends a close (if not sent yet) with `code`, then shuts the write side.
    async fn finish(&self, code: Option<u16>) -> Result<(), WsError> {
        let mut st = self.state.lock().await;
        if st.shut {
            return Ok(());
        }
        let mut res = Ok(());
        if !st.close_sent {
            let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
            res = self.write_frame(&mut st, opcode::CLOSE, payload).await;
        }
        st.shut = true;
        let _ = st.io.shutdown().await;
        res
    }
}

fn close_payload(c: Option<(u16, String)>) -> Result<Vec<u8>, WsError> {
    let Some((code, reason)) = c else {
        return Ok(Vec::new());
    };
    if !valid_close_code(code) {
        return Err(WsError::Protocol("invalid close code"));
    }
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    Ok(p)
}

/// The receiving half of a [`WebSocket`].
pub struct WsReader<T> {
    io: ReadHalf<T>,
    buf: BytesMut,
    role: Role,
    asm: MessageAssembler,
    writer: WsWriter<T>,
    finished: bool,
}

impl<T: AsyncRead + AsyncWrite> WsReader<T> {
    /// The next message. Pings are answered automatically (and returned too); a close is
    /// answered with a close and returned as [`Message::Close`], after which (and after the
    /// peer ended the connection cleanly between frames) `Ok(None)` is returned. Protocol
    /// violations send the peer a close with the matching code and return the error.
    pub async fn recv(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let frame = match decode_frame(&mut self.buf, self.role, self.asm.max) {
                Ok(Some(f)) => f,
                Ok(None) => match self.io.read_buf(&mut self.buf).await {
                    Ok(0) => {
                        self.finished = true;
                        if self.buf.is_empty() && !self.asm.in_progress() {
                            return Ok(None);
                        }
                        return Err(WsError::UnexpectedEof);
                    }
                    Ok(_) => continue,
                    Err(e) => return self.fail(e.into()).await,
                },
                Err(e) => return self.fail(e).await,
            };
            match self.asm.push(frame) {
                Ok(None) => {}
                Ok(Some(Message::Ping(p))) => {
                    self.writer.pong(p.clone()).await?;
                    return Ok(Some(Message::Ping(p)));
                }
                Ok(Some(Message::Close(c))) => {
                    self.finished = true;
                    let code = c.as_ref().map(|(code, _)| *code);
                    // The answer echoes the code; a failure to send it does not matter now.
                    let _ = self.writer.finish(code).await;
                    return Ok(Some(Message::Close(c)));
                }
                Ok(Some(m)) => return Ok(Some(m)),
                Err(e) => return self.fail(e).await,
            }
        }
    }

    async fn fail(&mut self, e: WsError) -> Result<Option<Message>, WsError> {
        self.finished = true;
        if let Some(code) = e.close_code() {
            let _ = self.writer.finish(Some(code)).await;
        }
        Err(e)
    }
}

/// A WebSocket connection; see the [module documentation](self).
pub struct WebSocket<T> {
    reader: WsReader<T>,
    writer: WsWriter<T>,
}

impl<T: AsyncRead + AsyncWrite> WebSocket<T> {
    /// The server end of an upgraded connection.
    pub fn server(io: T) -> Self {
        Self::new(io, Role::Server)
    }

    /// The client end of an upgraded connection.
    pub fn client(io: T) -> Self {
        Self::new(io, Role::Client)
    }

    fn new(io: T, role: Role) -> Self {
        let (rd, wr) = tokio::io::split(io);
        let writer = WsWriter {
            state: Arc::new(Mutex::new(WriterState {
                io: wr,
                close_sent: false,
                shut: false,
            })),
            role,
        };
        Self {
            reader: WsReader {
                io: rd,
                buf: BytesMut::with_capacity(8 * 1024),
                role,
                asm: MessageAssembler::new(DEFAULT_MAX_MESSAGE),
                writer: writer.clone(),
                finished: false,
            },
            writer,
        }
    }

    /// Changes the largest accepted message (default [`DEFAULT_MAX_MESSAGE`]).
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.reader.asm.max = max;
        self
    }

    /// See [`WsReader::recv`].
    pub async fn recv(&mut self) -> Result<Option<Message>, WsError> {
        self.reader.recv().await
    }

    /// See [`WsWriter::send`].
    pub async fn send(&mut self, msg: Message) -> Result<(), WsError> {
        self.writer.send(msg).await
    }

    /// See [`WsWriter::close`].
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        self.writer.close(code, reason).await
    }

    /// A writer handle (cloneable) that can be used while this value keeps receiving.
    pub fn writer(&self) -> WsWriter<T> {
        self.writer.clone()
    }

    /// Splits into a reader and a writer usable from different tasks.
    pub fn into_split(self) -> (WsReader<T>, WsWriter<T>) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};
    use std::time::Duration;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(30);

    fn dec(bytes: &[u8], role: Role) -> Result<Option<Frame>, WsError> {
        let mut buf = BytesMut::from(bytes);
        let r = decode_frame(&mut buf, role, DEFAULT_MAX_MESSAGE);
        if let Ok(Some(_)) = r {
            assert!(buf.is_empty());
        }
        r
    }

    fn text(fin: bool, op: u8, p: &[u8]) -> Frame {
        Frame {
            fin,
            opcode: op,
            payload: p.to_vec(),
        }
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let k = client_key();
        assert_eq!(BASE64.decode(&k).unwrap().len(), 16);
        assert_ne!(k, client_key());
    }

    /// The examples of RFC 6455 section 5.7.
    #[test]
    fn rfc_examples() {
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            dec(&hello, Role::Client).unwrap(),
            Some(text(true, opcode::TEXT, b"Hello"))
        );
        let mut out = Vec::new();
        encode_frame(&text(true, opcode::TEXT, b"Hello"), None, &mut out);
        assert_eq!(out, hello);

        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            dec(&masked, Role::Server).unwrap(),
            Some(text(true, opcode::TEXT, b"Hello"))
        );
        let mut out = Vec::new();
        encode_frame(
            &text(true, opcode::TEXT, b"Hello"),
            Some([0x37, 0xfa, 0x21, 0x3d]),
            &mut out,
        );
        assert_eq!(out, masked);

        // Fragmented unmasked text.
        let mut asm = MessageAssembler::new(100);
        let f1 = dec(&[0x01, 0x03, 0x48, 0x65, 0x6c], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(f1, text(false, opcode::TEXT, b"Hel"));
        assert_eq!(asm.push(f1).unwrap(), None);
        assert!(asm.in_progress());
        // A ping between the fragments.
        let ping = dec(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(
            asm.push(ping).unwrap(),
            Some(Message::Ping(b"Hello".to_vec()))
        );
        let f2 = dec(&[0x80, 0x02, 0x6c, 0x6f], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(
            asm.push(f2).unwrap(),
            Some(Message::Text("Hello".to_string()))
        );

        // Masked pong.
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            dec(&pong, Role::Server).unwrap(),
            Some(text(true, opcode::PONG, b"Hello"))
        );

        // 256 bytes: 16-bit length; 64 KiB: 64-bit length.
        for (len, header) in [
            (256usize, vec![0x82, 0x7e, 0x01, 0x00]),
            (65536, vec![0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = header.clone();
            wire.extend_from_slice(&payload);
            assert_eq!(
                dec(&wire, Role::Client).unwrap(),
                Some(text(true, opcode::BINARY, &payload))
            );
            let mut out = Vec::new();
            encode_frame(&text(true, opcode::BINARY, &payload), None, &mut out);
            assert_eq!(out, wire);
            // Incomplete input waits.
            assert!(
                dec(&wire[..wire.len() - 1], Role::Client)
                    .unwrap()
                    .is_none()
            );
        }
        // 125 bytes still fit the 7-bit length.
        let mut out = Vec::new();
        encode_frame(&text(true, opcode::BINARY, &[0; 125]), None, &mut out);
        assert_eq!(out[1], 125);
    }

    #[test]
    fn invalid_frames() {
        let cases: &[(&[u8], Role)] = &[
            (&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], Role::Server), // unmasked to server
            (&[0x81, 0x80, 1, 2, 3, 4], Role::Client),                   // masked to client
            (&[0xc1, 0x00], Role::Client),                               // RSV1
            (&[0x83, 0x00], Role::Client),                               // opcode 3
            (&[0x0b, 0x00], Role::Client),                               // opcode 11
            (&[0x09, 0x00], Role::Client),                               // fragmented ping
            (&[0x89, 0x7e, 0x00, 0x7e], Role::Client),                   // ping of 126
            (&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0], Role::Client),    // 64-bit MSB
        ];
        for (bytes, role) in cases {
            assert!(dec(bytes, *role).is_err(), "{bytes:?}");
        }
        let mut buf = BytesMut::from(&[0x82, 0x7e, 0x01, 0x00][..]);
        assert!(matches!(
            decode_frame(&mut buf, Role::Client, 255),
            Err(WsError::TooLarge(255))
        ));
        let mut asm = MessageAssembler::new(10);
        assert!(asm.push(text(true, opcode::CONTINUATION, b"x")).is_err());
        assert!(asm.push(text(true, opcode::TEXT, &[0xff])).is_err());
        assert!(asm.push(text(true, opcode::CLOSE, &[3])).is_err());
        assert!(asm.push(text(true, opcode::CLOSE, &[0x03, 0xed])).is_err()); // 1005
        assert!(asm.push(text(true, opcode::BINARY, &[0; 11])).is_err());
        let mut asm = MessageAssembler::new(10);
        asm.push(text(false, opcode::BINARY, &[0; 6])).unwrap();
        assert!(asm.push(text(false, opcode::TEXT, b"x")).is_err());
        let mut asm = MessageAssembler::new(10);
        asm.push(text(false, opcode::BINARY, &[0; 6])).unwrap();
        assert!(matches!(
            asm.push(text(true, opcode::CONTINUATION, &[0; 6])),
            Err(WsError::TooLarge(10))
        ));
        assert_eq!(
            MessageAssembler::new(10)
                .push(text(true, opcode::CLOSE, b"\x03\xe8bye"))
                .unwrap(),
            Some(Message::Close(Some((1000, "bye".to_string()))))
        );
    }

    fn pair() -> (
        WebSocket<tokio::io::DuplexStream>,
        WebSocket<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (WebSocket::client(a), WebSocket::server(b))
    }

    #[tokio::test]
    async fn client_server_exchange() {
        let (mut client, mut server) = pair();
        client.send(Message::Text("hi".into())).await.unwrap();
        assert_eq!(
            server.recv().await.unwrap(),
            Some(Message::Text("hi".into()))
        );
        let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7) as u8).collect();
        let b2 = big.clone();
        let w = server.writer();
        let send = tokio::spawn(async move { w.send(Message::Binary(b2)).await.unwrap() });
        assert_eq!(
            timeout(LIMIT, client.recv()).await.unwrap().unwrap(),
            Some(Message::Binary(big.clone()))
        );
        send.await.unwrap();
        let w = client.writer();
        let b2 = big.clone();
        let send = tokio::spawn(async move { w.send(Message::Binary(b2)).await.unwrap() });
        assert_eq!(
            timeout(LIMIT, server.recv()).await.unwrap().unwrap(),
            Some(Message::Binary(big))
        );
        send.await.unwrap();
    }

    #[tokio::test]
    async fn ping_is_answered_and_close_handshake() {
        let (mut client, mut server) = pair();
        client.send(Message::Ping(b"p1".to_vec())).await.unwrap();
        // The server sees the ping and answers it by itself.
        assert_eq!(
            server.recv().await.unwrap(),
            Some(Message::Ping(b"p1".to_vec()))
        );
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::Pong(b"p1".to_vec()))
        );
        // Close handshake started by the client.
        client.close(close_code::NORMAL, "bye").await.unwrap();
        assert!(matches!(
            client.send(Message::Text("late".into())).await,
            Err(WsError::Closed)
        ));
        assert_eq!(
            server.recv().await.unwrap(),
            Some(Message::Close(Some((1000, "bye".into()))))
        );
        assert_eq!(server.recv().await.unwrap(), None);
        assert!(matches!(
            server.send(Message::Text("late".into())).await,
            Err(WsError::Closed)
        ));
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::Close(Some((1000, String::new()))))
        );
        assert_eq!(client.recv().await.unwrap(), None);
    }

    #[tokio::test]
    async fn split_halves_in_two_tasks() {
        let (client, server) = pair();
        // Echo server with split halves.
        let server_task = tokio::spawn(async move {
            let (mut r, w) = server.into_split();
            let mut n = 0;
            while let Some(m) = r.recv().await.unwrap() {
                match m {
                    Message::Binary(b) => {
                        n += 1;
                        w.send(Message::Binary(b)).await.unwrap();
                    }
                    Message::Close(_) => {}
                    other => panic!("{other:?}"),
                }
            }
            n
        });
        let (mut r, w) = client.into_split();
        let writer = tokio::spawn(async move {
            for i in 0..100u32 {
                w.send(Message::Binary(i.to_be_bytes().repeat(1000)))
                    .await
                    .unwrap();
            }
            w.close(close_code::GOING_AWAY, "").await.unwrap();
        });
        let mut got = 0u32;
        while let Some(m) = timeout(LIMIT, r.recv()).await.unwrap().unwrap() {
            match m {
                Message::Binary(b) => {
                    assert_eq!(b, got.to_be_bytes().repeat(1000));
                    got += 1;
                }
                Message::Close(c) => assert_eq!(c, Some((1001, String::new()))),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, 100);
        writer.await.unwrap();
        assert_eq!(server_task.await.unwrap(), 100);
    }

    #[tokio::test]
    async fn server_rejects_unmasked_frames() {
        let (mut raw, b) = tokio::io::duplex(1024);
        let mut server = WebSocket::server(b);
        raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
        assert!(matches!(server.recv().await, Err(WsError::Unmasked)));
        // The server told the peer why, and closed.
        let mut back = Vec::new();
        raw.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, [0x88, 0x02, 0x03, 0xea]);
        assert!(server.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn message_size_limit() {
        let (client, server) = pair();
        let mut server = server.with_max_message_size(1000);
        let mut client = client;
        client.send(Message::Binary(vec![0; 1001])).await.unwrap();
        assert!(matches!(server.recv().await, Err(WsError::TooLarge(1000))));
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::Close(Some((1009, String::new()))))
        );
    }

    #[tokio::test]
    async fn eof_handling() {
        let (raw, b) = tokio::io::duplex(1024);
        let mut server = WebSocket::server(b);
        drop(raw);
        assert!(server.recv().await.unwrap().is_none());

        let (mut raw, b) = tokio::io::duplex(1024);
        let mut server = WebSocket::server(b);
        raw.write_all(&[0x81, 0x85, 1, 2]).await.unwrap();
        drop(raw);
        assert!(matches!(server.recv().await, Err(WsError::UnexpectedEof)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6455);
        let mut messages = 0;
        for i in 0..20_000 {
            let mut input = BytesMut::new();
            let n = rng.random_range(0..64);
            for _ in 0..n {
                input.extend_from_slice(&[rng.random::<u8>()]);
            }
            // Often start with a plausible header.
            if i % 2 == 0 && input.len() >= 2 {
                input[0] = [0x81, 0x82, 0x01, 0x00, 0x80, 0x88, 0x89, 0x8a][i % 8];
                input[1] &= 0x80 | 0x3f;
            }
            let role = if i % 3 == 0 {
                Role::Server
            } else {
                Role::Client
            };
            let mut asm = MessageAssembler::new(1024);
            while let Ok(Some(frame)) = decode_frame(&mut input, role, 1024) {
                if let Ok(Some(_)) = asm.push(frame) {
                    messages += 1;
                }
            }
        }
        assert!(messages > 100, "{messages}");
    }
}
