//! What the kubelet mounted for the container, read: Secret, ConfigMap, projected (the
//! service account token) and downward-API volumes (every file, with its mode) and
//! single-file mounts become cloud-init `write_files`, as Mirantis Virtlet copied them;
//! virtlet's FlexVolumes (a directory with `virtlet-flexvolume.json`) become disks
//! ([`crate::disks`]). Any other directory is refused, naming it: the VM would not see it.
//! Host paths must lie inside the kubelet root dir once symlinks are resolved: no path
//! traversal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1::Mount;
use virtlet_cloudinit::WriteFile;

use crate::ManagerError;

/// Largest file copied into the guest this way.
const MAX_FILE: u64 = 8 << 20;

fn inside(root: &Path, path: &Path) -> bool {
    path.starts_with(root)
}

/// Volume plugins whose files are copied into the guest.
const COPIED: [&str; 4] = [
    "kubernetes.io~secret",
    "kubernetes.io~configmap",
    "kubernetes.io~projected",
    "kubernetes.io~downward-api",
];

/// What the container's mounts give the VM.
#[derive(Debug, Default)]
pub struct Mounted {
    /// Files copied in by cloud-init.
    pub files: Vec<WriteFile>,
    /// virtlet FlexVolumes, in mount order.
    pub flex: Vec<crate::disks::FlexVolume>,
    /// Directories shared over virtio-9p (emptyDir, hostPath, ...), resolved.
    pub dirs: Vec<crate::disks::DirMount>,
}

/// Reads the container's mounts: the files virtlet copies into the guest, the FlexVolumes,
/// and the directories shared over 9p, which must lie in the kubelet's pods directory or
/// under one of `allowed` (`--allowed-host-paths`) once symlinks are resolved.
pub fn read_mounts(
    kubelet_root: &Path,
    allowed: &[std::path::PathBuf],
    mounts: &[Mount],
) -> Result<Mounted, ManagerError> {
    let mut out = Vec::new();
    let mut flex = Vec::new();
    let mut dirs = Vec::new();
    let root = match kubelet_root.canonicalize() {
        Ok(r) => r,
        Err(_) if mounts.is_empty() => return Ok(Mounted::default()),
        Err(e) => {
            return Err(ManagerError::precondition(format!(
                "the kubelet root dir {} cannot be resolved: {e}",
                kubelet_root.display()
            )));
        }
    };
    for m in mounts {
        let bad = |reason: String| {
            ManagerError::invalid(format!(
                "mount {:?} (host path {:?}): {reason}",
                m.container_path, m.host_path
            ))
        };
        if !m.container_path.starts_with('/') {
            return Err(bad("the container path must be absolute".into()));
        }
        // What a VM's filesystems cannot have: they are the guest's, not a mount namespace
        // of the host's.
        if let Some(image) = &m.image {
            return Err(bad(format!(
                "image volumes ({:?}) are not supported: a VM gets disks and directories, not container image layers",
                image.image
            )));
        }
        if m.propagation != 0 {
            return Err(bad(format!(
                "mount propagation {} ({}) cannot reach a VM: its guest mounts are its own; use the default (None)",
                m.propagation,
                k8s_cri::v1::MountPropagation::try_from(m.propagation)
                    .map_or("unknown", |p| p.as_str_name())
            )));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(bad(
                "uid/gid mappings (user namespaces) cannot apply to a VM's filesystems".into(),
            ));
        }
        let host = Path::new(&m.host_path)
            .canonicalize()
            .map_err(|e| bad(format!("cannot resolve it: {e}")))?;
        let is_dir = std::fs::metadata(&host).is_ok_and(|m| m.is_dir());
        let copied = COPIED.iter().any(|p| host.to_string_lossy().contains(p));
        let flex_dir = is_dir && host.join(crate::disks::FLEX_FILE).exists();
        if is_dir && !copied && !flex_dir && !inside(&root, &host) {
            // A hostPath directory: only from where the node allows.
            if !allowed
                .iter()
                .filter_map(|a| a.canonicalize().ok())
                .any(|a| inside(&a, &host))
            {
                return Err(bad(format!(
                    "it resolves to {}, outside the kubelet root dir {} and the allowed host paths {allowed:?} (--allowed-host-paths)",
                    host.display(),
                    root.display()
                )));
            }
            dirs.push(dir_mount(m, host));
            continue;
        }
        if !inside(&root, &host) {
            return Err(bad(format!(
                "it resolves to {}, outside the kubelet root dir {}",
                host.display(),
                root.display()
            )));
        }
        let meta = std::fs::metadata(&host).map_err(|e| bad(e.to_string()))?;
        if meta.is_file() {
            out.push(read_file(&host, &m.container_path, meta.permissions().mode()).map_err(bad)?);
            continue;
        }
        if let Some(options) = crate::disks::read_flex_file(&host).map_err(bad)? {
            flex.push(crate::disks::FlexVolume {
                name: host
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                mount_path: m.container_path.clone(),
                read_only: m.readonly,
                options,
            });
            continue;
        }
        if !copied {
            dirs.push(dir_mount(m, host));
            continue;
        }
        let mut files = Vec::new();
        walk(&host, &mut files).map_err(|e| bad(e.to_string()))?;
        for f in files {
            let real = f.canonicalize().map_err(|e| bad(e.to_string()))?;
            if !inside(&root, &real) {
                return Err(bad(format!(
                    "{} resolves outside the kubelet root dir",
                    f.display()
                )));
            }
            let rel = f.strip_prefix(&host).unwrap_or(&f);
            let dest = format!(
                "{}/{}",
                m.container_path.trim_end_matches('/'),
                rel.display()
            );
            let mode = std::fs::metadata(&real)
                .map_err(|e| bad(e.to_string()))?
                .permissions()
                .mode();
            out.push(read_file(&real, &dest, mode).map_err(bad)?);
        }
    }
    Ok(Mounted {
        files: out,
        flex,
        dirs,
    })
}

