//! VMs for virtlet: [`VmSpec`](virtlet_core::VmSpec) rendered to libvirt domain XML (pure),
//! the libvirt driver, root disk overlays, the KVM probe, and console capture into CRI logs.

pub mod agent;
pub mod console;
pub mod disk;
pub mod domain_xml;
pub mod driver;
pub mod kvm;
pub mod sample;
pub mod secrets;

pub use driver::{
    AgentFailure, DomainStatus, DriverError, ExitInfo, Libvirt, OwnedDomain, VmSample, VmStats,
};
