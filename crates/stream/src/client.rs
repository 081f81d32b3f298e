//! A client for the streaming server, speaking what kubectl and the kubelet speak: an HTTP
//! upgrade (hyper's client) to SPDY/3.1, or a WebSocket handshake (tokio-tungstenite). The
//! tests drive the server with it, and operators use it through `virtletctl attach` /
//! `port-forward`; the real clients (crictl, the kubelet) are tested against the server too.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The connection after a SPDY upgrade.
pub type SpdyIo = TokioIo<hyper::upgrade::Upgraded>;

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
    #[error("the HTTP exchange failed: {0}")]
    Http(String),
}

struct Target {
    addr: String,
    path_and_query: String,
}

fn target(url: &str, query: &str) -> Result<Target, ClientError> {
    let parsed = url::Url::parse(url).map_err(|_| ClientError::BadUrl(url.to_owned()))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Err(ClientError::BadUrl(url.to_owned()));
    };
    let mut path_and_query = parsed.path().to_owned();
    if !query.is_empty() {
        path_and_query = format!("{path_and_query}?{query}");
    }
    Ok(Target {
        addr: format!("{host}:{port}"),
        path_and_query,
    })
}

async fn connect(addr: &str) -> Result<TcpStream, ClientError> {
    TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

/// Connects to `url` (with `query` appended) and upgrades to SPDY/3.1, offering `protocols`
/// (`X-Stream-Protocol-Version`) in order of preference. Returns the connection and the
/// protocol the server chose.
pub async fn upgrade_spdy(
    url: &str,
    query: &str,
    protocols: &[&str],
) -> Result<(SpdyIo, String), ClientError> {
    let t = target(url, query)?;
    let tcp = connect(&t.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = hyper::Request::post(&t.path_and_query)
        .header(HOST, &t.addr)
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "SPDY/3.1");
    for p in protocols {
        req = req.header("X-Stream-Protocol-Version", *p);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    if status != 101 {
        use http_body_util::BodyExt;
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(ClientError::Refused { status, body });
    }
    let protocol = resp
        .headers()
        .get("x-stream-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok((TokioIo::new(upgraded), protocol))
}

/// Connects to `url` (with `query` appended) with a WebSocket handshake offering `protocols`
/// (`Sec-WebSocket-Protocol`). Returns the WebSocket and the protocol the server chose.
pub async fn connect_websocket(
    url: &str,
    query: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, String), ClientError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let t = target(url, query)?;
    let ws_url = format!("ws://{}{}", t.addr, t.path_and_query);
    let mut req = ws_url
        .into_client_request()
        .map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
    if !protocols.is_empty() {
        let value = protocols.join(", ");
        let value = value
            .parse()
            .map_err(|_| ClientError::BadUrl(format!("bad protocol list {value:?}")))?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", value);
    }
    let tcp = connect(&t.addr).await?;
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let protocol = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            Ok((ws, protocol))
        }
        Err(WsError::Http(resp)) => Err(ClientError::Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default(),
        }),
        Err(e) => Err(ClientError::Http(e.to_string())),
    }
}
