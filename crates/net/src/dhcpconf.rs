//! What each bridge's DHCP responder hands out: built from the pod's network, pure.

use virtlet_core::netinfo::PodNetwork;
use virtlet_dhcp::{Config, Lease, Route};

use crate::podside::SERVER_ID;

/// How long a lease lasts; the guest renews at half of it.
pub const LEASE_SECS: u32 = 3600;

/// One responder config per bridge whose NIC has an address: `(bridge, config)`.
pub fn responder_configs(net: &PodNetwork, hostname: &str) -> Vec<(String, Config)> {
    net.nics
        .iter()
        .filter_map(|nic| {
            let ip = nic.ipv4.as_ref()?;
            let mac = parse_mac(&nic.mac)?;
            let lease = Lease {
                mac,
                ip: ip.address,
                prefix_len: ip.prefix_len,
                gateway: ip.gateway,
                routes: ip
                    .routes
                    .iter()
                    .map(|r| Route {
                        dst: r.dst,
                        prefix_len: r.prefix_len,
                        gateway: r.gateway,
                    })
                    .collect(),
                dns_servers: net.dns.servers.clone(),
                search: net.dns.search.clone(),
                mtu: Some(nic.mtu),
                hostname: (!hostname.is_empty()).then(|| hostname.to_owned()),
            };
            Some((
                nic.bridge.clone(),
                Config {
                    server_id: SERVER_ID,
                    lease_secs: LEASE_SECS,
                    leases: vec![lease],
                },
            ))
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use virtlet_core::netinfo::{DnsInfo, Ipv4Config, Route4, VmNic};

    use super::*;

    #[test]
    fn one_config_per_addressed_nic() {
        let nic = |k: usize, ip: Option<Ipv4Config>| VmNic {
            cni_ifname: format!("eth{k}"),
            bridge: format!("vbr{k}"),
            tap: format!("vtap{k}"),
            mac: format!("aa:bb:cc:00:00:0{k}"),
            mtu: 1450,
            ipv4: ip,
        };
        let net = PodNetwork {
            nics: vec![
                nic(
                    0,
                    Some(Ipv4Config {
                        address: Ipv4Addr::new(10, 88, 0, 5),
                        prefix_len: 16,
                        gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
                        routes: vec![Route4 {
                            dst: Ipv4Addr::new(192, 168, 7, 0),
                            prefix_len: 24,
                            gateway: None,
                        }],
                    }),
                ),
                nic(1, None),
            ],
            dns: DnsInfo {
                servers: vec![Ipv4Addr::new(10, 96, 0, 10)],
                search: vec!["default.svc.cluster.local".into()],
                options: vec![],
            },
        };
        let c = responder_configs(&net, "vm-1");
        assert_eq!(c.len(), 1);
        let (bridge, cfg) = &c[0];
        assert_eq!(bridge, "vbr0");
        assert_eq!(cfg.server_id, SERVER_ID);
        let l = &cfg.leases[0];
        assert_eq!(l.mac, [0xaa, 0xbb, 0xcc, 0, 0, 0]);
        assert_eq!(l.ip, Ipv4Addr::new(10, 88, 0, 5));
        assert_eq!(l.gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(l.routes.len(), 1);
        assert_eq!(l.mtu, Some(1450));
        assert_eq!(l.hostname.as_deref(), Some("vm-1"));
        assert_eq!(l.search, vec!["default.svc.cluster.local"]);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01"), Some([2, 0, 10, 255, 16, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }
}
