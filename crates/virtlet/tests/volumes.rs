//! Volumes at CreateContainer with libvirt's `test:///default` driver: what virtlet cannot
//! give the VM is refused with InvalidArgument naming it (block volumes that are no device,
//! FlexVolumes of unknown types or devices outside `--raw-devices`, host directories outside
//! the allowed paths, mount propagation, too many disks, a root volume that cannot be read), leaving nothing
//! behind; a directory volume is shared over 9p; an ephemeral
//! qcow2 FlexVolume is made with the container and goes with it, and one of a container
//! virtlet does not know goes at startup. Guests using volumes are in `e2e_volumes`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{Daemon, assert_status};
use k8s_cri::v1 as api;
use tonic::Code;
use virtlet_testkit::{Route, TestServer, qcow2_image};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A FlexVolume directory as virtlet's driver leaves it after `mount`.
fn flex(d: &Daemon, name: &str, options: &str) -> api::Mount {
    let dir = d
        .dir
        .path()
        .join("kubelet/pods/uid-v/volumes/virtlet~flexvolume_driver")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("virtlet-flexvolume.json"), options).unwrap();
    api::Mount {
        host_path: dir.display().to_string(),
        container_path: format!("/mnt/{name}"),
        ..Default::default()
    }
}

fn device(host: &str, container: &str) -> api::Device {
    api::Device {
        host_path: host.into(),
        container_path: container.into(),
        permissions: "mrw".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_are_given_to_the_vm_or_refused_by_name() {
    let mut d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    server.route(
        "/vm.qcow2",
        Route::Content(Bytes::from(qcow2_image("64M").unwrap())),
    );
    let image = format!("virtlet.cloud/{}", server.location("/vm.qcow2"));
    d.pull(&image).await.unwrap();
    let mut rt = d.runtime().await;
    let sandbox = d.run_sandbox(common::pod_named("uid-v")).await;
    let config = |mounts: Vec<api::Mount>, devices: Vec<api::Device>| api::ContainerConfig {
        mounts,
        devices,
        ..common::vm_container(&image)
    };
    let empty_dir = d
        .dir
        .path()
        .join("kubelet/pods/uid-v/volumes/kubernetes.io~empty-dir/scratch");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let host_dir = d.dir.path().join("srv-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    let many: Vec<_> = (0..30)
        .map(|i| device(&format!("/dev/loop{i}"), &format!("/dev/d{i}")))
        .collect();
    let cases = vec![
        (
            config(vec![], vec![device("/tmp/disk.img", "/dev/data")]),
            vec![
                "config.devices[0]",
                "/tmp/disk.img",
                "block device under /dev",
            ],
        ),
        (
            config(vec![], vec![device("/dev/loop0", "/data")]),
            vec!["config.devices[0]", "\"/data\"", "under /dev"],
        ),
        (
            config(vec![], vec![device("/dev/no-such-disk", "/")]),
            vec![
                "/dev/no-such-disk",
                "root filesystem",
                "cannot read its size",
            ],
        ),
        (
            config(vec![flex(&d, "a", r#"{"type":"nfs"}"#)], vec![]),
            vec!["FlexVolume \"a\"", "\"nfs\"", "qcow2, raw, ceph"],
        ),
        (
            config(
                vec![flex(&d, "b", r#"{"type":"raw","path":"/dev/sda"}"#)],
                vec![],
            ),
            vec!["FlexVolume \"b\"", "/dev/sda", "--raw-devices"],
        ),
        (
            config(
                vec![flex(&d, "c", r#"{"type":"qcow2","capacity":"huge"}"#)],
                vec![],
            ),
            vec!["FlexVolume \"c\"", "capacity \"huge\""],
        ),
        (
            config(
                vec![api::Mount {
                    host_path: host_dir.display().to_string(),
                    container_path: "/data".into(),
                    ..Default::default()
                }],
                vec![],
            ),
            vec![
                "\"/data\"",
                "outside the kubelet root dir",
                "--allowed-host-paths",
            ],
        ),
        (
            config(
                vec![api::Mount {
                    host_path: empty_dir.display().to_string(),
                    container_path: "/shared".into(),
                    propagation: api::MountPropagation::PropagationBidirectional as i32,
                    ..Default::default()
                }],
                vec![],
            ),
            vec![
                "\"/shared\"",
                "mount propagation",
                "PROPAGATION_BIDIRECTIONAL",
            ],
        ),
        (
            config(vec![], many),
            vec!["too many disks", "30 volume disks", "at most 26"],
        ),
    ];
    for (cfg, needles) in cases {
        let r = d.create(&sandbox, cfg).await;
        assert_status(r, Code::InvalidArgument, &needles);
    }
    let vms = d.dir.path().join("vms");
    assert!(files_under(&vms).is_empty(), "{:?}", files_under(&vms));

    // A directory volume goes over 9p (libvirt parses the filesystem device).
    let nine_p = api::Mount {
        host_path: empty_dir.display().to_string(),
        container_path: "/scratch".into(),
        ..Default::default()
    };
    let id = d
        .create(&sandbox, config(vec![nine_p], vec![]))
        .await
        .unwrap();
    rt.remove_container(api::RemoveContainerRequest { container_id: id })
        .await
        .unwrap();

    // An ephemeral disk: made with the container, gone with it.
    let scratch = flex(&d, "scratch", r#"{"type":"qcow2","capacity":"64Mi"}"#);
    let id = d
        .create(&sandbox, config(vec![scratch], vec![]))
        .await
        .unwrap();
    let volume_files = || {
        files_under(&vms)
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("vol-"))
            .collect::<Vec<_>>()
    };
    assert_eq!(volume_files().len(), 1, "{:?}", files_under(&vms));
    rt.remove_container(api::RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    assert!(volume_files().is_empty(), "{:?}", volume_files());

    // A volume disk of a container virtlet does not know (removed while it was down) goes
    // at startup; one of a known container stays.
    let kept = d
        .create(
            &sandbox,
            config(
                vec![flex(&d, "kept", r#"{"type":"qcow2","capacity":"1Mi"}"#)],
                vec![],
            ),
        )
        .await
        .unwrap();
    let stray = vms.join(&sandbox).join("vol-0123456789ab-gone.qcow2");
    std::fs::write(&stray, "").unwrap();
    drop(rt);
    d.kill();
    d.restart().await;
    assert!(
        !stray.exists(),
        "the stray volume disk is removed at startup"
    );
    let left = volume_files();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].to_string_lossy().contains(&kept[..12]), "{left:?}");
}
