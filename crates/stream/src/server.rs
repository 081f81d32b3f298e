//! HTTP side of the streaming server: token lookup, protocol negotiation, the upgrade; then
//! the attach and port-forward sessions over SPDY or WebSocket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};
use virtlet_wire::spdy;
use virtlet_wire::websocket::{self, Message, WebSocket};

use crate::tokens::{Request, Tokens};

/// Typed on an attached console, it detaches that client (the VM goes on).
pub const DETACH_KEY: u8 = 0x1d; // Ctrl-]

/// How long a client has to open the streams it announced.
const STREAM_PATIENCE: Duration = Duration::from_secs(30);

const ATTACH_SPDY: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const ATTACH_WS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const PORTFORWARD_SPDY: &[&str] = &["portforward.k8s.io"];
const PORTFORWARD_WS: &[&str] = &["v4.channel.k8s.io"];

/// A running VM's console as the streaming server sees it.
pub struct ConsoleIo {
    pub output: broadcast::Receiver<Bytes>,
    pub input: mpsc::Sender<Bytes>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the server needs from the runtime.
pub trait Backend: Send + Sync + 'static {
    /// The console of a running container.
    fn attach(&self, container_id: &str) -> Result<ConsoleIo, String>;
    /// A connection to `port` of the pod's VM.
    fn dial(&self, sandbox_id: &str, port: u16) -> BoxFuture<Result<TcpStream, String>>;
}

pub struct StreamServer {
    tokens: Arc<Tokens>,
    base: String,
    addr: SocketAddr,
}

struct State {
    tokens: Arc<Tokens>,
    backend: Arc<dyn Backend>,
}

