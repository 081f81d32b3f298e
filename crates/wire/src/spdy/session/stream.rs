//! A stream's handles: [`Stream`] and its halves, [`StreamReader`] and [`StreamWriter`].

use super::*;

/// One SPDY stream: headers, a reading side and a writing side. [`Stream::into_split`] gives
/// halves that can be used from different tasks; the stream also implements tokio's
/// `AsyncRead`/`AsyncWrite` (so `tokio::io::copy` works; shutdown sends FIN).
pub struct Stream {
    /// The stream id (odd if the client opened it).
    pub id: u32,
    /// For streams the peer opened: the SYN_STREAM headers; for streams we opened: the
    /// SYN_REPLY headers.
    pub headers: Headers,
    pub(super) reader: StreamReader,
    pub(super) writer: StreamWriter,
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
    pub(super) id: u32,
    pub(super) inner: Arc<Inner>,
    pub(super) shared: Arc<StreamShared>,
    pub(super) rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
    pub(super) leftover: Bytes,
    pub(super) _guard: Arc<StreamGuard>,
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
    pub(super) h: WriteHandle,
    /// `AsyncWrite` support: the write in progress (in a mutex only so that the writer is
    /// `Sync`; it is always reached through `&mut self`), and a finished one not yet reported.
    pub(super) pending: Mutex<Option<WriteFuture>>,
    pub(super) done: Option<io::Result<usize>>,
}

/// What a writer needs; shareable with the futures `AsyncWrite` creates.
#[derive(Clone)]
pub(super) struct WriteHandle {
    pub(super) id: u32,
    pub(super) inner: Arc<Inner>,
    pub(super) shared: Arc<StreamShared>,
    pub(super) _guard: Arc<StreamGuard>,
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
