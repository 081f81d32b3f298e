//! `attach`: the VM's serial console over SPDY (`channel.k8s.io` .. `v4.channel.k8s.io`, as the
//! kubelet and `crictl` send it) or WebSocket (`v4`/`v5.channel.k8s.io`, as `crictl -r
//! websocket` sends it).
//!
//! The console is shared: several clients at once, each sees the output from when it
//! attached, and input from any of them goes to the VM. Ctrl-] detaches a client. The session
//! ends when the client's stdin ends (for a container created with `stdinOnce`, the console
//! then gets an end-of-file, Ctrl-D, as a terminal would send it), when the VM closes its
//! console, or when the client goes away. At the end the client gets a `Success` status
//! (v4 and v5), its output streams are finished, and the connection is closed once the
//! client has had a moment to read everything.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, warn};
use virtlet_wire::spdy;

use crate::{ConsoleIo, DETACH_KEY};

/// How long a client has to open the streams it announced.
const STREAM_PATIENCE: Duration = Duration::from_secs(30);
/// How long the end of a session waits for the client to close the connection itself.
const LINGER: Duration = Duration::from_secs(2);
/// What a terminal sends for end-of-file: the console's stdin "closes".
const EOT: u8 = 0x04;

/// Which streams the client asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The status the v4+ protocols send on the error stream when the session ends.
pub(crate) fn success_status() -> Vec<u8> {
    br#"{"metadata":{},"status":"Success"}"#.to_vec()
}

/// Input for the VM up to the detach key; `true` when the key was typed.
pub(crate) fn split_detach(data: &[u8]) -> (&[u8], bool) {
    match data.iter().position(|b| *b == DETACH_KEY) {
        Some(i) => (&data[..i], true),
        None => (data, false),
    }
}

/// How the client's input ended.
#[derive(Debug, PartialEq, Eq)]
enum InputEnd {
    /// stdin reached its end (the client closed it).
    Eof,
    /// Ctrl-] was typed, the console closed, or the client went away.
    Other,
}

