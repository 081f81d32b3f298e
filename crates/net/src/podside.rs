//! Inside the pod's netns: hand the CNI interface's address to the VM. The address comes off
//! the CNI interface, which gets a new MAC; a bridge joins it with a tap for the VM, whose NIC
//! keeps the interface's original MAC (so neighbours' ARP caches stay right). The bridge holds
//! the DHCP responder's link-local address, and ebtables rules in the netns keep DHCP and
//! that address off the CNI link in both directions.
//!
//! The plumbing runs iproute2 and ebtables from a thread that has entered the netns (their
//! children inherit it). rtnetlink would do the same in-process; it could not be fetched
//! when this was written, and `ip -batch` keeps it to one process per pod.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use virtlet_core::netinfo::{DnsInfo, Ipv4Config, PodNetwork, Route4, VmNic};

use crate::cni::CniResult;
use crate::error::NetError;

/// The DHCP responder's address on every bridge; the guest reaches it through an on-link /32
/// route handed out in option 121, so unicast renewals work.
pub const SERVER_ID: Ipv4Addr = Ipv4Addr::new(169, 254, 254, 2);

/// One link of the netns, as `ip -j addr show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: u16,
    /// Global IPv4 addresses with their prefix lengths.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}

/// One IPv4 route of the netns, as `ip -j -4 route show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// `None`: the default route.
    pub dst: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    /// `kernel` for the routes the kernel adds for an address's subnet.
    pub protocol: String,
}

pub fn parse_links(json: &[u8]) -> Result<Vec<Link>, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("ip -j addr: {e}"))?;
    let mut out = Vec::new();
    for l in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = l
            .get("ifname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mac = l
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let mtu = l
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u16::try_from(m).ok())
            .unwrap_or(1500);
        let mut ipv4 = Vec::new();
        for a in l
            .get("addr_info")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if a.get("family").and_then(Value::as_str) != Some("inet")
                || a.get("scope").and_then(Value::as_str) != Some("global")
            {
                continue;
            }
            let ip = a
                .get("local")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok());
            let len = a
                .get("prefixlen")
                .and_then(Value::as_u64)
                .and_then(|p| u8::try_from(p).ok());
            if let (Some(ip), Some(len)) = (ip, len) {
                ipv4.push((ip, len));
            }
        }
        out.push(Link {
            name,
            mac,
            mtu,
            ipv4,
        });
    }
    Ok(out)
}

pub fn parse_routes(json: &[u8]) -> Result<Vec<RouteEntry>, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("ip -j route: {e}"))?;
    let mut out = Vec::new();
    for r in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let dst = match r.get("dst").and_then(Value::as_str) {
            Some("default") | None => None,
            Some(d) => {
                let (a, l) = d.split_once('/').unwrap_or((d, "32"));
                match (a.parse(), l.parse()) {
                    (Ok(a), Ok(l)) => Some((a, l)),
                    _ => continue,
                }
            }
        };
        out.push(RouteEntry {
            dst,
            gateway: r
                .get("gateway")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok()),
            dev: r
                .get("dev")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            protocol: r
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
    }
    Ok(out)
}