fn dir_mount(m: &Mount, host: std::path::PathBuf) -> crate::disks::DirMount {
    crate::disks::DirMount {
        name: host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into()),
        host,
        mount_path: m.container_path.clone(),
        read_only: m.readonly,
    }
}

/// The size of the block device of a block volume at `/` (a persistent root filesystem).
pub fn root_device_size(devices: &[k8s_cri::v1::Device]) -> Result<Option<u64>, ManagerError> {
    let Some((i, d)) = devices
        .iter()
        .enumerate()
        .find(|(_, d)| d.container_path == "/")
    else {
        return Ok(None);
    };
    let size = std::fs::File::open(&d.host_path)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .map_err(|e| {
            ManagerError::invalid(format!(
                "config.devices[{i}] (host path {:?}, the root filesystem): cannot read its size: {e}",
                d.host_path
            ))
        })?;
    Ok(Some(size))
}

fn read_file(path: &Path, dest: &str, mode: u32) -> Result<WriteFile, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE {
        return Err(format!(
            "{} is {len} bytes, more than {MAX_FILE}",
            path.display()
        ));
    }
    Ok(WriteFile {
        path: dest.to_owned(),
        content: std::fs::read(path).map_err(|e| e.to_string())?,
        permissions: mode & 0o7777,
    })
}

