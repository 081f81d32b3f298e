//! What the store keeps for each sandbox and container.

use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};
use virtlet_core::{ContainerState, SandboxState};

/// The root disk of a pod's VM: it belongs to the sandbox, so a VM restarted by the kubelet
/// (a new container in the same pod) boots the same disk, like a machine rebooting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDisk {
    pub path: PathBuf,
    /// The image digest (hex) the overlay is backed by.
    pub image_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub state: SandboxState,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at_ns: i64,
    pub netns: PathBuf,
    pub root_disk: Option<RootDisk>,
    /// CNI's part: `None` only for records written before pod networking.
    #[serde(default)]
    pub network: Option<crate::network::NetRecord>,
}

impl SandboxRecord {
    /// What the VM gets from the pod network, once it is set up.
    pub fn pod_network(&self) -> Option<&virtlet_core::netinfo::PodNetwork> {
        self.network.as_ref().and_then(|n| n.pod.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: i32,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub state: ContainerState,
    pub config: ContainerConfig,
    /// `name@sha256:<hex>` of the image the VM was made from.
    pub image_ref: String,
    /// `sha256:<hex>`.
    pub image_id: String,
    pub domain_name: String,
    pub root_target: String,
    pub console_socket: Option<PathBuf>,
    /// The cloud-init seed disk (removed with the container).
    #[serde(default)]
    pub seed: Option<PathBuf>,
    pub log_path: Option<PathBuf>,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit: Option<Exit>,
}
