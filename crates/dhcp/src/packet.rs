//! The wire codec: `dhcproto`'s DHCPv4 [`Message`] (RFC 2131 figure 1, RFC 2132 options), with
//! the few rules around it that `dhcproto` leaves to its user. [`decode`] and [`encode`] are the
//! only ways the responder turns bytes into messages and back.
//!
//! What [`decode`] adds to `dhcproto`'s decoder:
//!
//! * it rejects what `dhcproto` would accept: a wrong magic cookie, `hlen` over 16 (on which
//!   `Message::chaddr` would panic), an option running past the end, a missing END option;
//! * it concatenates *all* instances of an option (RFC 3396), also those that are not adjacent
//!   (`dhcproto` joins adjacent ones only and keeps the last of the others);
//! * it decodes each option on its own, so one option that `dhcproto` cannot read (say, a host
//!   name that is not UTF-8) is left out instead of ending the option list there, which would
//!   silently drop the requested address or server identifier that follows it;
//! * it leaves out the options whose length `dhcproto` 0.15 only checks with `debug_assert!`
//!   (a panic in debug builds and in the fuzzer) or would overflow on when encoding, and those
//!   that `dhcproto` does not write back as it read them, so that a decoded message always
//!   encodes and decodes back to itself.
//!
//! What [`encode`] adds: an END option even when there are no options, and zero padding up to
//! the 300-byte minimum BOOTP message (RFC 1542 section 2.1). `dhcproto` writes the options in
//! increasing code order, option 82 last (RFC 3046), and splits values longer than 255 bytes
//! into consecutive instances (RFC 3396).
//!
//! The small accessors ([`client_mac`], [`requested_ip`], [`server_id`], [`max_message_size`])
//! read one option's typed value.

use std::net::Ipv4Addr;

