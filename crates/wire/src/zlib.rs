//! zlib (RFC 1950) around DEFLATE (RFC 1951): just what SPDY header compression needs.
//!
//! SPDY compresses every header block of a connection with **one** zlib stream per direction
//! that never ends. Each header block is a chunk of that stream that ends at a `Z_SYNC_FLUSH`
//! point, and both ends start from a preset dictionary. So:
//!
//! * [`Inflater`] is a streaming decompressor whose state (bit position, current block, Huffman
//!   tables, 32 KiB history window, running adler32) persists across [`Inflater::inflate`]
//!   calls. Unconsumed input is kept buffered, so a call may end anywhere, even in the middle
//!   of a block or of a code: decoding resumes at the next call. The history is pre-seeded with
//!   the dictionary, so back-references may reach into it. It decodes stored, fixed-Huffman
//!   and dynamic-Huffman blocks, checks the header (method, window, `FCHECK`, `DICTID` against
//!   the adler32 of our dictionary) and, if the stream ever ends, the adler32 trailer. Output
//!   per call is capped ([`MAX_OUTPUT_PER_CALL`]) so a tiny input cannot expand into gigabytes.
//!   It never panics, whatever the input: every malformed stream is a [`ZlibError`], after
//!   which the inflater stays failed.
//! * [`Deflater`] produces a valid zlib stream made of **stored** (uncompressed) blocks only:
//!   a header announcing the dictionary, then, per [`Deflater::compress_sync`] call, non-final
//!   stored blocks. A stored block ends byte-aligned, exactly where a sync flush would leave
//!   the stream, and no final block or trailer is ever written. Not compressing is a valid
//!   DEFLATE encoding that every inflater accepts (the dictionary is simply never referenced);
//!   SPDY header blocks are a few hundred bytes, so the lost compression is irrelevant, and a
//!   compressor is a lot of code that would need its own proof of correctness.

use thiserror::Error;

/// Most bytes one [`Inflater::inflate`] call may produce before failing with
/// [`ZlibError::OutputLimit`] (a guard against decompression bombs).
pub const MAX_OUTPUT_PER_CALL: usize = 1 << 20;

/// DEFLATE back-references reach at most this far back.
const WINDOW: usize = 32 * 1024;

/// Largest stored block.
const MAX_STORED: usize = 65535;

/// Why a zlib stream was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ZlibError {
    #[error("invalid zlib header check bits")]
    HeaderCheck,
    #[error("unsupported zlib compression method {0}")]
    Method(u8),
    #[error("zlib window size too large")]
    WindowSize,
    #[error("zlib stream needs a preset dictionary and none was configured")]
    MissingDictionary,
    #[error("zlib dictionary id mismatch: stream wants {wanted:#010x}, ours is {ours:#010x}")]
    WrongDictionary { wanted: u32, ours: u32 },
    #[error("invalid deflate block type 3")]
    BlockType,
    #[error("stored block length does not match its complement")]
    StoredLength,
    #[error("invalid Huffman code lengths")]
    CodeLengths,
    #[error("invalid Huffman code in the compressed data")]
    Code,
    #[error("invalid length or distance symbol")]
    Symbol,
    #[error("back-reference distance {0} reaches before the start of the data")]
    Distance(usize),
    #[error("adler32 checksum mismatch")]
    Checksum,
    #[error("data after the end of the zlib stream")]
    TrailingData,
    #[error("decompressed output exceeds {0} bytes in one call")]
    OutputLimit(usize),
    #[error("inflater failed earlier and cannot continue")]
    Failed,
}

/// The adler32 checksum of `data` (RFC 1950 section 8.2).
pub fn adler32(data: &[u8]) -> u32 {
    let mut a = Adler::new();
    a.update(data);
    a.finish()
}

#[derive(Debug, Clone, Copy)]
struct Adler {
    a: u32,
    b: u32,
}

impl Adler {
    const MOD: u32 = 65521;
    /// Largest n such that 255n(n+1)/2 + (n+1)(MOD-1) fits in a u32 (from zlib).
    const NMAX: usize = 5552;

    fn new() -> Self {
        Self { a: 1, b: 0 }
    }

    fn update(&mut self, data: &[u8]) {
        for chunk in data.chunks(Self::NMAX) {
            for &x in chunk {
                self.a += u32::from(x);
                self.b += self.a;
            }
            self.a %= Self::MOD;
            self.b %= Self::MOD;
        }
    }

