//! An async SPDY/3.1 session: streams multiplexed over one connection.
//!
//! Two tasks own the connection: a reader task decodes frames and dispatches them (stream
//! data to per-stream channels, window updates, PING answers, resets), and a writer task
//! encodes queued frames in order (it owns the send-side header compression context). The
//! handles ([`Session`], [`StreamAcceptor`], [`Stream`] and its halves) talk to the tasks
//! through shared state and the writer's queue; when the last handle is dropped the session
//! sends GOAWAY and shuts down.
//!
//! See [`Session`] for flow control and the interoperability rules.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, trace};

use super::SpdyError;
use super::frame::{
    DEFAULT_MAX_FRAME_LEN, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, FrameEncoder,
    Headers, SETTINGS_INITIAL_WINDOW_SIZE, Setting, goaway, rst,
};

/// The window both directions start with, per stream and for the session.
const DEFAULT_WINDOW: i64 = 65536;
/// Largest window SPDY allows.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Frames the reader task may have queued (PING answers, resets) before the peer is deemed
/// not to read at all.
const MAX_PENDING_CONTROL: usize = 10_000;
/// The writer task writes up to this much per system call.
const WRITE_BATCH: usize = 64 * 1024;

/// Tunables of a [`Session`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Receive window of each stream, announced in SETTINGS INITIAL_WINDOW_SIZE, and the most
    /// a stream buffers for a slow reader. Default 64 KiB.
    pub initial_window: u32,
    /// Receive window of the whole session (at least 64 KiB, the protocol default).
    /// Default 8 MiB.
    pub session_window: u32,
    /// Largest frame payload accepted from the peer. Default [`DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Largest DATA payload we send in one frame. Default 32 KiB.
    pub max_data_frame: usize,
    /// How many DATA bytes may wait in the writer's queue before writers wait. Default 256 KiB.
    pub write_buffer: usize,
    /// Streams the peer may have open at once; more are refused. Default 1024.
    pub max_streams: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            initial_window: 64 * 1024,
            session_window: 8 << 20,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_data_frame: 32 * 1024,
            write_buffer: 256 * 1024,
            max_streams: 1024,
        }
    }
}

impl SessionConfig {
    fn normalized(mut self) -> Self {
        self.initial_window = self.initial_window.clamp(1, MAX_WINDOW as u32);
        self.session_window = self
            .session_window
            .clamp(DEFAULT_WINDOW as u32, MAX_WINDOW as u32);
        self.write_buffer = self
            .write_buffer
            .clamp(1, Semaphore::MAX_PERMITS.min(1 << 30));
        self.max_data_frame = self
            .max_data_frame
            .clamp(1, self.write_buffer.min(super::MAX_PAYLOAD));
        self
    }
}

enum Cmd {
    Frame {
        frame: Frame,
        /// DATA bytes to give back to the write budget once written.
        budget: usize,
        /// Queued by the reader task (counted in `pending_control`).
        control: bool,
    },
    Shutdown,
}

/// What a stream's handles share with the session.
struct StreamShared {
    /// Permits = bytes the stream may still buffer (our receive window).
    recv_sem: Semaphore,
    /// RST_STREAM status received from the peer, 0 if none.
    reset: AtomicU32,
}

type ReplySender = oneshot::Sender<Result<(Headers, bool), SpdyError>>;

struct StreamEntry {
    shared: Arc<StreamShared>,
    /// To the stream's reader; `None` once the peer finished or the reader is gone.
    data_tx: Option<mpsc::UnboundedSender<(Bytes, u32)>>,
    send_window: i64,
    recv_unacked: usize,
    local_closed: bool,
    remote_closed: bool,
    peer_opened: bool,
    replied: bool,
    /// For streams we opened: completes when SYN_REPLY (or RST) arrives.
    reply: Option<ReplySender>,
}

struct State {
    closed: bool,
    goaway_sent: bool,
    goaway_received: bool,
    next_stream_id: u32,
    last_peer_stream_id: u32,
    next_ping_id: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
    streams: HashMap<u32, StreamEntry>,
    peer_streams: usize,
    peer_flow_control: bool,
    peer_initial_window: i64,
    send_session_window: i64,
    recv_session_unacked: usize,
    accept_tx: Option<mpsc::UnboundedSender<Stream>>,
}

struct Inner {
    server: bool,
    config: SessionConfig,
    tx: mpsc::UnboundedSender<Cmd>,
    state: Mutex<State>,
    /// Signalled whenever windows or stream states change, and on shutdown.
    changed: Notify,
    /// Bounds the DATA bytes waiting in the writer queue.
    write_budget: Semaphore,
    pending_control: AtomicUsize,
    shutdown: watch::Sender<bool>,
    writer_done: watch::Sender<bool>,
    guard: OnceLock<Weak<SessionGuard>>,
}

/// Shuts the session down when the last user handle goes away.
struct SessionGuard {
    inner: Arc<Inner>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.inner.go_away();
        self.inner.terminate();
    }
}

/// Headers SPDY forbids (connection-specific); the Go framer drops the whole connection when
/// it receives one, so they are removed from what we send.
const HOP_BY_HOP: [&str; 4] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

