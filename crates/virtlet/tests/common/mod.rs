//! Harness for integration tests: starts the real `virtlet` binary on a temp socket with temp
//! state, and talks to it with a tonic client over that socket.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, ImageStatusResponse, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use tonic::transport::Channel;

pub mod background;
pub mod cni;
pub mod containerd;
pub mod critest;
pub mod kubelet;
pub mod tools;
pub mod vm;

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub image_dir: PathBuf,
    pub translations_dir: PathBuf,
    pub db: PathBuf,
    pub log: PathBuf,
    pub libvirt_uri: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: String,
    protocol: String,
    extra_env: Vec<(String, String)>,
}

pub struct Options {
    pub image_dir: Option<PathBuf>,
    pub protocol: &'static str,
    pub extra_env: Vec<(String, String)>,
    /// `test:///default` unless a test boots real VMs.
    pub libvirt_uri: &'static str,
    /// The CNI config list the daemon finds in its config dir (`None`: an empty dir).
    pub cni_conflist: Option<String>,
    /// `--cni-bin-dir`.
    pub cni_bin_dir: String,
}

/// Debian's CNI plugins (package containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// A network of loopback only: pods get a netns and no NIC.
pub const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#;

impl Default for Options {
    fn default() -> Self {
        Options {
            image_dir: None,
            protocol: "http",
            extra_env: Vec::new(),
            libvirt_uri: "test:///default",
            cni_conflist: Some(LOOPBACK_CONFLIST.to_owned()),
            cni_bin_dir: CNI_BIN_DIR.to_owned(),
        }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_virtlet")
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("virtlet.sock");
        let image_dir = opts.image_dir.unwrap_or_else(|| dir.path().join("images"));
        let translations_dir = dir.path().join("translations");
        std::fs::create_dir_all(&translations_dir).unwrap();
        let db = dir.path().join("virtlet.db");
        let log = dir.path().join("virtlet.log");
        let cni_conf_dir = dir.path().join("cni");
        std::fs::create_dir_all(&cni_conf_dir).unwrap();
        if let Some(list) = &opts.cni_conflist {
            std::fs::write(cni_conf_dir.join("10-test.conflist"), list).unwrap();
        }
        let mut d = Daemon {
            cni_conf_dir,
            cni_bin_dir: opts.cni_bin_dir.clone(),
            child: None,
            dir,
            socket,
            image_dir,
            translations_dir,
            db,
            log,
            libvirt_uri: opts.libvirt_uri.to_owned(),
            protocol: opts.protocol.to_owned(),
            extra_env: opts.extra_env,
        };
        d.spawn().await;
        d
    }

    pub fn command(&self, protocol: &str) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(["--listen"])
            .arg(&self.socket)
            .arg("--database-path")
            .arg(&self.db)
            .arg("--image-dir")
            .arg(&self.image_dir)
            .arg("--image-translation-configs-dir")
            .arg(&self.translations_dir)
            .args(["--image-download-protocol", protocol, "--v", "1"])
            .args(["--libvirt-uri", &self.libvirt_uri])
            .arg("--vm-dir")
            .arg(self.dir.path().join("vms"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .arg("--netns-dir")
            .arg(self.dir.path().join("netns"))
            .arg("--kubelet-root-dir")
            .arg(self.dir.path().join("kubelet"))
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf_dir)
            .args(["--cni-bin-dir", &self.cni_bin_dir])
            .args(["--stream-port", "0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        if self.libvirt_uri.starts_with("test:") {
            cmd.arg("--disable-kvm");
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("VIRTLET_") || k == "KUBELET_ROOT_DIR" {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// SIGKILLs the daemon: its socket and state stay behind, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the daemon again with the same settings and waits until it serves.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let (protocol, env) = (self.protocol.clone(), self.extra_env.clone());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self.command(&protocol);
        cmd.envs(env).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        self.wait_ready().await;
    }

    /// Waits until the socket answers a Version call.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("virtlet exited early ({status}):\n{}", self.log_text());
            }
            if self.socket.exists()
                && let Ok(ch) = connect(&self.socket).await
                && RuntimeServiceClient::new(ch)
                    .version(k8s_cri::v1::VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "virtlet did not become ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await.unwrap()
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub fn write_translation(&self, name: &str, text: &str) {
        std::fs::write(self.translations_dir.join(name), text).unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    /// Every file under the image dir with its size, and every image the daemon lists.
    pub async fn snapshot(&self) -> (BTreeMap<PathBuf, u64>, Vec<String>) {
        let mut files = BTreeMap::new();
        walk(&self.image_dir, &mut files);
        let list = self
            .images()
            .await
            .list_images(ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .map(|i| format!("{} {:?}", i.id, i.repo_tags))
            .collect();
        (files, list)
    }

    /// RunPodSandbox of `config`: the sandbox's ID.
    pub async fn run_sandbox(&self, config: k8s_cri::v1::PodSandboxConfig) -> String {
        self.runtime()
            .await
            .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
    }

    /// StartContainer of `id`.
    pub async fn start_container(&self, id: &str) {
        self.runtime()
            .await
            .start_container(k8s_cri::v1::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// CreateContainer of `config` in `sandbox`: the container's ID.
    pub async fn create(
        &self,
        sandbox: &str,
        config: k8s_cri::v1::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .await
            .create_container(k8s_cri::v1::CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        self.images()
            .await
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    pub async fn status(&self, image: &str, verbose: bool) -> ImageStatusResponse {
        self.images()
            .await
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        self.images()
            .await
            .remove_image(RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .map(|_| ())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- virtlet log ---\n{}", self.log_text());
        }
        // Network namespaces are bind mounts: unmount what a failed test left, so the temp
        // dir can go.
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("netns")) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

pub fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p, meta.len());
        }
    }
}

pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    virtlet_cri::connect_unix(socket).await
}

/// Asserts a gRPC error's code and that its message has each of `needles`.
pub fn assert_status(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) {
    let err = match result {
        Ok(v) => panic!("expected {code:?}, got success {v:?}"),
        Err(e) => e,
    };
    assert_eq!(err.code(), code, "wrong code; message: {}", err.message());
    for n in needles {
        assert!(
            err.message().contains(n),
            "message {:?} should contain {n:?}",
            err.message()
        );
    }
}

/// The pod's one container, named `vm`, running `image` (attempt 0); callers add the rest.
/// A pod named `uid` (its UID too) in `default`.
pub fn pod_named(uid: &str) -> k8s_cri::v1::PodSandboxConfig {
    k8s_cri::v1::PodSandboxConfig {
        metadata: Some(k8s_cri::v1::PodSandboxMetadata {
            name: uid.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

pub fn vm_container(image: &str) -> k8s_cri::v1::ContainerConfig {
    k8s_cri::v1::ContainerConfig {
        metadata: Some(k8s_cri::v1::ContainerMetadata {
            name: "vm".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
