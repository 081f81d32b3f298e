//! SPDY/3.1 frames and their codec.
//!
//! Layouts (all integers big-endian):
//!
//! ```text
//! control: |1| version(15) = 3 | type(16) |  flags(8) | length(24) |  payload
//! data:    |0| stream id(31)              |  flags(8) | length(24) |  payload
//! ```
//!
//! | type | frame          | payload                                                          |
//! |------|----------------|------------------------------------------------------------------|
//! | 1    | SYN_STREAM     | X+stream id(31), X+associated id(31), priority(3)+unused(5), slot(8), header block |
//! | 2    | SYN_REPLY      | X+stream id(31), header block                                    |
//! | 3    | RST_STREAM     | X+stream id(31), status(32)                                      |
//! | 4    | SETTINGS       | count(32), count × (flags(8), id(24), value(32))                 |
//! | 6    | PING           | id(32)                                                           |
//! | 7    | GOAWAY         | X+last good stream id(31), status(32)                            |
//! | 8    | HEADERS        | X+stream id(31), header block                                    |
//! | 9    | WINDOW_UPDATE  | X+stream id(31), X+delta(31)                                     |
//!
//! A header block, before compression, is `count(32)` then per pair `len(32) name len(32)
//! value`, names lowercase, several values of one name joined by NUL. All header blocks of a
//! direction go through one zlib stream with the SPDY/3 [dictionary](super::DICTIONARY), so
//! the codec keeps one [`HeaderInflater`] for received blocks and one [`HeaderDeflater`] for
//! sent ones (see [`super::compression`]),
//! and frames must be decoded and encoded in connection order.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::SpdyError;
use super::compression::{HeaderDeflater, HeaderInflater};

/// The SPDY version this codec speaks.
pub const VERSION: u16 = 3;

/// FLAG_FIN: last frame the sender sends on the stream (control frames and DATA).
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL (SYN_STREAM): the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// SETTINGS id of the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// SETTINGS id of the maximum number of concurrent streams.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;

/// Control frame types.
pub mod frame_type {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// Default limit on a received frame's payload ([`FrameDecoder::set_max_frame_len`]).
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 << 20;

/// Header name/value pairs in order. A name may repeat; on the wire the values of one name
/// are joined with NUL, and decoding splits them again into separate pairs.
pub type Headers = Vec<(String, String)>;

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24-bit id.
    pub id: u32,
    pub value: u32,
}

/// A SPDY/3.1 frame. Stream ids are 31-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        /// 0 (highest) to 7.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

/// Encodes a header block (uncompressed): names lowercased, repeated names merged with NUL
/// between their values, pairs in order of first appearance.
pub fn encode_header_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut merged: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(0);
                v.extend_from_slice(value.as_bytes());
            }
            None => merged.push((name, value.as_bytes().to_vec())),
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(merged.len() as u32).to_be_bytes());
    for (name, value) in merged {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(&value);
    }
    out
}

