//! A container's volumes as disks of its VM, planned without I/O: block volumes (CRI
//! `devices`, the pod's `volumeDevices`) and virtlet FlexVolumes (`qcow2`, `raw`, `ceph`).
//! Each gets a serial the guest can read (`/sys/block/*/serial`), and cloud-init links it
//! where the pod spec says (a device path) or mounts it (a mount path). A block volume at
//! `/` is the persistent root filesystem ([`crate::rootfs`]). Order, as Mirantis Virtlet
//! had it: root, block volumes, FlexVolumes; the cloud-init disk stays last.

use std::path::{Path, PathBuf};

use k8s_cri::v1::Device;
use serde_json::{Map, Value};
use virtlet_cloudinit::GuestVolume;
use virtlet_cloudinit::volumes::GuestFilesystem;
use virtlet_core::vmspec::{Disk, DiskFormat, DiskSource, Filesystem};

use crate::ManagerError;

/// The file virtlet's FlexVolume driver writes into the volume's directory.
pub const FLEX_FILE: &str = "virtlet-flexvolume.json";

/// Size of a `qcow2` FlexVolume without `capacity`.
pub const DEFAULT_CAPACITY: u64 = 1024 * 1024 * 1024;

/// A FlexVolume of the container, as its driver described it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlexVolume {
    /// The volume's name (its directory's).
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    /// The options of the pod spec, as the kubelet handed them to the driver.
    pub options: Map<String, Value>,
}

/// A directory volume (emptyDir, hostPath, ...) shared over virtio-9p.
#[derive(Debug, Clone, PartialEq)]
pub struct DirMount {
    /// The volume's name (its directory's): the 9p mount tag.
    pub name: String,
    /// The directory, symlinks resolved.
    pub host: PathBuf,
    pub mount_path: String,
    pub read_only: bool,
}

/// The 9p mount tags of `dirs`: each volume's name, cut to the 31 bytes a tag may have and
/// made unique with its index when names repeat.
pub fn filesystems(dirs: &[DirMount]) -> Vec<(Filesystem, GuestFilesystem)> {
    let mut used: Vec<String> = Vec::new();
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let mut tag: String = sanitize(&d.name).chars().take(31).collect();
            if tag.is_empty() || used.contains(&tag) {
                let suffix = format!("_{i}");
                tag = tag.chars().take(31 - suffix.len()).collect::<String>() + &suffix;
            }
            used.push(tag.clone());
            (
                Filesystem {
                    source: d.host.clone(),
                    tag: tag.clone(),
                    read_only: d.read_only,
                },
                GuestFilesystem {
                    tag,
                    mount_path: d.mount_path.clone(),
                    read_only: d.read_only,
                },
            )
        })
        .collect()
}

/// One volume disk and what it needs made.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedVolume {
    /// The disk, `target` still empty (the plan names it by its place on the bus).
    pub disk: Disk,
    pub guest: GuestVolume,
    /// A `qcow2` FlexVolume: the file to create, of this many bytes, removed with the VM.
    pub create: Option<u64>,
    /// A `ceph` FlexVolume: the libvirt secret to define (its UUID is the disk's) holding
    /// this key, removed with the VM.
    pub ceph_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumePlan {
    /// The block device that holds the persistent root filesystem (`devicePath: /`).
    pub persistent_root: Option<PathBuf>,
    pub volumes: Vec<PlannedVolume>,
}

