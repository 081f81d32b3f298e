//! The cost of sharing the node with containerd: the same CRI calls about container pods
//! through virtlet (which forwards them) and against containerd directly, interleaved.

use super::*;

/// The calls measured: the kubelet's periodic ones (lists, Status) and per-pod status calls.
/// `Version` is answered by virtlet itself: the cost of virtlet's own server, for comparison.
const CALLS: &[&str] = &[
    "Version",
    "ListPodSandbox",
    "ListContainers",
    "Status",
    "PodSandboxStatus",
    "ContainerStatus",
    "ListImages",
    "ImageStatus",
];

async fn call(c: &mut Cri, kind: &str, pod: &str, ctr: &str, image: &str) -> Result<()> {
    match kind {
        "Version" => {
            c.rt.version(api::VersionRequest::default()).await?;
        }
        "ListPodSandbox" => {
            c.rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await?;
        }
        "ListContainers" => {
            c.rt.list_containers(api::ListContainersRequest::default())
                .await?;
        }
        "Status" => {
            c.rt.status(api::StatusRequest::default()).await?;
        }
        "PodSandboxStatus" => {
            c.rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: false,
            })
            .await?;
        }
        "ContainerStatus" => {
            c.rt.container_status(api::ContainerStatusRequest {
                container_id: ctr.into(),
                verbose: false,
            })
            .await?;
        }
        "ListImages" => {
            c.img.list_images(api::ListImagesRequest::default()).await?;
        }
        _ => {
            c.img
                .image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?;
        }
    }
    Ok(())
}

/// `pods` container pods of `image` made through virtlet, then `calls` interleaved pairs of
/// each call (the order within a pair alternates).
pub(crate) async fn run(
    via: &mut Cri,
    direct_socket: &Path,
    image: &str,
    work: &Path,
    pods: usize,
    calls: usize,
) -> Result<serde_json::Value> {
    let ch = virtlet_cri::connect_unix(direct_socket).await?;
    let mut direct = Cri {
        rt: RuntimeServiceClient::new(ch.clone()),
        img: ImageServiceClient::new(ch),
    };
    let mut made = Vec::new();
    for i in 0..pods {
        let name = format!("ctr{i}");
        let mut cc = container_config(image);
        cc.command = vec!["sleep".into(), "3600".into()];
        made.push(via.pod_with(&name, cc, &work.join(&name), true).await?);
    }
    let (pod, ctr) = made.first().cloned().context("no pods")?;
    let mut out = serde_json::Map::new();
    for kind in CALLS {
        for _ in 0..20 {
            call(via, kind, &pod, &ctr, image).await?;
            call(&mut direct, kind, &pod, &ctr, image).await?;
        }
        let (mut a, mut b) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
        for i in 0..calls {
            for first in [i % 2 == 0, i % 2 != 0] {
                let c = if first { &mut *via } else { &mut direct };
                let t = Instant::now();
                call(c, kind, &pod, &ctr, image).await?;
                let d = secs(t.elapsed());
                if first { a.push(d) } else { b.push(d) }
            }
        }
        out.insert((*kind).to_owned(), json!({ "virtlet_s": a, "direct_s": b }));
    }
    for (pod, _) in made {
        via.rt
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await?;
        via.rt
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;
    }
    Ok(json!({ "pods": pods, "calls": out }))
}
