//! The pod and container lifecycle of virtlet. A pod sandbox is a network namespace and
//! metadata; its one container is a libvirt domain. Every state change goes through the state
//! machines in `virtlet_core::state`, is written to the store before the side effect that
//! would leave something behind (so startup recovery can finish or undo it), and is mirrored in
//! an in-memory cache that answers the kubelet's List/Status calls without touching libvirt.
//!
//! Calls on one pod are serialized by a per-pod lock; calls on different pods run in parallel.

mod error;
mod filters;
pub mod netns;
pub mod network;
mod records;
pub mod sources;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, LinuxContainerResources, NamespaceMode, PodSandboxConfig,
    PodSandboxFilter,
};
use tracing::{Instrument, debug, info, info_span, warn};
use virtlet_cloudinit::generate::SeedKind;
use virtlet_cloudinit::{CloudInitAnnotations, CloudInitError};
use virtlet_core::annotations::CloudInitImageType;
use virtlet_core::annotations::CpuModel;
use virtlet_core::vmspec::Disk;
use virtlet_core::vmspec::{self, DiskFormat, DomainType, NodeChoices, PodFacts};
use virtlet_core::{ContainerState, ErrorKind, SandboxState, VmAnnotations, naming};
use virtlet_image::ImageStore;
use virtlet_store::{RecordTable, Store};
use virtlet_vm::console::{self, ConsoleLog};
use virtlet_vm::{DomainStatus, Libvirt, VmStats, domain_xml};

pub use error::ManagerError;
pub use records::{ContainerRecord, Exit, RootDisk, SandboxRecord};

type Result<T> = std::result::Result<T, ManagerError>;

/// How often running VMs are checked for having stopped.
const EXIT_POLL: Duration = Duration::from_millis(500);
/// How long StartContainer waits for QEMU's console socket.
const CONSOLE_PATIENCE: Duration = Duration::from_secs(10);

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
}

