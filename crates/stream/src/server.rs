//! HTTP side of the streaming server: token lookup, protocol negotiation, the upgrade; the
//! sessions themselves are in [`crate::attach`] and [`crate::portforward`].

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::attach::{Streams, spdy_attach, ws_attach};
use crate::exec::{spdy_exec, ws_exec};
use crate::exec_tty::{spdy_exec_tty, ws_exec_tty};
use crate::portforward::{spdy_port_forward, ws_port_forward};
use crate::tokens::{Request, Tokens};

/// Typed on an attached console, it detaches that client (the VM goes on).
pub const DETACH_KEY: u8 = 0x1d; // Ctrl-]

const ATTACH_SPDY: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const ATTACH_WS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const PORTFORWARD_SPDY: &[&str] = &["portforward.k8s.io"];
/// SPDY tunnelled through WebSocket (client-go's port-forward over WebSocket), and the older
/// channel protocol.
const PORTFORWARD_WS: &[&str] = &["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"];
const TUNNEL_PREFIX: &str = "SPDY/3.1+";

/// A running VM's console as the streaming server sees it.
pub struct ConsoleIo {
    pub output: broadcast::Receiver<Bytes>,
    pub input: mpsc::Sender<Bytes>,
    /// The container was made with `stdinOnce`: when an attached client closes its stdin,
    /// the console gets an end-of-file (Ctrl-D).
    pub stdin_once: bool,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a command run by [`Backend::exec`] left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A command's output, or why it could not run.
pub type ExecOutcome = Result<ExecOutput, String>;

/// What the server needs from the runtime.
pub trait Backend: Send + Sync + 'static {
    /// The console of a running container.
    fn attach(&self, container_id: &str) -> Result<ConsoleIo, String>;
    /// A connection to `port` of the pod's VM.
    fn dial(&self, sandbox_id: &str, port: u16) -> BoxFuture<Result<TcpStream, String>>;
    /// Runs `cmd` in the container's VM with `stdin` (all of it), to its end.
    fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> BoxFuture<ExecOutcome>;
    /// Starts `cmd` on a terminal of the container's VM sized (columns, rows).
    fn exec_tty(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        size: (u16, u16),
    ) -> BoxFuture<Result<crate::TtyExec, String>>;
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
        info!(%addr, "streaming server (attach, exec, port-forward) listening");
        Ok(StreamServer {
            tokens,
            base: format!("http://{addr}"),
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL for a request: `/attach/<token>`, `/exec/<token>` or `/portforward/<token>`.
    pub fn url(&self, req: Request) -> String {
        let kind = match req {
            Request::Attach { .. } => "attach",
            Request::Exec { .. } => "exec",
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

impl Wire {
    fn name(&self) -> &'static str {
        match self {
            Wire::Spdy => "SPDY",
            Wire::WebSocket { .. } => "WebSocket",
        }
    }
}

async fn handle(
    req: HttpRequest<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let (kind, token) = match path.trim_start_matches('/').split_once('/') {
        Some((k @ ("attach" | "exec" | "portforward"), t)) if !t.is_empty() && !t.contains('/') => {
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
        (Request::Attach { .. }, "attach")
            | (Request::Exec { .. }, "exec")
            | (Request::PortForward { .. }, "portforward")
    );
    if !kind_matches {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "unknown or expired stream token",
        ));
    }
    let (client_protocols, server_protocols) = match (&wire, &request) {
        (Wire::Spdy, Request::Attach { .. } | Request::Exec { .. }) => {
            (header_list(&req, "x-stream-protocol-version"), ATTACH_SPDY)
        }
        (Wire::Spdy, Request::PortForward { .. }) => (
            header_list(&req, "x-stream-protocol-version"),
            PORTFORWARD_SPDY,
        ),
        (Wire::WebSocket { .. }, Request::Attach { .. } | Request::Exec { .. }) => {
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
        Request::PortForward { .. } | Request::Exec { .. } => None,
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
            if let Ok(v) = HeaderValue::from_str(&crate::ws::derive_accept_key(key.as_bytes())) {
                h.insert("sec-websocket-accept", v);
            }
            h.insert("sec-websocket-protocol", proto_value);
            // The kubelet's tunnelling proxy reads the inner protocol from here.
            if let Some(inner) = protocol.strip_prefix(TUNNEL_PREFIX)
                && let Ok(v) = HeaderValue::from_str(inner)
            {
                h.insert("x-stream-protocol-version", v);
            }
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
        let over = wire.name();
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
            (
                Request::Exec {
                    container_id,
                    cmd,
                    stdin,
                    stdout,
                    stderr,
                    tty,
                },
                _,
            ) => {
                let want = Streams {
                    stdin,
                    stdout,
                    stderr,
                    tty,
                };
                let what = if tty { "exec -t" } else { "exec" };
                info!(container = %short(&container_id), %protocol, ?cmd, "{what} ({over}) started");
                let id = container_id.clone();
                let (command, spdy) = (cmd.clone(), matches!(wire, Wire::Spdy));
                if tty {
                    let start: crate::exec_tty::Start =
                        Box::new(move |size| backend.exec_tty(&id, command, size));
                    if spdy {
                        spdy_exec_tty(upgraded, &protocol, want, cmd, start).await;
                    } else {
                        ws_exec_tty(upgraded, want, cmd, start).await;
                    }
                } else {
                    let run: crate::exec::Run =
                        Box::new(move |input| backend.exec(&id, command, input));
                    if spdy {
                        spdy_exec(upgraded, &protocol, want, cmd, run).await;
                    } else {
                        ws_exec(upgraded, &protocol, want, cmd, run).await;
                    }
                }
                info!(container = %short(&container_id), "{what} ({over}) ended");
            }
            (Request::PortForward { sandbox_id, ports }, _) => {
                info!(sandbox = %short(&sandbox_id), %protocol, "port-forward ({over}) started");
                match wire {
                    Wire::Spdy => spdy_port_forward(upgraded, backend, sandbox_id.clone()).await,
                    Wire::WebSocket { .. } if protocol.starts_with(TUNNEL_PREFIX) => {
                        let tunnel = crate::ws::WsBytes::new(crate::ws::server(upgraded).await);
                        spdy_port_forward(tunnel, backend, sandbox_id.clone()).await;
                    }
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
    fn port_forward_over_websocket_prefers_the_spdy_tunnel() {
        let c = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(&c(&["SPDY/3.1+portforward.k8s.io"]), PORTFORWARD_WS).as_deref(),
            Some("SPDY/3.1+portforward.k8s.io")
        );
        assert_eq!(
            negotiate(&c(&["v4.channel.k8s.io"]), PORTFORWARD_WS).as_deref(),
            Some("v4.channel.k8s.io")
        );
    }

    #[test]
    fn ports_from_the_query() {
        assert_eq!(query_ports("port=22&port=80"), vec![22, 80]);
        assert_eq!(query_ports("ports=22,8080&x=1"), vec![22, 8080]);
        assert_eq!(query_ports("port=nope"), Vec::<u16>::new());
    }
}