    fn finish(&self) -> u32 {
        (self.b << 16) | self.a
    }
}

// ---------------------------------------------------------------------------------------------
// Inflate
// ---------------------------------------------------------------------------------------------

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// Order in which the code-length code lengths are sent (RFC 1951 section 3.2.7).
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Reads bits LSB-first from a byte slice; `pos` counts bits.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn total_bits(&self) -> usize {
        self.data.len().saturating_mul(8)
    }

    /// `n` (at most 16) bits, or `None` if the input ends first.
    fn bits(&mut self, n: u32) -> Option<u32> {
        if self.pos.checked_add(n as usize)? > self.total_bits() {
            return None;
        }
        let mut val = 0u32;
        let mut got = 0u32;
        while got < n {
            let byte = u32::from(*self.data.get(self.pos >> 3)?);
            let off = (self.pos & 7) as u32;
            let take = (8 - off).min(n - got);
            val |= ((byte >> off) & ((1u32 << take) - 1)) << got;
            got += take;
            self.pos += take as usize;
        }
        Some(val)
    }

    fn align(&mut self) {
        self.pos = self.pos.saturating_add(7) & !7;
    }

    /// Whole bytes left after the (aligned) position.
    fn rest(&self) -> &[u8] {
        self.data.get(self.pos >> 3..).unwrap_or(&[])
    }
}

/// A canonical Huffman code (the representation of zlib's `puff.c`).
#[derive(Debug, Clone)]
struct Huffman {
    /// Number of codes of each length (index 0 unused).
    count: [u16; 16],
    /// Symbols ordered by code.
    symbol: Vec<u16>,
}

impl Huffman {
    /// Builds the code from per-symbol lengths. Over-subscribed sets are rejected; incomplete
    /// ones are allowed (as zlib does for single-code distance trees); decoding an unused code
    /// then fails with [`ZlibError::Code`].
    fn new(lengths: &[u8]) -> Result<Self, ZlibError> {
        let mut count = [0u16; 16];
        for &l in lengths {
            let slot = count
                .get_mut(usize::from(l))
                .ok_or(ZlibError::CodeLengths)?;
            *slot += 1;
        }
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left <<= 1;
            left -= i32::from(c);
            if left < 0 {
                return Err(ZlibError::CodeLengths);
            }
        }
        let mut offs = [0usize; 16];
        for len in 1..15 {
            offs[len + 1] = offs[len] + usize::from(count[len]);
        }
        let used = lengths.iter().filter(|&&l| l != 0).count();
        let mut symbol = vec![0u16; used];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                let o = &mut offs[usize::from(l)];
                let slot = symbol.get_mut(*o).ok_or(ZlibError::CodeLengths)?;
                *slot = sym as u16;
                *o += 1;
            }
        }
        Ok(Self { count, symbol })
    }

    /// Decodes one symbol; `Ok(None)` if the input ends inside the code.
    fn decode(&self, br: &mut BitReader<'_>) -> Result<Option<u16>, ZlibError> {
        let mut code: i32 = 0;
        let mut first: i32 = 0;
        let mut index: i32 = 0;
        for &count in &self.count[1..] {
            let Some(bit) = br.bits(1) else {
                return Ok(None);
            };
            code |= bit as i32;
            let count = i32::from(count);
            if code - count < first {
                let i = usize::try_from(index + (code - first)).map_err(|_| ZlibError::Code)?;
                return self.symbol.get(i).copied().map(Some).ok_or(ZlibError::Code);
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        Err(ZlibError::Code)
    }

    fn fixed() -> (Self, Self) {
        let mut lit = [0u8; 288];
        for (i, l) in lit.iter_mut().enumerate() {
            *l = match i {
                0..=143 => 8,
                144..=255 => 9,
                256..=279 => 7,
                _ => 8,
            };
        }
        // Both sets are known-good; the fallback is unreachable but keeps this panic-free.
        let lit = Self::new(&lit).unwrap_or_else(|_| Self::empty());
        let dist = Self::new(&[5u8; 30]).unwrap_or_else(|_| Self::empty());
        (lit, dist)
    }

    fn empty() -> Self {
        Self {
            count: [0; 16],
            symbol: Vec::new(),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Expecting the 2-byte zlib header (+ 4-byte DICTID).
    Header,
    /// Expecting a block header.
    Block,
    /// Inside a stored block.
    Stored { remaining: usize, last: bool },
    /// Inside a fixed or dynamic Huffman block.
    Codes {
        lit: Box<Huffman>,
        dist: Box<Huffman>,
        last: bool,
    },
    /// After the final block: expecting the adler32 trailer.
    Trailer,
    /// Stream complete; nothing more may follow.
    Done,
    /// An error happened; the stream cannot be resumed.
    Failed,
}

/// Result of one decoding step.
enum Step {
    /// The state changed (or output was produced); keep going.
    Next(State),
    /// The input ends before this step could complete; the reader was rewound to where the
    /// step began.
    NeedMore,
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(Step::NeedMore),
        }
    };
}

/// Where decoded bytes go: the caller's buffer, the history window and the checksum.
struct Sink<'a> {
    out: &'a mut Vec<u8>,
    hist: &'a mut Vec<u8>,
    adler: &'a mut Adler,
    produced: usize,
    limit: usize,
}

