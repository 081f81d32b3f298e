//! Running CNI plugins: the exec protocol of the CNI spec (environment variables, the config
//! on stdin, the result or an error on stdout), chained the way libcni chains a config list.
//! What is handed to each plugin is built by pure functions, tested below.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::config::{NetworkConfig, version_lt};
use super::result::CniResult;
use crate::error::NetError;

/// A hostPort mapping handed to plugins with the `portMappings` capability (`portmap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub host_ip: String,
}

/// One pod's attachment to the network: what identifies it to the plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID: the sandbox ID.
    pub container_id: String,
    /// CNI_NETNS; empty when the namespace no longer exists (DEL only).
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
}

/// CNI_ARGS as Kubernetes runtimes pass them.
pub fn cni_args(att: &Attachment) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        att.pod_namespace, att.pod_name, att.container_id, att.pod_uid
    )
}

/// The environment of one plugin call.
pub fn plugin_env(command: &str, att: &Attachment, bin_dirs: &[PathBuf]) -> Vec<(String, String)> {
    let path = bin_dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), att.container_id.clone()),
        ("CNI_NETNS".into(), att.netns.to_string_lossy().into_owned()),
        ("CNI_IFNAME".into(), att.ifname.clone()),
        ("CNI_ARGS".into(), cni_args(att)),
        ("CNI_PATH".into(), path),
    ]
}

