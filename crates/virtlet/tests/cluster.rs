//! A single-node cluster from `../shared/tools` (etcd, kube-apiserver, controller-manager,
//! scheduler, started by `cluster-up`) with the real kubelet as its node and virtlet as the
//! node's runtime; kubectl through the API server: `apply` of a VM pod, `logs`, `attach -i`,
//! `port-forward` (WebSocket, kubectl's default, and SPDY; several connections at once; a
//! port where nothing listens), `exec` (also `-it`), exec readiness and liveness probes (a
//! failing one restarts the VM), volumes (an emptyDir and a hostPath over 9p, a qcow2
//! FlexVolume through virtlet's driver, which the kubelet calls), and `delete` with a grace
//! period. The pod's user-data comes from a ConfigMap and its ssh key and a Secret volume
//! from a Secret, which virtlet reads through the API server as the `virtlet` service account
//! of `deploy/rbac.yaml` (a token: it may get, not list, ConfigMaps and Secrets).
//!
//! Deployed as an operator would: `kubectl apply` of `deploy/` (RBAC, the `virtlet`
//! RuntimeClass the VM pods name, the config ConfigMaps; the DaemonSets are checked by the
//! API server with a server-side dry run, and what they run is run on the host: their init
//! step `prepare-node` installs the FlexVolume driver, virtlet gets the settings of the
//! `virtlet-config` ConfigMap). virtlet shares the node with containerd: a host-network
//! container pod (kube-proxy-like, from the local busybox image) runs beside the VM pods.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::background::{Background, http_get};
use common::cni::TestNet;
use common::containerd::{BUSYBOX, Containerd};
use common::kubelet::{Kubelet, KubeletOptions};
use common::tools::{Crictl, free_port, shell_line, tools_dir};
use common::vm::{
    DomainGuard, MARKER, repo_root, require_libvirtd, tiny_generic_image, tiny_image,
};
use common::{Daemon, Options};
use virtlet_testkit::{Route, TestServer};

const NODE: &str = "virtlet-cluster-node";

