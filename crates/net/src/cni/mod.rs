//! CNI: config discovery, plugin invocation, results.

pub mod config;
pub mod exec;
pub mod result;

pub use config::{NetworkConfig, load_first};
pub use exec::{Attachment, CniRuntime, PortMapping};
pub use result::{Cidr, CniResult};