fn strip_hop_by_hop(mut headers: Headers) -> Headers {
    headers.retain(|(n, _)| !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h)));
    headers
}

fn rst_status(status: u32) -> u32 {
    // Status 0 is invalid (the Go framer drops the connection on it).
    if status == 0 { rst::CANCEL } else { status }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, frame: Frame, budget: usize) {
        trace!(?frame, "spdy send");
        let _ = self.tx.send(Cmd::Frame {
            frame,
            budget,
            control: false,
        });
    }

    /// Queues a frame on behalf of the reader task. Fails if the peer has not read thousands
    /// of such frames (e.g. it floods PINGs without reading the answers).
    fn enqueue_control(&self, frame: Frame) -> Result<(), ()> {
        if self.pending_control.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_CONTROL {
            debug!("spdy peer does not read our control frames; closing");
            return Err(());
        }
        trace!(?frame, "spdy send (control)");
        let _ = self.tx.send(Cmd::Frame {
            frame,
            budget: 0,
            control: true,
        });
        Ok(())
    }

    fn ours(&self, id: u32) -> bool {
        id.is_multiple_of(2) == self.server
    }

    /// Sends GOAWAY once (if the session is still open).
    fn go_away(&self) {
        let mut st = self.lock();
        if !st.closed && !st.goaway_sent {
            st.goaway_sent = true;
            let last = st.last_peer_stream_id;
            self.enqueue(
                Frame::GoAway {
                    last_good_stream_id: last,
                    status: goaway::OK,
                },
                0,
            );
        }
    }

    /// Ends the session: every stream ends, pending operations fail, the writer flushes what
    /// is queued and shuts the connection down, the reader stops.
    fn terminate(&self) {
        let (streams, pings, accept) = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            (
                std::mem::take(&mut st.streams),
                std::mem::take(&mut st.pings),
                st.accept_tx.take(),
            )
        };
        debug!(server = self.server, "spdy session terminating");
        for (_, mut e) in streams {
            e.shared.recv_sem.close();
            e.data_tx = None;
            if let Some(r) = e.reply.take() {
                let _ = r.send(Err(SpdyError::ConnectionClosed));
            }
        }
        drop(pings);
        drop(accept);
        self.write_budget.close();
        let _ = self.tx.send(Cmd::Shutdown);
        self.shutdown.send_replace(true);
        self.changed.notify_waiters();
    }

    /// Removes a stream's entry, keeping the count of peer-opened streams.
    fn remove(&self, st: &mut State, id: u32) -> Option<StreamEntry> {
        let e = st.streams.remove(&id)?;
        if e.peer_opened {
            st.peer_streams = st.peer_streams.saturating_sub(1);
        }
        self.changed.notify_waiters();
        Some(e)
    }

    /// Forgets a stream once both directions are finished.
    fn maybe_remove(&self, st: &mut State, id: u32) {
        if st
            .streams
            .get(&id)
            .is_some_and(|e| e.local_closed && e.remote_closed)
        {
            self.remove(st, id);
        }
    }

    /// The application consumed `n` bytes (of stream `id`, or of no stream any more): give
    /// the peer its window back, in batches of half a window.
    fn consumed(&self, id: Option<u32>, n: usize) {
        if n == 0 {
            return;
        }
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.recv_session_unacked += n;
        let half = (self.config.session_window as usize / 2).max(1);
        if st.recv_session_unacked >= half {
            let delta = st.recv_session_unacked.min(MAX_WINDOW as usize);
            st.recv_session_unacked -= delta;
            self.enqueue(
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta: delta as u32,
                },
                0,
            );
        }
        let half = (self.config.initial_window as usize / 2).max(1);
        if let Some(e) = id.and_then(|id| st.streams.get_mut(&id).map(|e| (id, e))) {
            let (id, e) = e;
            if !e.remote_closed {
                e.recv_unacked += n;
                if e.recv_unacked >= half {
                    let delta = e.recv_unacked.min(MAX_WINDOW as usize);
                    e.recv_unacked -= delta;
                    self.enqueue(
                        Frame::WindowUpdate {
                            stream_id: id,
                            delta: delta as u32,
                        },
                        0,
                    );
                }
            }
        }
    }

    fn new_entry(&self, st: &State, peer_opened: bool) -> (StreamEntry, StreamRx) {
        let shared = Arc::new(StreamShared {
            recv_sem: Semaphore::new(self.config.initial_window as usize),
            reset: AtomicU32::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let entry = StreamEntry {
            shared: shared.clone(),
            data_tx: Some(tx),
            send_window: st.peer_initial_window,
            recv_unacked: 0,
            local_closed: false,
            remote_closed: false,
            peer_opened,
            replied: false,
            reply: None,
        };
        (entry, StreamRx { shared, rx })
    }

    fn make_stream(self: &Arc<Self>, id: u32, headers: Headers, rx: StreamRx) -> Option<Stream> {
        let session = self.guard.get()?.upgrade()?;
        let guard = Arc::new(StreamGuard {
            inner: self.clone(),
            id,
            _session: session,
        });
        Some(Stream {
            id,
            headers,
            reader: StreamReader {
                id,
                inner: self.clone(),
                shared: rx.shared.clone(),
                rx: rx.rx,
                leftover: Bytes::new(),
                _guard: guard.clone(),
            },
            writer: StreamWriter {
                h: WriteHandle {
                    id,
                    inner: self.clone(),
                    shared: rx.shared,
                    _guard: guard,
                },
                pending: Mutex::new(None),
                done: None,
            },
        })
    }

    /// All handles of a stream are gone.
    fn stream_dropped(&self, id: u32) {
        let removed = {
            let mut st = self.lock();
            match st.streams.get_mut(&id) {
                Some(e) if !e.local_closed => {
                    // Abandoned while still open for writing: tell the peer.
                    self.enqueue(
                        Frame::RstStream {
                            stream_id: id,
                            status: rst::CANCEL,
                        },
                        0,
                    );
                    self.remove(&mut st, id)
                }
                Some(e) => {
                    // We finished; discard what the peer still sends until it finishes too.
                    e.data_tx = None;
                    None
                }
                None => None,
            }
        };
        drop(removed);
    }

    /// The stream's reader is gone with `unread` bytes still buffered.
    fn reader_dropped(&self, id: u32, unread: usize) {
        let tx = {
            let mut st = self.lock();
            st.streams.get_mut(&id).and_then(|e| e.data_tx.take())
        };
        drop(tx);
        self.consumed(None, unread);
    }
}

struct StreamRx {
    shared: Arc<StreamShared>,
    rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
}

struct StreamGuard {
    inner: Arc<Inner>,
    id: u32,
    _session: Arc<SessionGuard>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.inner.stream_dropped(self.id);
    }
}

