//! Node configuration: flags, environment and defaults (Mirantis Virtlet names). The
//! environment beats flags, flags beat defaults. One table drives parsing, validation messages
//! and `--dump-config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

/// One node setting.
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub is_switch: bool,
}

const fn s(
    flag: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        flag,
        env,
        default,
        help,
        is_switch: false,
    }
}

pub const SETTINGS: &[Setting] = &[
    s(
        "listen",
        "VIRTLET_CRI_SOCKET_PATH",
        "/run/virtlet.sock",
        "unix socket the CRI services listen on",
    ),
    s(
        "database-path",
        "VIRTLET_DATABASE_PATH",
        "/var/lib/virtlet/virtlet.db",
        "metadata database file",
    ),
    s(
        "image-dir",
        "VIRTLET_IMAGE_DIR",
        "/var/lib/virtlet/images",
        "image store directory",
    ),
    s(
        "image-translation-configs-dir",
        "VIRTLET_IMAGE_TRANSLATIONS_DIR",
        "/etc/virtlet/images",
        "image name translation configs, read on every pull",
    ),
    s(
        "image-download-protocol",
        "VIRTLET_DOWNLOAD_PROTOCOL",
        "https",
        "protocol for image locations without one: https or http",
    ),
    s(
        "libvirt-uri",
        "VIRTLET_LIBVIRT_URI",
        "qemu:///system",
        "libvirt connection URI",
    ),
    Setting {
        flag: "disable-kvm",
        env: "VIRTLET_DISABLE_KVM",
        default: "false",
        help: "never use KVM: run VMs under TCG emulation",
        is_switch: true,
    },
    s(
        "cni-bin-dir",
        "VIRTLET_CNI_PLUGIN_DIR",
        "/opt/cni/bin",
        "CNI plugin directories, separated by ':'",
    ),
    s(
        "cni-conf-dir",
        "VIRTLET_CNI_CONFIG_DIR",
        "/etc/cni/net.d",
        "CNI configuration directory",
    ),
    s(
        "stream-port",
        "VIRTLET_STREAM_PORT",
        "10010",
        "port of the streaming server (attach, port-forward); 0 picks a free one",
    ),
    s(
        "stream-address",
        "VIRTLET_STREAM_ADDRESS",
        "127.0.0.1",
        "address the streaming server listens on (the kubelet connects to it)",
    ),
    s(
        "kubeconfig",
        "VIRTLET_KUBECONFIG",
        "",
        "kubeconfig for reading the ConfigMaps and Secrets that pod annotations name; empty: the in-cluster service account when virtlet runs in a pod, else no API access",
    ),
    s(
        "kubelet-root-dir",
        "KUBELET_ROOT_DIR",
        "/var/lib/kubelet/pods",
        "kubelet's pods directory (volumes)",
    ),
    s(
        "raw-devices",
        "VIRTLET_RAW_DEVICES",
        "loop*",
        "comma-separated globs of /dev entries VMs may use as raw disks",
    ),
    s(
        "allowed-host-paths",
        "VIRTLET_ALLOWED_HOST_PATHS",
        "",
        "comma-separated host directories whose subtrees hostPath volumes may share with VMs over 9p (the kubelet's pods directory always may)",
    ),
    s(
        "cpu-model",
        "VIRTLET_CPU_MODEL",
        "",
        "CPU model for VMs: empty (default) or host-model",
    ),
    s(
        "v",
        "VIRTLET_LOGLEVEL",
        "0",
        "log verbosity: 0 info, 1-2 debug, 3+ trace",
    ),
    s(
        "vm-dir",
        "VIRTLET_VM_DIR",
        "/var/lib/virtlet/vms",
        "per-pod VM files (root disks)",
    ),
    s(
        "run-dir",
        "VIRTLET_RUN_DIR",
        "/run/virtlet",
        "runtime files (VM console sockets)",
    ),
    s(
        "netns-dir",
        "VIRTLET_NETNS_DIR",
        "/var/run/netns",
        "where pod network namespaces are mounted",
    ),
    s(
        "vmwrapper",
        "VIRTLET_VMWRAPPER",
        "",
        "the emulator libvirt runs (default: vmwrapper next to the virtlet binary)",
    ),
    s(
        "containerd-socket",
        "VIRTLET_CONTAINERD_SOCKET",
        "",
        "containerd's CRI socket: pods that are not VM pods, and every call about them, go there (empty: virtlet runs VM pods only)",
    ),
    s(
        "runtime-handler",
        "VIRTLET_RUNTIME_HANDLER",
        "virtlet",
        "the RuntimeClass handler of VM pods when containerd shares the node (pods with the kubernetes.io/target-runtime: virtlet.cloud annotation are VM pods too)",
    ),
    Setting {
        flag: "wait-for-lock",
        env: "VIRTLET_WAIT_FOR_LOCK",
        default: "false",
        help: "when another virtlet serves the socket, wait until it exits and take over (a DaemonSet's rolling update) instead of failing",
        is_switch: true,
    },
    s(
        "qemu",
        "VIRTLET_QEMU",
        "/usr/bin/qemu-system-x86_64",
        "the QEMU binary (KVM probe; vmwrapper runs the same default)",
    ),
];

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: PathBuf,
    pub database_path: PathBuf,
    pub image_dir: PathBuf,
    pub image_translations_dir: PathBuf,
    pub download_protocol: String,
    pub libvirt_uri: String,
    pub disable_kvm: bool,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_conf_dir: PathBuf,
    pub stream_port: u16,
    pub stream_address: std::net::IpAddr,
    pub kubelet_root_dir: PathBuf,
    /// Host directories hostPath volumes may come from (9p).
    pub allowed_host_paths: Vec<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub raw_devices: Vec<String>,
    pub cpu_model: String,
    pub log_level: u8,
    pub vm_dir: PathBuf,
    pub run_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub vmwrapper: Option<PathBuf>,
    pub qemu: PathBuf,
    /// containerd's CRI socket, when containerd shares the node.
    pub containerd_socket: Option<PathBuf>,
    /// The RuntimeClass handler of VM pods.
    pub runtime_handler: String,
    /// Wait for another virtlet on the socket to exit instead of failing.
    pub wait_for_lock: bool,
    /// Effective value of every setting, by env name, for `--dump-config`.
    pub values: BTreeMap<&'static str, String>,
}

