//! CreateContainer's plan: from the typed pod spec, the container config, the image, the
//! pod's network and what was read for cloud-init, everything the call will make: the record,
//! the root disk (kept or made), the cloud-init seed, the complete `VmSpec` (seed disk
//! included) and its domain XML, the UUID, and what gives way. Pure: no I/O, no clock, no
//! randomness (the caller passes the new ID and the time), so it is unit-tested without
//! libvirt; [`crate::container`] carries it out and undoes it on failure.

use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use virtlet_cloudinit::generate::SeedKind;
use virtlet_cloudinit::{CloudInitData, WriteFile};
use virtlet_core::annotations::{CloudInitImageType, CpuModel};
use virtlet_core::vmspec::{
    self, Disk, DiskFormat, DiskSource, DomainType, NodeChoices, PodFacts, VmSpec,
};
use virtlet_core::{ContainerState, naming};
use virtlet_image::ImageInfo;
use virtlet_vm::domain_xml;

use crate::pod::PodSpec;
use crate::sources::Sources;
use crate::{ContainerRecord, ManagerError, RootDisk, SandboxRecord};

/// What the node decided, for every VM.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub vm_dir: PathBuf,
    pub run_dir: PathBuf,
    pub vmwrapper: PathBuf,
    pub domain_type: DomainType,
    pub cpu_model: Option<CpuModel>,
    /// Whether the libvirt driver runs QEMU (a console socket) or not (the test driver).
    pub runs_qemu: bool,
    /// `--raw-devices`: the host block devices raw FlexVolumes may name.
    pub raw_devices: Vec<String>,
}

/// Everything the plan is made from. `config` was checked: it has a name and an image.
pub struct PlanInput<'a> {
    pub id: &'a str,
    pub now_ns: i64,
    pub sandbox: &'a SandboxRecord,
    /// The sandbox's other containers, in any state.
    pub siblings: &'a [ContainerRecord],
    pub pod: &'a PodSpec,
    pub pod_config: &'a PodSandboxConfig,
    pub config: &'a ContainerConfig,
    pub image: &'a ImageInfo,
    /// The image as the request named it.
    pub image_name: &'a str,
    /// Whether the file of this container name's recorded root disk exists.
    pub root_present: bool,
    /// Files of the container's mounts, for cloud-init's write_files.
    pub files: Vec<WriteFile>,
    /// The container's FlexVolumes.
    pub flex: Vec<crate::disks::FlexVolume>,
    /// The container's directory volumes (9p).
    pub dirs: Vec<crate::disks::DirMount>,
    /// The size in bytes of the block device of a block volume at `/`, if there is one.
    pub root_device_size: Option<u64>,
    pub sources: Sources,
    pub node: &'a NodeFacts,
}

/// The container's root disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPlan {
    /// The disk of an earlier container of this name (the kubelet restarting it); `claim`:
    /// an unclaimed disk of an older record gets this container's name.
    Reuse { disk: RootDisk, claim: bool },
    /// A new overlay on the image, grown to `size` when that is larger.
    Create { disk: RootDisk, size: Option<u64> },
    /// A block volume at `/`: the persistent root filesystem, the image written onto it
    /// (after a header sector) unless it is there already ([`crate::rootfs`]).
    Persistent { device: PathBuf, size: u64 },
}

