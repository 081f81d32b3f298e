//! The pod sandbox lifecycle: its network namespace, its CNI network and DHCP responders, its
//! record; and reaching into it (port-forward).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{NamespaceMode, PodSandboxConfig};
use tracing::{Instrument, info, info_span, warn};
use virtlet_core::{ContainerState, ErrorKind, SandboxState, naming};

use crate::error::io;
use crate::pod::PodSpec;
use crate::{Manager, ManagerError, SandboxRecord, blocking, lock, netns, network, now_ns, short};

type Result<T> = std::result::Result<T, ManagerError>;

/// How long port-forward waits for the VM to accept a connection.
const DIAL_PATIENCE: Duration = Duration::from_secs(10);

/// Refuses a sandbox config virtlet cannot run, naming the field and the value.
fn check_config(config: &PodSandboxConfig) -> Result<()> {
    let meta = config
        .metadata
        .as_ref()
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
    network::port_mappings(config)?;
    network::dns_info(config)?;
    Ok(())
}

impl Manager {
    /// Creates a pod sandbox: its network namespace, its CNI network, the DHCP responders
    /// that hand the VM its address, and its record. Retried with the same config after a
    /// failure, it works; for a pod whose sandbox of the same attempt is ready, it returns
    /// that sandbox.
    pub async fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String> {
        check_config(&config)?;
        let pod = PodSpec::parse(&config)?;
        let meta = config.metadata.clone().unwrap_or_default();
        if let Some(existing) = self.records.find_sandbox(|s| {
            s.state == SandboxState::Ready
                && s.config.metadata.as_ref().is_some_and(|m| {
                    m.uid == meta.uid
                        && m.attempt == meta.attempt
                        && m.name == meta.name
                        && m.namespace == meta.namespace
                })
        }) {
            info!(sandbox = %short(&existing.id), "pod sandbox already running for this pod and attempt");
            return Ok(existing.id);
        }
        let cni_config = self.net.current_config()?;

        let id = naming::new_id();
        let span = info_span!("sandbox", id = %short(&id), pod = %format!("{}/{}", meta.namespace, meta.name));
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
            self.records.save_sandbox(&rec)?;
            let made = blocking({
                let netns = netns.clone();
                move || {
                    let _phase = tracing::debug_span!("netns").entered();
                    netns::create(&netns)
                }
            })
            .await?;
            if let Err(e) = made {
                let _ = self.records.drop_sandbox(&id);
                return Err(io(format!(
                    "cannot create network namespace {}",
                    netns.display()
                ))(e));
            }
            let undo = |m: &Manager| {
                let _ = netns::remove(&netns);
                let _ = m.records.drop_sandbox(&id);
            };
            let save_result = |result: &serde_json::Value| {
                let mut r = rec.clone();
                if let Some(n) = r.network.as_mut() {
                    n.cni_result = Some(result.clone());
                }
                self.records.save_sandbox(&r)
            };
            let (result, pod_net) = match self.net.setup(&rec, &cni_config, save_result).await {
                Ok(v) => v,
                Err(e) => {
                    undo(self);
                    return Err(e);
                }
            };
            if let Some(n) = rec.network.as_mut() {
                n.cni_result = Some(result);
                n.pod = Some(pod_net.clone());
            }
            network::log_pod_network(&pod_net);
            let ready = async {
                self.net.start_responders(&rec, &pod_net).await?;
                rec.state = rec.state.transition(SandboxState::Ready)?;
                self.records.save_sandbox(&rec)
            }
            .await;
            if let Err(e) = ready {
                self.net.stop_responders(&id).await;
                if let Some(stored) = rec.network.clone() {
                    let _ = self.net.release_stored(&rec, &stored).await;
                }
                undo(self);
                return Err(e);
            }
            lock(&self.pod_specs).insert(id.clone(), Arc::new(pod));
            info!(netns = %netns.display(), ip = ?pod_net.pod_ip(), "pod sandbox ready");
            Ok(id.clone())
        }
        .instrument(span)
        .await
    }

    /// The pod's netns file: named after the pod UID, unless an older sandbox of the pod
    /// still has that name.
    fn netns_path(&self, pod_uid: &str, sandbox_id: &str) -> PathBuf {
        let plain = self.config.netns_dir.join(pod_uid);
        let taken = self.records.find_sandbox(|s| s.netns == plain).is_some() || plain.exists();
        if taken {
            self.config.netns_dir.join(format!(
                "{pod_uid}-{}",
                &sandbox_id[..8.min(sandbox_id.len())]
            ))
        } else {
            plain
        }
    }

    /// Stops the pod: its VMs are forced off, its DHCP responders stop, CNI DEL releases its
    /// address; the sandbox becomes NOTREADY. Unknown or already stopped sandboxes succeed.
    /// When DEL fails the call fails (the kubelet retries it); RemovePodSandbox tries once
    /// more and then removes the pod anyway.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let pod_lock = self.pod_lock(id);
        let _held = pod_lock.lock().await;
        let Some(mut rec) = self.records.sandbox_any(id) else {
            return Ok(());
        };
        if rec.state != SandboxState::Ready && rec.state != SandboxState::NotReady {
            return Ok(());
        }
        for c in self.records.containers_of(id) {
            if matches!(c.state, ContainerState::Running | ContainerState::Created) {
                self.stop_locked(&c.id, 0).await?;
            }
        }
        self.net.stop_responders(id).await;
        if rec.state == SandboxState::Ready {
            rec.state = rec.state.transition(SandboxState::NotReady)?;
            self.records.save_sandbox(&rec)?;
            info!(sandbox = %short(id), "pod sandbox stopped");
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
                self.records.save_sandbox(rec)?;
                info!(sandbox = %short(&rec.id), "pod network released (CNI DEL)");
                Ok(())
            }
            Err(e) => {
                let failures = stored.del_failures + 1;
                if let Some(n) = rec.network.as_mut() {
                    n.del_failures = failures;
                }
                self.records.save_sandbox(rec)?;
                warn!(sandbox = %short(&rec.id), error = %e, failures,
                      "CNI DEL failed; it is retried at the next stop and at removal");
                Err(ManagerError::failed(
                    ErrorKind::Unavailable,
                    format!(
                        "releasing the pod network failed (attempt {failures}); retry StopPodSandbox"
                    ),
                    e,
                ))
            }
        }
    }

    /// Removes the pod: its containers, root disks, network namespace and record. Unknown
    /// sandboxes succeed.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let pod_lock = self.pod_lock(id);
        let _held = pod_lock.lock().await;
        let Some(mut rec) = self.records.sandbox_any(id) else {
            return Ok(());
        };
        rec.state = rec.state.transition(SandboxState::Removing)?;
        self.records.save_sandbox(&rec)?;
        self.finish_sandbox_removal(rec).await
    }

    /// Removes what a sandbox in state Removing (or an interrupted Creating) still has.
    pub(crate) async fn finish_sandbox_removal(&self, mut rec: SandboxRecord) -> Result<()> {
        for c in self.records.containers_of(&rec.id) {
            self.remove_locked(c).await?;
        }
        self.net.stop_responders(&rec.id).await;
        if let Err(e) = self.release_network(&mut rec).await {
            // Removal is never blocked by a plugin: the netns goes, and with it the pod's
            // links; what the plugin keeps outside (an IPAM address, rules) is named here.
            warn!(sandbox = %short(&rec.id), error = %virtlet_core::error::chain(&e),
                  "removing the pod although CNI DEL failed; the plugin may keep its address or rules");
        }
        for root in std::mem::take(&mut rec.root_disks) {
            self.drop_root_disk(&rec.id, &root)?;
        }
        let dir = self.config.vm_dir.join(&rec.id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("cannot remove {}", dir.display()))(e));
            }
            _ => {}
        }
        let netns = rec.netns.clone();
        blocking(move || netns::remove(&netns))
            .await?
            .map_err(io(format!(
                "cannot remove network namespace {}",
                rec.netns.display()
            )))?;
        self.records.drop_sandbox(&rec.id)?;
        lock(&self.pod_locks).remove(&rec.id);
        lock(&self.pod_specs).remove(&rec.id);
        info!(sandbox = %short(&rec.id), "pod sandbox removed");
        Ok(())
    }

    /// A TCP connection to `port` of the pod's VM, made from inside the pod's netns (for
    /// `kubectl port-forward`).
    pub async fn dial_pod(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let rec = self.records.sandbox(sandbox_id)?;
        if rec.state != SandboxState::Ready {
            return Err(ManagerError::precondition(format!(
                "pod sandbox {sandbox_id:?} is not ready"
            )));
        }
        let ip = rec.pod_network().and_then(|n| n.pod_ip()).ok_or_else(|| {
            ManagerError::precondition(format!("pod sandbox {sandbox_id:?} has no IPv4 address"))
        })?;
        let netns = rec.netns.clone();
        let socket = blocking(move || virtlet_net::podside::tcp_socket_in(&netns)).await??;
        let addr = std::net::SocketAddr::from((ip, port));
        match tokio::time::timeout(DIAL_PATIENCE, socket.connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ManagerError::failed(
                ErrorKind::Unavailable,
                format!("cannot connect to {addr} in the pod"),
                e,
            )),
            Err(_) => Err(ManagerError::DeadlineExceeded(format!(
                "connecting to {addr} in the pod timed out after {} s",
                DIAL_PATIENCE.as_secs()
            ))),
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_cri::v1 as api;

    #[test]
    fn sandbox_configs_are_checked_naming_the_field() {
        let mut c = PodSandboxConfig::default();
        assert_eq!(
            check_config(&c).unwrap_err().to_string(),
            "config.metadata is missing"
        );
        c.metadata = Some(api::PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            uid: String::new(),
            attempt: 0,
        });
        assert_eq!(
            check_config(&c).unwrap_err().to_string(),
            "config.metadata.uid is empty"
        );
        if let Some(m) = c.metadata.as_mut() {
            m.uid = "../etc".into();
        }
        assert!(
            check_config(&c)
                .unwrap_err()
                .to_string()
                .contains("\"../etc\"")
        );
        if let Some(m) = c.metadata.as_mut() {
            m.uid = "0c9d8f7a".into();
        }
        assert!(check_config(&c).is_ok());
        c.linux = Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = check_config(&c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("hostNetwork"), "{e}");
    }
}
