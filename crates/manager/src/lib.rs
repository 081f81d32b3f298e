//! The pod and container lifecycle of virtlet. A pod sandbox is a network namespace and
//! metadata; each of its containers is a libvirt domain. Every state change goes through the
//! state machines in `virtlet_core::state`, is written to the store before the side effect that
//! would leave something behind (so startup recovery can finish or undo it), and is mirrored in
//! an in-memory cache ([`cache::Records`]) that answers the kubelet's List/Status calls without
//! touching libvirt.
//!
//! Calls on one pod are serialized by a per-pod lock; calls on different pods run in parallel.
//! The modules: [`sandbox`] and [`container`] carry out the CRI calls, [`plan`] decides what
//! CreateContainer makes (pure), [`recovery`] learns from libvirt what happened without a
//! call, [`network`] runs CNI and the DHCP responders.

mod cache;
mod container;
pub mod disks;
mod error;
pub mod exec;
pub mod exec_tty;
mod filters;
pub mod netns;
pub mod network;
pub mod plan;
pub mod pod;
mod records;
mod recovery;
mod root_disk;
pub mod rootfs;
mod sandbox;
pub mod sources;
mod volume_disks;
mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{ContainerFilter, PodSandboxFilter};
use virtlet_core::annotations::CpuModel;
use virtlet_core::vmspec::DomainType;
use virtlet_core::{ContainerState, SandboxState};
use virtlet_image::ImageStore;
use virtlet_store::Store;
use virtlet_vm::Libvirt;
use virtlet_vm::console;

pub use error::ManagerError;
pub use records::{ContainerRecord, Exit, RootDisk, SandboxRecord};
pub use virtlet_vm::agent::ExecOutput;

type Result<T> = std::result::Result<T, ManagerError>;

/// How often running VMs are checked for having stopped.
const EXIT_POLL: Duration = Duration::from_millis(500);

/// Where the manager keeps things, and what the node decided.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Per-pod directories (root disks).
    pub vm_dir: PathBuf,
    /// Console sockets (kept short: unix socket paths are limited to 108 bytes).
    pub run_dir: PathBuf,
    /// Network namespaces.
    pub netns_dir: PathBuf,
    /// The emulator libvirt runs (`vmwrapper`).
    pub vmwrapper: PathBuf,
    pub domain_type: DomainType,
    pub cpu_model: Option<CpuModel>,
    /// The kubelet's pods directory: mounted Secrets/ConfigMaps must lie inside it.
    pub kubelet_root_dir: PathBuf,
    pub cni: network::CniSettings,
    /// Kubernetes API access, for the ConfigMaps and Secrets that annotations name.
    pub kube: Option<Arc<virtlet_kube::KubeClient>>,
    /// `--raw-devices`: globs of the host block devices raw FlexVolumes may name.
    pub raw_devices: Vec<String>,
    /// `--allowed-host-paths`: where hostPath directories shared over 9p may lie.
    pub allowed_host_paths: Vec<PathBuf>,
}

