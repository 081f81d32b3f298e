//! Golden files for VmSpec -> domain XML, and the XML checked by libvirt's own parser through
//! its `test:///default` driver (define, start, shutdown, destroy, undefine).
//! `UPDATE_GOLDEN=1 cargo test -p virtlet-vm --test domain_xml` rewrites the golden files.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use virtlet_core::VmAnnotations;
use virtlet_core::vmspec::{
    self, Disk, DiskFormat, DiskSource, DomainType, NodeChoices, PodFacts, VmSpec,
};
use virtlet_vm::domain_xml;
use virtlet_vm::driver::{DomainStatus, Libvirt};

fn spec(
    annotations: &[(&str, &str)],
    tweak: impl FnOnce(&mut PodFacts, &mut NodeChoices),
) -> VmSpec {
    let ann: HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut facts = PodFacts {
        sandbox_id: "5b1c0e4d2f6a4e9b8c7d6e5f4a3b2c1d",
        container_id: "c0ffee00deadbeef1234567890abcdef",
        pod_uid: "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a",
        container_name: "vm",
        uuid: "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a",
        memory_limit_bytes: 0,
        cpu_shares: 0,
        cpu_quota: 0,
        cpu_period: 0,
    };
    let mut node = NodeChoices {
        domain_type: DomainType::Qemu,
        emulator: "/usr/lib/virtlet/vmwrapper".into(),
        cpu_model: None,
        root_disk: "/var/lib/virtlet/vms/5b1c0e4d/root.qcow2".into(),
        root_format: DiskFormat::Qcow2,
        console_socket: Some("/var/lib/virtlet/vms/5b1c0e4d/c0ffee00/console.sock".into()),
        netns: Some("/var/run/netns/0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a".into()),
        nics: vec![],
    };
    tweak(&mut facts, &mut node);
    vmspec::build(&facts, &VmAnnotations::parse(&ann).unwrap(), &node)
}

fn cases() -> Vec<(&'static str, VmSpec)> {
    vec![
        ("default", spec(&[], |_, _| {})),
        (
            "two-nics",
            spec(&[], |_, n| {
                n.nics = vec![
                    vmspec::Nic {
                        tap: "vtap0".into(),
                        mac: "aa:bb:cc:00:00:05".into(),
                        mtu: 1450,
                    },
                    vmspec::Nic {
                        tap: "vtap1".into(),
                        mac: "aa:bb:cc:00:01:05".into(),
                        mtu: 1500,
                    },
                ];
            }),
        ),
        (
            "virtio-kvm-resources",
            spec(
                &[
                    ("VirtletDiskDriver", "virtio"),
                    ("VirtletVCPUCount", "2"),
                    ("VirtletCPUModel", "host-model"),
                    ("VirtletSystemUUID", "53008994-44c0-4017-ad44-9c49758083da"),
                ],
                |f, n| {
                    // The manager resolves VirtletSystemUUID into the VM's UUID.
                    f.uuid = "53008994-44c0-4017-ad44-9c49758083da";
                    f.memory_limit_bytes = 512 << 20;
                    f.cpu_shares = 256;
                    f.cpu_quota = 50_000;
                    f.cpu_period = 100_000;
                    n.domain_type = DomainType::Kvm;
                },
            ),
        ),
        ("volumes", volumes()),
        (
            "custom-cpu-no-netns",
            spec(
                &[(
                    "VirtletLibvirtCPUSetting",
                    "mode: custom\nmatch: exact\nmodel:\n  value: qemu64\n  fallback: allow\nfeatures:\n  - name: svm\n    policy: disable\n",
                )],
                |_, n| {
                    n.netns = None;
                    n.console_socket = None;
                },
            ),
        ),
    ]
}

#[test]
fn golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    for (name, spec) in cases() {
        let xml = domain_xml::render(&spec);
        let path = dir.join(format!("{name}.xml"));
        if update {
            std::fs::write(&path, &xml).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
        assert_eq!(
            xml,
            want,
            "{name}: rendered XML differs from {}",
            path.display()
        );
    }
}

