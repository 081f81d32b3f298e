//! Serving the gRPC services on the CRI socket: HTTP/2 connections from hyper, tonic's routes,
//! and the client's deadline (`grpc-timeout`) enforced here.
//!
//! tonic's own server answers a request whose `grpc-timeout` runs out with CANCELLED; the gRPC
//! spec (and critest's "public image should timeout if requested") want DEADLINE_EXCEEDED.
//! tonic applies its timeout outside any layer a server can add, so virtlet serves tonic's
//! routes with hyper itself and keeps the deadline in [`Deadline`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tonic::body::Body;
use tonic::service::Routes;
use tower::Service;
use tracing::debug;

/// The value of a `grpc-timeout` header: digits (at most 8) and a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Wraps tonic's routes: takes `grpc-timeout` off the request and answers DEADLINE_EXCEEDED
/// when it runs out. The call itself runs on: state-changing calls finish in their own task.
#[derive(Clone)]
pub struct Deadline {
    inner: Routes,
}

impl Deadline {
    pub fn new(inner: Routes) -> Deadline {
        Deadline { inner }
    }
}

impl<B> Service<Request<B>> for Deadline
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let timeout = parts
            .headers
            .remove("grpc-timeout")
            .and_then(|v| v.to_str().ok().and_then(parse_grpc_timeout));
        let req = Request::from_parts(parts, Body::new(body));
        let call = self.inner.call(req);
        Box::pin(async move {
            match timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "the client's deadline ({t:?}) passed before the call finished"
                    ))
                    .into_http()),
                },
                None => call.await,
            }
        })
    }
}

/// Serves `routes` on `listener` (HTTP/2) until `shutdown` resolves; then lets open calls
/// finish (at most `grace`). `on_accept` sees each new connection first.
pub async fn serve(
    listener: UnixListener,
    routes: Routes,
    on_accept: impl Fn(&tokio::net::UnixStream),
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let service = Deadline::new(routes);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        debug!("accepting a CRI connection failed: {e}");
                        continue;
                    }
                };
                on_accept(&stream);
                let svc = hyper_util::service::TowerToHyperService::new(service.clone());
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!("CRI connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "1x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
