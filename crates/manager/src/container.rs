//! The container lifecycle: create (gather what the plan needs, [`crate::plan`], then carry
//! the plan out, undoing exactly what was made when a step fails), start, stop, remove, the
//! console, log reopening, resources, stats.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources, PodSandboxConfig};
use tracing::{Instrument, debug, info, info_span, warn};
use virtlet_core::vmspec;
use virtlet_core::{ContainerState, ErrorKind, SandboxState, naming};
use virtlet_vm::console::{self, ConsoleLog};
use virtlet_vm::{DomainStatus, VmSample, VmStats};

use crate::error::io;
use crate::plan::{self, ContainerPlan, PlanInput, RootPlan};
use crate::{
    ContainerRecord, Exit, FsFigures, Manager, ManagerError, RootDisk, SandboxRecord, blocking,
    lock, now_ns, short, sources, volumes,
};

type Result<T> = std::result::Result<T, ManagerError>;

/// How long StartContainer waits for QEMU's console socket.
const CONSOLE_PATIENCE: Duration = Duration::from_secs(10);

/// What a failed CreateContainer must take back, newest first.
enum Undo {
    Record(String),
    Root { sandbox_id: String, disk: RootDisk },
    SandboxDisks(Box<SandboxRecord>),
    Seed(std::path::PathBuf),
    Volume(crate::volume_disks::Made),
    Domain(String),
}