/// A SPDY connection (a cheap, cloneable handle). A reader task and a writer task own the
/// connection; the handles talk to them. When the last handle ([`Session`], [`StreamAcceptor`],
/// [`Stream`] or a half of one) is dropped, the session sends GOAWAY and shuts down.
///
/// # Flow control and spdystream
///
/// SPDY/3.1 has per-stream windows (initially 64 KiB, changed by SETTINGS
/// INITIAL_WINDOW_SIZE) and a session window (64 KiB, grown only by WINDOW_UPDATE on stream
/// 0). `moby/spdystream`, the kubelet's SPDY library, implements neither: it never sends
/// WINDOW_UPDATE or SETTINGS and ignores ours. A sender that waited for its windows would stall
/// after 64 KiB towards it, so the peer's windows are **enforced only once the peer shows it
/// does flow control**, i.e. after it sent a SETTINGS or WINDOW_UPDATE frame. Our sessions send
/// SETTINGS first thing, so two of them always enforce windows, and since a connection's frames
/// arrive in order, the SETTINGS is seen before any stream data of the peer could be.
///
/// On the receiving side each stream buffers at most the window we advertised
/// ([`SessionConfig::initial_window`]); we send WINDOW_UPDATEs as the application reads. A
/// peer that ignores our window (spdystream again) and gets ahead of a slow reader is slowed
/// down by backpressure: the reader task waits until the application consumes data, which
/// stops reading the connection, as spdystream itself does. A peer that honours our windows
/// never triggers this, so readers of different streams cannot block each other.
///
/// # Interoperability rules
///
/// The Go framer kills the connection on frames it does not like, so this session never sends
/// unknown frame types, PING id 0 or RST_STREAM status 0, lowercases header names, and sends
/// DATA on a peer-opened stream only after SYN_REPLY (spdystream drops it otherwise). Header
/// names `connection`, `keep-alive`, `proxy-connection` and `transfer-encoding`, which the Go
/// framer rejects too, are left out of the headers we send.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    _guard: Arc<SessionGuard>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

/// Receives the streams the peer opens.
pub struct StreamAcceptor {
    rx: mpsc::UnboundedReceiver<Stream>,
    _guard: Arc<SessionGuard>,
}

