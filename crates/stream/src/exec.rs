//! `exec` without a terminal: the command runs in the VM through the runtime's
//! [`Backend::exec`](crate::Backend::exec) (the QEMU guest agent), over SPDY
//! (`v4.channel.k8s.io` .. `channel.k8s.io`, as the kubelet and crictl send it) or WebSocket
//! (`v5`/`v4.channel.k8s.io`).
//!
//! The guest agent hands a command its whole stdin at the start and its output at the end,
//! so the session reads the client's stdin to its end (the client closes it), runs the
//! command, then sends stdout, stderr and the exit status (v4+: a `Status`, with the exit
//! code as client-go reads it).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use virtlet_wire::spdy;

use crate::attach::{Streams, accept_streams, channel, end_spdy, has_status, success_status};
use crate::server::{BoxFuture, ExecOutcome};

/// How long the end of a session waits for the client to close the connection itself.
const LINGER: Duration = Duration::from_secs(2);
/// The most stdin a command is given (the agent takes it in one message).
pub const MAX_STDIN: usize = 8 * 1024 * 1024;
/// Output goes out in pieces of this size.
const CHUNK: usize = 32 * 1024;

/// What runs the command once stdin is known.
pub(crate) type Run = Box<dyn FnOnce(Option<Vec<u8>>) -> BoxFuture<ExecOutcome> + Send>;

/// The v4+ status that ends a session: success, a non-zero exit code (client-go turns it
/// into an exit code error), or a failure to run at all.
pub(crate) fn status_json(outcome: &ExecOutcome, cmd: &[String]) -> Vec<u8> {
    match outcome {
        Ok(out) if out.exit_code == 0 => success_status(),
        Ok(out) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: command {cmd:?} exited with {}",
                out.exit_code
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": out.exit_code.to_string()}]},
        })
        .to_string()
        .into_bytes(),
        Err(message) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
        })
        .to_string()
        .into_bytes(),
    }
}

/// The error text of the older protocols (v1-v3), which have no status: empty on success.
pub(crate) fn error_text(outcome: &ExecOutcome) -> Vec<u8> {
    match outcome {
        Ok(out) if out.exit_code == 0 => Vec::new(),
        Ok(out) => format!(
            "command terminated with non-zero exit code: {}",
            out.exit_code
        )
        .into_bytes(),
        Err(message) => message.clone().into_bytes(),
    }
}

fn too_much_stdin() -> ExecOutcome {
    Err(format!(
        "exec: more than {MAX_STDIN} bytes of stdin (the guest agent takes a command's stdin in one piece)"
    ))
}

pub(crate) async fn spdy_exec<T>(io: T, protocol: &str, want: Streams, cmd: Vec<String>, run: Run)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut acceptor) = spdy::Session::server(io);
    let expected =
        1 + usize::from(want.stdin) + usize::from(want.stdout) + usize::from(want.stderr);
    let Some(mut streams) = accept_streams(&session, &mut acceptor, expected, "exec").await else {
        return;
    };
    let error = streams.remove("error");
    let stdout = streams.remove("stdout");
    let stderr = streams.remove("stderr");
    let stdin = streams.remove("stdin");
    drop(streams);

    let input = match stdin {
        Some(mut s) => {
            let mut buf = Vec::new();
            let mut over = false;
            while let Some(data) = s.read().await {
                if buf.len() + data.len() > MAX_STDIN {
                    over = true;
                    break;
                }
                buf.extend_from_slice(&data);
            }
            if over { None } else { Some(Some(buf)) }
        }
        None => Some(None),
    };
    let outcome = match input {
        Some(stdin) => run(stdin).await,
        None => too_much_stdin(),
    };
    if let Ok(out) = &outcome {
        for (stream, data) in [(&stdout, &out.stdout), (&stderr, &out.stderr)] {
            if let Some(s) = stream {
                for piece in data.chunks(CHUNK) {
                    if s.write(piece).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    for s in [&stdout, &stderr].into_iter().flatten() {
        let _ = s.close_write().await;
    }
    let message = if has_status(protocol) {
        status_json(&outcome, &cmd)
    } else {
        error_text(&outcome)
    };
    end_spdy(session, error, &message).await;
}

/// A WebSocket message on `channel` of the `channel.k8s.io` protocols.
pub(crate) fn ws_frame(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(Bytes::from(m))
}

/// The end of a WebSocket exec session: `status` on the error channel, a normal close, and the
/// connection kept until the client answers the close (or [`LINGER`]).
pub(crate) async fn end_ws<S, R, E>(sink: &mut S, reader: &mut R, status: &[u8])
where
    S: futures::Sink<Message> + Unpin,
    R: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    let _ = sink.send(ws_frame(channel::ERROR, status)).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = reader.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

pub(crate) async fn ws_exec<T>(io: T, protocol: &str, want: Streams, cmd: Vec<String>, run: Run)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let ws = crate::ws::server(io).await;
    let (mut sink, mut reader) = ws.split();
    let send = ws_frame;
    // An empty message on the lowest output channel is how Kubernetes servers say "ready".
    if want.stdout || want.stderr {
        let first = if want.stdout {
            channel::STDOUT
        } else {
            channel::STDERR
        };
        let _ = sink.send(send(first, &[])).await;
    }
    // stdin ends with v5's close message; v4 has none, so there the command gets no stdin.
    let input = if want.stdin && v5 {
        let mut buf = Vec::new();
        loop {
            match reader.next().await {
                Some(Ok(Message::Binary(m))) if !m.is_empty() => match m[0] {
                    channel::STDIN => {
                        if buf.len() + m.len() - 1 > MAX_STDIN {
                            break None;
                        }
                        buf.extend_from_slice(&m[1..]);
                    }
                    channel::CLOSE if m.get(1) == Some(&channel::STDIN) => {
                        break Some(Some(std::mem::take(&mut buf)));
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    } else {
        Some(None)
    };
    let outcome = match input {
        Some(stdin) => run(stdin).await,
        None => too_much_stdin(),
    };
    if let Ok(out) = &outcome {
        for (wanted, ch, data) in [
            (want.stdout, channel::STDOUT, &out.stdout),
            (want.stderr, channel::STDERR, &out.stderr),
        ] {
            if wanted {
                for piece in data.chunks(CHUNK) {
                    if sink.send(send(ch, piece)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    end_ws(&mut sink, &mut reader, &status_json(&outcome, &cmd)).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::server::ExecOutput;

    #[test]
    fn the_status_carries_the_exit_code_as_client_go_reads_it() {
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        let ok = Ok(ExecOutput::default());
        assert_eq!(status_json(&ok, &cmd), success_status());
        let three = Ok(ExecOutput {
            exit_code: 3,
            ..Default::default()
        });
        let v: serde_json::Value = serde_json::from_slice(&status_json(&three, &cmd)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let failed: ExecOutcome = Err("no agent".into());
        let v: serde_json::Value = serde_json::from_slice(&status_json(&failed, &cmd)).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["message"].as_str()),
            (Some("Failure"), Some("no agent"))
        );
        assert_eq!(error_text(&ok), b"");
        assert_eq!(
            error_text(&three),
            b"command terminated with non-zero exit code: 3"
        );
    }
}
