//! [`VmSpec`]: everything that defines one VM, built by a pure function from the pod, the
//! container and what the node decided (image, paths, KVM). The `vm` crate renders it to
//! libvirt domain XML.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::annotations::{CpuModel, CpuSetting, DiskDriver, VmAnnotations};
use crate::naming;

/// Memory when the container sets no limit.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// Terminals for `exec -t`: virtio consoles beside the serial console, each a real tty in
/// the guest (`/dev/hvc1`..), each one session at a time (docs/exec.md).
pub const EXEC_TTYS: usize = 4;

/// The guest's device of exec terminal `n` (the virtio consoles register in order; `hvc0`
/// is a null console that `systemd-getty-generator` may take).
pub fn exec_tty_device(n: usize) -> String {
    format!("/dev/hvc{n}")
}

/// The unix socket of exec terminal `n` (1-based, the guest's `/dev/hvc<n>`): beside the
/// serial console's socket.
pub fn exec_tty_socket(console_socket: &std::path::Path, n: usize) -> PathBuf {
    console_socket.with_extension(format!("tty{n}.sock"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainType {
    /// Hardware virtualization.
    Kvm,
    /// TCG software emulation.
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The file or block device (unused for a network disk).
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// Guest device name (`sda`, `vdb`...).
    pub target: String,
    #[serde(default)]
    pub source: DiskSource,
    /// What the guest reads as the disk's serial (`/sys/block/*/serial`, by-id links): how
    /// cloud-init finds a volume's disk.
    #[serde(default)]
    pub serial: Option<String>,
}

/// A host directory the guest mounts over virtio-9p by its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    pub source: PathBuf,
    /// The 9p mount tag (at most 31 bytes).
    pub tag: String,
    pub read_only: bool,
}

/// Where a disk's bytes are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskSource {
    /// `path` is a file.
    #[default]
    File,
    /// `path` is a host block device; with `offset`, the guest sees its `size` bytes from
    /// there on (a persistent root filesystem's header sector is skipped).
    Block { offset: u64, size: u64 },
    /// A Ceph RBD image (libvirt network disk), its key in the libvirt secret `secret_uuid`.
    Rbd {
        monitors: Vec<String>,
        pool: String,
        image: String,
        user: String,
        secret_uuid: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cpu {
    Default,
    HostModel,
    Custom(Box<CpuSetting>),
}

/// The typed description of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub domain_name: String,
    pub uuid: String,
    pub domain_type: DomainType,
    /// What libvirt runs as the emulator (virtlet's `vmwrapper`).
    pub emulator: PathBuf,
    pub memory_bytes: u64,
    pub vcpus: u32,
    /// cgroup v1 cpu.shares for the whole VM.
    pub cpu_shares: Option<u64>,
    /// CFS quota and period for the whole VM, in microseconds.
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub cpu: Cpu,
    pub disk_bus: DiskDriver,
    /// Root disk first.
    pub disks: Vec<Disk>,
    /// Host directories shared over virtio-9p.
    #[serde(default)]
    pub filesystems: Vec<Filesystem>,
    /// The serial console's unix socket (QEMU listens); `None`: a pty (drivers without QEMU).
    pub console_socket: Option<PathBuf>,
    /// The network namespace QEMU enters (through `vmwrapper`).
    pub netns: Option<PathBuf>,
    /// The VM's NICs, in order: taps inside `netns`.
    #[serde(default)]
    pub nics: Vec<Nic>,
    pub sandbox_id: String,
    pub container_id: String,
}

/// What the node decided for a VM, beyond what the pod says.
#[derive(Debug, Clone)]
pub struct NodeChoices {
    pub domain_type: DomainType,
    pub emulator: PathBuf,
    /// The node's configured CPU model (`--cpu-model`), overridden by the pod's.
    pub cpu_model: Option<CpuModel>,
    pub root_disk: PathBuf,
    pub root_format: DiskFormat,
    pub console_socket: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    pub nics: Vec<Nic>,
}

/// One NIC of a VM: a tap QEMU opens inside the pod netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub tap: String,
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub mtu: u16,
}

/// The pod and container facts a VM is built from.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    pub sandbox_id: &'a str,
    pub container_id: &'a str,
    pub pod_uid: &'a str,
    pub container_name: &'a str,
    /// The VM's UUID (see [`naming::domain_uuid`] and [`naming::sibling_uuid`]).
    pub uuid: &'a str,
    pub memory_limit_bytes: i64,
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
}