impl StreamAcceptor {
    /// The next stream the peer opened, or `None` once the session is closed. The stream must
    /// be answered with [`Stream::reply`] before data can be sent on it.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl Session {
    /// Starts a server session on `io` (the peer opens odd-numbered streams, we open even
    /// ones). Must be called within a tokio runtime (it spawns the reader and writer tasks).
    pub fn server<T>(io: T) -> (Session, StreamAcceptor)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, true, SessionConfig::default())
    }

    /// Starts a client session on `io` (we open odd-numbered streams, starting at 1).
    pub fn client<T>(io: T) -> (Session, StreamAcceptor)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, false, SessionConfig::default())
    }

    /// Starts a session with explicit settings; `server` selects the role.
    pub fn with_config<T>(io: T, server: bool, config: SessionConfig) -> (Session, StreamAcceptor)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, server, config)
    }

    fn start<T>(io: T, server: bool, config: SessionConfig) -> (Session, StreamAcceptor)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = config.normalized();
        let (read_half, write_half) = tokio::io::split(io);
        let (tx, cmd_rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let first_id = if server { 2 } else { 1 };
        let inner = Arc::new(Inner {
            server,
            tx,
            state: Mutex::new(State {
                closed: false,
                goaway_sent: false,
                goaway_received: false,
                next_stream_id: first_id,
                last_peer_stream_id: 0,
                next_ping_id: first_id,
                pings: HashMap::new(),
                streams: HashMap::new(),
                peer_streams: 0,
                peer_flow_control: false,
                peer_initial_window: DEFAULT_WINDOW,
                send_session_window: DEFAULT_WINDOW,
                recv_session_unacked: 0,
                accept_tx: Some(accept_tx),
            }),
            changed: Notify::new(),
            write_budget: Semaphore::new(config.write_buffer),
            pending_control: AtomicUsize::new(0),
            shutdown: watch::Sender::new(false),
            writer_done: watch::Sender::new(false),
            guard: OnceLock::new(),
            config,
        });
        let guard = Arc::new(SessionGuard {
            inner: inner.clone(),
        });
        let _ = inner.guard.set(Arc::downgrade(&guard));

        // Announce our stream window (which also tells the peer we do flow control) and grow
        // the session window beyond the 64 KiB default.
        inner.enqueue(
            Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 0,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: inner.config.initial_window,
                }],
            },
            0,
        );
        let extra = i64::from(inner.config.session_window) - DEFAULT_WINDOW;
        if extra > 0 {
            inner.enqueue(
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta: extra as u32,
                },
                0,
            );
        }

        let mut decoder = FrameDecoder::new();
        decoder.set_max_frame_len(inner.config.max_frame_len);
        tokio::spawn(reader_task(read_half, decoder, inner.clone()));
        tokio::spawn(writer_task(
            write_half,
            cmd_rx,
            FrameEncoder::new(),
            inner.clone(),
        ));
        (
            Session {
                inner,
                _guard: guard.clone(),
            },
            StreamAcceptor {
                rx: accept_rx,
                _guard: guard,
            },
        )
    }

    /// True if this is the server side.
    pub fn is_server(&self) -> bool {
        self.inner.server
    }

    /// True once the session has ended (closed by us, by the peer, or on an error).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Opens a stream: sends SYN_STREAM with `headers` (FIN if `fin`: we will send nothing)
    /// and waits for the peer's SYN_REPLY. The returned stream's `headers` are the reply's.
    /// A RST_STREAM instead of the reply is [`SpdyError::StreamReset`].
    pub async fn open_stream(&self, headers: Headers, fin: bool) -> Result<Stream, SpdyError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (id, rx) = {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(SpdyError::ConnectionClosed);
            }
            if st.goaway_received || st.goaway_sent {
                return Err(SpdyError::GoingAway);
            }
            let id = st.next_stream_id;
            if id > 0x7fff_ffff {
                return Err(SpdyError::StreamIdsExhausted);
            }
            st.next_stream_id = id + 2;
            let (mut entry, rx) = self.inner.new_entry(&st, false);
            entry.local_closed = fin;
            entry.replied = true;
            entry.reply = Some(reply_tx);
            st.streams.insert(id, entry);
            // Queued under the lock so stream ids go out in increasing order.
            self.inner.enqueue(
                Frame::SynStream {
                    stream_id: id,
                    associated_id: 0,
                    priority: 0,
                    slot: 0,
                    flags: if fin { FLAG_FIN } else { 0 },
                    headers: strip_hop_by_hop(headers),
                },
                0,
            );
            (id, rx)
        };
        let (headers, _fin) = reply_rx.await.map_err(|_| SpdyError::ConnectionClosed)??;
        self.inner
            .make_stream(id, headers, rx)
            .ok_or(SpdyError::ConnectionClosed)
    }

    /// Sends a PING and waits for the answer; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, SpdyError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(SpdyError::ConnectionClosed);
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id >= 0x7fff_fffd {
                if self.inner.server { 2 } else { 1 }
            } else {
                id + 2
            };
            st.pings.insert(id, tx);
            self.inner.enqueue(Frame::Ping { id }, 0);
        }
        let start = Instant::now();
        rx.await.map_err(|_| SpdyError::ConnectionClosed)?;
        Ok(start.elapsed())
    }

    /// Sends GOAWAY and shuts the connection down: all streams end (reads return `None`,
    /// writes fail). Waits (at most 5 s) until queued frames are written.
    pub async fn close(&self) {
        self.inner.go_away();
        self.inner.terminate();
        let mut done = self.inner.writer_done.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
    }

    /// Waits until the session has ended.
    pub async fn closed(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// One SPDY stream: headers, a reading side and a writing side. [`Stream::into_split`] gives
/// halves that can be used from different tasks; the stream also implements tokio's
/// `AsyncRead`/`AsyncWrite` (so `tokio::io::copy` works; shutdown sends FIN).
pub struct Stream {
    /// The stream id (odd if the client opened it).
    pub id: u32,
    /// For streams the peer opened: the SYN_STREAM headers; for streams we opened: the
    /// SYN_REPLY headers.
    pub headers: Headers,
    reader: StreamReader,
    writer: StreamWriter,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Answers a stream the peer opened (SYN_REPLY); with `fin`, we will send nothing on it.
    pub async fn reply(&self, headers: Headers, fin: bool) -> Result<(), SpdyError> {
        self.writer.reply(headers, fin).await
    }

    /// See [`StreamWriter::write`].
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        self.writer.write(data).await
    }

    /// See [`StreamWriter::close_write`].
    pub async fn close_write(&self) -> Result<(), SpdyError> {
        self.writer.close_write().await
    }

    /// See [`StreamReader::read`].
    pub async fn read(&mut self) -> Option<Bytes> {
        self.reader.read().await
    }

    /// See [`StreamWriter::reset`].
    pub async fn reset(&self, status: u32) {
        self.writer.reset(status).await
    }

    /// A writer handle for this stream (writers are cloneable).
    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Splits into a reader and a writer.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a [`Stream`].
pub struct StreamReader {
    id: u32,
    inner: Arc<Inner>,
    shared: Arc<StreamShared>,
    rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
    leftover: Bytes,
    _guard: Arc<StreamGuard>,
}

impl StreamReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk of data, or `None` once the peer finished the stream (FIN), reset it,
    /// or the session ended. Reading gives the peer its flow-control window back.
    pub async fn read(&mut self) -> Option<Bytes> {
        if !self.leftover.is_empty() {
            return Some(std::mem::take(&mut self.leftover));
        }
        let (chunk, permits) = self.rx.recv().await?;
        self.consumed(chunk.len(), permits);
        Some(chunk)
    }

    /// The RST_STREAM status if the peer reset the stream.
    pub fn reset_status(&self) -> Option<u32> {
        match self.shared.reset.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    fn consumed(&self, len: usize, permits: u32) {
        self.shared.recv_sem.add_permits(permits as usize);
        self.inner.consumed(Some(self.id), len);
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.shared.recv_sem.close();
        let mut unread = self.leftover.len();
        self.rx.close();
        while let Ok((chunk, _)) = self.rx.try_recv() {
            unread += chunk.len();
        }
        self.inner.reader_dropped(self.id, unread);
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.leftover.is_empty() {
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    return Poll::Ready(match this.reset_status() {
                        Some(s) => Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            SpdyError::StreamReset(s),
                        )),
                        None => Ok(()),
                    });
                }
                Poll::Ready(Some((chunk, permits))) => {
                    this.consumed(chunk.len(), permits);
                    this.leftover = chunk;
                }
            }
        }
        let n = buf.remaining().min(this.leftover.len());
        buf.put_slice(&this.leftover[..n]);
        this.leftover.advance(n);
        Poll::Ready(Ok(()))
    }
}

