//! End to end: real VMs. The daemon runs against libvirtd (`qemu:///system`), probes KVM (on
//! our machines it falls back to TCG), and boots the project's tiny image through CRI. Needs
//! root, a running libvirtd (`scripts/setup-host --libvirt`, which `scripts/test` runs) and the
//! tiny image (built by `images/build tiny` when missing).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Options};
use k8s_cri::v1 as api;

use common::vm::{
    DomainGuard, MARKER, require_libvirtd, require_libvirtd_within, serve_and_pull, tiny_image,
    wait_for_log,
};

async fn status(
    rt: &mut api::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> api::ContainerStatus {
    rt.container_status(api::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// The tests share the node's libvirtd, which one of them restarts: they hold this shared, and
/// the restart holds it alone.
static LIBVIRTD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn our_domains(ids: &[String]) -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| {
            ids.iter()
                .any(|id| n.starts_with(&format!("virtlet-{}", &id[..13])))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_pod_boots_stops_cleanly_restarts_on_its_disk_and_survives_a_daemon_kill() {
    let shared = LIBVIRTD.read().await;
    require_libvirtd();
    let image = tiny_image();
    let mut d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    assert!(
        d.log_text().contains("TCG") || d.log_text().contains("KVM"),
        "the KVM probe decided"
    );

    let logs = d.dir.path().join("logs");
    let mut rt = d.runtime().await;
    let pod = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: "tiny".into(),
                    uid: "6a1f3c2e-1d2b-4c3a-9e8f-7a6b5c4d3e2f".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                log_directory: logs.display().to_string(),
                annotations: HashMap::from([("VirtletVCPUCount".into(), "1".into())]),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;

    let create = |attempt: u32| api::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "vm".into(),
                attempt,
            }),
            image: Some(api::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
            log_path: format!("vm/{attempt}.log"),
            linux: Some(api::LinuxContainerConfig {
                resources: Some(api::LinuxContainerResources {
                    memory_limit_in_bytes: 256 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: None,
    };

    // First boot: the guest's marker reaches the CRI log.
    let c1 = rt
        .create_container(create(0))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    guard.0.push(c1.clone());
    let t0 = Instant::now();
    rt.start_container(api::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .unwrap();
    let log1 = logs.join("vm/0.log");
    let boot = wait_for_log(&log1, MARKER, Duration::from_secs(120)).await;
    eprintln!(
        "e2e: first boot to marker in {:?} (start call {:?})",
        boot,
        t0.elapsed() - boot
    );
    let text = std::fs::read_to_string(&log1).unwrap();
    let line = text.lines().find(|l| l.contains(MARKER)).unwrap();
    assert!(
        line.split(' ').nth(1) == Some("stdout") && line.split(' ').nth(2) == Some("F"),
        "CRI log format: {line}"
    );
    let stats = rt
        .container_stats(api::ContainerStatsRequest {
            container_id: c1.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(
        stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0,
        "CPU time is counted"
    );
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(
        stats.writable_layer.unwrap().used_bytes.unwrap().value > 0,
        "root disk use is counted"
    );

    // A graceful stop: the guest answers the ACPI power button and powers off: exit 0.
    rt.stop_container(api::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 60,
    })
    .await
    .unwrap();
    let st = status(&mut rt, &c1).await;
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{}",
        st.message
    );

    // The kubelet's restart: the same root disk boots again.
    let c2 = rt
        .create_container(create(1))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    guard.0.push(c2.clone());
    rt.start_container(api::StartContainerRequest {
        container_id: c2.clone(),
    })
    .await
    .unwrap();
    let log2 = logs.join("vm/1.log");
    wait_for_log(&log2, MARKER, Duration::from_secs(120)).await;
    assert_eq!(our_domains(&guard.0).len(), 1, "one domain per pod");

    // SIGKILL the daemon: the VM keeps running and is reported RUNNING after a restart, and
    // its console is captured again.
    d.kill();
    d.restart().await;
    let mut rt = d.runtime().await;
    let st = status(&mut rt, &c2).await;
    assert_eq!(
        st.state,
        api::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );

    // libvirtd restarts under the running daemon: the next call reconnects. (Once the other
    // tests are done with it.)
    drop(shared);
    let _alone = LIBVIRTD.write().await;
    let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
    for _ in 0..50 {
        if !Command::new("pgrep")
            .args(["-x", "libvirtd"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        Command::new("libvirtd")
            .arg("-d")
            .status()
            .unwrap()
            .success(),
        "cannot restart libvirtd"
    );
    require_libvirtd_within(Duration::from_secs(20)).await;
    let stats = rt
        .container_stats(api::ContainerStatsRequest {
            container_id: c2.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(
        stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0,
        "stats after libvirtd restarted"
    );
    assert!(
        d.log_text().contains("reconnected to libvirt"),
        "the driver reconnected"
    );

    // A forced stop is a non-zero exit.
    rt.stop_container(api::StopContainerRequest {
        container_id: c2.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let st = status(&mut rt, &c2).await;
    assert_eq!(st.exit_code, 137, "{}", st.message);

    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert!(
        our_domains(&guard.0).is_empty(),
        "domains removed with the pod"
    );
    assert!(
        std::fs::read_dir(d.dir.path().join("vms"))
            .unwrap()
            .next()
            .is_none(),
        "VM files removed"
    );
    assert!(
        std::fs::read_dir(d.dir.path().join("netns"))
            .unwrap()
            .next()
            .is_none(),
        "netns removed"
    );
}

/// cloud-init with the tiny image: NoCloud and ConfigDrive seeds made from the pod's
/// annotations, its mounted Secret/ConfigMap files, its env and its command.
#[tokio::test(flavor = "multi_thread")]
async fn cloud_init_reaches_the_guest_with_nocloud_and_configdrive() {
    let _shared = LIBVIRTD.read().await;
    require_libvirtd();
    let image = tiny_image();
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let mut rt = d.runtime().await;

    for (pod_name, kind) in [("ci-nocloud", "nocloud"), ("ci-configdrive", "configdrive")] {
        let uid = format!("uid-{pod_name}");
        // The kubelet's layout of a Secret and a ConfigMap volume.
        let vols = d.dir.path().join("kubelet").join(&uid).join("volumes");
        let secret = vols.join("kubernetes.io~secret/creds");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("password"), "hunter2").unwrap();
        let cm = vols.join("kubernetes.io~configmap/app");
        std::fs::create_dir_all(&cm).unwrap();
        std::fs::write(cm.join("app.conf"), "mode=fast\n").unwrap();

        let annotations = HashMap::from([
            ("VirtletCloudInitImageType".to_owned(), kind.to_owned()),
            ("VirtletSSHKeys".to_owned(), "ssh-ed25519 AAAATESTKEY e2e@virtlet".to_owned()),
            (
                "VirtletCloudInitUserData".to_owned(),
                "runcmd:\n  - echo CI-PASSWORD=$(cat /etc/creds/password)\n  - echo CI-CONF=$(cat /etc/app/app.conf)\n  - echo CI-ENV-$(cat /etc/cloud/environment)\n  - echo CI-KEYS=$(grep -c AAAATESTKEY /root/.ssh/authorized_keys)\n".to_owned(),
            ),
        ]);
        let logs = d.dir.path().join("logs").join(pod_name);
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: pod_name.into(),
                uid: uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: logs.display().to_string(),
            annotations,
            ..Default::default()
        };
        let pod = rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let c = rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(api::ContainerConfig {
                    log_path: "vm.log".into(),
                    command: vec!["/bin/echo".into()],
                    args: vec!["CI-ARGS-RAN".into()],
                    envs: vec![api::KeyValue {
                        key: "GREETING".into(),
                        value: "hello-env".into(),
                    }],
                    mounts: vec![
                        api::Mount {
                            host_path: secret.display().to_string(),
                            container_path: "/etc/creds".into(),
                            ..Default::default()
                        },
                        api::Mount {
                            host_path: cm.display().to_string(),
                            container_path: "/etc/app".into(),
                            ..Default::default()
                        },
                    ],
                    linux: Some(api::LinuxContainerConfig {
                        resources: Some(api::LinuxContainerResources {
                            memory_limit_in_bytes: 256 << 20,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..common::vm_container(&name)
                }),
                sandbox_config: Some(config),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        guard.0.push(c.clone());
        rt.start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
        let log = logs.join("vm.log");
        let boot = wait_for_log(&log, MARKER, Duration::from_secs(120)).await;
        eprintln!("e2e: {kind} boot to marker in {boot:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        for want in [
            format!("{MARKER} hostname={pod_name}"),
            "CI-PASSWORD=hunter2".into(),
            "CI-CONF=mode=fast".into(),
            "CI-ENV-GREETING=hello-env".into(),
            "CI-KEYS=1".into(),
            "CI-ARGS-RAN".into(),
        ] {
            assert!(
                text.contains(&want),
                "{kind}: the console lacks {want:?}:\n{text}"
            );
        }
        rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
        assert!(our_domains(&guard.0).is_empty());
    }
}

/// A guest that ignores the ACPI power button: StopContainer still returns within its timeout
/// (the VM is forced off in time) and the container is EXITED, killed.
#[tokio::test(flavor = "multi_thread")]
async fn stop_returns_within_its_timeout_when_the_guest_ignores_the_power_button() {
    let _shared = LIBVIRTD.read().await;
    require_libvirtd();
    let image = tiny_image();
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let logs = d.dir.path().join("logs/deaf");
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "deaf".into(),
            uid: "uid-deaf".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        annotations: HashMap::from([(
            "VirtletCloudInitUserData".to_owned(),
            "runcmd:\n  - [sh, -c, 'killall acpid; echo ACPI-IGNORED']\n".to_owned(),
        )]),
        ..Default::default()
    };
    let (pod, c) = common::vm::run_vm_pod(&d, &mut guard, config, &name).await;
    wait_for_log(
        &logs.join("vm.log"),
        "ACPI-IGNORED",
        Duration::from_secs(120),
    )
    .await;
    let mut rt = d.runtime().await;
    let started = Instant::now();
    rt.stop_container(api::StopContainerRequest {
        container_id: c.clone(),
        timeout: 6,
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "StopContainer(6) took {took:?}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "the guest had its chance: {took:?}"
    );
    let st = status(&mut rt, &c).await;
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "Killed"),
        "{}",
        st.message
    );
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}