/// Builds the VM's spec (pure).
pub fn build(pod: &PodFacts<'_>, annotations: &VmAnnotations, node: &NodeChoices) -> VmSpec {
    let cpu = match (
        &annotations.cpu_setting,
        annotations.cpu_model.or(node.cpu_model),
    ) {
        (Some(setting), _) => Cpu::Custom(Box::new(setting.clone())),
        (None, Some(CpuModel::HostModel)) => Cpu::HostModel,
        _ => Cpu::Default,
    };
    let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
    let root_target = naming::disk_target(annotations.disk_bus(), 0).unwrap_or_default();
    VmSpec {
        domain_name: naming::domain_name(pod.container_id, pod.container_name),
        uuid: pod.uuid.to_owned(),
        domain_type: node.domain_type,
        emulator: node.emulator.clone(),
        memory_bytes: positive(pod.memory_limit_bytes).unwrap_or(DEFAULT_MEMORY_BYTES),
        vcpus: annotations.vcpus.max(1),
        cpu_shares: positive(pod.cpu_shares),
        cpu_quota_us: (pod.cpu_quota > 0).then_some(pod.cpu_quota),
        cpu_period_us: if pod.cpu_quota > 0 {
            positive(pod.cpu_period).or(Some(100_000))
        } else {
            None
        },
        cpu,
        disk_bus: annotations.disk_bus(),
        disks: vec![Disk {
            path: node.root_disk.clone(),
            format: node.root_format,
            read_only: false,
            target: root_target,
            source: DiskSource::File,
            serial: None,
        }],
        filesystems: Vec::new(),
        console_socket: node.console_socket.clone(),
        netns: node.netns.clone(),
        nics: node.nics.clone(),
        sandbox_id: pod.sandbox_id.to_owned(),
        container_id: pod.container_id.to_owned(),
    }
}

impl VmAnnotations {
    pub fn disk_bus(&self) -> DiskDriver {
        self.disk_driver
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node() -> NodeChoices {
        NodeChoices {
            domain_type: DomainType::Qemu,
            emulator: "/usr/lib/virtlet/vmwrapper".into(),
            cpu_model: None,
            root_disk: "/var/lib/virtlet/vms/s/root.qcow2".into(),
            root_format: DiskFormat::Qcow2,
            console_socket: Some("/var/lib/virtlet/vms/s/c/console.sock".into()),
            netns: Some("/var/run/netns/uid".into()),
            nics: vec![],
        }
    }

    fn facts() -> PodFacts<'static> {
        PodFacts {
            sandbox_id: "s",
            container_id: "0123456789abcdef",
            pod_uid: "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a",
            container_name: "vm",
            uuid: "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a",
            memory_limit_bytes: 0,
            cpu_shares: 0,
            cpu_quota: 0,
            cpu_period: 0,
        }
    }

    #[test]
    fn defaults() {
        let spec = build(
            &facts(),
            &VmAnnotations::parse(&Default::default()).unwrap(),
            &node(),
        );
        assert_eq!(spec.memory_bytes, DEFAULT_MEMORY_BYTES);
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.cpu, Cpu::Default);
        assert_eq!(spec.disks[0].target, "sda");
        assert_eq!(spec.domain_name, "virtlet-0123456789abc-vm");
        assert_eq!(spec.uuid, "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a");
        assert_eq!(spec.cpu_period_us, None);
    }

    #[test]
    fn resources_and_overrides() {
        let mut f = facts();
        f.memory_limit_bytes = 512 << 20;
        f.cpu_shares = 512;
        f.cpu_quota = 50_000;
        let mut n = node();
        n.cpu_model = Some(CpuModel::HostModel);
        let ann: std::collections::HashMap<String, String> =
            [("VirtletDiskDriver", "virtio"), ("VirtletVCPUCount", "2")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        let spec = build(&f, &VmAnnotations::parse(&ann).unwrap(), &n);
        assert_eq!(spec.memory_bytes, 512 << 20);
        assert_eq!(spec.cpu_shares, Some(512));
        assert_eq!(spec.cpu_quota_us, Some(50_000));
        assert_eq!(spec.cpu_period_us, Some(100_000));
        assert_eq!(spec.cpu, Cpu::HostModel, "the node's model applies");
        assert_eq!(spec.disks[0].target, "vda");
        assert_eq!(spec.vcpus, 2);
    }
}
