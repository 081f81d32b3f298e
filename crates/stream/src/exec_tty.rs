//! `exec` with a terminal (`kubectl exec -it`, `crictl exec -it`): the runtime's
//! [`Backend::exec_tty`](crate::Backend::exec_tty) runs the command on a terminal of the VM,
//! and the session copies bytes both ways as they come: the client's stdin to the terminal,
//! the terminal to the client's stdout (a terminal has no separate stderr), the client's
//! window size (the `resize` stream or WebSocket channel 4, JSON `{"Width":..,"Height":..}`)
//! to the terminal. It ends with the command's exit status (v4+) once the command has
//! exited and its output is sent; a client that goes away first hangs the terminal up.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use virtlet_wire::spdy;

use crate::attach::{Streams, accept_streams, channel, end_spdy, has_status};
use crate::exec::{end_ws, error_text, status_json, ws_frame};
use crate::server::{BoxFuture, ExecOutcome, ExecOutput};

/// How long a session waits for the client's first window size before the command starts
/// at 80x24 (client-go sends the size as soon as the streams are up).
const FIRST_SIZE: Duration = Duration::from_millis(300);
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// A command running on a terminal of the VM.
pub struct TtyExec {
    /// What the terminal prints; closed once the command has exited and its output is read.
    pub output: mpsc::Receiver<Vec<u8>>,
    /// What the client types.
    pub input: mpsc::Sender<Vec<u8>>,
    /// The client's window: (columns, rows).
    pub resize: mpsc::Sender<(u16, u16)>,
    /// The exit code, after `output` closed; an error when the VM or its agent went first.
    pub exit: tokio::sync::oneshot::Receiver<Result<i32, String>>,
}

/// What starts the command, given the client's window size.
pub(crate) type Start = Box<dyn FnOnce((u16, u16)) -> BoxFuture<Result<TtyExec, String>> + Send>;

/// client-go's `TerminalSize`.
#[derive(Deserialize)]
struct Size {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Window sizes out of a byte stream of JSON objects (client-go writes them back to back,
/// each with a newline); a partial object waits in the buffer for its rest.
#[derive(Default)]
pub(crate) struct SizeDecoder(Vec<u8>);

impl SizeDecoder {
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        self.0.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.0).into_iter::<Size>();
        let consumed = loop {
            match it.next() {
                Some(Ok(s)) => sizes.push((s.width, s.height)),
                Some(Err(e)) if e.is_eof() => break it.byte_offset(),
                // Not a size: dropped, as is everything before it.
                Some(Err(_)) => break self.0.len(),
                None => break it.byte_offset(),
            }
        };
        self.0.drain(..consumed);
        sizes
    }
}