/// The control plane of `cluster-up`, stopped (and its folder removed) when dropped.
struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn up(dir: &Path) -> Cluster {
        let script = repo_root().join("../shared/tools/cluster-up");
        assert!(script.exists(), "{} is missing", script.display());
        let (api, etcd) = (free_port(), free_port());
        let out = Command::new(&script)
            .arg(dir)
            .env("NODE_NAME", NODE)
            .env("APISERVER_PORT", api.to_string())
            .env("ETCD_PORT", etcd.to_string())
            .env("KCM_PORT", free_port().to_string())
            .env("SCHED_PORT", free_port().to_string())
            .output()
            .unwrap();
        let c = Cluster {
            dir: dir.to_owned(),
            kubeconfig: dir.join("admin.kubeconfig"),
        };
        assert!(
            out.status.success(),
            "cluster-up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn kubectl(&self) -> Command {
        let mut cmd = Command::new(tools_dir().join("bin/kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// [`ok`](Self::ok), retried for a minute while the API server is still settling
    /// ("the server is currently unable to handle the request").
    fn ok_settled(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .kubectl()
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() || Instant::now() > deadline {
                return self.ok(args);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Polls `done` every 2 s; after `within` fails with `why()`.
    fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&Cluster) -> bool,
        why: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "{}", why());
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Whether an object's `Ready` condition is `True` (false while it does not exist yet:
    /// a node registers a moment after its kubelet starts).
    fn ready(&self, kind: &str, name: &str) -> bool {
        self.kubectl()
            .args([
                "get",
                kind,
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("True")
            })
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .kubectl()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("../shared/tools/cluster-down"))
            .arg(&self.dir)
            .output();
    }
}

/// `kubectl apply` of the manifests an operator applies (the DaemonSets as a server-side dry
/// run: their images cannot be pulled here); the `virtlet-config` settings that are not paths
/// (paths are the test's own).
fn deploy(cluster: &Cluster) -> Vec<(String, String)> {
    let dir = repo_root().join("deploy");
    let file = |f: &str| dir.join(f).display().to_string();
    for f in ["rbac.yaml", "runtimeclass.yaml", "config.yaml"] {
        cluster.ok_settled(&["apply", "--validate=false", "-f", &file(f)]);
    }
    for f in ["virtlet.yaml", "virtlet-libvirt.yaml"] {
        let out = cluster.ok(&[
            "apply",
            "--validate=false",
            "--dry-run=server",
            "-f",
            &file(f),
        ]);
        assert!(out.contains("daemonset.apps/"), "{f}: {out}");
    }
    assert_eq!(
        cluster
            .ok(&[
                "get",
                "runtimeclass",
                "virtlet",
                "-o",
                "jsonpath={.handler}"
            ])
            .trim(),
        "virtlet"
    );
    // The service account may get ConfigMaps and Secrets by name, nothing more.
    let sa = "system:serviceaccount:kube-system:virtlet";
    for (verb, what, answer) in [
        ("get", "secrets", "yes"),
        ("get", "configmaps", "yes"),
        ("list", "secrets", "no"),
        ("watch", "configmaps", "no"),
        ("create", "pods", "no"),
    ] {
        let out = cluster
            .kubectl()
            .args(["auth", "can-i", verb, what, "--as", sa])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            answer,
            "can {sa} {verb} {what}?"
        );
    }
    let data = cluster.ok(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "virtlet-config",
        "-o",
        "jsonpath={.data}",
    ]);
    let data: std::collections::BTreeMap<String, String> = serde_json::from_str(&data).unwrap();
    assert!(data.contains_key("VIRTLET_CONTAINERD_SOCKET"), "{data:?}");
    data.into_iter()
        .filter(|(k, v)| k.starts_with("VIRTLET_") && !v.starts_with('/') && !v.is_empty())
        .filter(|(k, _)| k != "VIRTLET_DISABLE_KVM" && k != "VIRTLET_STREAM_PORT")
        .collect()
}

/// A kubeconfig for the `virtlet` service account (a bound token), as the DaemonSet's pod
/// has it in-cluster.
fn service_account_kubeconfig(cluster: &Cluster, out: &Path) -> PathBuf {
    let token = cluster.ok(&[
        "create",
        "token",
        "-n",
        "kube-system",
        "virtlet",
        "--duration",
        "2h",
    ]);
    let server = cluster.ok(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let file = out.join("virtlet.kubeconfig");
    let ca = cluster.dir.join("pki/ca.crt");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: {server}, certificate-authority: {ca}}}
users:
- name: virtlet
  user: {{token: {token}}}
contexts:
- name: virtlet
  context: {{cluster: local, user: virtlet}}