#[test]
fn libvirt_parses_and_runs_every_case() {
    let lv = Libvirt::connect("test:///default").unwrap();
    for (name, mut spec) in cases() {
        // The test driver has no real files or QEMU; it checks the XML and runs a fake VM.
        spec.domain_name = format!("virtlet-test-{name}");
        spec.uuid = uuid_for(name);
        let xml = domain_xml::render(&spec);
        lv.define(&spec.domain_name, &xml)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{xml}"));
        assert!(matches!(
            lv.status(&spec.domain_name).unwrap(),
            Some(DomainStatus::ShutOff(_))
        ));
        lv.start(&spec.domain_name, true).unwrap();
        assert_eq!(
            lv.status(&spec.domain_name).unwrap(),
            Some(DomainStatus::Paused)
        );
        lv.resume(&spec.domain_name).unwrap();
        assert_eq!(
            lv.status(&spec.domain_name).unwrap(),
            Some(DomainStatus::Running)
        );
        // The files a domain holds (a block device is none).
        assert!(
            lv.list_owned()
                .unwrap()
                .iter()
                .any(|d| d.name == spec.domain_name
                    && (d.files.contains(&spec.disks[0].path)
                        || spec.disks[0].source != DiskSource::File))
        );
        lv.shutdown(&spec.domain_name).unwrap();
        match lv.status(&spec.domain_name).unwrap() {
            Some(DomainStatus::ShutOff(exit)) => assert_eq!(exit.code, 0, "{exit:?}"),
            other => panic!("{name}: after shutdown {other:?}"),
        }
        lv.start(&spec.domain_name, false).unwrap();
        lv.destroy(&spec.domain_name).unwrap();
        match lv.status(&spec.domain_name).unwrap() {
            Some(DomainStatus::ShutOff(exit)) => assert_eq!(exit.code, 137, "{exit:?}"),
            other => panic!("{name}: after destroy {other:?}"),
        }
        lv.undefine(&spec.domain_name).unwrap();
        lv.undefine(&spec.domain_name).unwrap();
        assert_eq!(lv.status(&spec.domain_name).unwrap(), None);
        lv.destroy(&spec.domain_name).unwrap();
        lv.shutdown(&spec.domain_name).unwrap();
    }
    let err = lv
        .define("virtlet-bad", "<domain type='qemu'><name>x</name>")
        .unwrap_err();
    assert!(err.to_string().contains("virtlet-bad"), "{err}");
}

/// A persistent root volume (the device after its header sector), a block volume, an
/// ephemeral qcow2 volume and a Ceph RBD volume, each with its serial.
fn volumes() -> VmSpec {
    let mut s = spec(&[], |_, n| {
        n.root_disk = "/dev/loop4".into();
        n.root_format = DiskFormat::Raw;
    });
    s.disks[0].source = DiskSource::Block {
        offset: 512,
        size: (80 << 20) - 512,
    };
    let disk = |path: &str, target: &str, format, source, serial: &str| Disk {
        path: path.into(),
        format,
        read_only: false,
        target: target.into(),
        source,
        serial: Some(serial.into()),
    };
    s.disks.push(disk(
        "/dev/loop3",
        "sdb",
        DiskFormat::Raw,
        DiskSource::Block { offset: 0, size: 0 },
        "virtlet-vol0",
    ));
    s.disks.push(disk(
        "/var/lib/virtlet/vms/5b1c0e4d/vol-c0ffee00dead-scratch.qcow2",
        "sdc",
        DiskFormat::Qcow2,
        DiskSource::File,
        "virtlet-vol1",
    ));
    s.disks.push(disk(
        "",
        "sdd",
        DiskFormat::Raw,
        DiskSource::Rbd {
            monitors: vec!["10.0.0.1:6789".into(), "10.0.0.2".into()],
            pool: "rbd".into(),
            image: "vm-data".into(),
            user: "libvirt".into(),
            secret_uuid: "6f1e1c7a-1f0b-4b59-9d55-6b9b1c0f7a11".into(),
        },
        "virtlet-vol2",
    ));
    s
}

fn uuid_for(name: &str) -> String {
    let n = name.len() as u32;
    format!("00000000-0000-4000-8000-{:012x}", n)
}
