//! The pod's network, driven from the sandbox lifecycle: CNI ADD and the VM plumbing at
//! RunPodSandbox, the DHCP responders while the pod is ready (restarted after a daemon
//! restart), CNI DEL at StopPodSandbox (retried there and once more at removal, which it
//! never blocks). What CNI returned is stored with the sandbox before anything depends on it,
//! so DEL always gets the config and result ADD used.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use k8s_cri::v1::{PodSandboxConfig, Protocol};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use virtlet_core::ErrorKind;
use virtlet_core::netinfo::{DnsInfo, PodNetwork};
use virtlet_net::cni::{Attachment, CniResult, CniRuntime, NetworkConfig, PortMapping};
use virtlet_net::{NetError, dhcpconf, podside};

use crate::{ManagerError, SandboxRecord, blocking, lock};

type Result<T> = std::result::Result<T, ManagerError>;

/// The interface name CNI is asked to create in the pod netns.
pub const POD_IFNAME: &str = "eth0";

/// What the store keeps of a sandbox's network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetRecord {
    /// The CNI config list ADD ran with (DEL runs with the same).
    pub cni_config: serde_json::Value,
    /// What the chain's ADD returned, once it returned.
    pub cni_result: Option<serde_json::Value>,
    /// What the VM gets, once the netns is plumbed.
    pub pod: Option<PodNetwork>,
    /// DEL has succeeded: nothing more to release.
    #[serde(default)]
    pub released: bool,
    /// Failed DEL attempts so far.
    #[serde(default)]
    pub del_failures: u32,
}

impl From<NetError> for ManagerError {
    fn from(e: NetError) -> Self {
        ManagerError::failed(e.kind(), "pod networking", e)
    }
}

/// The node's CNI settings.
#[derive(Debug, Clone)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub plugin_timeout: Duration,
}

/// CNI plus the live DHCP responders, by sandbox.
pub struct Networking {
    settings: CniSettings,
    runtime: CniRuntime,
    responders: Mutex<HashMap<String, Vec<virtlet_dhcp::Responder>>>,
}

impl Networking {
    pub fn new(settings: CniSettings) -> Networking {
        Networking {
            runtime: CniRuntime {
                bin_dirs: settings.bin_dirs.clone(),
                timeout: settings.plugin_timeout,
            },
            settings,
            responders: Mutex::new(HashMap::new()),
        }
    }

    /// The config new pods would get, with every plugin present.
    pub fn current_config(&self) -> std::result::Result<NetworkConfig, NetError> {
        let (_, net) = virtlet_net::cni::load_first(&self.settings.conf_dir)?;
        self.runtime.check(&net)?;
        Ok(net)
    }

    /// `Ok` when pods can be networked now; the error says why not.
    pub fn ready(&self) -> std::result::Result<(), String> {
        self.current_config().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Live responders (all pods).
    pub fn responder_count(&self) -> usize {
        lock(&self.responders).values().map(Vec::len).sum()
    }

    /// CNI ADD, then the plumbing that hands the address to the VM. On error everything CNI
    /// allocated is released again (the caller removes the netns).
    pub async fn setup(
        &self,
        rec: &SandboxRecord,
        net: &NetworkConfig,
        save_result: impl FnOnce(&serde_json::Value) -> Result<()>,
    ) -> Result<(serde_json::Value, PodNetwork)> {
        let att = attachment(rec, &rec.netns)?;
        let dns = dns_info(&rec.config)?;
        let runtime = self.runtime.clone();
        let result: CniResult = blocking({
            let (net, att) = (net.clone(), att.clone());
            move || {
                let _phase = tracing::debug_span!("cni_add").entered();
                runtime.add(&net, &att)
            }
        })
        .await??;
        if let Err(e) = save_result(&result.raw) {
            self.release(net, &att, Some(&result.raw)).await;
            return Err(e);
        }
        let netns = rec.netns.clone();
        let dns = if dns.servers.is_empty() && dns.search.is_empty() {
            cni_dns(&result)
        } else {
            dns
        };
        let plumbed = blocking({
            let result = result.clone();
            move || {
                let _phase = tracing::debug_span!("plumbing").entered();
                podside::attach_vm(&netns, &result, POD_IFNAME, dns)
            }
        })
        .await?;
        match plumbed {
            Ok(pod) => Ok((result.raw, pod)),
            Err(e) => {
                self.release(net, &att, Some(&result.raw)).await;
                Err(e.into())
            }
        }
    }

    async fn release(
        &self,
        net: &NetworkConfig,
        att: &Attachment,
        result: Option<&serde_json::Value>,
    ) {
        let runtime = self.runtime.clone();
        let (net, att, result) = (net.clone(), att.clone(), result.cloned());
        match blocking(move || runtime.del(&net, &att, result.as_ref())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "CNI DEL while undoing a failed setup failed"),
            Err(e) => warn!(error = %e, "CNI DEL while undoing a failed setup failed"),
        }
    }

