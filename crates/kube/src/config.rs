//! Where the API server is and how to prove who we are: from a kubeconfig file or from the
//! service account of an in-cluster pod. Pure parsing; files named by a kubeconfig are read
//! by [`load_kubeconfig`].

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::KubeError;

/// Everything needed to call the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `https://host:port`.
    pub server: String,
    /// PEM CA certificates to trust (besides the system's).
    pub ca_pem: Option<String>,
    pub insecure_skip_tls_verify: bool,
    pub tls_server_name: Option<String>,
    pub auth: Auth,
    /// Where this came from, for messages.
    pub origin: String,
}

#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer(String),
    Basic {
        username: String,
        password: String,
    },
    /// PEM client certificate and key.
    ClientCert {
        cert_pem: String,
        key_pem: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        f.write_str(match self {
            Auth::None => "None",
            Auth::Bearer(_) => "Bearer(..)",
            Auth::Basic { .. } => "Basic(..)",
            Auth::ClientCert { .. } => "ClientCert(..)",
        })
    }
}

#[derive(Debug, Deserialize)]
struct Kubeconfig {
    #[serde(default, rename = "current-context")]
    current_context: String,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    username: Option<String>,
    password: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
}

/// Reads a file a kubeconfig names (relative paths are relative to the kubeconfig's folder).
pub trait FileReader {
    fn read(&self, path: &Path) -> std::io::Result<String>;
}

/// Reads from the filesystem.
pub struct Fs;

impl FileReader for Fs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

fn bad(origin: &str, what: impl Into<String>) -> KubeError {
    KubeError::Config {
        origin: origin.to_owned(),
        reason: what.into(),
    }
}

/// Parses a kubeconfig's text: its current context's cluster and user.
pub fn parse_kubeconfig(
    text: &str,
    origin: &str,
    dir: &Path,
    files: &dyn FileReader,
) -> Result<ApiConfig, KubeError> {
    let kc: Kubeconfig =
        serde_yaml_ng::from_str(text).map_err(|e| bad(origin, format!("not a kubeconfig: {e}")))?;
    let ctx_name = if kc.current_context.is_empty() {
        match &kc.contexts[..] {
            [only] => only.name.clone(),
            _ => return Err(bad(origin, "current-context is not set")),
        }
    } else {
        kc.current_context.clone()
    };
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.item.as_ref())
        .ok_or_else(|| bad(origin, format!("context {ctx_name:?} is not defined")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.item.as_ref())
        .ok_or_else(|| bad(origin, format!("cluster {:?} is not defined", ctx.cluster)))?;
    let default_user = User::default();
    let user = if ctx.user.is_empty() {
        &default_user
    } else {
        kc.users
            .iter()
            .find(|u| u.name == ctx.user)
            .and_then(|u| u.item.as_ref())
            .ok_or_else(|| bad(origin, format!("user {:?} is not defined", ctx.user)))?
    };
    if cluster.server.is_empty() {
        return Err(bad(
            origin,
            format!("cluster {:?} has no server", ctx.cluster),
        ));
    }
    let url = url::Url::parse(&cluster.server).map_err(|e| {
        bad(
            origin,
            format!("cluster {:?} server {:?}: {e}", ctx.cluster, cluster.server),
        )
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(
            origin,
            format!(
                "cluster {:?} server {:?} is not http(s)",
                ctx.cluster, cluster.server
            ),
        ));
    }
    let read = |field: &str, path: &str| -> Result<String, KubeError> {
        let p = dir.join(path);
        files
            .read(&p)
            .map_err(|e| bad(origin, format!("{field} {}: {e}", p.display())))
    };
    let data = |field: &str, b64: &str| -> Result<String, KubeError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| bad(origin, format!("{field} is not base64: {e}")))?;
        String::from_utf8(bytes).map_err(|_| bad(origin, format!("{field} is not PEM text")))
    };
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) => Some(data("certificate-authority-data", d)?),
        (None, Some(p)) => Some(read("certificate-authority", p)?),
        (None, None) => None,
    };
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(bad(
            origin,
            format!(
                "user {:?} uses an exec or auth-provider plugin, which virtlet does not run; give it a token, token file or client certificate",
                ctx.user
            ),
        ));
    }
    let cert = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) => Some(data("client-certificate-data", d)?),
        (None, Some(p)) => Some(read("client-certificate", p)?),
        (None, None) => None,
    };
    let key = match (&user.client_key_data, &user.client_key) {
        (Some(d), _) => Some(data("client-key-data", d)?),
        (None, Some(p)) => Some(read("client-key", p)?),
        (None, None) => None,
    };
    let auth = match (cert, key, &user.token, &user.token_file, &user.username) {
        (Some(cert_pem), Some(key_pem), ..) => Auth::ClientCert { cert_pem, key_pem },
        (Some(_), None, ..) | (None, Some(_), ..) => {
            return Err(bad(
                origin,
                format!(
                    "user {:?} has a client certificate without its key, or a key without its certificate",
                    ctx.user
                ),
            ));
        }
        (None, None, Some(t), ..) => Auth::Bearer(t.trim().to_owned()),
        (None, None, None, Some(p), _) => Auth::Bearer(read("tokenFile", p)?.trim().to_owned()),
        (None, None, None, None, Some(u)) => Auth::Basic {
            username: u.clone(),
            password: user.password.clone().unwrap_or_default(),
        },
        _ => Auth::None,
    };
    Ok(ApiConfig {
        server: cluster.server.trim_end_matches('/').to_owned(),
        ca_pem,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        tls_server_name: cluster.tls_server_name.clone(),
        auth,
        origin: origin.to_owned(),
    })
}