/// What the command line asked for.
pub enum Invocation {
    Run(Config),
    DumpConfig(Config),
}

/// A setting that cannot be used; the message names the flag, the variable and the value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn command() -> Command {
    let mut cmd = Command::new("virtlet")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Kubernetes CRI runtime that runs pods as QEMU/KVM virtual machines")
        .after_help("Every setting can also be given by its environment variable, which wins over the flag.")
        .arg(
            Arg::new("dump-config")
                .long("dump-config")
                .action(ArgAction::SetTrue)
                .help("print the effective configuration as shell exports and exit"),
        );
    for st in SETTINGS {
        let arg = Arg::new(st.flag).long(st.flag).help(format!(
            "{} [env {}] [default {:?}]",
            st.help, st.env, st.default
        ));
        cmd = cmd.arg(if st.is_switch {
            arg.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
        } else {
            arg.num_args(1)
        });
    }
    cmd
}

/// Parses the command line and environment. Errors name the setting and the value.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, ConfigError> {
    let matches = command()
        .try_get_matches_from(args)
        .map_err(|e| ConfigError(e.to_string()))?;
    let mut values = BTreeMap::new();
    for st in SETTINGS {
        let value = env(st.env)
            .or_else(|| matches.get_one::<String>(st.flag).cloned())
            .unwrap_or_else(|| st.default.to_owned());
        values.insert(st.env, value);
    }
    let config = Config::from_values(values)?;
    Ok(if matches.get_flag("dump-config") {
        Invocation::DumpConfig(config)
    } else {
        Invocation::Run(config)
    })
}

