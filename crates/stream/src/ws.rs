//! WebSocket pieces on top of tokio-tungstenite: the server side of a connection hyper has
//! already upgraded, and [`WsBytes`], a WebSocket used as a byte pipe (how client-go tunnels
//! SPDY through WebSocket for port-forward: `SPDY/3.1+portforward.k8s.io`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

pub use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The largest message accepted from a client (client-go sends at most 32 KiB per message).
const MAX_MESSAGE: usize = 16 << 20;

/// The server side of a connection hyper upgraded after our 101 answer.
pub async fn server<S>(io: S) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// A WebSocket carrying one byte stream in its binary messages, however they are cut: reads
/// concatenate message payloads, every write is one message, shutdown sends a normal close.
/// Pings are answered by tungstenite while reading.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
}

impl<S> WsBytes<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            eof: false,
        }
    }
}

fn ws_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::Error::from(io::ErrorKind::BrokenPipe),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message in a binary WebSocket tunnel",
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => match ws_io(e) {
                e if e.kind() == io::ErrorKind::BrokenPipe => Poll::Ready(Ok(())),
                e => Poll::Ready(Err(e)),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_message_boundaries_and_close_ends_the_stream() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut tunnel = WsBytes::new(server(b).await);
        // A ping, then one frame of the tunnelled protocol cut over three messages.
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        for part in [
            &b"\x80\x03"[..],
            b"\x00\x06",
            b"\x00\x00\x00\x04\x00\x00\x00\x01",
        ] {
            client
                .send(Message::Binary(Bytes::copy_from_slice(part)))
                .await
                .unwrap();
        }
        let mut got = [0u8; 12];
        tunnel.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01");
        tunnel.write_all(b"answer").await.unwrap();
        tunnel.flush().await.unwrap();
        // The ping was answered, then our data arrived as one binary message.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(client.next().await.unwrap().unwrap());
        }
        assert!(
            seen.contains(&Message::Pong(Bytes::from_static(b"p"))),
            "{seen:?}"
        );
        assert!(seen.contains(&Message::Binary(Bytes::from_static(b"answer"))));
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        tunnel.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn text_in_the_tunnel_is_an_error() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut tunnel = WsBytes::new(server(b).await);
        client.send(Message::text("nope")).await.unwrap();
        let mut buf = [0u8; 4];
        let err = tunnel.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
