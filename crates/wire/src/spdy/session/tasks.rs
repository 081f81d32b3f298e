//! The two tasks that own the connection: the writer encodes queued frames in order, the
//! reader decodes frames and dispatches them.

use super::*;

pub(super) async fn writer_task<W>(
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

pub(super) async fn reader_task<R>(mut io: R, mut decoder: FrameDecoder, inner: Arc<Inner>)
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
