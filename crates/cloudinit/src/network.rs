//! The guest's network config from the pod's network: NoCloud network-config version 1 and
//! ConfigDrive `network_data.json`, as Virtlet wrote them. Each NIC is matched by its MAC;
//! addresses are static (the same ones the DHCP responder would hand out), so a guest that
//! applies them needs no DHCP.

use serde_json::{Value, json};
use virtlet_core::netinfo::{PodNetwork, Route4, netmask};

use crate::generate::SeedKind;

/// The network config for the seed, or `None` when the pod has no NIC.
pub fn network_config(kind: SeedKind, net: &PodNetwork) -> Option<Value> {
    if net.nics.is_empty() {
        return None;
    }
    Some(match kind {
        SeedKind::NoCloud => nocloud_v1(net),
        SeedKind::ConfigDrive => network_data(net),
    })
}

fn route_v1(r: &Route4) -> Value {
    json!({
        "network": r.dst.to_string(),
        "netmask": netmask(r.prefix_len).to_string(),
        "gateway": r.gateway.map_or_else(|| "0.0.0.0".to_owned(), |g| g.to_string()),
    })
}

fn nocloud_v1(net: &PodNetwork) -> Value {
    let mut config: Vec<Value> = net
        .nics
        .iter()
        .enumerate()
        .map(|(k, nic)| {
            let subnets: Vec<Value> = nic
                .ipv4
                .iter()
                .map(|ip| {
                    let mut s = json!({
                        "type": "static",
                        "address": ip.address.to_string(),
                        "netmask": netmask(ip.prefix_len).to_string(),
                    });
                    if let Some(g) = ip.gateway {
                        s["gateway"] = json!(g.to_string());
                    }
                    if !ip.routes.is_empty() {
                        s["routes"] = Value::Array(ip.routes.iter().map(route_v1).collect());
                    }
                    s
                })
                .collect();
            json!({
                "type": "physical",
                "name": format!("eth{k}"),
                "mac_address": nic.mac,
                "mtu": nic.mtu,
                "subnets": subnets,
            })
        })
        .collect();
    if !net.dns.servers.is_empty() || !net.dns.search.is_empty() {
        config.push(json!({
            "type": "nameserver",
            "address": net.dns.servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "search": net.dns.search,
        }));
    }
    json!({"version": 1, "config": config})
}

fn network_data(net: &PodNetwork) -> Value {
    let links: Vec<Value> = net
        .nics
        .iter()
        .enumerate()
        .map(|(k, nic)| {
            json!({
                "id": format!("eth{k}"),
                "type": "phy",
                "ethernet_mac_address": nic.mac,
                "mtu": nic.mtu,
            })
        })
        .collect();
    let networks: Vec<Value> = net
        .nics
        .iter()
        .enumerate()
        .filter_map(|(k, nic)| {
            let ip = nic.ipv4.as_ref()?;
            let mut routes: Vec<Value> = ip
                .routes
                .iter()
                .map(|r| {
                    json!({
                        "network": r.dst.to_string(),
                        "netmask": netmask(r.prefix_len).to_string(),
                        "gateway": r.gateway.map_or_else(|| "0.0.0.0".to_owned(), |g| g.to_string()),
                    })
                })
                .collect();
            if let Some(g) = ip.gateway {
                routes.insert(
                    0,
                    json!({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": g.to_string()}),
                );
            }
            Some(json!({
                "id": format!("net{k}"),
                "type": "ipv4",
                "link": format!("eth{k}"),
                "ip_address": ip.address.to_string(),
                "netmask": netmask(ip.prefix_len).to_string(),
                "routes": routes,
            }))
        })
        .collect();
    let mut services: Vec<Value> = net
        .dns
        .servers
        .iter()
        .map(|s| json!({"type": "dns", "address": s.to_string()}))
        .collect();
    if !net.dns.search.is_empty()
        && let Some(first) = services.first_mut()
    {
        first["search"] = json!(net.dns.search);
    }
    json!({"links": links, "networks": networks, "services": services})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use virtlet_core::netinfo::{DnsInfo, Ipv4Config, VmNic};

    use super::*;

    fn net() -> PodNetwork {
        PodNetwork {
            nics: vec![
                VmNic {
                    cni_ifname: "eth0".into(),
                    bridge: "vbr0".into(),
                    tap: "vtap0".into(),
                    mac: "aa:bb:cc:00:00:05".into(),
                    mtu: 1450,
                    ipv4: Some(Ipv4Config {
                        address: Ipv4Addr::new(10, 88, 0, 5),
                        prefix_len: 16,
                        gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
                        routes: vec![Route4 {
                            dst: Ipv4Addr::new(192, 168, 7, 0),
                            prefix_len: 24,
                            gateway: Some(Ipv4Addr::new(10, 88, 0, 254)),
                        }],
                    }),
                },
                VmNic {
                    cni_ifname: "net1".into(),
                    bridge: "vbr1".into(),
                    tap: "vtap1".into(),
                    mac: "aa:bb:cc:00:01:05".into(),
                    mtu: 1500,
                    ipv4: None,
                },
            ],
            dns: DnsInfo {
                servers: vec![Ipv4Addr::new(10, 96, 0, 10)],
                search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    #[test]
    fn nocloud_v1_is_golden() {
        let v = network_config(SeedKind::NoCloud, &net()).unwrap();
        assert_eq!(
            v,
            json!({"version": 1, "config": [
                {"type": "physical", "name": "eth0", "mac_address": "aa:bb:cc:00:00:05", "mtu": 1450,
                 "subnets": [{"type": "static", "address": "10.88.0.5", "netmask": "255.255.0.0",
                              "gateway": "10.88.0.1",
                              "routes": [{"network": "192.168.7.0", "netmask": "255.255.255.0",
                                          "gateway": "10.88.0.254"}]}]},
                {"type": "physical", "name": "eth1", "mac_address": "aa:bb:cc:00:01:05", "mtu": 1500,
                 "subnets": []},
                {"type": "nameserver", "address": ["10.96.0.10"],
                 "search": ["default.svc.cluster.local", "cluster.local"]}
            ]})
        );
    }

    #[test]
    fn network_data_is_golden() {
        let v = network_config(SeedKind::ConfigDrive, &net()).unwrap();
        assert_eq!(
            v,
            json!({
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": "aa:bb:cc:00:00:05", "mtu": 1450},
                    {"id": "eth1", "type": "phy", "ethernet_mac_address": "aa:bb:cc:00:01:05", "mtu": 1500}
                ],
                "networks": [
                    {"id": "net0", "type": "ipv4", "link": "eth0", "ip_address": "10.88.0.5",
                     "netmask": "255.255.0.0",
                     "routes": [
                        {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.88.0.1"},
                        {"network": "192.168.7.0", "netmask": "255.255.255.0", "gateway": "10.88.0.254"}
                     ]}
                ],
                "services": [{"type": "dns", "address": "10.96.0.10",
                              "search": ["default.svc.cluster.local", "cluster.local"]}]
            })
        );
    }

    #[test]
    fn no_nics_no_config() {
        assert_eq!(
            network_config(SeedKind::NoCloud, &PodNetwork::default()),
            None
        );
    }
}
