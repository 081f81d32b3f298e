//! meta-data, user-data and the seed's file layout, built by pure functions.

use base64::Engine as _;
use serde_json::json;
use serde_yaml_ng::{Mapping, Value};

use crate::MAX_USER_DATA;
use crate::annotations::{CloudInitAnnotations, MOUNT_SCRIPT_TOKEN, USER_DATA_SOURCE};
use crate::merge::merge;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudInitError {
    #[error("annotation {annotation}={value:?} is invalid: {reason}")]
    Annotation {
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error("{what} is not valid {expected}: {reason}")]
    Source {
        what: String,
        expected: &'static str,
        reason: String,
    },
    #[error(
        "user-data script source not found under key {key:?} (VirtletCloudInitUserDataSourceKey) in {source_name}"
    )]
    SourceKey { key: String, source_name: String },
    #[error("the user-data would be {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("mount {container_path:?}: {reason}")]
    Mount {
        container_path: String,
        reason: String,
    },
    #[error("cannot write the cloud-init seed {path}: {reason}")]
    Seed { path: String, reason: String },
}

/// A file cloud-init writes into the guest (`write_files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFile {
    pub path: String,
    pub content: Vec<u8>,
    pub permissions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeedKind {
    /// Label `cidata`: `meta-data`, `user-data`, `network-config`.
    #[default]
    NoCloud,
    /// Label `config-2`: `openstack/latest/{meta_data.json,user_data,network_data.json}`.
    ConfigDrive,
}

impl SeedKind {
    pub fn label(self) -> &'static str {
        match self {
            SeedKind::NoCloud => "cidata",
            SeedKind::ConfigDrive => "config-2",
        }
    }
}

/// What cloud-init data is made from. Sources (ConfigMaps, Secrets, mounted files) are read by
/// the caller; this stays pure.
#[derive(Debug, Clone, Default)]
pub struct Input<'a> {
    pub pod_name: &'a str,
    pub namespace: &'a str,
    /// The pod's hostname (CRI `hostname`: the pod spec's `hostname`, else its name); empty:
    /// the pod's name.
    pub hostname: &'a str,
    /// The VM's UUID (ConfigDrive's `uuid`).
    pub uuid: &'a str,
    pub annotations: CloudInitAnnotations,
    /// user-data from `VirtletCloudInitUserDataSource`: each key of the source, by name.
    pub source_entries: Vec<(String, Vec<u8>)>,
    /// Keys from `VirtletSSHKeySource`.
    pub source_ssh_keys: Vec<String>,
    /// Files from Secret/ConfigMap volumes and single-file mounts.
    pub files: Vec<WriteFile>,
    /// The container's environment.
    pub env: Vec<(String, String)>,
    /// The container's command followed by its args: run at first boot.
    pub command: Vec<String>,
    /// The pod's sysctls (checked with [`crate::sysctl::check`]): set at every boot.
    pub sysctls: Vec<(String, String)>,
    /// Volume disks: linked, formatted when fresh and mounted ([`crate::volumes`]).
    pub volumes: Vec<crate::GuestVolume>,
    /// Directories over 9p: mounted (and chowned, `chown_9p`).
    pub filesystems: Vec<crate::volumes::GuestFilesystem>,
    pub chown_9p: bool,
    /// The pod's DNS settings, when it has resolver options (`ndots:5`, `rotate`, ...): no
    /// DHCP option or network-config field carries those, so cloud-init's `resolv_conf`
    /// does (the servers and search domains reach the guest by DHCP and network-config too).
    pub dns: Option<&'a virtlet_core::netinfo::DnsInfo>,
    /// The network config to hand over (NoCloud v1 / ConfigDrive network_data), when known.
    pub network_config: Option<serde_json::Value>,
    pub kind: SeedKind,
}

/// The generated data, before it is laid out as files.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudInitData {
    pub meta_data: serde_json::Value,
    pub user_data: String,
    pub network_config: Option<serde_json::Value>,
    pub kind: SeedKind,
}

