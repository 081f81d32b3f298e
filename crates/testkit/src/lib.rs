//! Test support for virtlet: real HTTP and HTTPS servers on loopback with routes for the
//! faults a pull must survive, a generated certificate authority, and image fixtures.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::TcpListener;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What a path answers.
#[derive(Clone)]
pub enum Route {
    /// 200 with this body.
    Content(Bytes),
    /// 200 with this body, delivered slowly: `chunk` bytes every `every`.
    Slow {
        body: Bytes,
        chunk: usize,
        every: Duration,
    },
    /// This status with a short text body.
    Status(u16),
    /// A redirect (302) to this path or URL.
    Redirect(String),
    /// Accepts the request and never answers.
    Stall,
    /// Sends the headers and `sent` of `total` bytes, then stalls.
    StallBody { sent: Bytes, total: u64 },
    /// Sends the headers and part of the body, then closes the connection.
    Cut { sent: Bytes, total: u64 },
    /// 200 with this body when the request's `Authorization` header is exactly
    /// `authorization`, else 401 with a Kubernetes-style Status body.
    Authorized { authorization: String, body: Bytes },
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
}

/// A server on 127.0.0.1 that runs until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn locked(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestServer {
    /// A plain HTTP server.
    pub async fn http() -> Result<TestServer, Error> {
        Self::start(None).await
    }

    /// An HTTPS server with a certificate for `127.0.0.1` and `localhost` issued by `ca`
    /// (or for `names`, when given); with `client_ca`, it demands a client certificate.
    pub async fn https(
        ca: &TestCa,
        names: &[&str],
        client_ca: Option<&TestCa>,
    ) -> Result<TestServer, Error> {
        let names: Vec<String> = if names.is_empty() {
            vec!["127.0.0.1".into(), "localhost".into()]
        } else {
            names.iter().map(|s| s.to_string()).collect()
        };
        let (cert_pem, key_pem) = ca.issue(&names)?;
        let certs = rustls_pem_certs(&cert_pem)?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            KeyPair::from_pem(&key_pem)?.serialize_der(),
        )
        .map_err(|e| -> Error { e.into() })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            Some(client_ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_pem_certs(&client_ca.cert_pem)? {
                    roots.add(c)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Result<TestServer, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Ok(TestServer {
            addr,
            scheme,
            state,
            task,
        })
    }

    /// Sets what `path` answers.
    pub fn route(&self, path: &str, route: Route) {
        locked(&self.state).routes.insert(path.to_owned(), route);
    }

    /// How many requests reached `path`.
    pub fn hits(&self, path: &str) -> usize {
        locked(&self.state).hits.get(path).copied().unwrap_or(0)
    }

    /// `http://127.0.0.1:<port><path>` (or https).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// The URL without its scheme, as users write locations.
    pub fn location(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn answer(state: &Mutex<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let route = {
        let mut st = locked(state);
        *st.hits.entry(path.clone()).or_default() += 1;
        st.routes.get(&path).cloned()
    };
    let response = |status: StatusCode, body: Body| {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        r
    };
    match route {
        None => response(StatusCode::NOT_FOUND, full("no such file\n")),
        Some(Route::Content(b)) => response(StatusCode::OK, full(b)),
        Some(Route::Authorized {
            authorization,
            body,
        }) => {
            let given = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if given == Some(authorization.as_str()) {
                response(StatusCode::OK, full(body))
            } else {
                response(
                    StatusCode::UNAUTHORIZED,
                    full(
                        r#"{"kind":"Status","status":"Failure","message":"Unauthorized","code":401}"#,
                    ),
                )
            }
        }
        Some(Route::Slow { body, chunk, every }) => {
            let chunks: Vec<Bytes> = body
                .chunks(chunk.max(1))
                .map(Bytes::copy_from_slice)
                .collect();
            let stream = futures::stream::iter(chunks).then(move |c| async move {
                tokio::time::sleep(every).await;
                Ok::<_, Infallible>(Frame::data(c))
            });
            response(StatusCode::OK, BodyExt::boxed(StreamBody::new(stream)))
        }
        Some(Route::Status(code)) => response(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            full(format!("status {code}\n")),
        ),
        Some(Route::Redirect(to)) => {
            let mut r = response(StatusCode::FOUND, full(""));
            if let Ok(v) = hyper::header::HeaderValue::from_str(&to) {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            r
        }
        Some(Route::Stall) => {
            futures::future::pending::<()>().await;
            response(StatusCode::OK, full(""))
        }
        Some(Route::StallBody { sent, total }) => partial(sent, total, true),
        Some(Route::Cut { sent, total }) => partial(sent, total, false),
    }
}

fn partial(sent: Bytes, total: u64, stall: bool) -> Response<Body> {
    let first = futures::stream::once(async move { Ok::<_, Infallible>(Frame::data(sent)) });
    let rest = futures::stream::once(async move {
        if stall {
            futures::future::pending::<()>().await;
        }
        // Ending the body short of Content-Length makes hyper close the connection.
        Ok::<_, Infallible>(Frame::data(Bytes::new()))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(first.chain(rest))));
    r.headers_mut().insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(total),
    );
    r
}

fn rustls_pem_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> =
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    Ok(certs?)
}

/// A certificate authority made for one test.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf certificate for `names` (DNS names or IP addresses): `(cert_pem, key_pem)`.
    pub fn issue(&self, names: &[String]) -> Result<(String, String), Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A small valid qcow2 image made by `qemu-img` (the real tool), with `virtual_size` bytes.
pub fn qcow2_image(virtual_size: &str) -> Result<Vec<u8>, Error> {
    let dir = std::env::temp_dir().join(format!("virtlet-testkit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "img-{virtual_size}-{:?}.qcow2",
        std::thread::current().id()
    ));
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(virtual_size)
        .output()
        .map_err(|e| -> Error {
            format!("qemu-img is needed for image fixtures (Debian package qemu-utils): {e}").into()
        })?;
    if !out.status.success() {
        return Err(format!("qemu-img failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let bytes = std::fs::read(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(bytes)
}

/// A raw disk of `len` bytes with an MBR boot signature and `seed`-dependent content.
pub fn raw_image(len: usize, seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    if len >= 512 {
        v[510] = 0x55;
        v[511] = 0xAA;
    }
    v
}

/// The lowercase hex sha256 of `bytes`, computed by the Debian `sha256sum` tool, so tests do
/// not check virtlet's hashing with virtlet's own code.
pub fn sha256sum(bytes: &[u8]) -> Result<String, Error> {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("sha256sum has no stdin")?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}