impl StreamServer {
    /// Listens on `addr` and serves until the process ends.
    pub async fn bind(
        addr: SocketAddr,
        backend: Arc<dyn Backend>,
        token_ttl: Duration,
    ) -> std::io::Result<StreamServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tokens = Arc::new(Tokens::new(token_ttl));
        let state = Arc::new(State {
            tokens: tokens.clone(),
            backend,
        });
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, state.clone()));
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await
                    {
                        debug!(%peer, "streaming connection ended: {e}");
                    }
                });
            }
        });
        info!(%addr, "streaming server (attach, port-forward) listening");
        Ok(StreamServer {
            tokens,
            base: format!("http://{addr}"),
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL for a request: `/attach/<token>` or `/portforward/<token>`.
    pub fn url(&self, req: Request) -> String {
        let kind = match req {
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        };
        format!("{}/{kind}/{}", self.base, self.tokens.issue(req))
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r
}

/// The values of a header that may repeat and may hold comma-separated lists.
fn header_list(req: &HttpRequest<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The first of the client's protocols the server speaks.
fn negotiate(client: &[String], server: &[&str]) -> Option<String> {
    client
        .iter()
        .find(|c| server.contains(&c.as_str()))
        .cloned()
}

enum Wire {
    Spdy,
    WebSocket { key: String },
}

async fn handle(
    req: HttpRequest<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let (kind, token) = match path.trim_start_matches('/').split_once('/') {
        Some((k @ ("attach" | "portforward"), t)) if !t.is_empty() && !t.contains('/') => {
            (k.to_owned(), t.to_owned())
        }
        _ => return Ok(plain(StatusCode::NOT_FOUND, "not found")),
    };
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let wire = match upgrade.as_str() {
        "spdy/3.1" => Wire::Spdy,
        "websocket" => match req
            .headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
        {
            Some(k) => Wire::WebSocket { key: k.to_owned() },
            None => {
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    "a WebSocket upgrade needs Sec-WebSocket-Key",
                ));
            }
        },
        _ => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "this endpoint needs an upgrade to SPDY/3.1 or websocket",
            ));
        }
    };
    // The token is checked (and used up) only for a well-formed request.
    let Some(request) = state.tokens.redeem(&token) else {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "unknown or expired stream token",
        ));
    };
    let kind_matches = matches!(
        (&request, kind.as_str()),
        (Request::Attach { .. }, "attach") | (Request::PortForward { .. }, "portforward")
    );
    if !kind_matches {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "unknown or expired stream token",
        ));
    }
    let (client_protocols, server_protocols) = match (&wire, &request) {
        (Wire::Spdy, Request::Attach { .. }) => {
            (header_list(&req, "x-stream-protocol-version"), ATTACH_SPDY)
        }
        (Wire::Spdy, Request::PortForward { .. }) => (
            header_list(&req, "x-stream-protocol-version"),
            PORTFORWARD_SPDY,
        ),
        (Wire::WebSocket { .. }, Request::Attach { .. }) => {
            (header_list(&req, "sec-websocket-protocol"), ATTACH_WS)
        }
        (Wire::WebSocket { .. }, Request::PortForward { .. }) => {
            (header_list(&req, "sec-websocket-protocol"), PORTFORWARD_WS)
        }
    };
    let Some(protocol) = negotiate(&client_protocols, server_protocols) else {
        return Ok(plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client_protocols:?}, server supports {server_protocols:?}"
            ),
        ));
    };
    // What the session needs before the upgrade: the console must exist now.
    let console = match &request {
        Request::Attach { container_id, .. } => match state.backend.attach(container_id) {
            Ok(c) => Some(c),
            Err(e) => return Ok(plain(StatusCode::NOT_FOUND, e)),
        },
        Request::PortForward { .. } => None,
    };
    let ws_ports = query_ports(req.uri().query().unwrap_or(""));

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let proto_value = HeaderValue::from_str(&protocol).unwrap_or(HeaderValue::from_static(""));
    match &wire {
        Wire::Spdy => {
            h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert("x-stream-protocol-version", proto_value);
        }
        Wire::WebSocket { key } => {
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&websocket::accept_key(key)) {
                h.insert("sec-websocket-accept", v);
            }
            h.insert("sec-websocket-protocol", proto_value);
        }
    }
    let backend = state.backend.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                warn!("stream upgrade failed: {e}");
                return;
            }
        };
        let over = match wire {
            Wire::Spdy => "SPDY",
            Wire::WebSocket { .. } => "WebSocket",
        };
        match (request, console) {
            (
                Request::Attach {
                    stdin,
                    stdout,
                    stderr,
                    tty,
                    container_id,
                },
                Some(console),
            ) => {
                let want = Streams {
                    stdin,
                    stdout,
                    stderr,
                    tty,
                };
                info!(container = %short(&container_id), %protocol, "attach ({over}) started");
                match wire {
                    Wire::Spdy => spdy_attach(upgraded, &protocol, want, console).await,
                    Wire::WebSocket { .. } => ws_attach(upgraded, &protocol, want, console).await,
                }
                info!(container = %short(&container_id), "attach ({over}) ended");
            }
            (Request::PortForward { sandbox_id, ports }, _) => {
                info!(sandbox = %short(&sandbox_id), "port-forward ({over}) started");
                match wire {
                    Wire::Spdy => spdy_port_forward(upgraded, backend, sandbox_id.clone()).await,
                    Wire::WebSocket { .. } => {
                        let ports = if ws_ports.is_empty() { ports } else { ws_ports };
                        ws_port_forward(upgraded, backend, sandbox_id.clone(), ports).await;
                    }
                }
                info!(sandbox = %short(&sandbox_id), "port-forward ({over}) ended");
            }
            (Request::Attach { .. }, None) => {}
        }
    });
    Ok(resp)
}

fn short(id: &str) -> &str {
    &id[..13.min(id.len())]
}

