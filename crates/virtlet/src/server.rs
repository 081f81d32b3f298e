//! Startup (lock, stores, GC), the gRPC server on the unix socket, and graceful shutdown.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use tokio::net::UnixListener;
use tracing::info;
use virtlet_core::annotations::CpuModel;
use virtlet_core::vmspec::DomainType;
use virtlet_cri::{ImageRouter, ImageServer, Remote, RuntimeServer, RuntimeService};
use virtlet_image::{ImageStore, ImageStoreConfig};
use virtlet_manager::{Manager, ManagerConfig};
use virtlet_store::{Store, StoreError};
use virtlet_vm::Libvirt;

use crate::config::Config;

/// Largest gRPC message accepted or sent (the kubelet allows 16 MiB).
const MAX_MESSAGE: usize = 16 << 20;
/// Send buffer asked for on each kubelet connection. With 1000 pods a ListContainers answer
/// is about 400 KB; the default unix-socket buffer (about 208 KB) made each answer stall
/// halfway until the client drained it. The kernel caps the value at net.core.wmem_max
/// (and doubles it), so on a default node this gives about 416 KB.
const CRI_SEND_BUFFER: usize = 1 << 20;

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    Ok(())
}

static SOCKET_LOCK: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Holds `<socket>.lock` for the daemon's life: a second daemon on the same socket stops here,
/// or with `wait` waits until the first one exits (a DaemonSet's rolling update with surge:
/// the new virtlet takes over when the old one is gone).
async fn lock_socket(socket: &Path, wait: bool) -> Result<File> {
    let lock_path = PathBuf::from(format!("{}.lock", socket.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) if wait => {
            info!(lock = %lock_path.display(), "another virtlet serves this socket: waiting for it to exit (--wait-for-lock)");
            let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                .await
                .context("the lock-waiting task failed")?
                .with_context(|| format!("cannot lock {}", lock_path.display()))?;
            info!("the other virtlet exited: taking over");
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another virtlet is already serving {} (it holds {}); stop it first",
            socket.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

/// Binds the socket with mode 0600 before anyone can connect: bound under a temporary name,
/// restricted, then renamed over any stale socket.
fn bind_socket(socket: &Path) -> Result<UnixListener> {
    let tmp = PathBuf::from(format!("{}.tmp-{}", socket.display(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("cannot bind {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", tmp.display()))?;
    if socket.exists() {
        info!(socket = %socket.display(), "replacing a stale socket");
    }
    std::fs::rename(&tmp, socket)
        .with_context(|| format!("cannot move the socket to {}", socket.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop virtlet with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
    }
}

pub async fn run(config: Config) -> Result<()> {
    ensure_parent(&config.listen)?;
    // Held until the process exits, not until `run` returns: background tasks still hold
    // the metadata store then, and a virtlet waiting to take over must find it closed.
    let lock = lock_socket(&config.listen, config.wait_for_lock).await?;
    let _ = SOCKET_LOCK.set(lock);
    ensure_parent(&config.database_path)?;
    let store = match Store::open(&config.database_path) {
        Ok(s) => Arc::new(s),
        Err(e @ StoreError::NewerSchema { .. }) => bail!("{e}"),
        Err(e) => {
            return Err(anyhow::Error::new(e).context("cannot open the metadata store"));
        }
    };
    let images = Arc::new(
        ImageStore::open(
            ImageStoreConfig {
                image_dir: config.image_dir.clone(),
                translations_dir: config.image_translations_dir.clone(),
                download_protocol: config.download_protocol.clone(),
            },
            store.clone(),
        )
        .context("cannot open the image store")?,
    );
    images.gc().context("image store GC failed")?;

    let kvm = virtlet_vm::kvm::probe(&config.qemu, config.disable_kvm).await;
    let (domain_type, accel) = if kvm.usable {
        (DomainType::Kvm, format!("KVM ({})", kvm.detail))
    } else {
        (
            DomainType::Qemu,
            format!("TCG emulation, KVM not used: {}", kvm.detail),
        )
    };
    info!(accelerator = %accel, "VMs will run with {}", if kvm.usable { "KVM" } else { "TCG" });
    let uri = config.libvirt_uri.clone();
    let libvirt = Arc::new(
        tokio::task::spawn_blocking(move || Libvirt::connect(&uri))
            .await
            .context("libvirt connect task failed")??,
    );
    let vmwrapper = match &config.vmwrapper {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find the virtlet binary's directory")?
            .with_file_name("vmwrapper"),
    };
    if libvirt.runs_qemu() && !vmwrapper.exists() {
        bail!(
            "the VM emulator wrapper {} does not exist (build it with `cargo build -p vmwrapper`, or set --vmwrapper)",
            vmwrapper.display()
        );
    }
    let kube = match virtlet_kube::discover(config.kubeconfig.as_deref())
        .await
        .context("cannot set up Kubernetes API access (--kubeconfig)")?
    {
        Some(client) => {
            info!(server = %client.server(), from = %client.origin(), "ConfigMaps and Secrets named by pod annotations are read from the API server");
            Some(Arc::new(client))
        }
        None => {
            info!(
                "no Kubernetes API access (no --kubeconfig, not in a cluster): pods that name a ConfigMap or Secret in an annotation will be refused"
            );
            None
        }
    };
    let manager = Manager::start(
        ManagerConfig {
            vm_dir: config.vm_dir.clone(),
            run_dir: config.run_dir.clone(),
            netns_dir: config.netns_dir.clone(),
            vmwrapper,
            domain_type,
            cpu_model: (config.cpu_model == "host-model").then_some(CpuModel::HostModel),
            kubelet_root_dir: config.kubelet_root_dir.clone(),
            cni: virtlet_manager::network::CniSettings {
                conf_dir: config.cni_conf_dir.clone(),
                bin_dirs: config.cni_bin_dirs.clone(),
                plugin_timeout: std::time::Duration::from_secs(60),
            },
            kube,
            raw_devices: config.raw_devices.clone(),
            allowed_host_paths: config.allowed_host_paths.clone(),
        },
        store.clone(),
        images.clone(),
        libvirt,
    )
    .await
    .context("cannot recover pods and VMs")?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeService>().await;
    health
        .set_serving::<ImageServiceServer<ImageServer>>()
        .await;

    let streams = virtlet_stream::StreamServer::bind(
        std::net::SocketAddr::new(config.stream_address, config.stream_port),
        Arc::new(virtlet_cri::stream::ManagerBackend(manager.clone())),
        std::time::Duration::from_secs(60),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen for attach/port-forward on {}:{} (--stream-address, --stream-port)",
            config.stream_address, config.stream_port
        )
    })?;
    let server = RuntimeServer::new(env!("CARGO_PKG_VERSION"), manager, accel)
        .with_streaming(Arc::new(streams));
    let routes = tonic::service::Routes::new(health_service);
    let routes = match &config.containerd_socket {
        None => routes
            .add_service(RuntimeService::new(server, MAX_MESSAGE))
            .add_service(
                ImageServiceServer::new(ImageServer::new(images))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            ),
        Some(socket) => {
            let remote = Arc::new(
                Remote::new(socket, MAX_MESSAGE)
                    .with_context(|| format!("--containerd-socket {}", socket.display()))?,
            );
            virtlet_cri::router::events::follow(remote.clone());
            info!(containerd = %socket.display(), handler = %config.runtime_handler, "sharing the node with containerd: VM pods are those with RuntimeClass handler {:?} or the kubernetes.io/target-runtime: virtlet.cloud annotation; every other pod goes to containerd", config.runtime_handler);
            routes
                .add_service(RuntimeService::routed(
                    server,
                    remote.clone(),
                    config.runtime_handler.clone(),
                    MAX_MESSAGE,
                ))
                .add_service(
                    ImageServiceServer::new(ImageRouter::new(images, remote))
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE),
                )
        }
    };

    let listener = bind_socket(&config.listen)?;
    info!(socket = %config.listen.display(), version = env!("CARGO_PKG_VERSION"), "virtlet is serving CRI");
    let served = virtlet_cri::serve::serve(
        listener,
        routes,
        |c| {
            if let Err(e) = socket2::SockRef::from(c).set_send_buffer_size(CRI_SEND_BUFFER) {
                tracing::debug!(error = %e, "cannot enlarge a CRI connection's send buffer");
            }
        },
        shutdown_signal(),
        std::time::Duration::from_secs(5),
    )
    .await;
    let _ = std::fs::remove_file(&config.listen);
    served.context("the gRPC server failed")?;
    info!("virtlet stopped");
    Ok(())
}