/// Decodes an (uncompressed) header block. Names are lowercased; a value with NULs becomes
/// several pairs. Invalid UTF-8 is replaced (U+FFFD). Empty names, truncated blocks and bytes
/// after the last pair are errors.
pub fn decode_header_block(block: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SpdyError> {
        if b.len() < n {
            return Err(SpdyError::HeaderBlock("truncated header block"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, SpdyError> {
        let s = take(b, 4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }
    let mut b = block;
    let count = u32_of(&mut b)?;
    // Every pair takes at least 9 bytes; refuse counts the block cannot hold before
    // allocating for them.
    if count > b.len() / 9 {
        return Err(SpdyError::HeaderBlock("header count exceeds the block"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u32_of(&mut b)?;
        if n == 0 {
            return Err(SpdyError::HeaderBlock("empty header name"));
        }
        let name = String::from_utf8_lossy(take(&mut b, n)?).to_ascii_lowercase();
        let n = u32_of(&mut b)?;
        let value = take(&mut b, n)?;
        for v in value.split(|&c| c == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    if !b.is_empty() {
        return Err(SpdyError::HeaderBlock("bytes after the last header"));
    }
    Ok(headers)
}

/// Decodes frames received on a connection (owns the receive-side zlib context).
#[derive(Debug)]
pub struct FrameDecoder {
    inflater: HeaderInflater,
    max_frame_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_be_bytes(a)
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self {
            inflater: HeaderInflater::new(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// Frames whose payload is longer than `len` are rejected with
    /// [`SpdyError::FrameTooLarge`] (default [`DEFAULT_MAX_FRAME_LEN`]).
    pub fn set_max_frame_len(&mut self, len: usize) {
        self.max_frame_len = len;
    }

    /// Removes one complete frame from the front of `buf`. `Ok(None)`: more bytes are needed
    /// (nothing consumed). Control frames of unknown types are skipped, as the spec requires.
    /// After an error the connection cannot continue (the header compression context may be
    /// out of step).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        loop {
            if buf.len() < 8 {
                return Ok(None);
            }
            let len =
                (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
            if len > self.max_frame_len {
                return Err(SpdyError::FrameTooLarge(len));
            }
            if buf.len() < 8 + len {
                buf.reserve(8 + len - buf.len());
                return Ok(None);
            }
            let mut frame = buf.split_to(8 + len).freeze();
            let word = frame.get_u32();
            let flags = frame.get_u8();
            frame.advance(3);
            let body = frame;
            if word & 0x8000_0000 == 0 {
                let stream_id = word & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(SpdyError::InvalidFrame("DATA frame on stream 0"));
                }
                return Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data: body,
                }));
            }
            let version = ((word >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
            let kind = (word & 0xffff) as u16;
            if let Some(frame) = self.control(kind, flags, &body)? {
                return Ok(Some(frame));
            }
        }
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut raw = Vec::new();
        self.inflater.inflate(block, &mut raw)?;
        decode_header_block(&raw)
    }

    fn control(&mut self, kind: u16, flags: u8, b: &[u8]) -> Result<Option<Frame>, SpdyError> {
        use frame_type::*;
        let sid = |b: &[u8]| be32(b) & 0x7fff_ffff;
        let need = |n: usize, exact: bool, what: &'static str| {
            if b.len() < n || (exact && b.len() != n) {
                Err(SpdyError::InvalidFrame(what))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(10, false, "short SYN_STREAM")?;
                let stream_id = sid(b);
                if stream_id == 0 {
                    return Err(SpdyError::InvalidFrame("SYN_STREAM for stream 0"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_id: sid(&b[4..]),
                    priority: b[8] >> 5,
                    slot: b[9],
                    flags,
                    headers: self.headers(&b[10..])?,
                }
            }
            SYN_REPLY | HEADERS => {
                need(4, false, "short SYN_REPLY/HEADERS")?;
                let stream_id = sid(b);
                if stream_id == 0 {
                    return Err(SpdyError::InvalidFrame("SYN_REPLY/HEADERS for stream 0"));
                }
                let headers = self.headers(&b[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                need(8, true, "RST_STREAM length is not 8")?;
                Frame::RstStream {
                    stream_id: sid(b),
                    status: be32(&b[4..]),
                }
            }
            SETTINGS => {
                need(4, false, "short SETTINGS")?;
                let count = be32(b) as usize;
                if Some(b.len() - 4) != count.checked_mul(8) {
                    return Err(SpdyError::InvalidFrame(
                        "SETTINGS count does not match length",
                    ));
                }
                let entries = b[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: be32(&e[..4]) & 0x00ff_ffff,
                        value: be32(&e[4..]),
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need(4, true, "PING length is not 4")?;
                Frame::Ping { id: be32(b) }
            }
            GOAWAY => {
                // SPDY/3 GOAWAY has a status; tolerate the SPDY/2 form without it.
                if b.len() != 8 && b.len() != 4 {
                    return Err(SpdyError::InvalidFrame("GOAWAY length is not 8"));
                }
                Frame::GoAway {
                    last_good_stream_id: sid(b),
                    status: if b.len() == 8 { be32(&b[4..]) } else { 0 },
                }
            }
            WINDOW_UPDATE => {
                need(8, true, "WINDOW_UPDATE length is not 8")?;
                Frame::WindowUpdate {
                    stream_id: sid(b),
                    delta: be32(&b[4..]) & 0x7fff_ffff,
                }
            }
            // NOOP (SPDY/2), CREDENTIAL and anything newer: ignored.
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }
}

/// Encodes frames sent on a connection (owns the send-side zlib context).
#[derive(Debug)]
pub struct FrameEncoder {
    deflater: HeaderDeflater,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

fn put_control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    out.put_uint(len as u64, 3);
}

impl FrameEncoder {
    pub fn new() -> Self {
        Self {
            deflater: HeaderDeflater::new(),
        }
    }

    fn header_block(
        &mut self,
        headers: &[(String, String)],
        room: usize,
    ) -> Result<Vec<u8>, SpdyError> {
        let raw = encode_header_block(headers);
        // zlib's worst case, checked before compressing, so a refused block leaves the
        // compression context untouched.
        let size = HeaderDeflater::bound(raw.len());
        if size > MAX_PAYLOAD - room {
            return Err(SpdyError::FrameTooLarge(size));
        }
        let mut out = Vec::with_capacity(size);
        self.deflater.compress_sync(&raw, &mut out);
        Ok(out)
    }

    /// Appends `frame` to `out`. DATA larger than the 24-bit length field is split into
    /// several frames (FIN only on the last). Header blocks that cannot fit in one frame are
    /// [`SpdyError::FrameTooLarge`] (nothing is written then). Stream ids are masked to 31
    /// bits.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        use frame_type::*;
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = self.header_block(headers, 10)?;
                put_control(out, SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_id & 0x7fff_ffff);
                out.put_u8((priority & 7) << 5);
                out.put_u8(*slot);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let block = self.header_block(headers, 4)?;
                put_control(out, kind, *flags, 4 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                put_control(out, RST_STREAM, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                let len = 4 + 8 * entries.len();
                if len > MAX_PAYLOAD {
                    return Err(SpdyError::FrameTooLarge(len));
                }
                put_control(out, SETTINGS, *flags, len);
                out.put_u32(entries.len() as u32);
                for e in entries {
                    out.put_u8(e.flags);
                    out.put_uint(u64::from(e.id & 0x00ff_ffff), 3);
                    out.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                put_control(out, PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                put_control(out, GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                put_control(out, WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let mut chunks = data.chunks(MAX_PAYLOAD).peekable();
                if chunks.peek().is_none() {
                    out.put_u32(stream_id & 0x7fff_ffff);
                    out.put_u8(*flags);
                    out.put_uint(0, 3);
                }
                while let Some(chunk) = chunks.next() {
                    let last = chunks.peek().is_none();
                    out.put_u32(stream_id & 0x7fff_ffff);
                    out.put_u8(if last { *flags } else { flags & !FLAG_FIN });
                    out.put_uint(chunk.len() as u64, 3);
                    out.put_slice(chunk);
                }
            }
        }
        Ok(())
    }
}

/// Both directions of a connection's framing: a [`FrameDecoder`] for what is received and a
/// [`FrameEncoder`] for what is sent, each with its own header compression context.
#[derive(Debug, Default)]
pub struct FrameCodec {
    pub decoder: FrameDecoder,
    pub encoder: FrameEncoder,
}

impl FrameCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`FrameDecoder::decode`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        self.decoder.decode(buf)
    }

    /// See [`FrameEncoder::encode`].
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        self.encoder.encode(frame, out)
    }

    /// The two halves, e.g. for a reader task and a writer task.
    pub fn split(self) -> (FrameDecoder, FrameEncoder) {
        (self.decoder, self.encoder)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spdy::DICTIONARY;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Decodes `bytes` with a fresh decoder, checking the whole input is one frame.
    fn decode_one(bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        let f = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        f
    }

    fn encode_one(frame: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        FrameEncoder::new().encode(frame, &mut out).unwrap();
        out.to_vec()
    }

    /// Frames without header blocks: bytes written out from the spec layout.
    #[test]
    fn fixed_layout_frames() {
        let cases: Vec<(Vec<u8>, Frame)> = vec![
            (
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5],
                Frame::RstStream {
                    stream_id: 5,
                    status: rst::CANCEL,
                },
            ),
            (
                vec![
                    0x80, 3, 0, 4, 0, 0, 0, 20, 0, 0, 0, 2, //
                    0, 0, 0, 7, 0, 1, 0, 0, //
                    1, 0, 0, 4, 0, 0, 0, 100,
                ],
                Frame::Settings {
                    flags: 0,
                    entries: vec![
                        Setting {
                            flags: 0,
                            id: 7,
                            value: 65536,
                        },
                        Setting {
                            flags: 1,
                            id: 4,
                            value: 100,
                        },
                    ],
                },
            ),
            (
                vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
                Frame::Ping { id: 1 },
            ),
            (
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0],
                Frame::GoAway {
                    last_good_stream_id: 7,
                    status: goaway::OK,
                },
            ),
            (
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0],
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta: 65536,
                },
            ),
            (
                vec![0, 0, 0, 3, 1, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'],
                Frame::Data {
                    stream_id: 3,
                    flags: FLAG_FIN,
                    data: Bytes::from_static(b"hello"),
                },
            ),
            (
                vec![0, 0, 0, 1, 0, 0, 0, 0],
                Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::new(),
                },
            ),
        ];
        for (bytes, frame) in cases {
            assert_eq!(decode_one(&bytes), frame);
            assert_eq!(encode_one(&frame), bytes, "{frame:?}");
        }
    }

    /// SYN_STREAM and SYN_REPLY built by hand: frame header, fields, then a header block
    /// compressed with zlib by Python (level 9, SPDY dictionary, sync flush), as Go does.
    #[test]
    fn syn_frames_with_compressed_headers() {
        let raw = encode_header_block(&h(&[("streamtype", "error"), ("port", "8080")]));
        assert_eq!(
            raw,
            b"\x00\x00\x00\x02\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error\
              \x00\x00\x00\x04port\x00\x00\x00\x048080"
                .to_vec()
        );
        let raw2 = encode_header_block(&h(&[("status", "200")]));
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, zlib\n\
                 d = bytes.fromhex(sys.argv[1]); c = zlib.compressobj(9, zdict=d)\n\
                 for x in sys.argv[2:]:\n    print((c.compress(bytes.fromhex(x)) + c.flush(zlib.Z_SYNC_FLUSH)).hex())",
            )
            .arg(DICTIONARY.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .arg(raw.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .arg(raw2.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let blocks: Vec<Vec<u8>> = text
            .lines()
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(blocks.len(), 2);

        let mut syn = vec![0x80, 3, 0, 1, FLAG_FIN];
        let len = 10 + blocks[0].len();
        syn.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        syn.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0]);
        syn.extend_from_slice(&blocks[0]);
        let mut reply = vec![0x80, 3, 0, 2, 0];
        reply.extend_from_slice(&((4 + blocks[1].len()) as u32).to_be_bytes()[1..]);
        reply.extend_from_slice(&[0, 0, 0, 1]);
        reply.extend_from_slice(&blocks[1]);

        let mut buf = BytesMut::new();
        buf.extend_from_slice(&syn);
        buf.extend_from_slice(&reply);
        let mut dec = FrameDecoder::new();
        assert_eq!(
            dec.decode(&mut buf).unwrap().unwrap(),
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 3,
                slot: 0,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "error"), ("port", "8080")]),
            }
        );
        assert_eq!(
            dec.decode(&mut buf).unwrap().unwrap(),
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: h(&[("status", "200")]),
            }
        );
        assert!(dec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn header_frames_round_trip_through_one_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 7,
                slot: 0,
                flags: 0,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: h(&[("a", "1"), ("a", "2"), ("b", "")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 1,
                priority: 0,
                slot: 9,
                flags: FLAG_UNIDIRECTIONAL,
                headers: h(&[("x-long", &"v".repeat(100_000))]),
            },
        ];
        let mut enc = FrameEncoder::new();
        let mut buf = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut buf).unwrap();
        }
        let mut dec = FrameDecoder::new();
        // Feed one byte at a time: the decoder must wait for whole frames.
        let mut input = BytesMut::new();
        let mut got = Vec::new();
        for b in buf {
            input.put_u8(b);
            while let Some(f) = dec.decode(&mut input).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn header_block_rules() {
        let block = encode_header_block(&h(&[("Content-Type", "a"), ("X", "1"), ("x", "2")]));
        assert_eq!(
            decode_header_block(&block).unwrap(),
            h(&[("content-type", "a"), ("x", "1"), ("x", "2")])
        );
        assert!(decode_header_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_header_block(&[0, 0, 0, 0, 1]).is_err());
        assert!(decode_header_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_header_block(&[0, 0]).is_err());
        assert_eq!(decode_header_block(&[0, 0, 0, 0]).unwrap(), vec![]);
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut buf = BytesMut::new();
        // NOOP (type 5) with a payload, and type 0x1234.
        buf.extend_from_slice(&[0x80, 3, 0, 5, 0, 0, 0, 2, 9, 9]);
        buf.extend_from_slice(&[0x80, 3, 0x12, 0x34, 0xff, 0, 0, 0]);
        buf.extend_from_slice(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Ping { id: 2 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_frames() {
        let bad: &[&[u8]] = &[
            &[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],    // version 2
            &[0x80, 3, 0, 6, 0, 0, 0, 5, 0, 0, 0, 1, 0], // PING length 5
            &[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1],    // short RST
            &[0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 1],    // SETTINGS count 1, no entry
            &[0, 0, 0, 0, 0, 0, 0, 0],                   // DATA on stream 0
            &[0x80, 3, 0, 1, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], // SYN_STREAM, no block
            &[0x80, 3, 0, 2, 0, 0, 0, 6, 0, 0, 0, 1, 0x78, 0x01], // bad zlib header
        ];
        for b in bad {
            let mut buf = BytesMut::from(*b);
            assert!(FrameDecoder::new().decode(&mut buf).is_err(), "{b:?}");
        }
        let mut dec = FrameDecoder::new();
        dec.set_max_frame_len(100);
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0, 0, 101][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(SpdyError::FrameTooLarge(101))
        ));
    }

    #[test]
    fn large_data_is_split() {
        let data = Bytes::from(vec![7u8; MAX_PAYLOAD + 10]);
        let mut out = BytesMut::new();
        FrameEncoder::new()
            .encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: FLAG_FIN,
                    data: data.clone(),
                },
                &mut out,
            )
            .unwrap();
        let mut dec = FrameDecoder::new();
        dec.set_max_frame_len(MAX_PAYLOAD);
        let Some(Frame::Data {
            flags: 0, data: a, ..
        }) = dec.decode(&mut out).unwrap()
        else {
            panic!("first frame")
        };
        let Some(Frame::Data {
            flags: FLAG_FIN,
            data: b,
            ..
        }) = dec.decode(&mut out).unwrap()
        else {
            panic!("second frame")
        };
        assert_eq!(a.len() + b.len(), data.len());
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        // The first part is length-prefixed header names up to "origin".
        let mut i = 0;
        let mut names = Vec::new();
        while let Some(len) = DICTIONARY.get(i..i + 4).map(be32) {
            let len = len as usize;
            if len == 0 || len > 40 {
                break;
            }
            names.push(std::str::from_utf8(&DICTIONARY[i + 4..i + 4 + len]).unwrap());
            i += 4 + len;
        }
        assert_eq!(names.len(), 65);
        assert_eq!(names.last(), Some(&"origin"));
        assert_eq!(i, 849);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5bd7);
        // A valid prefix (one SYN_STREAM) to get past the zlib header sometimes.
        let mut good = BytesMut::new();
        FrameEncoder::new()
            .encode(
                &Frame::SynStream {
                    stream_id: 1,
                    associated_id: 0,
                    priority: 0,
                    slot: 0,
                    flags: 0,
                    headers: h(&[("streamtype", "stdin")]),
                },
                &mut good,
            )
            .unwrap();
        let mut frames = 0;
        for i in 0..20_000 {
            let mut input = BytesMut::new();
            if i % 2 == 0 {
                input.extend_from_slice(&good);
            }
            let n = rng.random_range(0..200);
            for _ in 0..n {
                // Bias towards plausible headers: control bit + version 3, small lengths.
                let b: u8 = rng.random();
                input.put_u8(b);
            }
            if i % 3 == 0 && input.len() >= 8 {
                let at = if i % 2 == 0 { good.len() } else { 0 };
                if input.len() >= at + 8 {
                    input[at] = 0x80;
                    input[at + 1] = 3;
                    input[at + 2] = 0;
                    input[at + 3] = rng.random_range(0..11);
                    input[at + 5] = 0;
                    input[at + 6] = 0;
                }
            }
            let mut dec = FrameDecoder::new();
            while let Ok(Some(_)) = dec.decode(&mut input) {
                frames += 1;
            }
        }
        assert!(frames > 10_000);
    }
}