use dhcproto::error::{DecodeError, EncodeError};
pub use dhcproto::v4::{DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

/// The magic cookie 99.130.83.99 that starts the options (RFC 2131 section 3).
pub const MAGIC_COOKIE: [u8; 4] = dhcproto::v4::MAGIC;
/// Length of the fixed header and the magic cookie: where the options start.
const OPTIONS_START: usize = 240;
/// Encoded messages are padded to this length, the minimum BOOTP message size that some
/// clients and relays still insist on (RFC 1542 section 2.1).
pub const MIN_ENCODED_LEN: usize = dhcproto::v4::MIN_PACKET_SIZE;
/// Pad: a single zero byte, no length.
const PAD: u8 = 0;
/// End: the last option, no length.
const END: u8 = 255;

/// Why a datagram is not a DHCP message we can read, or a message cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed header and the magic cookie.
    #[error("message is {0} bytes, shorter than the 240-byte header")]
    Truncated(usize),
    /// `hlen` does not fit the 16-byte `chaddr`.
    #[error("hardware address length {0} is over 16")]
    BadHardwareLength(u8),
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
    /// `dhcproto` could not read the fixed header.
    #[error("cannot decode the DHCP header: {0}")]
    Decode(#[from] DecodeError),
    /// `dhcproto` could not write the message.
    #[error("cannot encode the DHCP message: {0}")]
    Encode(#[from] EncodeError),
}

/// Reads a message from a UDP payload (see the module documentation for what is checked).
/// Never panics.
pub fn decode(bytes: &[u8]) -> Result<Message, PacketError> {
    let Some((fixed, options)) = bytes.split_first_chunk::<OPTIONS_START>() else {
        return Err(PacketError::Truncated(bytes.len()));
    };
    let hlen = fixed[2];
    if hlen > 16 {
        return Err(PacketError::BadHardwareLength(hlen));
    }
    let (_, cookie) = fixed
        .split_last_chunk::<4>()
        .ok_or(PacketError::Truncated(0))?;
    if *cookie != MAGIC_COOKIE {
        return Err(PacketError::BadCookie(*cookie));
    }
    // The header alone: dhcproto reads no options from it.
    let mut message = Message::from_bytes(fixed)?;
    let mut opts = DhcpOptions::new();
    for (code, instances) in option_instances(options)? {
        let len = value_len(&instances);
        if !dhcproto_reads_safely(code, len) {
            continue;
        }
        if let Ok(option) = DhcpOption::from_bytes(&instances)
            && writes_back(&option)
        {
            opts.insert(option);
        }
    }
    message.set_opts(opts);
    Ok(message)
}

/// Writes a message as a UDP payload: `dhcproto`'s encoding, an END option if there are no
/// options (`dhcproto` writes none then), and zero padding up to 300 bytes.
pub fn encode(message: &Message) -> Result<Vec<u8>, PacketError> {
    let mut out = message.to_vec()?;
    if message.opts().is_empty() {
        out.push(END);
    }
    if out.len() < MIN_ENCODED_LEN {
        out.resize(MIN_ENCODED_LEN, PAD);
    }
    Ok(out)
}

/// The options area after the magic cookie, as one buffer per option code in order of first
/// appearance, each holding every instance of the code (code, length, value) one after the
/// other, so that `dhcproto` concatenates them (RFC 3396).
fn option_instances(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, PacketError> {
    let mut options: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut offset = 0;
    loop {
        let Some(&code) = bytes.get(offset) else {
            return Err(PacketError::MissingEnd);
        };
        match code {
            END => return Ok(options),
            PAD => offset += 1,
            _ => {
                let overrun = PacketError::OptionOverrun {
                    code,
                    offset: OPTIONS_START + offset,
                };
                let Some(&len) = bytes.get(offset + 1) else {
                    return Err(overrun);
                };
                let end = offset + 2 + usize::from(len);
                let instance = bytes.get(offset..end).ok_or(overrun)?;
                match options.iter_mut().find(|(seen, _)| *seen == code) {
                    Some((_, buf)) => buf.extend_from_slice(instance),
                    None => options.push((code, instance.to_vec())),
                }
                offset = end;
            }
        }
    }
}

/// The length of the value of instances laid out by [`option_instances`].
fn value_len(mut instances: &[u8]) -> usize {
    let mut total = 0;
    while let [_, len, rest @ ..] = instances {
        let len = usize::from(*len);
        total += len;
        instances = rest.get(len..).unwrap_or_default();
    }
    total
}

/// Whether `dhcproto` 0.15 decodes (and encodes again) an option of this code and value length
/// without a `debug_assert!` failing or an arithmetic overflow; lengths it handles with an error
/// are fine.
fn dhcproto_reads_safely(code: u8, len: usize) -> bool {
    match code {
        // Rapid commit.
        80 => len == 0,
        // Client FQDN: flags, two RCODEs, the name.
        81 => len >= 3,
        // Client network interface identifier.
        94 => len == 3,
        // Bulk leasequery status code: encoding writes `message.len() as u8 + 1`.
        151 => len <= 255,
        // Bulk leasequery times.
        152..=155 => len == 4,
        _ => true,
    }
}

/// Whether `dhcproto` writes the option so that it reads it back the same. Two kinds of
/// options it decodes do not (dhcproto 0.15): those whose value is empty (a list, string or
/// sub-option set with nothing in it, which it writes as no option at all), and a client FQDN
/// (option 81) without the E flag, whose ASCII name it reads as a wire-format one. A decoded
/// message holds neither, so that it encodes and decodes back to itself.
fn writes_back(option: &DhcpOption) -> bool {
    let again = option.to_vec().map(|bytes| DhcpOption::from_bytes(&bytes));
    matches!(again, Ok(Ok(again)) if again == *option)
}

/// The client's MAC address, for Ethernet only (`htype` 1, `hlen` 6).
pub fn client_mac(message: &Message) -> Option<[u8; 6]> {
    if message.htype() != HType::Eth || message.hlen() != 6 {
        return None;
    }
    message.chaddr().try_into().ok()
}

/// The requested IP address (option 50).
pub fn requested_ip(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::RequestedIpAddress)? {
        DhcpOption::RequestedIpAddress(addr) => Some(*addr),
        _ => None,
    }
}

/// The server identifier (option 54).
pub fn server_id(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier)? {
        DhcpOption::ServerIdentifier(addr) => Some(*addr),
        _ => None,
    }
}

/// The largest message the client accepts (option 57).
pub fn max_message_size(message: &Message) -> Option<u16> {
    match message.opts().get(OptionCode::MaxMessageSize)? {
        DhcpOption::MaxMessageSize(size) => Some(*size),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A DHCPDISCOVER as busybox udhcpc sends it, options trimmed, on the wire.
    fn discover_bytes() -> Vec<u8> {
        let mut bytes = vec![0; OPTIONS_START];
        bytes[..4].copy_from_slice(&[1, 1, 6, 0]);
        bytes[4..8].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        bytes[8..10].copy_from_slice(&[0, 3]);
        bytes[28..34].copy_from_slice(&MAC);
        bytes[236..240].copy_from_slice(&MAGIC_COOKIE);
        bytes.extend_from_slice(&[53, 1, 1]);
        bytes.extend_from_slice(&[55, 7, 1, 3, 6, 12, 15, 28, 121]);
        bytes.extend_from_slice(&[57, 2, 0x05, 0xdc]);
        bytes.push(END);
        bytes
    }

    /// The bytes up to the options, followed by `options`.
    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut bytes = discover_bytes();
        bytes.truncate(OPTIONS_START);
        bytes.extend_from_slice(options);
        bytes
    }

    #[test]
    fn decode_reads_header_and_options() {
        let message = decode(&discover_bytes()).unwrap();
        assert_eq!(message.opcode(), Opcode::BootRequest);
        assert_eq!(message.xid(), 0x1234_5678);
        assert_eq!(message.secs(), 3);
        assert_eq!(client_mac(&message), Some(MAC));
        assert_eq!(message.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(max_message_size(&message), Some(1500));
        assert_eq!(
            message.opts().get(OptionCode::ParameterRequestList),
            Some(&DhcpOption::ParameterRequestList(
                [1, 3, 6, 12, 15, 28, 121].map(OptionCode::from).to_vec()
            ))
        );
    }

    #[test]
    fn encode_then_decode_gives_the_message_back() {
        let message = decode(&discover_bytes()).unwrap();
        let bytes = encode(&message).unwrap();
        assert_eq!(bytes.len(), MIN_ENCODED_LEN);
        assert_eq!(&bytes[..OPTIONS_START], &discover_bytes()[..OPTIONS_START]);
        assert_eq!(decode(&bytes).unwrap(), message);
    }

    #[test]
    fn a_message_without_options_still_ends_with_end() {
        let message = decode(&with_options(&[END])).unwrap();
        assert!(message.opts().is_empty());
        let bytes = encode(&message).unwrap();
        assert_eq!(bytes[OPTIONS_START], END);
        assert_eq!(bytes.len(), MIN_ENCODED_LEN);
        assert_eq!(decode(&bytes).unwrap(), message);
    }

    #[test]
    fn accessors_read_the_options() {
        let message = decode(&with_options(&[
            53, 1, 3, 50, 4, 10, 1, 2, 3, 54, 4, 169, 254, 254, 2, END,
        ]))
        .unwrap();
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(requested_ip(&message), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(server_id(&message), Some(Ipv4Addr::new(169, 254, 254, 2)));
        assert_eq!(max_message_size(&message), None);
    }

    /// An option dhcproto cannot read is left out, and the options after it are still read.
    #[test]
    fn an_unreadable_option_does_not_hide_the_next_ones() {
        let message = decode(&with_options(&[
            53, 1, 3, // DHCPREQUEST
            12, 2, 0xff, 0xfe, // a host name that is not UTF-8
            50, 3, 10, 1, 2, // a requested address one byte short
            54, 4, 169, 254, 254, 2, // the server identifier
            END,
        ]))
        .unwrap();
        assert_eq!(message.opts().get(OptionCode::Hostname), None);
        assert_eq!(requested_ip(&message), None);
        assert_eq!(server_id(&message), Some(Ipv4Addr::new(169, 254, 254, 2)));
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
    }

    #[test]
    fn split_options_are_concatenated_even_when_not_adjacent() {
        let message = decode(&with_options(&[
            12, 2, b'v', b'm', 53, 1, 3, 0, 0, 12, 1, b'1', END,
        ]))
        .unwrap();
        assert_eq!(
            message.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("vm1".into()))
        );
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(message.opts().iter().count(), 2);
    }

    #[test]
    fn long_options_are_split_and_joined_again() {
        let mut message = decode(&discover_bytes()).unwrap();
        let long = "x".repeat(600);
        message.opts_mut().insert(DhcpOption::Message(long.clone()));
        let bytes = encode(&message).unwrap();
        // Options in code order: 53 (3 bytes), 55 (9), 56 split 255 + 255 + 90, 57 (4).
        let start = OPTIONS_START + 3 + 9;
        assert_eq!(&bytes[start..start + 2], &[56, 255]);
        assert_eq!(&bytes[start + 257..start + 259], &[56, 255]);
        assert_eq!(&bytes[start + 514..start + 516], &[56, 90]);
        assert_eq!(&bytes[start + 606..start + 610], &[57, 2, 0x05, 0xdc]);
        assert_eq!(bytes[start + 610], END);
        assert_eq!(bytes.len(), start + 611);
        assert_eq!(decode(&bytes).unwrap(), message);
    }

    /// dhcproto 0.15 `debug_assert!`s these lengths: such options are left out, no panic.
    #[test]
    fn options_dhcproto_would_assert_on_are_left_out() {
        for option in [
            &[80, 1, 0][..],
            &[81, 2, 0, 0],
            &[94, 2, 0, 0],
            &[152, 2, 0, 0],
            &[155, 0],
        ] {
            let mut options = vec![53, 1, 1];
            options.extend_from_slice(option);
            options.push(END);
            let message = decode(&with_options(&options)).unwrap();
            assert_eq!(message.opts().iter().count(), 1, "{option:?}");
        }
        let mut status = vec![53, 1, 1];
        for _ in 0..2 {
            status.extend_from_slice(&[151, 128]);
            status.extend_from_slice(&[b'a'; 128]);
        }
        status.push(END);
        let message = decode(&with_options(&status)).unwrap();
        assert_eq!(message.opts().iter().count(), 1);
        let rapid_commit = decode(&with_options(&[80, 0, END])).unwrap();
        assert_eq!(
            rapid_commit.opts().get(OptionCode::RapidCommit),
            Some(&DhcpOption::RapidCommit)
        );
    }

    /// Options dhcproto would not write back as it read them are left out.
    #[test]
    fn options_dhcproto_cannot_write_back_are_left_out() {
        let message = decode(&with_options(&[
            53, 1, 1, // DHCPDISCOVER
            3, 0, // no routers: dhcproto would write no option 3 at all
            81, 5, 0, 0, 0, b'v', b'm', // a client FQDN in ASCII (E flag clear)
            END,
        ]))
        .unwrap();
        assert_eq!(message.opts().iter().count(), 1);
        // The same name in wire format (E flag set) is kept.
        let message = decode(&with_options(&[81, 7, 0x04, 0, 0, 2, b'v', b'm', 0, END])).unwrap();
        assert!(message.opts().get(OptionCode::ClientFQDN).is_some());
        assert_eq!(decode(&encode(&message).unwrap()).unwrap(), message);
    }

    #[test]
    fn client_mac_is_only_read_for_ethernet() {
        let mut bytes = discover_bytes();
        bytes[1] = 6;
        assert_eq!(client_mac(&decode(&bytes).unwrap()), None);
        let mut bytes = discover_bytes();
        bytes[2] = 16;
        assert_eq!(client_mac(&decode(&bytes).unwrap()), None);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = discover_bytes();
        assert!(matches!(decode(&[]), Err(PacketError::Truncated(0))));
        assert!(matches!(
            decode(&good[..239]),
            Err(PacketError::Truncated(239))
        ));

        let mut bad_hlen = good.clone();
        bad_hlen[2] = 17;
        assert!(matches!(
            decode(&bad_hlen),
            Err(PacketError::BadHardwareLength(17))
        ));

        let mut bad_cookie = good.clone();
        bad_cookie[239] = 0;
        assert!(matches!(
            decode(&bad_cookie),
            Err(PacketError::BadCookie([99, 130, 83, 0]))
        ));

        let mut no_end = good[..243].to_vec();
        assert!(matches!(decode(&no_end), Err(PacketError::MissingEnd)));
        no_end.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(decode(&no_end), Err(PacketError::MissingEnd)));

        assert!(matches!(
            decode(&with_options(&[53, 1, 1, 12, 5, b'a', b'b'])),
            Err(PacketError::OptionOverrun {
                code: 12,
                offset: 243
            })
        ));
        assert!(matches!(
            decode(&with_options(&[12])),
            Err(PacketError::OptionOverrun {
                code: 12,
                offset: 240
            })
        ));
    }

    #[test]
    fn pad_bytes_and_trailing_garbage_after_end_are_ignored() {
        let message = decode(&with_options(&[0, 0, 53, 1, 1, 0, END, 1, 2, 3])).unwrap();
        assert_eq!(message.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(message.opts().iter().count(), 1);
    }
}