/// The options in a FlexVolume directory, if it is one of virtlet's. I/O, but small: the
/// caller ([`crate::volumes`]) reads mounts anyway.
pub fn read_flex_file(dir: &Path) -> Result<Option<Map<String, Value>>, String> {
    let path = dir.join(FLEX_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    match serde_json::from_slice(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        _ => Err(format!("{} is not a JSON object", path.display())),
    }
}

/// `1024MB`, `1Gi`, `512M`, `2048`: libvirt's units (`K`, `KiB`: 1024; `KB`: 1000; up to T).
pub fn parse_capacity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "Ki" | "KiB" => 1 << 10,
        "KB" => 1000,
        "M" | "Mi" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "G" | "Gi" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "T" | "Ti" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

/// Whether the device name (without `/dev/`) matches a `--raw-devices` glob.
pub fn raw_allowed(path: &str, globs: &[String]) -> bool {
    let name = path.strip_prefix("/dev/").unwrap_or(path);
    globs
        .iter()
        .filter_map(|g| glob::Pattern::new(g).ok())
        .any(|p| p.matches(name))
}

fn opt<'a>(v: &'a FlexVolume, key: &str) -> Option<&'a str> {
    v.options
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The serial of volume disk `i` (virtio-blk keeps 20 characters).
fn serial(i: usize) -> String {
    format!("virtlet-vol{i}")
}

/// Plans the container's volume disks. `pod_dir`: where ephemeral disks go.
pub fn plan_volumes(
    container_id: &str,
    pod_dir: &Path,
    devices: &[Device],
    flex: &[FlexVolume],
    raw_globs: &[String],
) -> Result<VolumePlan, ManagerError> {
    let mut plan = VolumePlan::default();
    let short = &container_id[..12.min(container_id.len())];
    for (i, d) in devices.iter().enumerate() {
        let bad = |why: &str| {
            ManagerError::invalid(format!(
                "config.devices[{i}] (host path {:?}, container path {:?}): {why}",
                d.host_path, d.container_path
            ))
        };
        if !d.host_path.starts_with("/dev/") {
            return Err(bad("the host path must be a block device under /dev"));
        }
        if !d.container_path.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        if d.container_path == "/" {
            if plan.persistent_root.is_some() {
                return Err(bad("a second block volume at / (the root filesystem)"));
            }
            plan.persistent_root = Some(PathBuf::from(&d.host_path));
            continue;
        }
        if !d.container_path.starts_with("/dev/") {
            return Err(bad(
                "a block volume's devicePath must be under /dev (where the guest gets a link to the disk), or / for the root filesystem",
            ));
        }
        let read_only = !d.permissions.is_empty() && !d.permissions.contains('w');
        let serial = serial(plan.volumes.len());
        plan.volumes.push(PlannedVolume {
            disk: Disk {
                path: PathBuf::from(&d.host_path),
                format: DiskFormat::Raw,
                read_only,
                target: String::new(),
                source: DiskSource::Block { offset: 0, size: 0 },
                serial: Some(serial.clone()),
            },
            guest: GuestVolume {
                serial,
                link: Some(d.container_path.clone()),
                mount_path: None,
                format: false,
                read_only,
            },
            create: None,
            ceph_key: None,
        });
    }
    for v in flex {
        let bad = |why: String| {
            ManagerError::invalid(format!(
                "FlexVolume {:?} (mounted at {:?}): {why}",
                v.name, v.mount_path
            ))
        };
        let serial = serial(plan.volumes.len());
        let guest = |format: bool| GuestVolume {
            serial: serial.clone(),
            link: Some(format!("/dev/virtlet/{}", v.name)),
            mount_path: Some(v.mount_path.clone()),
            format,
            read_only: v.read_only,
        };
        let disk = |path: PathBuf, format, source| Disk {
            path,
            format,
            read_only: v.read_only,
            target: String::new(),
            source,
            serial: Some(serial.clone()),
        };
        let planned = match opt(v, "type") {
            Some("qcow2") => {
                let capacity = match opt(v, "capacity") {
                    None => DEFAULT_CAPACITY,
                    Some(c) => parse_capacity(c).ok_or_else(|| {
                        bad(format!("capacity {c:?} is not a size (e.g. 1024MB, 10Gi)"))
                    })?,
                };
                let file = pod_dir.join(format!("vol-{short}-{}.qcow2", sanitize(&v.name)));
                PlannedVolume {
                    disk: disk(file, DiskFormat::Qcow2, DiskSource::File),
                    guest: guest(true),
                    create: Some(capacity),
                    ceph_key: None,
                }
            }
            Some("raw") => {
                let path = opt(v, "path")
                    .ok_or_else(|| bad("type raw needs path, a host block device".into()))?;
                if !path.starts_with("/dev/") || path.contains("/../") {
                    return Err(bad(format!("path {path:?} is not a device under /dev")));
                }
                if !raw_allowed(path, raw_globs) {
                    return Err(bad(format!(
                        "path {path:?} does not match --raw-devices {raw_globs:?}"
                    )));
                }
                PlannedVolume {
                    disk: disk(
                        PathBuf::from(path),
                        DiskFormat::Raw,
                        DiskSource::Block { offset: 0, size: 0 },
                    ),
                    guest: guest(false),
                    create: None,
                    ceph_key: None,
                }
            }
            Some("ceph") => {
                let need = |k: &str| opt(v, k).ok_or_else(|| bad(format!("type ceph needs {k}")));
                let monitors = need("monitor")?
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
                let (user, key, pool, image) = (
                    need("user")?,
                    need("secret")?,
                    need("pool")?,
                    need("volume")?,
                );
                PlannedVolume {
                    disk: disk(
                        PathBuf::new(),
                        DiskFormat::Raw,
                        DiskSource::Rbd {
                            monitors,
                            pool: pool.to_owned(),
                            image: image.to_owned(),
                            user: user.to_owned(),
                            secret_uuid: virtlet_core::naming::sibling_uuid(
                                container_id,
                                &format!("ceph-{}", v.name),
                            ),
                        },
                    ),
                    guest: guest(false),
                    create: None,
                    ceph_key: Some(key.to_owned()),
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "type {other:?} is not one of qcow2, raw, ceph"
                )));
            }
            None => return Err(bad("options.type is missing (qcow2, raw or ceph)".into())),
        };
        plan.volumes.push(planned);
    }
    Ok(plan)
}