impl RootPlan {
    /// The root disk file virtlet keeps for the pod (none for a persistent root).
    pub fn disk(&self) -> Option<&RootDisk> {
        match self {
            RootPlan::Reuse { disk, .. } | RootPlan::Create { disk, .. } => Some(disk),
            RootPlan::Persistent { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// The record, state Creating.
    pub record: ContainerRecord,
    pub root: RootPlan,
    /// This name's disk of another image: removed once the new VM is defined.
    pub replaced_root: Option<RootDisk>,
    /// The seed disk and its content.
    pub seed: Option<(PathBuf, CloudInitData)>,
    /// Volume disks to make (qcow2 files, Ceph secrets), in the VM's disk order.
    pub volumes: Vec<crate::disks::PlannedVolume>,
    pub spec: VmSpec,
    pub xml: String,
    pub uuid: String,
    /// The container takes the pod's network (the first container of the pod).
    pub claims_network: bool,
    /// Domains of this sandbox's exited containers of the same name (same UUID): they give
    /// way to the new one.
    pub predecessors: Vec<String>,
}

/// The file name of a container's root disk in its pod's directory: readable when the
/// container name is a plain name (as Kubernetes makes them), hashed otherwise.
pub fn root_disk_file(container_name: &str) -> String {
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

pub fn plan(input: PlanInput<'_>) -> Result<ContainerPlan, ManagerError> {
    let PlanInput {
        id,
        now_ns,
        sandbox,
        siblings,
        pod,
        pod_config,
        config,
        image,
        image_name,
        root_present,
        files,
        flex,
        dirs,
        root_device_size,
        sources,
        node,
    } = input;
    let filesystems = crate::disks::filesystems(&dirs);
    let volume_plan = crate::disks::plan_volumes(
        id,
        &node.vm_dir.join(&sandbox.id),
        &config.devices,
        &flex,
        &node.raw_devices,
    )?;
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| ManagerError::invalid("config.metadata is missing"))?;
    let pod_meta = sandbox.config.metadata.clone().unwrap_or_default();
    let annotations = &pod.vm;

    // The first container of the pod gets the pod's network (and the pod's UUID); so do later
    // containers of the same name (the kubelet restarting it). Others run without a NIC: a
    // pod has one address.
    let owns_network = sandbox
        .network_owner
        .as_deref()
        .is_none_or(|owner| owner == meta.name);
    let uuid = if owns_network {
        naming::domain_uuid(&pod_meta.uid, annotations.system_uuid.as_deref())
    } else {
        naming::sibling_uuid(&pod_meta.uid, &meta.name)
    };

    // cloud-init data: built (and so checked) before anything is made.
    let seed_kind = match annotations.cloud_init_image_type {
        CloudInitImageType::NoCloud => SeedKind::NoCloud,
        CloudInitImageType::ConfigDrive => SeedKind::ConfigDrive,
    };
    let mut command = config.command.clone();
    command.extend(config.args.iter().cloned());
    let seed_data = virtlet_cloudinit::generate::generate(&virtlet_cloudinit::Input {
        pod_name: &pod_meta.name,
        namespace: &pod_meta.namespace,
        hostname: &sandbox.config.hostname,
        uuid: &uuid,
        annotations: pod.cloud_init.clone(),
        files,
        env: config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        command,
        sysctls: pod.sysctls.clone(),
        volumes: volume_plan
            .volumes
            .iter()
            .map(|v| v.guest.clone())
            .collect(),
        filesystems: filesystems.iter().map(|(_, g)| g.clone()).collect(),
        chown_9p: annotations.chown_9pfs_mounts,
        dns: sandbox
            .pod_network()
            .filter(|_| owns_network)
            .map(|n| &n.dns),
        kind: seed_kind,
        network_config: sandbox
            .pod_network()
            .filter(|_| owns_network && !annotations.force_dhcp_network_config)
            .and_then(|n| virtlet_cloudinit::network::network_config(seed_kind, n)),
        source_entries: sources.entries,
        source_ssh_keys: sources.ssh_keys,
    })?;

    // The root disk: kept across restarts of the container (same name), remade for another
    // image. The old disk of another image stays until the new VM is defined: a new disk
    // that would have its file name gets another one.
    let digest_hex = image.digest.hex();
    let existing = sandbox.root_disk_of(&meta.name).cloned();
    let (root, replaced_root) = match (existing, &volume_plan.persistent_root) {
        (existing, Some(device)) => {
            let size = root_device_size.unwrap_or(0);
            let need = image.virtual_size + crate::rootfs::HEADER_SIZE;
            if size < need {
                return Err(ManagerError::invalid(format!(
                    "the block volume at / ({}) has {size} bytes; the image {image_name:?} needs {need} (its {} bytes and a header sector)",
                    device.display(),
                    image.virtual_size
                )));
            }
            (
                RootPlan::Persistent {
                    device: device.clone(),
                    size,
                },
                existing,
            )
        }
        (Some(disk), None) if disk.image_digest == digest_hex && root_present => {
            let claim = disk.container_name.is_empty();
            let disk = RootDisk {
                container_name: meta.name.clone(),
                ..disk
            };
            (RootPlan::Reuse { disk, claim }, None)
        }
        (other, None) => {
            let dir = node.vm_dir.join(&sandbox.id);
            let mut path = dir.join(root_disk_file(&meta.name));
            if other
                .as_ref()
                .is_some_and(|o| o.path == path && root_present)
            {
                let short = digest_hex.get(..12).unwrap_or(&digest_hex);
                path = path.with_extension(format!("{short}.qcow2"));
            }
            let disk = RootDisk {
                path,
                image_digest: digest_hex,
                container_name: meta.name.clone(),
                image_user: format!("{}/{}", sandbox.id, meta.name),
            };
            let replaced =
                other.filter(|o| o.path != disk.path || o.image_digest != disk.image_digest);
            (
                RootPlan::Create {
                    disk,
                    size: annotations.root_volume_size,
                },
                replaced,
            )
        }
    };

    let log_path = match (&pod_config.log_directory, &config.log_path) {
        (dir, path) if !dir.is_empty() && !path.is_empty() => Some(Path::new(dir).join(path)),
        _ => None,
    };
    let console_socket = node.runs_qemu.then(|| {
        node.run_dir
            .join("consoles")
            .join(format!("{}.sock", &id[..20.min(id.len())]))
    });
    let seed_path = node
        .vm_dir
        .join(&sandbox.id)
        .join(format!("{}.seed.img", &id[..20.min(id.len())]));

    let resources = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    let facts = PodFacts {
        sandbox_id: &sandbox.id,
        container_id: id,
        pod_uid: &pod_meta.uid,
        container_name: &meta.name,
        uuid: &uuid,
        memory_limit_bytes: resources.memory_limit_in_bytes,
        cpu_shares: resources.cpu_shares,
        cpu_quota: resources.cpu_quota,
        cpu_period: resources.cpu_period,
    };
    let choices = NodeChoices {
        domain_type: node.domain_type,
        emulator: node.vmwrapper.clone(),
        cpu_model: node.cpu_model,
        root_disk: match &root {
            RootPlan::Persistent { device, .. } => device.clone(),
            RootPlan::Reuse { disk, .. } | RootPlan::Create { disk, .. } => disk.path.clone(),
        },
        root_format: match &root {
            RootPlan::Persistent { .. } => DiskFormat::Raw,
            _ => DiskFormat::Qcow2,
        },
        console_socket: console_socket.clone(),
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
    let mut spec = vmspec::build(&facts, annotations, &choices);
    spec.filesystems = filesystems.into_iter().map(|(f, _)| f).collect();
    if let RootPlan::Persistent { size, .. } = &root {
        // The guest sees the device after its header sector.
        spec.disks[0].source = DiskSource::Block {
            offset: crate::rootfs::HEADER_SIZE,
            size: size - crate::rootfs::HEADER_SIZE,
        };
    }
    // Volume disks after the root, then the cloud-init seed: the last disk, read-only, all
    // on the pod's disk bus.
    let bus = annotations.disk_bus();
    let next_target = |n: usize| {
        naming::disk_target(bus, n).ok_or_else(|| {
            ManagerError::invalid(format!(
                "too many disks for the pod's disk bus: the root disk, {} volume disks and the cloud-init disk, where {bus:?} takes at most {}",
                volume_plan.volumes.len(),
                naming::max_disks(bus)
            ))
        })
    };
    let mut volumes = volume_plan.volumes.clone();
    for v in &mut volumes {
        v.disk.target = next_target(spec.disks.len())?;
        spec.disks.push(v.disk.clone());
    }
    spec.disks.push(Disk {
        path: seed_path.clone(),
        format: DiskFormat::Raw,
        read_only: true,
        target: next_target(spec.disks.len())?,
        source: DiskSource::File,
        serial: None,
    });
    let xml = domain_xml::render(&spec);

    let predecessors = siblings
        .iter()
        .filter(|c| c.id != id)
        .filter(|c| {
            c.config
                .metadata
                .as_ref()
                .is_some_and(|m| m.name == meta.name)
        })
        .filter(|c| !c.state.is_live())
        .map(|c| c.domain_name.clone())
        .collect();

    let record = ContainerRecord {
        id: id.to_owned(),
        sandbox_id: sandbox.id.clone(),
        state: ContainerState::Creating,
        config: config.clone(),
        image_ref: image.image_ref_for(image_name),
        image_id: image.id(),
        domain_name: spec.domain_name.clone(),
        root_target: spec.disks[0].target.clone(),
        console_socket,
        seed: Some(seed_path.clone()),
        log_path,
        created_at_ns: now_ns,
        started_at_ns: 0,
        finished_at_ns: 0,
        exit: None,
    };
    Ok(ContainerPlan {
        record,
        root,
        replaced_root,
        seed: Some((seed_path, seed_data)),
        volumes,
        spec,
        xml,
        uuid,
        claims_network: owns_network && sandbox.network_owner.is_none(),
        predecessors,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_cri::v1 as api;
    use virtlet_core::SandboxState;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn node() -> NodeFacts {
        NodeFacts {
            vm_dir: "/var/lib/virtlet/vms".into(),
            run_dir: "/run/virtlet".into(),
            vmwrapper: "/usr/lib/virtlet/vmwrapper".into(),
            domain_type: DomainType::Qemu,
            cpu_model: None,
            runs_qemu: true,
            raw_devices: vec!["loop*".into()],
        }
    }

    fn sandbox(annotations: &[(&str, &str)]) -> SandboxRecord {
        SandboxRecord {
            id: "s0123456789abcdef".into(),
            state: SandboxState::Ready,
            config: api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                log_directory: "/var/log/pods/web".into(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            created_at_ns: 1,
            netns: "/run/netns/web".into(),
            root_disk: None,
            root_disks: Vec::new(),
            network_owner: None,
            network: None,
        }
    }

    fn image(hex: &str) -> ImageInfo {
        ImageInfo {
            digest: virtlet_image::Digest::from_hex(hex).unwrap(),
            names: vec!["virtlet.cloud/tiny:latest".into()],
            size: 10,
            format: "qcow2".into(),
            virtual_size: 64 << 20,
            source_url: "http://x/tiny.qcow2".into(),
            pulled_at_ns: 1,
        }
    }

    fn container(name: &str) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: "virtlet.cloud/tiny".into(),
                ..Default::default()
            }),
            command: vec!["echo".into(), "hi".into()],
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    fn make(
        s: &SandboxRecord,
        siblings: &[ContainerRecord],
        c: &api::ContainerConfig,
        img: &ImageInfo,
    ) -> Result<ContainerPlan, ManagerError> {
        make_with(s, siblings, c, img, true)
    }

    fn make_with(
        s: &SandboxRecord,
        siblings: &[ContainerRecord],
        c: &api::ContainerConfig,
        img: &ImageInfo,
        root_present: bool,
    ) -> Result<ContainerPlan, ManagerError> {
        let pod = PodSpec::parse(&s.config).unwrap();
        plan(PlanInput {
            id: "c0ffee00deadbeef1234567890abcdef",
            now_ns: 42,
            sandbox: s,
            siblings,
            pod: &pod,
            pod_config: &s.config,
            config: c,
            image: img,
            image_name: "virtlet.cloud/tiny",
            root_present,
            files: Vec::new(),
            flex: Vec::new(),
            dirs: Vec::new(),
            root_device_size: None,
            sources: Sources::default(),
            node: &node(),
        })
    }

    #[test]
    fn a_first_container_gets_a_new_disk_the_pods_uuid_and_its_network() {
        let s = sandbox(&[]);
        let p = make(&s, &[], &container("vm"), &image(HEX)).unwrap();
        assert_eq!(p.uuid, "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a");
        assert!(p.claims_network);
        let RootPlan::Create { disk, size } = &p.root else {
            panic!("{:?}", p.root)
        };
        assert_eq!(
            disk.path,
            Path::new("/var/lib/virtlet/vms/s0123456789abcdef/root-vm.qcow2")
        );
        assert_eq!(disk.image_user, "s0123456789abcdef/vm");
        assert_eq!(*size, None);
        // Root disk first, the seed last and read-only; the record points at both.
        assert_eq!(p.spec.disks.len(), 2);
        assert!(p.spec.disks[1].read_only);
        assert_eq!(Some(&p.spec.disks[1].path), p.record.seed.as_ref());
        assert_eq!(p.record.state, ContainerState::Creating);
        assert_eq!(p.record.created_at_ns, 42);
        assert_eq!(
            p.record.log_path.as_deref(),
            Some(Path::new("/var/log/pods/web/vm.log"))
        );
        assert_eq!(
            p.record.image_ref,
            format!("virtlet.cloud/tiny@sha256:{HEX}")
        );
        assert!(p.xml.contains(&p.spec.domain_name));
        assert!(p.xml.contains("root-vm.qcow2"));
        // The command reached cloud-init.
        let (_, seed) = p.seed.as_ref().unwrap();
        assert!(seed.user_data.contains("hi"));
    }

    #[test]
    fn a_restarted_container_keeps_its_disk_and_its_exited_predecessor_gives_way() {
        let mut s = sandbox(&[]);
        let first = make(&s, &[], &container("vm"), &image(HEX)).unwrap();
        s.root_disks.push(first.root.disk().unwrap().clone());
        s.network_owner = Some("vm".into());
        let mut old = first.record.clone();
        old.id = "0ld0000000000000000000000".into();
        old.state = ContainerState::Exited;
        let p = make(&s, &[old.clone()], &container("vm"), &image(HEX)).unwrap();
        assert_eq!(
            p.root,
            RootPlan::Reuse {
                disk: first.root.disk().unwrap().clone(),
                claim: false
            }
        );
        assert_eq!(p.predecessors, [old.domain_name.clone()]);
        assert!(
            !p.claims_network,
            "the pod's network is this name's already"
        );
        assert_eq!(p.uuid, first.uuid);
        // A disk whose file is gone is made again in its place.
        let p = make_with(&s, &[old.clone()], &container("vm"), &image(HEX), false).unwrap();
        assert_eq!(
            p.root,
            RootPlan::Create {
                disk: first.root.disk().unwrap().clone(),
                size: None
            }
        );
        assert_eq!(p.replaced_root, None);
        // A running predecessor is not undefined.
        old.state = ContainerState::Running;
        let p = make(&s, &[old], &container("vm"), &image(HEX)).unwrap();
        assert!(p.predecessors.is_empty());
    }

    #[test]
    fn another_image_gets_a_new_disk_and_the_old_one_goes_after() {
        let mut s = sandbox(&[]);
        let mut old = make(&s, &[], &container("vm"), &image(OTHER))
            .unwrap()
            .root
            .disk()
            .unwrap()
            .clone();
        old.path = "/var/lib/virtlet/vms/s0123456789abcdef/root.qcow2".into();
        s.root_disks.push(old.clone());
        let p = make(&s, &[], &container("vm"), &image(HEX)).unwrap();
        assert!(matches!(p.root, RootPlan::Create { .. }));
        assert_eq!(p.replaced_root, Some(old.clone()));
        // The old disk has the file name the new one would get: the new one gets another.
        old.path = "/var/lib/virtlet/vms/s0123456789abcdef/root-vm.qcow2".into();
        s.root_disks = vec![old.clone()];
        let p = make(&s, &[], &container("vm"), &image(HEX)).unwrap();
        assert_eq!(
            p.root.disk().unwrap().path,
            Path::new("/var/lib/virtlet/vms/s0123456789abcdef/root-vm.e3b0c44298fc.qcow2")
        );
        assert_eq!(p.replaced_root, Some(old));
    }

    #[test]
    fn a_sibling_runs_without_the_pods_network_with_its_own_uuid() {
        let mut s = sandbox(&[]);
        s.network_owner = Some("vm".into());
        let p = make(&s, &[], &container("sidecar"), &image(HEX)).unwrap();
        assert_ne!(p.uuid, "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a");
        assert!(!p.claims_network);
        assert!(p.spec.nics.is_empty());
        assert_eq!(
            p.root.disk().unwrap().path.file_name().unwrap(),
            "root-sidecar.qcow2"
        );
    }

    #[test]
    fn annotations_shape_the_vm_and_an_unclaimed_old_disk_is_claimed() {
        let mut s = sandbox(&[
            ("VirtletVCPUCount", "2"),
            ("VirtletDiskDriver", "virtio"),
            ("VirtletRootVolumeSize", "2Gi"),
            ("VirtletSystemUUID", "53008994-44c0-4017-ad44-9c49758083da"),
        ]);
        let p = make(&s, &[], &container("vm"), &image(HEX)).unwrap();
        assert_eq!(p.spec.vcpus, 2);
        assert_eq!(p.spec.disks[0].target, "vda");
        assert_eq!(p.spec.disks[1].target, "vdb");
        assert_eq!(p.uuid, "53008994-44c0-4017-ad44-9c49758083da");
        let RootPlan::Create { size, .. } = &p.root else {
            panic!()
        };
        assert_eq!(*size, Some(2 << 30));
        // A disk recorded before pods had several VMs has no container name.
        let mut legacy = p.root.disk().unwrap().clone();
        legacy.container_name = String::new();
        s.root_disks = vec![legacy];
        let p = make(&s, &[], &container("vm"), &image(HEX)).unwrap();
        assert!(matches!(p.root, RootPlan::Reuse { claim: true, .. }));
        assert_eq!(p.root.disk().unwrap().container_name, "vm");
    }

    #[test]
    fn bad_cloud_init_input_fails_before_anything_is_made() {
        let s = sandbox(&[]);
        let mut c = container("vm");
        c.command = vec!["x".repeat(virtlet_cloudinit::MAX_USER_DATA + 1)];
        let err = make(&s, &[], &c, &image(HEX)).unwrap_err();
        assert_eq!(err.kind(), virtlet_core::ErrorKind::InvalidArgument);
        assert!(
            virtlet_core::error::chain(&err).contains("user-data"),
            "{err}"
        );
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
