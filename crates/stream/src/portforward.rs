//! `port-forward`: TCP connections to the pod's VM, made from inside the pod's netns.
//!
//! - SPDY `portforward.k8s.io` (the kubelet, `crictl`, and `kubectl` through either): each
//!   forwarded connection is a pair of streams, `error` and `data`, with the same `requestID`
//!   header and the port in a `port` header. The same protocol also arrives tunnelled through
//!   WebSocket (`SPDY/3.1+portforward.k8s.io`, `crictl -r websocket`): the SPDY bytes ride in
//!   binary messages, cut anywhere.
//! - WebSocket `v4.channel.k8s.io` (older clients): the ports come with the request, two
//!   channels per port (data `2i`, error `2i+1`), each starting with the port as two
//!   little-endian bytes.
//!
//! A port where nothing listens gets the message Kubernetes' own streaming server writes on
//! the error stream (`error forwarding port P to pod ID, uid : ...`), which client-go prints.
//! Either side closing its connection closes the other.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;
use virtlet_wire::spdy;

use crate::Backend;

/// The error stream's text for a port that cannot be reached, as Kubernetes writes it.
pub(crate) fn forward_error(port: u16, sandbox_id: &str, cause: &str) -> String {
    format!("error forwarding port {port} to pod {sandbox_id}, uid : {cause}")
}

pub(crate) async fn spdy_port_forward<T>(io: T, backend: Arc<dyn Backend>, sandbox_id: String)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut acceptor) = spdy::Session::server(io);
    // Streams come in pairs (error, data) with the same request ID.
    let mut pending: HashMap<String, (Option<spdy::Stream>, Option<spdy::Stream>)> = HashMap::new();
    while let Some(stream) = acceptor.accept().await {
        let kind = stream.header("streamtype").unwrap_or("").to_owned();
        // Old clients send no request ID: their pairs are told apart by stream ID (the data
        // stream follows its error stream).
        let request_id = match stream.header("requestid") {
            Some(r) => r.to_owned(),
            None => {
                let id = stream.writer().id();
                let error_id = if kind == "data" {
                    id.saturating_sub(2)
                } else {
                    id
                };
                format!("stream-{error_id}")
            }
        };
        let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
        if stream.reply(vec![], false).await.is_err() {
            break;
        }
        let entry = pending.entry(request_id.clone()).or_default();
        match kind.as_str() {
            "error" => entry.0 = Some(stream),
            "data" => entry.1 = Some(stream),
            _ => {
                stream.reset(spdy::rst::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if entry.0.is_some() && entry.1.is_some() {
            let Some((Some(err), Some(data))) = pending.remove(&request_id) else {
                continue;
            };
            let backend = backend.clone();
            let sandbox_id = sandbox_id.clone();
            tokio::spawn(async move {
                let Some(port) = port.filter(|p| *p > 0) else {
                    let _ = err.write(b"invalid or missing port header").await;
                    let _ = err.close_write().await;
                    data.reset(spdy::rst::CANCEL).await;
                    return;
                };
                match backend.dial(&sandbox_id, port).await {
                    Ok(tcp) => {
                        let _ = err.close_write().await;
                        pump_spdy_tcp(data, tcp).await;
                    }
                    Err(e) => {
                        debug!(port, "port-forward: {e}");
                        let msg = forward_error(port, &sandbox_id, &e);
                        let _ = err.write(msg.as_bytes()).await;
                        let _ = err.close_write().await;
                        let _ = data.close_write().await;
                    }
                }
            });
        }
    }
    session.close().await;
}

async fn pump_spdy_tcp(mut data: spdy::Stream, tcp: TcpStream) {
    let (mut tr, mut tw) = tcp.into_split();
    let writer = data.writer();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = writer.close_write().await;
    });
    while let Some(chunk) = data.read().await {
        if tw.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = tw.shutdown().await;
    let _ = up.await;
}

/// The legacy WebSocket protocol: the ports come with the request.
pub(crate) async fn ws_port_forward<T>(
    io: T,
    backend: Arc<dyn Backend>,
    sandbox_id: String,
    ports: Vec<u16>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = crate::ws::server(io).await;
    let (mut sink, mut reader) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
    });
    let binary = |channel: u8, data: &[u8]| {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(channel);
        m.extend_from_slice(data);
        Message::Binary(Bytes::from(m))
    };
    let mut conns: HashMap<u8, tokio::net::tcp::OwnedWriteHalf> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate().take(127) {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let lead = port.to_le_bytes();
        let _ = tx.send(binary(data_ch, &lead)).await;
        let _ = tx.send(binary(err_ch, &lead)).await;
        match backend.dial(&sandbox_id, port).await {
            Ok(tcp) => {
                let (mut tr, tw) = tcp.into_split();
                conns.insert(data_ch, tw);
                let tx = tx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match tr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.send(binary(data_ch, &buf[..n])).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                let msg = forward_error(port, &sandbox_id, &e);
                let _ = tx.send(binary(err_ch, msg.as_bytes())).await;
            }
        }
    }
    loop {
        match reader.next().await {
            Some(Ok(Message::Binary(m))) if m.len() > 1 => {
                if let Some(tw) = conns.get_mut(&m[0])
                    && tw.write_all(&m[1..]).await.is_err()
                {
                    conns.remove(&m[0]);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    for t in tasks {
        t.abort();
    }
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_ports_are_reported_as_kubernetes_does() {
        assert_eq!(
            forward_error(80, "abc", "connection refused"),
            "error forwarding port 80 to pod abc, uid : connection refused"
        );
    }
}