fn decode_source(input: &Input<'_>, key: &str, bytes: &[u8]) -> Result<String, CloudInitError> {
    let what = || format!("key {key:?} of the {USER_DATA_SOURCE} source");
    let raw = match input.annotations.user_data_source_encoding {
        crate::Encoding::Plain => bytes.to_vec(),
        crate::Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(
                bytes
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .copied()
                    .collect::<Vec<u8>>(),
            )
            .map_err(|e| CloudInitError::Source {
                what: what(),
                expected: "base64",
                reason: e.to_string(),
            })?,
    };
    String::from_utf8(raw).map_err(|e| CloudInitError::Source {
        what: what(),
        expected: "UTF-8 text",
        reason: e.to_string(),
    })
}

/// Builds meta-data and user-data (pure).
pub fn generate(input: &Input<'_>) -> Result<CloudInitData, CloudInitError> {
    let a = &input.annotations;

    // SSH keys: the source's first, then the annotation's; Overwrite keeps only the annotation's.
    let mut keys: Vec<String> = if a.user_data_overwrite {
        Vec::new()
    } else {
        input.source_ssh_keys.clone()
    };
    keys.extend(a.ssh_keys.iter().cloned());

    let hostname = if input.hostname.is_empty() {
        input.pod_name
    } else {
        input.hostname
    };
    let mut meta = json!({
        "instance-id": format!("{}.{}", input.pod_name, input.namespace),
        "local-hostname": hostname,
    });
    if !keys.is_empty() {
        meta["public-keys"] = json!(keys);
    }
    if input.kind == SeedKind::ConfigDrive {
        meta["uuid"] = json!(input.uuid);
        meta["hostname"] = json!(hostname);
        meta["public_keys"] = json!(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (i.to_string(), json!(k)))
                .collect::<serde_json::Map<_, _>>()
        );
    }
    if let Some(extra) = &a.meta_data {
        let extra: serde_json::Value =
            serde_json::to_value(extra).map_err(|e| CloudInitError::Annotation {
                annotation: crate::annotations::META_DATA,
                value: String::new(),
                reason: e.to_string(),
            })?;
        if let (Some(m), Some(extra)) = (meta.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
    }

    // The source's user-data: one key as a script, or every key YAML-parsed into a map.
    let mut source_script: Option<String> = None;
    let mut user: Value = Value::Mapping(Mapping::new());
    if let Some(script_key) = &a.user_data_source_key {
        let Some((k, v)) = input.source_entries.iter().find(|(k, _)| k == script_key) else {
            return Err(CloudInitError::SourceKey {
                key: script_key.clone(),
                source_name: a.user_data_source.as_ref().map_or_else(
                    || "no source".to_owned(),
                    |s| match s.kind {
                        crate::annotations::SourceKind::ConfigMap => {
                            format!("configmap/{}", s.name)
                        }
                        crate::annotations::SourceKind::Secret => format!("secret/{}", s.name),
                    },
                ),
            });
        };
        source_script = Some(decode_source(input, k, v)?);
    } else {
        for (k, v) in &input.source_entries {
            let text = decode_source(input, k, v)?;
            let value: Value =
                serde_yaml_ng::from_str(&text).map_err(|e| CloudInitError::Source {
                    what: format!("key {k:?} of the {USER_DATA_SOURCE} source"),
                    expected: "YAML",
                    reason: e.to_string(),
                })?;
            if let Value::Mapping(m) = &mut user {
                m.insert(Value::String(k.clone()), value);
            }
        }
    }
    match (&a.user_data, a.user_data_overwrite) {
        (Some(ud), true) => user = Value::Mapping(ud.clone()),
        (Some(ud), false) => merge(&mut user, Value::Mapping(ud.clone())),
        (None, _) => {}
    }

    let mut write_files: Vec<Value> = input.files.iter().map(write_file).collect();
    if !input.env.is_empty() {
        write_files.push(write_file(&WriteFile {
            path: "/etc/cloud/environment".into(),
            content: environment_file(&input.env).into_bytes(),
            permissions: 0o644,
        }));
    }
    if !write_files.is_empty() {
        merge(
            &mut user,
            Value::Mapping(Mapping::from_iter([(
                Value::String("write_files".into()),
                Value::Sequence(write_files),
            )])),
        );
    }
    let mut runcmd: Vec<Value> = Vec::new();
    if input.chown_9p {
        runcmd.extend(
            crate::volumes::chown_lines(&input.filesystems)
                .into_iter()
                .map(Value::String),
        );
    }
    if !input.command.is_empty() {
        runcmd.push(Value::Sequence(
            input
                .command
                .iter()
                .map(|c| Value::String(c.clone()))
                .collect(),
        ));
    }
    if !runcmd.is_empty() {
        merge(
            &mut user,
            Value::Mapping(Mapping::from_iter([(
                Value::String("runcmd".into()),
                Value::Sequence(runcmd),
            )])),
        );
    }

    if let Some(dns) = input.dns.filter(|d| !d.options.is_empty()) {
        merge(&mut user, resolv_conf(dns));
    }
    let mut mounts = crate::volumes::mounts(&input.volumes);
    mounts.extend(crate::volumes::fs_mounts(&input.filesystems));
    if !mounts.is_empty() {
        let entries = mounts
            .into_iter()
            .map(|m| Value::Sequence(m.into_iter().map(Value::String).collect()))
            .collect();
        merge(
            &mut user,
            Value::Mapping(Mapping::from_iter([(
                Value::String("mounts".into()),
                Value::Sequence(entries),
            )])),
        );
    }
    if !input.sysctls.is_empty() || !input.volumes.is_empty() {
        let cmds = crate::volumes::bootcmd(&input.volumes)
            .into_iter()
            .map(Value::String)
            .chain(
                crate::sysctl::bootcmd(&input.sysctls)
                    .into_iter()
                    .map(|argv| Value::Sequence(argv.into_iter().map(Value::String).collect())),
            )
            .collect();
        merge(
            &mut user,
            Value::Mapping(Mapping::from_iter([(
                Value::String("bootcmd".into()),
                Value::Sequence(cmds),
            )])),
        );
    }

    // A script replaces the whole user-data (the annotation's wins over the source's); a
    // shell script gets the sysctls as its first commands.
    let script = a.user_data_script.clone().or(source_script);
    let user_data = match script {
        Some(s) => {
            let s = s.replace(
                MOUNT_SCRIPT_TOKEN,
                &(mount_script(&input.files)
                    + &crate::volumes::script(&input.volumes, &input.filesystems)),
            );
            match s.split_once('\n') {
                Some((shebang, rest))
                    if !input.sysctls.is_empty()
                        && shebang.starts_with("#!")
                        && shebang.trim_end().ends_with("sh") =>
                {
                    format!(
                        "{shebang}\n{}{rest}",
                        crate::sysctl::shell_lines(&input.sysctls)
                    )
                }
                _ => s,
            }
        }
        None => {
            let body = match &user {
                Value::Mapping(m) if m.is_empty() => String::new(),
                other => serde_yaml_ng::to_string(other).map_err(|e| CloudInitError::Source {
                    what: "the merged user-data".into(),
                    expected: "YAML",
                    reason: e.to_string(),
                })?,
            };
            format!("#cloud-config\n{body}")
        }
    };
    if user_data.len() > MAX_USER_DATA {
        return Err(CloudInitError::TooLarge {
            size: user_data.len(),
            max: MAX_USER_DATA,
        });
    }
    Ok(CloudInitData {
        meta_data: meta,
        user_data,
        network_config: input.network_config.clone(),
        kind: input.kind,
    })
}

