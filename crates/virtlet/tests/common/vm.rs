//! Helpers for tests that boot real VMs under libvirtd (`qemu:///system`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Daemon;

pub const MARKER: &str = "VIRTLET-GUEST-READY";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny test image: `VIRTLET_TINY_IMAGE`, or built (or found in its cache) by `images/build`.
pub fn tiny_image() -> PathBuf {
    built_image("VIRTLET_TINY_IMAGE", "tiny")
}

/// The tiny image with Debian's generic kernel, which has 9p (directory volumes).
pub fn tiny_generic_image() -> PathBuf {
    built_image("VIRTLET_TINY_GENERIC_IMAGE", "tiny-generic")
}

fn built_image(var: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("images/build"))
        .arg(name)
        .output()
        .expect("cannot run images/build");
    assert!(
        out.status.success(),
        "images/build {name} failed (it needs the packages scripts/setup-host installs):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    PathBuf::from(path)
}

pub fn require_libvirtd() {
    let ok = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "libvirtd does not answer on qemu:///system: start it with `scripts/setup-host --libvirt` (scripts/test does)"
    );
}

pub async fn require_libvirtd_within(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let ok = Command::new("virsh")
            .args(["-c", "qemu:///system", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("libvirtd did not come back within {limit:?}");
}

/// Serves `image` over HTTP, as nodes get images, and pulls it through CRI.
pub async fn serve_and_pull(d: &Daemon, image: &Path) -> (virtlet_testkit::TestServer, String) {
    let server = virtlet_testkit::TestServer::http().await.unwrap();
    server.route(
        "/tiny.qcow2",
        virtlet_testkit::Route::Content(std::fs::read(image).unwrap().into()),
    );
    let name = format!("virtlet.cloud/{}", server.location("/tiny.qcow2"));
    d.pull(&name).await.unwrap();
    (server, name)
}

/// Destroys and undefines the domains of the given containers, whatever happens to the test.
pub struct DomainGuard(pub Vec<String>);

impl Drop for DomainGuard {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let Ok(out) = Command::new("virsh")
            .args(["-c", "qemu:///system", "list", "--all", "--name"])
            .output()
        else {
            return;
        };
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if self
                .0
                .iter()
                .any(|id| name.starts_with(&format!("virtlet-{}", &id[..13])))
            {
                if failed {
                    let log = std::fs::read_to_string(format!("/var/log/libvirt/qemu/{name}.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!("--- libvirt log of {name} (last 40 lines) ---");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system", "destroy", name])
                    .output();
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system", "undefine", name])
                    .output();
            }
        }
    }
}

pub async fn wait_for_log(path: &Path, needle: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "no {needle:?} in {} after {timeout:?}; the log has:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a pod with one VM of `image` (console log `vm.log` in the pod's log directory) and
/// starts it; the guard removes its domain whatever happens. Returns (sandbox, container).
pub async fn run_vm_pod(
    d: &Daemon,
    guard: &mut DomainGuard,
    config: k8s_cri::v1::PodSandboxConfig,
    image: &str,
) -> (String, String) {
    let container = super::vm_container(image);
    let (sandbox, id) = create_vm_pod(d, guard, config, container).await;
    d.runtime()
        .await
        .start_container(k8s_cri::v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    (sandbox, id)
}

/// Makes a pod and creates its one container (`container`, console log `vm.log`), not
/// started; the guard removes its domain whatever happens. Returns (sandbox, container).
pub async fn create_vm_pod(
    d: &Daemon,
    guard: &mut DomainGuard,
    config: k8s_cri::v1::PodSandboxConfig,
    container: k8s_cri::v1::ContainerConfig,
) -> (String, String) {
    use k8s_cri::v1 as api;
    let mut rt = d.runtime().await;
    let sandbox = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(api::ContainerConfig {
                log_path: "vm.log".into(),
                ..container
            }),
            sandbox_config: Some(config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    guard.0.push(id.clone());
    (sandbox, id)
}

/// A copy of `base` whose content differs in one unused sector (between the MBR and the
/// first partition), so it boots the same and has its own sha256.
pub fn variant(base: &Path, dir: &Path, name: &str, seed: u8) -> PathBuf {
    let out = dir.join(format!("{name}.qcow2"));
    std::fs::copy(base, &out).unwrap();
    let st = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P {seed} 512k 512")])
        .arg(&out)
        .output()
        .expect("qemu-io (Debian package qemu-utils) is needed to make the test images");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}