type WriteFuture = Pin<Box<dyn Future<Output = io::Result<usize>> + Send>>;

/// The sending half of a [`Stream`] (cloneable).
pub struct StreamWriter {
    h: WriteHandle,
    /// `AsyncWrite` support: the write in progress (in a mutex only so that the writer is
    /// `Sync`; it is always reached through `&mut self`), and a finished one not yet reported.
    pending: Mutex<Option<WriteFuture>>,
    done: Option<io::Result<usize>>,
}

/// What a writer needs; shareable with the futures `AsyncWrite` creates.
#[derive(Clone)]
struct WriteHandle {
    id: u32,
    inner: Arc<Inner>,
    shared: Arc<StreamShared>,
    _guard: Arc<StreamGuard>,
}

impl Clone for StreamWriter {
    fn clone(&self) -> Self {
        Self {
            h: self.h.clone(),
            pending: Mutex::new(None),
            done: None,
        }
    }
}

fn io_error(e: SpdyError) -> io::Error {
    let kind = match e {
        SpdyError::StreamReset(_) => io::ErrorKind::ConnectionReset,
        SpdyError::ConnectionClosed => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::BrokenPipe,
    };
    io::Error::new(kind, e)
}

impl WriteHandle {
    /// Why a stream that is no longer tracked cannot be written.
    fn gone(&self) -> SpdyError {
        match self.shared.reset.load(Ordering::Acquire) {
            0 => SpdyError::StreamClosed,
            s => SpdyError::StreamReset(s),
        }
    }

