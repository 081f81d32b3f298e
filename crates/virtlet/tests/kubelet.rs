//! The real kubelet (standalone, static pods, from `../shared/tools`) running VM pods on the
//! daemon: Running and Ready, the console through the kubelet's `/containerLogs`, a guest that
//! powers itself off restarted on the same root disk, HTTP and TCP readiness and liveness
//! probes (a failing liveness probe restarts the VM), a hostPort, virtlet and the kubelet each
//! restarted under running VMs, deleting a manifest removing everything of the pod, and
//! minutes of normal running with no runtime errors in the kubelet's log.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cni::TestNet;
use common::kubelet::{Kubelet, container, is_ready, restarts};
use common::tools::free_port;
use common::vm::{DomainGuard, MARKER, require_libvirtd, tiny_image};
use common::{Daemon, Options};
use virtlet_testkit::{Route, TestServer};

const NODE: &str = "virtlet-test-node";

/// Kubelet log lines (klog errors) allowed during normal running, with why.
const ALLOWED_ERRORS: &[(&str, &str)] = &[(
    "failed to find pid namespace of init process",
    "the kubelet's own 5-minute housekeeping (container_manager_linux.go: keeping its process's \
     OOM score) cannot read PID 1's namespace on machines whose PID 1 is not an init system, as \
     on our test machines; nothing of virtlet's is involved",
)];

/// A static VM pod of the tiny image. Its user-data serves `index` over HTTP on port 8080 and
/// keeps a marker file on the root disk's boot partition: on the first boot it writes the
/// marker and runs `first_boot` in the background; on later boots it prints MARKER-PERSISTED.
fn manifest(name: &str, index: &str, first_boot: &str, extra: &str) -> String {
    let script = format!(
        "modprobe vfat; mkdir -p /mnt/boot /www; mount -t vfat /dev/sda1 /mnt/boot; \
         echo {index} >/www/index.html; echo ok >/www/healthz; httpd -p 8080 -h /www; \
         if [ -f /mnt/boot/virtlet-test-marker ]; then echo MARKER-PERSISTED; \
         else echo first >/mnt/boot/virtlet-test-marker; sync; ({first_boot}) & fi"
    );
    let user_data = format!("runcmd:\n  - [sh, -c, {}]\n", serde_json::json!(script));
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletCloudInitUserData: {ud}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 20
  containers:
  - name: vm
    image: virtlet.cloud/tiny
    imagePullPolicy: IfNotPresent
{extra}",
        ud = serde_json::json!(user_data),
    )
}

