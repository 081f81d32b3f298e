//! The DHCPv4 wire format (RFC 2131 section 2, RFC 2132 section 2): a fixed BOOTP header, the
//! magic cookie and a list of options.
//!
//! This codec is hand-written because the `dhcproto` crate is not among our dependencies. It
//! knows nothing about what the options mean (that is [`crate::options`]) so it can later be
//! swapped for `dhcproto` without touching the reply logic in [`crate::lease`].
//!
//! Parsing never panics: every malformed input is a [`PacketError`]. Several instances of the
//! same option are concatenated into one (RFC 3396), and [`Message::encode`] splits values
//! longer than 255 bytes back into consecutive instances. Option overload (option 52) is not
//! interpreted: `sname` and `file` are kept as raw bytes.

use std::net::Ipv4Addr;

/// `op` of a message sent by a client.
pub const BOOTREQUEST: u8 = 1;
/// `op` of a message sent by a server.
pub const BOOTREPLY: u8 = 2;
/// `htype` of Ethernet (RFC 1700 hardware types).
pub const HTYPE_ETHERNET: u8 = 1;
/// The magic cookie 99.130.83.99 that starts the options (RFC 2131 section 3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The broadcast bit of `flags` (RFC 2131 figure 2).
pub const FLAG_BROADCAST: u16 = 0x8000;

/// Length of the fixed header, before the magic cookie.
const HEADER_LEN: usize = 236;
/// Length of the header and the magic cookie: where the options start.
const OPTIONS_START: usize = HEADER_LEN + MAGIC_COOKIE.len();
/// Encoded messages are padded to this length, the minimum BOOTP message size that some
/// clients still insist on (RFC 1542 section 2.1).
const MIN_ENCODED_LEN: usize = 300;

/// Option codes (RFC 2132 and the RFCs named).
pub mod code {
    /// Pad: a single zero byte, no length.
    pub const PAD: u8 = 0;
    /// Subnet mask.
    pub const SUBNET_MASK: u8 = 1;
    /// Routers, in order of preference.
    pub const ROUTER: u8 = 3;
    /// DNS servers.
    pub const DNS_SERVERS: u8 = 6;
    /// Host name.
    pub const HOST_NAME: u8 = 12;
    /// Domain name.
    pub const DOMAIN_NAME: u8 = 15;
    /// Interface MTU.
    pub const MTU: u8 = 26;
    /// Broadcast address.
    pub const BROADCAST: u8 = 28;
    /// Requested IP address.
    pub const REQUESTED_IP: u8 = 50;
    /// IP address lease time, in seconds.
    pub const LEASE_TIME: u8 = 51;
    /// Option overload.
    pub const OVERLOAD: u8 = 52;
    /// DHCP message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Parameter request list.
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    /// Message: a text explaining a DHCPNAK.
    pub const MESSAGE: u8 = 56;
    /// Maximum DHCP message size.
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    /// Renewal (T1) time, in seconds.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding (T2) time, in seconds.
    pub const REBINDING_TIME: u8 = 59;
    /// Client identifier.
    pub const CLIENT_ID: u8 = 61;
    /// Domain search list (RFC 3397).
    pub const DOMAIN_SEARCH: u8 = 119;
    /// Classless static routes (RFC 3442).
    pub const CLASSLESS_STATIC_ROUTES: u8 = 121;
    /// End: the last option, no length.
    pub const END: u8 = 255;
}

/// The DHCP message type carried in option 53 (RFC 2132 section 9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A client looks for servers.
    Discover = 1,
    /// A server offers an address.
    Offer = 2,
    /// A client asks for the offered address, or confirms or renews its address.
    Request = 3,
    /// A client found the address already in use.
    Decline = 4,
    /// A server confirms an address and its parameters.
    Ack = 5,
    /// A server refuses the address a client asked for.
    Nak = 6,
    /// A client gives its address up.
    Release = 7,
    /// A client that already has an address asks for parameters only.
    Inform = 8,
}

