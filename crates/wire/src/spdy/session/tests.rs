use super::*;
use crate::spdy::{FrameCodec, SETTINGS_INITIAL_WINDOW_SIZE};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

type Pair = ((Session, StreamAcceptor), (Session, StreamAcceptor));

fn pair(config: SessionConfig) -> Pair {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Session::with_config(a, false, config.clone()),
        Session::with_config(b, true, config),
    )
}

fn small_windows() -> SessionConfig {
    SessionConfig {
        initial_window: 16 * 1024,
        session_window: 64 * 1024,
        max_data_frame: 4096,
        write_buffer: 16 * 1024,
        ..SessionConfig::default()
    }
}

/// Serves every accepted stream by echoing it back (reply first), then closing.
fn spawn_echo_server(mut acceptor: StreamAcceptor) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(mut s) = acceptor.accept().await {
            n += 1;
            tokio::spawn(async move {
                let mut reply = vec![("status".to_string(), "ok".to_string())];
                reply.extend(s.headers.iter().cloned());
                s.reply(reply, false).await.unwrap();
                while let Some(chunk) = s.read().await {
                    if s.write(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.close_write().await;
            });
        }
        n
    })
}

/// Writes `data` in uneven pieces and closes, while reading the echo; returns what came back.
async fn echo_through(stream: Stream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut rest = &data[..];
        let mut step = 1;
        while !rest.is_empty() {
            let n = rest.len().min(step * 997);
            w.write(&rest[..n]).await.unwrap();
            rest = &rest[n..];
            step = step % 40 + 1;
        }
        w.close_write().await.unwrap();
    });
    let mut back = Vec::new();
    while let Some(chunk) = r.read().await {
        back.extend_from_slice(&chunk);
    }
    writer.await.unwrap();
    back
}

