//! A client for the streaming server, speaking what kubectl and the kubelet speak: the HTTP
//! upgrade, then SPDY/3.1 or WebSocket. The tests drive the server with it, and operators can
//! use it through `virtletctl attach` / `port-forward`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which upgrade to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Spdy,
    WebSocket,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not an http:// URL with a host and port")]
    BadUrl(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the upgrade failed: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the server's answer is not HTTP: {0}")]
    Garbled(String),
}

/// The server's answer to an upgrade request.
pub struct Upgraded {
    pub stream: TcpStream,
    /// The protocol the server chose.
    pub protocol: String,
}

/// Connects to `url` (with `query` appended) and asks for an upgrade to `wire` with the
/// given subprotocols, in order of preference.
pub async fn upgrade(
    url: &str,
    query: &str,
    wire: Wire,
    protocols: &[&str],
) -> Result<Upgraded, ClientError> {
    let parsed = url::Url::parse(url).map_err(|_| ClientError::BadUrl(url.to_owned()))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Err(ClientError::BadUrl(url.to_owned()));
    };
    let addr = format!("{host}:{port}");
    let mut stream = TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let mut path = parsed.path().to_owned();
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let mut head = match wire {
        Wire::Spdy => format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        ),
        Wire::WebSocket => format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n",
            virtlet_wire::websocket::client_key()
        ),
    };
    for p in protocols {
        match wire {
            Wire::Spdy => head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n")),
            Wire::WebSocket => head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n")),
        }
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    let io_err = |e: std::io::Error| ClientError::Connect {
        addr: addr.clone(),
        source: e,
    };
    stream.write_all(head.as_bytes()).await.map_err(io_err)?;
    // The answer's head, byte by byte: nothing of what follows may be consumed.
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let b = stream.read_u8().await.map_err(io_err)?;
        answer.push(b);
        if answer.len() > 64 * 1024 {
            return Err(ClientError::Garbled("the header is too long".into()));
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Garbled(text.clone()))?;
    let header = |name: &str| {
        text.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if status != 101 {
        let len: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
            .min(64 * 1024);
        let mut body = vec![0u8; len];
        let _ = stream.read_exact(&mut body).await;
        return Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    let protocol = match wire {
        Wire::Spdy => header("x-stream-protocol-version"),
        Wire::WebSocket => header("sec-websocket-protocol"),
    }
    .unwrap_or_default();
    Ok(Upgraded { stream, protocol })
}
