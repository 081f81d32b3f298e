//! What to answer: the leases of a pod's VM and the pure function [`respond`] that turns a
//! client message into a reply (RFC 2131 sections 4.1 and 4.3).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::options::{self, ClasslessRoute, DhcpOption};
use crate::packet::{BOOTREPLY, BOOTREQUEST, Message, MessageType};

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
    /// A search domain has an empty label, a label over 63 bytes or is over 255 bytes encoded.
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
                .find(|name| options::encode_domain_name(name).is_none())
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
    if req.op != BOOTREQUEST || !req.giaddr.is_unspecified() {
        return None;
    }
    let mac = req.client_mac()?;
    let lease = config.leases.iter().find(|lease| lease.mac == mac)?;
    match req.message_type()? {
        MessageType::Discover => Some(reply(config, lease, req, Kind::Offer)),
        MessageType::Request => {
            if req.server_id().is_some_and(|id| id != config.server_id) {
                return None;
            }
            let requested = req
                .requested_ip()
                .or_else(|| (!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
            let kind = if requested == Some(lease.ip) {
                Kind::Ack
            } else {
                Kind::Nak
            };
            Some(reply(config, lease, req, kind))
        }
        MessageType::Inform => Some(reply(config, lease, req, Kind::InformAck)),
        MessageType::Decline
        | MessageType::Release
        | MessageType::Offer
        | MessageType::Ack
        | MessageType::Nak => None,
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
    let mut message = Message {
        op: BOOTREPLY,
        htype: req.htype,
        hlen: req.hlen,
        hops: 0,
        xid: req.xid,
        secs: 0,
        flags: req.flags,
        // RFC 2131 table 3: ciaddr only in a DHCPACK, copied from the request.
        ciaddr: match kind {
            Kind::Ack | Kind::InformAck => req.ciaddr,
            Kind::Offer | Kind::Nak => Ipv4Addr::UNSPECIFIED,
        },
        yiaddr: match kind {
            Kind::Offer | Kind::Ack => lease.ip,
            Kind::InformAck | Kind::Nak => Ipv4Addr::UNSPECIFIED,
        },
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: req.giaddr,
        chaddr: req.chaddr,
        sname: [0; 64],
        file: [0; 128],
        options: Vec::new(),
    };
    let reply_options = match kind {
        Kind::Nak => vec![
            DhcpOption::MessageType(message_type),
            DhcpOption::ServerId(config.server_id),
            DhcpOption::Message(format!("the address for this client is {}", lease.ip)),
        ],
        Kind::Offer | Kind::Ack | Kind::InformAck => {
            lease_options(config, lease, message_type, kind != Kind::InformAck)
        }
    };
    message.options = reply_options.iter().map(DhcpOption::to_raw).collect();
    // RFC 2131 section 4.1: a DHCPACK goes to ciaddr when the client has one; everything
    // else, DHCPNAK included, is broadcast because the client cannot receive unicast yet.
    let dest_ip = if message_type == MessageType::Ack && !req.ciaddr.is_unspecified() {
        req.ciaddr
    } else {
        Ipv4Addr::BROADCAST
    };
    Reply {
        message,
        dest: SocketAddrV4::new(dest_ip, CLIENT_PORT),
    }
}

fn lease_options(
    config: &Config,
    lease: &Lease,
    message_type: MessageType,
    with_lease_time: bool,
) -> Vec<DhcpOption> {
    let mut out = vec![
        DhcpOption::MessageType(message_type),
        DhcpOption::ServerId(config.server_id),
    ];
    if with_lease_time {
        out.push(DhcpOption::LeaseTime(config.lease_secs));
        if config.lease_secs != u32::MAX {
            let t2 = u64::from(config.lease_secs) * 7 / 8;
            out.push(DhcpOption::RenewalTime(config.lease_secs / 2));
            out.push(DhcpOption::RebindingTime(
                u32::try_from(t2).unwrap_or(u32::MAX),
            ));
        }
    }
    out.push(DhcpOption::SubnetMask(options::subnet_mask(
        lease.prefix_len,
    )));
    out.push(DhcpOption::Broadcast(options::broadcast_address(
        lease.ip,
        lease.prefix_len,
    )));
    if let Some(gateway) = lease.gateway {
        out.push(DhcpOption::Router(vec![gateway]));
    }
    out.push(DhcpOption::ClasslessStaticRoutes(classless_routes(
        config, lease,
    )));
    if !lease.dns_servers.is_empty() {
        out.push(DhcpOption::DnsServers(lease.dns_servers.clone()));
    }
    if let Some(domain) = lease.search.first() {
        out.push(DhcpOption::DomainName(domain.clone()));
        out.push(DhcpOption::DomainSearch(lease.search.clone()));
    }
    if let Some(mtu) = lease.mtu {
        out.push(DhcpOption::Mtu(mtu));
    }
    if let Some(hostname) = lease.hostname.as_ref().filter(|name| !name.is_empty()) {
        out.push(DhcpOption::HostName(hostname.clone()));
    }
    out
}

/// Option 121: a client that takes it ignores option 3 (RFC 3442 section 1), so it carries the
/// on-link host route to the server first (for unicast renewals), then the lease's routes, then
/// the default route via the gateway unless the lease has its own.
fn classless_routes(config: &Config, lease: &Lease) -> Vec<ClasslessRoute> {
    let mut routes = vec![ClasslessRoute {
        dst: config.server_id,
        prefix_len: 32,
        router: Ipv4Addr::UNSPECIFIED,
    }];
    routes.extend(lease.routes.iter().map(|route| ClasslessRoute {
        dst: route.dst,
        prefix_len: route.prefix_len,
        router: route.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
    }));
    if let Some(gateway) = lease.gateway
        && !lease.routes.iter().any(|route| route.prefix_len == 0)
    {
        routes.push(ClasslessRoute {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            router: gateway,
        });
    }
    routes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::packet::{FLAG_BROADCAST, HTYPE_ETHERNET, RawOption, code};

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
        let mut chaddr = [0; 16];
        chaddr[..6].copy_from_slice(&mac);
        Message {
            op: BOOTREQUEST,
            htype: HTYPE_ETHERNET,
            hlen: 6,
            hops: 0,
            xid: 0x1234_5678,
            secs: 3,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: [0; 64],
            file: [0; 128],
            options: vec![
                RawOption {
                    code: code::MESSAGE_TYPE,
                    data: vec![message_type as u8],
                },
                RawOption {
                    code: code::PARAMETER_REQUEST_LIST,
                    data: vec![1, 3, 6, 12, 15, 26, 28, 119, 121],
                },
            ],
        }
    }

    fn with(mut message: Message, code: u8, data: &[u8]) -> Message {
        message.push_option(code, data.to_vec());
        message
    }

    fn broadcast() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    }

    #[test]
    fn discover_gets_an_offer_of_the_lease() {
        let mut req = request(MessageType::Discover, MAC);
        req.flags = FLAG_BROADCAST;
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.dest, broadcast());
        let offer = &reply.message;
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        assert_eq!(offer.op, BOOTREPLY);
        assert_eq!(offer.xid, req.xid);
        assert_eq!(offer.flags, FLAG_BROADCAST);
        assert_eq!(offer.chaddr, req.chaddr);
        assert_eq!(offer.yiaddr, POD_IP);
        assert_eq!(offer.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.siaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.server_id(), Some(SERVER_ID));
        assert_eq!(
            offer.option(code::LEASE_TIME),
            Some(&3600u32.to_be_bytes()[..])
        );
        assert_eq!(
            offer.option(code::RENEWAL_TIME),
            Some(&1800u32.to_be_bytes()[..])
        );
        assert_eq!(
            offer.option(code::REBINDING_TIME),
            Some(&3150u32.to_be_bytes()[..])
        );
        assert_eq!(
            offer.option(code::SUBNET_MASK),
            Some(&[255, 255, 255, 0][..])
        );
        assert_eq!(offer.option(code::BROADCAST), Some(&[10, 77, 0, 255][..]));
        assert_eq!(offer.option(code::ROUTER), Some(&[10, 77, 0, 1][..]));
        assert_eq!(offer.option(code::DNS_SERVERS), Some(&[10, 77, 0, 53][..]));
        assert_eq!(offer.option(code::DOMAIN_NAME), Some(&b"svc.test"[..]));
        assert_eq!(offer.option(code::MTU), Some(&[0x05, 0x78][..]));
        assert_eq!(offer.option(code::HOST_NAME), Some(&b"vm-1"[..]));
        assert_eq!(
            offer.option(code::CLASSLESS_STATIC_ROUTES),
            Some(
                &[
                    32, 169, 254, 254, 2, 0, 0, 0, 0, // the server, on-link
                    24, 192, 168, 50, 10, 77, 0, 1, // the lease's route
                    0, 10, 77, 0, 1, // the default route
                ][..]
            )
        );
    }

    /// Every byte of an OFFER, laid out by hand from RFC 2131 figure 1 and RFC 2132.
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
            53, 1, 2, // DHCPOFFER
            54, 4, 169, 254, 254, 2, // server id
            51, 4, 0, 0, 0x0e, 0x10, // lease time 3600
            58, 4, 0, 0, 0x07, 0x08, // T1 1800
            59, 4, 0, 0, 0x0c, 0x4e, // T2 3150
            1, 4, 255, 255, 255, 0, // subnet mask
            28, 4, 10, 77, 0, 255, // broadcast address
            3, 4, 10, 77, 0, 1, // router
            121, 22, // classless static routes:
            32, 169, 254, 254, 2, 0, 0, 0, 0, // 169.254.254.2/32 on-link
            24, 192, 168, 50, 10, 77, 0, 1, // 192.168.50.0/24 via 10.77.0.1
            0, 10, 77, 0, 1, // 0.0.0.0/0 via 10.77.0.1
            6, 4, 10, 77, 0, 53, // DNS server
            15, 8, b's', b'v', b'c', b'.', b't', b'e', b's', b't', // domain name
            119, 16, // domain search:
            3, b's', b'v', b'c', 4, b't', b'e', b's', b't', 0, // svc.test
            4, b't', b'e', b's', b't', 0, // test
            26, 2, 0x05, 0x78, // MTU 1400
            12, 4, b'v', b'm', b'-', b'1', // host name
            255,  // end
        ]);
        assert_eq!(expected.len(), 354);
        assert_eq!(reply.message.encode(), expected);
    }

    #[test]
    fn request_in_selecting_state_gets_an_ack() {
        let req = with(
            with(
                request(MessageType::Request, MAC),
                code::REQUESTED_IP,
                &POD_IP.octets(),
            ),
            code::SERVER_ID,
            &SERVER_ID.octets(),
        );
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.message_type(), Some(MessageType::Ack));
        assert_eq!(reply.message.yiaddr, POD_IP);
        assert_eq!(reply.message.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(reply.dest, broadcast());
        let offer = respond(&config(), &request(MessageType::Discover, MAC)).unwrap();
        assert_eq!(
            reply.message.options[1..],
            offer.message.options[1..],
            "an ACK carries what the OFFER promised"
        );
    }

    #[test]
    fn request_for_another_server_gets_nothing() {
        let req = with(
            with(
                request(MessageType::Request, MAC),
                code::REQUESTED_IP,
                &POD_IP.octets(),
            ),
            code::SERVER_ID,
            &[10, 0, 0, 1],
        );
        assert_eq!(respond(&config(), &req), None);
    }

    #[test]
    fn init_reboot_request_for_another_address_gets_a_broadcast_nak() {
        let req = with(
            request(MessageType::Request, MAC),
            code::REQUESTED_IP,
            &[10, 0, 0, 9],
        );
        let reply = respond(&config(), &req).unwrap();
        let nak = &reply.message;
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.server_id(), Some(SERVER_ID));
        assert_eq!(nak.option(code::LEASE_TIME), None);
        assert_eq!(nak.option(code::CLASSLESS_STATIC_ROUTES), None);
        assert!(nak.option(code::MESSAGE).is_some());
        assert_eq!(reply.dest, broadcast());
    }

    #[test]
    fn init_reboot_request_for_the_lease_gets_an_ack() {
        let req = with(
            request(MessageType::Request, MAC),
            code::REQUESTED_IP,
            &POD_IP.octets(),
        );
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.message_type(), Some(MessageType::Ack));
        assert_eq!(reply.dest, broadcast());
    }

    #[test]
    fn request_without_any_address_gets_a_nak() {
        let reply = respond(&config(), &request(MessageType::Request, MAC)).unwrap();
        assert_eq!(reply.message.message_type(), Some(MessageType::Nak));
    }

    #[test]
    fn renewing_request_gets_a_unicast_ack() {
        let mut req = request(MessageType::Request, MAC);
        req.ciaddr = POD_IP;
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.message_type(), Some(MessageType::Ack));
        assert_eq!(reply.message.ciaddr, POD_IP);
        assert_eq!(reply.message.yiaddr, POD_IP);
        assert_eq!(reply.dest, SocketAddrV4::new(POD_IP, 68));
    }

    #[test]
    fn renewing_request_from_a_stale_address_gets_a_broadcast_nak() {
        let mut req = request(MessageType::Request, MAC);
        req.ciaddr = Ipv4Addr::new(10, 77, 0, 6);
        let reply = respond(&config(), &req).unwrap();
        assert_eq!(reply.message.message_type(), Some(MessageType::Nak));
        assert_eq!(reply.dest, broadcast());
    }

    #[test]
    fn inform_gets_an_ack_without_address_or_lease_time() {
        let mut req = request(MessageType::Inform, MAC);
        req.ciaddr = POD_IP;
        let reply = respond(&config(), &req).unwrap();
        let ack = &reply.message;
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.ciaddr, POD_IP);
        assert_eq!(ack.option(code::LEASE_TIME), None);
        assert_eq!(ack.option(code::RENEWAL_TIME), None);
        assert_eq!(ack.option(code::REBINDING_TIME), None);
        assert_eq!(ack.server_id(), Some(SERVER_ID));
        assert_eq!(ack.option(code::DNS_SERVERS), Some(&[10, 77, 0, 53][..]));
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
        req.giaddr = Ipv4Addr::new(10, 0, 0, 1);
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
        ] {
            assert_eq!(respond(&config(), &request(message_type, MAC)), None);
        }
        let mut reply_op = request(MessageType::Discover, MAC);
        reply_op.op = BOOTREPLY;
        assert_eq!(respond(&config(), &reply_op), None);
        let mut no_type = request(MessageType::Discover, MAC);
        no_type.options.clear();
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
        let reply = respond(&config, &request(MessageType::Discover, MAC)).unwrap();
        assert_eq!(
            reply.message.option(code::CLASSLESS_STATIC_ROUTES),
            Some(
                &[
                    32, 169, 254, 254, 2, 0, 0, 0, 0, //
                    24, 192, 168, 50, 10, 77, 0, 1, //
                    0, 10, 77, 0, 254,
                ][..]
            )
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
        let codes: Vec<u8> = reply.message.options.iter().map(|o| o.code).collect();
        assert_eq!(codes, [53, 54, 51, 1, 28, 121]);
        assert_eq!(
            reply.message.option(code::CLASSLESS_STATIC_ROUTES),
            Some(&[32, 169, 254, 254, 2, 0, 0, 0, 0, 16, 10, 77, 0, 0, 0, 0][..])
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
        config.leases[0].search = (0..20)
            .map(|i| format!("ns{i}.svc.cluster.local"))
            .collect();
        let reply = respond(&config, &request(MessageType::Discover, MAC)).unwrap();
        let routes = reply
            .message
            .option(code::CLASSLESS_STATIC_ROUTES)
            .unwrap()
            .to_vec();
        let search = reply.message.option(code::DOMAIN_SEARCH).unwrap().to_vec();
        assert_eq!(routes.len(), 9 + 40 * 8 + 5);
        assert!(search.len() > 255);
        let bytes = reply.message.encode();
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(
            parsed.option(code::CLASSLESS_STATIC_ROUTES),
            Some(&routes[..])
        );
        assert_eq!(parsed.option(code::DOMAIN_SEARCH), Some(&search[..]));
        let instances = |code: u8| {
            let mut count = 0;
            let mut at = 240;
            while bytes[at] != 255 {
                count += usize::from(bytes[at] == code);
                at += 2 + usize::from(bytes[at + 1]);
            }
            count
        };
        assert_eq!(instances(code::CLASSLESS_STATIC_ROUTES), 2);
        assert_eq!(instances(code::DOMAIN_SEARCH), 2);
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

    /// Random bytes and random mutations of valid requests: `parse` and `respond` never
    /// panic, and whatever parses encodes back to the same message.
    #[test]
    fn no_input_makes_parse_or_respond_panic() {
        let config = config();
        let mut rng = StdRng::seed_from_u64(0x5eed_d4c9);
        let valid: Vec<Vec<u8>> = [
            request(MessageType::Discover, MAC),
            with(
                request(MessageType::Request, MAC),
                code::REQUESTED_IP,
                &POD_IP.octets(),
            ),
            request(MessageType::Inform, MAC),
        ]
        .iter()
        .map(Message::encode)
        .collect();
        let mut parsed = 0;
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
            let Ok(message) = Message::parse(&bytes) else {
                continue;
            };
            parsed += 1;
            assert_eq!(Message::parse(&message.encode()).as_ref(), Ok(&message));
            if let Some(reply) = respond(&config, &message) {
                answered += 1;
                assert_eq!(Message::parse(&reply.message.encode()), Ok(reply.message));
            }
        }
        assert!(parsed > 5_000, "only {parsed} inputs parsed");
        assert!(answered > 1_000, "only {answered} inputs answered");
    }
}
