//! What a pod's network looks like once CNI has run: the NICs its VM gets (one per CNI
//! interface in the pod's netns, in the result's order) with the address each one is handed by
//! DHCP, and the pod's DNS settings. The network code produces it; the VM spec, cloud-init's
//! network-config and the DHCP responder are all built from it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The pod's network as handed to its VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub nics: Vec<VmNic>,
    pub dns: DnsInfo,
}

impl PodNetwork {
    /// The pod IP: the first IPv4 address of the first NIC that has one.
    pub fn pod_ip(&self) -> Option<Ipv4Addr> {
        self.nics
            .iter()
            .find_map(|n| n.ipv4.as_ref().map(|c| c.address))
    }

    /// Every IPv4 address after the pod IP, in NIC order.
    pub fn additional_ips(&self) -> Vec<Ipv4Addr> {
        self.nics
            .iter()
            .filter_map(|n| n.ipv4.as_ref().map(|c| c.address))
            .skip(1)
            .collect()
    }
}

/// One NIC of the VM: a tap on a bridge that also holds the CNI interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNic {
    /// The interface CNI made in the pod netns (`eth0`, ...).
    pub cni_ifname: String,
    /// The bridge joining it to the tap.
    pub bridge: String,
    /// The tap QEMU opens (inside the pod netns).
    pub tap: String,
    /// The MAC the VM's NIC uses: the CNI interface's original one (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    pub mtu: u16,
    /// The address DHCP hands this NIC, when CNI gave it one.
    pub ipv4: Option<Ipv4Config>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Routes beyond the interface's own subnet, without the default route (that is
    /// `gateway`).
    pub routes: Vec<Route4>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route4 {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    /// `None`: on-link.
    pub gateway: Option<Ipv4Addr>,
}

/// DNS settings for the guest: the pod's DNS config, or CNI's when the pod gives none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsInfo {
    pub servers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// `a.b.c.d` netmask of a prefix length (0..=32).
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    };
    Ipv4Addr::from(bits)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(netmask(25), Ipv4Addr::new(255, 255, 255, 128));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn pod_ip_is_the_first_ipv4() {
        let nic = |ip: Option<[u8; 4]>| VmNic {
            cni_ifname: "eth0".into(),
            bridge: "vbr0".into(),
            tap: "vtap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            ipv4: ip.map(|a| Ipv4Config {
                address: Ipv4Addr::from(a),
                prefix_len: 24,
                gateway: None,
                routes: vec![],
            }),
        };
        let net = PodNetwork {
            nics: vec![
                nic(None),
                nic(Some([10, 0, 0, 2])),
                nic(Some([10, 1, 0, 2])),
            ],
            dns: DnsInfo::default(),
        };
        assert_eq!(net.pod_ip(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(net.additional_ips(), vec![Ipv4Addr::new(10, 1, 0, 2)]);
        assert_eq!(PodNetwork::default().pod_ip(), None);
    }
}