current-context: virtlet
",
            server = server.trim(),
            ca = ca.display(),
            token = token.trim()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_through_a_cluster() {
    require_libvirtd();
    let image = tiny_image();
    let generic = tiny_generic_image();
    let net = TestNet::new(47);
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("hello"), "from-a-host-path\n").unwrap();
    // The control plane first: virtlet reads the pod's user-data from a ConfigMap through
    // it, with the admin kubeconfig (client certificates).
    let cluster_dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(cluster_dir.path());
    let mut env = deploy(&cluster);
    let kubeconfig = service_account_kubeconfig(&cluster, cluster_dir.path());
    let ctrd = Containerd::start(&cluster_dir.path().join("ctrd"), "vt-ctr4", "10.99.44.0/24");
    env.extend([
        (
            "VIRTLET_KUBECONFIG".into(),
            kubeconfig.display().to_string(),
        ),
        (
            "VIRTLET_ALLOWED_HOST_PATHS".into(),
            host_dir.path().display().to_string(),
        ),
        (
            "VIRTLET_CONTAINERD_SOCKET".into(),
            ctrd.socket.display().to_string(),
        ),
    ]);
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        cni_conflist: Some(net.conflist(60, true, &[])),
        extra_env: env,
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let server = TestServer::http().await.unwrap();
    server.route(
        "/tiny.qcow2",
        Route::Content(std::fs::read(&image).unwrap().into()),
    );
    server.route(
        "/tiny-generic.qcow2",
        Route::Content(std::fs::read(&generic).unwrap().into()),
    );
    d.write_translation(
        "t.yaml",
        &format!(
            "translations:\n  - name: tiny\n    url: {}\n  - name: tiny-generic\n    url: {}\n",
            server.url("/tiny.qcow2"),
            server.url("/tiny-generic.qcow2")
        ),
    );
    // The DaemonSets' init step on the host: virtlet's dirs, its FlexVolume driver where the
    // kubelet looks for drivers, the KVM verdict.
    let plugins = d.dir.path().join("volume-plugins");
    let run = d.dir.path().join("run");
    let out = Command::new(repo_root().join("deploy/image/prepare-node"))
        .env("VIRTLET_DATABASE_PATH", &d.db)
        .env("VIRTLET_IMAGE_DIR", &d.image_dir)
        .env("VIRTLET_IMAGE_TRANSLATIONS_DIR", &d.translations_dir)
        .env("VIRTLET_VM_DIR", d.dir.path().join("vms"))
        .env("VIRTLET_RUN_DIR", &run)
        .env("VIRTLET_NETNS_DIR", d.dir.path().join("netns"))
        .env("VIRTLET_CNI_PLUGIN_DIR", common::CNI_BIN_DIR)
        .env("VIRTLET_CNI_CONFIG_DIR", &d.cni_conf_dir)
        .env("VIRTLET_SHARED_MOUNTS", "")
        .env("KUBELET_VOLUME_PLUGIN_DIR", &plugins)
        .env(
            "VIRTLET_FLEXVOLUME_DRIVER",
            env!("CARGO_BIN_EXE_flexvolume_driver"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prepare-node failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plugins
            .join("virtlet~flexvolume_driver/flexvolume_driver")
            .exists()
    );
    assert!(run.join("kvm-probe").exists());
    let k = Kubelet::start_with(
        &d.dir.path().join("kubelet-node"),
        &d.socket,
        NODE,
        KubeletOptions {
            kubeconfig: Some(cluster.dir.join("kubelet.kubeconfig")),
            // The pods' files (/etc/hosts, the termination log) are under the folder the
            // daemon's --kubelet-root-dir allows.
            root_dir: Some(d.dir.path().join("kubelet")),
            volume_plugin_dir: Some(plugins.clone()),
        },
    );
    cluster.wait_until(
        Duration::from_secs(120),
        |c| c.ready("node", NODE),
        || format!("the node is not Ready:\n{}", k.log_tail(40)),
    );
    // The node label the RuntimeClass schedules VM pods by (and the DaemonSets select).
    cluster.ok(&["label", "node", NODE, "extraRuntime=virtlet"]);

    // A kube-proxy-like container pod (host network) from the local busybox image: it runs
    // in containerd, beside every VM pod below, untouched by them.
    let proxy = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: proxy}}
spec:
  hostNetwork: true
  automountServiceAccountToken: false
  containers:
  - name: proxy
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, 'echo proxy up; exec sleep 100000']
"
    );
    let file = d.dir.path().join("proxy.yaml");
    std::fs::write(&file, proxy).unwrap();
    cluster.ok(&["apply", "--validate=false", "-f", file.to_str().unwrap()]);
    cluster.wait_until(
        Duration::from_secs(60),
        |c| c.ready("pod", "proxy"),
        || cluster.ok(&["describe", "pod", "proxy"]),
    );
    assert!(cluster.ok(&["logs", "proxy"]).contains("proxy up"));

    // kubectl apply: a VM pod of the RuntimeClass `virtlet` serving HTTP on 8080, its
    // user-data in a ConfigMap (each key is a user-data key, its value YAML, as in Mirantis
    // Virtlet), its ssh key and a volume from a Secret.
    let runcmd = "- [sh, -c, 'mkdir -p /www && echo hello-through-kubectl >/www/index.html && httpd -p 8080 -h /www']\n";
    let pod = format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: vm-user-data
