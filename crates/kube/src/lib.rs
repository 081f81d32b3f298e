//! Read-only Kubernetes API access: the ConfigMaps and Secrets that Virtlet's cloud-init
//! annotations name (`VirtletCloudInitUserDataSource`, `VirtletSSHKeySource`,
//! `VirtletFilesFromDataSource`).
//!
//! Two GETs is all virtlet needs, so this is a small client on reqwest (the node's HTTP
//! client, TLS set up as for image pulls) rather than kube-rs, which could not be fetched on
//! our machines; the settings come from a kubeconfig or the in-cluster service account
//! ([`config`]).

pub mod config;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

pub use config::{ApiConfig, Auth, discover};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{origin}: {reason}")]
    Config { origin: String, reason: String },
    #[error("{what}: {reason}")]
    BadName { what: String, reason: String },
    #[error("{what} does not exist")]
    NotFound { what: String },
    #[error("the API server refused to give {what} (HTTP {status}): {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("cannot read {what} from the API server: {reason}")]
    Unavailable { what: String, reason: String },
    #[error("the API server's answer for {what} is not usable: {reason}")]
    BadAnswer { what: String, reason: String },
}

/// ConfigMap or Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// Object names and namespaces are DNS subdomains / labels: checked before they go into a URL.
fn check_name(what: &str, field: &str, name: &str) -> Result<(), KubeError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(KubeError::BadName {
            what: what.to_owned(),
            reason: format!(
                "{field} {name:?} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')"
            ),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    binary_data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct StatusBody {
    #[serde(default)]
    message: String,
}

/// The keys of a ConfigMap (`data`, and `binaryData` decoded) or a Secret (`data` decoded).
/// Pure: parses the API server's JSON.
pub fn object_data(
    kind: Kind,
    what: &str,
    body: &[u8],
) -> Result<BTreeMap<String, Vec<u8>>, KubeError> {
    let bad = |reason: String| KubeError::BadAnswer {
        what: what.to_owned(),
        reason,
    };
    let obj: Object = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let b64 = |k: &str, v: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| bad(format!("key {k:?} is not base64: {e}")))
    };
    let mut out = BTreeMap::new();
    match kind {
        Kind::ConfigMap => {
            for (k, v) in obj.data {
                out.insert(k, v.into_bytes());
            }
            for (k, v) in &obj.binary_data {
                out.insert(k.clone(), b64(k, v)?);
            }
        }
        Kind::Secret => {
            for (k, v) in &obj.data {
                out.insert(k.clone(), b64(k, v)?);
            }
        }
    }
    Ok(out)
}

/// A client for one API server.
pub struct KubeClient {
    http: reqwest::Client,
    config: ApiConfig,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("server", &self.config.server)
            .field("origin", &self.config.origin)
            .finish()
    }
}

impl KubeClient {
    pub fn new(config: ApiConfig) -> Result<KubeClient, KubeError> {
        let mut certificates = Vec::new();
        if let Some(ca) = &config.ca_pem {
            certificates.push(virtlet_image::translation::TlsCertificate {
                cert: ca.clone(),
                key: None,
            });
        }
        if let Auth::ClientCert { cert_pem, key_pem } = &config.auth {
            certificates.push(virtlet_image::translation::TlsCertificate {
                cert: cert_pem.clone(),
                key: Some(key_pem.clone()),
            });
        }
        let tls = virtlet_image::fetch::tls_config(Some(&virtlet_image::translation::TlsProfile {
            certificates,
            server_name: config.tls_server_name.clone(),
            insecure: config.insecure_skip_tls_verify,
        }))
        .map_err(|reason| KubeError::Config {
            origin: config.origin.clone(),
            reason: format!("TLS settings: {reason}"),
        })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| KubeError::Config {
                origin: config.origin.clone(),
                reason: e.to_string(),
            })?;
        Ok(KubeClient { http, config })
    }

    pub fn server(&self) -> &str {
        &self.config.server
    }

    /// The keys of a ConfigMap or Secret of `namespace`.
    pub async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, KubeError> {
        let what = format!("{} {namespace}/{name}", kind.noun());
        check_name(&what, "namespace", namespace)?;
        check_name(&what, "name", name)?;
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/{}/{name}",
            self.config.server,
            kind.path()
        );
        let mut req = self.http.get(&url).header("Accept", "application/json");
        req = match &self.config.auth {
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
            Auth::None | Auth::ClientCert { .. } => req,
        };
        let unavailable = |e: reqwest::Error| KubeError::Unavailable {
            what: what.clone(),
            reason: format!("{} ({url})", error_chain(&e)),
        };
        let resp = req.send().await.map_err(unavailable)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unavailable)?;
        match status.as_u16() {
            200 => object_data(kind, &what, &body),
            404 => Err(KubeError::NotFound { what }),
            code @ (401 | 403) => Err(KubeError::Refused {
                what,
                status: code,
                message: serde_json::from_slice::<StatusBody>(&body)
                    .map(|s| s.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
            }),
            code => Err(KubeError::Unavailable {
                what,
                reason: format!("HTTP {code} from {url}"),
            }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn configmaps_and_secrets_decode() {
        let cm = br#"{"kind":"ConfigMap","data":{"a":"text"},"binaryData":{"b":"AAEC"}}"#;
        let d = object_data(Kind::ConfigMap, "configmap ns/x", cm).unwrap();
        assert_eq!(d["a"], b"text");
        assert_eq!(d["b"], [0, 1, 2]);
        let s = br#"{"kind":"Secret","data":{"k":"c3NoLXJzYSBBQUFB"}}"#;
        assert_eq!(
            object_data(Kind::Secret, "secret ns/x", s).unwrap()["k"],
            b"ssh-rsa AAAA"
        );
        let empty = object_data(Kind::Secret, "secret ns/x", b"{}").unwrap();
        assert!(empty.is_empty());
        let err = object_data(Kind::Secret, "secret ns/x", br#"{"data":{"k":"%%"}}"#).unwrap_err();
        assert!(
            err.to_string().contains("secret ns/x") && err.to_string().contains("\"k\""),
            "{err}"
        );
        assert!(object_data(Kind::Secret, "s", b"[1]").is_err());
    }

    #[test]
    fn names_that_could_bend_the_url_are_refused() {
        for bad in ["", "a/b", "..", "A", "a?b", "-a", "a.", &"a".repeat(254)] {
            assert!(check_name("x", "name", bad).is_err(), "{bad:?}");
        }
        for good in ["a", "cloud-init.v1", "0x"] {
            check_name("x", "name", good).unwrap();
        }
    }
}
