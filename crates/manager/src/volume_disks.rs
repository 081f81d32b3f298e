//! Making and removing a container's volume disks ([`crate::disks`] plans them): empty qcow2
//! files for `qcow2` FlexVolumes, libvirt secrets for `ceph` ones, and the image on a
//! persistent root volume ([`crate::rootfs`]). Each file is named `vol-<container ID[..12]>-*`
//! in the pod's directory and each secret's usage `virtlet-<container ID> <volume> (<VM
//! dir>)` (the VM dir tells this virtlet's secrets from another's on the same libvirtd), so the
//! container's removal and startup GC find them without a record.

use std::path::{Path, PathBuf};

use virtlet_core::ErrorKind;

use crate::disks::PlannedVolume;
use crate::{Manager, ManagerError, Result, blocking};

/// What was made, to take back on a failure.
pub(crate) enum Made {
    File(PathBuf),
    Secrets(String),
}

/// The usage-name prefix of a container's secrets.
pub(crate) fn secret_prefix(container_id: &str) -> String {
    format!("virtlet-{container_id}")
}

/// The file-name prefix of a container's ephemeral volume files.
pub(crate) fn file_prefix(container_id: &str) -> String {
    format!("vol-{}-", &container_id[..12.min(container_id.len())])
}

impl Manager {
    /// What ends the usage names of this virtlet's secrets.
    fn secret_owner(&self) -> String {
        format!("({})", self.config.vm_dir.display())
    }

    /// Makes the planned volume disks; each made thing is pushed to `made` first.
    pub(crate) async fn make_volumes(
        &self,
        container_id: &str,
        volumes: &[PlannedVolume],
        made: &mut Vec<Made>,
    ) -> Result<()> {
        for v in volumes {
            if let Some(size) = v.create {
                let path = v.disk.path.clone();
                made.push(Made::File(path.clone()));
                blocking(move || {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(std::io::Error::other)?;
                    }
                    virtlet_vm::disk::create_qcow2(&path, size).map_err(std::io::Error::other)
                })
                .await?
                .map_err(|e| {
                    ManagerError::failed(
                        ErrorKind::Internal,
                        format!("cannot create the volume disk {}", v.disk.path.display()),
                        e,
                    )
                })?;
            }
            if let (
                Some(key),
                virtlet_core::vmspec::DiskSource::Rbd {
                    secret_uuid, image, ..
                },
            ) = (&v.ceph_key, &v.disk.source)
            {
                let prefix = secret_prefix(container_id);
                made.push(Made::Secrets(container_id.to_owned()));
                let (lv, uuid, key) = (self.libvirt.clone(), secret_uuid.clone(), key.clone());
                let usage = format!("{prefix} {image} {}", self.secret_owner());
                blocking(move || lv.define_ceph_secret(&uuid, &usage, &key))
                    .await?
                    .map_err(|e| {
                        ManagerError::failed(
                            ErrorKind::InvalidArgument,
                            format!("the Ceph volume {image:?}: its secret"),
                            e,
                        )
                    })?;
            }
        }
        Ok(())
    }

    pub(crate) async fn take_back_volume(&self, made: Made) {
        match made {
            Made::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            Made::Secrets(container_id) => {
                let _ = self.drop_secrets(&container_id).await;
            }
        }
    }

    /// Undefines this virtlet's secrets of a container.
    async fn drop_secrets(&self, container_id: &str) -> Result<()> {
        let (lv, prefix, owner) = (
            self.libvirt.clone(),
            secret_prefix(container_id),
            self.secret_owner(),
        );
        blocking(move || lv.undefine_secrets(&prefix, &owner))
            .await?
            .map(|_| ())
            .map_err(|e| ManagerError::failed(ErrorKind::Internal, "libvirt secrets", e))
    }

    /// Removes what a container's volumes left: its ephemeral disk files and its secrets.
    pub(crate) async fn remove_volumes(&self, container_id: &str, pod_dir: &Path) {
        remove_files(pod_dir, &file_prefix(container_id));
        if self.libvirt.runs_qemu()
            && let Err(e) = self.drop_secrets(container_id).await
        {
            tracing::warn!(
                container = container_id,
                "cannot remove the container's libvirt secrets: {}",
                virtlet_core::error::chain(&e)
            );
        }
    }

    /// Writes the image onto a persistent root volume unless it is there (blocking work in
    /// its own thread).
    pub(crate) async fn prepare_persistent_root(
        &self,
        device: &Path,
        image: &virtlet_image::ImageInfo,
        container_id: &str,
    ) -> Result<()> {
        let user = format!("persistent-root/{container_id}");
        let (info, blob) = self.images.acquire(&image.id(), &user)?;
        let device_path = device.to_path_buf();
        let digest = info.digest.hex();
        let format = info.format.clone();
        let written = blocking(move || {
            let _phase = tracing::debug_span!("persistent_root").entered();
            crate::rootfs::prepare(&device_path, &blob, &format, &digest)
        })
        .await;
        let _ = self.images.release(&info.digest, &user);
        if written?? {
            tracing::info!(device = %device.display(), image = %image.id(), "the image was written onto the persistent root volume");
        } else {
            tracing::info!(device = %device.display(), "the persistent root volume holds the image already: used as it is");
        }
        Ok(())
    }
}

impl Manager {
    /// Startup GC: the ephemeral volume files and Ceph secrets of containers virtlet no
    /// longer knows (removed while it was down, or a create that never finished).
    pub(crate) async fn collect_volume_leftovers(&self, known: &[String], sandboxes: &[String]) {
        let is_known = |id_prefix: &str| known.iter().any(|k| k.starts_with(id_prefix));
        for s in sandboxes {
            let Ok(entries) = std::fs::read_dir(self.config.vm_dir.join(s)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_prefix("vol-").and_then(|r| r.get(..12)) else {
                    continue;
                };
                if !is_known(id) {
                    tracing::info!(file = %e.path().display(), "recovery: removing a volume disk of a container virtlet does not know");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if !self.libvirt.runs_qemu() {
            return;
        }
        let lv = self.libvirt.clone();
        let Ok(Ok(secrets)) = blocking(move || lv.owned_secrets()).await else {
            return;
        };
        let owner = self.secret_owner();
        for usage in secrets.into_iter().filter(|u| u.ends_with(&owner)) {
            let Some(id) = usage
                .strip_prefix("virtlet-")
                .and_then(|r| r.split(' ').next())
            else {
                continue;
            };
            if !id.is_empty() && !is_known(id) {
                tracing::info!(secret = %usage, "recovery: removing a libvirt secret of a container virtlet does not know");
                let _ = self.drop_secrets(id).await;
            }
        }
    }
}

/// Removes the files in `dir` whose names start with `prefix`.
fn remove_files(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
