//! What the manager learns from libvirt rather than from calls: VMs that exited (the exit
//! watcher), and at startup, how the records and the node differ (recovery).

use tracing::{debug, info, warn};
use virtlet_core::{ContainerState, SandboxState, naming};
use virtlet_vm::DomainStatus;

use crate::{ContainerRecord, Exit, Manager, ManagerError, blocking, now_ns, short};

type Result<T> = std::result::Result<T, ManagerError>;

/// The exit of a VM libvirt reports as shut off or gone.
fn exit_of(status: Option<DomainStatus>, gone: &str) -> Option<Exit> {
    match status {
        Some(DomainStatus::ShutOff(e)) => Some(Exit {
            code: e.code,
            reason: e.reason,
            message: e.message,
        }),
        None => Some(Exit {
            code: 1,
            reason: "Error".into(),
            message: gone.into(),
        }),
        Some(_) => None,
    }
}

impl Manager {
    /// Records the exit of every running VM that stopped by itself (the guest powered off,
    /// QEMU died). Pods with a call in progress are looked at on the next round.
    pub(crate) async fn poll_exits(&self) {
        let running: Vec<ContainerRecord> = self
            .records
            .all_containers()
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        for c in running {
            let pod_lock = self.pod_lock(&c.sandbox_id);
            let Ok(_held) = pod_lock.try_lock() else {
                continue;
            };
            let lv = self.libvirt.clone();
            let name = c.domain_name.clone();
            let Ok(Ok(status)) = blocking(move || lv.status(&name)).await else {
                continue;
            };
            let Some(exit) = exit_of(status, "the VM's domain disappeared") else {
                continue;
            };
            let Some(mut rec) = self.records.container_any(&c.id) else {
                continue;
            };
            let Ok(exited) = rec.state.transition(ContainerState::Exited) else {
                continue;
            };
            rec.state = exited;
            rec.finished_at_ns = now_ns();
            info!(container = %short(&c.id), code = exit.code, reason = %exit.reason, "VM exited");
            rec.exit = Some(exit);
            if let Err(e) = self.records.save_container(&rec) {
                warn!(container = %short(&c.id), error = %virtlet_core::error::chain(&e), "cannot record the VM's exit");
            }
        }
    }

    /// Reconciles the records with libvirt and the disk: interrupted creates are undone,
    /// interrupted removals finished, exits that happened while virtlet was down recorded,
    /// consoles and DHCP responders of running pods reconnected, and domains and pod
    /// directories virtlet owns but no longer knows removed.
    pub(crate) async fn recover(&self) -> Result<()> {
        for c in self.records.all_containers() {
            match c.state {
                ContainerState::Creating | ContainerState::Removing => {
                    info!(container = %short(&c.id), state = ?c.state, "recovery: finishing an interrupted container create/remove");
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
                        (state, status) => {
                            let exit = exit_of(
                                status,
                                "the VM's domain disappeared while virtlet was down",
                            )
                            .unwrap_or_else(|| Exit {
                                code: 1,
                                reason: "Error".into(),
                                message: "the VM was started but never recorded as running".into(),
                            });
                            info!(container = %short(&c.id), code = exit.code, "recovery: VM stopped while virtlet was down");
                            self.records.save_container(&ContainerRecord {
                                state: state.transition(ContainerState::Exited)?,
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
        for s in self.records.all_sandboxes() {
            match s.state {
                SandboxState::Creating | SandboxState::Removing => {
                    info!(sandbox = %short(&s.id), state = ?s.state, "recovery: finishing an interrupted sandbox create/remove");
                    self.finish_sandbox_removal(s).await?;
                }
                SandboxState::Ready => {
                    // The VM keeps its address: its bridge's responder comes back.
                    let Some(pod) = s.pod_network().cloned() else {
                        continue;
                    };
                    if !s.netns.exists() {
                        warn!(sandbox = %short(&s.id), netns = %s.netns.display(), "recovery: the pod netns is gone; the pod has no network until it is recreated");
                    } else if let Err(e) = self.net.start_responders(&s, &pod).await {
                        warn!(sandbox = %short(&s.id), error = %virtlet_core::error::chain(&e), "recovery: cannot restart the DHCP responders");
                    }
                }
                SandboxState::NotReady => {}
            }
        }
        // What virtlet owns but no longer knows: domains and per-pod directories. A domain is
        // this instance's when its disks are in this instance's VM directory (another virtlet
        // may share the libvirtd: its VMs are left alone).
        let known: Vec<String> = self
            .records
            .all_containers()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let lv = self.libvirt.clone();
        let domains = blocking(move || lv.list_owned()).await??;
        for d in domains {
            let Some(prefix) = naming::domain_id_prefix(&d.name) else {
                continue;
            };
            if known.iter().any(|id| id.starts_with(prefix)) {
                continue;
            }
            if !d.files.iter().any(|f| f.starts_with(&self.config.vm_dir)) {
                debug!(domain = %d.name, "recovery: leaving a VM whose disks are outside this virtlet's VM directory");
                continue;
            }
            info!(domain = %d.name, "recovery: removing a VM virtlet does not know");
            let lv = self.libvirt.clone();
            blocking(move || lv.undefine(&d.name)).await??;
        }
        let sandbox_ids: Vec<String> = self
            .records
            .all_sandboxes()
            .into_iter()
            .map(|s| s.id)
            .collect();
        self.collect_volume_leftovers(&known, &sandbox_ids).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_come_from_shut_off_or_vanished_domains() {
        assert!(exit_of(Some(DomainStatus::Running), "gone").is_none());
        let gone = exit_of(None, "gone");
        assert_eq!(
            gone.map(|e| (e.code, e.message)),
            Some((1, "gone".to_owned()))
        );
    }
}