impl Sink<'_> {
    fn reserve(&mut self, n: usize) -> Result<(), ZlibError> {
        self.produced = self.produced.saturating_add(n);
        if self.produced > self.limit {
            return Err(ZlibError::OutputLimit(self.limit));
        }
        Ok(())
    }

    fn literal(&mut self, b: u8) -> Result<(), ZlibError> {
        self.reserve(1)?;
        self.out.push(b);
        self.hist.push(b);
        self.adler.update(&[b]);
        self.trim();
        Ok(())
    }

    fn slice(&mut self, data: &[u8]) -> Result<(), ZlibError> {
        self.reserve(data.len())?;
        self.out.extend_from_slice(data);
        self.hist.extend_from_slice(data);
        self.adler.update(data);
        self.trim();
        Ok(())
    }

    fn copy(&mut self, dist: usize, len: usize) -> Result<(), ZlibError> {
        if dist == 0 || dist > self.hist.len() {
            return Err(ZlibError::Distance(dist));
        }
        self.reserve(len)?;
        let start = self.out.len();
        for _ in 0..len {
            let b = self
                .hist
                .get(self.hist.len() - dist)
                .copied()
                .ok_or(ZlibError::Distance(dist))?;
            self.hist.push(b);
            self.out.push(b);
        }
        self.adler.update(self.out.get(start..).unwrap_or(&[]));
        self.trim();
        Ok(())
    }

    /// Keeps the history between 32 and 64 KiB so trimming is amortised.
    fn trim(&mut self) {
        if self.hist.len() > 2 * WINDOW {
            let cut = self.hist.len() - WINDOW;
            self.hist.drain(..cut);
        }
    }
}

/// Streaming zlib decompressor; see the [module documentation](self).
pub struct Inflater {
    dict: Vec<u8>,
    dict_id: u32,
    /// Input not yet consumed (the first `bit_pos` bits of it are consumed).
    input: Vec<u8>,
    bit_pos: usize,
    state: State,
    /// The last 32..64 KiB of output, initially the dictionary.
    hist: Vec<u8>,
    adler: Adler,
    max_output: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("dict_id", &self.dict_id)
            .field("buffered", &self.input.len())
            .field("state", &self.state)
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// An inflater for streams without a preset dictionary.
    pub fn new() -> Self {
        Self::with_dictionary(&[])
    }

    /// An inflater that supplies `dict` when the stream header asks for a dictionary (FDICT)
    /// whose id is `adler32(dict)`.
    pub fn with_dictionary(dict: &[u8]) -> Self {
        Self {
            dict: dict.to_vec(),
            dict_id: adler32(dict),
            input: Vec::new(),
            bit_pos: 0,
            state: State::Header,
            hist: Vec::new(),
            adler: Adler::new(),
            max_output: MAX_OUTPUT_PER_CALL,
        }
    }

    /// Changes the per-call output limit (default [`MAX_OUTPUT_PER_CALL`]).
    pub fn set_max_output(&mut self, limit: usize) {
        self.max_output = limit;
    }

    /// True once the final block and the checksum trailer have been read.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds `input`, appending everything that can be decoded to `out`. Input that ends in
    /// the middle of a block, a code or the header is kept and decoding resumes at the next
    /// call. After an error the inflater stays failed.
    pub fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ZlibError> {
        if matches!(self.state, State::Failed) {
            return Err(ZlibError::Failed);
        }
        self.input.extend_from_slice(input);
        let res = self.run(out);
        let consumed = (self.bit_pos / 8).min(self.input.len());
        self.input.drain(..consumed);
        self.bit_pos -= consumed * 8;
        if res.is_err() {
            self.state = State::Failed;
            self.input = Vec::new();
            self.bit_pos = 0;
        }
        res
    }

