//! `virtletctl`: talks CRI to a virtlet daemon over its unix socket, the way `crictl` would, for
//! operators and scripts on nodes without crictl.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest, VersionRequest,
};
use tonic::transport::Channel;

mod install;

#[derive(Parser)]
#[command(version, about = "Command-line client for a virtlet node")]
struct Cli {
    /// The daemon's CRI socket.
    #[arg(
        long,
        env = "VIRTLET_CRI_SOCKET_PATH",
        default_value = "/run/virtlet.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime name and versions.
    Version,
    /// Pull an image; prints its reference with digest.
    Pull {
        image: String,
        /// Also print how long the pull took, in seconds, on stderr.
        #[arg(long)]
        time: bool,
    },
    /// List images, optionally only those a reference names.
    Images { filter: Option<String> },
    /// Show one image as JSON (with verbose info).
    Inspecti { image: String },
    /// Remove images.
    Rmi { images: Vec<String> },
    /// Image filesystem usage as JSON.
    Imagefsinfo,
    /// Run a VM pod: a sandbox and its VM, started. Prints the pod and container IDs.
    Run {
        /// Pod name (also the VM's hostname).
        #[arg(long)]
        name: String,
        /// The VM image (pulled when missing).
        #[arg(long)]
        image: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Where the container log goes (`<dir>/<name>/0.log`).
        #[arg(long, default_value = "/var/log/virtlet-pods")]
        log_dir: PathBuf,
        /// Memory limit in MiB.
        #[arg(long, default_value_t = 256)]
        memory_mib: i64,
        /// Pod annotations, KEY=VALUE (Virtlet's `Virtlet*` keys).
        #[arg(long = "annotation")]
        annotations: Vec<String>,
    },
    /// List pods.
    Pods,
    /// List containers (VMs).
    Ps,
    /// Print a container's console log (the CRI log, without its prefixes).
    Logs {
        container: String,
        /// Wait for this text to appear, up to --timeout seconds.
        #[arg(long)]
        wait_for: Option<String>,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop a container (ACPI power button, then forced after the timeout).
    Stop {
        container: String,
        #[arg(long, default_value_t = 30)]
        timeout: i64,
    },
    /// Stop and remove pods with everything in them.
    Rmp { pods: Vec<String> },
    /// Attach to a VM's serial console: lines typed here go to the VM, its output comes
    /// back. Ctrl-] (then Enter) detaches; the VM goes on.
    Attach { container: String },
    /// Forward a local port to a port of a pod's VM: `LOCAL:REMOTE` (or one number for both).
    PortForward {
        pod: String,
        ports: String,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// Write the manifests that deploy virtlet (RBAC, RuntimeClass, config, the DaemonSets)
    /// and the kubelet settings for its nodes; needs no running daemon.
    Install {
        /// The virtlet image the DaemonSets run.
        #[arg(long, default_value = "localhost/virtlet:latest")]
        image: String,
        /// containerd's CRI socket on the nodes.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        containerd_socket: String,
        /// The RuntimeClass handler of VM pods.
        #[arg(long, default_value = "virtlet")]
        handler: String,
        /// Write the files into this directory (default: the manifests on stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A node to run virtlet on (prints how to label it).
        #[arg(long)]
        node: Option<String>,
    },
}

async fn connect(socket: &Path) -> Result<Channel> {
    virtlet_cri::connect_unix(socket)
        .await
        .with_context(|| format!("cannot connect to virtlet at {}", socket.display()))
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..ImageSpec::default()
    })
}

/// The one ID that starts with `prefix`, as crictl accepts; no match: the prefix itself (the
/// daemon then says what is wrong).
fn unique_prefix(ids: Vec<String>, prefix: &str, what: &str) -> Result<String> {
    let matching: Vec<String> = ids
        .into_iter()
        .filter(|id| id.starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(prefix.to_owned()),
        _ => anyhow::bail!("{what} ID prefix {prefix:?} is ambiguous"),
    }
}

async fn resolve_container(rt: &mut RuntimeServiceClient<Channel>, prefix: &str) -> Result<String> {
    let list = rt
        .list_containers(api::ListContainersRequest::default())
        .await
        .map_err(status_err)?
        .into_inner()
        .containers;
    unique_prefix(
        list.into_iter().map(|c| c.id).collect(),
        prefix,
        "container",
    )
}

