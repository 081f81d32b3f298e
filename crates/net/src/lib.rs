//! Pod networking: the node's CNI config and plugins ([`cni`]), the plumbing inside the pod's
//! netns that hands the CNI address to the VM ([`podside`]), and what the DHCP responder on
//! each bridge hands out ([`dhcpconf`]). The manager drives them and keeps what they return
//! with the sandbox, so teardown (CNI DEL) and restarts use what setup used.

pub mod cni;
pub mod dhcpconf;
mod error;
pub mod podside;

pub use error::NetError;
