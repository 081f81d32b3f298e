//! The cloud-init annotations of a pod (Mirantis Virtlet's keys), parsed once. Bad values are
//! errors naming the annotation, the value and, for YAML, where it broke.

use std::collections::HashMap;

use serde_yaml_ng::{Mapping, Value};

use crate::generate::CloudInitError;

pub const META_DATA: &str = "VirtletCloudInitMetaData";
pub const USER_DATA: &str = "VirtletCloudInitUserData";
pub const USER_DATA_OVERWRITE: &str = "VirtletCloudInitUserDataOverwrite";
pub const USER_DATA_SCRIPT: &str = "VirtletCloudInitUserDataScript";
pub const USER_DATA_SOURCE: &str = "VirtletCloudInitUserDataSource";
pub const USER_DATA_SOURCE_KEY: &str = "VirtletCloudInitUserDataSourceKey";
pub const USER_DATA_SOURCE_ENCODING: &str = "VirtletCloudInitUserDataSourceEncoding";
pub const SSH_KEYS: &str = "VirtletSSHKeys";
pub const SSH_KEY_SOURCE: &str = "VirtletSSHKeySource";
pub const FILES_FROM_DATA_SOURCE: &str = "VirtletFilesFromDataSource";

/// The token in a user-data script replaced by the volume mount script.
pub const MOUNT_SCRIPT_TOKEN: &str = "@virtlet-mount-script@";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

/// A ConfigMap or Secret of the pod's namespace, optionally one key of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub kind: SourceKind,
    pub name: String,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Plain,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudInitAnnotations {
    pub meta_data: Option<Mapping>,
    pub user_data: Option<Mapping>,
    pub user_data_overwrite: bool,
    pub user_data_script: Option<String>,
    pub user_data_source: Option<SourceRef>,
    pub user_data_source_key: Option<String>,
    pub user_data_source_encoding: Encoding,
    pub ssh_keys: Vec<String>,
    pub ssh_key_source: Option<SourceRef>,
    pub files_from_data_source: Option<SourceRef>,
}

fn bad(annotation: &'static str, value: &str, reason: impl Into<String>) -> CloudInitError {
    CloudInitError::Annotation {
        annotation,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn yaml_map(annotation: &'static str, value: &str) -> Result<Mapping, CloudInitError> {
    let parsed: Value = serde_yaml_ng::from_str(value).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        bad(annotation, value, format!("it is not valid YAML{at}: {e}"))
    })?;
    match parsed {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err(bad(annotation, value, "it must be a YAML map")),
    }
}

fn source(
    annotation: &'static str,
    value: &str,
    with_key: bool,
) -> Result<SourceRef, CloudInitError> {
    let allowed = if with_key {
        "must be configmap/<name>[/<key>] or secret/<name>[/<key>]"
    } else {
        "must be configmap/<name> or secret/<name>"
    };
    let mut parts = value.trim().splitn(3, '/');
    let kind = match parts.next() {
        Some("configmap") => SourceKind::ConfigMap,
        Some("secret") => SourceKind::Secret,
        _ => {
            return Err(bad(
                annotation,
                value,
                format!("unknown source kind: {allowed}"),
            ));
        }
    };
    let name = parts
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad(annotation, value, allowed))?;
    let key = parts.next().map(str::to_owned);
    if key.is_some() && !with_key {
        return Err(bad(annotation, value, allowed));
    }
    Ok(SourceRef {
        kind,
        name: name.to_owned(),
        key,
    })
}

