//! The record cache: every sandbox and container record in memory, written through to the
//! store, and the queries the kubelet's List and Status calls are answered from (never
//! libvirt). Each map has a generation, bumped under its write lock by every change, so a List
//! answer can be reused while nothing changed.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_cri::v1::{ContainerFilter, PodSandboxFilter};
use virtlet_core::{ContainerState, SandboxState};
use virtlet_store::{RecordTable, Store};

use crate::filters;
use crate::{ContainerRecord, ManagerError, SandboxRecord, container_cri_state, sandbox_cri_state};

type Result<T> = std::result::Result<T, ManagerError>;

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

pub struct Records {
    store: std::sync::Arc<Store>,
    sandboxes: RwLock<BTreeMap<String, SandboxRecord>>,
    containers: RwLock<BTreeMap<String, ContainerRecord>>,
    sandboxes_gen: AtomicU64,
    containers_gen: AtomicU64,
}

impl Records {
    /// Loads every record (upgrading older shapes).
    pub fn load(store: std::sync::Arc<Store>) -> Result<Records> {
        let sandboxes: Vec<SandboxRecord> = store.records(RecordTable::Sandboxes)?;
        let containers: Vec<ContainerRecord> = store.records(RecordTable::Containers)?;
        Ok(Records {
            store,
            sandboxes: RwLock::new(
                sandboxes
                    .into_iter()
                    .map(|s| (s.id.clone(), s.upgrade()))
                    .collect(),
            ),
            containers: RwLock::new(containers.into_iter().map(|c| (c.id.clone(), c)).collect()),
            sandboxes_gen: AtomicU64::new(0),
            containers_gen: AtomicU64::new(0),
        })
    }

    pub fn save_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        self.store
            .put_record(RecordTable::Sandboxes, &rec.id, rec)?;
        let mut map = write(&self.sandboxes);
        map.insert(rec.id.clone(), rec.clone());
        self.sandboxes_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn drop_sandbox(&self, id: &str) -> Result<()> {
        self.store.delete_record(RecordTable::Sandboxes, id)?;
        let mut map = write(&self.sandboxes);
        map.remove(id);
        self.sandboxes_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn save_container(&self, rec: &ContainerRecord) -> Result<()> {
        self.store
            .put_record(RecordTable::Containers, &rec.id, rec)?;
        let mut map = write(&self.containers);
        map.insert(rec.id.clone(), rec.clone());
        self.containers_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn drop_container(&self, id: &str) -> Result<()> {
        self.store.delete_record(RecordTable::Containers, id)?;
        let mut map = write(&self.containers);
        map.remove(id);
        self.containers_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// A sandbox by ID in any state (for the manager's own bookkeeping).
    pub fn sandbox_any(&self, id: &str) -> Option<SandboxRecord> {
        read(&self.sandboxes).get(id).cloned()
    }

    /// Whether a sandbox `id` exists in any state.
    pub fn has_sandbox(&self, id: &str) -> bool {
        read(&self.sandboxes).contains_key(id)
    }

    /// Whether a container `id` exists in any state.
    pub fn has_container(&self, id: &str) -> bool {
        read(&self.containers).contains_key(id)
    }

    /// A container by ID in any state.
    pub fn container_any(&self, id: &str) -> Option<ContainerRecord> {
        read(&self.containers).get(id).cloned()
    }

    pub fn all_sandboxes(&self) -> Vec<SandboxRecord> {
        read(&self.sandboxes).values().cloned().collect()
    }

    pub fn all_containers(&self) -> Vec<ContainerRecord> {
        read(&self.containers).values().cloned().collect()
    }

    /// Every container of a sandbox, in any state.
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        read(&self.containers)
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    pub fn find_sandbox(&self, f: impl Fn(&SandboxRecord) -> bool) -> Option<SandboxRecord> {
        read(&self.sandboxes).values().find(|s| f(s)).cloned()
    }

    /// A sandbox as CRI sees it: half-made and half-removed ones do not exist.
    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        read(&self.sandboxes)
            .get(id)
            .filter(|s| !matches!(s.state, SandboxState::Creating | SandboxState::Removing))
            .cloned()
            .ok_or_else(|| ManagerError::not_found(format!("pod sandbox {id:?} does not exist")))
    }

    /// A container as CRI sees it.
    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        read(&self.containers)
            .get(id)
            .filter(|c| !matches!(c.state, ContainerState::Creating | ContainerState::Removing))
            .cloned()
            .ok_or_else(|| ManagerError::not_found(format!("container {id:?} does not exist")))
    }

    pub fn sandboxes_generation(&self) -> u64 {
        self.sandboxes_gen.load(Ordering::Acquire)
    }

    pub fn containers_generation(&self) -> u64 {
        self.containers_gen.load(Ordering::Acquire)
    }

    /// Calls `f` on every listed sandbox, in ID order, under one read lock; returns the
    /// generation of what `f` saw.
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

    /// Calls `f` on every listed container, in ID order, under one read lock.
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_cri::v1 as api;
    use std::collections::HashMap;

    fn sandbox(id: &str, state: SandboxState, app: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            state,
            config: api::PodSandboxConfig {
                labels: HashMap::from([("app".into(), app.into())]),
                ..Default::default()
            },
            runtime_handler: String::new(),
            created_at_ns: 1,
            netns: "/run/netns/x".into(),
            root_disk: None,
            root_disks: Vec::new(),
            network_owner: None,
            network: None,
        }
    }

    #[test]
    fn records_are_written_through_and_generations_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let r = Records::load(store.clone()).unwrap();
        let g0 = r.sandboxes_generation();
        r.save_sandbox(&sandbox("a1", SandboxState::Ready, "web"))
            .unwrap();
        r.save_sandbox(&sandbox("b2", SandboxState::Creating, "web"))
            .unwrap();
        r.save_sandbox(&sandbox("c3", SandboxState::NotReady, "db"))
            .unwrap();
        assert!(r.sandboxes_generation() > g0);
        // Half-made sandboxes are not listed and do not exist for CRI.
        let mut listed = Vec::new();
        r.for_each_sandbox(None, |s| listed.push(s.id.clone()));
        assert_eq!(listed, ["a1", "c3"]);
        assert_eq!(
            r.sandbox("b2").unwrap_err().kind(),
            virtlet_core::ErrorKind::NotFound
        );
        assert!(r.sandbox_any("b2").is_some());
        let filter = api::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "db".into())]),
            ..Default::default()
        };
        let mut listed = Vec::new();
        r.for_each_sandbox(Some(&filter), |s| listed.push(s.id.clone()));
        assert_eq!(listed, ["c3"]);
        // A restart finds the same records.
        r.drop_sandbox("c3").unwrap();
        drop(r);
        let again = Records::load(store).unwrap();
        let ids: Vec<String> = again.all_sandboxes().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a1", "b2"]);
    }
}