data:
  runcmd: {ud}
---
apiVersion: v1
kind: Secret
metadata:
  name: vm-secret
stringData:
  authorized_keys: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFromASecretOfTheClusterTest test@cluster
  token: secret-volume-content
---
apiVersion: v1
kind: Pod
metadata:
  name: vm
  annotations:
    VirtletCloudInitUserDataSource: configmap/vm-user-data
    VirtletSSHKeySource: secret/vm-secret/authorized_keys
spec:
  runtimeClassName: virtlet
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 30
  containers:
  - name: vm
    image: virtlet.cloud/tiny
    stdin: true
    tty: true
    volumeMounts:
    - {{name: creds, mountPath: /etc/creds}}
    readinessProbe:
      exec:
        command: [wget, -q, -O, /dev/null, 'http://127.0.0.1:8080/']
      periodSeconds: 2
  volumes:
  - {{name: creds, secret: {{secretName: vm-secret}}}}
",
        ud = serde_json::json!(runcmd)
    );
    let file = d.dir.path().join("pod.yaml");
    std::fs::write(&file, pod).unwrap();
    let started = Instant::now();
    // --validate=false: this build of kube-apiserver serves OpenAPI documents kubectl cannot
    // read ("$root has invalid property: Extensions"), which client-side validation needs.
    cluster.ok_settled(&["apply", "--validate=false", "-f", file.to_str().unwrap()]);
    cluster.wait_until(
        Duration::from_secs(180),
        |c| c.ready("pod", "vm"),
        || {
            format!(
                "pod vm is not Ready:\n{}\nkubelet log (end):\n{}",
                cluster.ok(&["describe", "pod", "vm"]),
                k.log_tail(60)
            )
        },
    );
    eprintln!("kubectl apply to Ready: {:?}", started.elapsed());
    let cid = cluster.ok(&[
        "get",
        "pod",
        "vm",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    guard
        .0
        .push(cid.trim_start_matches("virtlet://").to_owned());

    // kubectl logs: the serial console.
    let logs = cluster.ok(&["logs", "vm"]);
    assert!(logs.contains(MARKER), "{logs}");
    // The VM pod is virtlet's (its RuntimeClass), the proxy containerd's.
    let direct = Crictl::new(&ctrd.socket, cluster_dir.path());
    assert!(direct.ok(&["pods", "--name", "proxy", "-q"]).trim().len() == 64);
    assert_eq!(direct.ok(&["pods", "--name", "vm", "-q"]).trim(), "");
    // The Secret, read by virtlet as its service account: a volume and the ssh key.
    assert_eq!(
        cluster.ok(&["exec", "vm", "--", "cat", "/etc/creds/token"]),
        "secret-volume-content"
    );
    let keys = cluster.ok(&["exec", "vm", "--", "cat", "/root/.ssh/authorized_keys"]);
    assert!(keys.contains("FromASecretOfTheClusterTest"), "{keys}");

    // kubectl attach -i: typed into the console, the guest's answer comes back.
    let mut attach = cluster
        .kubectl()
        .args(["attach", "-i", "vm", "-c", "vm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stdin
        .write_all(b"\necho kubectl-attach-$((6*7))\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    drop(stdin);
    let out = attach.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kubectl-attach-42"),
        "kubectl attach ({}) saw:\n{text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl port-forward, WebSocket (kubectl's default) and SPDY.
    for (how, websockets) in [("websocket", "true"), ("spdy", "false")] {
        let local = free_port();
        let mut cmd = cluster.kubectl();
        cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .args(["port-forward", "pod/vm", &format!("{local}:8080")]);
        let pf = Background::start(cmd);
        pf.wait_for("Forwarding from 127.0.0.1", Duration::from_secs(30));
        let answers: Vec<String> = (0..3)
            .map(|_| std::thread::spawn(move || http_get(local)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for a in answers {
            assert!(a.contains("hello-through-kubectl"), "{how}: {a:?}");
        }
        drop(pf);
        // A port where nothing listens: kubectl reports the runtime's error.
        let local = free_port();
        let mut cmd = cluster.kubectl();
        cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .args(["port-forward", "pod/vm", &format!("{local}:9")]);
        let pf = Background::start(cmd);
        pf.wait_for("Forwarding from 127.0.0.1", Duration::from_secs(30));
        let mut s = TcpStream::connect(("127.0.0.1", local)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let said = pf.wait_for("error forwarding port 9", Duration::from_secs(20));
        assert!(
            said.iter().any(|l| l.contains("refused")),
            "{how}: {said:?}"
        );
    }

    // kubectl exec: a command in the guest through the agent, its output and exit code.
    let hostname = cluster.ok(&["exec", "vm", "--", "cat", "/etc/hostname"]);
    assert_eq!(hostname.trim(), "vm");
    let out = cluster
        .kubectl()
        .args(["exec", "vm", "--", "sh", "-c", "echo to-stderr >&2; exit 5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("to-stderr"),
        "{out:?}"
    );

    // kubectl exec -it, through the API server and the kubelet: a shell on a terminal of the
    // guest, in a pseudo-terminal as a person runs it; the exit code comes back.
    let mut kubectl = cluster.kubectl();
    kubectl.args(["exec", "-it", "vm", "--", "sh"]);
    let mut script = Command::new("script");
    script.args(["-qefc", &shell_line(&kubectl), "/dev/null"]);
    let mut term = Background::interactive(script);
    term.type_in("tty; echo \"answer $((6*7))\"; exit 3\n");
    let seen = term
        .wait_for("exit code 3", Duration::from_secs(60))
        .join("\n");
    assert!(
        seen.contains("/dev/hvc") && seen.contains("answer 42"),
        "kubectl exec -it:\n{seen}"
    );

    // An exec liveness probe that starts failing: the kubelet restarts the VM.
    let liveness = "apiVersion: v1
kind: Pod
metadata:
  name: vm-liveness
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletCloudInitUserData: |
      runcmd:
        - [sh, -c, 'touch /tmp/alive; (sleep 15; rm -f /tmp/alive) &']
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 5
  containers:
  - name: vm
    image: virtlet.cloud/tiny
    livenessProbe:
      exec:
        command: [test, -e, /tmp/alive]
      initialDelaySeconds: 10
      periodSeconds: 2
      failureThreshold: 2
";
    let file = d.dir.path().join("liveness.yaml");
    std::fs::write(&file, liveness).unwrap();
    cluster.ok(&["apply", "--validate=false", "-f", file.to_str().unwrap()]);
    cluster.wait_until(
        Duration::from_secs(180),
        |c| {
            c.ok(&[
                "get",
                "pod",
                "vm-liveness",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}",
            ])
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
                >= 1
        },
        || {
            format!(
                "the failing liveness probe did not restart the VM:\n{}\nkubelet log (end):\n{}",
                cluster.ok(&["describe", "pod", "vm-liveness"]),
                k.log_tail(60)
            )
        },
    );
    let events = cluster.ok(&["describe", "pod", "vm-liveness"]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    for cid in cluster
        .ok(&[
            "get",
            "pod",
            "vm-liveness",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])
        .split_whitespace()
    {
        guard
            .0
            .push(cid.trim_start_matches("virtlet://").to_owned());
    }
    cluster.ok(&[
        "delete",
        "pod",
        "vm-liveness",
        "--grace-period=5",
        "--wait=true",
        "--timeout=120s",
    ]);

    // Volumes through the kubelet: an emptyDir and a read-only hostPath over 9p (the image
    // with the generic kernel), a qcow2 FlexVolume through virtlet's driver, formatted and
    // mounted by the guest. Ready once the guest sees all three.
    let volumes_pod = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: vm-volumes
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 5
  containers:
  - name: vm
    image: virtlet.cloud/tiny-generic
    volumeMounts:
    - {{name: scratch, mountPath: /scratch}}
    - {{name: host, mountPath: /host, readOnly: true}}
    - {{name: disk, mountPath: /disk}}
    readinessProbe:
      exec:
        command: [sh, -c, 'grep -q \" /scratch 9p \" /proc/mounts && grep -q \" /disk \" /proc/mounts && cat /host/hello']
      periodSeconds: 2
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: host, hostPath: {{path: {host}, type: Directory}}}}
  - name: disk
    flexVolume:
      driver: virtlet/flexvolume_driver
      options: {{type: qcow2, capacity: 64Mi}}
",
        host = host_dir.path().display()
    );
    let file = d.dir.path().join("volumes.yaml");
    std::fs::write(&file, volumes_pod).unwrap();
    let started = Instant::now();
    cluster.ok(&["apply", "--validate=false", "-f", file.to_str().unwrap()]);
    cluster.wait_until(
        Duration::from_secs(180),
        |c| c.ready("pod", "vm-volumes"),
        || {
            format!(
                "pod vm-volumes is not Ready:\n{}\nkubelet log (end):\n{}",
                cluster.ok(&["describe", "pod", "vm-volumes"]),
                k.log_tail(60)
            )
        },
    );
    eprintln!(
        "a pod with 3 volumes: apply to Ready {:?}",
        started.elapsed()
    );
    let cid = cluster.ok(&[
        "get",
        "pod",
        "vm-volumes",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    guard
        .0
        .push(cid.trim_start_matches("virtlet://").to_owned());
    let uid = cluster.ok(&["get", "pod", "vm-volumes", "-o", "jsonpath={.metadata.uid}"]);
    cluster.ok(&[
        "exec",
        "vm-volumes",
        "--",
        "sh",
        "-c",
        "echo written-in-the-vm >/scratch/out && sync",
    ]);
    let pod_volumes = d
        .dir
        .path()
        .join("kubelet/pods")
        .join(uid.trim())
        .join("volumes");
    assert_eq!(
        std::fs::read_to_string(pod_volumes.join("kubernetes.io~empty-dir/scratch/out")).unwrap(),
        "written-in-the-vm\n"
    );
    cluster.ok(&[
        "delete",
        "pod",
        "vm-volumes",
        "--grace-period=5",
        "--wait=true",
        "--timeout=120s",
    ]);
    // The kubelet unmounted the FlexVolume (the driver removed its directory).
    let flex_dir = pod_volumes.join("virtlet~flexvolume_driver/disk");
    let deadline = Instant::now() + Duration::from_secs(60);
    while flex_dir.exists() {
        assert!(Instant::now() < deadline, "{} stayed", flex_dir.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // kubectl delete with a grace period: the VM is powered off (ACPI) and removed.
    let started = Instant::now();
    cluster.ok(&[
        "delete",
        "pod",
        "vm",
        "--grace-period=20",
        "--wait=true",
        "--timeout=120s",
    ]);
    eprintln!("kubectl delete: {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut rt = d.runtime().await;
        let pods = rt
            .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
        // The VM pods' sandboxes go; the container pod's (containerd's) stays.
        let names: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.as_ref().map(|m| m.name.clone()))
            .collect();
        if names == ["proxy"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod's sandbox stayed: {pods:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    // The container pod ran through it all.
    let proxy = cluster.ok(&[
        "get",
        "pod",
        "proxy",
        "-o",
        "jsonpath={.status.phase} {.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(proxy.trim(), "Running 0");
    cluster.ok(&["delete", "pod", "proxy", "--grace-period=1", "--wait=true"]);
    drop(k);
}