    /// Answers a stream the peer opened (SYN_REPLY); with `fin`, we will send nothing on it.
    async fn reply(&self, headers: Headers, fin: bool) -> Result<(), SpdyError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        if st.closed {
            return Err(SpdyError::ConnectionClosed);
        }
        let Some(e) = st.streams.get_mut(&self.id) else {
            return Err(self.gone());
        };
        if !e.peer_opened || e.replied {
            return Err(SpdyError::CannotReply);
        }
        e.replied = true;
        e.local_closed |= fin;
        inner.enqueue(
            Frame::SynReply {
                stream_id: self.id,
                flags: if fin { FLAG_FIN } else { 0 },
                headers: strip_hop_by_hop(headers),
            },
            0,
        );
        inner.maybe_remove(&mut st, self.id);
        Ok(())
    }

    /// Sends `data` as DATA frames of at most [`SessionConfig::max_data_frame`] bytes, waiting
    /// for the peer's stream and session windows when it does flow control, and for room in
    /// the write queue. Returns once everything is queued for sending.
    async fn write(&self, mut data: &[u8]) -> Result<(), SpdyError> {
        let inner = &self.inner;
        while !data.is_empty() {
            let want = data.len().min(inner.config.max_data_frame);
            // First the peer's windows (if it does flow control)...
            let n = loop {
                let notified = inner.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut guard = inner.lock();
                    let st = &mut *guard;
                    let (flow_control, session_window) =
                        (st.peer_flow_control, st.send_session_window);
                    let e = self.writable(st)?;
                    let n = if flow_control {
                        let window = e.send_window.min(session_window).max(0);
                        want.min(window as usize)
                    } else {
                        want
                    };
                    if n > 0 {
                        e.send_window -= n as i64;
                        st.send_session_window -= n as i64;
                        break n;
                    }
                }
                notified.await;
            };
            // ...then room in the write queue, which frees up as the connection drains (not
            // held while waiting for a window, so blocked streams cannot starve others).
            let permit = inner
                .write_budget
                .acquire_many(n as u32)
                .await
                .map_err(|_| SpdyError::ConnectionClosed)?;
            {
                let mut st = inner.lock();
                self.writable(&mut st)?;
                permit.forget();
                inner.enqueue(
                    Frame::Data {
                        stream_id: self.id,
                        flags: 0,
                        data: Bytes::copy_from_slice(&data[..n]),
                    },
                    n,
                );
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// The stream's entry if we may still send DATA on it.
    fn writable<'a>(&self, st: &'a mut State) -> Result<&'a mut StreamEntry, SpdyError> {
        if st.closed {
            return Err(SpdyError::ConnectionClosed);
        }
        let Some(e) = st.streams.get_mut(&self.id) else {
            return Err(self.gone());
        };
        if e.local_closed {
            return Err(SpdyError::StreamClosed);
        }
        if !e.replied {
            return Err(SpdyError::NotReplied);
        }
        Ok(e)
    }

    fn close_write_now(&self) -> Result<(), SpdyError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        if st.closed {
            return Err(SpdyError::ConnectionClosed);
        }
        let Some(e) = st.streams.get_mut(&self.id) else {
            return Err(self.gone());
        };
        if e.local_closed {
            return Ok(());
        }
        if !e.replied {
            return Err(SpdyError::NotReplied);
        }
        e.local_closed = true;
        inner.enqueue(
            Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            0,
        );
        inner.maybe_remove(&mut st, self.id);
        inner.changed.notify_waiters();
        Ok(())
    }

    fn reset(&self, status: u32) {
        let removed = {
            let mut st = self.inner.lock();
            if st.closed || !st.streams.contains_key(&self.id) {
                return;
            }
            self.inner.enqueue(
                Frame::RstStream {
                    stream_id: self.id,
                    status: rst_status(status),
                },
                0,
            );
            self.inner.remove(&mut st, self.id)
        };
        if let Some(mut e) = removed {
            e.shared.recv_sem.close();
            e.data_tx = None;
        }
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.h.id
    }

    /// Answers a stream the peer opened (SYN_REPLY); with `fin`, we will send nothing on it.
    pub async fn reply(&self, headers: Headers, fin: bool) -> Result<(), SpdyError> {
        self.h.reply(headers, fin).await
    }

    /// Sends `data` as DATA frames of at most [`SessionConfig::max_data_frame`] bytes, waiting
    /// for the peer's stream and session windows when it does flow control, and for room in
    /// the write queue. Returns once everything is queued for sending.
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        self.h.write(data).await
    }

    /// Finishes our direction (an empty DATA frame with FIN). Idempotent. Data queued by
    /// earlier writes goes out first.
    pub async fn close_write(&self) -> Result<(), SpdyError> {
        self.h.close_write_now()
    }

    /// Aborts the stream in both directions with RST_STREAM `status` (see [`rst`]; 0 is sent
    /// as CANCEL). Reads then return what was already buffered, then `None`.
    pub async fn reset(&self, status: u32) {
        self.h.reset(status)
    }
}

