//! Finding and reading the node's CNI network config: the first file of the config dir, by
//! name, among `*.conflist`, `*.conf` and `*.json` that reads as a usable config (the way
//! libcni and the kubelet's runtimes pick it). A single-plugin `.conf` becomes a one-plugin
//! list, so the rest of virtlet sees one shape.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::NetError;

/// CNI spec versions virtlet speaks (the result formats it reads).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// A network config list, as stored with a sandbox (so DEL uses what ADD used).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
    /// The list in conflist form.
    pub raw: Value,
}

impl NetworkConfig {
    /// Reads a config from its conflist (or single-plugin conf) JSON.
    pub fn parse(bytes: &[u8], is_list: bool) -> Result<NetworkConfig, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let list = if is_list || v.get("plugins").is_some() {
            v
        } else {
            let mut plugin = v
                .as_object()
                .cloned()
                .ok_or_else(|| "the config is not a JSON object".to_owned())?;
            let name = plugin.remove("name").unwrap_or(Value::Null);
            let version = plugin.remove("cniVersion").unwrap_or(Value::Null);
            serde_json::json!({"cniVersion": version, "name": name, "plugins": [plugin]})
        };
        NetworkConfig::from_list(list)
    }

    /// Reads a config from the conflist form (what [`NetworkConfig::raw`] holds).
    pub fn from_list(list: Value) -> Result<NetworkConfig, String> {
        let obj = list
            .as_object()
            .ok_or_else(|| "the config is not a JSON object".to_owned())?;
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err("\"name\" is missing or not a string".to_owned()),
        };
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => "0.1.0".to_owned(),
            Some(other) => return Err(format!("\"cniVersion\" {other} is not a string")),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(format!(
                "cniVersion {cni_version:?} is not supported (virtlet speaks {})",
                SUPPORTED_VERSIONS.join(", ")
            ));
        }
        let plugins = match obj.get("plugins") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => return Err("\"plugins\" is empty".to_owned()),
            _ => return Err("\"plugins\" is missing or not a list".to_owned()),
        };
        let mut out = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let p = p
                .as_object()
                .ok_or_else(|| format!("plugins[{i}] is not a JSON object"))?;
            match p.get("type") {
                Some(Value::String(t)) if valid_plugin_name(t) => {}
                Some(Value::String(t)) => {
                    return Err(format!("plugins[{i}].type {t:?} is not a plugin file name"));
                }
                _ => return Err(format!("plugins[{i}].type is missing or not a string")),
            }
            out.push(p.clone());
        }
        if out.len() > 1 && version_lt(&cni_version, "0.3.0") {
            return Err(format!(
                "cniVersion {cni_version} has no plugin chaining, yet {} plugins are listed",
                out.len()
            ));
        }
        Ok(NetworkConfig {
            name,
            cni_version,
            plugins: out,
            raw: list,
        })
    }

    /// The plugin types, in order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }
}

fn valid_plugin_name(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && t != "." && t != ".."
}

/// `a < b` for dotted versions.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

/// The config files of `dir`, sorted by name.
pub fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The first usable config of `dir`. Files that don't read are skipped; when none reads,
/// the error names each file and why.
pub fn load_first(dir: &Path) -> Result<(PathBuf, NetworkConfig), NetError> {
    let files = match config_files(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(NetError::BadConfig {
                path: dir.to_owned(),
                reason: format!("cannot list the directory: {e}"),
            });
        }
    };
    let mut problems = Vec::new();
    for path in files {
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| NetworkConfig::parse(&b, is_list));
        match parsed {
            Ok(c) => return Ok((path, c)),
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "skipping CNI config");
                problems.push(format!("{}: {reason}", path.display()));
            }
        }
    }
    Err(NetError::NoConfig {
        dir: dir.to_owned(),
        problems: if problems.is_empty() {
            String::new()
        } else {
            format!("; unusable: {}", problems.join("; "))
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_conf_becomes_a_one_plugin_list() {
        let c = NetworkConfig::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"bridge","bridge":"cni0"}"#,
            false,
        )
        .unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.plugin_types(), vec!["bridge"]);
        assert_eq!(c.plugins[0].get("bridge").unwrap(), "cni0");
        assert!(c.plugins[0].get("name").is_none());
        assert_eq!(NetworkConfig::from_list(c.raw.clone()).unwrap(), c);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "\"name\"",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}"#,
                "9.9.9",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"a":1}]}"#,
                "plugins[0].type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "../x",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"a"},{"type":"b"}]}"#,
                "chaining",
            ),
        ];
        for (json, needle) in cases {
            let e = NetworkConfig::parse(json.as_bytes(), true).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn first_usable_file_by_name_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("00-broken.conflist"), "{").unwrap();
        std::fs::write(d.path().join("README"), "x").unwrap();
        std::fs::write(
            d.path().join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"loopback"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let (path, c) = load_first(d.path()).unwrap();
        assert!(path.ends_with("10-a.conflist"));
        assert_eq!(c.plugin_types(), vec!["bridge", "portmap"]);
    }

    #[test]
    fn no_usable_file_is_a_precondition_error() {
        let d = tempfile::tempdir().unwrap();
        let e = load_first(d.path()).unwrap_err();
        assert_eq!(e.kind(), virtlet_core::ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("no CNI network config"), "{e}");
        std::fs::write(d.path().join("a.conf"), "[]").unwrap();
        let e = load_first(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("a.conf: the config is not a JSON object"),
            "{e}"
        );
        let e = load_first(&d.path().join("absent")).unwrap_err();
        assert!(e.to_string().contains("no CNI network config"), "{e}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_lt("0.2.0", "0.3.0"));
        assert!(version_lt("0.3.1", "0.4.0"));
        assert!(!version_lt("1.0.0", "0.4.0"));
        assert!(version_lt("0.10.0", "1.0.0"));
    }
}