    /// Starts one DHCP responder per addressed bridge of the pod.
    pub async fn start_responders(&self, rec: &SandboxRecord, pod: &PodNetwork) -> Result<()> {
        self.stop_responders(&rec.id).await;
        let hostname = hostname(&rec.config);
        let mut started = Vec::new();
        for (bridge, config) in dhcpconf::responder_configs(pod, &hostname) {
            let netns = rec.netns.clone();
            let br = bridge.clone();
            let socket = blocking(move || virtlet_dhcp::bind_in_netns(&netns, &br))
                .await?
                .map_err(|e| {
                    ManagerError::failed(
                        ErrorKind::Internal,
                        format!(
                            "cannot start the DHCP responder on {bridge} in {}",
                            rec.netns.display()
                        ),
                        e,
                    )
                });
            let responder = socket.and_then(|s| {
                virtlet_dhcp::Responder::spawn(
                    s,
                    config,
                    format!("{}/{bridge}", &rec.id[..13.min(rec.id.len())]),
                )
                .map_err(|e| {
                    ManagerError::failed(ErrorKind::Internal, "cannot start the DHCP responder", e)
                })
            });
            match responder {
                Ok(r) => started.push(r),
                Err(e) => {
                    for r in started {
                        r.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        if !started.is_empty() {
            lock(&self.responders).insert(rec.id.clone(), started);
        }
        Ok(())
    }

    pub async fn stop_responders(&self, sandbox_id: &str) {
        let taken = lock(&self.responders).remove(sandbox_id);
        for r in taken.into_iter().flatten() {
            r.stop().await;
        }
    }

    /// CNI DEL with the stored config and result. Works when the netns is gone already.
    pub async fn release_stored(
        &self,
        rec: &SandboxRecord,
        stored: &NetRecord,
    ) -> std::result::Result<(), NetError> {
        let net = NetworkConfig::from_list(stored.cni_config.clone()).map_err(|reason| {
            NetError::BadConfig {
                path: PathBuf::from(format!("(stored with sandbox {})", rec.id)),
                reason,
            }
        })?;
        let netns = if rec.netns.exists() {
            rec.netns.clone()
        } else {
            PathBuf::new()
        };
        let att = attachment(rec, &netns).map_err(|e| NetError::Setup {
            netns: rec.netns.clone(),
            what: "port mappings".into(),
            reason: virtlet_core::error::chain(&e),
        })?;
        let runtime = self.runtime.clone();
        let result = stored.cni_result.clone();
        let restore = stored.pod.clone().filter(|_| !netns.as_os_str().is_empty());
        blocking(move || {
            let _phase = tracing::debug_span!("cni_del").entered();
            if let Some(pod) = restore {
                podside::restore_for_del(&att.netns, &pod)?;
            }
            runtime.del(&net, &att, result.as_ref())
        })
        .await
        .map_err(|e| NetError::Setup {
            netns: rec.netns.clone(),
            what: "CNI DEL".into(),
            reason: virtlet_core::error::chain(&e),
        })?
    }
}

fn attachment(rec: &SandboxRecord, netns: &Path) -> Result<Attachment> {
    let meta = rec.config.metadata.clone().unwrap_or_default();
    Ok(Attachment {
        container_id: rec.id.clone(),
        netns: netns.to_owned(),
        ifname: POD_IFNAME.to_owned(),
        pod_namespace: meta.namespace,
        pod_name: meta.name,
        pod_uid: meta.uid,
        port_mappings: port_mappings(&rec.config)?,
    })
}

/// The pod's hostPort mappings (mappings without a host port publish nothing).
pub fn port_mappings(config: &PodSandboxConfig) -> Result<Vec<PortMapping>> {
    let mut out = Vec::new();
    for (i, m) in config.port_mappings.iter().enumerate() {
        if m.host_port == 0 {
            continue;
        }
        let port = |field: &str, v: i32| {
            u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| {
                ManagerError::invalid(format!(
                    "config.port_mappings[{i}].{field} {v} is not a port (1-65535)"
                ))
            })
        };
        let protocol = match Protocol::try_from(m.protocol) {
            Ok(Protocol::Tcp) => "tcp",
            Ok(Protocol::Udp) => "udp",
            Ok(Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(ManagerError::invalid(format!(
                    "config.port_mappings[{i}].protocol {} is not TCP, UDP or SCTP",
                    m.protocol
                )));
            }
        };
        if !m.host_ip.is_empty() && m.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(ManagerError::invalid(format!(
                "config.port_mappings[{i}].host_ip {:?} is not an IP address",
                m.host_ip
            )));
        }
        out.push(PortMapping {
            host_port: port("host_port", m.host_port)?,
            container_port: port("container_port", m.container_port)?,
            protocol: protocol.to_owned(),
            host_ip: m.host_ip.clone(),
        });
    }
    Ok(out)
}

/// DNS from the pod's config (IPv6 servers are left out: DHCPv4 cannot carry them).
pub fn dns_info(config: &PodSandboxConfig) -> Result<DnsInfo> {
    let Some(d) = &config.dns_config else {
        return Ok(DnsInfo::default());
    };
    let mut servers = Vec::new();
    for (i, s) in d.servers.iter().enumerate() {
        match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => servers.push(a),
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => {
                return Err(ManagerError::invalid(format!(
                    "config.dns_config.servers[{i}] {s:?} is not an IP address"
                )));
            }
        }
    }
    for (i, s) in d.searches.iter().enumerate() {
        if s.is_empty() || s.len() > 253 || s.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(ManagerError::invalid(format!(
                "config.dns_config.searches[{i}] {s:?} is not a domain name"
            )));
        }
    }
    Ok(DnsInfo {
        servers,
        search: d.searches.clone(),
        options: d.options.clone(),
    })
}

