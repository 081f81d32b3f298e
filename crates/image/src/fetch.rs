//! Opens an image's bytes at an `http`, `https` or `file` URL, honouring a translation
//! [`Transport`] (whole-download timeout, redirect limit, proxy, TLS roots, client certificate,
//! server name override, insecure). Yields the body chunk by chunk; it never buffers a whole image.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use url::Url;

use crate::translation::{TlsProfile, Transport};

/// No byte for this long ends a download, whatever the transport says.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connecting takes at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const FILE_CHUNK: usize = 1 << 20;

/// Why bytes could not be had from a URL. Each names the URL or path.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("URL {url:?} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("URL scheme {scheme:?} of {url} is not supported (use http, https or file)")]
    Scheme { url: String, scheme: String },
    #[error("{url} answered HTTP {status}")]
    HttpStatus {
        url: String,
        status: String,
        code: u16,
    },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("TLS with {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("download from {url} timed out ({detail})")]
    Timeout { url: String, detail: String },
    #[error("{url} redirected more than {limit} times")]
    Redirects { url: String, limit: usize },
    #[error("download from {url} broke off: {detail}")]
    Transfer { url: String, detail: String },
    #[error("transport settings for {url} are unusable: {detail}")]
    Settings { url: String, detail: String },
    #[error("local image file {path} does not exist")]
    FileNotFound { path: String },
    #[error("local image {path} is not a regular file")]
    NotRegularFile { path: String },
    #[error("cannot read local image {path}: {source}")]
    FileRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open image body.
pub enum Body {
    Http {
        response: reqwest::Response,
        url: String,
        timeout: Option<Duration>,
    },
    File {
        file: std::fs::File,
        path: String,
    },
}

/// Builds the URL for a location: one without `://` gets `protocol://` in front.
pub fn location_url(location: &str, protocol: &str) -> Result<Url, FetchError> {
    let text = if location.contains("://") {
        location.to_owned()
    } else {
        format!("{protocol}://{location}")
    };
    let url = Url::parse(&text).map_err(|e| FetchError::BadUrl {
        url: text.clone(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "http" | "https" | "file" => Ok(url),
        other => Err(FetchError::Scheme {
            url: text,
            scheme: other.to_owned(),
        }),
    }
}

/// Opens `url`: for HTTP(S), sends the request and checks the status.
pub async fn open(url: &Url, transport: &Transport) -> Result<Body, FetchError> {
    if url.scheme() == "file" {
        return open_file(url);
    }
    let shown = url.to_string();
    let client = client(url, transport)?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| classify(&shown, transport, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::HttpStatus {
            url: shown,
            status: status.to_string(),
            code: status.as_u16(),
        });
    }
    Ok(Body::Http {
        response,
        url: shown,
        timeout: transport.timeout,
    })
}

impl Body {
    /// The size the server announced, when it did.
    pub fn expected_len(&self) -> Option<u64> {
        match self {
            Body::Http { response, .. } => response.content_length(),
            Body::File { file, .. } => file.metadata().ok().map(|m| m.len()),
        }
    }

    /// The next chunk, or `None` at the end. File reads block briefly; callers run them on a
    /// runtime that allows it (reads of 1 MiB from a local file).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        match self {
            Body::Http {
                response,
                url,
                timeout,
            } => response.chunk().await.map_err(|e| {
                classify(
                    url,
                    &Transport {
                        timeout: *timeout,
                        ..Transport::default()
                    },
                    e,
                )
            }),
            Body::File { file, path } => {
                let mut buf = vec![0u8; FILE_CHUNK];
                let n = tokio::task::block_in_place(|| file.read(&mut buf)).map_err(|source| {
                    FetchError::FileRead {
                        path: path.clone(),
                        source,
                    }
                })?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(Bytes::from(buf)))
            }
        }
    }
}

fn open_file(url: &Url) -> Result<Body, FetchError> {
    let path = url.to_file_path().map_err(|()| FetchError::BadUrl {
        url: url.to_string(),
        reason: "not a local absolute path".into(),
    })?;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FetchError::FileNotFound {
            path: shown.clone(),
        },
        _ => FetchError::FileRead {
            path: shown.clone(),
            source,
        },
    })?;
    if !meta.is_file() {
        return Err(FetchError::NotRegularFile { path: shown });
    }
    let file = std::fs::File::open(&path).map_err(|source| FetchError::FileRead {
        path: shown.clone(),
        source,
    })?;
    Ok(Body::File { file, path: shown })
}

fn client(url: &Url, transport: &Transport) -> Result<reqwest::Client, FetchError> {
    let settings = |detail: String| FetchError::Settings {
        url: url.to_string(),
        detail,
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(transport.max_redirects))
        .use_preconfigured_tls(tls_config(transport.tls.as_ref()).map_err(settings)?);
    if let Some(t) = transport.timeout {
        builder = builder.timeout(t);
    }
    if let Some(proxy) = &transport.proxy {
        builder = builder.proxy(
            reqwest::Proxy::all(proxy).map_err(|e| settings(format!("proxy {proxy:?}: {e}")))?,
        );
    }
    builder.build().map_err(|e| settings(e.to_string()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The public roots (Mozilla's, as shipped by webpki-roots) plus the host's trust store.
fn base_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A host certificate rustls cannot use is skipped; the rest still count.
            let _ = roots.add(cert);
        }
        roots
    })
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| format!("bad PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in PEM data".into());
    }
    Ok(certs)
}