impl MessageType {
    /// The message type for the value of option 53, if it is a known one.
    pub fn from_u8(value: u8) -> Option<MessageType> {
        Some(match value {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    /// The name used in RFC 2131, e.g. `DHCPDISCOVER`.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Discover => "DHCPDISCOVER",
            MessageType::Offer => "DHCPOFFER",
            MessageType::Request => "DHCPREQUEST",
            MessageType::Decline => "DHCPDECLINE",
            MessageType::Ack => "DHCPACK",
            MessageType::Nak => "DHCPNAK",
            MessageType::Release => "DHCPRELEASE",
            MessageType::Inform => "DHCPINFORM",
        }
    }
}

/// One option as it is on the wire: a code and its value, without the length byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOption {
    /// The option code; never [`code::PAD`] or [`code::END`] in a parsed message.
    pub code: u8,
    /// The value; may be longer than 255 bytes (RFC 3396).
    pub data: Vec<u8>,
}

/// A DHCP message (RFC 2131 figure 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// [`BOOTREQUEST`] or [`BOOTREPLY`].
    pub op: u8,
    /// Hardware address type; [`HTYPE_ETHERNET`] for the VMs we serve.
    pub htype: u8,
    /// Hardware address length; 6 for Ethernet.
    pub hlen: u8,
    /// Relay hops.
    pub hops: u8,
    /// Transaction id chosen by the client.
    pub xid: u32,
    /// Seconds since the client began acquiring or renewing.
    pub secs: u16,
    /// Flags; see [`FLAG_BROADCAST`].
    pub flags: u16,
    /// Client address, when the client already has one.
    pub ciaddr: Ipv4Addr,
    /// "Your" address: the one the server hands out.
    pub yiaddr: Ipv4Addr,
    /// Next server to use in bootstrap.
    pub siaddr: Ipv4Addr,
    /// Relay agent address.
    pub giaddr: Ipv4Addr,
    /// Client hardware address, padded with zeros.
    pub chaddr: [u8; 16],
    /// Server host name, raw.
    pub sname: [u8; 64],
    /// Boot file name, raw.
    pub file: [u8; 128],
    /// Options in order of appearance, each code at most once after parsing.
    pub options: Vec<RawOption>,
}

/// Why a datagram is not a DHCP message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed header and the magic cookie.
    #[error("message is {0} bytes, shorter than the 240-byte header")]
    Truncated(usize),
    /// `op` is neither BOOTREQUEST nor BOOTREPLY.
    #[error("op {0} is neither BOOTREQUEST nor BOOTREPLY")]
    BadOp(u8),
    /// `hlen` does not fit `chaddr`, or is not 6 for Ethernet.
    #[error("hardware address length {hlen} is invalid for hardware type {htype}")]
    BadHardwareLength {
        /// The hardware type.
        htype: u8,
        /// The hardware address length.
        hlen: u8,
    },
    /// The magic cookie is not 99.130.83.99.
    #[error("magic cookie {0:?} is not 99.130.83.99")]
    BadCookie([u8; 4]),
    /// An option's length runs past the end of the message.
    #[error("option {code} at offset {offset} runs past the end of the message")]
    OptionOverrun {
        /// The option code.
        code: u8,
        /// Where the option starts in the message.
        offset: usize,
    },
    /// The options are not terminated by the END option.
    #[error("options are not terminated by the END option")]
    MissingEnd,
}

