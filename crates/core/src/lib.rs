//! virtlet's domain model, pure and heavily unit-tested: pod annotations (Mirantis Virtlet's
//! `Virtlet*` keys), Kubernetes quantities, naming of VMs and their files, the state machines of
//! sandboxes and containers, and [`VmSpec`], the typed description of one VM.

pub mod annotations;
pub mod error;
pub mod naming;
pub mod netinfo;
pub mod quantity;
pub mod state;
pub mod vmspec;

pub use annotations::{AnnotationError, CpuModel, DiskDriver, VmAnnotations};
pub use error::ErrorKind;
pub use state::{ContainerState, SandboxState, TransitionError};
pub use vmspec::{Disk, DiskFormat, DomainType, VmSpec};