impl Manager {
    /// Defines a VM for the container. A pod can have several containers, each a VM; a new
    /// container of an exited one's name boots the same root disk again.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String> {
        let pod_lock = self.pod_lock(sandbox_id);
        let _held = pod_lock.lock().await;
        let sandbox = self.records.sandbox(sandbox_id)?;
        if sandbox.state != SandboxState::Ready {
            return Err(ManagerError::precondition(format!(
                "pod sandbox {sandbox_id:?} is not ready (it was stopped); no VM can be created in it"
            )));
        }
        let meta = config
            .metadata
            .as_ref()
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
        let pod = self.pod_spec(&sandbox)?;
        let image_info = self.images.status(&image).map_err(|e| {
            ManagerError::failed(e.kind(), format!("config.image.image {image:?}"), e)
        })?;
        let Some(image_info) = image_info else {
            return Err(ManagerError::not_found(format!(
                "image {image:?} is not present on this node; pull it first"
            )));
        };
        // What the plan reads from outside: the ConfigMaps and Secrets the annotations name,
        // and the files of the container's mounts.
        let pod_meta = sandbox.config.metadata.clone().unwrap_or_default();
        let sources = sources::read(
            self.config.kube.as_deref(),
            &pod_meta.namespace,
            &pod_meta.name,
            &pod.cloud_init,
        )
        .await?;
        let mounted = volumes::read_mounts(
            &self.config.kubelet_root_dir,
            &self.config.allowed_host_paths,
            &config.mounts,
        )?;
        let root_device_size = volumes::root_device_size(&config.devices)?;
        let pod_config = sandbox_config.unwrap_or_else(|| sandbox.config.clone());
        let id = naming::new_id();
        let siblings = self.records.containers_of(sandbox_id);
        let root_present = sandbox
            .root_disk_of(&meta.name)
            .is_some_and(|r| r.path.exists());
        let plan = plan::plan(PlanInput {
            id: &id,
            now_ns: now_ns(),
            sandbox: &sandbox,
            siblings: &siblings,
            pod: &pod,
            pod_config: &pod_config,
            config: &config,
            image: &image_info,
            image_name: &image,
            root_present,
            files: mounted.files,
            flex: mounted.flex,
            dirs: mounted.dirs,
            root_device_size,
            sources,
            node: &self.node_facts(),
        })?;
        let span = info_span!("container", id = %short(&id), sandbox = %short(sandbox_id));
        self.execute(plan, sandbox, image_info)
            .instrument(span)
            .await?;
        Ok(id)
    }

    /// Carries out a plan; on a failure, undoes what it made, newest first.
    async fn execute(
        &self,
        plan: ContainerPlan,
        sandbox: SandboxRecord,
        image: virtlet_image::ImageInfo,
    ) -> Result<()> {
        let mut undo: Vec<Undo> = Vec::new();
        let result = self.make(&plan, sandbox, &image, &mut undo).await;
        if let Err(e) = &result {
            warn!(error = %virtlet_core::error::chain(e), "CreateContainer failed; taking back what it made");
            for step in undo.into_iter().rev() {
                self.take_back(step).await;
            }
        }
        result
    }

    async fn make(
        &self,
        plan: &ContainerPlan,
        mut sandbox: SandboxRecord,
        image: &virtlet_image::ImageInfo,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let mut rec = plan.record.clone();
        self.records.save_container(&rec)?;
        undo.push(Undo::Record(rec.id.clone()));

        // The root disk.
        match &plan.root {
            RootPlan::Reuse { disk, claim } => {
                if *claim {
                    undo.push(Undo::SandboxDisks(Box::new(sandbox.clone())));
                    for r in &mut sandbox.root_disks {
                        if r.path == disk.path {
                            r.container_name = disk.container_name.clone();
                        }
                    }
                    self.records.save_sandbox(&sandbox)?;
                }
            }
            RootPlan::Persistent { device, .. } => {
                self.prepare_persistent_root(device, image, &rec.id).await?;
            }
            RootPlan::Create { disk, size } => {
                let (info, blob) = self.images.acquire(&image.id(), &disk.image_user)?;
                undo.push(Undo::Root {
                    sandbox_id: sandbox.id.clone(),
                    disk: disk.clone(),
                });
                let path = disk.path.clone();
                let size = *size;
                blocking(move || {
                    let _phase = tracing::debug_span!("root_disk").entered();
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    virtlet_vm::disk::create_overlay(
                        &path,
                        &blob,
                        &info.format,
                        info.virtual_size,
                        size,
                    )
                    .map_err(std::io::Error::other)
                })
                .await?
                .map_err(io(format!(
                    "cannot create the root disk {}",
                    disk.path.display()
                )))?;
                undo.push(Undo::SandboxDisks(Box::new(sandbox.clone())));
                sandbox.root_disks.retain(|r| r.path != disk.path);
                sandbox.root_disks.push(disk.clone());
                self.records.save_sandbox(&sandbox)?;
            }
        }

        // The cloud-init seed.
        if let Some((path, data)) = plan.seed.clone() {
            undo.push(Undo::Seed(path.clone()));
            blocking(move || {
                let _phase = tracing::debug_span!("seed").entered();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        virtlet_cloudinit::CloudInitError::Seed {
                            path: dir.display().to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                }
                virtlet_cloudinit::seed::write_seed(&data, &path)
            })
            .await??;
        }

        // The volume disks.
        let mut made = Vec::new();
        let result = self.make_volumes(&rec.id, &plan.volumes, &mut made).await;
        undo.extend(made.into_iter().map(Undo::Volume));
        result?;

        // What gives way: this sandbox's exited containers of the same name, and an exited
        // VM of an earlier sandbox of the pod that holds the same UUID (the kubelet makes a
        // new sandbox before it removes the old one). A running one is an error naming it.
        for name in &plan.predecessors {
            let lv = self.libvirt.clone();
            let name = name.clone();
            blocking(move || lv.undefine(&name)).await??;
        }
        let lv = self.libvirt.clone();
        let u = plan.uuid.clone();
        if let Some((other, running)) = blocking(move || lv.domain_with_uuid(&u)).await?? {
            if running {
                return Err(ManagerError::precondition(format!(
                    "VM {other} (an earlier sandbox of this pod) is still running with UUID {}; stop it first",
                    plan.uuid
                )));
            }
            info!(domain = %other, uuid = %plan.uuid, "undefining an exited VM of an earlier sandbox that holds this pod's UUID");
            let lv = self.libvirt.clone();
            blocking(move || lv.undefine(&other)).await??;
        }

        // The domain.
        debug!(domain = %plan.spec.domain_name, "defining domain:\n{}", plan.xml);
        let lv = self.libvirt.clone();
        let (name, xml) = (plan.spec.domain_name.clone(), plan.xml.clone());
        undo.push(Undo::Domain(name.clone()));
        blocking(move || {
            let _phase = tracing::debug_span!("define").entered();
            lv.define(&name, &xml)
        })
        .await??;

        // Done: the record, the pod's network owner, the old disk of another image.
        rec.state = rec.state.transition(ContainerState::Created)?;
        self.records.save_container(&rec)?;
        let new_root = plan.root.disk();
        if plan.claims_network || plan.replaced_root.is_some() {
            let mut s = self
                .records
                .sandbox_any(&sandbox.id)
                .unwrap_or_else(|| sandbox.clone());
            if plan.claims_network {
                s.network_owner = rec.config.metadata.as_ref().map(|m| m.name.clone());
            }
            if let Some(old) = plan
                .replaced_root
                .as_ref()
                .filter(|o| new_root.is_none_or(|n| o.path != n.path))
            {
                s.root_disks.retain(|r| r.path != old.path);
            }
            self.records.save_sandbox(&s)?;
        }
        match &plan.replaced_root {
            Some(old) if new_root.is_none_or(|n| old.path != n.path) => {
                self.drop_root_disk(&sandbox.id, old)?
            }
            // Its file was gone and a new one took its place: only its use of the old image
            // ends.
            Some(old) => self.release_image_use(&sandbox.id, old)?,
            None => {}
        }
        info!(domain = %rec.domain_name, image = %rec.image_ref, vcpus = plan.spec.vcpus,
              memory_mib = plan.spec.memory_bytes >> 20, kind = ?plan.spec.domain_type, "VM defined");
        Ok(())
    }

    async fn take_back(&self, step: Undo) {
        match step {
            Undo::Record(id) => {
                let _ = self.records.drop_container(&id);
            }
            Undo::Root { sandbox_id, disk } => {
                let _ = self.drop_root_disk(&sandbox_id, &disk);
                if let Some(dir) = disk.path.parent() {
                    // Only when empty: the directory held nothing else.
                    let _ = std::fs::remove_dir(dir);
                }
            }
            Undo::SandboxDisks(before) => {
                if let Some(mut now) = self.records.sandbox_any(&before.id) {
                    now.root_disks = before.root_disks;
                    let _ = self.records.save_sandbox(&now);
                }
            }
            Undo::Seed(path) => {
                let _ = std::fs::remove_file(path);
            }
            Undo::Volume(made) => self.take_back_volume(made).await,
            Undo::Domain(name) => {
                let lv = self.libvirt.clone();
                let _ = blocking(move || lv.undefine(&name)).await;
            }
        }
    }

    /// Boots the VM; its serial console goes to the container log.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        let sandbox_id = self.records.container(id)?.sandbox_id;
        let pod_lock = self.pod_lock(&sandbox_id);
        let _held = pod_lock.lock().await;
        let mut rec = self.records.container(id)?;
        if rec.state != ContainerState::Created {
            return Err(ManagerError::precondition(format!(
                "container {id:?} is {:?}; only a created container can be started",
                rec.state
            )));
        }
        let span = info_span!("start", id = %short(id), domain = %rec.domain_name);
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
                self.records.save_container(&rec)?;
                return Err(ManagerError::failed(
                    ErrorKind::Internal,
                    "cannot start the VM",
                    e,
                ));
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
            self.records.save_container(&rec)?;
            info!("VM started");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Connects the console to the container log (and to attach clients).
    pub(crate) async fn attach_console(&self, rec: &ContainerRecord, socket: &Path) {
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
        let Ok(rec) = self.records.container(id) else {
            return Ok(());
        };
        let pod_lock = self.pod_lock(&rec.sandbox_id);
        let _held = pod_lock.lock().await;
        self.stop_locked(id, timeout_s).await
    }

    pub(crate) async fn stop_locked(&self, id: &str, timeout_s: i64) -> Result<()> {
        let Some(mut rec) = self.records.container_any(id) else {
            return Ok(());
        };
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return Ok(());
        }
        let span = info_span!("stop", id = %short(id), domain = %rec.domain_name, timeout_s);
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
            let exit = stop_exit(rec.state, forced, exit, timeout_s);
            // The exit watcher may have recorded the exit meanwhile; keep its finish time.
            if self
                .records
                .container_any(id)
                .is_some_and(|c| c.state == ContainerState::Exited)
            {
                return Ok(());
            }
            rec.state = rec.state.transition(ContainerState::Exited)?;
            rec.finished_at_ns = now_ns();
            info!(code = exit.code, reason = %exit.reason, "VM stopped");
            rec.exit = Some(exit);
            self.records.save_container(&rec)
        }
        .instrument(span)
        .await
    }

    /// Removes the container: its domain and its files (its root disk stays with the pod). A
    /// running VM is forced off first. Unknown containers succeed.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(rec) = self.records.container_any(id) else {
            return Ok(());
        };
        let pod_lock = self.pod_lock(&rec.sandbox_id);
        let _held = pod_lock.lock().await;
        let Some(rec) = self.records.container_any(id) else {
            return Ok(());
        };
        self.remove_locked(rec).await
    }

    pub(crate) async fn remove_locked(&self, mut rec: ContainerRecord) -> Result<()> {
        if rec.state != ContainerState::Removing {
            if matches!(rec.state, ContainerState::Running | ContainerState::Created) {
                self.stop_locked(&rec.id, 0).await?;
                rec = self.records.container_any(&rec.id).unwrap_or(rec);
            }
            rec.state = rec.state.transition(ContainerState::Removing)?;
            self.records.save_container(&rec)?;
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
        self.remove_volumes(&rec.id, &self.config.vm_dir.join(&rec.sandbox_id))
            .await;
        let _ = std::fs::remove_file(
            self.config
                .vm_dir
                .join(&rec.sandbox_id)
                .join(format!("{}.log", rec.id)),
        );
        self.records.drop_container(&rec.id)?;
        lock(&self.consoles).remove(&rec.id);
        info!(container = %short(&rec.id), "container removed");
        Ok(())
    }

    /// The serial console of a running VM, for `kubectl attach`.
    pub fn console(&self, container_id: &str) -> Result<Arc<console::ConsoleHub>> {
        let rec = self.records.container(container_id)?;
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

    /// Reopens the container log (after the kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.records.container(id)?;
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
                .map_err(io(format!("cannot reopen {}", log.path().display()))),
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
        let rec = self.records.container(id)?;
        let Some(r) = resources else { return Ok(()) };
        let current = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        let defined = Some(current.memory_limit_in_bytes)
            .filter(|m| *m > 0)
            .map_or(vmspec::DEFAULT_MEMORY_BYTES, |m| m.unsigned_abs());
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
        let rec = self.records.container(id)?;
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
    /// process's figures and the root disk's filesystem. `None` for a container that is not
    /// running.
    pub async fn sample(&self, id: &str) -> Result<Option<(ContainerRecord, VmSample, FsFigures)>> {
        let rec = self.records.container(id)?;
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
}

/// How a stop ended, as the container's exit.
fn stop_exit(
    state: ContainerState,
    forced: bool,
    shut_off: Option<virtlet_vm::ExitInfo>,
    timeout_s: i64,
) -> Exit {
    match (state, forced, shut_off) {
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
    }
}

/// How long StopContainer waits for the guest to power off before forcing it: the CRI timeout
/// less a margin (half of it, at most 3 s) for forcing it off and answering, so the call
/// returns within the timeout the caller gave. Forcing off takes libvirt about 0.1 s where
/// init reaps QEMU at once, and up to 2 s where it reaps late (our test machines).
fn graceful_budget(timeout_s: i64) -> Duration {
    let total = Duration::from_secs(timeout_s.max(0).unsigned_abs());
    total - (total / 2).min(Duration::from_secs(3))
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
    fn how_a_stop_ended() {
        let forced = stop_exit(ContainerState::Running, true, None, 30);
        assert_eq!((forced.code, forced.reason.as_str()), (137, "Killed"));
        assert!(forced.message.contains("30 s"));
        let clean = stop_exit(
            ContainerState::Running,
            false,
            Some(virtlet_vm::ExitInfo {
                code: 0,
                reason: "Completed".into(),
                message: "the guest powered off".into(),
            }),
            30,
        );
        assert_eq!((clean.code, clean.reason.as_str()), (0, "Completed"));
        let never = stop_exit(ContainerState::Created, true, None, 0);
        assert_eq!(never.reason, "NeverStarted");
        let gone = stop_exit(ContainerState::Running, false, None, 0);
        assert_eq!((gone.code, gone.reason.as_str()), (1, "Error"));
    }
}