async fn echo_1mib(config: SessionConfig) {
    let ((client, _ca), (_server, sa)) = pair(config);
    let server_task = spawn_echo_server(sa);
    let stream = client
        .open_stream(h(&[("streamType", "data"), ("Port", "8080")]), false)
        .await
        .unwrap();
    assert_eq!(stream.id, 1);
    assert_eq!(stream.header("status"), Some("ok"));
    // Names were lowercased on the wire, lookups ignore case.
    assert_eq!(stream.header("STREAMTYPE"), Some("data"));
    assert_eq!(stream.header("port"), Some("8080"));
    let data = random_data(1 << 20, 1);
    let back = timeout(LIMIT, echo_through(stream, data.clone()))
        .await
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    client.close().await;
    assert_eq!(timeout(LIMIT, server_task).await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_1mib_small_windows() {
    echo_1mib(small_windows()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_1mib_default_config() {
    echo_1mib(SessionConfig::default()).await;
}

#[tokio::test]
async fn streams_both_ways() {
    let ((client, mut ca), (server, sa)) = pair(SessionConfig::default());
    spawn_echo_server(sa);
    // Server-initiated stream, answered by the client.
    let client_side = tokio::spawn(async move {
        let mut s = ca.accept().await.unwrap();
        assert_eq!(s.id, 2);
        assert_eq!(s.header("x"), Some("from-server"));
        s.reply(h(&[("y", "from-client")]), false).await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = s.read().await {
            got.extend_from_slice(&c);
        }
        s.write(b"thanks").await.unwrap();
        s.close_write().await.unwrap();
        got
    });
    let mut s = server
        .open_stream(h(&[("x", "from-server")]), false)
        .await
        .unwrap();
    assert_eq!(s.header("y"), Some("from-client"));
    let data = random_data(300_000, 2);
    s.write(&data).await.unwrap();
    s.close_write().await.unwrap();
    let mut back = Vec::new();
    while let Some(c) = timeout(LIMIT, s.read()).await.unwrap() {
        back.extend_from_slice(&c);
    }
    assert_eq!(back, b"thanks");
    assert_eq!(client_side.await.unwrap(), data);
    // The client's own streams get odd ids.
    let c1 = client.open_stream(h(&[("a", "1")]), false).await.unwrap();
    let c2 = client.open_stream(h(&[("a", "2")]), false).await.unwrap();
    assert_eq!((c1.id, c2.id), (1, 3));
    let s2 = server.open_stream(h(&[]), true).await;
    // The client's acceptor was moved into the finished task and dropped: refused.
    assert!(matches!(
        s2,
        Err(SpdyError::StreamReset(rst::REFUSED_STREAM))
    ));
}

#[tokio::test]
async fn async_read_write_with_tokio_copy() {
    let ((client, _ca), (_server, mut sa)) = pair(small_windows());
    tokio::spawn(async move {
        while let Some(s) = sa.accept().await {
            tokio::spawn(async move {
                s.reply(vec![], false).await.unwrap();
                let (mut r, mut w) = s.into_split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    let s1 = client.open_stream(h(&[]), false).await.unwrap();
    let mut s2 = client.open_stream(h(&[]), false).await.unwrap();
    let data = random_data(200_000, 3);
    let (mut r, mut w) = s1.into_split();
    let d2 = data.clone();
    let wt = tokio::spawn(async move {
        w.write_all(&d2).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    timeout(LIMIT, r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    wt.await.unwrap();
    assert!(back == data);
    // The Stream itself is AsyncRead + AsyncWrite too.
    s2.write_all(b"ping").await.unwrap();
    s2.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, s2.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"ping");
}

#[tokio::test]
async fn half_close() {
    let ((client, _ca), (_server, mut sa)) = pair(SessionConfig::default());
    let server = tokio::spawn(async move {
        let mut s = sa.accept().await.unwrap();
        s.reply(vec![], false).await.unwrap();
        // We finish first; the peer keeps sending.
        s.write(b"bye").await.unwrap();
        s.close_write().await.unwrap();
        assert_eq!(s.write(b"more").await, Err(SpdyError::StreamClosed));
        // Replying twice is refused.
        assert_eq!(s.reply(vec![], false).await, Err(SpdyError::CannotReply));
        let mut got = Vec::new();
        while let Some(c) = s.read().await {
            got.extend_from_slice(&c);
        }
        got
    });
    let mut c = client.open_stream(h(&[]), false).await.unwrap();
    assert_eq!(c.read().await.as_deref(), Some(&b"bye"[..]));
    assert_eq!(c.read().await, None);
    c.write(b"still ").await.unwrap();
    c.write(b"talking").await.unwrap();
    c.close_write().await.unwrap();
    assert_eq!(
        timeout(LIMIT, server).await.unwrap().unwrap(),
        b"still talking"
    );
}

#[tokio::test]
async fn fin_from_opener() {
    let ((client, _ca), (_server, mut sa)) = pair(SessionConfig::default());
    let server = tokio::spawn(async move {
        let mut s = sa.accept().await.unwrap();
        s.reply(vec![], false).await.unwrap();
        assert_eq!(s.read().await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(s.read().await, None);
        s.write(b"bye").await.unwrap();
        s.close_write().await.unwrap();
    });
    let mut c = client.open_stream(h(&[]), false).await.unwrap();
    c.write(b"hello").await.unwrap();
    c.close_write().await.unwrap();
    c.close_write().await.unwrap(); // idempotent
    assert!(matches!(c.write(b"x").await, Err(SpdyError::StreamClosed)));
    assert_eq!(c.read().await.as_deref(), Some(&b"bye"[..]));
    assert_eq!(c.read().await, None);
    server.await.unwrap();
}

#[tokio::test]
async fn reset_handling() {
    let ((client, _ca), (_server, mut sa)) = pair(SessionConfig::default());
    let server = tokio::spawn(async move {
        // First stream: refused before the reply.
        let s = sa.accept().await.unwrap();
        s.reset(rst::REFUSED_STREAM).await;
        // Second: replied, then reset while the client writes.
        let mut s = sa.accept().await.unwrap();
        s.reply(vec![], false).await.unwrap();
        assert!(s.read().await.is_some());
        s.reset(rst::CANCEL).await;
        // Reads after our own reset end.
        while s.read().await.is_some() {}
        assert!(s.write(b"x").await.is_err());
    });
    let r = client.open_stream(h(&[]), false).await;
    assert!(matches!(
        r,
        Err(SpdyError::StreamReset(rst::REFUSED_STREAM))
    ));
    let c = client.open_stream(h(&[]), false).await.unwrap();
    let (mut r, w) = c.into_split();
    let err = timeout(LIMIT, async {
        loop {
            if let Err(e) = w.write(&[0u8; 1000]).await {
                break e;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(err, SpdyError::StreamReset(rst::CANCEL));
    assert_eq!(timeout(LIMIT, r.read()).await.unwrap(), None);
    assert_eq!(r.reset_status(), Some(rst::CANCEL));
    let mut buf = [0u8; 10];
    let e = AsyncReadExt::read(&mut r, &mut buf[..])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    server.await.unwrap();
}

#[tokio::test]
async fn ping_both_ways() {
    let ((client, _ca), (server, _sa)) = pair(SessionConfig::default());
    for _ in 0..3 {
        timeout(LIMIT, client.ping()).await.unwrap().unwrap();
        timeout(LIMIT, server.ping()).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams() {
    let ((client, _ca), (_server, sa)) = pair(small_windows());
    let server_task = spawn_echo_server(sa);
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let s = client
                .open_stream(h(&[("n", &i.to_string())]), false)
                .await
                .unwrap();
            assert_eq!(s.header("n"), Some(i.to_string().as_str()));
            let data = random_data(40_000 + i as usize * 1000, i);
            let back = echo_through(s, data.clone()).await;
            assert!(back == data, "stream {i}");
        }));
    }
    for t in tasks {
        timeout(LIMIT, t).await.unwrap().unwrap();
    }
    client.close().await;
    assert_eq!(timeout(LIMIT, server_task).await.unwrap().unwrap(), 64);
}

#[tokio::test]
async fn slow_reader_does_not_block_other_streams() {
    let ((client, _ca), (_server, mut sa)) = pair(small_windows());
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut slow = sa.accept().await.unwrap();
        slow.reply(vec![], false).await.unwrap();
        let mut fast = sa.accept().await.unwrap();
        fast.reply(vec![], false).await.unwrap();
        while let Some(c) = fast.read().await {
            fast.write(&c).await.unwrap();
        }
        fast.close_write().await.unwrap();
        // Only now read the slow stream.
        go_rx.await.unwrap();
        let mut n = 0;
        while let Some(c) = slow.read().await {
            n += c.len();
        }
        n
    });
    let slow = client.open_stream(h(&[]), false).await.unwrap();
    let fast = client.open_stream(h(&[]), false).await.unwrap();
    let slow_writer = tokio::spawn(async move {
        slow.write(&vec![1u8; 1 << 20]).await.unwrap();
        slow.close_write().await.unwrap();
    });
    let data = random_data(200_000, 9);
    let back = timeout(LIMIT, echo_through(fast, data.clone()))
        .await
        .unwrap();
    assert!(back == data);
    assert!(!slow_writer.is_finished(), "1 MiB cannot fit the windows");
    go_tx.send(()).unwrap();
    timeout(LIMIT, slow_writer).await.unwrap().unwrap();
    assert_eq!(timeout(LIMIT, server).await.unwrap().unwrap(), 1 << 20);
}

#[tokio::test]
async fn close_ends_everything() {
    let ((client, _ca), (server, mut sa)) = pair(SessionConfig::default());
    let accept = tokio::spawn(async move {
        let s = sa.accept().await.unwrap();
        s.reply(vec![], false).await.unwrap();
        (s, sa)
    });
    let c = client.open_stream(h(&[]), false).await.unwrap();
    let (mut s, mut sa) = accept.await.unwrap();
    client.close().await;
    assert!(client.is_closed());
    assert_eq!(
        client.open_stream(h(&[]), false).await.unwrap_err(),
        SpdyError::ConnectionClosed
    );
    assert!(c.write(b"x").await.is_err());
    assert_eq!(timeout(LIMIT, s.read()).await.unwrap(), None);
    assert!(timeout(LIMIT, sa.accept()).await.unwrap().is_none());
    timeout(LIMIT, server.closed()).await.unwrap();
    assert!(server.is_closed());
    assert!(s.write(b"x").await.is_err());
    assert!(server.ping().await.is_err());
}

#[tokio::test]
async fn dropping_all_handles_closes_the_session() {
    let ((client, ca), (server, _sa)) = pair(SessionConfig::default());
    drop(client);
    drop(ca);
    timeout(LIMIT, server.closed()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A raw peer built from the frame codec, to check what goes over the wire.
// ---------------------------------------------------------------------------------------------

struct Raw {
    rd: tokio::io::ReadHalf<DuplexStream>,
    wr: tokio::io::WriteHalf<DuplexStream>,
    codec: FrameCodec,
    buf: BytesMut,
}

impl Raw {
    /// A server session and a raw client peer talking to it.
    fn with_server(config: SessionConfig) -> (Raw, Session, StreamAcceptor) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (server, acceptor) = Session::with_config(b, true, config);
        let (rd, wr) = tokio::io::split(a);
        (
            Raw {
                rd,
                wr,
                codec: FrameCodec::new(),
                buf: BytesMut::new(),
            },
            server,
            acceptor,
        )
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(&frame, &mut out).unwrap();
        self.wr.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            if self.rd.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    /// The next frame, or `None` if nothing arrives within `ms` milliseconds.
    async fn recv_within(&mut self, ms: u64) -> Option<Frame> {
        timeout(Duration::from_millis(ms), self.recv())
            .await
            .ok()
            .flatten()
    }

    fn syn(id: u32) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: h(&[("streamtype", "data")]),
        }
    }
}

#[tokio::test]
async fn raw_peer_sees_settings_and_ping_answers() {
    let (mut raw, _server, _sa) = Raw::with_server(SessionConfig::default());
    assert_eq!(
        raw.recv().await,
        Some(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: 65536
            }]
        })
    );
    assert_eq!(
        raw.recv().await,
        Some(Frame::WindowUpdate {
            stream_id: 0,
            delta: (8 << 20) - 65536
        })
    );
    // Client-originated (odd) pings are echoed; even ids would be answers to the server's own
    // pings and are not echoed; id 0 is ignored.
    raw.send(Frame::Ping { id: 1 }).await;
    assert_eq!(raw.recv().await, Some(Frame::Ping { id: 1 }));
    raw.send(Frame::Ping { id: 2 }).await;
    raw.send(Frame::Ping { id: 0 }).await;
    raw.send(Frame::Ping { id: 7 }).await;
    assert_eq!(raw.recv().await, Some(Frame::Ping { id: 7 }));
    // Unknown control frame types are skipped.
    raw.wr
        .write_all(&[0x80, 3, 0, 0x42, 0, 0, 0, 1, 0])
        .await
        .unwrap();
    raw.send(Frame::Ping { id: 9 }).await;
    assert_eq!(raw.recv().await, Some(Frame::Ping { id: 9 }));
}

#[tokio::test]
async fn raw_peer_invalid_stream_ids() {
    let (mut raw, _server, mut sa) = Raw::with_server(SessionConfig::default());
    raw.recv().await;
    raw.recv().await;
    // Even id from a client: protocol error.
    raw.send(Raw::syn(2)).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: rst::PROTOCOL_ERROR
        })
    );
    raw.send(Raw::syn(5)).await;
    let s = sa.accept().await.unwrap();
    assert_eq!(s.id, 5);
    // Going backwards: protocol error.
    raw.send(Raw::syn(3)).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: rst::PROTOCOL_ERROR
        })
    );
    // DATA for a stream that never existed.
    raw.send(Frame::Data {
        stream_id: 99,
        flags: 0,
        data: Bytes::from_static(b"x"),
    })
    .await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 99,
            status: rst::INVALID_STREAM
        })
    );
    // Dropping a replied, unfinished stream cancels it.
    s.reply(vec![], false).await.unwrap();
    drop(s);
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynReply { stream_id: 5, .. })
    ));
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL
        })
    );
    // A protocol error ends the session with GOAWAY.
    raw.wr
        .write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        raw.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 5,
            status: goaway::PROTOCOL_ERROR
        })
    );
    assert_eq!(raw.recv().await, None);
}

