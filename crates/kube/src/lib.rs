//! Read-only Kubernetes API access: the ConfigMaps and Secrets that Virtlet's cloud-init
//! annotations name (`VirtletCloudInitUserDataSource`, `VirtletSSHKeySource`,
//! `VirtletFilesFromDataSource`).
//!
//! kube-rs does the work: kubeconfig parsing (client certificates, tokens, exec plugins),
//! the in-cluster service account (whose projected token rotates and is re-read), TLS. This
//! crate keeps what is ours: where the settings come from, names checked before they reach
//! the API server, and errors a pod's author can act on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{origin}")]
    Config {
        origin: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    #[error("the API server answered HTTP {status} for {what}: {message}")]
    Failed {
        what: String,
        status: u16,
        message: String,
    },
    #[error("cannot read {what} from the API server")]
    Unavailable {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// ConfigMap or Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// Object names and namespaces are DNS subdomains / labels: checked here so that a bad
/// annotation is an InvalidArgument naming it, not an odd answer from the API server.
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

/// The keys of a ConfigMap: `data` as text, `binaryData` as bytes. Pure.
pub fn configmap_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

/// The keys of a Secret (`data`, already base64-decoded; `stringData` is write-only). Pure.
pub fn secret_data(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// What a failed GET means for the pod: a missing object, a refusal, or the API server
/// being unreachable or broken (worth retrying).
fn classify(what: String, e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(status) if status.code == 404 => KubeError::NotFound { what },
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            KubeError::Refused {
                what,
                status: status.code,
                message: status.message,
            }
        }
        kube::Error::Api(status) => KubeError::Failed {
            what,
            status: status.code,
            message: status.message,
        },
        source => KubeError::Unavailable { what, source },
    }
}

/// A client for one API server.
#[derive(Clone)]
pub struct KubeClient {
    client: Client,
    server: String,
    origin: String,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("server", &self.server)
            .field("origin", &self.origin)
            .finish()
    }
}

impl KubeClient {
    fn new(mut config: Config, origin: String) -> Result<KubeClient, KubeError> {
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(15));
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| KubeError::Config {
            origin: origin.clone(),
            source: Box::new(e),
        })?;
        Ok(KubeClient {
            client,
            server: server.trim_end_matches('/').to_owned(),
            origin,
        })
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Where the settings came from: the kubeconfig's path, or the service account.
    pub fn origin(&self) -> &str {
        &self.origin
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
        match kind {
            Kind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
                .get(name)
                .await
                .map(configmap_data),
            Kind::Secret => Api::<Secret>::namespaced(self.client.clone(), namespace)
                .get(name)
                .await
                .map(secret_data),
        }
        .map_err(|e| classify(what, e))
    }
}

/// Where the API settings come from, in order: `--kubeconfig` (its current context), then
/// the in-cluster service account when `KUBERNETES_SERVICE_HOST` is set. `None`: no API
/// access (pods that name a ConfigMap or Secret are refused).
pub async fn discover(kubeconfig: Option<&Path>) -> Result<Option<KubeClient>, KubeError> {
    if let Some(path) = kubeconfig {
        let origin = format!("kubeconfig {}", path.display());
        let config_error = |source: Box<dyn std::error::Error + Send + Sync>| KubeError::Config {
            origin: origin.clone(),
            source,
        };
        let file = Kubeconfig::read_from(path).map_err(|e| config_error(Box::new(e)))?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| config_error(Box::new(e)))?;
        return KubeClient::new(config, origin).map(Some);
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return Ok(None);
    }
    let origin = "the in-cluster service account".to_owned();
    let config = Config::incluster().map_err(|e| KubeError::Config {
        origin: origin.clone(),
        source: Box::new(e),
    })?;
    KubeClient::new(config, origin).map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn configmaps_and_secrets_decode() {
        let cm: ConfigMap = serde_json::from_str(
            r#"{"kind":"ConfigMap","apiVersion":"v1","data":{"a":"text"},"binaryData":{"b":"AAEC"}}"#,
        )
        .unwrap();
        let d = configmap_data(cm);
        assert_eq!(d["a"], b"text");
        assert_eq!(d["b"], [0, 1, 2]);
        let s: Secret = serde_json::from_str(
            r#"{"kind":"Secret","apiVersion":"v1","data":{"k":"c3NoLXJzYSBBQUFB"}}"#,
        )
        .unwrap();
        assert_eq!(secret_data(s)["k"], b"ssh-rsa AAAA");
        assert!(secret_data(Secret::default()).is_empty());
        assert!(configmap_data(ConfigMap::default()).is_empty());
        let s = Secret {
            data: Some(BTreeMap::from([("x".to_owned(), ByteString(vec![0xff]))])),
            ..Default::default()
        };
        assert_eq!(secret_data(s)["x"], [0xff]);
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

    #[test]
    fn api_answers_are_classified() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "x")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(matches!(
            classify("s".into(), api(404, "gone")),
            KubeError::NotFound { .. }
        ));
        let refused = classify("secret ns/x".into(), api(403, "forbidden: nope"));
        assert_eq!(
            refused.to_string(),
            "the API server refused to give secret ns/x (HTTP 403): forbidden: nope"
        );
        assert_eq!(
            classify("configmap ns/x".into(), api(500, "boom")).to_string(),
            "the API server answered HTTP 500 for configmap ns/x: boom"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_without_its_context_names_the_file_and_the_context() {
        let dir = std::env::temp_dir().join(format!("virtlet-kube-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(&path, "current-context: nowhere\ncontexts: []\n").unwrap();
        let err = discover(Some(&path)).await.unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            chain.contains("kubeconfig") && chain.contains("nowhere"),
            "{chain}"
        );
    }
}
