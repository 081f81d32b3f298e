//! The CRI runtime service over the real socket, with libvirt's `test:///default` driver in
//! the daemon (real domain XML parsing and state, no QEMU). VMs that really boot are in e2e.

#![allow(clippy::unwrap_used, clippy::cloned_ref_to_slice_refs)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Daemon, assert_status};
use k8s_cri::v1 as api;
use tonic::Code;
use virtlet_testkit::{Route, TestServer, qcow2_image};

fn pod_config(name: &str, uid: &str, annotations: &[(&str, &str)]) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        labels: HashMap::from([("app".into(), name.into()), ("tier".into(), "vm".into())]),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        log_directory: String::new(),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        labels: HashMap::from([("c".into(), name.into())]),
        ..Default::default()
    }
}

struct Env {
    d: Daemon,
    _server: TestServer,
    image: String,
}

async fn env() -> Env {
    let d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    server.route(
        "/vm.qcow2",
        Route::Content(Bytes::from(qcow2_image("256M").unwrap())),
    );
    let image = format!("virtlet.cloud/{}", server.location("/vm.qcow2"));
    d.pull(&image).await.unwrap();
    Env {
        d,
        _server: server,
        image,
    }
}

async fn run_pod(
    d: &Daemon,
    name: &str,
    uid: &str,
    ann: &[(&str, &str)],
) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod_config(name, uid, ann)),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn create(
    d: &Daemon,
    sandbox: &str,
    name: &str,
    image: &str,
) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(container_config(name, image)),
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn container_status(d: &Daemon, id: &str) -> Result<api::ContainerStatus, tonic::Status> {
    d.runtime()
        .await
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_lifecycle_filters_and_idempotence() {
    let e = env().await;
    let d = &e.d;
    let mut rt = d.runtime().await;
    let id = run_pod(d, "web", "uid-1", &[("VirtletVCPUCount", "2")])
        .await
        .unwrap();
    let other = run_pod(d, "db", "uid-2", &[]).await.unwrap();
    // The same pod and attempt again: the same sandbox.
    assert_eq!(
        run_pod(d, "web", "uid-1", &[("VirtletVCPUCount", "2")])
            .await
            .unwrap(),
        id
    );
    assert!(
        d.dir.path().join("netns/uid-1").exists(),
        "the pod has its netns"
    );

    let st = rt
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let status = st.status.unwrap();
    let want = pod_config("web", "uid-1", &[("VirtletVCPUCount", "2")]);
    assert_eq!(status.metadata, want.metadata);
    assert_eq!(status.labels, want.labels);
    assert_eq!(status.annotations, want.annotations);
    assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
    assert!(status.created_at > 0);
    assert!(st.info["info"].contains("uid-1"));

    let lister = rt.clone();
    let list = |f: api::PodSandboxFilter| {
        let mut rt = lister.clone();
        async move {
            rt.list_pod_sandbox(api::ListPodSandboxRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(api::PodSandboxFilter::default()).await.len(), 2);
    assert_eq!(
        list(api::PodSandboxFilter {
            id: id.clone(),
            ..Default::default()
        })
        .await,
        [id.clone()]
    );
    assert_eq!(
        list(api::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "db".into())]),
            ..Default::default()
        })
        .await,
        [other.clone()]
    );

    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let not_ready = api::PodSandboxFilter {
        state: Some(api::PodSandboxStateValue {
            state: api::PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    assert_eq!(list(not_ready).await, [id.clone()]);
    assert_status(
        create(d, &id, "vm", &e.image).await,
        Code::FailedPrecondition,
        &[&id, "not ready"],
    );
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!d.dir.path().join("netns/uid-1").exists(), "netns removed");
    assert_status(
        rt.pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await,
        Code::NotFound,
        &[&id],
    );
    // Unknown pods: stop and remove succeed.
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn container_lifecycle_sibling_vms_and_restart_on_the_same_disk() {
    let e = env().await;
    let d = &e.d;
    let mut rt = d.runtime().await;
    let pod = run_pod(d, "vm", "uid-vm", &[("VirtletRootVolumeSize", "1Gi")])
        .await
        .unwrap();
    let c1 = create(d, &pod, "vm", &e.image).await.unwrap();
    let st = container_status(d, &c1).await.unwrap();
    assert_eq!(st.state, api::ContainerState::ContainerCreated as i32);
    assert!(st.image_ref.contains("@sha256:"), "{}", st.image_ref);
    // A second container is a second VM with its own root disk; the pod's network (and
    // UUID) stays with the first.
    let sibling = create(d, &pod, "vm2", &e.image).await.unwrap();
    let info = rt
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(v["networkOwner"], "vm");
    let disks: Vec<&str> = v["rootDisks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["container"].as_str().unwrap())
        .collect();
    assert_eq!(disks, ["vm", "vm2"]);
    rt.remove_container(api::RemoveContainerRequest {
        container_id: sibling.clone(),
    })
    .await
    .unwrap();

    rt.start_container(api::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .unwrap();
    let st = container_status(d, &c1).await.unwrap();
    assert_eq!(st.state, api::ContainerState::ContainerRunning as i32);
    assert!(st.started_at >= st.created_at);
    assert_status(
        rt.start_container(api::StartContainerRequest {
            container_id: c1.clone(),
        })
        .await,
        Code::FailedPrecondition,
        &["Running"],
    );
    let listed = rt
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                label_selector: HashMap::from([("c".into(), "vm".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    let stats = rt
        .container_stats(api::ContainerStatsRequest {
            container_id: c1.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let pod_stats = rt
        .list_pod_sandbox_stats(api::ListPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pod_stats.len(), 1);
    assert_eq!(pod_stats[0].linux.as_ref().unwrap().containers.len(), 1);

    let root_info = |rt: &mut api::runtime_service_client::RuntimeServiceClient<_>| {
        let mut rt = rt.clone();
        let pod = pod.clone();
        async move {
            let info = rt
                .pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: pod,
                    verbose: true,
                })
                .await
                .unwrap()
                .into_inner()
                .info;
            let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
            std::path::PathBuf::from(v["rootDisks"][0]["path"].as_str().unwrap())
        }
    };
    let root = root_info(&mut rt).await;
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&root).unwrap().ino();

    // The test driver's guest "powers off" on the ACPI button: a clean exit.
    rt.stop_container(api::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    let st = container_status(d, &c1).await.unwrap();
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 0, "{} {}", st.reason, st.message);
    assert_eq!(st.reason, "Completed");
    assert!(st.finished_at >= st.started_at);
    rt.stop_container(api::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 10,
    })
    .await
    .unwrap();

    // The kubelet's restart: a new container in the same pod boots the same root disk.
    let c2 = create(d, &pod, "vm", &e.image).await.unwrap();
    rt.start_container(api::StartContainerRequest {
        container_id: c2.clone(),
    })
    .await
    .unwrap();
    assert_eq!(root_info(&mut rt).await, root);
    assert_eq!(
        std::fs::metadata(&root).unwrap().ino(),
        inode,
        "the root disk was kept"
    );
    // The old container still reports how it ended until it is removed.
    assert_eq!(container_status(d, &c1).await.unwrap().exit_code, 0);
    rt.remove_container(api::RemoveContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .unwrap();
    rt.remove_container(api::RemoveContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .unwrap();
    assert_status(container_status(d, &c1).await, Code::NotFound, &[&c1]);

    // Image data stays while the pod's disk uses it, and goes with the pod.
    d.remove(&e.image).await.unwrap();
    let blobs = d.image_dir.join("blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        1,
        "in use by the pod's root disk"
    );
    // Timeout 0: forced off at once, a non-zero exit.
    rt.stop_container(api::StopContainerRequest {
        container_id: c2.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let st = container_status(d, &c2).await.unwrap();
    assert_eq!(st.exit_code, 137, "{}", st.message);
    assert_eq!(st.reason, "Killed");
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert!(!root.exists(), "the root disk goes with the pod");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "unused image data deleted"
    );
    assert_status(container_status(d, &c2).await, Code::NotFound, &[&c2]);
    assert!(files_under(&d.dir.path().join("vms")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_codes_and_leaves_nothing() {
    let e = env().await;
    let d = &e.d;
    let mut rt = d.runtime().await;
    for (k, v) in [
        ("VirtletVCPUCount", "many"),
        ("VirtletDiskDriver", "ide"),
        ("VirtletSystemUUID", "x"),
        ("VirtletRootVolumeSize", "big"),
    ] {
        assert_status(
            run_pod(d, "bad", "uid-bad", &[(k, v)]).await,
            Code::InvalidArgument,
            &[k, &format!("{v:?}")],
        );
    }
    assert!(
        files_under(&d.dir.path().join("netns")).is_empty(),
        "failed RunPodSandbox leaves no netns"
    );
    assert_status(
        rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["config"],
    );
    let mut no_uid = pod_config("x", "", &[]);
    no_uid.metadata.as_mut().unwrap().uid.clear();
    assert_status(
        rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(no_uid),
            runtime_handler: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["config.metadata.uid"],
    );
    let mut host = pod_config("h", "uid-h", &[]);
    host.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_status(
        rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(host),
            runtime_handler: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["hostNetwork"],
    );

    // CRI: stopping a container that does not exist succeeds (critest's idempotence specs).
    rt.stop_container(api::StopContainerRequest {
        container_id: "missing".into(),
        timeout: 1,
    })
    .await
    .unwrap();
    for (what, result) in [
        ("status", container_status(d, "missing").await.map(|_| ())),
        (
            "start",
            rt.start_container(api::StartContainerRequest {
                container_id: "missing".into(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "stats",
            rt.container_stats(api::ContainerStatsRequest {
                container_id: "missing".into(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "reopen",
            rt.reopen_container_log(api::ReopenContainerLogRequest {
                container_id: "missing".into(),
            })
            .await
            .map(|_| ()),
        ),
    ] {
        let err = result.expect_err(what);
        assert_eq!(err.code(), Code::NotFound, "{what}: {}", err.message());
        assert!(
            err.message().contains("\"missing\""),
            "{what}: {}",
            err.message()
        );
    }
    assert_status(
        create(d, "no-such-pod", "vm", &e.image).await,
        Code::NotFound,
        &["no-such-pod"],
    );

    let pod = run_pod(d, "p", "uid-p", &[]).await.unwrap();
    assert_status(
        create(d, &pod, "vm", "virtlet.cloud/never-pulled").await,
        Code::NotFound,
        &["virtlet.cloud/never-pulled", "pull it first"],
    );
    assert_status(
        create(d, &pod, "vm", "").await,
        Code::InvalidArgument,
        &["config.image.image"],
    );

    // libvirt refuses the domain (an invalid CPU mode): nothing is left behind.
    let bad_cpu = run_pod(
        d,
        "cpu",
        "uid-cpu",
        &[("VirtletLibvirtCPUSetting", "mode: warp-drive")],
    )
    .await
    .unwrap();
    let before_vms = files_under(&d.dir.path().join("vms"));
    let err = create(d, &bad_cpu, "vm", &e.image).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Internal | Code::InvalidArgument),
        "{err:?}"
    );
    assert!(err.message().contains("define"), "{}", err.message());
    assert_eq!(
        files_under(&d.dir.path().join("vms")),
        before_vms,
        "no root disk left behind"
    );
    let all = rt
        .list_containers(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(all.is_empty(), "no container record left behind: {all:?}");
    assert_eq!(
        std::fs::read_dir(d.image_dir.join("blobs/sha256"))
            .unwrap()
            .count(),
        1
    );
    d.remove(&e.image).await.unwrap();
    assert_eq!(
        std::fs::read_dir(d.image_dir.join("blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "the failed create released the image"
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_parallel_pod_lifecycles_leak_nothing() {
    let e = env().await;
    let d = &e.d;
    async fn lifecycle(d: &Daemon, image: &str, i: usize) {
        let mut rt = d.runtime().await;
        let pod = run_pod(d, &format!("p{i}"), &format!("uid-par-{i}"), &[])
            .await
            .unwrap();
        let c = create(d, &pod, "vm", image).await.unwrap();
        rt.start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
        container_status(d, &c).await.unwrap();
        rt.stop_container(api::StopContainerRequest {
            container_id: c.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
        rt.remove_container(api::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
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
    }
    lifecycle(d, &e.image, 100).await; // warm up: lazily opened files and connections
    let pid = d.child.as_ref().unwrap().id();
    let fds_before = open_fds(pid);
    let start = std::time::Instant::now();
    futures_join_all((0..20).map(|i| lifecycle(d, &e.image, i))).await;
    eprintln!("20 parallel lifecycles took {:?}", start.elapsed());
    let mut rt = d.runtime().await;
    assert!(
        rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
    assert!(
        rt.list_containers(api::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );
    assert!(
        files_under(&d.dir.path().join("netns")).is_empty(),
        "netns leaked"
    );
    assert!(
        files_under(&d.dir.path().join("vms")).is_empty(),
        "VM files leaked"
    );
    assert!(
        files_under(&d.dir.path().join("run/consoles")).is_empty(),
        "console sockets leaked"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_after = open_fds(pid);
    assert!(
        fds_after <= fds_before + 2,
        "fds leaked: {fds_before} before, {fds_after} after"
    );
}

async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut pending = futs;
    // Poll all together.
    std::future::poll_fn(move |cx| {
        pending.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_restart_keeps_pods_and_recovers_half_done_work() {
    let e = env().await;
    let mut d = e.d;
    let mut rt = d.runtime().await;
    let pod = run_pod(&d, "vm", "uid-r", &[]).await.unwrap();
    let c = create(&d, &pod, "vm", &e.image).await.unwrap();
    rt.start_container(api::StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    d.kill();

    // Leftovers of a crash: a pod directory and a netns virtlet does not know about, and a
    // container record caught half-way through CreateContainer.
    let stray_dir = d.dir.path().join("vms").join("f".repeat(64));
    std::fs::create_dir_all(&stray_dir).unwrap();
    std::fs::write(stray_dir.join("root.qcow2"), b"x").unwrap();
    {
        use redb::ReadableTable as _;
        let db = redb::Database::create(&d.db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("containers");
            let mut t = txn.open_table(def).unwrap();
            let raw = t.get(c.as_str()).unwrap().unwrap().value().to_vec();
            let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            v["id"] = "e".repeat(64).into();
            v["state"] = "Creating".into();
            v["domain_name"] = "virtlet-eeeeeeeeeeeee-vm".into();
            t.insert(
                "e".repeat(64).as_str(),
                serde_json::to_vec(&v).unwrap().as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }

    d.restart().await;
    let mut rt2 = d.runtime().await;
    // The test driver lives in the daemon's process: its VM died with it, and that is what
    // recovery reports. (With QEMU the VM keeps running: see the e2e tests.)
    let st = container_status(&d, &c).await.unwrap();
    assert_eq!(
        st.state,
        api::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_ne!(st.exit_code, 0);
    let sandboxes = rt2
        .list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(
        sandboxes[0].state,
        api::PodSandboxState::SandboxReady as i32
    );
    assert!(!stray_dir.exists(), "unknown pod files removed");
    assert_status(
        container_status(&d, &"e".repeat(64)).await,
        Code::NotFound,
        &[],
    );
    let containers = rt2
        .list_containers(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 1, "the half-created container is gone");
    drop(rt);
    rt2.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cloud_init_input_is_refused_and_leaves_nothing() {
    let e = env().await;
    let d = &e.d;
    let mut rt = d.runtime().await;
    // Checked at RunPodSandbox: the annotations themselves.
    for (k, v, needles) in [
        (
            "VirtletCloudInitUserData",
            "runcmd: [\n  - oops",
            vec!["VirtletCloudInitUserData", "not valid YAML at line"],
        ),
        (
            "VirtletCloudInitMetaData",
            "- not-a-map",
            vec!["VirtletCloudInitMetaData", "YAML map"],
        ),
        (
            "VirtletCloudInitUserDataSource",
            "volume/x",
            vec!["unknown source kind", "\"volume/x\""],
        ),
        (
            "VirtletCloudInitUserDataSourceEncoding",
            "rot13",
            vec!["plain or base64"],
        ),
        (
            "VirtletCloudInitImageType",
            "floppy",
            vec!["nocloud or configdrive"],
        ),
    ] {
        let needles: Vec<&str> = needles;
        assert_status(
            run_pod(d, "ci", "uid-ci", &[(k, v)]).await,
            Code::InvalidArgument,
            &needles,
        );
    }
    assert!(files_under(&d.dir.path().join("netns")).is_empty());

    // Checked at CreateContainer, before anything is made.
    let with_source = run_pod(
        d,
        "src",
        "uid-src",
        &[("VirtletCloudInitUserDataSource", "configmap/ud")],
    )
    .await
    .unwrap();
    assert_status(
        create(d, &with_source, "vm", &e.image).await,
        Code::FailedPrecondition,
        &[
            "configmap",
            "ud",
            "VirtletCloudInitUserDataSource",
            "no Kubernetes API access",
        ],
    );
    let pod = run_pod(d, "m", "uid-m", &[]).await.unwrap();
    let outside = d.dir.path().join("not-kubelet");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("shadow"), "x").unwrap();
    let big = d
        .dir
        .path()
        .join("kubelet/uid-m/volumes/kubernetes.io~secret/big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..2 {
        std::fs::write(big.join(format!("blob{i}")), vec![b'x'; 7 << 20]).unwrap();
    }
    for (mount_path, needles) in [
        (
            outside.join("shadow"),
            vec!["outside the kubelet root dir", "/etc/shadow"],
        ),
        (
            d.dir.path().join("kubelet/uid-m/../../not-kubelet/shadow"),
            vec!["outside the kubelet root dir"],
        ),
        (big.clone(), vec!["user-data would be", "16777216"]),
    ] {
        let mut cfg = container_config("vm", &e.image);
        cfg.mounts = vec![api::Mount {
            host_path: mount_path.display().to_string(),
            container_path: "/etc/shadow".into(),
            ..Default::default()
        }];
        let result = rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: None,
            })
            .await;
        assert_status(result, Code::InvalidArgument, &needles);
    }
    let all = rt
        .list_containers(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(all.is_empty(), "nothing created: {all:?}");
    assert!(
        files_under(&d.dir.path().join("vms")).is_empty(),
        "no disk or seed left"
    );
}

/// Unfiltered lists are answered from cached bytes while nothing changes: every change must
/// show in the next answer, and the answer must match what filtered (uncached) lists and the
/// status calls say.
#[tokio::test(flavor = "multi_thread")]
async fn unfiltered_lists_follow_every_change() {
    let e = env().await;
    let d = &e.d;
    let mut rt = d.runtime().await;
    async fn lists(
        rt: &mut api::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    ) -> (Vec<(String, i32)>, Vec<(String, i32)>) {
        fn ids<T>(items: Vec<T>, f: impl Fn(T) -> (String, i32)) -> Vec<(String, i32)> {
            let mut v: Vec<_> = items.into_iter().map(f).collect();
            v.sort();
            v
        }
        let pod_filter = api::PodSandboxFilter {
            label_selector: HashMap::from([("tier".into(), "vm".into())]),
            ..Default::default()
        };
        let container_filter = api::ContainerFilter {
            label_selector: HashMap::from([("c".into(), "vm".into())]),
            ..Default::default()
        };
        let mut out = (Vec::new(), Vec::new());
        // Twice each: the second answer comes from the cache.
        for _ in 0..2 {
            let list = |filter| api::ListPodSandboxRequest { filter };
            let pods = ids(
                rt.list_pod_sandbox(list(None))
                    .await
                    .unwrap()
                    .into_inner()
                    .items,
                |p| (p.id, p.state),
            );
            let filtered = ids(
                rt.list_pod_sandbox(list(Some(pod_filter.clone())))
                    .await
                    .unwrap()
                    .into_inner()
                    .items,
                |p| (p.id, p.state),
            );
            assert_eq!(pods, filtered, "cached and filtered ListPodSandbox differ");
            let list = |filter| api::ListContainersRequest { filter };
            let containers = ids(
                rt.list_containers(list(None))
                    .await
                    .unwrap()
                    .into_inner()
                    .containers,
                |c| (c.id, c.state),
            );
            let filtered = ids(
                rt.list_containers(list(Some(container_filter.clone())))
                    .await
                    .unwrap()
                    .into_inner()
                    .containers,
                |c| (c.id, c.state),
            );
            assert_eq!(
                containers, filtered,
                "cached and filtered ListContainers differ"
            );
            out = (pods, containers);
        }
        out
    }
    use api::ContainerState as C;
    use api::PodSandboxState as P;

    assert_eq!(lists(&mut rt).await, (vec![], vec![]));
    let pod = run_pod(d, "cache", "uid-cache", &[]).await.unwrap();
    let ready = P::SandboxReady as i32;
    assert_eq!(lists(&mut rt).await, (vec![(pod.clone(), ready)], vec![]));
    let c = create(d, &pod, "vm", &e.image).await.unwrap();
    assert_eq!(
        lists(&mut rt).await,
        (
            vec![(pod.clone(), ready)],
            vec![(c.clone(), C::ContainerCreated as i32)]
        )
    );
    rt.start_container(api::StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        lists(&mut rt).await.1,
        vec![(c.clone(), C::ContainerRunning as i32)]
    );
    rt.stop_container(api::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let exited = C::ContainerExited as i32;
    assert_eq!(lists(&mut rt).await.1, vec![(c.clone(), exited)]);
    assert_eq!(container_status(d, &c).await.unwrap().state, exited);
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        lists(&mut rt).await.0,
        vec![(pod.clone(), P::SandboxNotready as i32)]
    );
    rt.remove_container(api::RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    assert_eq!(lists(&mut rt).await.1, vec![]);
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(lists(&mut rt).await, (vec![], vec![]));
}

/// The kubelet makes a new sandbox for a pod (attempt + 1) before it removes the old one, whose
/// exited VM holds the pod's UUID: the new VM is still defined (the old domain gives way);
/// a VM of the old sandbox that still runs makes the call fail, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_sandbox_of_the_same_pod_gets_the_pods_uuid() {
    let e = env().await;
    let d = &e.d;
    let mut rt = d.runtime().await;
    let first = run_pod(d, "again", "uid-again", &[]).await.unwrap();
    let c1 = create(d, &first, "vm", &e.image).await.unwrap();
    rt.start_container(api::StartContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .unwrap();
    let mut next = pod_config("again", "uid-again", &[]);
    next.metadata.as_mut().unwrap().attempt = 1;
    let second = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(next),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert_ne!(first, second);
    assert_status(
        create(d, &second, "vm", &e.image).await,
        Code::FailedPrecondition,
        &["still running", &c1[..13]],
    );
    rt.stop_container(api::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let c2 = create(d, &second, "vm", &e.image).await.unwrap();
    rt.start_container(api::StartContainerRequest {
        container_id: c2.clone(),
    })
    .await
    .unwrap();
    // The old container still reports how it ended, and goes with its sandbox.
    let st = container_status(d, &c1).await.unwrap();
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    for pod in [first, second] {
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
    }
}
