//! What to answer: the leases of a pod's VM and the pure function [`respond`] that turns a
//! client message into a reply (RFC 2131 sections 4.1 and 4.3).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::Name;
use ipnet::Ipv4Net;

use crate::packet::{self, DhcpOption, Message, MessageType, Opcode};

/// The UDP port DHCP servers listen on.
pub const SERVER_PORT: u16 = 67;
/// The UDP port DHCP clients listen on.
pub const CLIENT_PORT: u16 = 68;

/// The address and parameters handed to one VM interface, identified by its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The MAC of the VM's interface; only this client is answered.
    pub mac: [u8; 6],
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// The prefix length of the pod subnet.
    pub prefix_len: u8,
    /// The default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Further routes; a 0.0.0.0/0 entry replaces the default route via `gateway`.
    pub routes: Vec<Route>,
    /// DNS servers.
    pub dns_servers: Vec<Ipv4Addr>,
    /// DNS search domains; the first one is also sent as the domain name.
    pub search: Vec<String>,
    /// The interface MTU.
    pub mtu: Option<u16>,
    /// The host name.
    pub hostname: Option<String>,
}

/// A route handed to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination network.
    pub dst: Ipv4Addr,
    /// The destination prefix length.
    pub prefix_len: u8,
    /// The next hop; `None` for a destination on the link.
    pub gateway: Option<Ipv4Addr>,
}

/// What a responder answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server identifier (option 54): an address of the responder's interface that the VM
    /// reaches through the on-link /32 route every reply carries.
    pub server_id: Ipv4Addr,
    /// The lease time in seconds; `u32::MAX` is infinite.
    pub lease_secs: u32,
    /// The leases, at most one per MAC.
    pub leases: Vec<Lease>,
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply.
    pub message: Message,
    /// Its destination: the client's address or the limited broadcast, port 68.
    pub dest: SocketAddrV4,
}

/// Why a [`Config`] cannot be served as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two leases name the same MAC.
    #[error("more than one lease for MAC {0}")]
    DuplicateMac(Mac),
    /// A prefix length is over 32.
    #[error("prefix length {prefix_len} in the lease for MAC {mac} is over 32")]
    PrefixLength {
        /// The lease's MAC.
        mac: Mac,
        /// The offending prefix length.
        prefix_len: u8,
    },
    /// A search domain is not a domain name: empty, an empty label, a label over 63 bytes,
    /// over 255 bytes encoded, or a character other than letters, digits, `-` and `_`.
    #[error("search domain {name:?} in the lease for MAC {mac} is not a valid domain name")]
    SearchDomain {
        /// The lease's MAC.
        mac: Mac,
        /// The offending name.
        name: String,
    },
    /// The host name is empty.
    #[error("host name in the lease for MAC {0} is empty")]
    EmptyHostName(Mac),
    /// The lease time is zero.
    #[error("lease time is zero")]
    ZeroLeaseTime,
}

/// A MAC address, displayed as `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Config {
    /// Checks what [`respond`] would otherwise silently clamp or leave out.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_secs == 0 {
            return Err(ConfigError::ZeroLeaseTime);
        }
        for (index, lease) in self.leases.iter().enumerate() {
            let mac = Mac(lease.mac);
            if self.leases[..index]
                .iter()
                .any(|other| other.mac == lease.mac)
            {
                return Err(ConfigError::DuplicateMac(mac));
            }
            let prefixes = std::iter::once(lease.prefix_len)
                .chain(lease.routes.iter().map(|route| route.prefix_len));
            for prefix_len in prefixes {
                if prefix_len > 32 {
                    return Err(ConfigError::PrefixLength { mac, prefix_len });
                }
            }
            if let Some(name) = lease
                .search
                .iter()
                .find(|name| search_domain(name).is_none())
            {
                return Err(ConfigError::SearchDomain {
                    mac,
                    name: name.clone(),
                });
            }
            if lease.hostname.as_ref().is_some_and(String::is_empty) {
                return Err(ConfigError::EmptyHostName(mac));
            }
        }
        Ok(())
    }
}

