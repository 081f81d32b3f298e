//! SPDY/3 header compression: one zlib stream per direction with the SPDY/3 [`DICTIONARY`],
//! each header block ending at a sync flush.
//!
//! Both halves are [`flate2`] (the `zlib-rs` backend) with its preset-dictionary support.
//! The sync flush matters for interoperability: Go's `compress/flate` (under
//! `golang.org/x/net/spdy`, hence spdystream, hence client-go and the kubelet) only hands out
//! the bytes of a stored block once it has read the *next* block header, unless the block is
//! the empty stored block (`00 00 ff ff`) a real zlib sync flush ends with. A header block
//! without that marker makes Go read past the frame, and the connection dies on the second
//! header block.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::DICTIONARY;

/// Most bytes one header block may inflate to (a decompression bomb guard). Kubernetes' header
/// blocks are a few hundred bytes.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Why a header block could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("corrupt zlib data: {0}")]
    Corrupt(String),
    #[error("zlib stream wants dictionary {wanted:#010x}, not the SPDY/3 one")]
    WrongDictionary { wanted: u32 },
    #[error("header block inflates to more than {0} bytes")]
    TooLarge(usize),
    #[error("header block ends in the middle of the compressed data")]
    Truncated,
    #[error("header decompression failed earlier and cannot continue")]
    Failed,
}

/// The adler32 of the SPDY/3 dictionary: the DICTID a peer's stream names.
pub const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// The receive side: inflates the header blocks of one connection, in order.
pub struct HeaderInflater {
    inner: Decompress,
    max_output: usize,
    failed: bool,
}

impl std::fmt::Debug for HeaderInflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderInflater")
            .field("total_in", &self.inner.total_in())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Default for HeaderInflater {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderInflater {
    pub fn new() -> Self {
        Self {
            inner: Decompress::new(true),
            max_output: MAX_HEADER_BLOCK,
            failed: false,
        }
    }

    /// Changes the per-block output limit (default [`MAX_HEADER_BLOCK`]).
    pub fn set_max_output(&mut self, limit: usize) {
        self.max_output = limit;
    }

    /// Inflates one whole header block (all of a frame's compressed bytes) into `out`. A block
    /// must be complete: the peer's zlib flushed it. After an error the context is out of step
    /// and every later call fails.
    pub fn inflate(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
        if self.failed {
            return Err(CompressionError::Failed);
        }
        let res = self.run(block, out);
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    fn run(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
        let start_out = out.len();
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(1024.max(input.len() * 4));
            }
            let before_in = self.inner.total_in();
            let before_out = self.inner.total_out();
            let status = self
                .inner
                .decompress_vec(input, out, FlushDecompress::Sync)
                .or_else(|e| match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.inner
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| CompressionError::Corrupt(e.to_string()))?;
                        Ok(Status::Ok)
                    }
                    Some(wanted) => Err(CompressionError::WrongDictionary { wanted }),
                    None => Err(CompressionError::Corrupt(e.to_string())),
                })?;
            let used = (self.inner.total_in() - before_in) as usize;
            input = &input[used..];
            let produced = (self.inner.total_out() - before_out) as usize;
            if out.len() - start_out > self.max_output {
                return Err(CompressionError::TooLarge(self.max_output));
            }
            match status {
                Status::StreamEnd => {
                    return Err(CompressionError::Corrupt(
                        "the zlib stream ended (SPDY keeps it open)".into(),
                    ));
                }
                Status::Ok | Status::BufError => {}
            }
            // Done once every input byte is consumed and the last call had room to spare
            // (nothing more is pending inside the inflater).
            if input.is_empty() && out.capacity() > out.len() {
                return Ok(());
            }
            if used == 0 && produced == 0 && out.capacity() > out.len() {
                return Err(CompressionError::Truncated);
            }
        }
    }
}

/// The send side: compresses header blocks of one connection, each ending at a sync flush.
pub struct HeaderDeflater {
    inner: Compress,
}