async fn resolve_pod(rt: &mut RuntimeServiceClient<Channel>, prefix: &str) -> Result<String> {
    let list = rt
        .list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await
        .map_err(status_err)?
        .into_inner()
        .items;
    unique_prefix(list.into_iter().map(|p| p.id).collect(), prefix, "pod")
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Install {
        image,
        containerd_socket,
        handler,
        out,
        node,
    } = &cli.command
    {
        let install = install::Install {
            image: image.clone(),
            containerd_socket: containerd_socket.clone(),
            handler: handler.clone(),
        };
        return install::run(&install, &cli.socket, out.as_deref(), node.as_deref());
    }
    let channel = connect(&cli.socket).await?;
    let mut images = ImageServiceClient::new(channel.clone());
    match cli.command {
        Cmd::Version => {
            let v = RuntimeServiceClient::new(channel)
                .version(VersionRequest::default())
                .await
                .map_err(status_err)?
                .into_inner();
            println!(
                "RuntimeName: {}\nRuntimeVersion: {}\nRuntimeApiVersion: {}",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            );
        }
        Cmd::Pull { image, time } => {
            let start = Instant::now();
            let r = images
                .pull_image(PullImageRequest {
                    image: spec(&image),
                    ..PullImageRequest::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if time {
                eprintln!("{:.6}", start.elapsed().as_secs_f64());
            }
            println!("{}", r.image_ref);
        }
        Cmd::Images { filter } => {
            let list = images
                .list_images(ListImagesRequest {
                    filter: filter.map(|f| ImageFilter { image: spec(&f) }),
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .images;
            println!("{:<71} {:>12}  NAMES", "IMAGE ID", "SIZE");
            for i in list {
                println!("{:<71} {:>12}  {}", i.id, i.size, i.repo_tags.join(","));
            }
        }
        Cmd::Inspecti { image } => {
            let st = images
                .image_status(ImageStatusRequest {
                    image: spec(&image),
                    verbose: true,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let Some(img) = st.image else {
                anyhow::bail!("no such image: {image}");
            };
            let info: serde_json::Value = st
                .info
                .get("info")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let out = serde_json::json!({
                "id": img.id, "repoTags": img.repo_tags, "repoDigests": img.repo_digests,
                "size": img.size, "info": info,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Rmi { images: names } => {
            for name in names {
                images
                    .remove_image(RemoveImageRequest { image: spec(&name) })
                    .await
                    .map_err(status_err)?;
                println!("Deleted: {name}");
            }
        }
        Cmd::Imagefsinfo => {
            let fs = images
                .image_fs_info(ImageFsInfoRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            for u in fs.image_filesystems {
                let out = serde_json::json!({
                    "mountpoint": u.fs_id.map(|f| f.mountpoint).unwrap_or_default(),
                    "usedBytes": u.used_bytes.map(|v| v.value).unwrap_or_default(),
                    "inodesUsed": u.inodes_used.map(|v| v.value).unwrap_or_default(),
                    "timestamp": u.timestamp,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
        Cmd::Run {
            name,
            image,
            namespace,
            log_dir,
            memory_mib,
            annotations,
        } => {
            let mut rt = RuntimeServiceClient::new(channel);
            let present = images
                .image_status(ImageStatusRequest {
                    image: spec(&image),
                    verbose: false,
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .image
                .is_some();
            if !present {
                images
                    .pull_image(PullImageRequest {
                        image: spec(&image),
                        ..PullImageRequest::default()
                    })
                    .await
                    .map_err(status_err)?;
            }
            let mut ann = std::collections::HashMap::new();
            for a in annotations {
                let (k, v) = a
                    .split_once('=')
                    .with_context(|| format!("--annotation {a:?} is not KEY=VALUE"))?;
                ann.insert(k.to_owned(), v.to_owned());
            }
            let uid = format!("virtletctl-{namespace}-{name}");
            let config = api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: name.clone(),
                    uid,
                    namespace,
                    attempt: 0,
                }),
                hostname: name.clone(),
                log_directory: log_dir.join(&name).display().to_string(),
                annotations: ann,
                ..Default::default()
            };
            let pod = rt
                .run_pod_sandbox(api::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .pod_sandbox_id;
            let container = rt
                .create_container(api::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(api::ContainerConfig {
                        metadata: Some(api::ContainerMetadata {
                            name: "vm".into(),
                            attempt: 0,
                        }),
                        image: spec(&image),
                        log_path: "0.log".into(),
                        linux: Some(api::LinuxContainerConfig {
                            resources: Some(api::LinuxContainerResources {
                                memory_limit_in_bytes: memory_mib << 20,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config),
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .container_id;
            rt.start_container(api::StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .map_err(status_err)?;
            println!("pod {pod}\ncontainer {container}");
        }
        Cmd::Pods => {
            let items = RuntimeServiceClient::new(channel)
                .list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
                .map_err(status_err)?
                .into_inner()
                .items;
            println!("{:<15} {:<16} {:<24} NAMESPACE", "POD ID", "STATE", "NAME");
            for p in items {
                let m = p.metadata.unwrap_or_default();
                let state = api::PodSandboxState::try_from(p.state)
                    .map(|s| s.as_str_name().to_owned())
                    .unwrap_or_default();
                println!(
                    "{:<15} {:<16} {:<24} {}",
                    &p.id[..13.min(p.id.len())],
                    state,
                    m.name,
                    m.namespace
                );
            }
        }
        Cmd::Ps => {
            let mut rt = RuntimeServiceClient::new(channel);
            let items = rt
                .list_containers(api::ListContainersRequest::default())
                .await
                .map_err(status_err)?
                .into_inner()
                .containers;
            println!(
                "{:<15} {:<20} {:<8} {:<15} IMAGE",
                "CONTAINER", "STATE", "EXIT", "POD ID"
            );
            for c in items {
                let st = rt
                    .container_status(api::ContainerStatusRequest {
                        container_id: c.id.clone(),
                        verbose: false,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner()
                    .status
                    .unwrap_or_default();
                let state = api::ContainerState::try_from(c.state)
                    .map(|s| s.as_str_name().to_owned())
                    .unwrap_or_default();
                let exit = if c.state == api::ContainerState::ContainerExited as i32 {
                    format!("{} {}", st.exit_code, st.reason)
                } else {
                    String::new()
                };
                println!(
                    "{:<15} {:<20} {:<8} {:<15} {}",
                    &c.id[..13.min(c.id.len())],
                    state,
                    exit,
                    &c.pod_sandbox_id[..13.min(c.pod_sandbox_id.len())],
                    c.image.map(|i| i.image).unwrap_or_default()
                );
            }
        }
        Cmd::Logs {
            container,
            wait_for,
            timeout,
        } => {
            let mut rt = RuntimeServiceClient::new(channel);
            let container = resolve_container(&mut rt, &container).await?;
            let st = rt
                .container_status(api::ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .status
                .unwrap_or_default();
            anyhow::ensure!(
                !st.log_path.is_empty(),
                "container {container} has no log path"
            );
            let deadline = Instant::now() + std::time::Duration::from_secs(timeout);
            let mut printed = 0usize;
            loop {
                let text = std::fs::read_to_string(&st.log_path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[printed.min(lines.len())..] {
                    // <time> <stream> <F|P> <content>
                    let mut parts = line.splitn(4, ' ');
                    let (_, _, tag, content) = (
                        parts.next(),
                        parts.next(),
                        parts.next(),
                        parts.next().unwrap_or(""),
                    );
                    if tag == Some("P") {
                        print!("{content}");
                    } else {
                        println!("{content}");
                    }
                }
                printed = lines.len();
                match &wait_for {
                    Some(needle) if !text.contains(needle.as_str()) => {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "{needle:?} did not appear within {timeout} s"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    _ => break,
                }
            }
        }
        Cmd::Stop { container, timeout } => {
            let mut rt = RuntimeServiceClient::new(channel);
            let container = resolve_container(&mut rt, &container).await?;
            rt.stop_container(api::StopContainerRequest {
                container_id: container.clone(),
                timeout,
            })
            .await
            .map_err(status_err)?;
            println!("Stopped: {container}");
        }
        Cmd::Attach { container } => {
            let mut rt = RuntimeServiceClient::new(channel);
            let container = resolve_container(&mut rt, &container).await?;
            attach(&mut rt, &container).await?;
        }
        Cmd::PortForward {
            pod,
            ports,
            address,
        } => {
            let mut rt = RuntimeServiceClient::new(channel);
            let pod = resolve_pod(&mut rt, &pod).await?;
            let (local, remote) = match ports.split_once(':') {
                Some((l, r)) => (l.parse::<u16>(), r.parse::<u16>()),
                None => (ports.parse::<u16>(), ports.parse::<u16>()),
            };
            let (Ok(local), Ok(remote)) = (local, remote) else {
                anyhow::bail!("ports {ports:?} is not LOCAL:REMOTE (two port numbers)");
            };
            port_forward(rt, &pod, &address, local, remote).await?;
        }
        Cmd::Install { .. } => {} // handled before connecting
        Cmd::Rmp { pods } => {
            let mut rt = RuntimeServiceClient::new(channel);
            for pod in pods {
                let pod = resolve_pod(&mut rt, &pod).await?;
                rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
                .map_err(status_err)?;
                rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
                .map_err(status_err)?;
                println!("Removed pod: {pod}");
            }
        }
    }
    Ok(())
}

/// The console over WebSocket v5: stdout channel 1 to our stdout, our stdin to channel 0.
async fn attach(rt: &mut RuntimeServiceClient<Channel>, container: &str) -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = rt
        .attach(api::AttachRequest {
            container_id: container.to_owned(),
            stdin: true,
            stdout: true,
            tty: true,
            ..Default::default()
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .url;
    let (ws, _) = virtlet_stream::client::connect_websocket(
        &url,
        "",
        &["v5.channel.k8s.io", "v4.channel.k8s.io"],
    )
    .await?;
    eprintln!("Attached to {container}'s serial console; Ctrl-] then Enter detaches.");
    let (mut writer, mut reader) = ws.split();
    let typing = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut m = vec![0u8];
            m.extend_from_slice(line.as_bytes());
            m.push(b'\r');
            if writer.send(Message::Binary(m.into())).await.is_err() || line.contains('\x1d') {
                break;
            }
        }
    });
    let mut out = tokio::io::stdout();
    while let Some(Ok(msg)) = reader.next().await {
        if let Message::Binary(m) = msg
            && m.first() == Some(&1)
        {
            out.write_all(&m[1..]).await?;
            out.flush().await?;
        }
    }
    typing.abort();
    eprintln!("\nDetached.");
    Ok(())
}

/// Listens locally; every connection gets its own PortForward URL and WebSocket.
async fn port_forward(
    rt: RuntimeServiceClient<Channel>,
    pod: &str,
    address: &str,
    local: u16,
    remote: u16,
) -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind((address, local))
        .await
        .with_context(|| format!("cannot listen on {address}:{local}"))?;
    eprintln!(
        "Forwarding {} -> pod {pod} port {remote}",
        listener.local_addr()?
    );
    loop {
        let (tcp, peer) = listener.accept().await?;
        let mut rt = rt.clone();
        let pod = pod.to_owned();
        tokio::spawn(async move {
            let url = match rt
                .port_forward(api::PortForwardRequest {
                    pod_sandbox_id: pod.clone(),
                    port: vec![i32::from(remote)],
                })
                .await
            {
                Ok(r) => r.into_inner().url,
                Err(e) => {
                    eprintln!("{peer}: {}", e.message());
                    return;
                }
            };
            let ws = match virtlet_stream::client::connect_websocket(
                &url,
                &format!("port={remote}"),
                &["v4.channel.k8s.io"],
            )
            .await
            {
                Ok((ws, _)) => ws,
                Err(e) => {
                    eprintln!("{peer}: {e}");
                    return;
                }
            };
            let (mut writer, mut reader) = ws.split();
            let (mut tr, mut tw) = tcp.into_split();
            let up_task = tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match tr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut m = vec![0u8];
                            m.extend_from_slice(&buf[..n]);
                            if writer.send(Message::Binary(m.into())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = writer.send(Message::Close(None)).await;
            });
            // The first message of each channel is its port number.
            let mut seen = [false; 2];
            while let Some(Ok(msg)) = reader.next().await {
                let Message::Binary(m) = msg else { continue };
                let Some(&ch) = m.first() else { continue };
                let ch = usize::from(ch.min(1));
                if !seen[ch] {
                    seen[ch] = true;
                    continue;
                }
                if ch == 1 {
                    eprintln!("{peer}: {}", String::from_utf8_lossy(&m[1..]));
                    break;
                }
                use tokio::io::AsyncWriteExt;
                if tw.write_all(&m[1..]).await.is_err() {
                    break;
                }
            }
            up_task.abort();
        });
    }
}