/// The reply to a client message, or `None` when the message is not for us.
///
/// Only BOOTREQUESTs that come directly (not relayed) from a MAC with a lease are answered:
/// DHCPDISCOVER gets a DHCPOFFER; DHCPREQUEST gets a DHCPACK if it asks for the lease's IP
/// (option 50, or `ciaddr` when renewing or rebinding), nothing if it names another server,
/// a DHCPNAK otherwise; DHCPINFORM gets a DHCPACK without address or lease time.
/// DHCPDECLINE and DHCPRELEASE need no answer.
pub fn respond(config: &Config, req: &Message) -> Option<Reply> {
    if req.opcode() != Opcode::BootRequest || !req.giaddr().is_unspecified() {
        return None;
    }
    let mac = packet::client_mac(req)?;
    let lease = config.leases.iter().find(|lease| lease.mac == mac)?;
    match req.opts().msg_type()? {
        MessageType::Discover => Some(reply(config, lease, req, Kind::Offer)),
        MessageType::Request => {
            if packet::server_id(req).is_some_and(|id| id != config.server_id) {
                return None;
            }
            let requested = packet::requested_ip(req)
                .or_else(|| (!req.ciaddr().is_unspecified()).then_some(req.ciaddr()));
            let kind = if requested == Some(lease.ip) {
                Kind::Ack
            } else {
                Kind::Nak
            };
            Some(reply(config, lease, req, kind))
        }
        MessageType::Inform => Some(reply(config, lease, req, Kind::InformAck)),
        // DHCPDECLINE, DHCPRELEASE, server messages, leasequery and unknown types.
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Offer,
    Ack,
    InformAck,
    Nak,
}

fn reply(config: &Config, lease: &Lease, req: &Message, kind: Kind) -> Reply {
    let message_type = match kind {
        Kind::Offer => MessageType::Offer,
        Kind::Ack | Kind::InformAck => MessageType::Ack,
        Kind::Nak => MessageType::Nak,
    };
    // The request's htype, hlen, xid, flags, giaddr, chaddr and magic cookie carry over.
    let mut message = req.clone();
    message
        .set_opcode(Opcode::BootReply)
        .set_hops(0)
        .set_secs(0)
        // RFC 2131 table 3: ciaddr only in a DHCPACK, copied from the request.
        .set_ciaddr(match kind {
            Kind::Ack | Kind::InformAck => req.ciaddr(),
            Kind::Offer | Kind::Nak => Ipv4Addr::UNSPECIFIED,
        })
        .set_yiaddr(match kind {
            Kind::Offer | Kind::Ack => lease.ip,
            Kind::InformAck | Kind::Nak => Ipv4Addr::UNSPECIFIED,
        })
        .set_siaddr(Ipv4Addr::UNSPECIFIED);
    message.clear_sname();
    message.clear_fname();
    let reply_options = match kind {
        Kind::Nak => vec![
            DhcpOption::MessageType(message_type),
            DhcpOption::ServerIdentifier(config.server_id),
            DhcpOption::Message(format!("the address for this client is {}", lease.ip)),
        ],
        Kind::Offer | Kind::Ack | Kind::InformAck => {
            lease_options(config, lease, message_type, kind != Kind::InformAck)
        }
    };
    message.set_opts(reply_options.into_iter().collect());
    // RFC 2131 section 4.1: a DHCPACK goes to ciaddr when the client has one; everything
    // else, DHCPNAK included, is broadcast because the client cannot receive unicast yet.
    let dest_ip = if message_type == MessageType::Ack && !req.ciaddr().is_unspecified() {
        req.ciaddr()
    } else {
        Ipv4Addr::BROADCAST
    };
    Reply {
        message,
        dest: SocketAddrV4::new(dest_ip, CLIENT_PORT),
    }
}

/// The options of an OFFER or ACK; `dhcproto` writes them in increasing code order.
fn lease_options(
    config: &Config,
    lease: &Lease,
    message_type: MessageType,
    with_lease_time: bool,
) -> Vec<DhcpOption> {
    let mut out = vec![
        DhcpOption::MessageType(message_type),
        DhcpOption::ServerIdentifier(config.server_id),
    ];
    if with_lease_time {
        out.push(DhcpOption::AddressLeaseTime(config.lease_secs));
        if config.lease_secs != u32::MAX {
            let t2 = u64::from(config.lease_secs) * 7 / 8;
            out.push(DhcpOption::Renewal(config.lease_secs / 2));
            out.push(DhcpOption::Rebinding(u32::try_from(t2).unwrap_or(u32::MAX)));
        }
    }
    let subnet = net(lease.ip, lease.prefix_len);
    out.push(DhcpOption::SubnetMask(subnet.netmask()));
    out.push(DhcpOption::BroadcastAddr(subnet.broadcast()));
    if let Some(gateway) = lease.gateway {
        out.push(DhcpOption::Router(vec![gateway]));
    }
    out.push(DhcpOption::ClasslessStaticRoute(classless_routes(
        config, lease,
    )));
    if !lease.dns_servers.is_empty() {
        out.push(DhcpOption::DomainNameServer(lease.dns_servers.clone()));
    }
    if let Some(domain) = lease.search.first() {
        out.push(DhcpOption::DomainName(domain.clone()));
        let names = lease.search.iter().filter_map(|name| search_domain(name));
        out.push(DhcpOption::DomainSearch(names.collect()));
    }
    if let Some(mtu) = lease.mtu {
        out.push(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(hostname) = lease.hostname.as_ref().filter(|name| !name.is_empty()) {
        out.push(DhcpOption::Hostname(hostname.clone()));
    }
    out
}

/// The network `addr/prefix_len`; prefix lengths over 32 count as 32.
fn net(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, prefix_len.min(32)).unwrap_or_default()
}

/// A search domain as option 119 carries it, or `None` if it is not a valid domain name: empty,
/// an empty label (other than a trailing dot), a label over 63 bytes, over 255 bytes encoded,
/// or characters other than letters, digits, `-` and `_`.
fn search_domain(name: &str) -> Option<Name> {
    let mut name = Name::from_ascii(name).ok()?;
    // On the wire every name is absolute: make it so here too, so that a decoded reply
    // compares equal to the one sent.
    name.set_fqdn(true);
    (!name.is_root()).then_some(name)
}

/// Option 121: a client that takes it ignores option 3 (RFC 3442 section 1), so it carries the
/// on-link host route to the server first (for unicast renewals), then the lease's routes, then
/// the default route via the gateway unless the lease has its own. Router 0.0.0.0 marks a
/// destination on the link; common clients (systemd-networkd, NetworkManager, dhclient, udhcpc)
/// read it so. Host bits past the prefix length are dropped: RFC 3442 sends only the
/// significant octets of the destination, and `dhcproto` writes them as they are.
fn classless_routes(config: &Config, lease: &Lease) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let mut routes = vec![(net(config.server_id, 32), Ipv4Addr::UNSPECIFIED)];
    routes.extend(lease.routes.iter().map(|route| {
        (
            net(route.dst, route.prefix_len).trunc(),
            route.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
        )
    }));
    if let Some(gateway) = lease.gateway
        && !lease.routes.iter().any(|route| route.prefix_len == 0)
    {
        routes.push((net(Ipv4Addr::UNSPECIFIED, 0), gateway));
    }
    routes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use dhcproto::v4::{Flags, OptionCode};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::packet::{decode, encode};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER_ID: Ipv4Addr = Ipv4Addr::new(169, 254, 254, 2);
    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);

    fn config() -> Config {
        Config {
            server_id: SERVER_ID,
            lease_secs: 3600,
            leases: vec![Lease {
                mac: MAC,
                ip: POD_IP,
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                routes: vec![Route {
                    dst: Ipv4Addr::new(192, 168, 50, 0),
                    prefix_len: 24,
                    gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                }],
                dns_servers: vec![Ipv4Addr::new(10, 77, 0, 53)],
                search: vec!["svc.test".into(), "test".into()],
                mtu: Some(1400),
                hostname: Some("vm-1".into()),
            }],
        }
    }

    fn request(message_type: MessageType, mac: [u8; 6]) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut message = Message::new_with_id(
            0x1234_5678,
            unspecified,
            unspecified,
            unspecified,
            unspecified,
            &mac,
        );
        message.set_secs(3);
        message
            .opts_mut()
            .insert(DhcpOption::MessageType(message_type));
        let wanted = [1, 3, 6, 12, 15, 26, 28, 119, 121].map(OptionCode::from);
        message
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(wanted.to_vec()));
        message
    }

    fn with(mut message: Message, option: DhcpOption) -> Message {
        message.opts_mut().insert(option);
        message
    }

    fn opt(message: &Message, code: OptionCode) -> Option<&DhcpOption> {
        message.opts().get(code)
    }

    /// The value of option `code` in an encoded message, all its instances concatenated, and
    /// how many instances there are.
    fn wire_option(bytes: &[u8], code: u8) -> (Vec<u8>, usize) {
        let (mut value, mut instances, mut at) = (Vec::new(), 0, 240);
        while bytes[at] != 255 {
            let len = usize::from(bytes[at + 1]);
            if bytes[at] == code {
                value.extend_from_slice(&bytes[at + 2..at + 2 + len]);
                instances += 1;
            }
            at += 2 + len;
        }
        (value, instances)
    }

    fn offer_bytes(config: &Config) -> Vec<u8> {
        let reply = respond(config, &request(MessageType::Discover, MAC)).unwrap();
        encode(&reply.message).unwrap()
    }

    fn broadcast() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    }

    #[test]
    fn discover_gets_an_offer_of_the_lease() {
        let mut req = request(MessageType::Discover, MAC);
        req.set_flags(Flags::default().set_broadcast());
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.dest, broadcast());
        let offer = &reply.message;
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), req.xid());
        assert!(offer.flags().broadcast());
        assert_eq!(offer.chaddr(), req.chaddr());
        assert_eq!(offer.yiaddr(), POD_IP);
        assert_eq!(offer.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(packet::server_id(offer), Some(SERVER_ID));
        let expected = [
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::Renewal(1800),
            DhcpOption::Rebinding(3150),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 77, 0, 255)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 77, 0, 1)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 77, 0, 53)]),
            DhcpOption::DomainName("svc.test".into()),
            DhcpOption::InterfaceMtu(1400),
            DhcpOption::Hostname("vm-1".into()),
            DhcpOption::DomainSearch(vec![
                Name::from_ascii("svc.test.").unwrap(),
                Name::from_ascii("test.").unwrap(),
            ]),
        ];
        for option in expected {
            assert_eq!(opt(offer, OptionCode::from(&option)), Some(&option));
        }
        let (routes, _) = wire_option(&encode(offer).unwrap(), 121);
        assert_eq!(
            routes,
            [
                32, 169, 254, 254, 2, 0, 0, 0, 0, // the server, on-link
                24, 192, 168, 50, 10, 77, 0, 1, // the lease's route
                0, 10, 77, 0, 1, // the default route
            ]
        );
    }

    /// Every byte of an OFFER, laid out by hand from RFC 2131 figure 1, RFC 2132, RFC 3397 and
    /// RFC 3442. dhcproto writes the options in increasing code order and compresses the
    /// domain search list (RFC 3397 section 2).
    #[test]
    fn offer_encodes_to_the_expected_bytes() {
        let reply = respond(&config(), &request(MessageType::Discover, MAC)).unwrap();
        let mut expected: Vec<u8> = vec![
            2, 1, 6, 0, // op BOOTREPLY, htype Ethernet, hlen 6, hops 0
            0x12, 0x34, 0x56, 0x78, // xid
            0, 0, 0, 0, // secs, flags
            0, 0, 0, 0, // ciaddr
            10, 77, 0, 5, // yiaddr
            0, 0, 0, 0, // siaddr
            0, 0, 0, 0, // giaddr
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // chaddr: the MAC...
        ];
        expected.extend([0; 10]); // ...padded to 16 bytes
        expected.extend([0; 64]); // sname
        expected.extend([0; 128]); // file
        expected.extend([
            99, 130, 83, 99, // magic cookie
            1, 4, 255, 255, 255, 0, // subnet mask
            3, 4, 10, 77, 0, 1, // router
            6, 4, 10, 77, 0, 53, // DNS server
            12, 4, b'v', b'm', b'-', b'1', // host name
            15, 8, b's', b'v', b'c', b'.', b't', b'e', b's', b't', // domain name
            26, 2, 0x05, 0x78, // MTU 1400
            28, 4, 10, 77, 0, 255, // broadcast address
            51, 4, 0, 0, 0x0e, 0x10, // lease time 3600
            53, 1, 2, // DHCPOFFER
            54, 4, 169, 254, 254, 2, // server id
            58, 4, 0, 0, 0x07, 0x08, // T1 1800
            59, 4, 0, 0, 0x0c, 0x4e, // T2 3150
            119, 12, // domain search:
            3, b's', b'v', b'c', 4, b't', b'e', b's', b't', 0, // svc.test
            0xc0, 4, // test: a pointer to offset 4, the "test" of svc.test
            121, 22, // classless static routes:
            32, 169, 254, 254, 2, 0, 0, 0, 0, // 169.254.254.2/32 on-link
            24, 192, 168, 50, 10, 77, 0, 1, // 192.168.50.0/24 via 10.77.0.1
            0, 10, 77, 0, 1,   // 0.0.0.0/0 via 10.77.0.1
            255, // end
        ]);
        assert_eq!(expected.len(), 350);
        assert_eq!(encode(&reply.message).unwrap(), expected);
        assert_eq!(decode(&expected).unwrap(), reply.message);
    }

    /// The destination descriptors in the table of RFC 3442 section 3, each followed by a
    /// router, as the reply carries them after the server's on-link route.
    #[test]
    fn classless_routes_follow_the_rfc_3442_table() {
        let cases: [([u8; 4], u8, &[u8]); 7] = [
            ([0, 0, 0, 0], 0, &[0]),
            ([10, 0, 0, 0], 8, &[8, 10]),
            ([10, 0, 0, 0], 24, &[24, 10, 0, 0]),
            ([10, 17, 0, 0], 16, &[16, 10, 17]),
            ([10, 27, 129, 0], 24, &[24, 10, 27, 129]),
            ([10, 229, 0, 128], 25, &[25, 10, 229, 0, 128]),
            ([10, 198, 122, 47], 32, &[32, 10, 198, 122, 47]),
        ];
        for (dst, prefix_len, descriptor) in cases {
            let mut config = config();
            config.leases[0].gateway = None;
            config.leases[0].routes = vec![Route {
                dst: dst.into(),
                prefix_len,
                gateway: Some(Ipv4Addr::new(1, 2, 3, 4)),
            }];
            let (routes, _) = wire_option(&offer_bytes(&config), 121);
            let mut expected = vec![32, 169, 254, 254, 2, 0, 0, 0, 0];
            expected.extend_from_slice(descriptor);
            expected.extend_from_slice(&[1, 2, 3, 4]);
            assert_eq!(routes, expected, "{dst:?}/{prefix_len}");
        }
    }

    #[test]
    fn classless_routes_drop_host_bits() {
        let mut config = config();
        config.leases[0].gateway = None;
        config.leases[0].routes = [
            ([10, 17, 3, 4], 16),
            ([10, 27, 129, 0], 18),
            ([10, 1, 2, 3], 9),
        ]
        .map(|(dst, prefix_len)| Route {
            dst: dst.into(),
            prefix_len,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        })
        .to_vec();
        let (routes, _) = wire_option(&offer_bytes(&config), 121);
        assert_eq!(
            routes[9..],
            [
                16, 10, 17, 10, 0, 0, 1, //
                18, 10, 27, 128, 10, 0, 0, 1, //
                9, 10, 0, 10, 0, 0, 1,
            ]
        );
    }

    /// The example of RFC 3397 section 3, compressed as the RFC shows it.
    #[test]
    fn domain_search_follows_the_rfc_3397_example() {
        let mut config = config();
        config.leases[0].search = vec!["eng.apple.com".into(), "marketing.apple.com.".into()];
        let (search, instances) = wire_option(&offer_bytes(&config), 119);
        let mut expected = vec![3];
        expected.extend_from_slice(b"eng");
        expected.push(5);
        expected.extend_from_slice(b"apple");
        expected.push(3);
        expected.extend_from_slice(b"com");
        expected.push(0);
        expected.push(9);
        expected.extend_from_slice(b"marketing");
        expected.extend_from_slice(&[0xc0, 4]);
        assert_eq!((search, instances), (expected, 1));
    }

    #[test]
    fn names_that_are_not_domain_names_are_left_out_of_the_search_list() {
        assert_eq!(search_domain(""), None);
        assert_eq!(search_domain("."), None);
        assert_eq!(search_domain("a..b"), None);
        assert_eq!(search_domain("a b.c"), None);
        assert_eq!(search_domain(&"x".repeat(64)), None);
        assert!(search_domain(&"x".repeat(63)).is_some());
        assert_eq!(search_domain(&vec!["y".repeat(60); 5].join(".")), None);
        let mut config = config();
        config.leases[0].search = vec!["a..b".into(), "test".into()];
        let (search, _) = wire_option(&offer_bytes(&config), 119);
        assert_eq!(search, [4, b't', b'e', b's', b't', 0]);
        let (domain, _) = wire_option(&offer_bytes(&config), 15);
        assert_eq!(domain, b"a..b", "the domain name is sent as it is");
    }

    #[test]
    fn masks_and_broadcast_addresses() {
        let cases = [
            (0, [0, 0, 0, 0], [255, 255, 255, 255]),
            (1, [128, 0, 0, 0], [127, 255, 255, 255]),
            (20, [255, 255, 240, 0], [10, 77, 15, 255]),
            (25, [255, 255, 255, 128], [10, 77, 0, 127]),
            (32, [255, 255, 255, 255], [10, 77, 0, 5]),
            (33, [255, 255, 255, 255], [10, 77, 0, 5]),
        ];
        for (prefix_len, mask, broadcast) in cases {
            let mut config = config();
            config.leases[0].prefix_len = prefix_len;
            let bytes = offer_bytes(&config);
            assert_eq!(wire_option(&bytes, 1).0, mask, "/{prefix_len}");
            assert_eq!(wire_option(&bytes, 28).0, broadcast, "/{prefix_len}");
        }
    }

    #[test]
    fn request_in_selecting_state_gets_an_ack() {
        let req = with(
            with(
                request(MessageType::Request, MAC),
                DhcpOption::RequestedIpAddress(POD_IP),
            ),
            DhcpOption::ServerIdentifier(SERVER_ID),
        );
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(reply.message.yiaddr(), POD_IP);
        assert_eq!(reply.message.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(reply.dest, broadcast());
        let offer = respond(&config(), &request(MessageType::Discover, MAC)).unwrap();
        let mut ack_options = reply.message.opts().clone();
        let mut offer_options = offer.message.opts().clone();
        ack_options.remove(OptionCode::MessageType);
        offer_options.remove(OptionCode::MessageType);
        assert_eq!(
            ack_options, offer_options,
            "an ACK carries what the OFFER promised"
        );
    }

    #[test]
    fn request_for_another_server_gets_nothing() {
        let req = with(
            with(
                request(MessageType::Request, MAC),
                DhcpOption::RequestedIpAddress(POD_IP),
            ),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)),
        );
        assert_eq!(respond(&config(), &req), None);
    }

    #[test]
    fn init_reboot_request_for_another_address_gets_a_broadcast_nak() {
        let req = with(
            request(MessageType::Request, MAC),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 9)),
        );
        let reply = respond(&config(), &req).unwrap();
        let nak = &reply.message;
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(packet::server_id(nak), Some(SERVER_ID));
        assert_eq!(opt(nak, OptionCode::AddressLeaseTime), None);
        assert_eq!(opt(nak, OptionCode::ClasslessStaticRoute), None);
        assert!(opt(nak, OptionCode::Message).is_some());
        assert_eq!(reply.dest, broadcast());
    }

    #[test]
    fn init_reboot_request_for_the_lease_gets_an_ack() {
        let req = with(
            request(MessageType::Request, MAC),
            DhcpOption::RequestedIpAddress(POD_IP),
        );
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(reply.dest, broadcast());
    }

    #[test]
    fn request_without_any_address_gets_a_nak() {
        let reply = respond(&config(), &request(MessageType::Request, MAC)).unwrap();
        assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Nak));
    }

    #[test]
    fn renewing_request_gets_a_unicast_ack() {
        let mut req = request(MessageType::Request, MAC);
        req.set_ciaddr(POD_IP);
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(reply.message.ciaddr(), POD_IP);
        assert_eq!(reply.message.yiaddr(), POD_IP);
        assert_eq!(reply.dest, SocketAddrV4::new(POD_IP, 68));
    }

    #[test]
    fn renewing_request_from_a_stale_address_gets_a_broadcast_nak() {
        let mut req = request(MessageType::Request, MAC);
        req.set_ciaddr(Ipv4Addr::new(10, 77, 0, 6));
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(reply.dest, broadcast());
    }

    #[test]
    fn inform_gets_an_ack_without_address_or_lease_time() {
        let mut req = request(MessageType::Inform, MAC);
        req.set_ciaddr(POD_IP);
        let reply = respond(&config(), &req).unwrap();
        let ack = &reply.message;
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.ciaddr(), POD_IP);
        assert_eq!(opt(ack, OptionCode::AddressLeaseTime), None);
        assert_eq!(opt(ack, OptionCode::Renewal), None);
        assert_eq!(opt(ack, OptionCode::Rebinding), None);
        assert_eq!(packet::server_id(ack), Some(SERVER_ID));
        assert_eq!(
            opt(ack, OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 77, 0, 53
            )]))
        );
        assert_eq!(reply.dest, SocketAddrV4::new(POD_IP, 68));
    }

    #[test]
    fn unknown_macs_are_ignored() {
        let other = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];
        for message_type in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Inform,
        ] {
            assert_eq!(respond(&config(), &request(message_type, other)), None);
        }
    }

    #[test]
    fn relayed_messages_are_ignored() {
        let mut req = request(MessageType::Discover, MAC);
        req.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(respond(&config(), &req), None);
    }

    #[test]
    fn release_decline_and_server_messages_get_nothing() {
        for message_type in [
            MessageType::Release,
            MessageType::Decline,
            MessageType::Offer,
            MessageType::Ack,
            MessageType::Nak,
            MessageType::LeaseQuery,
            MessageType::Unknown(99),
        ] {
            assert_eq!(respond(&config(), &request(message_type, MAC)), None);
        }
        let mut reply_op = request(MessageType::Discover, MAC);
        reply_op.set_opcode(Opcode::BootReply);
        assert_eq!(respond(&config(), &reply_op), None);
        let mut no_type = request(MessageType::Discover, MAC);
        no_type.opts_mut().clear();
        assert_eq!(respond(&config(), &no_type), None);
    }

    #[test]
    fn an_explicit_default_route_replaces_the_gateway_one() {
        let mut config = config();
        config.leases[0].routes.push(Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(Ipv4Addr::new(10, 77, 0, 254)),
        });
        let (routes, _) = wire_option(&offer_bytes(&config), 121);
        assert_eq!(
            routes,
            [
                32, 169, 254, 254, 2, 0, 0, 0, 0, //
                24, 192, 168, 50, 10, 77, 0, 1, //
                0, 10, 77, 0, 254,
            ]
        );
    }

    #[test]
    fn a_bare_lease_carries_only_the_essentials() {
        let config = Config {
            server_id: SERVER_ID,
            lease_secs: u32::MAX,
            leases: vec![Lease {
                mac: MAC,
                ip: POD_IP,
                prefix_len: 32,
                gateway: None,
                routes: vec![Route {
                    dst: Ipv4Addr::new(10, 77, 0, 0),
                    prefix_len: 16,
                    gateway: None,
                }],
                dns_servers: vec![],
                search: vec![],
                mtu: None,
                hostname: None,
            }],
        };
        let reply = respond(&config, &request(MessageType::Discover, MAC)).unwrap();
        let codes: Vec<u8> = reply
            .message
            .opts()
            .iter()
            .map(|(code, _)| u8::from(*code))
            .collect();
        assert_eq!(codes, [1, 28, 51, 53, 54, 121]);
        let (routes, _) = wire_option(&encode(&reply.message).unwrap(), 121);
        assert_eq!(
            routes,
            [32, 169, 254, 254, 2, 0, 0, 0, 0, 16, 10, 77, 0, 0, 0, 0]
        );
    }

    #[test]
    fn many_routes_and_search_domains_split_into_several_options() {
        let mut config = config();
        config.leases[0].routes = (0..40)
            .map(|i| Route {
                dst: Ipv4Addr::new(10, 100, i, 0),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
            })
            .collect();
        // Names without a common suffix, so that compression cannot keep them under 255 bytes.
        config.leases[0].search = (0..20).map(|i| format!("ns{i}.cluster{i}")).collect();
        let reply = respond(&config, &request(MessageType::Discover, MAC)).unwrap();
        let bytes = encode(&reply.message).unwrap();
        let (routes, route_instances) = wire_option(&bytes, 121);
        let (search, search_instances) = wire_option(&bytes, 119);
        assert_eq!(routes.len(), 9 + 40 * 8 + 5);
        assert!(search.len() > 255);
        assert_eq!((route_instances, search_instances), (2, 2));
        let parsed = decode(&bytes).unwrap();
        assert_eq!(parsed, reply.message);
        let Some(DhcpOption::DomainSearch(names)) = opt(&parsed, OptionCode::DomainSearch) else {
            panic!("no domain search list");
        };
        assert_eq!(names.len(), 20);
        let Some(DhcpOption::ClasslessStaticRoute(routes)) =
            opt(&parsed, OptionCode::ClasslessStaticRoute)
        else {
            panic!("no classless static routes");
        };
        assert_eq!(routes.len(), 42);
    }

    #[test]
    fn validate_reports_what_respond_would_clamp() {
        assert_eq!(config().validate(), Ok(()));
        let mut bad = config();
        bad.leases.push(bad.leases[0].clone());
        assert_eq!(bad.validate(), Err(ConfigError::DuplicateMac(Mac(MAC))));
        let mut bad = config();
        bad.leases[0].routes[0].prefix_len = 33;
        assert_eq!(
            bad.validate(),
            Err(ConfigError::PrefixLength {
                mac: Mac(MAC),
                prefix_len: 33
            })
        );
        let mut bad = config();
        bad.leases[0].search.push("a..b".into());
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::SearchDomain { .. })
        ));
        let mut bad = config();
        bad.leases[0].hostname = Some(String::new());
        assert_eq!(bad.validate(), Err(ConfigError::EmptyHostName(Mac(MAC))));
        let mut bad = config();
        bad.lease_secs = 0;
        assert_eq!(bad.validate(), Err(ConfigError::ZeroLeaseTime));
        assert_eq!(
            ConfigError::DuplicateMac(Mac(MAC)).to_string(),
            "more than one lease for MAC 52:54:00:12:34:56"
        );
    }

    /// Random bytes and random mutations of valid requests: `decode` and `respond` never
    /// panic, whatever decodes encodes and decodes back to the same message, and so does every
    /// reply.
    #[test]
    fn no_input_makes_decode_or_respond_panic() {
        let config = config();
        let mut rng = StdRng::seed_from_u64(0x5eed_d4c9);
        let valid: Vec<Vec<u8>> = [
            request(MessageType::Discover, MAC),
            with(
                request(MessageType::Request, MAC),
                DhcpOption::RequestedIpAddress(POD_IP),
            ),
            request(MessageType::Inform, MAC),
        ]
        .iter()
        .map(|message| encode(message).unwrap())
        .collect();
        let mut decoded = 0;
        let mut answered = 0;
        for round in 0..40_000 {
            let bytes = if round < 20_000 {
                // Random bytes, half of them behind a valid header so the options get read.
                let len = rng.random_range(0..700);
                let mut bytes = vec![0; len];
                rng.fill(&mut bytes[..]);
                if rng.random_bool(0.5) && len > 240 {
                    bytes[..240].copy_from_slice(&valid[0][..240]);
                }
                bytes
            } else {
                let mut bytes = valid[rng.random_range(0..valid.len())].clone();
                for _ in 0..rng.random_range(1..6) {
                    match rng.random_range(0..4) {
                        0 => {
                            let at = rng.random_range(0..bytes.len());
                            bytes[at] = rng.random();
                        }
                        1 if bytes.len() > 240 => {
                            let at = rng.random_range(240..bytes.len());
                            bytes[at] = rng.random();
                        }
                        2 => bytes.truncate(rng.random_range(0..=bytes.len())),
                        _ => {
                            let at = rng.random_range(240.min(bytes.len())..=bytes.len());
                            bytes.insert(at, rng.random());
                        }
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                bytes
            };
            let Ok(message) = decode(&bytes) else {
                continue;
            };
            decoded += 1;
            let again = encode(&message).unwrap();
            assert_eq!(decode(&again).unwrap(), message);
            if let Some(reply) = respond(&config, &message) {
                answered += 1;
                let encoded = encode(&reply.message).unwrap();
                assert_eq!(decode(&encoded).unwrap(), reply.message);
            }
        }
        assert!(decoded > 5_000, "only {decoded} inputs decoded");
        assert!(answered > 1_000, "only {answered} inputs answered");
    }
}
