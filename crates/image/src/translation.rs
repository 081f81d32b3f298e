//! Image name translation configs (Mirantis Virtlet compatible).
//!
//! Every regular file in the configs directory (names starting with `.` are skipped, so a
//! mounted ConfigMap's `..data` links do no harm) is a YAML or JSON document:
//!
//! ```yaml
//! prefix: ""                     # optional: rules apply to names "<prefix>/<name>"
//! translations:
//!   - name: cirros               # exact name ...
//!     url: https://example.com/cirros.img
//!   - regexp: 'centos/(\d+)'     # ... or a regexp (exact names win); $1 expands in url
//!     url: https://example.com/centos-$1.qcow2
//!     transport: mine
//! transports:
//!   mine:
//!     timeout: 30000             # milliseconds for the whole download; <= 0: none
//!     maxRedirects: 2
//!     proxy: http://proxy:3128
//!     tls:
//!       certificates:
//!         - cert: "-----BEGIN CERTIFICATE-----..."   # alone: a CA added to the trust roots
//!         - cert: "..."                               # with key: a client certificate
//!           key: "-----BEGIN PRIVATE KEY-----..."
//!       serverName: images.internal
//!       insecure: false
//! ```
//!
//! The directory is read again on every pull. A file that does not parse or is inconsistent is
//! skipped as a whole and reported; the other files still apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

/// Redirects followed when a transport does not say (the download fails on request #10).
pub const DEFAULT_MAX_REDIRECTS: usize = 9;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TranslationConfig {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub translations: Vec<TranslationRule>,
    #[serde(default)]
    pub transports: BTreeMap<String, TransportProfile>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TranslationRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub regexp: Option<String>,
    pub url: String,
    #[serde(default)]
    pub transport: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransportProfile {
    #[serde(default)]
    pub max_redirects: Option<i64>,
    #[serde(default)]
    pub tls: Option<TlsProfile>,
    /// Milliseconds.
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsProfile {
    #[serde(default)]
    pub certificates: Vec<TlsCertificate>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub cert: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// How to download from one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    /// The profile's name, for messages.
    pub name: Option<String>,
    /// Limit for the whole download.
    pub timeout: Option<Duration>,
    pub max_redirects: usize,
    pub proxy: Option<String>,
    pub tls: Option<TlsProfile>,
}

/// Where an image name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A URL, or a location still without its protocol.
    pub url: String,
    pub transport: Transport,
    /// The config file whose rule matched, if any.
    pub config: Option<PathBuf>,
}

/// A config file that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image translation config {} was skipped: {}",
            self.path.display(),
            self.message
        )
    }
}

struct LoadedConfig {
    path: PathBuf,
    config: TranslationConfig,
    regexps: Vec<Option<Regex>>,
}

/// The translation configs of one directory, as read at one moment.
#[derive(Default)]
pub struct Translations {
    configs: Vec<LoadedConfig>,
    /// Files that were skipped.
    pub problems: Vec<ConfigProblem>,
}

impl Translations {
    /// Reads every config in `dir`, sorted by file name. A missing directory means no configs.
    pub fn load_dir(dir: &Path) -> Translations {
        let mut out = Translations::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(e) => {
                out.problems.push(ConfigProblem {
                    path: dir.to_owned(),
                    message: format!("cannot read the directory: {e}"),
                });
                return out;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read it: {e}"))
                .and_then(|text| parse_config(&text));
            match parsed {
                Ok((config, regexps)) => out.configs.push(LoadedConfig {
                    path,
                    config,
                    regexps,
                }),
                Err(message) => out.problems.push(ConfigProblem { path, message }),
            }
        }
        out
    }

    /// Translates a name (without the `virtlet.cloud/` prefix). Exact names in any config beat
    /// regexps; within each kind, configs are tried in file-name order. No match: the name
    /// itself is the location, with default transport settings.
    pub fn translate(&self, name: &str) -> Endpoint {
        self.find(name).unwrap_or_else(|| Endpoint {
            url: name.to_owned(),
            transport: Transport {
                max_redirects: DEFAULT_MAX_REDIRECTS,
                ..Transport::default()
            },
            config: None,
        })
    }