/// Regular files under `dir`, following the kubelet's `..data` symlinks but skipping the
/// dot-named bookkeeping entries themselves.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        let meta = std::fs::metadata(&p)?;
        if meta.is_dir() {
            walk(&p, out)?;
        } else if meta.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount(host: &Path, container: &str) -> Mount {
        Mount {
            host_path: host.display().to_string(),
            container_path: container.into(),
            ..Default::default()
        }
    }

    #[test]
    fn secret_volumes_single_files_and_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pods");
        // A Secret volume as the kubelet lays it out: files are links into ..data.
        let vol = root.join("uid/volumes/kubernetes.io~secret/creds");
        let data = vol.join("..2026_11_26");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("password"), "hunter2").unwrap();
        std::fs::set_permissions(
            data.join("password"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_11_26", vol.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/password", vol.join("password")).unwrap();
        let single = root.join("uid/etc-hosts");
        std::fs::write(&single, "127.0.0.1 localhost\n").unwrap();
        let empty_dir = root.join("uid/volumes/kubernetes.io~empty-dir/scratch");
        std::fs::create_dir_all(&empty_dir).unwrap();
        // The service account token, a projected volume.
        let sa = root.join("uid/volumes/kubernetes.io~projected/kube-api-access-x");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), "eyJ").unwrap();

        let files = read_mounts(
            &root,
            &[],
            &[
                mount(&vol, "/etc/creds"),
                mount(&single, "/etc/hosts"),
                mount(&sa, "/var/run/secrets/kubernetes.io/serviceaccount"),
            ],
        )
        .unwrap()
        .files;
        // Directories go over 9p: from the kubelet's pods dir, or an allowed host path.
        let m = read_mounts(&root, &[], &[mount(&empty_dir, "/scratch")]).unwrap();
        assert_eq!(m.dirs.len(), 1);
        assert_eq!(m.dirs[0].name, "scratch");
        assert_eq!(m.dirs[0].mount_path, "/scratch");
        let host_dir = dir.path().join("srv/data");
        std::fs::create_dir_all(&host_dir).unwrap();
        let err = read_mounts(&root, &[], &[mount(&host_dir, "/data")]).unwrap_err();
        assert!(err.to_string().contains("--allowed-host-paths"), "{err}");
        let m = read_mounts(
            &root,
            &[dir.path().join("srv")],
            &[mount(&host_dir, "/data")],
        )
        .unwrap();
        assert_eq!(m.dirs[0].host, host_dir.canonicalize().unwrap());
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0].path, "/etc/creds/password");
        assert_eq!(files[0].content, b"hunter2");
        assert_eq!(files[0].permissions, 0o600);
        assert_eq!(files[1].path, "/etc/hosts");
        assert_eq!(
            files[2].path,
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        );

        // Mount options a VM cannot have, each refused by name.
        for (m, needle) in [
            (
                Mount {
                    propagation: 2,
                    ..mount(&empty_dir, "/p")
                },
                "PROPAGATION_BIDIRECTIONAL",
            ),
            (
                Mount {
                    image: Some(k8s_cri::v1::ImageSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    ..mount(&empty_dir, "/i")
                },
                "image volumes",
            ),
            (
                Mount {
                    uid_mappings: vec![k8s_cri::v1::IdMapping::default()],
                    ..mount(&empty_dir, "/u")
                },
                "user namespaces",
            ),
        ] {
            let err = read_mounts(&root, &[], &[m]).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }

        // Outside the root, directly or through a symlink.
        let outside = dir.path().join("etc-shadow");
        std::fs::write(&outside, "secret").unwrap();
        let err = read_mounts(&root, &[], &[mount(&outside, "/x")]).unwrap_err();
        assert!(
            err.to_string().contains("outside the kubelet root dir"),
            "{err}"
        );
        let sneaky = root.join("uid/volumes/kubernetes.io~configmap/cm");
        std::fs::create_dir_all(&sneaky).unwrap();
        std::os::unix::fs::symlink(&outside, sneaky.join("shadow")).unwrap();
        let err = read_mounts(&root, &[], &[mount(&sneaky, "/etc/cm")]).unwrap_err();
        assert!(
            err.to_string().contains("outside the kubelet root dir"),
            "{err}"
        );
        let dotdot = format!("{}/uid/../../etc-shadow", root.display());
        let err = read_mounts(
            &root,
            &[],
            &[Mount {
                host_path: dotdot,
                container_path: "/x".into(),
                ..Default::default()
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