/// Copies the console's output to `send` until the console closes or `send` fails.
async fn copy_output<F, Fut>(mut output: broadcast::Receiver<Bytes>, mut send: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        match output.recv().await {
            Ok(b) => {
                if !send(b).await {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Resolves when the task copying console output to the client ends (the console closed: the
/// VM stopped); never, when the client asked for no output.
async fn console_gone(out_task: &mut Option<tokio::task::JoinHandle<()>>) {
    match out_task.as_mut() {
        Some(t) => {
            let _ = t.await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Sends client input to the console; at the end of stdin, an EOT if the container's stdin is
/// "once".
async fn end_input(end: &InputEnd, stdin_once: bool, input: &mpsc::Sender<Bytes>) {
    if *end == InputEnd::Eof && stdin_once {
        debug!("attach: stdin closed; sending end-of-file to the console");
        let _ = input.send(Bytes::from_static(&[EOT])).await;
    }
}

/// The `expected` streams the client opens, by their `streamtype`, each answered; `None`
/// (and the session closed) when the client does not open them within [`STREAM_PATIENCE`].
pub(crate) async fn accept_streams(
    session: &spdy::Session,
    acceptor: &mut spdy::StreamAcceptor,
    expected: usize,
    what: &str,
) -> Option<HashMap<String, spdy::Stream>> {
    let mut streams: HashMap<String, spdy::Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_PATIENCE;
    while streams.len() < expected {
        let next = tokio::time::timeout_at(deadline, acceptor.accept()).await;
        let Ok(Some(stream)) = next else {
            warn!("{what}: the client did not open its streams");
            session.close().await;
            return None;
        };
        let kind = stream.header("streamtype").unwrap_or("").to_owned();
        if stream.reply(vec![], false).await.is_err() {
            session.close().await;
            return None;
        }
        streams.insert(kind, stream);
    }
    Some(streams)
}

pub(crate) async fn spdy_attach<T>(io: T, protocol: &str, want: Streams, console: ConsoleIo)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut acceptor) = spdy::Session::server(io);
    let v3plus = matches!(
        protocol,
        "v3.channel.k8s.io" | "v4.channel.k8s.io" | "v5.channel.k8s.io"
    );
    let mut expected = 1 + usize::from(want.stdin) + usize::from(want.stdout);
    if want.stderr && !want.tty {
        expected += 1;
    }
    if want.tty && v3plus {
        expected += 1;
    }
    let Some(mut streams) = accept_streams(&session, &mut acceptor, expected, "attach").await
    else {
        return;
    };
    let error = streams.remove("error");
    let stdout = streams.remove("stdout");
    let stderr = streams.remove("stderr");
    let stdin = streams.remove("stdin");
    let resize = streams.remove("resize");
    drop(streams);

    let ConsoleIo {
        output,
        input,
        stdin_once,
    } = console;
    let out_writer = stdout.as_ref().map(spdy::Stream::writer);
    let mut out_task = out_writer.clone().map(|out| {
        tokio::spawn(copy_output(output, move |b| {
            let out = out.clone();
            async move { out.write(&b).await.is_ok() }
        }))
    });
    if let Some(mut r) = resize {
        // A serial line has no size: resize messages are read and dropped.
        tokio::spawn(async move { while r.read().await.is_some() {} });
    }
    let end = match stdin {
        Some(mut inp) => {
            let console_gone = console_gone(&mut out_task);
            tokio::pin!(console_gone);
            loop {
                let data = tokio::select! {
                    d = inp.read() => d,
                    () = &mut console_gone => break InputEnd::Other,
                };
                let Some(data) = data else {
                    break InputEnd::Eof;
                };
                let (keep, detach) = split_detach(&data);
                if !keep.is_empty() && input.send(Bytes::copy_from_slice(keep)).await.is_err() {
                    break InputEnd::Other;
                }
                if detach {
                    debug!("attach: detach key typed");
                    break InputEnd::Other;
                }
            }
        }
        None => {
            // Without stdin the session lasts until the console closes or the client goes.
            let console_gone = console_gone(&mut out_task);
            tokio::select! {
                () = console_gone => {}
                () = session.closed() => {}
            }
            InputEnd::Other
        }
    };
    end_input(&end, stdin_once, &input).await;
    if let Some(t) = out_task {
        t.abort();
    }
    // The end: output streams finished, the status, then the client closes.
    for s in [&out_writer, &stderr.as_ref().map(spdy::Stream::writer)]
        .into_iter()
        .flatten()
    {
        let _ = s.close_write().await;
    }
    let status = if has_status(protocol) {
        success_status()
    } else {
        Vec::new()
    };
    end_spdy(session, error, &status).await;
}

/// Whether the protocol ends a session with a `Status` on the error stream (v4 and v5).
pub(crate) fn has_status(protocol: &str) -> bool {
    matches!(protocol, "v4.channel.k8s.io" | "v5.channel.k8s.io")
}

/// The end of a SPDY session: `message` (if any) on the error stream, which is then
/// finished, and the connection closed once the client has closed it or had [`LINGER`].
pub(crate) async fn end_spdy(session: spdy::Session, error: Option<spdy::Stream>, message: &[u8]) {
    if let Some(err) = error {
        if !message.is_empty() {
            let _ = err.write(message).await;
        }
        let _ = err.close_write().await;
    }
    let _ = tokio::time::timeout(LINGER, session.closed()).await;
    session.close().await;
}

/// WebSocket channels of the `channel.k8s.io` protocols.
pub(crate) mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const RESIZE: u8 = 4;
    /// v5: `[255, channel]` half-closes that channel.
    pub const CLOSE: u8 = 255;
}

pub(crate) async fn ws_attach<T>(io: T, protocol: &str, want: Streams, console: ConsoleIo)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let ws = crate::ws::server(io).await;
    let (mut sink, mut reader) = ws.split();
    // One writer task owns the sink; everything else queues messages for it.
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        sink
    });
    let ConsoleIo {
        output,
        input,
        stdin_once,
    } = console;
    // client-go drops the connection if the first data on a channel it did not open arrives,
    // but an empty message on the lowest output channel is how Kubernetes servers say "ready".
    if want.stdout {
        let _ = tx
            .send(Message::Binary(Bytes::from_static(&[channel::STDOUT])))
            .await;
    }
    let out_tx = tx.clone();
    let mut out_task = want.stdout.then(|| {
        tokio::spawn(copy_output(output, move |b| {
            let out_tx = out_tx.clone();
            async move {
                let mut m = Vec::with_capacity(b.len() + 1);
                m.push(channel::STDOUT);
                m.extend_from_slice(&b);
                out_tx.send(Message::Binary(m.into())).await.is_ok()
            }
        }))
    });
    let end = {
        let console_gone = console_gone(&mut out_task);
        tokio::pin!(console_gone);
        loop {
            let next = tokio::select! {
                m = reader.next() => m,
                () = &mut console_gone => break InputEnd::Other,
            };
            match next {
                Some(Ok(Message::Binary(m))) if !m.is_empty() => match m[0] {
                    channel::STDIN if want.stdin => {
                        let (keep, detach) = split_detach(&m[1..]);
                        if !keep.is_empty()
                            && input.send(Bytes::copy_from_slice(keep)).await.is_err()
                        {
                            break InputEnd::Other;
                        }
                        if detach {
                            break InputEnd::Other;
                        }
                    }
                    channel::CLOSE if v5 && m.get(1) == Some(&channel::STDIN) => {
                        break InputEnd::Eof;
                    }
                    channel::RESIZE | channel::CLOSE => {}
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break InputEnd::Other,
                Some(Ok(_)) => {}
            }
        }
    };
    end_input(&end, stdin_once, &input).await;
    if let Some(t) = out_task {
        t.abort();
    }
    let mut status = vec![channel::ERROR];
    status.extend(success_status());
    let _ = tx.send(Message::Binary(status.into())).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(tx);
    // Read until the client answers the close (or goes away), then drop the connection.
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = reader.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_key_ends_input() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_detach(b"\x1d"), (&b""[..], true));
    }
}