impl StreamWriter {
    fn pending(&mut self) -> &mut Option<WriteFuture> {
        self.pending.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(r) = this.done.take() {
            return Poll::Ready(r);
        }
        let max = 4 * this.h.inner.config.max_data_frame;
        let handle = this.h.clone();
        let pending = this.pending();
        if pending.is_none() {
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = data.len().min(max);
            let chunk = data[..n].to_vec();
            *pending = Some(Box::pin(async move {
                handle.write(&chunk).await.map(|()| n).map_err(io_error)
            }));
        }
        let Some(fut) = pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(r) => {
                *pending = None;
                Poll::Ready(r)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let pending = this.pending();
        if let Some(fut) = pending.as_mut() {
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    *pending = None;
                    if let Err(e) = r {
                        return Poll::Ready(Err(e));
                    }
                    // Reported by the next poll_write, which the caller owes us.
                    this.done = Some(r);
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Poll::Ready(self.h.close_write_now().map_err(io_error))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

async fn writer_task<W>(
    mut io: W,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut encoder: FrameEncoder,
    inner: Arc<Inner>,
) where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    let mut finished = false;
    while !finished {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut budget = 0;
        let mut control = 0;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Frame {
                    frame,
                    budget: b,
                    control: c,
                } => {
                    if let Err(e) = encoder.encode(&frame, &mut buf) {
                        // Only oversized header blocks fail, before touching the compression
                        // context; the frame is dropped.
                        debug!(%e, "spdy frame not sent");
                    }
                    budget += b;
                    control += usize::from(c);
                }
                Cmd::Shutdown => {
                    finished = true;
                    break;
                }
            }
            if buf.len() >= WRITE_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            let res = async {
                io.write_all(&buf).await?;
                io.flush().await
            }
            .await;
            buf.clear();
            if let Err(e) = res {
                debug!(%e, "spdy write failed");
                inner.write_budget.add_permits(budget);
                inner.pending_control.fetch_sub(control, Ordering::AcqRel);
                break;
            }
        }
        inner.write_budget.add_permits(budget);
        inner.pending_control.fetch_sub(control, Ordering::AcqRel);
    }
    let _ = io.shutdown().await;
    inner.writer_done.send_replace(true);
    inner.terminate();
}

async fn reader_task<R>(mut io: R, mut decoder: FrameDecoder, inner: Arc<Inner>)
where
    R: AsyncRead + Unpin,
{
    let mut shutdown = inner.shutdown.subscribe();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    trace!(?frame, "spdy recv");
                    if handle_frame(&inner, frame, &mut shutdown).await.is_err() {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%e, "spdy protocol error");
                    let last = inner.lock().last_peer_stream_id;
                    inner.enqueue(
                        Frame::GoAway {
                            last_good_stream_id: last,
                            status: goaway::PROTOCOL_ERROR,
                        },
                        0,
                    );
                    break 'conn;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            res = io.read_buf(&mut buf) => match res {
                Ok(0) => { debug!("spdy peer closed the connection"); break 'conn; }
                Ok(_) => {}
                Err(e) => { debug!(%e, "spdy read failed"); break 'conn; }
            },
            _ = shutdown.wait_for(|v| *v) => break 'conn,
        }
    }
    inner.terminate();
}

/// Handles one received frame. `Err` ends the session.
async fn handle_frame(
    inner: &Arc<Inner>,
    frame: Frame,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ()> {
    match frame {
        Frame::Data {
            stream_id,
            flags,
            data,
        } => handle_data(inner, stream_id, flags & FLAG_FIN != 0, data, shutdown).await,
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => handle_syn_stream(inner, stream_id, flags, headers),
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        } => {
            let mut st = inner.lock();
            let Some(e) = st.streams.get_mut(&stream_id) else {
                return Ok(());
            };
            let Some(reply) = e.reply.take() else {
                debug!(stream_id, "spdy duplicate or unexpected SYN_REPLY ignored");
                return Ok(());
            };
            let fin = flags & FLAG_FIN != 0;
            if fin {
                e.remote_closed = true;
                e.data_tx = None;
            }
            if reply.send(Ok((headers, fin))).is_err() {
                // Whoever opened the stream gave up waiting.
                inner.enqueue_control(Frame::RstStream {
                    stream_id,
                    status: rst::CANCEL,
                })?;
                inner.remove(&mut st, stream_id);
            } else {
                inner.maybe_remove(&mut st, stream_id);
            }
            Ok(())
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0 {
                remote_fin(inner, stream_id);
            }
            Ok(())
        }
        Frame::RstStream { stream_id, status } => {
            let removed = {
                let mut st = inner.lock();
                inner.remove(&mut st, stream_id)
            };
            if let Some(mut e) = removed {
                debug!(stream_id, status, "spdy stream reset by peer");
                e.shared.reset.store(rst_status(status), Ordering::Release);
                e.shared.recv_sem.close();
                e.data_tx = None;
                if let Some(r) = e.reply.take() {
                    let _ = r.send(Err(SpdyError::StreamReset(status)));
                }
            }
            Ok(())
        }
        Frame::Settings { entries, .. } => {
            let mut st = inner.lock();
            for s in entries {
                if s.id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let new = i64::from(s.value).min(MAX_WINDOW);
                    let delta = new - st.peer_initial_window;
                    st.peer_initial_window = new;
                    for e in st.streams.values_mut() {
                        e.send_window = (e.send_window + delta).min(MAX_WINDOW);
                    }
                }
            }
            st.peer_flow_control = true;
            inner.changed.notify_waiters();
            Ok(())
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut guard = inner.lock();
            let st = &mut *guard;
            let delta = i64::from(delta);
            if stream_id == 0 {
                st.send_session_window = (st.send_session_window + delta).min(MAX_WINDOW);
            } else if let Some(e) = st.streams.get_mut(&stream_id) {
                e.send_window = (e.send_window + delta).min(MAX_WINDOW);
            }
            st.peer_flow_control = true;
            inner.changed.notify_waiters();
            Ok(())
        }
        Frame::Ping { id } => {
            if id == 0 {
                return Ok(());
            }
            if inner.ours(id) {
                let tx = inner.lock().pings.remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
                Ok(())
            } else {
                inner.enqueue_control(Frame::Ping { id })
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            debug!(last_good_stream_id, status, "spdy GOAWAY received");
            let refused: Vec<StreamEntry> = {
                let mut st = inner.lock();
                st.goaway_received = true;
                let ids: Vec<u32> = st
                    .streams
                    .keys()
                    .copied()
                    .filter(|&id| inner.ours(id) && id > last_good_stream_id)
                    .collect();
                ids.into_iter()
                    .filter_map(|id| inner.remove(&mut st, id))
                    .collect()
            };
            for mut e in refused {
                e.shared.reset.store(rst::REFUSED_STREAM, Ordering::Release);
                e.shared.recv_sem.close();
                e.data_tx = None;
                if let Some(r) = e.reply.take() {
                    let _ = r.send(Err(SpdyError::GoingAway));
                }
            }
            inner.changed.notify_waiters();
            Ok(())
        }
    }
}

