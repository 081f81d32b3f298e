//! The options a reply carries, as typed values with pure encoders (RFC 2132, RFC 3397,
//! RFC 3442). [`DhcpOption::to_raw`] turns one into the [`RawOption`] the packet codec writes;
//! values longer than 255 bytes are split by the codec (RFC 3396).

use std::net::Ipv4Addr;

use crate::packet::{MessageType, RawOption, code};

/// A route in option 121: `dst/prefix_len` via `router`. Router 0.0.0.0 marks a destination
/// on the link; common clients (systemd-networkd, NetworkManager, dhclient) read it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClasslessRoute {
    /// The destination network; bits past `prefix_len` are ignored.
    pub dst: Ipv4Addr,
    /// The destination prefix length, 0 to 32 (larger values count as 32).
    pub prefix_len: u8,
    /// The next hop, or 0.0.0.0 for on-link.
    pub router: Ipv4Addr,
}

/// An option we put in replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpOption {
    /// 1: the subnet mask.
    SubnetMask(Ipv4Addr),
    /// 3: routers, in order of preference.
    Router(Vec<Ipv4Addr>),
    /// 6: DNS servers.
    DnsServers(Vec<Ipv4Addr>),
    /// 12: the host name.
    HostName(String),
    /// 15: the domain name.
    DomainName(String),
    /// 26: the interface MTU.
    Mtu(u16),
    /// 28: the broadcast address.
    Broadcast(Ipv4Addr),
    /// 51: the lease time in seconds.
    LeaseTime(u32),
    /// 53: the message type.
    MessageType(MessageType),
    /// 54: the server identifier.
    ServerId(Ipv4Addr),
    /// 56: a text explaining a DHCPNAK.
    Message(String),
    /// 58: the renewal (T1) time in seconds.
    RenewalTime(u32),
    /// 59: the rebinding (T2) time in seconds.
    RebindingTime(u32),
    /// 119: the domain search list (RFC 3397).
    DomainSearch(Vec<String>),
    /// 121: classless static routes (RFC 3442).
    ClasslessStaticRoutes(Vec<ClasslessRoute>),
}

impl DhcpOption {
    /// The option code.
    pub fn code(&self) -> u8 {
        match self {
            DhcpOption::SubnetMask(_) => code::SUBNET_MASK,
            DhcpOption::Router(_) => code::ROUTER,
            DhcpOption::DnsServers(_) => code::DNS_SERVERS,
            DhcpOption::HostName(_) => code::HOST_NAME,
            DhcpOption::DomainName(_) => code::DOMAIN_NAME,
            DhcpOption::Mtu(_) => code::MTU,
            DhcpOption::Broadcast(_) => code::BROADCAST,
            DhcpOption::LeaseTime(_) => code::LEASE_TIME,
            DhcpOption::MessageType(_) => code::MESSAGE_TYPE,
            DhcpOption::ServerId(_) => code::SERVER_ID,
            DhcpOption::Message(_) => code::MESSAGE,
            DhcpOption::RenewalTime(_) => code::RENEWAL_TIME,
            DhcpOption::RebindingTime(_) => code::REBINDING_TIME,
            DhcpOption::DomainSearch(_) => code::DOMAIN_SEARCH,
            DhcpOption::ClasslessStaticRoutes(_) => code::CLASSLESS_STATIC_ROUTES,
        }
    }

    /// The encoded value, without code and length.
    pub fn value(&self) -> Vec<u8> {
        match self {
            DhcpOption::SubnetMask(addr)
            | DhcpOption::Broadcast(addr)
            | DhcpOption::ServerId(addr) => addr.octets().to_vec(),
            DhcpOption::Router(addrs) | DhcpOption::DnsServers(addrs) => addresses(addrs),
            DhcpOption::HostName(text)
            | DhcpOption::DomainName(text)
            | DhcpOption::Message(text) => text.as_bytes().to_vec(),
            DhcpOption::Mtu(mtu) => mtu.to_be_bytes().to_vec(),
            DhcpOption::LeaseTime(secs)
            | DhcpOption::RenewalTime(secs)
            | DhcpOption::RebindingTime(secs) => secs.to_be_bytes().to_vec(),
            DhcpOption::MessageType(message_type) => vec![*message_type as u8],
            DhcpOption::DomainSearch(names) => domain_search(names),
            DhcpOption::ClasslessStaticRoutes(routes) => classless_static_routes(routes),
        }
    }

