//! What the store keeps for each sandbox and container.

use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};
use virtlet_core::{ContainerState, SandboxState};

/// The root disk of one of a pod's VMs. It belongs to the sandbox and is keyed by the
/// container's name, so a VM restarted by the kubelet (a new container of the same name in the
/// same pod) boots the same disk, like a machine rebooting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDisk {
    pub path: PathBuf,
    /// The image digest (hex) the overlay is backed by.
    pub image_digest: String,
    /// The container name the disk belongs to. Empty for a disk made when a pod had one VM:
    /// the next container created in the pod claims it.
    #[serde(default)]
    pub container_name: String,
    /// Who this disk is among the image's users; empty means the sandbox ID (older records).
    #[serde(default)]
    pub image_user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub state: SandboxState,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at_ns: i64,
    pub netns: PathBuf,
    /// The single root disk of records written when a pod had one VM; moved into
    /// `root_disks` when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk: Option<RootDisk>,
    /// The root disks of the pod's VMs, one per container name.
    #[serde(default)]
    pub root_disks: Vec<RootDisk>,
    /// The container name whose VM has the pod's network (its NICs and address): the first
    /// container created in the pod, and the containers of that name after it.
    #[serde(default)]
    pub network_owner: Option<String>,
    /// CNI's part: `None` only for records written before pod networking.
    #[serde(default)]
    pub network: Option<crate::network::NetRecord>,
}

impl SandboxRecord {
    /// Brings a record written by an older virtlet to the current shape.
    pub fn upgrade(mut self) -> SandboxRecord {
        if let Some(old) = self.root_disk.take() {
            self.root_disks.push(old);
        }
        self
    }

    /// The root disk of the container named `name`: its own, or an unclaimed older one.
    pub fn root_disk_of(&self, name: &str) -> Option<&RootDisk> {
        self.root_disks
            .iter()
            .find(|r| r.container_name == name)
            .or_else(|| self.root_disks.iter().find(|r| r.container_name.is_empty()))
    }

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
    /// `repo@sha256:<hex>` of the image the VM was made from (its ID when it has no name).
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