/// The peer finished its direction of a stream.
fn remote_fin(inner: &Inner, stream_id: u32) {
    let tx = {
        let mut st = inner.lock();
        let tx = st.streams.get_mut(&stream_id).and_then(|e| {
            e.remote_closed = true;
            e.data_tx.take()
        });
        inner.maybe_remove(&mut st, stream_id);
        tx
    };
    drop(tx);
}

async fn handle_data(
    inner: &Arc<Inner>,
    stream_id: u32,
    fin: bool,
    data: Bytes,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ()> {
    let len = data.len();
    let target = {
        let mut st = inner.lock();
        let known = if inner.ours(stream_id) {
            stream_id < st.next_stream_id
        } else {
            stream_id <= st.last_peer_stream_id
        };
        match st.streams.get_mut(&stream_id) {
            Some(e) if !e.remote_closed => e.data_tx.clone().map(|tx| (tx, e.shared.clone())),
            Some(_) => {
                debug!(stream_id, "spdy DATA after FIN discarded");
                None
            }
            None if !known => {
                drop(st);
                inner.enqueue_control(Frame::RstStream {
                    stream_id,
                    status: rst::INVALID_STREAM,
                })?;
                None
            }
            // A stream that ended (e.g. reset) while this was in flight.
            None => None,
        }
    };
    match target {
        Some((tx, shared)) if len > 0 => {
            // Backpressure: wait until the stream has room (only a peer ignoring our window
            // can make this wait).
            let permits = len.min(inner.config.initial_window as usize) as u32;
            let acquired = tokio::select! {
                r = shared.recv_sem.acquire_many(permits) => r.map(|p| p.forget()).is_ok(),
                _ = shutdown.wait_for(|v| *v) => return Err(()),
            };
            if !acquired {
                inner.consumed(None, len);
            } else if tx.send((data, permits)).is_err() {
                shared.recv_sem.add_permits(permits as usize);
                inner.consumed(None, len);
            }
        }
        Some(_) => {}
        None => inner.consumed(None, len),
    }
    if fin {
        remote_fin(inner, stream_id);
    }
    Ok(())
}

fn handle_syn_stream(
    inner: &Arc<Inner>,
    stream_id: u32,
    flags: u8,
    headers: Headers,
) -> Result<(), ()> {
    let (stream, result) = {
        let mut st = inner.lock();
        if st.closed {
            return Err(());
        }
        let refuse = |status: u32| inner.enqueue_control(Frame::RstStream { stream_id, status });
        if inner.ours(stream_id) || stream_id <= st.last_peer_stream_id {
            debug!(stream_id, "spdy SYN_STREAM with an invalid stream id");
            return refuse(rst::PROTOCOL_ERROR);
        }
        st.last_peer_stream_id = stream_id;
        if st.goaway_sent || st.accept_tx.is_none() || st.peer_streams >= inner.config.max_streams {
            return refuse(rst::REFUSED_STREAM);
        }
        let (mut entry, rx) = inner.new_entry(&st, true);
        if flags & FLAG_UNIDIRECTIONAL != 0 {
            entry.local_closed = true;
            entry.replied = true;
        }
        if flags & FLAG_FIN != 0 {
            entry.remote_closed = true;
            entry.data_tx = None;
        }
        st.streams.insert(stream_id, entry);
        st.peer_streams += 1;
        let Some(stream) = inner.make_stream(stream_id, headers, rx) else {
            drop(st);
            return Err(());
        };
        let sent = match st.accept_tx.as_ref() {
            Some(tx) => tx.send(stream).map_err(|e| e.0),
            None => Err(stream),
        };
        match sent {
            Ok(()) => (None, Ok(())),
            Err(stream) => {
                // Nobody accepts streams any more.
                inner.remove(&mut st, stream_id);
                (Some(stream), refuse(rst::REFUSED_STREAM))
            }
        }
    };
    // Dropped outside the lock: dropping a stream locks the state.
    drop(stream);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
