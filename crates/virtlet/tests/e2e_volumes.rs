//! End to end: volumes of a real VM with loop devices as the host's block devices. A block
//! volume (`volumeDevices`) is linked at its devicePath and written by the guest; a `raw`
//! FlexVolume (a loop device the host formatted) and a `qcow2` FlexVolume (formatted by the
//! guest) are mounted where the pod says, both made through the real FlexVolume driver
//! binary called as the kubelet calls it; the ephemeral disk goes with the container. A
//! persistent root filesystem survives re-creating the pod and is rewritten for another
//! image, with Mirantis Virtlet's header. Directories (an emptyDir, a read-only hostPath)
//! go over 9p, in the tiny image with Debian's generic kernel (the cloud kernel has no 9p).
//! Needs what `e2e_vm` needs, and loop devices.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::vm::{
    DomainGuard, create_vm_pod, require_libvirtd, serve_and_pull, tiny_generic_image, tiny_image,
    variant,
};
use common::{Daemon, Options};
use k8s_cri::v1 as api;

/// A loop device over a file of `size` bytes, detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(dir: &Path, name: &str, size: u64) -> Loop {
        let file = dir.join(name);
        std::fs::File::create(&file).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .expect("losetup (util-linux) is needed for the volume tests");
        assert!(
            out.status.success(),
            "losetup failed (loop devices are needed for the volume tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        }
    }

    /// Bytes of the device as a host program reads them (`O_DIRECT`, so that what QEMU
    /// left in the device's page cache is written back first).
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let out = Command::new("dd")
            .arg(format!("if={}", self.dev))
            .args(["bs=512", "iflag=direct", "status=none"])
            .arg(format!("skip={}", offset / 512))
            .arg(format!(
                "count={}",
                (offset % 512 + len as u64).div_ceil(512)
            ))
            .output()
            .unwrap();
        let start = (offset % 512) as usize;
        out.stdout[start..start + len].to_vec()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn driver(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_flexvolume_driver"))
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn sh(d: &Daemon, id: &str, script: &str) -> (i32, String) {
    let r = d
        .runtime()
        .await
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let text =
        String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    (r.exit_code, text)
}

fn pod(uid: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        hostname: uid.into(),
        log_directory: format!("/tmp/virtlet-e2e-volumes/{uid}"),
        ..common::pod_named(uid)
    }
}

async fn remove_pod(d: &Daemon, sandbox: &str) {
    let mut rt = d.runtime().await;
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox.into(),
    })
    .await
    .unwrap();
}

/// A daemon on libvirtd (which must run) with `extra_env`.
async fn vm_daemon(extra_env: Vec<(String, String)>) -> Daemon {
    require_libvirtd();
    Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        extra_env,
        ..Options::default()
    })
    .await
}

/// The ephemeral volume files in a pod's directory.
fn ephemeral_files(pod_dir: &Path) -> usize {
    std::fs::read_dir(pod_dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("vol-"))
            .count()
    })
}