/// A volume name as a file name part.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn flex(name: &str, opts: Value) -> FlexVolume {
        FlexVolume {
            name: name.into(),
            mount_path: format!("/mnt/{name}"),
            read_only: false,
            options: opts.as_object().unwrap().clone(),
        }
    }

    fn device(host: &str, container: &str) -> Device {
        Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: "mrw".into(),
        }
    }

    #[test]
    fn nine_p_tags_come_from_volume_names() {
        let dir = |name: &str, path: &str| DirMount {
            name: name.into(),
            host: PathBuf::from("/h").join(name),
            mount_path: path.into(),
            read_only: false,
        };
        let fs = filesystems(&[
            dir("scratch", "/a"),
            dir("scratch", "/b"),
            dir("a-very-long-volume-name-that-goes-on-and-on", "/c"),
        ]);
        let tags: Vec<_> = fs.iter().map(|(f, _)| f.tag.as_str()).collect();
        assert_eq!(
            tags,
            ["scratch", "scratch_1", "a-very-long-volume-name-that-go"]
        );
        assert_eq!(fs[1].1.mount_path, "/b");
    }

    #[test]
    fn capacities_in_libvirts_units() {
        assert_eq!(parse_capacity("1024MB"), Some(1_024_000_000));
        assert_eq!(parse_capacity("1Gi"), Some(1 << 30));
        assert_eq!(parse_capacity("512M"), Some(512 << 20));
        assert_eq!(parse_capacity("4096"), Some(4096));
        assert_eq!(parse_capacity("lots"), None);
        assert_eq!(parse_capacity("0"), None);
        assert_eq!(parse_capacity("99999999999999T"), None);
    }

    #[test]
    fn raw_device_globs() {
        let globs = vec!["loop*".to_owned(), "sd?1".to_owned()];
        assert!(raw_allowed("/dev/loop7", &globs));
        assert!(raw_allowed("/dev/sdb1", &globs));
        assert!(!raw_allowed("/dev/sda", &globs));
        assert!(!raw_allowed("/dev/nvme0n1", &globs));
    }

    #[test]
    fn volumes_in_order_with_serials_links_and_mounts() {
        let plan = plan_volumes(
            "c0ffee00deadbeef",
            Path::new("/var/lib/virtlet/vms/s"),
            &[device("/dev/loop3", "/dev/data"), device("/dev/loop4", "/")],
            &[
                flex("scratch", serde_json::json!({"type": "qcow2", "capacity": "64Mi"})),
                flex("disk", serde_json::json!({"type": "raw", "path": "/dev/loop5"})),
                flex(
                    "rbd",
                    serde_json::json!({"type": "ceph", "monitor": "10.0.0.1:6789", "user": "libvirt",
                        "secret": "QVFE", "pool": "rbd", "volume": "img"}),
                ),
            ],
            &["loop*".into()],
        )
        .unwrap();
        assert_eq!(plan.persistent_root, Some(PathBuf::from("/dev/loop4")));
        let serials: Vec<_> = plan
            .volumes
            .iter()
            .map(|v| v.guest.serial.as_str())
            .collect();
        assert_eq!(
            serials,
            [
                "virtlet-vol0",
                "virtlet-vol1",
                "virtlet-vol2",
                "virtlet-vol3"
            ]
        );
        assert_eq!(plan.volumes[0].guest.link.as_deref(), Some("/dev/data"));
        assert_eq!(plan.volumes[0].guest.mount_path, None);
        let q = &plan.volumes[1];
        assert_eq!(q.create, Some(64 << 20));
        assert!(q.guest.format);
        assert_eq!(
            q.disk.path,
            PathBuf::from("/var/lib/virtlet/vms/s/vol-c0ffee00dead-scratch.qcow2")
        );
        assert_eq!(q.guest.mount_path.as_deref(), Some("/mnt/scratch"));
        assert!(
            !plan.volumes[2].guest.format,
            "a raw device is never formatted"
        );
        assert_eq!(plan.volumes[3].ceph_key.as_deref(), Some("QVFE"));
        assert!(
            matches!(&plan.volumes[3].disk.source, DiskSource::Rbd { monitors, .. } if monitors == &["10.0.0.1:6789"])
        );
    }

    #[test]
    fn bad_volumes_are_refused_naming_them() {
        let dir = Path::new("/p");
        let cases: Vec<(Vec<Device>, Vec<FlexVolume>, &str)> = vec![
            (
                vec![device("/tmp/x", "/dev/x")],
                vec![],
                "config.devices[0]",
            ),
            (vec![device("/dev/loop1", "/data")], vec![], "under /dev"),
            (
                vec![device("/dev/loop1", "/"), device("/dev/loop2", "/")],
                vec![],
                "second",
            ),
            (
                vec![],
                vec![flex("a", serde_json::json!({}))],
                "options.type is missing",
            ),
            (
                vec![],
                vec![flex("a", serde_json::json!({"type": "nfs"}))],
                "\"nfs\"",
            ),
            (
                vec![],
                vec![flex(
                    "a",
                    serde_json::json!({"type": "qcow2", "capacity": "big"}),
                )],
                "capacity \"big\"",
            ),
            (
                vec![],
                vec![flex(
                    "a",
                    serde_json::json!({"type": "raw", "path": "/dev/sda"}),
                )],
                "--raw-devices",
            ),
            (
                vec![],
                vec![flex("a", serde_json::json!({"type": "raw"}))],
                "needs path",
            ),
            (
                vec![],
                vec![flex(
                    "a",
                    serde_json::json!({"type": "ceph", "monitor": "m"}),
                )],
                "needs user",
            ),
        ];
        for (devices, flex, needle) in cases {
            let err = plan_volumes("c", dir, &devices, &flex, &["loop*".into()]).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            assert_eq!(err.kind(), virtlet_core::ErrorKind::InvalidArgument);
        }
    }
}