/// cloud-init's `manage_resolv_conf` / `resolv_conf` for the pod's DNS settings; an option
/// `name:value` becomes `name: value` (a number when it is one), a bare option `name: true`.
fn resolv_conf(dns: &virtlet_core::netinfo::DnsInfo) -> Value {
    let mut options = Mapping::new();
    for o in &dns.options {
        let (k, v) = match o.split_once(':') {
            Some((k, v)) => (
                k,
                v.parse::<u64>()
                    .map_or_else(|_| Value::String(v.to_owned()), |n| Value::Number(n.into())),
            ),
            None => (o.as_str(), Value::Bool(true)),
        };
        options.insert(Value::String(k.to_owned()), v);
    }
    let strings = |v: Vec<String>| Value::Sequence(v.into_iter().map(Value::String).collect());
    let mut conf = Mapping::new();
    if !dns.servers.is_empty() {
        conf.insert(
            "nameservers".into(),
            strings(dns.servers.iter().map(ToString::to_string).collect()),
        );
    }
    if !dns.search.is_empty() {
        conf.insert("searchdomains".into(), strings(dns.search.clone()));
    }
    conf.insert("options".into(), Value::Mapping(options));
    Value::Mapping(Mapping::from_iter([
        ("manage_resolv_conf".into(), Value::Bool(true)),
        ("resolv_conf".into(), Value::Mapping(conf)),
    ]))
}