/// The rustls client config for a transport's TLS profile.
pub fn tls_config(tls: Option<&TlsProfile>) -> Result<rustls::ClientConfig, String> {
    let mut roots = base_roots().clone();
    let mut identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> = None;
    if let Some(tls) = tls {
        for (i, record) in tls.certificates.iter().enumerate() {
            let certs = pem_certs(&record.cert).map_err(|e| format!("certificates[{i}]: {e}"))?;
            match &record.key {
                None => {
                    for cert in certs {
                        roots
                            .add(cert)
                            .map_err(|e| format!("certificates[{i}] is not a usable CA: {e}"))?;
                    }
                }
                Some(key) => {
                    let key = rustls_pemfile::private_key(&mut key.as_bytes())
                        .map_err(|e| format!("certificates[{i}].key: {e}"))?
                        .ok_or_else(|| format!("certificates[{i}].key holds no private key"))?;
                    identity = Some((certs, key));
                }
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = Arc::new(roots);
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        Some(t) if t.insecure => Arc::new(NoVerification(provider())),
        Some(TlsProfile {
            server_name: Some(name),
            ..
        }) if !name.is_empty() => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            let name = ServerName::try_from(name.clone())
                .map_err(|e| format!("serverName {name:?}: {e}"))?;
            Arc::new(NameOverride { inner, name })
        }
        _ => rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| e.to_string())?,
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Verifies the certificate against a configured name instead of the URL's host.
#[derive(Debug)]
struct NameOverride {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure: true`: any certificate is accepted (handshake signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The next error down a chain. `io::Error::source` skips the error it wraps, so wrapped
/// errors are entered through `get_ref`.
fn next_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    }
}

/// The rustls error in a chain, if TLS is what failed.
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        cur = next_cause(err);
    }
    None
}

/// The innermost message of an error chain (reqwest's outer layers say little).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = next_cause(cur) {
        cur = next;
    }
    cur.to_string()
}

fn classify(url: &str, transport: &Transport, e: reqwest::Error) -> FetchError {
    let url = url.to_owned();
    if let Some(detail) = tls_cause(&e) {
        return FetchError::Tls { url, detail };
    }
    if e.is_redirect() {
        return FetchError::Redirects {
            url,
            limit: transport.max_redirects,
        };
    }
    if e.is_timeout() {
        let detail = match transport.timeout {
            Some(t) => format!("the transport allows {} ms", t.as_millis()),
            None => format!(
                "no data for {} s or no connection within {} s",
                READ_IDLE_TIMEOUT.as_secs(),
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        return FetchError::Timeout { url, detail };
    }
    if e.is_connect() {
        return FetchError::Connect {
            url,
            detail: root_cause(&e),
        };
    }
    FetchError::Transfer {
        url,
        detail: root_cause(&e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_urls() {
        assert_eq!(
            location_url("example.com/a.img", "https").unwrap().as_str(),
            "https://example.com/a.img"
        );
        assert_eq!(
            location_url("example.com/a.img", "http").unwrap().as_str(),
            "http://example.com/a.img"
        );
        assert_eq!(
            location_url("file:///var/img/a.qcow2", "https")
                .unwrap()
                .as_str(),
            "file:///var/img/a.qcow2"
        );
        let err = location_url("ftp://example.com/a.img", "https").unwrap_err();
        assert!(matches!(err, FetchError::Scheme { ref scheme, .. } if scheme == "ftp"));
        assert!(err.to_string().contains("ftp://example.com/a.img"));
        assert!(matches!(
            location_url("http://exa mple.com/", "https"),
            Err(FetchError::BadUrl { .. })
        ));
    }

    #[test]
    fn tls_profiles_validate() {
        assert!(tls_config(None).is_ok());
        let bad = TlsProfile {
            certificates: vec![crate::translation::TlsCertificate {
                cert: "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
                    .into(),
                key: None,
            }],
            ..TlsProfile::default()
        };
        assert!(tls_config(Some(&bad)).is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn local_files_open_and_refuse_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        std::fs::write(&p, b"hello").unwrap();
        let url = Url::from_file_path(&p).unwrap();
        let mut body = open(&url, &Transport::default()).await.unwrap();
        assert_eq!(body.next_chunk().await.unwrap().unwrap(), &b"hello"[..]);
        assert!(body.next_chunk().await.unwrap().is_none());
        let missing = Url::from_file_path(dir.path().join("nope")).unwrap();
        assert!(matches!(
            open(&missing, &Transport::default()).await,
            Err(FetchError::FileNotFound { .. })
        ));
        let d = Url::from_file_path(dir.path()).unwrap();
        assert!(matches!(
            open(&d, &Transport::default()).await,
            Err(FetchError::NotRegularFile { .. })
        ));
    }
}