    /// The option as the packet codec holds it.
    pub fn to_raw(&self) -> RawOption {
        RawOption {
            code: self.code(),
            data: self.value(),
        }
    }
}

/// The subnet mask of a prefix length; lengths over 32 count as 32.
pub fn subnet_mask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(mask_bits(prefix_len))
}

/// The broadcast address of the subnet `addr/prefix_len`.
pub fn broadcast_address(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) | !mask_bits(prefix_len))
}

fn mask_bits(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

/// Addresses one after the other (options 3 and 6).
pub fn addresses(addrs: &[Ipv4Addr]) -> Vec<u8> {
    addrs.iter().flat_map(|addr| addr.octets()).collect()
}

/// The value of option 121 (RFC 3442 section 3): for each route, the prefix length, the
/// significant octets of the destination (as many as the prefix length covers), the router.
pub fn classless_static_routes(routes: &[ClasslessRoute]) -> Vec<u8> {
    let mut out = Vec::new();
    for route in routes {
        let width = route.prefix_len.min(32);
        let significant = usize::from(width.div_ceil(8));
        let dst = (u32::from(route.dst) & mask_bits(width)).to_be_bytes();
        out.push(width);
        out.extend_from_slice(&dst[..significant]);
        out.extend_from_slice(&route.router.octets());
    }
    out
}

/// The value of option 119 (RFC 3397): each name in the RFC 1035 section 3.1 encoding (length
/// prefixed labels, ending with a zero length), without compression. Names that cannot be
/// encoded (see [`encode_domain_name`]) are left out.
pub fn domain_search(names: &[String]) -> Vec<u8> {
    names
        .iter()
        .filter_map(|name| encode_domain_name(name))
        .flatten()
        .collect()
}

/// A domain name in the RFC 1035 section 3.1 encoding, or `None` if it cannot be encoded: it is
/// empty, has an empty label (other than a trailing dot), a label longer than 63 bytes, or
/// encodes to more than 255 bytes.
pub fn encode_domain_name(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|len| (1..=63).contains(len))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn route(dst: [u8; 4], prefix_len: u8, router: [u8; 4]) -> ClasslessRoute {
        ClasslessRoute {
            dst: dst.into(),
            prefix_len,
            router: router.into(),
        }
    }

    /// The destination descriptors in the table of RFC 3442 section 3, each followed by a router.
    #[test]
    fn classless_routes_follow_the_rfc_3442_table() {
        let cases: [(ClasslessRoute, &[u8]); 8] = [
            (route([0, 0, 0, 0], 0, [10, 0, 0, 1]), &[0, 10, 0, 0, 1]),
            (
                route([10, 0, 0, 0], 8, [10, 1, 1, 1]),
                &[8, 10, 10, 1, 1, 1],
            ),
            (
                route([10, 0, 0, 0], 24, [1, 2, 3, 4]),
                &[24, 10, 0, 0, 1, 2, 3, 4],
            ),
            (
                route([10, 17, 0, 0], 16, [1, 2, 3, 4]),
                &[16, 10, 17, 1, 2, 3, 4],
            ),
            (
                route([10, 27, 129, 0], 24, [1, 2, 3, 4]),
                &[24, 10, 27, 129, 1, 2, 3, 4],
            ),
            (
                route([10, 229, 0, 128], 25, [1, 2, 3, 4]),
                &[25, 10, 229, 0, 128, 1, 2, 3, 4],
            ),
            (
                route([10, 198, 122, 47], 32, [1, 2, 3, 4]),
                &[32, 10, 198, 122, 47, 1, 2, 3, 4],
            ),
            (
                route([169, 254, 254, 2], 32, [0, 0, 0, 0]),
                &[32, 169, 254, 254, 2, 0, 0, 0, 0],
            ),
        ];
        for (route, expected) in cases {
            assert_eq!(classless_static_routes(&[route]), expected, "{route:?}");
        }
    }

    #[test]
    fn classless_routes_are_concatenated_and_host_bits_dropped() {
        let routes = [
            route([10, 17, 3, 4], 16, [10, 0, 0, 1]),
            route([10, 27, 129, 0], 18, [10, 0, 0, 1]),
            route([10, 0, 0, 0], 9, [10, 0, 0, 1]),
            route([0, 0, 0, 0], 0, [10, 0, 0, 1]),
        ];
        assert_eq!(
            classless_static_routes(&routes),
            [
                16, 10, 17, 10, 0, 0, 1, //
                18, 10, 27, 128, 10, 0, 0, 1, //
                9, 10, 0, 10, 0, 0, 1, //
                0, 10, 0, 0, 1,
            ]
        );
        assert_eq!(
            classless_static_routes(&[route([10, 1, 2, 3], 40, [1, 1, 1, 1])]),
            [32, 10, 1, 2, 3, 1, 1, 1, 1]
        );
    }

    /// The example of RFC 3397 section 3, in its uncompressed form.
    #[test]
    fn domain_search_follows_the_rfc_3397_example() {
        let names = [
            "eng.apple.com".to_owned(),
            "marketing.apple.com.".to_owned(),
        ];
        let mut expected = vec![3];
        expected.extend_from_slice(b"eng");
        expected.push(5);
        expected.extend_from_slice(b"apple");
        expected.push(3);
        expected.extend_from_slice(b"com");
        expected.push(0);
        expected.push(9);
        expected.extend_from_slice(b"marketing");
        expected.push(5);
        expected.extend_from_slice(b"apple");
        expected.push(3);
        expected.extend_from_slice(b"com");
        expected.push(0);
        assert_eq!(domain_search(&names), expected);
    }

    #[test]
    fn names_that_cannot_be_encoded_are_left_out() {
        assert_eq!(encode_domain_name(""), None);
        assert_eq!(encode_domain_name("."), None);
        assert_eq!(encode_domain_name("a..b"), None);
        assert_eq!(encode_domain_name(&"x".repeat(64)), None);
        assert_eq!(
            encode_domain_name(&"x".repeat(63)).map(|bytes| bytes.len()),
            Some(65)
        );
        let long = vec!["y".repeat(60); 5].join(".");
        assert_eq!(encode_domain_name(&long), None);
        let names = ["a..b".to_owned(), "test".to_owned()];
        assert_eq!(domain_search(&names), [4, b't', b'e', b's', b't', 0]);
    }

    #[test]
    fn masks_and_broadcast_addresses() {
        assert_eq!(subnet_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(subnet_mask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(subnet_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(subnet_mask(25), Ipv4Addr::new(255, 255, 255, 128));
        assert_eq!(subnet_mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(subnet_mask(33), Ipv4Addr::new(255, 255, 255, 255));
        let addr = Ipv4Addr::new(10, 77, 0, 5);
        assert_eq!(broadcast_address(addr, 24), Ipv4Addr::new(10, 77, 0, 255));
        assert_eq!(broadcast_address(addr, 20), Ipv4Addr::new(10, 77, 15, 255));
        assert_eq!(broadcast_address(addr, 32), addr);
        assert_eq!(broadcast_address(addr, 0), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn simple_options_encode_in_network_order() {
        let cases: [(DhcpOption, u8, &[u8]); 12] = [
            (
                DhcpOption::SubnetMask(subnet_mask(24)),
                1,
                &[255, 255, 255, 0],
            ),
            (
                DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]),
                3,
                &[10, 0, 0, 1],
            ),
            (
                DhcpOption::DnsServers(vec![Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(1, 1, 1, 1)]),
                6,
                &[8, 8, 8, 8, 1, 1, 1, 1],
            ),
            (DhcpOption::HostName("vm".into()), 12, b"vm"),
            (DhcpOption::DomainName("svc".into()), 15, b"svc"),
            (DhcpOption::Mtu(1400), 26, &[0x05, 0x78]),
            (
                DhcpOption::Broadcast(Ipv4Addr::new(10, 0, 0, 255)),
                28,
                &[10, 0, 0, 255],
            ),
            (DhcpOption::LeaseTime(86400), 51, &[0, 1, 0x51, 0x80]),
            (DhcpOption::MessageType(MessageType::Offer), 53, &[2]),
            (
                DhcpOption::ServerId(Ipv4Addr::new(169, 254, 254, 2)),
                54,
                &[169, 254, 254, 2],
            ),
            (DhcpOption::RenewalTime(43200), 58, &[0, 0, 0xa8, 0xc0]),
            (DhcpOption::RebindingTime(75600), 59, &[0, 1, 0x27, 0x50]),
        ];
        for (option, code, value) in cases {
            assert_eq!(option.code(), code, "{option:?}");
            assert_eq!(option.to_raw().data, value, "{option:?}");
        }
    }
}