impl std::fmt::Debug for HeaderDeflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeflater")
            .field("total_out", &self.inner.total_out())
            .finish()
    }
}

impl Default for HeaderDeflater {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDeflater {
    pub fn new() -> Self {
        let mut inner = Compress::new(Compression::default(), true);
        // A fresh stream always accepts a dictionary; the header then carries its DICTID.
        let _ = inner.set_dictionary(DICTIONARY);
        Self { inner }
    }

    /// The most bytes [`compress_sync`](Self::compress_sync) can append for `len` input
    /// bytes: zlib's stored-block worst case plus the header and the sync-flush marker.
    pub fn bound(len: usize) -> usize {
        6 + len + 5 * (len / 16_000 + 1) + 5 + 16
    }

    /// Compresses `raw` and sync-flushes, appending the block to `out`: the output ends with
    /// the empty stored block `00 00 ff ff`, so the peer can decode it without more input.
    pub fn compress_sync(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let mut input = raw;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(Self::bound(input.len()));
            }
            let before_in = self.inner.total_in();
            // Compressing into a vector with room never fails (zlib's only errors are a
            // stream in a bad state or no progress, and both are ruled out here).
            let _ = self.inner.compress_vec(input, out, FlushCompress::Sync);
            let used = (self.inner.total_in() - before_in) as usize;
            input = &input[used..];
            if input.is_empty() && out.capacity() > out.len() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blocks_end_with_the_sync_flush_marker_and_round_trip() {
        let mut d = HeaderDeflater::new();
        let mut i = HeaderInflater::new();
        for (n, raw) in [
            b"\0\0\0\0".to_vec(),
            b"\0\0\0\x01\0\0\0\x04port\0\0\0\x048080".to_vec(),
            vec![b'x'; 200_000],
            b"\0\0\0\0".to_vec(),
        ]
        .into_iter()
        .enumerate()
        {
            let mut block = Vec::new();
            d.compress_sync(&raw, &mut block);
            assert!(
                block.ends_with(&[0, 0, 0xff, 0xff]),
                "block {n}: {block:02x?}"
            );
            assert!(block.len() <= HeaderDeflater::bound(raw.len()), "block {n}");
            if n == 0 {
                // zlib header with FDICT, then the SPDY/3 DICTID.
                assert_eq!(block[0], 0x78);
                assert_ne!(block[1] & 0x20, 0);
                assert_eq!(block[2..6], DICTIONARY_ID.to_be_bytes());
            }
            let mut out = Vec::new();
            i.inflate(&block, &mut out).unwrap();
            assert_eq!(out, raw, "block {n}");
        }
    }

    #[test]
    fn dictionary_id_is_adler32_of_the_dictionary() {
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &x in DICTIONARY {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, DICTIONARY_ID);
    }

    #[test]
    fn bad_input_fails_and_stays_failed() {
        let mut i = HeaderInflater::new();
        assert!(matches!(
            i.inflate(&[0x78, 0x00], &mut Vec::new()),
            Err(CompressionError::Corrupt(_))
        ));
        assert_eq!(
            i.inflate(&[], &mut Vec::new()),
            Err(CompressionError::Failed)
        );
        // Another dictionary id.
        let mut i = HeaderInflater::new();
        let r = i.inflate(&[0x78, 0xbb, 0, 0, 0, 1, 0], &mut Vec::new());
        assert_eq!(r, Err(CompressionError::WrongDictionary { wanted: 1 }));
    }

    #[test]
    fn output_is_limited() {
        let mut d = HeaderDeflater::new();
        let mut block = Vec::new();
        d.compress_sync(&vec![0u8; 100_000], &mut block);
        let mut i = HeaderInflater::new();
        i.set_max_output(10_000);
        assert_eq!(
            i.inflate(&block, &mut Vec::new()),
            Err(CompressionError::TooLarge(10_000))
        );
    }
}