impl Message {
    /// Reads a message from a UDP payload.
    pub fn parse(bytes: &[u8]) -> Result<Message, PacketError> {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(PacketError::Truncated(bytes.len()));
        };
        let Some((cookie, options)) = rest.split_first_chunk::<4>() else {
            return Err(PacketError::Truncated(bytes.len()));
        };
        let op = header[0];
        if op != BOOTREQUEST && op != BOOTREPLY {
            return Err(PacketError::BadOp(op));
        }
        let (htype, hlen) = (header[1], header[2]);
        if usize::from(hlen) > 16 || (htype == HTYPE_ETHERNET && hlen != 6) {
            return Err(PacketError::BadHardwareLength { htype, hlen });
        }
        if *cookie != MAGIC_COOKIE {
            return Err(PacketError::BadCookie(*cookie));
        }
        let mut chaddr = [0; 16];
        chaddr.copy_from_slice(&header[28..44]);
        let mut sname = [0; 64];
        sname.copy_from_slice(&header[44..108]);
        let mut file = [0; 128];
        file.copy_from_slice(&header[108..236]);
        Ok(Message {
            op,
            htype,
            hlen,
            hops: header[3],
            xid: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            secs: u16::from_be_bytes([header[8], header[9]]),
            flags: u16::from_be_bytes([header[10], header[11]]),
            ciaddr: Ipv4Addr::new(header[12], header[13], header[14], header[15]),
            yiaddr: Ipv4Addr::new(header[16], header[17], header[18], header[19]),
            siaddr: Ipv4Addr::new(header[20], header[21], header[22], header[23]),
            giaddr: Ipv4Addr::new(header[24], header[25], header[26], header[27]),
            chaddr,
            sname,
            file,
            options: parse_options(options)?,
        })
    }

    /// Writes the message as a UDP payload: header, cookie, options (values longer than 255
    /// bytes split into consecutive instances), END, and zero padding up to 300 bytes.
    /// Options with the codes PAD or END have no value and are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_ENCODED_LEN);
        out.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for addr in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&addr.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.extend_from_slice(&self.sname);
        out.extend_from_slice(&self.file);
        out.extend_from_slice(&MAGIC_COOKIE);
        for option in &self.options {
            if option.code == code::PAD || option.code == code::END {
                continue;
            }
            if option.data.is_empty() {
                out.extend_from_slice(&[option.code, 0]);
            }
            for chunk in option.data.chunks(usize::from(u8::MAX)) {
                out.push(option.code);
                out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(chunk);
            }
        }
        out.push(code::END);
        if out.len() < MIN_ENCODED_LEN {
            out.resize(MIN_ENCODED_LEN, code::PAD);
        }
        out
    }

    /// The value of an option, all its instances concatenated.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|option| option.code == code)
            .map(|option| option.data.as_slice())
    }

    /// Appends an option; the caller keeps each code at most once.
    pub fn push_option(&mut self, code: u8, data: Vec<u8>) {
        self.options.push(RawOption { code, data });
    }

    /// The DHCP message type (option 53), if present and known.
    pub fn message_type(&self) -> Option<MessageType> {
        match self.option(code::MESSAGE_TYPE)? {
            [value] => MessageType::from_u8(*value),
            _ => None,
        }
    }

    /// The requested IP address (option 50).
    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.ipv4_option(code::REQUESTED_IP)
    }

    /// The server identifier (option 54).
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.ipv4_option(code::SERVER_ID)
    }

    /// The client's MAC address: the first 6 bytes of `chaddr`, for Ethernet only.
    pub fn client_mac(&self) -> Option<[u8; 6]> {
        if self.htype != HTYPE_ETHERNET || self.hlen != 6 {
            return None;
        }
        let (mac, _) = self.chaddr.split_first_chunk::<6>()?;
        Some(*mac)
    }

    /// The option codes the client asks for (option 55).
    pub fn parameter_request_list(&self) -> Option<&[u8]> {
        self.option(code::PARAMETER_REQUEST_LIST)
    }

    /// The largest message the client accepts (option 57).
    pub fn max_message_size(&self) -> Option<u16> {
        match self.option(code::MAX_MESSAGE_SIZE)? {
            [high, low] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        }
    }

    fn ipv4_option(&self, code: u8) -> Option<Ipv4Addr> {
        match self.option(code)? {
            [a, b, c, d] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        }
    }
}

