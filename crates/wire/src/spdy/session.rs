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

mod config;
mod stream;
mod tasks;

pub use config::SessionConfig;

use stream::WriteHandle;
pub use stream::{Stream, StreamReader, StreamWriter};
use tasks::{reader_task, writer_task};

/// The window both directions start with, per stream and for the session.
const DEFAULT_WINDOW: i64 = 65536;
/// Largest window SPDY allows.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Frames the reader task may have queued (PING answers, resets) before the peer is deemed
/// not to read at all.
const MAX_PENDING_CONTROL: usize = 10_000;
/// The writer task writes up to this much per system call.
const WRITE_BATCH: usize = 64 * 1024;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
