//! A DHCPv4 responder that hands a pod's VM its pod address.
//!
//! A virtlet pod is a QEMU VM. The CNI plugin gives the pod network namespace an interface with
//! the pod IP; the runtime moves that address to the VM by bridging the interface with the VM's
//! tap device, and the VM learns its address, routes, DNS and MTU over DHCP from this crate.
//!
//! One [`Responder`] runs per VM interface:
//!
//! * its socket is bound (SO_BINDTODEVICE) to the bridge *inside the pod network namespace*
//!   ([`bind_in_netns`]), so it never sees another pod's traffic nor the host's;
//! * it answers only the MAC of the VM's interface ([`Lease::mac`]) and stays silent for any
//!   other client, relayed messages and messages naming another server, so it cannot disturb
//!   other DHCP servers on the same link;
//! * its server identifier ([`Config::server_id`]) is a link-local address (e.g.
//!   169.254.254.2) the runtime assigns to the bridge. Every reply carries option 121 with an
//!   on-link `server_id/32` route first, so the VM can reach the server by unicast and renew
//!   its lease without broadcasting. For the renewals to reach the socket, the namespace must
//!   accept packets from the pod IP on the bridge: with reverse-path filtering on, it needs a
//!   route to the pod IP via the bridge (`tests/udhcpc.rs` sets up exactly that), otherwise
//!   renewals and rebinding requests are dropped and the VM loses its lease when it expires.
//!
//! The crate is layered like the rest of virtlet: [`packet`] is the wire codec (the
//! [`dhcproto`] crate's DHCPv4 messages and options, with the checks it leaves to its user),
//! [`lease`] the pure reply logic ([`respond`]), and [`server`] the only module with side
//! effects (namespace, socket, tokio task).

pub mod lease;
pub mod packet;
pub mod server;

/// The DHCP codec the messages come from, so that users name the same version's types.
pub use dhcproto;
pub use lease::{Config, ConfigError, Lease, Mac, Reply, Route, respond};
pub use packet::{Message, MessageType, PacketError, decode, encode};
pub use server::{Responder, bind_in_netns, live_responders};