fn cni_dns(result: &CniResult) -> DnsInfo {
    let mut search = result.dns.search.clone();
    if search.is_empty()
        && let Some(d) = &result.dns.domain
    {
        search.push(d.clone());
    }
    DnsInfo {
        servers: result
            .dns
            .nameservers
            .iter()
            .filter_map(|s| s.parse::<Ipv4Addr>().ok())
            .collect(),
        search,
        options: result.dns.options.clone(),
    }
}

fn hostname(config: &PodSandboxConfig) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

/// Logs what the pod got.
pub fn log_pod_network(pod: &PodNetwork) {
    for nic in &pod.nics {
        match &nic.ipv4 {
            Some(ip) => {
                info!(nic = %nic.cni_ifname, mac = %nic.mac, ip = %format!("{}/{}", ip.address, ip.prefix_len),
                              gateway = ?ip.gateway, "VM NIC")
            }
            None => info!(nic = %nic.cni_ifname, mac = %nic.mac, "VM NIC without an IPv4 address"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_cri::v1::{DnsConfig, PortMapping as CriPort};

    use super::*;

    #[test]
    fn port_mappings_are_checked() {
        let mut c = PodSandboxConfig {
            port_mappings: vec![
                CriPort {
                    protocol: Protocol::Tcp as i32,
                    container_port: 22,
                    host_port: 2222,
                    host_ip: String::new(),
                },
                CriPort {
                    protocol: Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        let m = port_mappings(&c).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].protocol, "tcp");
        c.port_mappings[0].host_port = 70000;
        let e = port_mappings(&c).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config.port_mappings[0].host_port 70000 is not a port (1-65535)"
        );
        c.port_mappings[0].host_port = 2222;
        c.port_mappings[0].host_ip = "nope".into();
        assert!(
            port_mappings(&c)
                .unwrap_err()
                .to_string()
                .contains("host_ip \"nope\"")
        );
    }

    #[test]
    fn dns_comes_from_the_pod() {
        let mut c = PodSandboxConfig::default();
        assert_eq!(dns_info(&c).unwrap(), DnsInfo::default());
        c.dns_config = Some(DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let d = dns_info(&c).unwrap();
        assert_eq!(d.servers, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(d.search, vec!["default.svc.cluster.local"]);
        c.dns_config.as_mut().unwrap().servers.push("x".into());
        assert!(
            dns_info(&c)
                .unwrap_err()
                .to_string()
                .contains("servers[2] \"x\"")
        );
        c.dns_config.as_mut().unwrap().servers.pop();
        c.dns_config.as_mut().unwrap().searches.push("a..b".into());
        assert!(
            dns_info(&c)
                .unwrap_err()
                .to_string()
                .contains("searches[1]")
        );
    }
}