fn setting(env: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.env == env)
        .unwrap_or(&SETTINGS[0])
}

fn bad(env: &str, value: &str, why: &str) -> ConfigError {
    let st = setting(env);
    ConfigError(format!(
        "invalid setting --{} / {}={:?}: {}",
        st.flag, st.env, value, why
    ))
}

impl Config {
    fn from_values(values: BTreeMap<&'static str, String>) -> Result<Config, ConfigError> {
        let get = |env: &str| values.get(env).cloned().unwrap_or_default();
        let abs = |env: &str| -> Result<PathBuf, ConfigError> {
            let v = get(env);
            if v.starts_with('/') {
                Ok(PathBuf::from(v))
            } else {
                Err(bad(env, &v, "must be an absolute path"))
            }
        };
        let protocol = get("VIRTLET_DOWNLOAD_PROTOCOL");
        if protocol != "https" && protocol != "http" {
            return Err(bad(
                "VIRTLET_DOWNLOAD_PROTOCOL",
                &protocol,
                "must be https or http",
            ));
        }
        let libvirt_uri = get("VIRTLET_LIBVIRT_URI");
        if !libvirt_uri.contains(':') || libvirt_uri.chars().any(char::is_whitespace) {
            return Err(bad(
                "VIRTLET_LIBVIRT_URI",
                &libvirt_uri,
                "must be a libvirt URI such as qemu:///system",
            ));
        }
        let switch = |env: &str| -> Result<bool, ConfigError> {
            let v = get(env);
            match v.to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "no" | "off" => Ok(false),
                "1" | "true" | "yes" | "on" => Ok(true),
                _ => Err(bad(env, &v, "must be true or false")),
            }
        };
        let disable_kvm = switch("VIRTLET_DISABLE_KVM")?;
        let runtime_handler = get("VIRTLET_RUNTIME_HANDLER");
        if runtime_handler.is_empty()
            || !runtime_handler
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(bad(
                "VIRTLET_RUNTIME_HANDLER",
                &runtime_handler,
                "must be a RuntimeClass handler name (letters, digits, '-', '.', '_'; not empty: the empty handler is containerd's default)",
            ));
        }
        let cni_bin = get("VIRTLET_CNI_PLUGIN_DIR");
        let cni_bin_dirs: Vec<PathBuf> = cni_bin
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if cni_bin_dirs.is_empty() || cni_bin_dirs.iter().any(|p| !p.is_absolute()) {
            return Err(bad(
                "VIRTLET_CNI_PLUGIN_DIR",
                &cni_bin,
                "must be one or more absolute paths separated by ':'",
            ));
        }
        let port = get("VIRTLET_STREAM_PORT");
        let stream_port = match port.parse::<u16>() {
            Ok(p) => p,
            _ => {
                return Err(bad(
                    "VIRTLET_STREAM_PORT",
                    &port,
                    "must be a port number 0-65535",
                ));
            }
        };
        let address = get("VIRTLET_STREAM_ADDRESS");
        let stream_address: std::net::IpAddr = match address.parse() {
            Ok(a) => a,
            Err(_) => {
                return Err(bad(
                    "VIRTLET_STREAM_ADDRESS",
                    &address,
                    "must be an IP address",
                ));
            }
        };
        let raw = get("VIRTLET_RAW_DEVICES");
        let raw_devices: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if raw_devices.iter().any(|d| d.contains('/')) {
            return Err(bad(
                "VIRTLET_RAW_DEVICES",
                &raw,
                "entries are globs of names under /dev, without '/'",
            ));
        }
        let allowed = get("VIRTLET_ALLOWED_HOST_PATHS");
        let allowed_host_paths: Vec<PathBuf> = allowed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        if allowed_host_paths.iter().any(|p| !p.is_absolute()) {
            return Err(bad(
                "VIRTLET_ALLOWED_HOST_PATHS",
                &allowed,
                "entries must be absolute directories",
            ));
        }
        let cpu_model = get("VIRTLET_CPU_MODEL");
        if !cpu_model.is_empty() && cpu_model != "host-model" {
            return Err(bad(
                "VIRTLET_CPU_MODEL",
                &cpu_model,
                "must be empty or host-model",
            ));
        }
        let level = get("VIRTLET_LOGLEVEL");
        let log_level = match level.parse::<u8>() {
            Ok(l) if l <= 10 => l,
            _ => return Err(bad("VIRTLET_LOGLEVEL", &level, "must be a number 0-10")),
        };
        Ok(Config {
            listen: abs("VIRTLET_CRI_SOCKET_PATH")?,
            database_path: abs("VIRTLET_DATABASE_PATH")?,
            image_dir: abs("VIRTLET_IMAGE_DIR")?,
            image_translations_dir: abs("VIRTLET_IMAGE_TRANSLATIONS_DIR")?,
            download_protocol: protocol,
            libvirt_uri,
            disable_kvm,
            cni_bin_dirs,
            cni_conf_dir: abs("VIRTLET_CNI_CONFIG_DIR")?,
            stream_port,
            stream_address,
            kubelet_root_dir: abs("KUBELET_ROOT_DIR")?,
            allowed_host_paths,
            kubeconfig: match get("VIRTLET_KUBECONFIG") {
                v if v.is_empty() => None,
                _ => Some(abs("VIRTLET_KUBECONFIG")?),
            },
            raw_devices,
            cpu_model,
            log_level,
            vm_dir: abs("VIRTLET_VM_DIR")?,
            run_dir: abs("VIRTLET_RUN_DIR")?,
            netns_dir: abs("VIRTLET_NETNS_DIR")?,
            vmwrapper: match get("VIRTLET_VMWRAPPER") {
                v if v.is_empty() => None,
                _ => Some(abs("VIRTLET_VMWRAPPER")?),
            },
            qemu: abs("VIRTLET_QEMU")?,
            containerd_socket: match get("VIRTLET_CONTAINERD_SOCKET") {
                v if v.is_empty() => None,
                _ => Some(abs("VIRTLET_CONTAINERD_SOCKET")?),
            },
            runtime_handler,
            wait_for_lock: switch("VIRTLET_WAIT_FOR_LOCK")?,
            values,
        })
    }

    /// The configuration as `export NAME='value'` lines, in the settings table's order.
    pub fn dump(&self) -> String {
        SETTINGS
            .iter()
            .map(|st| {
                let v = self.values.get(st.env).map(String::as_str).unwrap_or("");
                format!("export {}={}\n", st.env, shell_quote(v))
            })
            .collect()
    }
}

fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = std::iter::once("virtlet".to_owned()).chain(args.iter().map(|s| s.to_string()));
        match parse(args, |k| env.get(k).cloned())? {
            Invocation::Run(c) | Invocation::DumpConfig(c) => Ok(c),
        }
    }

    #[test]
    fn defaults_match_virtlet() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.listen, PathBuf::from("/run/virtlet.sock"));
        assert_eq!(
            c.database_path,
            PathBuf::from("/var/lib/virtlet/virtlet.db")
        );
        assert_eq!(c.image_dir, PathBuf::from("/var/lib/virtlet/images"));
        assert_eq!(
            c.image_translations_dir,
            PathBuf::from("/etc/virtlet/images")
        );
        assert_eq!(c.download_protocol, "https");
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert!(!c.disable_kvm);
        assert_eq!(c.cni_bin_dirs, [PathBuf::from("/opt/cni/bin")]);
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.stream_port, 10010);
        assert_eq!(c.kubelet_root_dir, PathBuf::from("/var/lib/kubelet/pods"));
        assert_eq!(c.raw_devices, ["loop*"]);
        assert_eq!(c.cpu_model, "");
        assert_eq!(c.log_level, 0);
        assert_eq!(c.containerd_socket, None);
        assert_eq!(c.runtime_handler, "virtlet");
        assert!(!c.wait_for_lock);
        let c = run(
            &["--containerd-socket", "/run/containerd/containerd.sock"],
            &[("VIRTLET_WAIT_FOR_LOCK", "true")],
        )
        .unwrap();
        assert_eq!(
            c.containerd_socket,
            Some(PathBuf::from("/run/containerd/containerd.sock"))
        );
        assert!(c.wait_for_lock);
    }

    #[test]
    fn env_beats_flags() {
        let c = run(
            &[
                "--listen",
                "/tmp/flag.sock",
                "--image-download-protocol",
                "http",
                "--disable-kvm",
            ],
            &[("VIRTLET_CRI_SOCKET_PATH", "/tmp/env.sock")],
        )
        .unwrap();
        assert_eq!(c.listen, PathBuf::from("/tmp/env.sock"));
        assert_eq!(c.download_protocol, "http");
        assert!(c.disable_kvm);
        let c = run(&["--disable-kvm"], &[("VIRTLET_DISABLE_KVM", "false")]).unwrap();
        assert!(!c.disable_kvm);
        let c = run(&["--cni-bin-dir", "/a:/b", "--v", "3"], &[]).unwrap();
        assert_eq!(c.cni_bin_dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.log_level, 3);
    }

    #[test]
    fn bad_values_name_setting_and_value() {
        for (args, env, needle) in [
            (
                vec!["--image-download-protocol", "ftp"],
                vec![],
                "VIRTLET_DOWNLOAD_PROTOCOL=\"ftp\"",
            ),
            (
                vec![],
                vec![("VIRTLET_STREAM_PORT", "99999")],
                "--stream-port / VIRTLET_STREAM_PORT=\"99999\"",
            ),
            (
                vec!["--listen", "relative.sock"],
                vec![],
                "VIRTLET_CRI_SOCKET_PATH=\"relative.sock\"",
            ),
            (
                vec![],
                vec![("VIRTLET_DISABLE_KVM", "maybe")],
                "VIRTLET_DISABLE_KVM=\"maybe\"",
            ),
            (
                vec!["--cpu-model", "Haswell"],
                vec![],
                "VIRTLET_CPU_MODEL=\"Haswell\"",
            ),
            (vec!["--v", "x"], vec![], "VIRTLET_LOGLEVEL=\"x\""),
            (
                vec!["--containerd-socket", "containerd.sock"],
                vec![],
                "--containerd-socket / VIRTLET_CONTAINERD_SOCKET=\"containerd.sock\"",
            ),
            (
                vec!["--runtime-handler", ""],
                vec![],
                "VIRTLET_RUNTIME_HANDLER=\"\"",
            ),
            (
                vec![],
                vec![("VIRTLET_WAIT_FOR_LOCK", "later")],
                "VIRTLET_WAIT_FOR_LOCK=\"later\"",
            ),
            (
                vec!["--raw-devices", "/dev/sda"],
                vec![],
                "VIRTLET_RAW_DEVICES",
            ),
            (
                vec!["--libvirt-uri", "nope"],
                vec![],
                "VIRTLET_LIBVIRT_URI=\"nope\"",
            ),
            (
                vec!["--cni-bin-dir", "bin"],
                vec![],
                "VIRTLET_CNI_PLUGIN_DIR=\"bin\"",
            ),
        ] {
            let err = run(&args, &env).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
        assert!(run(&["--no-such-flag"], &[]).is_err());
    }

    #[test]
    fn dump_is_shell_exports() {
        let c = run(
            &["--cpu-model", "host-model"],
            &[("VIRTLET_IMAGE_DIR", "/x/it's")],
        )
        .unwrap();
        let dump = c.dump();
        assert!(
            dump.contains("export VIRTLET_CPU_MODEL='host-model'\n"),
            "{dump}"
        );
        assert!(
            dump.contains("export VIRTLET_IMAGE_DIR='/x/it'\\''s'\n"),
            "{dump}"
        );
        assert_eq!(dump.lines().count(), SETTINGS.len());
    }
}