/// A peer like spdystream: no SETTINGS, no WINDOW_UPDATE, ignores our windows.
#[tokio::test]
async fn peer_without_flow_control() {
    let (mut raw, _server, mut sa) = Raw::with_server(SessionConfig::default());
    raw.recv().await;
    raw.recv().await;
    raw.send(Raw::syn(1)).await;
    let mut s = sa.accept().await.unwrap();
    s.reply(h(&[("ok", "1")]), false).await.unwrap();
    let data = random_data(1 << 20, 4);
    let d2 = data.clone();
    let w = s.writer();
    let writer = tokio::spawn(async move {
        w.write(&d2).await.unwrap();
        w.close_write().await.unwrap();
    });
    // The whole MiB arrives although the peer never opened its window.
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    let mut got = Vec::new();
    loop {
        match timeout(LIMIT, raw.recv()).await.unwrap() {
            Some(Frame::Data {
                stream_id: 1,
                flags,
                data,
            }) => {
                got.extend_from_slice(&data);
                if flags & FLAG_FIN != 0 {
                    break;
                }
            }
            Some(Frame::WindowUpdate { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == data);
    writer.await.unwrap();

    // The peer sends 1 MiB in 32 KiB frames regardless of our 64 KiB window while the
    // application reads slowly: backpressure, no reset, everything arrives in order.
    let (mut raw_rd, mut raw_wr) = (raw.rd, raw.wr);
    let mut enc = raw.codec.encoder;
    let sender = tokio::spawn(async move {
        for chunk in data.chunks(32 * 1024) {
            let mut out = BytesMut::new();
            enc.encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::copy_from_slice(chunk),
                },
                &mut out,
            )
            .unwrap();
            raw_wr.write_all(&out).await.unwrap();
        }
        let mut out = BytesMut::new();
        enc.encode(
            &Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            &mut out,
        )
        .unwrap();
        raw_wr.write_all(&out).await.unwrap();
        data
    });
    // Keep draining what the server sends (window updates) so it never blocks.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 4096];
        while raw_rd.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    let mut got = Vec::new();
    while let Some(c) = timeout(LIMIT, s.read()).await.unwrap() {
        got.extend_from_slice(&c);
        if got.len() % (128 * 1024) < c.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let data = sender.await.unwrap();
    assert!(got == data);
    drop(s);
    drain.abort();
}

/// A peer that does flow control (it sent SETTINGS) gets no more than its windows allow.
#[tokio::test]
async fn peer_windows_are_enforced() {
    let (mut raw, _server, mut sa) = Raw::with_server(SessionConfig::default());
    raw.recv().await;
    raw.recv().await;
    raw.send(Frame::Settings {
        flags: 0,
        entries: vec![Setting {
            flags: 0,
            id: SETTINGS_INITIAL_WINDOW_SIZE,
            value: 65536,
        }],
    })
    .await;
    raw.send(Raw::syn(1)).await;
    let s = sa.accept().await.unwrap();
    s.reply(vec![], false).await.unwrap();
    let w = s.writer();
    let writer = tokio::spawn(async move {
        w.write(&vec![3u8; 200_000]).await.unwrap();
        w.close_write().await.unwrap();
    });
    assert!(matches!(raw.recv().await, Some(Frame::SynReply { .. })));
    let mut total = 0;
    let mut fin = false;
    let mut count = |f: Option<Frame>, total: &mut usize| match f {
        Some(Frame::Data { data, flags, .. }) => {
            *total += data.len();
            fin |= flags & FLAG_FIN != 0;
            true
        }
        None => false,
        Some(other) => panic!("unexpected {other:?}"),
    };
    while count(raw.recv_within(300).await, &mut total) {}
    assert_eq!(total, 65536, "exactly the initial windows");
    // Open the stream window only: the session window is still exhausted.
    raw.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 100_000,
    })
    .await;
    assert!(raw.recv_within(300).await.is_none());
    raw.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 50_000,
    })
    .await;
    while count(raw.recv_within(300).await, &mut total) {}
    assert_eq!(total, 65536 + 50_000);
    // A SETTINGS change of the initial window applies to open streams (delta +34464).
    raw.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1 << 20,
    })
    .await;
    raw.send(Frame::Settings {
        flags: 0,
        entries: vec![Setting {
            flags: 0,
            id: SETTINGS_INITIAL_WINDOW_SIZE,
            value: 100_000,
        }],
    })
    .await;
    while count(raw.recv_within(300).await, &mut total) {}
    assert_eq!(total, 200_000);
    assert!(fin);
    writer.await.unwrap();
}