/// The VM's NICs: one per interface CNI put in the pod netns, in the result's order (the
/// attachment's interface when an old-style result names none). Addresses, MTU and routes
/// are read from the netns itself, which is what the plugins really configured.
pub fn plan_nics(
    result: &CniResult,
    links: &[Link],
    routes: &[RouteEntry],
    default_ifname: &str,
) -> Result<Vec<VmNic>, String> {
    let mut names: Vec<&str> = result
        .interfaces
        .iter()
        .filter(|i| !i.sandbox.is_empty() && i.name != "lo")
        .map(|i| i.name.as_str())
        .collect();
    if names.is_empty() && links.iter().any(|l| l.name == default_ifname) {
        names.push(default_ifname);
    }
    let mut nics = Vec::new();
    for (k, name) in names.into_iter().enumerate() {
        let link = links.iter().find(|l| l.name == name).ok_or_else(|| {
            format!("the CNI result names interface {name:?}, which is not in the netns")
        })?;
        if link.mac.len() != 17 {
            return Err(format!(
                "interface {name:?} has no Ethernet address ({:?})",
                link.mac
            ));
        }
        let ipv4 = link.ipv4.first().map(|&(address, prefix_len)| {
            let mine = routes.iter().filter(|r| r.dev == name);
            let gateway = mine
                .clone()
                .find(|r| r.dst.is_none())
                .and_then(|r| r.gateway);
            let routes = mine
                .filter(|r| r.protocol != "kernel")
                .filter_map(|r| {
                    let (dst, len) = r.dst?;
                    Some(Route4 {
                        dst,
                        prefix_len: len,
                        gateway: r.gateway,
                    })
                })
                .collect();
            Ipv4Config {
                address,
                prefix_len,
                gateway,
                routes,
            }
        });
        nics.push(VmNic {
            cni_ifname: name.to_owned(),
            bridge: format!("vbr{k}"),
            tap: format!("vtap{k}"),
            mac: link.mac.clone(),
            mtu: link.mtu,
            ipv4,
        });
    }
    Ok(nics)
}

/// The `ip -batch` script that moves one NIC's address to the VM. `new_mac` replaces the CNI
/// interface's MAC, `bridge_mac` is the bridge's.
pub fn ip_batch(nic: &VmNic, new_mac: &str, bridge_mac: &str) -> String {
    let VmNic {
        cni_ifname: eth,
        bridge: br,
        tap,
        mtu,
        ..
    } = nic;
    let mut lines = vec![
        format!("addr flush dev {eth}"),
        format!("link set dev {eth} down"),
        format!("link set dev {eth} address {new_mac}"),
        format!("link add name {br} address {bridge_mac} type bridge"),
        format!("tuntap add dev {tap} mode tap vnet_hdr"),
        format!("link set dev {tap} mtu {mtu}"),
        format!("link set dev {eth} master {br}"),
        format!("link set dev {tap} master {br}"),
        // Frames the VM sent can come back in through the CNI link (a hairpin-mode port on
        // the host bridge reflects broadcasts): learning there would send the VM's traffic
        // back out. Everything not for the tap goes out through the CNI link anyway.
        format!("link set dev {eth} type bridge_slave learning off"),
        format!("link set dev {br} mtu {mtu}"),
        format!("addr add {SERVER_ID}/32 dev {br}"),
        format!("link set dev {eth} up"),
        format!("link set dev {tap} up"),
        format!("link set dev {br} up"),
    ];
    // The responder reaches the VM (unicast ACKs to renewals) and accepts its packets under
    // reverse-path filtering through a host route on the bridge.
    if let Some(ip) = &nic.ipv4 {
        lines.push(format!("route add {}/32 dev {br}", ip.address));
    }
    lines.join("\n") + "\n"
}

