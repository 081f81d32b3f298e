//! Real CNI networks for tests: Debian's bridge + host-local (+ portmap) with a bridge, a
//! subnet and an IPAM data dir of the test's own, removed again when the guard drops.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::CNI_BIN_DIR;

/// A test network: its own host bridge, /24 and host-local data dir.
pub struct TestNet {
    pub name: String,
    pub bridge: String,
    /// `10.201.<n>`
    pub prefix: String,
    pub ipam_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestNet {
    /// `n` picks the subnet `10.201.<n>.0/24` and the bridge `vt-br<n>`; tests running at
    /// the same time use different `n`.
    pub fn new(n: u8) -> TestNet {
        need_root_and_plugins();
        let dir = tempfile::tempdir().unwrap();
        let t = TestNet {
            name: format!("vtnet{n}"),
            bridge: format!("vt-br{n}"),
            prefix: format!("10.201.{n}"),
            ipam_dir: dir.path().join("ipam"),
            _dir: dir,
        };
        let _ = Command::new("ip")
            .args(["link", "del", &t.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        t
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// bridge + host-local (+ portmap), addresses `.10`..`.<last>`.
    pub fn conflist(&self, last: u8, portmap: bool, extra: &[serde_json::Value]) -> String {
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir,
                "ranges": [[{
                    "subnet": format!("{}.0/24", self.prefix),
                    "rangeStart": format!("{}.10", self.prefix),
                    "rangeEnd": format!("{}.{last}", self.prefix),
                    "gateway": self.gateway(),
                }]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.77.0/24", "gw": format!("{}.254", self.prefix)}]
            }
        })];
        if portmap {
            plugins.push(serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
        }
        plugins.extend(extra.iter().cloned());
        serde_json::json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
            .to_string()
    }

    /// Addresses host-local holds (files named by IP).
    pub fn allocated(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir.join(&self.name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

pub fn need_root_and_plugins() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "pod networking tests need root (netns, bridges, iptables); run them as root"
    );
    for p in ["bridge", "host-local", "portmap", "loopback", "tuning"] {
        assert!(
            Path::new(CNI_BIN_DIR).join(p).exists(),
            "CNI plugin {p} is missing from {CNI_BIN_DIR}: install Debian's containernetworking-plugins"
        );
    }
    for tool in ["ebtables", "iptables-save", "nsenter", "busybox"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is missing: scripts/setup-host installs it"
        );
    }
}

/// Runs a command inside the netns at `netns`; panics with its stderr when it fails.
pub fn in_netns(netns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{}` in {} failed: {}",
        args.join(" "),
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host links on a bridge (the pods' veths).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        })
        .collect();
    v.sort();
    v
}

/// iptables rules (filter and nat) that mention `needle`.
pub fn iptables_lines(needle: &str) -> Vec<String> {
    let out = Command::new("iptables-save").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A DHCP client standing in for the VM: a veth inside the pod netns, its far end on the
/// pod's bridge, with `mac`; returns what `busybox udhcpc` got (`ip=..` lines) or `None`.
pub fn dhcp_as_vm(netns: &Path, bridge: &str, mac: &str) -> Option<String> {
    let script_dir = tempfile::tempdir().unwrap();
    let script = script_dir.path().join("s.sh");
    let out_file = script_dir.path().join("out");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] || [ \"$1\" = renew ] || exit 0\necho \"event=$1 ip=$ip mask=$mask router=$router dns=$dns search=$search mtu=$mtu serverid=$serverid staticroutes=$staticroutes\" >> {}\n",
            out_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    in_netns(
        netns,
        &[
            "ip", "link", "add", "vmside", "type", "veth", "peer", "name", "brside",
        ],
    );
    in_netns(netns, &["ip", "link", "set", "vmside", "address", mac]);
    in_netns(netns, &["ip", "link", "set", "brside", "master", bridge]);
    in_netns(netns, &["ip", "link", "set", "brside", "up"]);
    in_netns(netns, &["ip", "link", "set", "vmside", "up"]);
    let st = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "busybox",
            "udhcpc",
            "-i",
            "vmside",
            "-n",
            "-q",
            "-f",
            "-t",
            "4",
            "-T",
            "1",
            "-O",
            "staticroutes",
            "-O",
            "search",
            "-O",
            "mtu",
            "-s",
        ])
        .arg(&script)
        .output()
        .unwrap();
    in_netns(netns, &["ip", "link", "del", "vmside"]);
    if !st.status.success() {
        return None;
    }
    std::fs::read_to_string(&out_file).ok()
}