/// Splits newline-separated keys: trimmed, blank lines dropped.
pub fn split_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl CloudInitAnnotations {
    pub fn parse(
        annotations: &HashMap<String, String>,
    ) -> Result<CloudInitAnnotations, CloudInitError> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let mut out = CloudInitAnnotations::default();
        if let Some(v) = get(META_DATA) {
            out.meta_data = Some(yaml_map(META_DATA, v)?);
        }
        if let Some(v) = get(USER_DATA) {
            out.user_data = Some(yaml_map(USER_DATA, v)?);
        }
        out.user_data_overwrite = get(USER_DATA_OVERWRITE) == Some("true");
        out.user_data_script = get(USER_DATA_SCRIPT).map(str::to_owned);
        if let Some(v) = get(USER_DATA_SOURCE) {
            out.user_data_source = Some(source(USER_DATA_SOURCE, v, false)?);
        }
        out.user_data_source_key = get(USER_DATA_SOURCE_KEY)
            .map(str::to_owned)
            .filter(|k| !k.is_empty());
        if let Some(v) = get(USER_DATA_SOURCE_ENCODING) {
            out.user_data_source_encoding = match v {
                "" | "plain" => Encoding::Plain,
                "base64" => Encoding::Base64,
                _ => return Err(bad(USER_DATA_SOURCE_ENCODING, v, "must be plain or base64")),
            };
        }
        if let Some(v) = get(SSH_KEYS) {
            out.ssh_keys = split_keys(v);
        }
        if let Some(v) = get(SSH_KEY_SOURCE) {
            let mut s = source(SSH_KEY_SOURCE, v, true)?;
            s.key.get_or_insert_with(|| "authorized_keys".to_owned());
            out.ssh_key_source = Some(s);
        }
        if let Some(v) = get(FILES_FROM_DATA_SOURCE) {
            out.files_from_data_source = Some(source(FILES_FROM_DATA_SOURCE, v, false)?);
        }
        Ok(out)
    }

    /// The ConfigMaps and Secrets these annotations read (they need Kubernetes API access).
    pub fn sources(&self) -> Vec<(&'static str, &SourceRef)> {
        let mut out = Vec::new();
        if let Some(s) = &self.user_data_source {
            out.push((USER_DATA_SOURCE, s));
        }
        if let Some(s) = &self.ssh_key_source {
            out.push((SSH_KEY_SOURCE, s));
        }
        if let Some(s) = &self.files_from_data_source {
            out.push((FILES_FROM_DATA_SOURCE, s));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<CloudInitAnnotations, CloudInitError> {
        CloudInitAnnotations::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_everything() {
        let a = parse(&[
            (META_DATA, "{\"instance-id\": \"x\"}"),
            (USER_DATA, "runcmd:\n  - echo hi\n"),
            (USER_DATA_OVERWRITE, "true"),
            (USER_DATA_SOURCE, "configmap/ud"),
            (USER_DATA_SOURCE_KEY, "script"),
            (USER_DATA_SOURCE_ENCODING, "base64"),
            (SSH_KEYS, "  ssh-rsa AAA one\n\n ssh-ed25519 BBB two \n"),
            (SSH_KEY_SOURCE, "secret/keys"),
        ])
        .unwrap();
        assert_eq!(a.meta_data.unwrap().len(), 1);
        assert!(a.user_data.unwrap().contains_key("runcmd"));
        assert!(a.user_data_overwrite);
        assert_eq!(
            a.user_data_source.unwrap(),
            SourceRef {
                kind: SourceKind::ConfigMap,
                name: "ud".into(),
                key: None
            }
        );
        assert_eq!(a.user_data_source_encoding, Encoding::Base64);
        assert_eq!(a.ssh_keys, ["ssh-rsa AAA one", "ssh-ed25519 BBB two"]);
        assert_eq!(
            a.ssh_key_source.unwrap().key.as_deref(),
            Some("authorized_keys")
        );
        let k = parse(&[(SSH_KEY_SOURCE, "configmap/k/mykey")]).unwrap();
        assert_eq!(k.ssh_key_source.unwrap().key.as_deref(), Some("mykey"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&[(USER_DATA, "runcmd: [\n  - oops")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(USER_DATA) && e.contains("not valid YAML at line"),
            "{e}"
        );
        let e = parse(&[(USER_DATA, "- a list")]).unwrap_err().to_string();
        assert!(e.contains("must be a YAML map"), "{e}");
        let e = parse(&[(USER_DATA_SOURCE, "volume/x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown source kind") && e.contains("\"volume/x\""),
            "{e}"
        );
        let e = parse(&[(USER_DATA_SOURCE_ENCODING, "gzip")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain or base64"), "{e}");
        let e = parse(&[(SSH_KEY_SOURCE, "secret/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains(SSH_KEY_SOURCE), "{e}");
    }
}