    /// Whether a config names `name` (exactly or by a regexp).
    pub fn matches(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find(&self, name: &str) -> Option<Endpoint> {
        let unprefixed = |c: &LoadedConfig| -> Option<String> {
            if c.config.prefix.is_empty() {
                Some(name.to_owned())
            } else {
                name.strip_prefix(&format!("{}/", c.config.prefix))
                    .map(str::to_owned)
            }
        };
        for c in &self.configs {
            let Some(local) = unprefixed(c) else { continue };
            if let Some(rule) = c
                .config
                .translations
                .iter()
                .find(|r| r.name.as_deref() == Some(local.as_str()))
            {
                return Some(endpoint(c, rule, rule.url.clone()));
            }
        }
        for c in &self.configs {
            let Some(local) = unprefixed(c) else { continue };
            for (rule, re) in c.config.translations.iter().zip(&c.regexps) {
                let Some(re) = re else { continue };
                if let Some(caps) = re.captures(&local) {
                    let mut url = String::new();
                    caps.expand(&rule.url, &mut url);
                    return Some(endpoint(c, rule, url));
                }
            }
        }
        None
    }
}

fn endpoint(c: &LoadedConfig, rule: &TranslationRule, url: String) -> Endpoint {
    let profile = rule
        .transport
        .as_ref()
        .and_then(|name| c.config.transports.get(name).map(|p| (name, p)));
    let transport = match profile {
        None => Transport {
            max_redirects: DEFAULT_MAX_REDIRECTS,
            ..Transport::default()
        },
        Some((name, p)) => Transport {
            name: Some(name.clone()),
            timeout: p
                .timeout
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(ms.unsigned_abs())),
            max_redirects: p
                .max_redirects
                .map_or(DEFAULT_MAX_REDIRECTS, |n| n.max(0).unsigned_abs() as usize),
            proxy: p.proxy.clone().filter(|s| !s.is_empty()),
            tls: p.tls.clone(),
        },
    };
    Endpoint {
        url,
        transport,
        config: Some(c.path.clone()),
    }
}