fn outcome(
    exit: Result<Result<i32, String>, tokio::sync::oneshot::error::RecvError>,
) -> ExecOutcome {
    match exit {
        Ok(Ok(code)) => Ok(ExecOutput {
            exit_code: code,
            ..Default::default()
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the exec session ended without an exit status".into()),
    }
}

pub(crate) async fn spdy_exec_tty<T>(
    io: T,
    protocol: &str,
    want: Streams,
    cmd: Vec<String>,
    start: Start,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut acceptor) = spdy::Session::server(io);
    let v3plus = matches!(
        protocol,
        "v3.channel.k8s.io" | "v4.channel.k8s.io" | "v5.channel.k8s.io"
    );
    let expected = 1 + usize::from(want.stdin) + usize::from(want.stdout) + usize::from(v3plus);
    let Some(mut streams) = accept_streams(&session, &mut acceptor, expected, "exec -t").await
    else {
        return;
    };
    let error = streams.remove("error");
    let stdout = streams.remove("stdout");
    let stdin = streams.remove("stdin");
    let resize = streams.remove("resize");
    drop(streams);

    // The first size, if the client sends it soon; the rest go to the terminal as they come.
    let mut sizes = SizeDecoder::default();
    let mut first = None;
    let mut pending = Vec::new();
    let mut resize = resize;
    if let Some(r) = resize.as_mut() {
        let deadline = tokio::time::Instant::now() + FIRST_SIZE;
        while first.is_none() {
            match tokio::time::timeout_at(deadline, r.read()).await {
                Ok(Some(data)) => {
                    pending = sizes.push(&data);
                    first = pending.first().copied();
                }
                _ => break,
            }
        }
    }
    let tty = match start(first.unwrap_or(DEFAULT_SIZE)).await {
        Ok(t) => t,
        Err(message) => {
            let status = if has_status(protocol) {
                status_json(&Err(message), &cmd)
            } else {
                message.into_bytes()
            };
            end_spdy(session, error, &status).await;
            return;
        }
    };
    let TtyExec {
        mut output,
        input,
        resize: resize_tx,
        exit,
    } = tty;
    for s in pending.into_iter().skip(1) {
        let _ = resize_tx.send(s).await;
    }
    if let Some(mut r) = resize {
        tokio::spawn(async move {
            while let Some(data) = r.read().await {
                for s in sizes.push(&data) {
                    if resize_tx.send(s).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    if let Some(mut inp) = stdin {
        tokio::spawn(async move {
            // The end of stdin is not the end of the command: a terminal has no such thing.
            while let Some(data) = inp.read().await {
                if input.send(data.to_vec()).await.is_err() {
                    break;
                }
            }
        });
    }
    let out_writer = stdout.as_ref().map(spdy::Stream::writer);
    let ended = loop {
        tokio::select! {
            data = output.recv() => match data {
                Some(d) => {
                    if let Some(w) = &out_writer {
                        let _ = w.write(&d).await;
                    }
                }
                None => break true,
            },
            () = session.closed() => break false,
        }
    };
    if !ended {
        // The client went away: dropping the output hangs the terminal up.
        drop(output);
        session.close().await;
        return;
    }
    if let Some(w) = &out_writer {
        let _ = w.close_write().await;
    }
    let result = outcome(exit.await);
    let status = if has_status(protocol) {
        status_json(&result, &cmd)
    } else {
        error_text(&result)
    };
    end_spdy(session, error, &status).await;
}

pub(crate) async fn ws_exec_tty<T>(io: T, want: Streams, cmd: Vec<String>, start: Start)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = crate::ws::server(io).await;
    let (mut sink, mut reader) = ws.split();
    let frame = ws_frame;
    if want.stdout {
        let _ = sink.send(frame(channel::STDOUT, &[])).await;
    }
    // The first size, if the client sends it soon.
    let mut first = None;
    let mut early_input = Vec::new();
    let deadline = tokio::time::Instant::now() + FIRST_SIZE;
    while first.is_none() {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Some(Ok(Message::Binary(m)))) if !m.is_empty() => match m[0] {
                channel::RESIZE => first = SizeDecoder::default().push(&m[1..]).first().copied(),
                channel::STDIN => early_input.push(m[1..].to_vec()),
                _ => {}
            },
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return,
            Ok(Some(Ok(_))) => {}
            Err(_) => break,
        }
    }
    let tty = match start(first.unwrap_or(DEFAULT_SIZE)).await {
        Ok(t) => t,
        Err(message) => {
            let _ = sink
                .send(frame(channel::ERROR, &status_json(&Err(message), &cmd)))
                .await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let TtyExec {
        mut output,
        input,
        resize,
        exit,
    } = tty;
    for d in early_input {
        let _ = input.send(d).await;
    }
    let ended = loop {
        tokio::select! {
            data = output.recv() => match data {
                Some(d) => {
                    if want.stdout && sink.send(frame(channel::STDOUT, &d)).await.is_err() {
                        break false;
                    }
                }
                None => break true,
            },
            m = reader.next() => match m {
                Some(Ok(Message::Binary(m))) if !m.is_empty() => match m[0] {
                    channel::STDIN => { let _ = input.send(m[1..].to_vec()).await; }
                    channel::RESIZE => {
                        for s in SizeDecoder::default().push(&m[1..]) {
                            let _ = resize.send(s).await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_)) | Err(_)) | None => break false,
                Some(Ok(_)) => {}
            },
        }
    };
    if !ended {
        return;
    }
    let result = outcome(exit.await);
    end_ws(&mut sink, &mut reader, &status_json(&result, &cmd)).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_come_out_of_a_json_stream_in_pieces() {
        let mut d = SizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":120,"Hei"#), vec![]);
        assert_eq!(
            d.push(b"ght\":40}\n{\"Width\":80,\"Height\":24}\n"),
            vec![(120, 40), (80, 24)]
        );
        assert_eq!(d.push(b"garbage"), vec![]);
        assert_eq!(d.push(br#"{"Width":1,"Height":2}"#), vec![(1, 2)]);
    }
}