    fn run(&mut self, out: &mut Vec<u8>) -> Result<(), ZlibError> {
        let mut br = BitReader {
            data: &self.input,
            pos: self.bit_pos,
        };
        let mut sink = Sink {
            out,
            hist: &mut self.hist,
            adler: &mut self.adler,
            produced: 0,
            limit: self.max_output,
        };
        let result = loop {
            let step = match &mut self.state {
                State::Header => atomic(&mut br, |br| {
                    header(br, &self.dict, self.dict_id, sink.hist)
                }),
                State::Block => atomic(&mut br, block_header),
                State::Stored { remaining, last } => stored(&mut br, &mut sink, remaining, *last),
                State::Codes { lit, dist, last } => codes(&mut br, &mut sink, lit, dist, *last),
                State::Trailer => atomic(&mut br, |br| trailer(br, sink.adler.finish())),
                State::Done => {
                    if br.rest().is_empty() {
                        break Ok(());
                    }
                    Err(ZlibError::TrailingData)
                }
                State::Failed => Err(ZlibError::Failed),
            };
            match step {
                Ok(Step::Next(next)) => self.state = next,
                Ok(Step::NeedMore) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.bit_pos = br.pos;
        result
    }
}

/// Runs a step that must complete as a whole, rewinding the reader if the input ends first.
fn atomic<'a>(
    br: &mut BitReader<'a>,
    f: impl FnOnce(&mut BitReader<'a>) -> Result<Step, ZlibError>,
) -> Result<Step, ZlibError> {
    let save = br.pos;
    let r = f(br);
    if matches!(r, Ok(Step::NeedMore)) {
        br.pos = save;
    }
    r
}

fn header(
    br: &mut BitReader<'_>,
    dict: &[u8],
    dict_id: u32,
    hist: &mut Vec<u8>,
) -> Result<Step, ZlibError> {
    let cmf = need!(br.bits(8));
    let flg = need!(br.bits(8));
    if (cmf << 8 | flg) % 31 != 0 {
        return Err(ZlibError::HeaderCheck);
    }
    if cmf & 0x0f != 8 {
        return Err(ZlibError::Method((cmf & 0x0f) as u8));
    }
    if cmf >> 4 > 7 {
        return Err(ZlibError::WindowSize);
    }
    hist.clear();
    if flg & 0x20 != 0 {
        let mut wanted = 0u32;
        for _ in 0..4 {
            wanted = wanted << 8 | need!(br.bits(8));
        }
        if dict.is_empty() {
            return Err(ZlibError::MissingDictionary);
        }
        if wanted != dict_id {
            return Err(ZlibError::WrongDictionary {
                wanted,
                ours: dict_id,
            });
        }
        hist.extend_from_slice(&dict[dict.len().saturating_sub(WINDOW)..]);
    }
    Ok(Step::Next(State::Block))
}

fn block_header(br: &mut BitReader<'_>) -> Result<Step, ZlibError> {
    let last = need!(br.bits(1)) == 1;
    match need!(br.bits(2)) {
        0 => {
            br.align();
            let len = need!(br.bits(16));
            let nlen = need!(br.bits(16));
            if len != !nlen & 0xffff {
                return Err(ZlibError::StoredLength);
            }
            Ok(Step::Next(State::Stored {
                remaining: len as usize,
                last,
            }))
        }
        1 => {
            let (lit, dist) = Huffman::fixed();
            Ok(Step::Next(State::Codes {
                lit: Box::new(lit),
                dist: Box::new(dist),
                last,
            }))
        }
        2 => dynamic_tables(br, last),
        _ => Err(ZlibError::BlockType),
    }
}

fn dynamic_tables(br: &mut BitReader<'_>, last: bool) -> Result<Step, ZlibError> {
    let nlen = need!(br.bits(5)) as usize + 257;
    let ndist = need!(br.bits(5)) as usize + 1;
    let ncode = need!(br.bits(4)) as usize + 4;
    if nlen > 286 || ndist > 30 {
        return Err(ZlibError::CodeLengths);
    }
    let mut lengths = [0u8; 320];
    for &idx in CL_ORDER.iter().take(ncode) {
        lengths[idx] = need!(br.bits(3)) as u8;
    }
    let lencode = Huffman::new(&lengths[..19])?;
    let total = nlen + ndist;
    let mut index = 0;
    lengths[..19].fill(0);
    while index < total {
        let Some(sym) = lencode.decode(br)? else {
            return Ok(Step::NeedMore);
        };
        if sym < 16 {
            lengths[index] = sym as u8;
            index += 1;
            continue;
        }
        let (value, repeat) = match sym {
            16 => {
                let prev = *lengths
                    .get(index.wrapping_sub(1))
                    .filter(|_| index > 0)
                    .ok_or(ZlibError::CodeLengths)?;
                (prev, 3 + need!(br.bits(2)) as usize)
            }
            17 => (0, 3 + need!(br.bits(3)) as usize),
            18 => (0, 11 + need!(br.bits(7)) as usize),
            _ => return Err(ZlibError::CodeLengths),
        };
        if index + repeat > total {
            return Err(ZlibError::CodeLengths);
        }
        lengths[index..index + repeat].fill(value);
        index += repeat;
    }
    if lengths[256] == 0 {
        return Err(ZlibError::CodeLengths);
    }
    let lit = Huffman::new(&lengths[..nlen])?;
    let dist = Huffman::new(&lengths[nlen..total])?;
    Ok(Step::Next(State::Codes {
        lit: Box::new(lit),
        dist: Box::new(dist),
        last,
    }))
}

fn after_block(last: bool) -> State {
    if last { State::Trailer } else { State::Block }
}

fn stored(
    br: &mut BitReader<'_>,
    sink: &mut Sink<'_>,
    remaining: &mut usize,
    last: bool,
) -> Result<Step, ZlibError> {
    if *remaining > 0 {
        let rest = br.rest();
        let n = (*remaining).min(rest.len());
        if n == 0 {
            return Ok(Step::NeedMore);
        }
        sink.slice(&rest[..n])?;
        br.pos += n * 8;
        *remaining -= n;
        if *remaining > 0 {
            return Ok(Step::NeedMore);
        }
    }
    Ok(Step::Next(after_block(last)))
}

fn codes(
    br: &mut BitReader<'_>,
    sink: &mut Sink<'_>,
    lit: &Huffman,
    dist: &Huffman,
    last: bool,
) -> Result<Step, ZlibError> {
    loop {
        let save = br.pos;
        match symbol(br, sink, lit, dist)? {
            Some(true) => {}
            Some(false) => return Ok(Step::Next(after_block(last))),
            None => {
                br.pos = save;
                return Ok(Step::NeedMore);
            }
        }
    }
}

/// Decodes one literal or length/distance pair. `Some(true)`: output produced;
/// `Some(false)`: end of block; `None`: input ended inside the symbol (nothing was output).
fn symbol(
    br: &mut BitReader<'_>,
    sink: &mut Sink<'_>,
    lit: &Huffman,
    dist: &Huffman,
) -> Result<Option<bool>, ZlibError> {
    let Some(sym) = lit.decode(br)? else {
        return Ok(None);
    };
    let sym = usize::from(sym);
    if sym < 256 {
        sink.literal(sym as u8)?;
        return Ok(Some(true));
    }
    if sym == 256 {
        return Ok(Some(false));
    }
    let s = sym - 257;
    let (Some(&base), Some(&extra)) = (LEN_BASE.get(s), LEN_EXTRA.get(s)) else {
        return Err(ZlibError::Symbol);
    };
    let Some(e) = br.bits(u32::from(extra)) else {
        return Ok(None);
    };
    let len = usize::from(base) + e as usize;
    let Some(ds) = dist.decode(br)? else {
        return Ok(None);
    };
    let ds = usize::from(ds);
    let (Some(&dbase), Some(&dextra)) = (DIST_BASE.get(ds), DIST_EXTRA.get(ds)) else {
        return Err(ZlibError::Symbol);
    };
    let Some(de) = br.bits(u32::from(dextra)) else {
        return Ok(None);
    };
    sink.copy(usize::from(dbase) + de as usize, len)?;
    Ok(Some(true))
}

fn trailer(br: &mut BitReader<'_>, ours: u32) -> Result<Step, ZlibError> {
    br.align();
    let mut sum = 0u32;
    for _ in 0..4 {
        sum = sum << 8 | need!(br.bits(8));
    }
    if sum != ours {
        return Err(ZlibError::Checksum);
    }
    Ok(Step::Next(State::Done))
}

// ---------------------------------------------------------------------------------------------
// Deflate (stored blocks only)
// ---------------------------------------------------------------------------------------------

/// zlib compressor emitting stored blocks; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Deflater {
    dict_id: Option<u32>,
    header_written: bool,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    /// A compressor whose stream announces no dictionary.
    pub fn new() -> Self {
        Self {
            dict_id: None,
            header_written: false,
        }
    }

    /// A compressor whose stream announces `dict` (FDICT with `adler32(dict)`), as SPDY
    /// requires. The dictionary is never referenced by the stored blocks, but the peer's
    /// inflater insists on being told about it.
    pub fn with_dictionary(dict: &[u8]) -> Self {
        Self {
            dict_id: Some(adler32(dict)),
            header_written: false,
        }
    }

    /// Appends `input` to the stream as non-final stored blocks (at most 65535 bytes each),
    /// preceded by the zlib header on the first call. The output ends byte-aligned at a block
    /// boundary, i.e. at a sync-flush point; the stream is never finished. An empty `input`
    /// produces one empty stored block (the bytes of a bare sync flush).
    pub fn compress_sync(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if !self.header_written {
            self.header_written = true;
            // CMF: deflate, 32 KiB window. FLG: FLEVEL 0 (fastest: nothing is compressed),
            // FDICT when a dictionary is announced, FCHECK so that CMF*256+FLG is a multiple
            // of 31.
            let cmf: u8 = 0x78;
            let mut flg: u8 = if self.dict_id.is_some() { 0x20 } else { 0 };
            let rem = (u16::from(cmf) << 8 | u16::from(flg)) % 31;
            flg |= ((31 - rem) % 31) as u8;
            out.push(cmf);
            out.push(flg);
            if let Some(id) = self.dict_id {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        if input.is_empty() {
            out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
            return;
        }
        for chunk in input.chunks(MAX_STORED) {
            let len = chunk.len() as u16;
            // BFINAL=0, BTYPE=00, then padding to the byte boundary: one zero byte.
            out.push(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::process::Command;

    fn hex(data: &[u8]) -> String {
        data.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Runs a python3 script that reads `args` as hex strings, one per line, on stdin (the
    /// script gets them as `a`), and prints one hex string per line.
    fn python(script: &str, args: &[&[u8]]) -> Vec<Vec<u8>> {
        use std::io::Write;
        use std::process::Stdio;
        let script = format!(
            "import sys, zlib\na = [bytes.fromhex(x) for x in sys.stdin.read().split('\\n')[:-1]]\n{script}"
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the zlib tests");
        let mut input = String::new();
        for a in args {
            input.push_str(&hex(a));
            input.push('\n');
        }
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(unhex)
            .collect()
    }

    /// Python compresses each chunk of `chunks` with one compressobj (dictionary `dict`,
    /// level `level`) and a sync flush after each, printing the compressed pieces.
    fn python_compress(level: i32, dict: &[u8], chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let script = format!(
            "d = a[0]\n\
             c = zlib.compressobj(level={level}, zdict=d) if d else zlib.compressobj(level={level})\n\
             for ch in a[1:]:\n    print((c.compress(ch) + c.flush(zlib.Z_SYNC_FLUSH)).hex())\n"
        );
        let mut args: Vec<&[u8]> = vec![dict];
        args.extend(chunks.iter().map(|c| c.as_slice()));
        python(&script, &args)
    }

    fn sample_chunks() -> Vec<Vec<u8>> {
        let dict = crate::spdy::DICTIONARY;
        let mut rng = StdRng::seed_from_u64(7);
        let mut chunks = vec![
            b"\x00\x00\x00\x02\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error".to_vec(),
            dict[100..400].to_vec(),
            b"hello hello hello hello hello".to_vec(),
            Vec::new(),
        ];
        // Text-like data long enough for dynamic blocks and long matches.
        let words = [
            "content-type",
            "x-stream",
            "port",
            "8080",
            "stdin",
            "stdout",
            "GET",
        ];
        let mut text = Vec::new();
        while text.len() < 200_000 {
            text.extend_from_slice(words[rng.random_range(0..words.len())].as_bytes());
            text.push(if rng.random_bool(0.1) { b'\n' } else { b' ' });
        }
        chunks.push(text);
        // Incompressible data (stored blocks at high levels too).
        let mut noise = vec![0u8; 70_000];
        rng.fill(&mut noise[..]);
        chunks.push(noise);
        chunks.push(dict.to_vec());
        chunks
    }

    #[test]
    fn adler32_known_values() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(crate::spdy::DICTIONARY), 0xe3c6_a7c2);
        let big = vec![0xffu8; 100_000];
        let py = python("print('%08x' % zlib.adler32(a[0]))", &[&big]);
        assert_eq!(
            u32::from_be_bytes(py[0].clone().try_into().unwrap()),
            adler32(&big)
        );
    }

    #[test]
    fn inflates_python_streams_chunk_by_chunk() {
        let dict = crate::spdy::DICTIONARY;
        let chunks = sample_chunks();
        for level in [0, 1, 6, 9] {
            for d in [dict, &[][..]] {
                let pieces = python_compress(level, d, &chunks);
                assert_eq!(pieces.len(), chunks.len());
                // Each piece starts at a byte boundary with a block header (after the 2- or
                // 6-byte zlib header for the first): the long text chunk must give a
                // dynamic-Huffman block (BTYPE 2) at every compressing level.
                if level > 0 {
                    assert_eq!(pieces[4][0] & 0x06, 0x04, "level {level}");
                }
                let mut inf = Inflater::with_dictionary(dict);
                for (piece, chunk) in pieces.iter().zip(&chunks) {
                    let mut out = Vec::new();
                    inf.inflate(piece, &mut out).unwrap();
                    assert_eq!(&out, chunk, "level {level}, dict {}", d.len());
                }
            }
        }
    }

    #[test]
    fn inflates_byte_by_byte_and_in_odd_splits() {
        let dict = crate::spdy::DICTIONARY;
        let chunks = sample_chunks();
        let pieces = python_compress(9, dict, &chunks);
        let whole: Vec<u8> = pieces.concat();
        let expected: Vec<u8> = chunks.concat();
        for split in [1usize, 3, 7, 1000] {
            let mut inf = Inflater::with_dictionary(dict);
            let mut out = Vec::new();
            for part in whole.chunks(split) {
                inf.inflate(part, &mut out).unwrap();
            }
            assert_eq!(out, expected, "split {split}");
        }
    }

    #[test]
    fn references_into_the_dictionary() {
        let dict = crate::spdy::DICTIONARY;
        let chunk = dict[..1000].to_vec();
        let pieces = python_compress(9, dict, std::slice::from_ref(&chunk));
        // Almost everything is a back-reference into the dictionary.
        assert!(pieces[0].len() < 60, "{} bytes", pieces[0].len());
        let mut out = Vec::new();
        Inflater::with_dictionary(dict)
            .inflate(&pieces[0], &mut out)
            .unwrap();
        assert_eq!(out, chunk);
    }

    #[test]
    fn complete_stream_with_trailer() {
        let data: Vec<u8> = (0..50_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect();
        let py = python("print(zlib.compress(a[0], 9).hex())", &[&data]);
        let mut inf = Inflater::new();
        let mut out = Vec::new();
        inf.inflate(&py[0], &mut out).unwrap();
        assert_eq!(out, data);
        assert!(inf.is_finished());
        assert_eq!(inf.inflate(b"x", &mut out), Err(ZlibError::TrailingData));

        let mut bad = py[0].clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let mut out = Vec::new();
        assert_eq!(
            Inflater::new().inflate(&bad, &mut out),
            Err(ZlibError::Checksum)
        );
    }

    #[test]
    fn deflater_output_decompresses_in_python() {
        let dict = crate::spdy::DICTIONARY;
        let chunks = sample_chunks();
        let mut def = Deflater::with_dictionary(dict);
        let pieces: Vec<Vec<u8>> = chunks
            .iter()
            .map(|c| {
                let mut out = Vec::new();
                def.compress_sync(c, &mut out);
                out
            })
            .collect();
        let script = "d = zlib.decompressobj(zdict=a[0])\n\
             for p in a[1:]:\n    print(d.decompress(p).hex())\n";
        let mut args: Vec<&[u8]> = vec![dict];
        args.extend(pieces.iter().map(|p| p.as_slice()));
        let back = python(script, &args);
        assert_eq!(back, chunks);

        // And our own inflater agrees.
        let mut inf = Inflater::with_dictionary(dict);
        for (p, c) in pieces.iter().zip(&chunks) {
            let mut out = Vec::new();
            inf.inflate(p, &mut out).unwrap();
            assert_eq!(&out, c);
        }
    }

    #[test]
    fn deflater_header() {
        let mut out = Vec::new();
        Deflater::with_dictionary(crate::spdy::DICTIONARY).compress_sync(b"", &mut out);
        assert_eq!(out[0], 0x78);
        assert_eq!(out[1] & 0x20, 0x20);
        assert_eq!((u16::from(out[0]) << 8 | u16::from(out[1])) % 31, 0);
        assert_eq!(out[2..6], 0xe3c6_a7c2u32.to_be_bytes());
        assert_eq!(out[6..], [0, 0, 0, 0xff, 0xff]);
        let mut out = Vec::new();
        Deflater::new().compress_sync(b"a", &mut out);
        assert_eq!(out, [0x78, 0x01, 0, 1, 0, 0xfe, 0xff, b'a']);
    }

    #[test]
    fn dictionary_errors() {
        let dict = crate::spdy::DICTIONARY;
        let pieces = python_compress(6, dict, &[b"abc".to_vec()]);
        let mut out = Vec::new();
        assert!(matches!(
            Inflater::with_dictionary(b"other dictionary").inflate(&pieces[0], &mut out),
            Err(ZlibError::WrongDictionary { .. })
        ));
        assert_eq!(
            Inflater::new().inflate(&pieces[0], &mut out),
            Err(ZlibError::MissingDictionary)
        );
        let mut inf = Inflater::with_dictionary(b"x");
        assert!(inf.inflate(&pieces[0], &mut out).is_err());
        assert_eq!(inf.inflate(&pieces[0], &mut out), Err(ZlibError::Failed));
    }

    #[test]
    fn output_limit() {
        let zeros = vec![0u8; 3 << 20];
        let py = python("print(zlib.compress(a[0], 9).hex())", &[&zeros]);
        assert!(py[0].len() < 10_000);
        let mut out = Vec::new();
        assert_eq!(
            Inflater::new().inflate(&py[0], &mut out),
            Err(ZlibError::OutputLimit(MAX_OUTPUT_PER_CALL))
        );
        let mut inf = Inflater::new();
        inf.set_max_output(4 << 20);
        let mut out = Vec::new();
        inf.inflate(&py[0], &mut out).unwrap();
        assert_eq!(out, zeros);
    }

    #[test]
    fn truncated_inputs_wait_for_more() {
        let dict = crate::spdy::DICTIONARY;
        let pieces = python_compress(9, dict, &[b"some header block".to_vec()]);
        for cut in 0..pieces[0].len() {
            let mut inf = Inflater::with_dictionary(dict);
            let mut out = Vec::new();
            inf.inflate(&pieces[0][..cut], &mut out).unwrap();
            inf.inflate(&pieces[0][cut..], &mut out).unwrap();
            assert_eq!(out, b"some header block");
        }
    }

    #[test]
    fn random_and_corrupted_inputs_never_panic() {
        let dict = crate::spdy::DICTIONARY;
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let good = python_compress(9, dict, &sample_chunks()[..3]).concat();
        let mut errors = 0;
        for i in 0..20_000 {
            let input: Vec<u8> = match i % 4 {
                // Pure noise.
                0 => {
                    let mut v = vec![0u8; rng.random_range(0..300)];
                    rng.fill(&mut v[..]);
                    v
                }
                // Valid header, random body.
                1 => {
                    let mut v = vec![0x78, 0xbb];
                    v.extend_from_slice(&0xe3c6_a7c2u32.to_be_bytes());
                    let mut body = vec![0u8; rng.random_range(0..300)];
                    rng.fill(&mut body[..]);
                    v.extend(body);
                    v
                }
                // A good stream with flipped bits.
                2 => {
                    let mut v = good.clone();
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..v.len());
                        v[at] ^= 1 << rng.random_range(0..8);
                    }
                    v
                }
                // A truncated good stream.
                _ => good[..rng.random_range(0..good.len())].to_vec(),
            };
            let mut inf = Inflater::with_dictionary(dict);
            let mut out = Vec::new();
            // Feed in random pieces.
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len());
                if inf.inflate(&rest[..n], &mut out).is_err() {
                    errors += 1;
                    break;
                }
                rest = &rest[n..];
            }
        }
        assert!(errors > 5_000, "only {errors} errors");
    }
}