/// Reads and parses the kubeconfig at `path`.
pub fn load_kubeconfig(path: &Path) -> Result<ApiConfig, KubeError> {
    let origin = format!("kubeconfig {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(&origin, e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse_kubeconfig(&text, &origin, dir, &Fs)
}

/// The service account directory of an in-cluster pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The in-cluster settings when virtlet runs in a pod: `KUBERNETES_SERVICE_HOST` /
/// `_PORT` and the service account's token and CA. `None` when not in a cluster, or when no
/// token is mounted.
pub fn in_cluster(
    host: Option<&str>,
    port: Option<&str>,
    sa_dir: &Path,
    files: &dyn FileReader,
) -> Result<Option<ApiConfig>, KubeError> {
    let (Some(host), Some(port)) = (host, port) else {
        return Ok(None);
    };
    let origin = "in-cluster service account";
    // A pod without a mounted service account token has no API access, like a host.
    let token = match files.read(&sa_dir.join("token")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(origin, format!("token in {}: {e}", sa_dir.display()))),
    };
    let ca_pem = files.read(&sa_dir.join("ca.crt")).ok();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(Some(ApiConfig {
        server: format!("https://{host}:{port}"),
        ca_pem,
        insecure_skip_tls_verify: false,
        tls_server_name: None,
        auth: Auth::Bearer(token.trim().to_owned()),
        origin: origin.to_owned(),
    }))
}