pub struct Manager {
    config: ManagerConfig,
    images: Arc<ImageStore>,
    libvirt: Arc<Libvirt>,
    records: cache::Records,
    /// The typed annotations of each sandbox, parsed once.
    pod_specs: Mutex<HashMap<String, Arc<pod::PodSpec>>>,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    consoles: Mutex<HashMap<String, Arc<console::ConsoleHub>>>,
    tty_slots: exec_tty::TtySlots,
    net: network::Networking,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// The short form of an ID, for logs.
fn short(id: &str) -> &str {
    &id[..13.min(id.len())]
}

impl Manager {
    /// Loads the records, reconciles them with libvirt and the disk (finishing or undoing
    /// half-done work, removing what virtlet owns but no longer knows), and starts watching
    /// running VMs.
    pub async fn start(
        config: ManagerConfig,
        store: Arc<Store>,
        images: Arc<ImageStore>,
        libvirt: Arc<Libvirt>,
    ) -> Result<Arc<Manager>> {
        for dir in [
            &config.vm_dir,
            &config.run_dir.join("consoles"),
            &config.netns_dir,
        ] {
            std::fs::create_dir_all(dir)
                .map_err(error::io(format!("cannot create {}", dir.display())))?;
        }
        let records = cache::Records::load(store)?;
        let net = network::Networking::new(config.cni.clone());
        let m = Arc::new(Manager {
            net,
            config,
            images,
            libvirt,
            records,
            pod_specs: Mutex::new(HashMap::new()),
            pod_locks: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
            tty_slots: exec_tty::TtySlots::default(),
        });
        m.recover().await?;
        let weak = Arc::downgrade(&m);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXIT_POLL).await;
                let Some(m) = weak.upgrade() else { break };
                m.poll_exits().await;
            }
        });
        Ok(m)
    }

    fn pod_lock(&self, sandbox_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.pod_locks)
            .entry(sandbox_id.to_owned())
            .or_default()
            .clone()
    }

    /// The sandbox's typed annotations (parsed on first use after a restart).
    fn pod_spec(&self, sandbox: &SandboxRecord) -> Result<Arc<pod::PodSpec>> {
        if let Some(p) = lock(&self.pod_specs).get(&sandbox.id) {
            return Ok(p.clone());
        }
        let p = Arc::new(pod::PodSpec::parse(&sandbox.config)?);
        lock(&self.pod_specs).insert(sandbox.id.clone(), p.clone());
        Ok(p)
    }

    /// What the node decided, for the plan of every VM.
    fn node_facts(&self) -> plan::NodeFacts {
        plan::NodeFacts {
            vm_dir: self.config.vm_dir.clone(),
            run_dir: self.config.run_dir.clone(),
            vmwrapper: self.config.vmwrapper.clone(),
            domain_type: self.config.domain_type,
            cpu_model: self.config.cpu_model,
            runs_qemu: self.libvirt.runs_qemu(),
            raw_devices: self.config.raw_devices.clone(),
        }
    }

    // ----- queries (cache only) -----

    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        self.records.sandbox(id)
    }

    /// Whether this virtlet has a sandbox `id`, in any state: on a node shared with another
    /// runtime, calls about other IDs go there.
    pub fn owns_sandbox(&self, id: &str) -> bool {
        self.records.has_sandbox(id)
    }

    /// Whether this virtlet has a container `id`, in any state.
    pub fn owns_container(&self, id: &str) -> bool {
        self.records.has_container(id)
    }

    pub fn list_sandboxes(&self, filter: Option<&PodSandboxFilter>) -> Vec<SandboxRecord> {
        self.map_sandboxes(filter, SandboxRecord::clone)
    }

    /// Applies `f` to every listed sandbox under one read lock, so a List call builds its
    /// answer without first copying whole records (the kubelet lists every second).
    pub fn map_sandboxes<T>(
        &self,
        filter: Option<&PodSandboxFilter>,
        f: impl Fn(&SandboxRecord) -> T,
    ) -> Vec<T> {
        let mut out = Vec::new();
        self.records.for_each_sandbox(filter, |s| out.push(f(s)));
        out
    }

    /// The sandboxes' generation: it changes whenever a sandbox record does.
    pub fn sandboxes_generation(&self) -> u64 {
        self.records.sandboxes_generation()
    }

    /// Calls `f` on every listed sandbox, in ID order, under one read lock. Returns the
    /// generation ([`Self::sandboxes_generation`]) of what `f` saw.
    pub fn for_each_sandbox(
        &self,
        filter: Option<&PodSandboxFilter>,
        f: impl FnMut(&SandboxRecord),
    ) -> u64 {
        self.records.for_each_sandbox(filter, f)
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.records.container(id)
    }

    pub fn list_containers(&self, filter: Option<&ContainerFilter>) -> Vec<ContainerRecord> {
        self.map_containers(filter, ContainerRecord::clone)
    }

    /// Applies `f` to every listed container under one read lock (see [`Self::map_sandboxes`]).
    pub fn map_containers<T>(
        &self,
        filter: Option<&ContainerFilter>,
        f: impl Fn(&ContainerRecord) -> T,
    ) -> Vec<T> {
        let mut out = Vec::new();
        self.records.for_each_container(filter, |c| out.push(f(c)));
        out
    }

    /// The containers' generation: it changes whenever a container record does.
    pub fn containers_generation(&self) -> u64 {
        self.records.containers_generation()
    }

    /// Calls `f` on every listed container, in ID order, under one read lock. Returns the
    /// generation ([`Self::containers_generation`]) of what `f` saw.
    pub fn for_each_container(
        &self,
        filter: Option<&ContainerFilter>,
        f: impl FnMut(&ContainerRecord),
    ) -> u64 {
        self.records.for_each_container(filter, f)
    }
}

/// The filesystem VM disks live on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsFigures {
    pub capacity_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// The CRI enum value of a sandbox state.
pub fn sandbox_cri_state(s: SandboxState) -> i32 {
    use k8s_cri::v1::PodSandboxState as P;
    match s {
        SandboxState::Ready => P::SandboxReady as i32,
        _ => P::SandboxNotready as i32,
    }
}

/// The CRI enum value of a container state.
pub fn container_cri_state(s: ContainerState) -> i32 {
    use k8s_cri::v1::ContainerState as C;
    match s {
        ContainerState::Created => C::ContainerCreated as i32,
        ContainerState::Running => C::ContainerRunning as i32,
        ContainerState::Exited => C::ContainerExited as i32,
        ContainerState::Creating | ContainerState::Removing => C::ContainerUnknown as i32,
    }
}