fn domains() -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_get(port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Container IDs the daemon knows, by pod name.
async fn cri_pods(d: &Daemon) -> Vec<(String, String)> {
    let mut rt = d.runtime().await;
    rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| (p.metadata.unwrap().name, p.id))
        .collect()
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_runs_vm_pods() {
    require_libvirtd();
    let steady = Duration::from_secs(
        std::env::var("VIRTLET_KUBELET_STEADY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let image = tiny_image();
    let net = TestNet::new(45);
    let mut d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        cni_conflist: Some(net.conflist(60, true, &[])),
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let server = TestServer::http().await.unwrap();
    server.route(
        "/tiny.qcow2",
        Route::Content(std::fs::read(&image).unwrap().into()),
    );
    d.write_translation(
        "t.yaml",
        &format!(
            "translations:\n  - name: tiny\n    url: {}\n",
            server.url("/tiny.qcow2")
        ),
    );
    let mut k = Kubelet::start(&d.dir.path().join("kubelet"), &d.socket, NODE);

    // Pod A: powers itself off 20 s after its first boot (restartPolicy Always brings it
    // back on the same disk); HTTP readiness, TCP liveness, a hostPort.
    let host_port = free_port();
    let a = manifest(
        "vm-a",
        "hello-from-a",
        "sleep 20; poweroff",
        &format!(
            "    ports:
    - containerPort: 8080
      hostPort: {host_port}
    readinessProbe:
      httpGet: {{path: /, port: 8080}}
      periodSeconds: 2
    livenessProbe:
      tcpSocket: {{port: 8080}}
      initialDelaySeconds: 30
      periodSeconds: 5
      failureThreshold: 3
"
        ),
    );
    // Pod B: its health page goes away 25 s after the first boot, so its HTTP liveness probe
    // fails and the kubelet restarts the VM; TCP readiness.
    let b = manifest(
        "vm-b",
        "hello-from-b",
        "sleep 25; rm /www/healthz",
        "    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 2
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      initialDelaySeconds: 15
      periodSeconds: 3
      failureThreshold: 2
",
    );
    let started = Instant::now();
    std::fs::write(k.manifests.join("vm-a.yaml"), &a).unwrap();
    std::fs::write(k.manifests.join("vm-b.yaml"), &b).unwrap();

    // Running and Ready, the console through the kubelet, the hostPort.
    let pa = k.wait_pod("vm-a", "running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    eprintln!("vm-a Running {:?} after its manifest", started.elapsed());
    let first_a = container(&pa)["containerID"].as_str().unwrap().to_owned();
    guard
        .0
        .push(first_a.trim_start_matches("virtlet://").to_owned());
    k.wait_pod("vm-a", "ready", Duration::from_secs(120), is_ready);
    eprintln!("vm-a Ready {:?} after its manifest", started.elapsed());
    let logs = k.logs("vm-a");
    assert!(logs.contains(MARKER), "kubelet /containerLogs:\n{logs}");
    assert_eq!(
        http_get(host_port).as_deref().map(str::trim),
        Some("hello-from-a"),
        "hostPort {host_port} reaches the VM"
    );
    k.wait_pod("vm-b", "ready", Duration::from_secs(120), is_ready);

    // A: the guest powers off; the kubelet starts it again, on the same disk.
    let pa = k.wait_pod("vm-a", "restarted", Duration::from_secs(120), |p| {
        restarts(p) >= 1 && is_ready(p)
    });
    assert_eq!(restarts(&pa), 1);
    let last = &container(&pa)["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 0, "{pa}");
    assert_eq!(last["reason"], "Completed", "{pa}");
    // The second boot found the file the first wrote.
    k.wait_logs("vm-a", "MARKER-PERSISTED", Duration::from_secs(30));
    // B: the failing liveness probe restarts the VM once; then it stays healthy.
    let pb = k.wait_pod(
        "vm-b",
        "restarted by its liveness probe",
        Duration::from_secs(150),
        |p| restarts(p) >= 1 && is_ready(p),
    );
    assert_eq!(restarts(&pb), 1, "{pb}");
    k.wait_logs("vm-b", "MARKER-PERSISTED", Duration::from_secs(30));

    // Restarting virtlet leaves the VMs running and the pods untouched.
    let ids = |k: &Kubelet| {
        ["vm-a", "vm-b"].map(|n| {
            let p = k.pod(n).unwrap();
            (
                container(&p)["containerID"].as_str().unwrap().to_owned(),
                restarts(&p),
            )
        })
    };
    let before = ids(&k);
    d.restart().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    for n in ["vm-a", "vm-b"] {
        k.wait_pod(
            n,
            "ready after the virtlet restart",
            Duration::from_secs(30),
            is_ready,
        );
    }
    assert_eq!(ids(&k), before, "a virtlet restart restarts no VM");

    // Deleting B's manifest removes its VM, netns, address and files.
    let b_sandbox = cri_pods(&d)
        .await
        .into_iter()
        .find(|(n, _)| n == &format!("vm-b-{NODE}"))
        .unwrap()
        .1;
    std::fs::remove_file(k.manifests.join("vm-b.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while cri_pods(&d).await.iter().any(|(_, id)| *id == b_sandbox) {
        assert!(
            Instant::now() < deadline,
            "vm-b's sandbox was not removed:\n{}",
            k.log_tail(40)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!domains().contains(&before[1].0.trim_start_matches("virtlet://")[..13]));
    assert!(!d.dir.path().join("vms").join(&b_sandbox).exists());
    assert_eq!(
        net.allocated().len(),
        1,
        "only vm-a keeps an address: {:?}",
        net.allocated()
    );
    assert_eq!(files_under(&d.dir.path().join("netns")), 1);

    // Restarting the kubelet leaves vm-a running, with no restart.
    k.restart();
    tokio::time::sleep(Duration::from_secs(10)).await;
    k.wait_pod(
        "vm-a",
        "ready after the kubelet restart",
        Duration::from_secs(60),
        is_ready,
    );
    assert_eq!(ids_a(&k), before[0]);

    // Normal running: no errors in the kubelet's log from here on (its start-up lines, about
    // its own sandbox and checkpoints, are before).
    let log_offset = std::fs::metadata(&k.log).unwrap().len() as usize;
    let steady_start = Instant::now();
    while steady_start.elapsed() < steady {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let p = k.pod("vm-a").unwrap();
        assert!(is_ready(&p), "vm-a stopped being ready:\n{p}");
    }
    assert_eq!(ids_a(&k), before[0], "no restart during normal running");
    let text = std::fs::read_to_string(&k.log).unwrap();
    let errors: Vec<&str> = text[log_offset.min(text.len())..]
        .lines()
        .filter(|l| l.starts_with('E'))
        .filter(|l| !ALLOWED_ERRORS.iter().any(|(needle, _)| l.contains(needle)))
        .collect();
    assert!(
        errors.is_empty(),
        "{} error lines in {:?} of the kubelet's normal running:\n{}",
        errors.len(),
        steady,
        errors.join("\n")
    );

    // Deleting A's manifest too: nothing of either pod is left.
    std::fs::remove_file(k.manifests.join("vm-a.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cri_pods(&d).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "vm-a was not removed:\n{}",
            k.log_tail(40)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    assert_eq!(files_under(&d.dir.path().join("netns")), 0);
    assert_eq!(files_under(&d.dir.path().join("vms")), 0);
    let left = domains();
    for (id, _) in &before {
        let short = &id.trim_start_matches("virtlet://")[..13];
        assert!(
            !left.contains(short),
            "domain of {id} left:
{left}"
        );
    }
}

fn ids_a(k: &Kubelet) -> (String, u64) {
    let p = k.pod("vm-a").unwrap();
    (
        container(&p)["containerID"].as_str().unwrap().to_owned(),
        restarts(&p),
    )
}