/// Where the API settings come from, in order: `--kubeconfig`, then the in-cluster service
/// account. `None`: no API access (pods that name a ConfigMap or Secret are refused).
pub fn discover(kubeconfig: Option<&Path>) -> Result<Option<ApiConfig>, KubeError> {
    if let Some(path) = kubeconfig {
        return load_kubeconfig(path).map(Some);
    }
    in_cluster(
        std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
        std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
        &PathBuf::from(SERVICE_ACCOUNT_DIR),
        &Fs,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Files(HashMap<PathBuf, String>);

    impl FileReader for Files {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    fn files(pairs: &[(&str, &str)]) -> Files {
        Files(
            pairs
                .iter()
                .map(|(p, c)| (PathBuf::from(p), c.to_string()))
                .collect(),
        )
    }

    fn parse(text: &str, f: &Files) -> Result<ApiConfig, KubeError> {
        parse_kubeconfig(text, "kubeconfig /etc/k/config", Path::new("/etc/k"), f)
    }

    const KC: &str = r#"
apiVersion: v1
kind: Config
current-context: node
clusters:
- name: other
  cluster: {server: "https://other:6443"}
- name: local
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority-data: Q0EtUEVN
users:
- name: kubelet
  user:
    client-certificate: pki/node.crt
    client-key-data: S0VZ
- name: robot
  user: {token: " abc \n"}
contexts:
- name: node
  context: {cluster: local, user: kubelet}
- name: bot
  context: {cluster: local, user: robot}
"#;

    #[test]
    fn the_current_context_picks_cluster_and_user() {
        let c = parse(KC, &files(&[("/etc/k/pki/node.crt", "CERT")])).unwrap();
        assert_eq!(c.server, "https://10.0.0.1:6443");
        assert_eq!(c.ca_pem.as_deref(), Some("CA-PEM"));
        assert_eq!(
            c.auth,
            Auth::ClientCert {
                cert_pem: "CERT".into(),
                key_pem: "KEY".into()
            }
        );
        let c = parse(
            &KC.replace("current-context: node", "current-context: bot"),
            &files(&[]),
        )
        .unwrap();
        assert_eq!(c.auth, Auth::Bearer("abc".into()));
        assert_eq!(
            format!("{:?}", c.auth),
            "Bearer(..)",
            "tokens stay out of logs"
        );
    }

    #[test]
    fn token_files_and_in_cluster_settings() {
        let kc = KC
            .replace("current-context: node", "current-context: bot")
            .replace(r#"{token: " abc \n"}"#, "{tokenFile: /var/t}");
        let c = parse(&kc, &files(&[("/var/t", "from-file\n")])).unwrap();
        assert_eq!(c.auth, Auth::Bearer("from-file".into()));

        let sa = files(&[("/sa/token", "sa-token\n"), ("/sa/ca.crt", "SA-CA")]);
        assert_eq!(
            in_cluster(None, Some("443"), Path::new("/sa"), &sa).unwrap(),
            None
        );
        let c = in_cluster(Some("fd00::1"), Some("443"), Path::new("/sa"), &sa)
            .unwrap()
            .unwrap();
        assert_eq!(c.server, "https://[fd00::1]:443");
        assert_eq!(c.auth, Auth::Bearer("sa-token".into()));
        assert_eq!(c.ca_pem.as_deref(), Some("SA-CA"));
        assert_eq!(
            in_cluster(Some("h"), Some("1"), Path::new("/none"), &sa).unwrap(),
            None,
            "no mounted token: no API access"
        );
    }

    #[test]
    fn every_bad_kubeconfig_names_the_problem() {
        let none = files(&[]);
        for (text, needle) in [
            ("clusters: [unclosed", "not a kubeconfig"),
            ("clusters: []", "current-context is not set"),
            (
                &KC.replace("current-context: node", "current-context: gone") as &str,
                "context \"gone\" is not defined",
            ),
            (
                &KC.replace(
                    "cluster: local, user: kubelet",
                    "cluster: nope, user: kubelet",
                ),
                "cluster \"nope\" is not defined",
            ),
            (
                &KC.replace(
                    "cluster: local, user: kubelet",
                    "cluster: local, user: nobody",
                ),
                "user \"nobody\" is not defined",
            ),
            (
                &KC.replace("https://10.0.0.1:6443/", "ftp://x"),
                "is not http(s)",
            ),
            (
                &KC.replace("Q0EtUEVN", "\"not base64!\""),
                "certificate-authority-data is not base64",
            ),
            (KC, "client-certificate /etc/k/pki/node.crt"),
            (
                &KC.replace("client-key-data: S0VZ", "exec: {command: aws}"),
                "exec or auth-provider plugin",
            ),
        ] {
            let err = parse(text, &none).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
            assert!(err.contains("kubeconfig /etc/k/config"), "{err}");
        }
    }
}