/// Reads the options area after the magic cookie, concatenating repeated codes (RFC 3396).
fn parse_options(bytes: &[u8]) -> Result<Vec<RawOption>, PacketError> {
    let mut options: Vec<RawOption> = Vec::new();
    let mut offset = 0;
    loop {
        let Some(&option_code) = bytes.get(offset) else {
            return Err(PacketError::MissingEnd);
        };
        match option_code {
            code::END => return Ok(options),
            code::PAD => offset += 1,
            _ => {
                let overrun = PacketError::OptionOverrun {
                    code: option_code,
                    offset: OPTIONS_START + offset,
                };
                let len = usize::from(*bytes.get(offset + 1).ok_or(overrun.clone())?);
                let data = bytes.get(offset + 2..offset + 2 + len).ok_or(overrun)?;
                match options.iter_mut().find(|option| option.code == option_code) {
                    Some(option) => option.data.extend_from_slice(data),
                    None => options.push(RawOption {
                        code: option_code,
                        data: data.to_vec(),
                    }),
                }
                offset += 2 + len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A DHCPDISCOVER as busybox udhcpc sends it, options trimmed.
    fn discover() -> Message {
        let mut chaddr = [0; 16];
        chaddr[..6].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
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
                    data: vec![1],
                },
                RawOption {
                    code: code::PARAMETER_REQUEST_LIST,
                    data: vec![1, 3, 6, 12, 15, 28, 121],
                },
                RawOption {
                    code: code::MAX_MESSAGE_SIZE,
                    data: vec![0x05, 0xdc],
                },
            ],
        }
    }

    #[test]
    fn encode_then_parse_gives_the_message_back() {
        let message = discover();
        let bytes = message.encode();
        assert_eq!(bytes.len(), 300);
        assert_eq!(Message::parse(&bytes).unwrap(), message);
    }

    #[test]
    fn header_fields_are_at_their_rfc_offsets() {
        let mut message = discover();
        message.ciaddr = Ipv4Addr::new(10, 0, 0, 1);
        message.yiaddr = Ipv4Addr::new(10, 0, 0, 2);
        message.siaddr = Ipv4Addr::new(10, 0, 0, 3);
        message.giaddr = Ipv4Addr::new(10, 0, 0, 4);
        message.flags = FLAG_BROADCAST;
        message.sname[0] = b's';
        message.file[0] = b'f';
        let bytes = message.encode();
        assert_eq!(&bytes[..4], &[1, 1, 6, 0]);
        assert_eq!(&bytes[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&bytes[8..12], &[0, 3, 0x80, 0]);
        assert_eq!(
            &bytes[12..28],
            &[10, 0, 0, 1, 10, 0, 0, 2, 10, 0, 0, 3, 10, 0, 0, 4]
        );
        assert_eq!(&bytes[28..34], &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(bytes[44], b's');
        assert_eq!(bytes[108], b'f');
        assert_eq!(&bytes[236..240], &[99, 130, 83, 99]);
        assert_eq!(&bytes[240..243], &[53, 1, 1]);
    }

    #[test]
    fn helpers_read_the_options() {
        let mut message = discover();
        message.push_option(code::REQUESTED_IP, vec![10, 1, 2, 3]);
        message.push_option(code::SERVER_ID, vec![169, 254, 254, 2]);
        assert_eq!(message.message_type(), Some(MessageType::Discover));
        assert_eq!(message.requested_ip(), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(message.server_id(), Some(Ipv4Addr::new(169, 254, 254, 2)));
        assert_eq!(
            message.client_mac(),
            Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            message.parameter_request_list(),
            Some(&[1, 3, 6, 12, 15, 28, 121][..])
        );
        assert_eq!(message.max_message_size(), Some(1500));
    }

    #[test]
    fn helpers_ignore_values_of_the_wrong_length() {
        let mut message = discover();
        message.options = vec![
            RawOption {
                code: code::MESSAGE_TYPE,
                data: vec![1, 1],
            },
            RawOption {
                code: code::REQUESTED_IP,
                data: vec![10, 1, 2],
            },
            RawOption {
                code: code::MAX_MESSAGE_SIZE,
                data: vec![5],
            },
        ];
        assert_eq!(message.message_type(), None);
        assert_eq!(message.requested_ip(), None);
        assert_eq!(message.max_message_size(), None);
        message.options = vec![RawOption {
            code: code::MESSAGE_TYPE,
            data: vec![9],
        }];
        assert_eq!(message.message_type(), None);
    }

    #[test]
    fn client_mac_is_only_read_for_ethernet() {
        let mut message = discover();
        message.htype = 6;
        assert_eq!(message.client_mac(), None);
    }

    #[test]
    fn long_options_are_split_and_joined_again() {
        let mut message = discover();
        let long: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
        message.push_option(code::CLASSLESS_STATIC_ROUTES, long.clone());
        let bytes = message.encode();
        // After the three request options (3 + 9 + 4 bytes): 255 + 255 + 90 bytes.
        let start = 240 + 3 + 9 + 4;
        assert_eq!(&bytes[start..start + 2], &[121, 255]);
        assert_eq!(&bytes[start + 2..start + 257], &long[..255]);
        assert_eq!(&bytes[start + 257..start + 259], &[121, 255]);
        assert_eq!(&bytes[start + 259..start + 514], &long[255..510]);
        assert_eq!(&bytes[start + 514..start + 516], &[121, 90]);
        assert_eq!(&bytes[start + 516..start + 606], &long[510..]);
        assert_eq!(bytes[start + 606], code::END);
        assert_eq!(bytes.len(), start + 607);
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(
            parsed.option(code::CLASSLESS_STATIC_ROUTES),
            Some(&long[..])
        );
        assert_eq!(parsed, message);
    }

    #[test]
    fn an_option_of_exactly_255_bytes_is_not_split() {
        let mut message = discover();
        message.options = vec![RawOption {
            code: code::DOMAIN_SEARCH,
            data: vec![7; 255],
        }];
        let bytes = message.encode();
        assert_eq!(&bytes[240..242], &[119, 255]);
        assert_eq!(bytes[240 + 2 + 255], code::END);
    }

    #[test]
    fn empty_options_keep_their_length_byte() {
        let mut message = discover();
        message.options = vec![RawOption {
            code: 80,
            data: vec![],
        }];
        let bytes = message.encode();
        assert_eq!(&bytes[240..243], &[80, 0, 255]);
        assert_eq!(Message::parse(&bytes).unwrap(), message);
    }

    #[test]
    fn split_options_are_concatenated_even_when_not_adjacent() {
        let mut bytes = discover().encode();
        bytes.truncate(240);
        bytes.extend_from_slice(&[12, 2, b'v', b'm', 53, 1, 3, 0, 0, 12, 1, b'1', 255]);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.option(code::HOST_NAME), Some(&b"vm1"[..]));
        assert_eq!(message.message_type(), Some(MessageType::Request));
        assert_eq!(message.options.len(), 2);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = discover().encode();
        assert_eq!(Message::parse(&[]), Err(PacketError::Truncated(0)));
        assert_eq!(
            Message::parse(&good[..239]),
            Err(PacketError::Truncated(239))
        );

        let mut bad_op = good.clone();
        bad_op[0] = 3;
        assert_eq!(Message::parse(&bad_op), Err(PacketError::BadOp(3)));

        let mut bad_hlen = good.clone();
        bad_hlen[2] = 16;
        assert_eq!(
            Message::parse(&bad_hlen),
            Err(PacketError::BadHardwareLength { htype: 1, hlen: 16 })
        );
        bad_hlen[1] = 6;
        bad_hlen[2] = 17;
        assert_eq!(
            Message::parse(&bad_hlen),
            Err(PacketError::BadHardwareLength { htype: 6, hlen: 17 })
        );

        let mut bad_cookie = good.clone();
        bad_cookie[239] = 0;
        assert_eq!(
            Message::parse(&bad_cookie),
            Err(PacketError::BadCookie([99, 130, 83, 0]))
        );

        let mut no_end = good[..243].to_vec();
        assert_eq!(Message::parse(&no_end), Err(PacketError::MissingEnd));
        no_end.extend_from_slice(&[0, 0, 0]);
        assert_eq!(Message::parse(&no_end), Err(PacketError::MissingEnd));

        let mut overrun = good[..240].to_vec();
        overrun.extend_from_slice(&[53, 1, 1, 12, 5, b'a', b'b']);
        assert_eq!(
            Message::parse(&overrun),
            Err(PacketError::OptionOverrun {
                code: 12,
                offset: 243
            })
        );
        let mut no_length = good[..240].to_vec();
        no_length.push(12);
        assert_eq!(
            Message::parse(&no_length),
            Err(PacketError::OptionOverrun {
                code: 12,
                offset: 240
            })
        );
    }

    #[test]
    fn pad_bytes_and_trailing_garbage_after_end_are_ignored() {
        let mut bytes = discover().encode();
        bytes.truncate(240);
        bytes.extend_from_slice(&[0, 0, 53, 1, 1, 0, 255, 1, 2, 3]);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.message_type(), Some(MessageType::Discover));
        assert_eq!(message.options.len(), 1);
    }
}