pub struct Manager {
    config: ManagerConfig,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    libvirt: Arc<Libvirt>,
    sandboxes: RwLock<BTreeMap<String, SandboxRecord>>,
    containers: RwLock<BTreeMap<String, ContainerRecord>>,
    /// Bumped, under the write lock, by every change to `sandboxes` / `containers`: lets List
    /// answers be reused while nothing changed.
    sandboxes_gen: AtomicU64,
    containers_gen: AtomicU64,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    consoles: Mutex<HashMap<String, Arc<console::ConsoleHub>>>,
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

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ManagerError {
    move |e| ManagerError::internal(format!("{what}: {e}"))
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
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let sandboxes: Vec<SandboxRecord> = store.records(RecordTable::Sandboxes)?;
        let containers: Vec<ContainerRecord> = store.records(RecordTable::Containers)?;
        let net = network::Networking::new(config.cni.clone());
        let m = Arc::new(Manager {
            net,
            config,
            store,
            images,
            libvirt,
            sandboxes: RwLock::new(
                sandboxes
                    .into_iter()
                    .map(|s| (s.id.clone(), s.upgrade()))
                    .collect(),
            ),
            containers: RwLock::new(containers.into_iter().map(|c| (c.id.clone(), c)).collect()),
            sandboxes_gen: AtomicU64::new(0),
            containers_gen: AtomicU64::new(0),
            pod_locks: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
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

    fn save_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        self.store
            .put_record(RecordTable::Sandboxes, &rec.id, rec)?;
        let mut map = write(&self.sandboxes);
        map.insert(rec.id.clone(), rec.clone());
        self.sandboxes_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn drop_sandbox(&self, id: &str) -> Result<()> {
        self.store.delete_record(RecordTable::Sandboxes, id)?;
        {
            let mut map = write(&self.sandboxes);
            map.remove(id);
            self.sandboxes_gen.fetch_add(1, Ordering::Release);
        }
        lock(&self.pod_locks).remove(id);
        Ok(())
    }

    fn save_container(&self, rec: &ContainerRecord) -> Result<()> {
        self.store
            .put_record(RecordTable::Containers, &rec.id, rec)?;
        let mut map = write(&self.containers);
        map.insert(rec.id.clone(), rec.clone());
        self.containers_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn drop_container(&self, id: &str) -> Result<()> {
        self.store.delete_record(RecordTable::Containers, id)?;
        {
            let mut map = write(&self.containers);
            map.remove(id);
            self.containers_gen.fetch_add(1, Ordering::Release);
        }
        lock(&self.consoles).remove(id);
        Ok(())
    }

    // ----- queries (cache only) -----

    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        read(&self.sandboxes)
            .get(id)
            .filter(|s| !matches!(s.state, SandboxState::Creating | SandboxState::Removing))
            .cloned()
            .ok_or_else(|| ManagerError::not_found(format!("pod sandbox {id:?} does not exist")))
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
        self.for_each_sandbox(filter, |s| out.push(f(s)));
        out
    }

    /// The sandboxes' generation: it changes whenever a sandbox record does.
    pub fn sandboxes_generation(&self) -> u64 {
        self.sandboxes_gen.load(Ordering::Acquire)
    }

    /// Calls `f` on every listed sandbox, in id order, under one read lock. Returns the
    /// generation ([`Self::sandboxes_generation`]) of what `f` saw.
    pub fn for_each_sandbox(
        &self,
        filter: Option<&PodSandboxFilter>,
        mut f: impl FnMut(&SandboxRecord),
    ) -> u64 {
        let map = read(&self.sandboxes);
        map.values()
            .filter(|s| matches!(s.state, SandboxState::Ready | SandboxState::NotReady))
            .filter(|s| match filter {
                None => true,
                Some(fl) => {
                    filters::id_matches(&fl.id, &s.id)
                        && fl
                            .state
                            .as_ref()
                            .is_none_or(|st| st.state == sandbox_cri_state(s.state))
                        && filters::labels_match(&fl.label_selector, &s.config.labels)
                }
            })
            .for_each(&mut f);
        self.sandboxes_gen.load(Ordering::Acquire)
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        read(&self.containers)
            .get(id)
            .filter(|c| !matches!(c.state, ContainerState::Creating | ContainerState::Removing))
            .cloned()
            .ok_or_else(|| ManagerError::not_found(format!("container {id:?} does not exist")))
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
        self.for_each_container(filter, |c| out.push(f(c)));
        out
    }

    /// The containers' generation: it changes whenever a container record does.
    pub fn containers_generation(&self) -> u64 {
        self.containers_gen.load(Ordering::Acquire)
    }

    /// Calls `f` on every listed container, in id order, under one read lock. Returns the
    /// generation ([`Self::containers_generation`]) of what `f` saw.
    pub fn for_each_container(
        &self,
        filter: Option<&ContainerFilter>,
        mut f: impl FnMut(&ContainerRecord),
    ) -> u64 {
        let map = read(&self.containers);
        map.values()
            .filter(|c| !matches!(c.state, ContainerState::Creating | ContainerState::Removing))
            .filter(|c| match filter {
                None => true,
                Some(fl) => {
                    filters::id_matches(&fl.id, &c.id)
                        && filters::id_matches(&fl.pod_sandbox_id, &c.sandbox_id)
                        && fl
                            .state
                            .as_ref()
                            .is_none_or(|st| st.state == container_cri_state(c.state))
                        && filters::labels_match(&fl.label_selector, &c.config.labels)
                }
            })
            .for_each(&mut f);
        self.containers_gen.load(Ordering::Acquire)
    }

    // ----- pod sandboxes -----

    /// Creates a pod sandbox: its network namespace (loopback only until pod networking
    /// lands) and its record. Retried with the same config after a failure, it works; for a
    /// pod whose sandbox of the same attempt is ready, it returns that sandbox.
    pub async fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| ManagerError::invalid("config.metadata is missing"))?;
        for (field, value) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(ManagerError::invalid(format!(
                    "config.metadata.{field} is empty"
                )));
            }
        }
        if meta.uid.contains('/') || meta.uid.starts_with('.') {
            return Err(ManagerError::invalid(format!(
                "config.metadata.uid {:?} cannot name a network namespace",
                meta.uid
            )));
        }
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == NamespaceMode::Node as i32);
        if host_network {
            return Err(ManagerError::invalid(format!(
                "pod {}/{} asks for the host network (hostNetwork: true); virtlet runs every pod as a VM with its own network",
                meta.namespace, meta.name
            )));
        }
        VmAnnotations::parse(&config.annotations)?;
        CloudInitAnnotations::parse(&config.annotations)
            .map_err(|e| ManagerError::invalid(e.to_string()))?;

        if let Some(existing) = read(&self.sandboxes).values().find(|s| {
            s.state == SandboxState::Ready
                && s.config.metadata.as_ref().is_some_and(|m| {
                    m.uid == meta.uid
                        && m.attempt == meta.attempt
                        && m.name == meta.name
                        && m.namespace == meta.namespace
                })
        }) {
            info!(sandbox = %existing.id, "pod sandbox already running for this pod and attempt");
            return Ok(existing.id.clone());
        }

        network::port_mappings(&config)?;
        network::dns_info(&config)?;
        let cni_config = self.net.current_config()?;

        let id = naming::new_id();
        let span = info_span!("sandbox", id = %&id[..13], pod = %format!("{}/{}", meta.namespace, meta.name));
        async {
            let netns = self.netns_path(&meta.uid, &id);
            let mut rec = SandboxRecord {
                id: id.clone(),
                state: SandboxState::Creating,
                config,
                runtime_handler,
                created_at_ns: now_ns(),
                netns: netns.clone(),
                root_disk: None,
                root_disks: Vec::new(),
                network_owner: None,
                network: Some(network::NetRecord {
                    cni_config: cni_config.raw.clone(),
                    cni_result: None,
                    pod: None,
                    released: false,
                    del_failures: 0,
                }),
            };
            self.save_sandbox(&rec)?;
            let made = blocking({
                let netns = netns.clone();
                move || {
                    let _phase = tracing::debug_span!("netns").entered();
                    netns::create(&netns)
                }
            })
            .await?;
            if let Err(e) = made {
                let _ = self.drop_sandbox(&id);
                return Err(ManagerError::internal(format!(
                    "cannot create network namespace {}: {e}",
                    netns.display()
                )));
            }
            let undo = |m: &Manager| {
                let _ = netns::remove(&netns);
                let _ = m.drop_sandbox(&id);
            };
            let save_result = |result: &serde_json::Value| {
                let mut r = rec.clone();
                if let Some(n) = r.network.as_mut() {
                    n.cni_result = Some(result.clone());
                }
                self.save_sandbox(&r)
            };
            let (result, pod) = match self.net.setup(&rec, &cni_config, save_result).await {
                Ok(v) => v,
                Err(e) => {
                    undo(self);
                    return Err(e);
                }
            };
            if let Some(n) = rec.network.as_mut() {
                n.cni_result = Some(result);
                n.pod = Some(pod.clone());
            }
            network::log_pod_network(&pod);
            if let Err(e) = self.net.start_responders(&rec, &pod).await {
                self.net.stop_responders(&id).await;
                if let Some(stored) = rec.network.clone() {
                    let _ = self.net.release_stored(&rec, &stored).await;
                }
                undo(self);
                return Err(e);
            }
            rec.state = rec.state.transition(SandboxState::Ready)?;
            if let Err(e) = self.save_sandbox(&rec) {
                self.net.stop_responders(&id).await;
                if let Some(stored) = rec.network.clone() {
                    let _ = self.net.release_stored(&rec, &stored).await;
                }
                undo(self);
                return Err(e);
            }
            info!(netns = %netns.display(), ip = ?pod.pod_ip(), "pod sandbox ready");
            Ok(id.clone())
        }
        .instrument(span)
        .await
    }

    fn netns_path(&self, pod_uid: &str, sandbox_id: &str) -> PathBuf {
        let plain = self.config.netns_dir.join(pod_uid);
        let taken = read(&self.sandboxes).values().any(|s| s.netns == plain) || plain.exists();
        if taken {
            self.config
                .netns_dir
                .join(format!("{pod_uid}-{}", &sandbox_id[..8]))
        } else {
            plain
        }
    }

    /// Stops the pod: its VM is forced off, its DHCP responders stop, CNI DEL releases its
    /// address; the sandbox becomes NOTREADY. Unknown or already stopped sandboxes succeed.
    /// When DEL fails the call fails (the kubelet retries it); RemovePodSandbox tries once
    /// more and then removes the pod anyway.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let pod_lock = self.pod_lock(id);
        let _held = pod_lock.lock().await;
        let Some(mut rec) = read(&self.sandboxes).get(id).cloned() else {
            return Ok(());
        };
        if rec.state != SandboxState::Ready && rec.state != SandboxState::NotReady {
            return Ok(());
        }
        for c in self.containers_of(id) {
            if matches!(c.state, ContainerState::Running | ContainerState::Created) {
                self.stop_locked(&c.id, 0).await?;
            }
        }
        self.net.stop_responders(id).await;
        if rec.state == SandboxState::Ready {
            rec.state = rec.state.transition(SandboxState::NotReady)?;
            self.save_sandbox(&rec)?;
            info!(sandbox = %&id[..13.min(id.len())], "pod sandbox stopped");
        }
        self.release_network(&mut rec).await
    }

    /// CNI DEL unless done already; a failure is counted and returned.
    async fn release_network(&self, rec: &mut SandboxRecord) -> Result<()> {
        let Some(stored) = rec.network.clone() else {
            return Ok(());
        };
        if stored.released {
            return Ok(());
        }
        match self.net.release_stored(rec, &stored).await {
            Ok(()) => {
                if let Some(n) = rec.network.as_mut() {
                    n.released = true;
                }
                self.save_sandbox(rec)?;
                info!(sandbox = %&rec.id[..13.min(rec.id.len())], "pod network released (CNI DEL)");
                Ok(())
            }
            Err(e) => {
                let failures = stored.del_failures + 1;
                if let Some(n) = rec.network.as_mut() {
                    n.del_failures = failures;
                }
                self.save_sandbox(rec)?;
                warn!(sandbox = %&rec.id[..13.min(rec.id.len())], error = %e, failures,
                      "CNI DEL failed; it is retried at the next stop and at removal");
                Err(ManagerError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "releasing the pod network failed (attempt {failures}); retry StopPodSandbox: {e}"
                    ),
                ))
            }
        }
    }

    /// Removes the pod: its containers, root disk, network namespace and record. Unknown
    /// sandboxes succeed.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let pod_lock = self.pod_lock(id);
        let _held = pod_lock.lock().await;
        let Some(mut rec) = read(&self.sandboxes).get(id).cloned() else {
            return Ok(());
        };
        rec.state = rec.state.transition(SandboxState::Removing)?;
        self.save_sandbox(&rec)?;
        self.finish_sandbox_removal(rec).await
    }

    async fn finish_sandbox_removal(&self, mut rec: SandboxRecord) -> Result<()> {
        for c in self.containers_of(&rec.id) {
            self.remove_locked(c).await?;
        }
        self.net.stop_responders(&rec.id).await;
        if let Err(e) = self.release_network(&mut rec).await {
            // Removal is never blocked by a plugin: the netns goes, and with it the pod's
            // links; what the plugin keeps outside (an IPAM address, rules) is named here.
            warn!(sandbox = %&rec.id[..13.min(rec.id.len())], error = %e,
                  "removing the pod although CNI DEL failed; the plugin may keep its address or rules");
        }
        for root in std::mem::take(&mut rec.root_disks) {
            self.drop_root_disk(&rec.id, &root)?;
        }
        let dir = self.config.vm_dir.join(&rec.id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ManagerError::internal(format!(
                    "cannot remove {}: {e}",
                    dir.display()
                )));
            }
            _ => {}
        }
        let netns = rec.netns.clone();
        blocking(move || netns::remove(&netns))
            .await?
            .map_err(io_err(format!(
                "cannot remove network namespace {}",
                rec.netns.display()
            )))?;
        self.drop_sandbox(&rec.id)?;
        info!(sandbox = %&rec.id[..13.min(rec.id.len())], "pod sandbox removed");
        Ok(())
    }

    fn drop_root_disk(&self, sandbox_id: &str, root: &RootDisk) -> Result<()> {
        match std::fs::remove_file(&root.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ManagerError::internal(format!(
                    "cannot remove {}: {e}",
                    root.path.display()
                )));
            }
            _ => {}
        }
        if let Ok(d) = virtlet_image::Digest::from_hex(&root.image_digest) {
            let user = if root.image_user.is_empty() {
                sandbox_id
            } else {
                &root.image_user
            };
            self.images
                .release(&d, user)
                .map_err(|e| ManagerError::internal(e.to_string()))?;
        }
        Ok(())
    }

    fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        read(&self.containers)
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    /// The serial console of a running VM, for `kubectl attach`.
    pub fn console(&self, container_id: &str) -> Result<Arc<console::ConsoleHub>> {
        let rec = self.container(container_id)?;
        if rec.state != ContainerState::Running {
            return Err(ManagerError::precondition(format!(
                "container {container_id:?} is {:?}; only a running VM's console can be attached",
                rec.state
            )));
        }
        lock(&self.consoles)
            .get(container_id)
            .cloned()
            .ok_or_else(|| {
                ManagerError::precondition(format!(
                    "container {container_id:?} has no serial console (its driver runs no QEMU)"
                ))
            })
    }

    /// A TCP connection to `port` of the pod's VM, made from inside the pod's netns (for
    /// `kubectl port-forward`).
    pub async fn dial_pod(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let rec = self.sandbox(sandbox_id)?;
        if rec.state != SandboxState::Ready {
            return Err(ManagerError::precondition(format!(
                "pod sandbox {sandbox_id:?} is not ready"
            )));
        }
        let ip = rec.pod_network().and_then(|n| n.pod_ip()).ok_or_else(|| {
            ManagerError::precondition(format!("pod sandbox {sandbox_id:?} has no IPv4 address"))
        })?;
        let netns = rec.netns.clone();
        let socket = blocking(move || virtlet_net::podside::tcp_socket_in(&netns))
            .await?
            .map_err(|e| ManagerError::internal(e.to_string()))?;
        let addr = std::net::SocketAddr::from((ip, port));
        match tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ManagerError::new(
                ErrorKind::Unavailable,
                format!("cannot connect to {addr} in the pod: {e}"),
            )),
            Err(_) => Err(ManagerError::new(
                ErrorKind::DeadlineExceeded,
                format!("connecting to {addr} in the pod timed out after 10 s"),
            )),
        }
    }

    /// `Ok` when new pods can be networked; the error says why not (for NetworkReady).
    pub fn network_ready(&self) -> std::result::Result<(), String> {
        self.net.ready()
    }

    /// Live DHCP responders, over all pods.
    pub fn dhcp_responders(&self) -> usize {
        self.net.responder_count()
    }

    // ----- containers -----

    /// Defines the pod's VM. A second live container in a pod is refused; after the VM
    /// exited, a new container boots the same root disk again.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String> {
        let pod_lock = self.pod_lock(sandbox_id);
        let _held = pod_lock.lock().await;
        let mut sandbox = self.sandbox(sandbox_id)?;
        if sandbox.state != SandboxState::Ready {
            return Err(ManagerError::precondition(format!(
                "pod sandbox {sandbox_id:?} is not ready (it was stopped); no VM can be created in it"
            )));
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| ManagerError::invalid("config.metadata is missing"))?;
        if meta.name.is_empty() {
            return Err(ManagerError::invalid("config.metadata.name is empty"));
        }
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| ManagerError::invalid("config.image.image is empty"))?;
        let pod_config = sandbox_config.unwrap_or_else(|| sandbox.config.clone());
        let annotations = VmAnnotations::parse(&sandbox.config.annotations)?;
        let image_info = self.images.status(&image).map_err(|e| match e.kind() {
            ErrorKind::InvalidArgument => ManagerError::invalid(format!("config.image.image: {e}")),
            _ => ManagerError::internal(e.to_string()),
        })?;
        let Some(image_info) = image_info else {
            return Err(ManagerError::not_found(format!(
                "image {image:?} is not present on this node; pull it first"
            )));
        };

        // cloud-init data is built (and so checked) before anything is created.
        let pod_meta = sandbox.config.metadata.clone().unwrap_or_default();
        let ci_annotations = CloudInitAnnotations::parse(&sandbox.config.annotations)
            .map_err(|e| ManagerError::invalid(e.to_string()))?;
        let sources = sources::read(
            self.config.kube.as_deref(),
            &pod_meta.namespace,
            &pod_meta.name,
            &ci_annotations,
        )
        .await?;
        let files = volumes::mounted_files(&self.config.kubelet_root_dir, &config.mounts)?;
        let mut command = config.command.clone();
        command.extend(config.args.iter().cloned());
        // The first container of the pod gets the pod's network (and the pod's UUID); so do
        // later containers of the same name (the kubelet restarting it). Others run without a
        // NIC: a pod has one address.
        let owns_network = sandbox
            .network_owner
            .as_deref()
            .is_none_or(|owner| owner == meta.name);
        let uuid = if owns_network {
            naming::domain_uuid(&pod_meta.uid, annotations.system_uuid.as_deref())
        } else {
            naming::sibling_uuid(&pod_meta.uid, &meta.name)
        };
        let seed_kind = match annotations.cloud_init_image_type {
            CloudInitImageType::NoCloud => SeedKind::NoCloud,
            CloudInitImageType::ConfigDrive => SeedKind::ConfigDrive,
        };
        let seed_data = virtlet_cloudinit::generate::generate(&virtlet_cloudinit::Input {
            pod_name: &pod_meta.name,
            namespace: &pod_meta.namespace,
            uuid: &uuid,
            annotations: ci_annotations,
            files,
            env: config
                .envs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            command,
            kind: seed_kind,
            network_config: sandbox
                .pod_network()
                .filter(|_| owns_network && !annotations.force_dhcp_network_config)
                .and_then(|n| virtlet_cloudinit::network::network_config(seed_kind, n)),
            source_entries: sources.entries,
            source_ssh_keys: sources.ssh_keys,
        })
        .map_err(|e| match e {
            CloudInitError::Seed { .. } => ManagerError::internal(e.to_string()),
            _ => ManagerError::invalid(e.to_string()),
        })?;

        let id = naming::new_id();
        let span = info_span!("container", id = %&id[..13], sandbox = %&sandbox_id[..13.min(sandbox_id.len())]);
        async {
            let log_path = match (&pod_config.log_directory, &config.log_path) {
                (dir, path) if !dir.is_empty() && !path.is_empty() => {
                    Some(Path::new(dir).join(path))
                }
                _ => None,
            };
            let console_socket = self.libvirt.runs_qemu().then(|| {
                self.config
                    .run_dir
                    .join("consoles")
                    .join(format!("{}.sock", &id[..20]))
            });
            let meta_uid = sandbox
                .config
                .metadata
                .as_ref()
                .map(|m| m.uid.clone())
                .unwrap_or_default();
            let mut rec = ContainerRecord {
                id: id.clone(),
                sandbox_id: sandbox_id.to_owned(),
                state: ContainerState::Creating,
                config: config.clone(),
                image_ref: image_info.image_ref_for(&image),
                image_id: image_info.id(),
                domain_name: naming::domain_name(&id, &meta.name),
                root_target: String::new(),
                console_socket: console_socket.clone(),
                seed: Some(
                    self.config
                        .vm_dir
                        .join(sandbox_id)
                        .join(format!("{}.seed.img", &id[..20])),
                ),
                log_path,
                created_at_ns: now_ns(),
                started_at_ns: 0,
                finished_at_ns: 0,
                exit: None,
            };
            self.save_container(&rec)?;

            let domain_name = rec.domain_name.clone();
            let seed_path = rec.seed.clone();
            let undo = |m: &Manager, new_root: Option<&RootDisk>, sandbox: &mut SandboxRecord| {
                let _ = m.libvirt.undefine(&domain_name);
                if let Some(seed) = &seed_path {
                    let _ = std::fs::remove_file(seed);
                }
                if let Some(root) = new_root {
                    let _ = m.drop_root_disk(sandbox_id, root);
                    sandbox.root_disks.retain(|r| r.path != root.path);
                    let _ = m.save_sandbox(sandbox);
                    if let Some(dir) = root.path.parent() {
                        // Only when empty: the directory held nothing else.
                        let _ = std::fs::remove_dir(dir);
                    }
                }
                let _ = m.drop_container(&id);
            };

            // This container's root disk: kept across restarts of the container (same name),
            // remade only for another image.
            let digest_hex = image_info.digest.hex();
            let mut new_root: Option<RootDisk> = None;
            let existing = sandbox.root_disk_of(&meta.name).cloned();
            let reuse = existing
                .as_ref()
                .filter(|r| r.image_digest == digest_hex && r.path.exists())
                .cloned();
            let root = if let Some(mut root) = reuse {
                if root.container_name.is_empty() {
                    root.container_name = meta.name.clone();
                    for r in &mut sandbox.root_disks {
                        if r.path == root.path {
                            r.container_name = meta.name.clone();
                        }
                    }
                    self.save_sandbox(&sandbox)?;
                }
                root
            } else {
                if let Some(old) = existing {
                    self.drop_root_disk(sandbox_id, &old)?;
                    sandbox.root_disks.retain(|r| r.path != old.path);
                    self.save_sandbox(&sandbox)?;
                }
                let image_user = format!("{sandbox_id}/{}", meta.name);
                let (info, blob) = match self.images.acquire(&image_info.id(), &image_user) {
                    Ok(v) => v,
                    Err(e) => {
                        undo(self, None, &mut sandbox);
                        return Err(ManagerError::new(e.kind(), e.to_string()));
                    }
                };
                let dir = self.config.vm_dir.join(sandbox_id);
                let path = dir.join(root_disk_file(&meta.name));
                let root = RootDisk {
                    path: path.clone(),
                    image_digest: digest_hex.clone(),
                    container_name: meta.name.clone(),
                    image_user,
                };
                sandbox.root_disks.push(root.clone());
                new_root = Some(root.clone());
                let size = annotations.root_volume_size;
                let made = blocking(move || {
                    let _phase = tracing::debug_span!("root_disk").entered();
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    virtlet_vm::disk::create_overlay(
                        &path,
                        &blob,
                        &info.format,
                        info.virtual_size,
                        size,
                    )
                    .map_err(|e| e.to_string())
                })
                .await?;
                if let Err(e) =
                    made.and_then(|()| self.save_sandbox(&sandbox).map_err(|e| e.to_string()))
                {
                    undo(self, new_root.as_ref(), &mut sandbox);
                    return Err(ManagerError::internal(format!(
                        "cannot create the root disk: {e}"
                    )));
                }
                root
            };

            // A restarted container's exited predecessor (same name, same UUID) gives way.
            for old in self.containers_of(sandbox_id) {
                let same_name = old
                    .config
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.name == meta.name);
                if old.id != id && same_name && !old.state.is_live() {
                    let lv = self.libvirt.clone();
                    let name = old.domain_name.clone();
                    blocking(move || lv.undefine(&name)).await??;
                }
            }
            // A VM of an earlier sandbox of the same pod (the kubelet makes a new sandbox
            // before it removes the old one) may hold the same UUID: an exited one gives way,
            // a running one is an error naming it.
            let lv = self.libvirt.clone();
            let u = uuid.clone();
            if let Some((other, running)) = blocking(move || lv.domain_with_uuid(&u)).await?? {
                if running {
                    undo(self, new_root.as_ref(), &mut sandbox);
                    return Err(ManagerError::precondition(format!(
                        "VM {other} (an earlier sandbox of this pod) is still running with UUID {uuid}; stop it first"
                    )));
                }
                info!(domain = %other, %uuid, "undefining an exited VM of an earlier sandbox that holds this pod's UUID");
                let lv = self.libvirt.clone();
                blocking(move || lv.undefine(&other)).await??;
            }
            if owns_network && sandbox.network_owner.is_none() {
                sandbox.network_owner = Some(meta.name.clone());
                self.save_sandbox(&sandbox)?;
            }

            let resources = config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .unwrap_or_default();
            let facts = PodFacts {
                sandbox_id,
                container_id: &id,
                pod_uid: &meta_uid,
                container_name: &meta.name,
                uuid: &uuid,
                memory_limit_bytes: resources.memory_limit_in_bytes,
                cpu_shares: resources.cpu_shares,
                cpu_quota: resources.cpu_quota,
                cpu_period: resources.cpu_period,
            };
            let node = NodeChoices {
                domain_type: self.config.domain_type,
                emulator: self.config.vmwrapper.clone(),
                cpu_model: self.config.cpu_model,
                root_disk: root.path.clone(),
                root_format: DiskFormat::Qcow2,
                console_socket,
                netns: Some(sandbox.netns.clone()),
                nics: sandbox
                    .pod_network()
                    .filter(|_| owns_network)
                    .map(|n| {
                        n.nics
                            .iter()
                            .map(|nic| vmspec::Nic {
                                tap: nic.tap.clone(),
                                mac: nic.mac.clone(),
                                mtu: nic.mtu,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let mut spec = vmspec::build(&facts, &annotations, &node);
            rec.root_target = spec.disks[0].target.clone();

            // The cloud-init seed: the last disk, read-only, on the pod's disk bus.
            if let Some(seed) = rec.seed.clone() {
                let data = seed_data.clone();
                let written = blocking({
                    let seed = seed.clone();
                    move || {
                        let _phase = tracing::debug_span!("seed").entered();
                        if let Some(dir) = seed.parent() {
                            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                        }
                        virtlet_cloudinit::seed::write_seed(&data, &seed).map_err(|e| e.to_string())
                    }
                })
                .await?;
                if let Err(e) = written {
                    undo(self, new_root.as_ref(), &mut sandbox);
                    return Err(ManagerError::internal(format!(
                        "cannot write the cloud-init seed: {e}"
                    )));
                }
                let Some(target) = naming::disk_target(annotations.disk_bus(), spec.disks.len())
                else {
                    undo(self, new_root.as_ref(), &mut sandbox);
                    return Err(ManagerError::invalid(format!(
                        "too many disks for the pod's disk bus ({:?} takes at most {})",
                        annotations.disk_bus(),
                        naming::max_disks(annotations.disk_bus())
                    )));
                };
                spec.disks.push(Disk {
                    path: seed,
                    format: DiskFormat::Raw,
                    read_only: true,
                    target,
                });
            }
            let xml = domain_xml::render(&spec);
            debug!(domain = %spec.domain_name, "defining domain:\n{xml}");
            let lv = self.libvirt.clone();
            let name = spec.domain_name.clone();
            if let Err(e) = blocking(move || {
                let _phase = tracing::debug_span!("define").entered();
                lv.define(&name, &xml)
            })
            .await?
            {
                undo(self, new_root.as_ref(), &mut sandbox);
                return Err(ManagerError::internal(format!("cannot define the VM: {e}")));
            }
            rec.state = rec.state.transition(ContainerState::Created)?;
            self.save_container(&rec)?;
            info!(domain = %rec.domain_name, image = %image, vcpus = spec.vcpus,
                  memory_mib = spec.memory_bytes >> 20, kind = ?spec.domain_type, "VM defined");
            Ok(id.clone())
        }
        .instrument(span)
        .await
    }

    fn sandbox_of(&self, container_id: &str) -> Result<String> {
        Ok(self.container(container_id)?.sandbox_id)
    }

    /// Boots the VM; its serial console goes to the container log.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let sandbox_id = self.sandbox_of(id)?;
        let pod_lock = self.pod_lock(&sandbox_id);
        let _held = pod_lock.lock().await;
        let mut rec = self.container(id)?;
        if rec.state != ContainerState::Created {
            return Err(ManagerError::precondition(format!(
                "container {id:?} is {:?}; only a created container can be started",
                rec.state
            )));
        }
        let span = info_span!("start", id = %&id[..13.min(id.len())], domain = %rec.domain_name);
        async {
            let lv = self.libvirt.clone();
            let name = rec.domain_name.clone();
            let paused = rec.console_socket.is_some();
            if let Err(e) = blocking(move || {
                let _phase = tracing::debug_span!("start_domain", paused).entered();
                lv.start(&name, paused)
            })
            .await?
            {
                rec.state = rec.state.transition(ContainerState::Exited)?;
                rec.finished_at_ns = now_ns();
                rec.exit = Some(Exit {
                    code: 128,
                    reason: "StartError".into(),
                    message: e.to_string(),
                });
                self.save_container(&rec)?;
                return Err(ManagerError::internal(format!("cannot start the VM: {e}")));
            }
            if let Some(socket) = rec.console_socket.clone() {
                self.attach_console(&rec, &socket)
                    .instrument(tracing::debug_span!("console"))
                    .await;
                let lv = self.libvirt.clone();
                let name = rec.domain_name.clone();
                blocking(move || {
                    let _phase = tracing::debug_span!("resume").entered();
                    lv.resume(&name)
                })
                .await??;
            }
            rec.state = rec.state.transition(ContainerState::Running)?;
            rec.started_at_ns = now_ns();
            self.save_container(&rec)?;
            info!("VM started");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn attach_console(&self, rec: &ContainerRecord, socket: &Path) {
        let log_path = rec.log_path.clone().unwrap_or_else(|| {
            self.config
                .vm_dir
                .join(&rec.sandbox_id)
                .join(format!("{}.log", rec.id))
        });
        let log = match ConsoleLog::open(&log_path) {
            Ok(l) => l,
            Err(e) => {
                warn!(path = %log_path.display(), "cannot open the container log; console output is lost: {e}");
                return;
            }
        };
        match console::connect(socket, CONSOLE_PATIENCE).await {
            Ok(stream) => {
                let hub = console::ConsoleHub::start(stream, log);
                lock(&self.consoles).insert(rec.id.clone(), hub);
            }
            Err(e) => warn!(socket = %socket.display(), "cannot connect to the VM console: {e}"),
        }
    }

    /// Stops the VM: the ACPI power button, pressed again every second, then forced off in
    /// time for the call to return within `timeout_s` (0: forced off at once). Stopping a
    /// stopped or unknown container succeeds, as CRI asks.
    pub async fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let Ok(sandbox_id) = self.sandbox_of(id) else {
            return Ok(());
        };
        let pod_lock = self.pod_lock(&sandbox_id);
        let _held = pod_lock.lock().await;
        self.stop_locked(id, timeout_s).await
    }

    async fn stop_locked(&self, id: &str, timeout_s: i64) -> Result<()> {
        let mut rec = self.container(id)?;
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return Ok(());
        }
        let span =
            info_span!("stop", id = %&id[..13.min(id.len())], domain = %rec.domain_name, timeout_s);
        async {
            let deadline = tokio::time::Instant::now() + graceful_budget(timeout_s);
            let mut forced = false;
            let mut last_press = None::<tokio::time::Instant>;
            let exit = loop {
                let lv = self.libvirt.clone();
                let name = rec.domain_name.clone();
                match blocking(move || lv.status(&name)).await?? {
                    None => break None,
                    Some(DomainStatus::ShutOff(e)) => break Some(e),
                    Some(_) => {}
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    let lv = self.libvirt.clone();
                    let name = rec.domain_name.clone();
                    blocking(move || lv.destroy(&name)).await??;
                    forced = true;
                    continue;
                }
                if last_press.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    let lv = self.libvirt.clone();
                    let name = rec.domain_name.clone();
                    blocking(move || lv.shutdown(&name)).await??;
                    last_press = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let exit = match (rec.state, forced, exit) {
                (ContainerState::Created, _, _) => Exit {
                    code: 0,
                    reason: "NeverStarted".into(),
                    message: "stopped before it was started".into(),
                },
                (_, true, _) => Exit {
                    code: 137,
                    reason: "Killed".into(),
                    message: format!(
                        "the guest did not power off within {timeout_s} s of the ACPI power button; it was forced off"
                    ),
                },
                (_, false, Some(e)) => Exit {
                    code: e.code,
                    reason: e.reason,
                    message: e.message,
                },
                (_, false, None) => Exit {
                    code: 1,
                    reason: "Error".into(),
                    message: "the VM's domain disappeared".into(),
                },
            };
            // The exit watcher may have recorded the exit meanwhile; keep its finish time.
            let current = self.container(id)?;
            if current.state == ContainerState::Exited {
                return Ok(());
            }
            rec.state = rec.state.transition(ContainerState::Exited)?;
            rec.finished_at_ns = now_ns();
            info!(code = exit.code, reason = %exit.reason, "VM stopped");
            rec.exit = Some(exit);
            self.save_container(&rec)
        }
        .instrument(span)
        .await
    }

    /// Removes the container: its domain and its files (the pod's root disk stays with the
    /// pod). A running VM is forced off first. Unknown containers succeed.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(rec) = read(&self.containers).get(id).cloned() else {
            return Ok(());
        };
        let pod_lock = self.pod_lock(&rec.sandbox_id);
        let _held = pod_lock.lock().await;
        let Some(rec) = read(&self.containers).get(id).cloned() else {
            return Ok(());
        };
        self.remove_locked(rec).await
    }

    async fn remove_locked(&self, mut rec: ContainerRecord) -> Result<()> {
        if rec.state != ContainerState::Removing {
            if matches!(rec.state, ContainerState::Running | ContainerState::Created) {
                self.stop_locked(&rec.id, 0).await?;
                rec = read(&self.containers).get(&rec.id).cloned().unwrap_or(rec);
            }
            if rec.state == ContainerState::Creating {
                rec.state = ContainerState::Removing;
            } else {
                rec.state = rec.state.transition(ContainerState::Removing)?;
            }
            self.save_container(&rec)?;
        }
        let lv = self.libvirt.clone();
        let name = rec.domain_name.clone();
        // Only this container's own domain: a newer container of the pod has another name.
        blocking(move || lv.undefine(&name)).await??;
        if let Some(sock) = &rec.console_socket {
            let _ = std::fs::remove_file(sock);
        }
        if let Some(seed) = &rec.seed {
            let _ = std::fs::remove_file(seed);
        }
        let _ = std::fs::remove_file(
            self.config
                .vm_dir
                .join(&rec.sandbox_id)
                .join(format!("{}.log", rec.id)),
        );
        self.drop_container(&rec.id)?;
        info!(container = %&rec.id[..13.min(rec.id.len())], "container removed");
        Ok(())
    }

    /// Reopens the container log (after the kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(ManagerError::precondition(format!(
                "container {id:?} is {:?}; only a running container's log can be reopened",
                rec.state
            )));
        }
        let log = lock(&self.consoles).get(id).map(|h| h.log().clone());
        match log {
            Some(log) => log
                .reopen()
                .map_err(io_err(format!("cannot reopen {}", log.path().display()))),
            None => Err(ManagerError::precondition(format!(
                "container {id:?} has no console log attached"
            ))),
        }
    }

    /// Changes what libvirt can change live: the memory balloon target, up to the memory
    /// the VM was defined with. CPU settings cannot change while the VM runs.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Option<LinuxContainerResources>,
    ) -> Result<()> {
        let rec = self.container(id)?;
        let Some(r) = resources else { return Ok(()) };
        let defined = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(|r| r.memory_limit_in_bytes)
            .filter(|m| *m > 0)
            .map_or(vmspec::DEFAULT_MEMORY_BYTES, |m| m.unsigned_abs());
        let current = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        if r.cpu_shares != current.cpu_shares
            || r.cpu_quota != current.cpu_quota
            || r.cpu_period != current.cpu_period
        {
            return Err(ManagerError::precondition(format!(
                "container {id:?}: CPU shares/quota/period of a VM cannot change while it exists; recreate the pod"
            )));
        }
        if r.memory_limit_in_bytes > 0 && r.memory_limit_in_bytes.unsigned_abs() != defined {
            if r.memory_limit_in_bytes.unsigned_abs() > defined {
                return Err(ManagerError::precondition(format!(
                    "container {id:?}: memory can shrink or grow back up to the {defined} bytes the VM was defined with, not to {}",
                    r.memory_limit_in_bytes
                )));
            }
            if rec.state != ContainerState::Running {
                return Err(ManagerError::precondition(format!(
                    "container {id:?} is not running"
                )));
            }
            let lv = self.libvirt.clone();
            let name = rec.domain_name.clone();
            let bytes = r.memory_limit_in_bytes.unsigned_abs();
            blocking(move || lv.set_memory(&name, bytes)).await??;
        }
        Ok(())
    }

    /// Usage of a container's VM (zeros when it is not running).
    pub async fn stats(&self, id: &str) -> Result<(ContainerRecord, VmStats)> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Ok((rec, VmStats::default()));
        }
        let lv = self.libvirt.clone();
        let name = rec.domain_name.clone();
        let target = rec.root_target.clone();
        let stats = blocking(move || lv.stats(&name, &target))
            .await?
            .unwrap_or_default();
        Ok((rec, stats))
    }

    /// Everything CRI's metrics need of a running container's VM: libvirt's and the QEMU
    /// process's figures and the root disk's filesystem (capacity, inodes total and free).
    /// `None` for a container that is not running.
    pub async fn sample(
        &self,
        id: &str,
    ) -> Result<Option<(ContainerRecord, virtlet_vm::VmSample, FsFigures)>> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Ok(None);
        }
        let lv = self.libvirt.clone();
        let name = rec.domain_name.clone();
        let target = rec.root_target.clone();
        let dir = self.config.vm_dir.clone();
        let (sample, fs) = blocking(move || {
            let sample = lv.sample(&name, &target).unwrap_or_default();
            let fs = nix::sys::statvfs::statvfs(&dir)
                .map(|v| FsFigures {
                    capacity_bytes: v.blocks() * v.fragment_size(),
                    inodes_total: v.files(),
                    inodes_free: v.files_available(),
                })
                .unwrap_or_default();
            (sample, fs)
        })
        .await?;
        Ok(Some((rec, sample, fs)))
    }

    // ----- exits and recovery -----

    async fn poll_exits(&self) {
        let running: Vec<ContainerRecord> = read(&self.containers)
            .values()
            .filter(|c| c.state == ContainerState::Running)
            .cloned()
            .collect();
        for c in running {
            let pod_lock = self.pod_lock(&c.sandbox_id);
            let Ok(_held) = pod_lock.try_lock() else {
                continue;
            };
            let lv = self.libvirt.clone();
            let name = c.domain_name.clone();
            let status = match blocking(move || lv.status(&name)).await {
                Ok(Ok(s)) => s,
                _ => continue,
            };
            let exit = match status {
                Some(DomainStatus::ShutOff(e)) => Exit {
                    code: e.code,
                    reason: e.reason,
                    message: e.message,
                },
                None => Exit {
                    code: 1,
                    reason: "Error".into(),
                    message: "the VM's domain disappeared".into(),
                },
                Some(_) => continue,
            };
            let Ok(mut rec) = self.container(&c.id) else {
                continue;
            };
            if rec.state != ContainerState::Running {
                continue;
            }
            rec.state = ContainerState::Exited;
            rec.finished_at_ns = now_ns();
            info!(container = %&c.id[..13], code = exit.code, reason = %exit.reason, "VM exited");
            rec.exit = Some(exit);
            if let Err(e) = self.save_container(&rec) {
                warn!("cannot record the exit of {}: {e}", c.id);
            }
        }
    }

    async fn recover(&self) -> Result<()> {
        // Half-done creates are undone, half-done removes finished.
        let sandboxes: Vec<SandboxRecord> = read(&self.sandboxes).values().cloned().collect();
        let containers: Vec<ContainerRecord> = read(&self.containers).values().cloned().collect();
        for c in containers {
            match c.state {
                ContainerState::Creating | ContainerState::Removing => {
                    info!(container = %c.id, state = ?c.state, "recovery: finishing an interrupted container create/remove");
                    self.remove_locked(ContainerRecord {
                        state: ContainerState::Removing,
                        ..c
                    })
                    .await?;
                }
                ContainerState::Running | ContainerState::Created => {
                    let lv = self.libvirt.clone();
                    let name = c.domain_name.clone();
                    let status = blocking(move || lv.status(&name)).await??;
                    match (c.state, status) {
                        (
                            ContainerState::Running,
                            Some(DomainStatus::Running | DomainStatus::Paused),
                        ) => {
                            if let Some(sock) = c.console_socket.clone() {
                                self.attach_console(&c, &sock).await;
                            }
                        }
                        (ContainerState::Created, Some(DomainStatus::ShutOff(_))) => {}
                        (_, status) => {
                            let exit = match status {
                                Some(DomainStatus::ShutOff(e)) => Exit {
                                    code: e.code,
                                    reason: e.reason,
                                    message: e.message,
                                },
                                _ => Exit {
                                    code: 1,
                                    reason: "Error".into(),
                                    message: "the VM's domain disappeared while virtlet was down"
                                        .into(),
                                },
                            };
                            info!(container = %c.id, code = exit.code, "recovery: VM stopped while virtlet was down");
                            self.save_container(&ContainerRecord {
                                state: ContainerState::Exited,
                                finished_at_ns: now_ns(),
                                exit: Some(exit),
                                ..c
                            })?;
                        }
                    }
                }
                ContainerState::Exited => {}
            }
        }
        for s in sandboxes {
            match s.state {
                SandboxState::Creating | SandboxState::Removing => {
                    info!(sandbox = %s.id, state = ?s.state, "recovery: finishing an interrupted sandbox create/remove");
                    self.finish_sandbox_removal(s).await?;
                }
                SandboxState::Ready => {
                    // The VM keeps its address: its bridge's responder comes back.
                    if let Some(pod) = s.pod_network().cloned() {
                        if s.netns.exists() {
                            if let Err(e) = self.net.start_responders(&s, &pod).await {
                                warn!(sandbox = %s.id, error = %e, "recovery: cannot restart the DHCP responders");
                            }
                        } else {
                            warn!(sandbox = %s.id, netns = %s.netns.display(), "recovery: the pod netns is gone; the pod has no network until it is recreated");
                        }
                    }
                }
                _ => {}
            }
        }
        // What virtlet owns but no longer knows: domains and per-pod directories.
        let known: Vec<String> = read(&self.containers).keys().cloned().collect();
        let lv = self.libvirt.clone();
        let domains = blocking(move || lv.list_owned()).await??;
        for (name, _) in domains {
            let Some(prefix) = naming::domain_id_prefix(&name) else {
                continue;
            };
            if !known.iter().any(|id| id.starts_with(prefix)) {
                info!(domain = %name, "recovery: removing a VM virtlet does not know");
                let lv = self.libvirt.clone();
                blocking(move || lv.undefine(&name)).await??;
            }
        }
        let sandbox_ids: Vec<String> = read(&self.sandboxes).keys().cloned().collect();
        if let Ok(entries) = std::fs::read_dir(&self.config.vm_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && !sandbox_ids.contains(&name) {
                    info!(dir = %e.path().display(), "recovery: removing files of a pod virtlet does not know");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }
}

/// The filesystem VM disks live on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsFigures {
    pub capacity_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// How long StopContainer waits for the guest to power off before forcing it: the CRI timeout
/// less a margin (half of it, at most 3 s) for forcing it off and answering, so the call
/// returns within the timeout the caller gave. Forcing off takes libvirt about 0.1 s where
/// init reaps QEMU at once, and up to 2 s where it reaps late (our test machines).
fn graceful_budget(timeout_s: i64) -> Duration {
    let total = Duration::from_secs(timeout_s.max(0).unsigned_abs());
    total - (total / 2).min(Duration::from_secs(3))
}

/// The file name of a container's root disk in its pod's directory: readable when the
/// container name is a plain name (as Kubernetes makes them), hashed otherwise.
fn root_disk_file(container_name: &str) -> String {
    let plain = !container_name.is_empty()
        && container_name.len() <= 100
        && container_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !container_name.starts_with('.');
    if plain {
        format!("root-{container_name}.qcow2")
    } else {
        format!(
            "root-{}.qcow2",
            &naming::sibling_uuid("", container_name)[..8]
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_leaves_room_to_force_off_within_the_timeout() {
        assert_eq!(graceful_budget(0), Duration::ZERO);
        assert_eq!(graceful_budget(-5), Duration::ZERO);
        assert_eq!(graceful_budget(2), Duration::from_secs(1));
        assert_eq!(graceful_budget(10), Duration::from_secs(7));
        assert_eq!(graceful_budget(60), Duration::from_secs(57));
    }

    #[test]
    fn root_disk_files_are_named_after_plain_container_names() {
        assert_eq!(root_disk_file("vm"), "root-vm.qcow2");
        let odd = root_disk_file("../x");
        assert!(odd.starts_with("root-") && !odd.contains('/'), "{odd}");
        assert_ne!(root_disk_file("../x"), root_disk_file("../y"));
        assert!(!root_disk_file("").contains("--"));
    }
}