fn write_file(f: &WriteFile) -> Value {
    let mut m = Mapping::new();
    m.insert("path".into(), f.path.clone().into());
    m.insert(
        "permissions".into(),
        format!("0{:o}", f.permissions & 0o7777).into(),
    );
    m.insert("encoding".into(), "b64".into());
    m.insert(
        "content".into(),
        base64::engine::general_purpose::STANDARD
            .encode(&f.content)
            .into(),
    );
    Value::Mapping(m)
}

/// `KEY=value` lines, as Mirantis Virtlet wrote them (the format of `/etc/environment`). A
/// value a shell would split or expand (spaces, quotes, `$`, newlines, ...) is single-quoted,
/// so the file is always safe to source; pam_env strips the quotes too.
pub fn environment_file(env: &[(String, String)]) -> String {
    let plain = |v: &str| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:,@%+=-".contains(&b))
    };
    env.iter()
        .map(|(k, v)| {
            if plain(v) {
                format!("{k}={v}\n")
            } else {
                format!("{k}='{}'\n", v.replace('\'', r"'\''"))
            }
        })
        .collect()
}

/// The script `@virtlet-mount-script@` stands for: it recreates the mounted files (for
/// user-data scripts, which get no `write_files`).
fn mount_script(files: &[WriteFile]) -> String {
    let mut s = String::new();
    for f in files {
        let dir = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
        s.push_str(&format!(
            "mkdir -p '{dir}' && printf %s '{}' | base64 -d > '{path}' && chmod {mode:o} '{path}'\n",
            base64::engine::general_purpose::STANDARD.encode(&f.content),
            path = f.path,
            mode = f.permissions & 0o7777,
        ));
    }
    s
}

/// The seed's files, relative to its root.
pub fn seed_files(data: &CloudInitData) -> Vec<(String, Vec<u8>)> {
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    match data.kind {
        SeedKind::NoCloud => {
            let mut out = vec![
                ("meta-data".to_owned(), pretty(&data.meta_data)),
                ("user-data".to_owned(), data.user_data.clone().into_bytes()),
            ];
            if let Some(n) = &data.network_config {
                let yaml = serde_yaml_ng::to_string(n).unwrap_or_default();
                out.push(("network-config".to_owned(), yaml.into_bytes()));
            }
            out
        }
        SeedKind::ConfigDrive => {
            let mut out = vec![
                (
                    "openstack/latest/meta_data.json".to_owned(),
                    pretty(&data.meta_data),
                ),
                (
                    "openstack/latest/user_data".to_owned(),
                    data.user_data.clone().into_bytes(),
                ),
            ];
            if let Some(n) = &data.network_config {
                out.push(("openstack/latest/network_data.json".to_owned(), pretty(n)));
            }
            out
        }
    }
}