/// `port=22&port=80` (also `ports=22,80`).
fn query_ports(query: &str) -> Vec<u16> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "port" || k == "ports")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter_map(|p| p.trim().parse::<u16>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The status the v4+ protocols send on the error stream when the session ends.
fn success_status() -> Vec<u8> {
    br#"{"metadata":{},"status":"Success"}"#.to_vec()
}

/// Input for the VM up to the detach key; `true` when the key was typed.
fn split_detach(data: &[u8]) -> (&[u8], bool) {
    match data.iter().position(|b| *b == DETACH_KEY) {
        Some(i) => (&data[..i], true),
        None => (data, false),
    }
}

async fn spdy_attach<T>(io: T, protocol: &str, want: Streams, console: ConsoleIo)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut acceptor) = spdy::Session::server(io);
    let v3plus = matches!(protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io");
    let mut expected = 1 + usize::from(want.stdin) + usize::from(want.stdout);
    if want.stderr && !want.tty {
        expected += 1;
    }
    if want.tty && v3plus {
        expected += 1;
    }
    let mut streams: HashMap<String, spdy::Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_PATIENCE;
    while streams.len() < expected {
        let next = tokio::time::timeout_at(deadline, acceptor.accept()).await;
        let Ok(Some(stream)) = next else {
            warn!("attach: the client did not open its streams");
            session.close().await;
            return;
        };
        let kind = stream.header("streamtype").unwrap_or("").to_owned();
        if stream.reply(vec![], false).await.is_err() {
            session.close().await;
            return;
        }
        streams.insert(kind, stream);
    }
    let error = streams.remove("error");
    let stdout = streams.remove("stdout");
    let stdin = streams.remove("stdin");
    let resize = streams.remove("resize");
    drop(streams);

    let ConsoleIo { mut output, input } = console;
    let mut out_task = stdout.map(|out| {
        tokio::spawn(async move {
            loop {
                match output.recv().await {
                    Ok(b) => {
                        if out.write(&b).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let _ = out.close_write().await;
        })
    });
    if let Some(mut r) = resize {
        tokio::spawn(async move { while r.read().await.is_some() {} });
    }
    // The session lasts while the client keeps stdin open (or, without stdin, until the
    // console closes or the client goes away).
    match stdin {
        Some(mut inp) => {
            // Also ends when the console does (the VM stopped).
            let console_gone = console_gone(&mut out_task);
            tokio::pin!(console_gone);
            loop {
                let data = tokio::select! {
                    d = inp.read() => d,
                    () = &mut console_gone => None,
                };
                let Some(data) = data else { break };
                let (keep, detach) = split_detach(&data);
                if !keep.is_empty() && input.send(Bytes::copy_from_slice(keep)).await.is_err() {
                    break;
                }
                if detach {
                    debug!("attach: detach key typed");
                    break;
                }
            }
        }
        None => {
            if let Some(t) = &out_task {
                while !t.is_finished() && !session.is_closed() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    if let Some(t) = out_task {
        t.abort();
    }
    if let Some(err) = error {
        if protocol == "v4.channel.k8s.io" {
            let _ = err.write(&success_status()).await;
        }
        let _ = err.close_write().await;
    }
    session.close().await;
}

async fn ws_attach<T>(io: T, protocol: &str, want: Streams, console: ConsoleIo)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    const STDIN: u8 = 0;
    const STDOUT: u8 = 1;
    const ERROR: u8 = 3;
    const RESIZE: u8 = 4;
    const CLOSE: u8 = 255;
    let v5 = protocol == "v5.channel.k8s.io";
    let (mut reader, writer) = WebSocket::server(io).into_split();
    let ConsoleIo { mut output, input } = console;
    let out_writer = writer.clone();
    let mut out_task = want.stdout.then(|| {
        tokio::spawn(async move {
            loop {
                match output.recv().await {
                    Ok(b) => {
                        let mut m = Vec::with_capacity(b.len() + 1);
                        m.push(STDOUT);
                        m.extend_from_slice(&b);
                        if out_writer.send(Message::Binary(m)).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    });
    {
        let console_gone = console_gone(&mut out_task);
        tokio::pin!(console_gone);
        loop {
            let next = tokio::select! {
                m = reader.recv() => m,
                () = &mut console_gone => Ok(None),
            };
            match next {
                Ok(Some(Message::Binary(m))) if !m.is_empty() => match m[0] {
                    STDIN if want.stdin => {
                        let (keep, detach) = split_detach(&m[1..]);
                        if !keep.is_empty()
                            && input.send(Bytes::copy_from_slice(keep)).await.is_err()
                        {
                            break;
                        }
                        if detach {
                            break;
                        }
                    }
                    RESIZE => {}
                    CLOSE if v5 && m.get(1) == Some(&STDIN) => {}
                    _ => {}
                },
                Ok(Some(Message::Close(_))) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
    }
    if let Some(t) = out_task {
        t.abort();
    }
    let mut status = vec![ERROR];
    status.extend(success_status());
    let _ = writer.send(Message::Binary(status)).await;
    let _ = writer.send(Message::Close(None)).await;
}

async fn spdy_port_forward<T>(io: T, backend: Arc<dyn Backend>, sandbox_id: String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut acceptor) = spdy::Session::server(io);
    // Streams come in pairs (error, data) with the same request ID.
    let mut pending: HashMap<String, (Option<spdy::Stream>, Option<spdy::Stream>)> = HashMap::new();
    while let Some(stream) = acceptor.accept().await {
        let kind = stream.header("streamtype").unwrap_or("").to_owned();
        let request_id = stream.header("requestid").unwrap_or("").to_owned();
        let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
        if stream.reply(vec![], false).await.is_err() {
            break;
        }
        let entry = pending.entry(request_id.clone()).or_default();
        match kind.as_str() {
            "error" => entry.0 = Some(stream),
            "data" => entry.1 = Some(stream),
            _ => {
                stream.reset(1).await;
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
                    return;
                };
                match backend.dial(&sandbox_id, port).await {
                    Ok(tcp) => {
                        let _ = err.close_write().await;
                        pump_spdy_tcp(data, tcp).await;
                    }
                    Err(e) => {
                        let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
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

async fn ws_port_forward<T>(io: T, backend: Arc<dyn Backend>, sandbox_id: String, ports: Vec<u16>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = WebSocket::server(io).into_split();
    let mut conns: HashMap<u8, tokio::net::tcp::OwnedWriteHalf> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate().take(127) {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let lead = port.to_le_bytes();
        let _ = writer
            .send(Message::Binary(vec![data_ch, lead[0], lead[1]]))
            .await;
        let _ = writer
            .send(Message::Binary(vec![err_ch, lead[0], lead[1]]))
            .await;
        match backend.dial(&sandbox_id, port).await {
            Ok(tcp) => {
                let (mut tr, tw) = tcp.into_split();
                conns.insert(data_ch, tw);
                let w = writer.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match tr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut m = Vec::with_capacity(n + 1);
                                m.push(data_ch);
                                m.extend_from_slice(&buf[..n]);
                                if w.send(Message::Binary(m)).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                let mut m = vec![err_ch];
                m.extend(
                    format!("error forwarding port {port} to pod {sandbox_id}: {e}").into_bytes(),
                );
                let _ = writer.send(Message::Binary(m)).await;
            }
        }
    }
    loop {
        match reader.recv().await {
            Ok(Some(Message::Binary(m))) if m.len() > 1 => {
                if let Some(tw) = conns.get_mut(&m[0])
                    && tw.write_all(&m[1..]).await.is_err()
                {
                    conns.remove(&m[0]);
                }
            }
            Ok(Some(Message::Close(_))) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    for t in tasks {
        t.abort();
    }
    let _ = writer.send(Message::Close(None)).await;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn protocols_follow_the_clients_preference() {
        let c = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(&c(&["v4.channel.k8s.io", "channel.k8s.io"]), ATTACH_SPDY).as_deref(),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            negotiate(&c(&["v5.channel.k8s.io", "v4.channel.k8s.io"]), ATTACH_WS).as_deref(),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(negotiate(&c(&["v1.nope"]), ATTACH_SPDY), None);
        assert_eq!(negotiate(&c(&[]), PORTFORWARD_SPDY), None);
    }

    #[test]
    fn detach_key_ends_input() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_detach(b"\x1d"), (&b""[..], true));
    }

    #[test]
    fn ports_from_the_query() {
        assert_eq!(query_ports("port=22&port=80"), vec![22, 80]);
        assert_eq!(query_ports("ports=22,8080&x=1"), vec![22, 8080]);
        assert_eq!(query_ports("port=nope"), Vec::<u16>::new());
    }
}