/// The config one plugin of the list reads on stdin: its own section, plus the list's name
/// and version, the previous plugin's result, and the runtime config for the capabilities
/// it declares.
pub fn plugin_input(
    net: &NetworkConfig,
    plugin: &Map<String, Value>,
    prev_result: Option<&Value>,
    att: &Attachment,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && !att.port_mappings.is_empty() {
        let mappings: Vec<Value> = att
            .port_mappings
            .iter()
            .map(|m| {
                let mut o = serde_json::json!({
                    "hostPort": m.host_port,
                    "containerPort": m.container_port,
                    "protocol": m.protocol,
                });
                if !m.host_ip.is_empty() {
                    o["hostIP"] = Value::String(m.host_ip.clone());
                }
                o
            })
            .collect();
        let mut rc = conf
            .get("runtimeConfig")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        rc.insert("portMappings".into(), Value::Array(mappings));
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

/// Runs CNI plugins found in a list of directories.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin call may take.
    pub timeout: Duration,
}

impl CniRuntime {
    /// The plugin's executable, or an error naming the directories searched.
    pub fn find_plugin(&self, net: &NetworkConfig, kind: &str) -> Result<PathBuf, NetError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| NetError::PluginMissing {
                plugin: kind.to_owned(),
                network: net.name.clone(),
                dirs: self.dirs_text(),
            })
    }

    fn dirs_text(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Every plugin of the list is present.
    pub fn check(&self, net: &NetworkConfig) -> Result<(), NetError> {
        for kind in net.plugin_types() {
            self.find_plugin(net, kind)?;
        }
        Ok(())
    }

    /// ADD through the whole list. When a plugin fails, DEL runs over the list (best effort)
    /// before the error is returned, so nothing stays allocated.
    pub fn add(&self, net: &NetworkConfig, att: &Attachment) -> Result<CniResult, NetError> {
        self.check(net)?;
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let input = plugin_input(net, plugin, prev.as_ref(), att);
            match self.call(net, plugin, "ADD", att, &input) {
                Ok(out) => {
                    let v: Value = if out.iter().all(u8::is_ascii_whitespace) {
                        Value::Object(Default::default())
                    } else {
                        serde_json::from_slice(&out).map_err(|e| NetError::BadResult {
                            plugin: kind_of(plugin).to_owned(),
                            command: "ADD",
                            reason: format!("not JSON: {e}"),
                        })?
                    };
                    prev = Some(v);
                }
                Err(e) => {
                    if let Err(del) = self.del(net, att, prev.as_ref()) {
                        warn!(error = %del, "CNI DEL after a failed ADD failed too");
                    }
                    return Err(e);
                }
            }
        }
        let raw = prev.unwrap_or(Value::Object(Default::default()));
        CniResult::parse(raw).map_err(|reason| NetError::BadResult {
            plugin: net.plugin_types().last().copied().unwrap_or("").to_owned(),
            command: "ADD",
            reason,
        })
    }

    /// DEL through the list in reverse order, with the cached ADD result as prevResult
    /// (spec 0.4.0 and later). Every plugin is called even when one fails; the first
    /// failure is returned.
    pub fn del(
        &self,
        net: &NetworkConfig,
        att: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), NetError> {
        let prev = if version_lt(&net.cni_version, "0.4.0") {
            None
        } else {
            result
        };
        let mut first_err = None;
        for plugin in net.plugins.iter().rev() {
            let input = plugin_input(net, plugin, prev, att);
            if let Err(e) = self.call(net, plugin, "DEL", att, &input) {
                warn!(error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn call(
        &self,
        net: &NetworkConfig,
        plugin: &Map<String, Value>,
        command: &'static str,
        att: &Attachment,
        input: &Value,
    ) -> Result<Vec<u8>, NetError> {
        let kind = kind_of(plugin);
        let exe = self.find_plugin(net, kind)?;
        let _span = tracing::debug_span!("cni", plugin = kind, command).entered();
        let failed = |code: u32, message: String| NetError::PluginFailed {
            plugin: kind.to_owned(),
            command,
            network: net.name.clone(),
            code,
            message,
        };
        let stdin = serde_json::to_vec(input).map_err(|e| failed(0, e.to_string()))?;
        let PluginOutput {
            code: status,
            stdout: out,
            stderr: err,
        } = run(
            &exe,
            &plugin_env(command, att, &self.bin_dirs),
            &stdin,
            self.timeout,
        )
        .map_err(|e| failed(0, e))?;
        debug!(status = ?status, stdout = %String::from_utf8_lossy(&out), "plugin returned");
        if status == Some(0) {
            return Ok(out);
        }
        let (code, msg) = error_of(&out, &err);
        Err(failed(code, msg))
    }
}

fn kind_of(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The code and message of a failed plugin: its JSON error on stdout, or else its output.
pub fn error_of(stdout: &[u8], stderr: &[u8]) -> (u32, String) {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        let code = v
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let mut msg = v
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if let Some(d) = v
            .get("details")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        {
            msg = format!("{msg}: {d}");
        }
        if !msg.is_empty() {
            return (code, msg);
        }
    }
    let text = [stdout, stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let text = if text.is_empty() {
        "it printed nothing".to_owned()
    } else {
        text.chars().take(2000).collect()
    };
    (0, text)
}

/// What a plugin call left: its exit code (`None`: killed by a signal) and its output.
struct PluginOutput {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs one plugin: a fresh environment (PATH kept, for plugins that run iptables), the input
/// on stdin, stdout and stderr collected, killed after `timeout`. Returns the exit code
/// (`None` when killed by a signal).
fn run(
    exe: &Path,
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<PluginOutput, String> {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let mut input = child.stdin.take();
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        if let Some(mut i) = input.take() {
            let _ = i.write_all(&data);
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(e) = err_pipe.as_mut() {
            let _ = e.read_to_end(&mut b);
        }
        b
    });
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(o) = out_pipe.as_mut() {
            let _ = o.read_to_end(&mut b);
        }
        let _ = tx.send(b);
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(b) => b,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} did not finish within {} s and was killed",
                exe.display(),
                timeout.as_secs()
            ));
        }
    };
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", exe.display()))?;
    let stderr = err_reader.join().unwrap_or_default();
    Ok(PluginOutput {
        code: status.code(),
        stdout: out,
        stderr,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn att() -> Attachment {
        Attachment {
            container_id: "abc".into(),
            netns: "/var/run/netns/uid-1".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "vm".into(),
            pod_uid: "uid-1".into(),
            port_mappings: vec![PortMapping {
                host_port: 2222,
                container_port: 22,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
        }
    }

    fn list() -> NetworkConfig {
        NetworkConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"pods","plugins":[
                {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            true,
        )
        .unwrap()
    }

    #[test]
    fn env_is_what_the_spec_names() {
        let env = plugin_env(
            "ADD",
            &att(),
            &["/usr/lib/cni".into(), "/opt/cni/bin".into()],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CNI_COMMAND"), Some("ADD"));
        assert_eq!(get("CNI_CONTAINERID"), Some("abc"));
        assert_eq!(get("CNI_NETNS"), Some("/var/run/netns/uid-1"));
        assert_eq!(get("CNI_IFNAME"), Some("eth0"));
        assert_eq!(get("CNI_PATH"), Some("/usr/lib/cni:/opt/cni/bin"));
        assert_eq!(
            get("CNI_ARGS"),
            Some(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=uid-1"
            )
        );
    }

    #[test]
    fn plugin_inputs_are_golden() {
        let net = list();
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"10.88.0.5/16"}]});
        let first = plugin_input(&net, &net.plugins[0], None, &att());
        assert_eq!(
            first,
            serde_json::json!({"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"},
                "name":"pods","cniVersion":"1.0.0"})
        );
        let second = plugin_input(&net, &net.plugins[1], Some(&prev), &att());
        assert_eq!(
            second,
            serde_json::json!({"type":"portmap","capabilities":{"portMappings":true},
                "name":"pods","cniVersion":"1.0.0","prevResult":prev,
                "runtimeConfig":{"portMappings":[{"hostPort":2222,"containerPort":22,"protocol":"tcp"}]}})
        );
        // No mappings: no runtimeConfig.
        let mut a = att();
        a.port_mappings.clear();
        assert!(
            plugin_input(&net, &net.plugins[1], None, &a)
                .get("runtimeConfig")
                .is_none()
        );
    }

    #[test]
    fn plugin_errors_are_read() {
        assert_eq!(
            error_of(
                br#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"try later"}"#,
                b""
            ),
            (11, "busy: try later".to_owned())
        );
        assert_eq!(
            error_of(b"", b"panic: boom\n"),
            (0, "panic: boom".to_owned())
        );
        assert_eq!(error_of(b"", b""), (0, "it printed nothing".to_owned()));
    }

    #[test]
    fn a_missing_plugin_is_named_with_the_dirs() {
        let rt = CniRuntime {
            bin_dirs: vec!["/nonexistent/a".into(), "/nonexistent/b".into()],
            timeout: Duration::from_secs(1),
        };
        let e = rt.check(&list()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CNI plugin \"bridge\" (network \"pods\") not found in /nonexistent/a:/nonexistent/b"
        );
    }

    #[test]
    fn plugins_run_with_a_timeout_and_their_errors_come_back() {
        let d = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // A plugin that echoes its environment and input, one that fails, one that hangs.
        script(
            "echo",
            r#"cat >/dev/null; printf '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}],"dns":{"nameservers":["%s"]}}' "$CNI_COMMAND""#,
        );
        script(
            "fail",
            r#"cat >/dev/null; echo '{"code":7,"msg":"no IP addresses available in range set: 10.9.0.2-10.9.0.2"}'; exit 1"#,
        );
        script("hang", "sleep 30");
        let rt = CniRuntime {
            bin_dirs: vec![d.path().to_owned()],
            timeout: Duration::from_millis(500),
        };
        let net = |t: &str| {
            NetworkConfig::parse(
                format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"{t}"}}]}}"#)
                    .as_bytes(),
                true,
            )
            .unwrap()
        };
        let r = rt.add(&net("echo"), &att()).unwrap();
        assert_eq!(r.ips[0].address.prefix_len, 24);
        assert_eq!(r.dns.nameservers, vec!["ADD"]);
        let e = rt.add(&net("fail"), &att()).unwrap_err();
        assert_eq!(e.kind(), virtlet_core::ErrorKind::ResourceExhausted, "{e}");
        assert!(e.to_string().contains("no IP addresses available"), "{e}");
        let started = std::time::Instant::now();
        let e = rt.add(&net("hang"), &att()).unwrap_err();
        assert!(e.to_string().contains("was killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