/// Parses and checks one config file's text (pure).
pub fn parse_config(text: &str) -> Result<(TranslationConfig, Vec<Option<Regex>>), String> {
    let config: TranslationConfig = if text.trim().is_empty() {
        return Err("the file is empty".into());
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("it does not parse: {e}"))?
    };
    let mut regexps = Vec::with_capacity(config.translations.len());
    for (i, rule) in config.translations.iter().enumerate() {
        match (&rule.name, &rule.regexp) {
            (Some(_), Some(_)) => {
                return Err(format!("translations[{i}] has both name and regexp"));
            }
            (None, None) => return Err(format!("translations[{i}] has neither name nor regexp")),
            _ => {}
        }
        if rule.url.is_empty() {
            return Err(format!("translations[{i}] has an empty url"));
        }
        if let Some(t) = &rule.transport
            && !config.transports.contains_key(t)
        {
            return Err(format!(
                "translations[{i}] names transport {t:?}, which transports does not define"
            ));
        }
        regexps.push(match &rule.regexp {
            Some(re) => Some(
                Regex::new(re)
                    .map_err(|e| format!("translations[{i}] regexp {re:?} is invalid: {e}"))?,
            ),
            None => None,
        });
    }
    for (name, profile) in &config.transports {
        if let Some(tls) = &profile.tls {
            for (i, c) in tls.certificates.iter().enumerate() {
                if !c.cert.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "transports.{name}.tls.certificates[{i}].cert is not a PEM certificate"
                    ));
                }
                if let Some(key) = &c.key
                    && !key.contains("PRIVATE KEY-----")
                {
                    return Err(format!(
                        "transports.{name}.tls.certificates[{i}].key is not a PEM private key"
                    ));
                }
            }
        }
    }
    Ok((config, regexps))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn exact_names_beat_regexps_across_files() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            "translations:\n  - regexp: 'cirros(.*)'\n    url: http://re/cirros$1\n",
        );
        write(
            dir.path(),
            "b.yaml",
            "translations:\n  - name: cirros\n    url: http://exact/cirros.img\n",
        );
        let t = Translations::load_dir(dir.path());
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let e = t.translate("cirros");
        assert_eq!(e.url, "http://exact/cirros.img");
        assert_eq!(e.config, Some(dir.path().join("b.yaml")));
        assert_eq!(t.translate("cirros-0.4").url, "http://re/cirros-0.4");
        let plain = t.translate("example.com/x.img");
        assert_eq!(plain.url, "example.com/x.img");
        assert_eq!(plain.config, None);
        assert_eq!(plain.transport.max_redirects, DEFAULT_MAX_REDIRECTS);
    }

    #[test]
    fn regexps_expand_groups() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "c.yaml",
            "translations:\n  - regexp: 'centos/(\\d+)-(\\d+)'\n    url: 'https://c/centos/$1/img-$1-${2}.qcow2'\n",
        );
        let t = Translations::load_dir(dir.path());
        assert_eq!(
            t.translate("centos/7-1802").url,
            "https://c/centos/7/img-7-1802.qcow2"
        );
    }

    #[test]
    fn prefixes_scope_rules() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p.yaml",
            "prefix: mine\ntranslations:\n  - name: cirros\n    url: http://mine/cirros\n",
        );
        let t = Translations::load_dir(dir.path());
        assert_eq!(t.translate("mine/cirros").url, "http://mine/cirros");
        assert_eq!(t.translate("cirros").url, "cirros");
    }

    #[test]
    fn transports_apply() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t.yaml",
            r#"
translations:
  - name: img
    url: https://host/img
    transport: slow
transports:
  slow:
    timeout: 1500
    maxRedirects: 2
    proxy: http://proxy:3128
    tls:
      serverName: images.internal
      insecure: true
"#,
        );
        let t = Translations::load_dir(dir.path());
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let tr = t.translate("img").transport;
        assert_eq!(tr.name.as_deref(), Some("slow"));
        assert_eq!(tr.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(tr.max_redirects, 2);
        assert_eq!(tr.proxy.as_deref(), Some("http://proxy:3128"));
        let tls = tr.tls.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("images.internal"));
        assert!(tls.insecure);
    }

    #[test]
    fn bad_files_are_skipped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bad.yaml", "translations: [\n  - name: x\n");
        write(
            dir.path(),
            "badre.yaml",
            "translations:\n  - regexp: '('\n    url: u\n",
        );
        write(
            dir.path(),
            "notransport.yaml",
            "translations:\n  - name: y\n    url: u\n    transport: nope\n",
        );
        write(dir.path(), "unknown.yaml", "translation:\n  - name: z\n");
        write(
            dir.path(),
            "good.yaml",
            "translations:\n  - name: ok\n    url: http://ok\n",
        );
        write(dir.path(), ".hidden", "garbage: [");
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        let t = Translations::load_dir(dir.path());
        let bad: Vec<_> = t
            .problems
            .iter()
            .map(|p| p.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            bad,
            ["bad.yaml", "badre.yaml", "notransport.yaml", "unknown.yaml"]
        );
        assert!(t.problems[0].to_string().contains("bad.yaml"));
        assert!(
            t.problems[1].message.contains("regexp"),
            "{}",
            t.problems[1]
        );
        assert!(t.problems[2].message.contains("nope"));
        assert_eq!(t.translate("ok").url, "http://ok");
    }

    #[test]
    fn missing_dir_is_empty() {
        let t = Translations::load_dir(Path::new("/nonexistent/virtlet/images"));
        assert!(t.problems.is_empty());
        assert_eq!(t.translate("x").url, "x");
    }
}