/// Our receive side: window updates are sent as the application reads.
#[tokio::test]
async fn window_updates_follow_reads() {
    let config = SessionConfig {
        initial_window: 10_000,
        session_window: 65536,
        ..SessionConfig::default()
    };
    let (mut raw, _server, mut sa) = Raw::with_server(config);
    assert!(matches!(raw.recv().await, Some(Frame::Settings { .. })));
    raw.send(Raw::syn(1)).await;
    let mut s = sa.accept().await.unwrap();
    s.reply(vec![], false).await.unwrap();
    assert!(matches!(raw.recv().await, Some(Frame::SynReply { .. })));
    raw.send(Frame::Data {
        stream_id: 1,
        flags: 0,
        data: Bytes::from(vec![0u8; 4000]),
    })
    .await;
    assert_eq!(s.read().await.unwrap().len(), 4000);
    // Below half the window: no update yet.
    assert!(raw.recv_within(100).await.is_none());
    raw.send(Frame::Data {
        stream_id: 1,
        flags: 0,
        data: Bytes::from(vec![0u8; 2000]),
    })
    .await;
    assert_eq!(s.read().await.unwrap().len(), 2000);
    assert_eq!(
        raw.recv().await,
        Some(Frame::WindowUpdate {
            stream_id: 1,
            delta: 6000
        })
    );
    raw.send(Frame::Data {
        stream_id: 1,
        flags: 0,
        data: Bytes::from(vec![0u8; 30_000]),
    })
    .await;
    let mut n = 0;
    while n < 30_000 {
        n += s.read().await.unwrap().len();
    }
    let mut updates = Vec::new();
    while let Some(f) = raw.recv_within(100).await {
        updates.push(f);
    }
    assert!(updates.contains(&Frame::WindowUpdate {
        stream_id: 0,
        delta: 36_000
    }));
    assert!(updates.contains(&Frame::WindowUpdate {
        stream_id: 1,
        delta: 30_000
    }));
}

#[tokio::test]
async fn goaway_from_peer() {
    let (mut raw, server, mut sa) = Raw::with_server(SessionConfig::default());
    raw.recv().await;
    raw.recv().await;
    raw.send(Raw::syn(1)).await;
    let s = sa.accept().await.unwrap();
    // Hop-by-hop headers are not sent.
    s.reply(h(&[("Connection", "close"), ("ok", "1")]), false)
        .await
        .unwrap();
    assert_eq!(
        raw.recv().await,
        Some(Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: h(&[("ok", "1")]),
        })
    );
    // A server-opened stream the peer will not have processed.
    let server2 = server.clone();
    let opening = tokio::spawn(async move { server2.open_stream(h(&[]), false).await });
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynStream { stream_id: 2, .. })
    ));
    raw.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: goaway::OK,
    })
    .await;
    assert_eq!(
        timeout(LIMIT, opening).await.unwrap().unwrap().unwrap_err(),
        SpdyError::GoingAway
    );
    assert_eq!(
        server.open_stream(h(&[]), false).await.unwrap_err(),
        SpdyError::GoingAway
    );
    // Streams the peer opened go on.
    s.write(b"still here").await.unwrap();
    assert_eq!(
        raw.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"still here"),
        })
    );
}