fn secrets() -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "secret-list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Ceph volume: its libvirt secret (private, holding the key) lives as long as the
/// container, and startup GC removes only this virtlet's leftovers. No Ceph cluster runs
/// here, so the VM is defined, not started.
#[tokio::test(flavor = "multi_thread")]
async fn a_ceph_volume_has_a_secret_as_long_as_its_container() {
    let image = tiny_image();
    let d = vm_daemon(vec![]).await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let dir = d
        .dir
        .path()
        .join("kubelet/pods/uid-ceph/volumes/virtlet~flexvolume_driver/rbd");
    let opts = r#"{"type":"ceph","monitor":"192.0.2.1:6789","user":"libvirt","secret":"QVFCdGVzdGtleQ==","pool":"rbd","volume":"vm-data"}"#;
    assert_eq!(
        driver(&["mount", dir.to_str().unwrap(), opts])["status"],
        "Success"
    );
    let config = api::ContainerConfig {
        mounts: vec![api::Mount {
            host_path: dir.display().to_string(),
            container_path: "/mnt/rbd".into(),
            ..Default::default()
        }],
        ..common::vm_container(&name)
    };
    let (sandbox, c) = create_vm_pod(&d, &mut guard, pod("uid-ceph"), config).await;
    let usage = format!("virtlet-{c} vm-data ({}/vms)", d.dir.path().display());
    assert!(secrets().contains(&usage), "{}", secrets());

    // Startup GC: the secret of a container this virtlet does not know goes, another
    // virtlet's (another VM dir) and a live container's stay.
    let define = |uuid: &str, usage: &str| {
        let xml = d.dir.path().join(format!("{uuid}.xml"));
        std::fs::write(
            &xml,
            format!("<secret ephemeral='no' private='yes'><uuid>{uuid}</uuid><usage type='ceph'><name>{usage}</name></usage></secret>"),
        )
        .unwrap();
        let st = Command::new("virsh")
            .args(["-c", "qemu:///system", "secret-define"])
            .arg(&xml)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    let vms = format!("({}/vms)", d.dir.path().display());
    let stray = format!("virtlet-0123456789abcdef gone {vms}");
    let foreign = "virtlet-0123456789abcdef other (/var/lib/another-virtlet/vms)";
    define("6f1e1c7a-1f0b-4b59-9d55-000000000001", &stray);
    define("6f1e1c7a-1f0b-4b59-9d55-000000000002", foreign);
    let mut d = d;
    d.restart().await;
    let after = secrets();
    let _ = Command::new("virsh")
        .args([
            "-c",
            "qemu:///system",
            "secret-undefine",
            "6f1e1c7a-1f0b-4b59-9d55-000000000002",
        ])
        .output();
    assert!(!after.contains(&stray), "{after}");
    assert!(after.contains(foreign) && after.contains(&usage), "{after}");

    remove_pod(&d, &sandbox).await;
    assert!(!secrets().contains(&c), "{}", secrets());
    assert_eq!(
        driver(&["unmount", dir.to_str().unwrap()])["status"],
        "Success"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn block_and_flex_volumes_reach_the_guest() {
    let image = tiny_image();
    let d = vm_daemon(vec![]).await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let work = tempfile::tempdir().unwrap();
    let block = Loop::new(work.path(), "block", 16 << 20);
    let raw = Loop::new(work.path(), "raw", 32 << 20);
    // The host formats the raw volume and leaves a file on it.
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg({
            let seed = work.path().join("seed");
            std::fs::create_dir_all(&seed).unwrap();
            std::fs::write(seed.join("hello.txt"), "from the host\n").unwrap();
            seed
        })
        .arg(&raw.dev)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed for the volume tests");
    assert!(st.success());

    // The kubelet calls the FlexVolume driver for each volume before CreateContainer.
    let volumes = d
        .dir
        .path()
        .join("kubelet/pods/uid-vol/volumes/virtlet~flexvolume_driver");
    let scratch = volumes.join("scratch");
    let rawvol = volumes.join("rawdisk");
    assert_eq!(driver(&["init"])["status"], "Success");
    for (dir, opts) in [
        (&scratch, r#"{"type":"qcow2","capacity":"64Mi"}"#.to_owned()),
        (&rawvol, format!(r#"{{"type":"raw","path":"{}"}}"#, raw.dev)),
    ] {
        let answer = driver(&["mount", dir.to_str().unwrap(), &opts]);
        assert_eq!(answer["status"], "Success", "{answer}");
    }

    let mount = |host: &Path, path: &str| api::Mount {
        host_path: host.display().to_string(),
        container_path: path.into(),
        ..Default::default()
    };
    let config = api::ContainerConfig {
        mounts: vec![mount(&scratch, "/mnt/scratch"), mount(&rawvol, "/mnt/raw")],
        devices: vec![api::Device {
            host_path: block.dev.clone(),
            container_path: "/dev/data".into(),
            permissions: "mrw".into(),
        }],
        ..common::vm_container(&name)
    };
    let (sandbox, c) = create_vm_pod(&d, &mut guard, pod("uid-vol"), config).await;
    let pod_dir = d.dir.path().join("vms").join(&sandbox);
    assert_eq!(
        ephemeral_files(&pod_dir),
        1,
        "one qcow2 volume file in {}",
        pod_dir.display()
    );
    d.start_container(&c).await;

    // The raw volume, mounted read-write, with the host's file.
    let (code, out) = sh(
        &d,
        &c,
        "cat /mnt/raw/hello.txt && grep ' /mnt/raw ' /proc/mounts",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the host"), "{out}");
    // The qcow2 volume: formatted by the guest, mounted, written.
    let (code, out) = sh(
        &d,
        &c,
        "grep ' /mnt/scratch ' /proc/mounts && echo guest-data >/mnt/scratch/f && sync && cat /mnt/scratch/f",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("guest-data"), "{out}");
    // The block volume: a link at its devicePath, written by the guest, read by the host.
    let (code, out) = sh(
        &d,
        &c,
        "ls -l /dev/data && printf block-volume-written | dd of=/dev/data bs=512 conv=sync,notrunc 2>/dev/null && sync",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        String::from_utf8_lossy(&block.read(0, 20)),
        "block-volume-written",
        "the guest said: {out}"
    );

    // A restart of virtlet leaves the running VM its volumes.
    let mut d = d;
    d.restart().await;
    let (code, out) = sh(&d, &c, "cat /mnt/scratch/f /mnt/raw/hello.txt").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("guest-data") && out.contains("from the host"),
        "{out}"
    );
    assert_eq!(ephemeral_files(&pod_dir), 1, "kept across the restart");

    // Removed with the container: the ephemeral disk file; the driver unmounts.
    remove_pod(&d, &sandbox).await;
    assert_eq!(ephemeral_files(&pod_dir), 0, "the qcow2 volume is gone");
    for dir in [&scratch, &rawvol] {
        assert_eq!(
            driver(&["unmount", dir.to_str().unwrap()])["status"],
            "Success"
        );
        assert!(!dir.exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_root_filesystem_outlives_its_pod() {
    let image = tiny_image();
    let d = vm_daemon(vec![]).await;
    let work = tempfile::tempdir().unwrap();
    let other = variant(&image, work.path(), "other", 9);
    let (_server, name) = serve_and_pull(&d, &image).await;
    let (_server2, other_name) = serve_and_pull(&d, &other).await;
    let root = Loop::new(work.path(), "root", 80 << 20);
    let config = |image: &str| api::ContainerConfig {
        devices: vec![api::Device {
            host_path: root.dev.clone(),
            container_path: "/".into(),
            permissions: "mrw".into(),
        }],
        ..common::vm_container(image)
    };
    // Sector 130000 lies inside the image (64 MiB), 150000 beyond it.
    let disk = "d=/dev/$(ls /sys/block | grep -E '^(vd|sd)' | head -n 1)";
    let read = format!(
        "{disk}; dd if=$d bs=512 skip=130000 count=1 2>/dev/null | head -c 8; echo; dd if=$d bs=512 skip=150000 count=1 2>/dev/null | head -c 8"
    );
    let boot = |uid: &'static str, image: String| {
        let d = &d;
        let config = config(&image);
        async move {
            let mut guard = DomainGuard(Vec::new());
            let (sandbox, c) = create_vm_pod(d, &mut guard, pod(uid), config).await;
            d.start_container(&c).await;
            (sandbox, c, guard)
        }
    };

    let (s1, c1, g1) = boot("uid-p1", name.clone()).await;
    let (code, out) = sh(
        &d,
        &c1,
        &format!(
            "{disk}; printf in-image | dd of=$d bs=512 seek=130000 conv=sync,notrunc 2>/dev/null; printf beyondim | dd of=$d bs=512 seek=150000 conv=sync,notrunc 2>/dev/null; sync"
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    // Virtlet's header: the magic and version, big endian, then the image's sha256.
    assert_eq!(
        root.read(0, 10),
        [0x26, 0x3d, 0xbe, 0x52, 0xba, 0x57, 0x67, 0x02, 0, 1]
    );
    let first_hash = root.read(10, 32);
    remove_pod(&d, &s1).await;
    drop(g1);

    // The same image again: the disk is used as it is, what the guest wrote is there.
    let (s2, c2, g2) = boot("uid-p2", name.clone()).await;
    let (code, out) = sh(&d, &c2, &read).await;
    assert_eq!((code, out.as_str()), (0, "in-image\nbeyondim"), "{out}");
    remove_pod(&d, &s2).await;
    drop(g2);

    // Another image: written anew (the guest's write inside the image is gone), the header
    // names the new image.
    let (s3, c3, g3) = boot("uid-p3", other_name).await;
    let (code, out) = sh(&d, &c3, &read).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("in-image"), "{out}");
    assert_ne!(root.read(10, 32), first_hash);
    remove_pod(&d, &s3).await;
    drop(g3);

    // Too small a device for the image: refused, naming it.
    let small = Loop::new(work.path(), "small", 8 << 20);
    let mut cfg = config(&name);
    cfg.devices[0].host_path = small.dev.clone();
    let s = d.run_sandbox(pod("uid-small")).await;
    let err = d.create(&s, cfg).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&small.dev), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_are_shared_over_9p() {
    let image = tiny_generic_image();
    let work = tempfile::tempdir().unwrap();
    let host = work.path().join("srv");
    std::fs::create_dir_all(host.join("config")).unwrap();
    std::fs::write(host.join("config/app.conf"), "from a hostPath\n").unwrap();
    let d = vm_daemon(vec![(
        "VIRTLET_ALLOWED_HOST_PATHS".into(),
        host.display().to_string(),
    )])
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let empty_dir = d
        .dir
        .path()
        .join("kubelet/pods/uid-9p/volumes/kubernetes.io~empty-dir/scratch");
    std::fs::create_dir_all(&empty_dir).unwrap();
    std::fs::write(empty_dir.join("seed.txt"), "from the host\n").unwrap();
    let mut p = pod("uid-9p");
    p.annotations
        .insert("VirtletChown9pfsMounts".into(), "true".into());
    let config = api::ContainerConfig {
        mounts: vec![
            api::Mount {
                host_path: empty_dir.display().to_string(),
                container_path: "/scratch".into(),
                ..Default::default()
            },
            api::Mount {
                host_path: host.join("config").display().to_string(),
                container_path: "/etc/app".into(),
                readonly: true,
                ..Default::default()
            },
        ],
        ..common::vm_container(&name)
    };
    let (_sandbox, c) = create_vm_pod(&d, &mut guard, p, config).await;
    d.start_container(&c).await;
    let (code, out) = sh(
        &d,
        &c,
        "cat /scratch/seed.txt /etc/app/app.conf && echo from-the-guest >/scratch/new.txt && grep -E ' /(scratch|etc/app) 9p ' /proc/mounts",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("from the host") && out.contains("from a hostPath"),
        "{out}"
    );
    assert!(out.contains("/etc/app 9p ro,"), "read-only: {out}");
    assert_eq!(
        std::fs::read_to_string(empty_dir.join("new.txt")).unwrap(),
        "from-the-guest\n"
    );
    // Read-only stays read-only; VirtletChown9pfsMounts gave the writable one to uid 1000.
    let (code, out) = sh(&d, &c, "touch /etc/app/x").await;
    assert_ne!(code, 0, "{out}");
    use std::os::unix::fs::MetadataExt;
    let mut owner = 0;
    for _ in 0..50 {
        owner = std::fs::metadata(empty_dir.join("seed.txt")).unwrap().uid();
        if owner == 1000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(owner, 1000, "chowned in the guest");
}