/// ebtables rules that keep DHCP and the responder's address between the VM and the bridge:
/// nothing of either crosses the CNI interface.
pub fn ebtables_rules(nic: &VmNic) -> Vec<Vec<String>> {
    let (eth, tap, sid) = (&nic.cni_ifname, &nic.tap, SERVER_ID);
    let drops = [
        // DHCP from outside reaches neither the responder nor the VM.
        format!("INPUT -i {eth} -p IPv4 --ip-proto udp --ip-dport 67:68"),
        format!("FORWARD -i {eth} -p IPv4 --ip-proto udp --ip-dport 67:68"),
        // The VM's DHCP and the responder's answers don't leave.
        format!("FORWARD -o {eth} -p IPv4 --ip-proto udp --ip-dport 67:68"),
        format!("OUTPUT -o {eth} -p IPv4 --ip-proto udp --ip-sport 67:68"),
        // The responder's address is not seen outside (every pod's bridge has it).
        format!("INPUT -i {eth} -p ARP --arp-ip-dst {sid}"),
        format!("OUTPUT -o {eth} -p ARP --arp-ip-src {sid}"),
        format!("FORWARD -o {eth} -p ARP --arp-ip-dst {sid}"),
        format!("FORWARD -o {eth} -p IPv4 --ip-dst {sid}"),
        format!("OUTPUT -o {eth} -p IPv4 --ip-src {sid}"),
    ];
    let mut rules: Vec<String> = drops.iter().map(|r| format!("-A {r} -j DROP")).collect();
    // Whatever route the guest has to the responder's address (a static network-config has
    // none: it goes to the gateway's MAC), frames for it are delivered to the bridge itself.
    // That carries answers to connections made from the netns (port-forward).
    rules.push(format!(
        "-t nat -A PREROUTING -i {tap} -p IPv4 --ip-dst {sid} -j redirect --redirect-target ACCEPT"
    ));
    // Interface names and addresses hold no spaces, so the words are the arguments.
    rules
        .iter()
        .map(|r| r.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> String {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfe) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `f` on a thread that has entered the netns at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, NetError> {
    let path = netns.to_owned();
    let setup_err = |what: &str, reason: String| NetError::Setup {
        netns: path.clone(),
        what: what.to_owned(),
        reason,
    };
    let file =
        std::fs::File::open(netns).map_err(|e| setup_err("cannot open it", e.to_string()))?;
    std::thread::spawn(move || -> Result<T, String> {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        f()
    })
    .join()
    .map_err(|_| setup_err("plumbing", "the netns thread panicked".to_owned()))?
    .map_err(|reason| setup_err("plumbing", reason))
}

/// A TCP socket created inside the netns (it stays there), for connecting to the VM.
pub fn tcp_socket_in(netns: &Path) -> Result<tokio::net::TcpSocket, NetError> {
    let std_socket = in_netns(netns, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| format!("socket: {e}"))?;
        s.set_nonblocking(true)
            .map_err(|e| format!("socket: {e}"))?;
        Ok(std::net::TcpStream::from(s))
    })?;
    Ok(tokio::net::TcpSocket::from_std_stream(std_socket))
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<Vec<u8>, String> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())
            .map_err(|e| format!("writing to {cmd}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Gives each CNI interface its address back (off the bridge), as the plugins left it: their
/// DEL reads the addresses from the interface (the bridge plugin tears its masquerade rules
/// down by them). Best effort: what cannot be restored is logged.
pub fn restore_for_del(netns: &Path, pod: &PodNetwork) -> Result<(), NetError> {
    let nics = pod.nics.clone();
    in_netns(netns, move || {
        let mut batch = String::new();
        for nic in &nics {
            batch.push_str(&format!("link set dev {} nomaster\n", nic.cni_ifname));
            if let Some(ip) = &nic.ipv4 {
                batch.push_str(&format!(
                    "addr replace {}/{} dev {}\n",
                    ip.address, ip.prefix_len, nic.cni_ifname
                ));
            }
        }
        if !batch.is_empty() {
            // -force: go on past a line that fails (an interface already gone).
            if let Err(e) = run("ip", &["-force", "-batch", "-"], Some(&batch)) {
                tracing::warn!(error = %e, "restoring the CNI interfaces before DEL");
            }
        }
        Ok(())
    })
}

/// Hands the pod's CNI interfaces to its VM (see the module doc) and says what the VM gets.
/// On error the netns may be half-plumbed: the caller removes it.
pub fn attach_vm(
    netns: &Path,
    result: &CniResult,
    default_ifname: &str,
    dns: DnsInfo,
) -> Result<PodNetwork, NetError> {
    let result = result.clone();
    let default_ifname = default_ifname.to_owned();
    let nics = in_netns(netns, move || {
        let links = parse_links(&run("ip", &["-j", "addr", "show"], None)?)?;
        let routes = parse_routes(&run("ip", &["-j", "-4", "route", "show"], None)?)?;
        let nics = plan_nics(&result, &links, &routes, &default_ifname)?;
        let mut batch = String::new();
        for nic in &nics {
            batch.push_str(&ip_batch(nic, &random_mac(), &random_mac()));
        }
        if !batch.is_empty() {
            run("ip", &["-batch", "-"], Some(&batch))?;
        }
        for nic in &nics {
            for rule in ebtables_rules(nic) {
                let args: Vec<&str> = rule.iter().map(String::as_str).collect();
                run("ebtables", &args, None)?;
            }
            // The bridge and tap need no IPv6 of their own (no router solicitations leaking).
            for dev in [&nic.bridge, &nic.tap] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
            }
        }
        Ok(nics)
    })?;
    Ok(PodNetwork { nics, dns })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00",
        "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
        {"ifindex":3,"ifname":"eth0","mtu":1450,"address":"AA:BB:CC:00:00:05",
        "addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global"},
                     {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
        {"ifindex":4,"ifname":"net1","mtu":1500,"address":"aa:bb:cc:00:01:05","addr_info":[]}]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]},
        {"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.5"},
        {"dst":"192.168.7.0/24","gateway":"10.88.0.254","dev":"eth0"}]"#;

    fn result(ifaces: &[(&str, &str)]) -> CniResult {
        let mut r = CniResult::empty();
        r.interfaces = ifaces
            .iter()
            .map(|(n, s)| crate::cni::result::Interface {
                name: (*n).into(),
                mac: String::new(),
                sandbox: (*s).into(),
            })
            .collect();
        r
    }

    #[test]
    fn nics_follow_the_result_and_read_the_netns() {
        let links = parse_links(LINKS.as_bytes()).unwrap();
        let routes = parse_routes(ROUTES.as_bytes()).unwrap();
        let r = result(&[
            ("cni0", ""),
            ("veth9", ""),
            ("eth0", "/ns"),
            ("net1", "/ns"),
        ]);
        let nics = plan_nics(&r, &links, &routes, "eth0").unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(
            nics[0],
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
            }
        );
        assert_eq!(nics[1].bridge, "vbr1");
        assert_eq!(nics[1].ipv4, None);
        // An old-style result names no interface: the attachment's is used.
        let nics = plan_nics(&CniResult::empty(), &links, &routes, "eth0").unwrap();
        assert_eq!(nics.len(), 1);
        // A loopback-only pod has no NIC.
        assert!(
            plan_nics(&CniResult::empty(), &links[..1], &[], "eth0")
                .unwrap()
                .is_empty()
        );
        let e = plan_nics(&result(&[("eth7", "/ns")]), &links, &routes, "eth0").unwrap_err();
        assert!(e.contains("eth7"), "{e}");
    }

    #[test]
    fn plumbing_is_golden() {
        let links = parse_links(LINKS.as_bytes()).unwrap();
        let nics = plan_nics(&CniResult::empty(), &links, &[], "eth0").unwrap();
        assert_eq!(
            ip_batch(&nics[0], "02:00:00:00:00:aa", "02:00:00:00:00:bb"),
            "addr flush dev eth0\n\
             link set dev eth0 down\n\
             link set dev eth0 address 02:00:00:00:00:aa\n\
             link add name vbr0 address 02:00:00:00:00:bb type bridge\n\
             tuntap add dev vtap0 mode tap vnet_hdr\n\
             link set dev vtap0 mtu 1450\n\
             link set dev eth0 master vbr0\n\
             link set dev vtap0 master vbr0\n\
             link set dev eth0 type bridge_slave learning off\n\
             link set dev vbr0 mtu 1450\n\
             addr add 169.254.254.2/32 dev vbr0\n\
             link set dev eth0 up\n\
             link set dev vtap0 up\n\
             link set dev vbr0 up\n\
             route add 10.88.0.5/32 dev vbr0\n"
        );
        let rules = ebtables_rules(&nics[0]);
        assert_eq!(rules.len(), 10);
        assert_eq!(
            rules[9].join(" "),
            "-t nat -A PREROUTING -i vtap0 -p IPv4 --ip-dst 169.254.254.2 -j redirect --redirect-target ACCEPT"
        );
        assert_eq!(
            rules[0].join(" "),
            "-A INPUT -i eth0 -p IPv4 --ip-proto udp --ip-dport 67:68 -j DROP"
        );
        assert_eq!(
            rules[8].join(" "),
            "-A OUTPUT -o eth0 -p IPv4 --ip-src 169.254.254.2 -j DROP"
        );
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            let first = u8::from_str_radix(&m[..2], 16).unwrap();
            assert_eq!(first & 0x03, 0x02, "{m}");
            assert_eq!(m.len(), 17);
        }
    }
}
