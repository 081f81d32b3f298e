//! The real kubelet (from `../shared/tools`) in standalone mode: static pods from a manifest
//! folder, talking CRI to one daemon, its API on a free port of 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::{free_port, tool};

/// How a kubelet runs: standalone (static pods only) or a node of a cluster.
#[derive(Debug, Clone, Default)]
pub struct KubeletOptions {
    /// A cluster's kubelet kubeconfig: the kubelet registers the node and runs the pods
    /// scheduled to it. The API server reaches it at the node's address (the host's, since the
    /// kubelet refuses a loopback node IP), so it listens on every address then.
    pub kubeconfig: Option<PathBuf>,
    /// `--root-dir` (default `<dir>/root`); its `pods` folder is what virtlet's
    /// `--kubelet-root-dir` must name for volumes to be allowed.
    pub root_dir: Option<PathBuf>,
    /// `volumePluginDir`: where the kubelet finds FlexVolume drivers.
    pub volume_plugin_dir: Option<PathBuf>,
}

pub struct Kubelet {
    child: Option<Child>,
    opts: KubeletOptions,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub node: String,
    pub port: u16,
    /// The log of the running kubelet (a new file per start).
    pub log: PathBuf,
    starts: u32,
}

impl Kubelet {
    /// Writes the kubelet's config (the cgroup v1, no-systemd settings of the tools README)
    /// under `dir` and starts it against `socket`.
    pub fn start(dir: &Path, socket: &Path, node: &str) -> Kubelet {
        Kubelet::start_with(dir, socket, node, KubeletOptions::default())
    }

    pub fn start_with(dir: &Path, socket: &Path, node: &str, opts: KubeletOptions) -> Kubelet {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(dir.join("pod-logs")).unwrap();
        let port = free_port();
        let endpoint = format!("unix://{}", socket.display());
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 1s
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
cgroupDriver: cgroupfs
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
readOnlyPort: 0
healthzPort: 0
port: {port}
address: {address}
failSwapOn: false
containerRuntimeEndpoint: {endpoint}
imageServiceEndpoint: {endpoint}
serializeImagePulls: false
podLogsDir: {logs}
evictionHard: {{memory.available: \"1Mi\", nodefs.available: \"0%\", nodefs.inodesFree: \"0%\", imagefs.available: \"0%\", imagefs.inodesFree: \"0%\"}}
imageGCHighThresholdPercent: 100
{plugins}",
            plugins = opts
                .volume_plugin_dir
                .as_ref()
                .map(|p| format!("volumePluginDir: {}\n", p.display()))
                .unwrap_or_default(),
            manifests = manifests.display(),
            logs = dir.join("pod-logs").display(),
            address = if opts.kubeconfig.is_some() { "0.0.0.0" } else { "127.0.0.1" },
        );
        std::fs::write(dir.join("kubelet.yaml"), config).unwrap();
        let mut k = Kubelet {
            child: None,
            opts,
            dir: dir.to_owned(),
            manifests,
            node: node.to_owned(),
            port,
            log: PathBuf::new(),
            starts: 0,
        };
        k.spawn();
        k
    }

    fn spawn(&mut self) {
        self.starts += 1;
        self.log = self.dir.join(format!("kubelet.{}.log", self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(tool("kubelet"));
        cmd.arg("--config")
            .arg(self.dir.join("kubelet.yaml"))
            .arg("--root-dir")
            .arg(
                self.opts
                    .root_dir
                    .clone()
                    .unwrap_or_else(|| self.dir.join("root")),
            )
            .arg("--cert-dir")
            .arg(self.dir.join("pki"))
            .args(["--hostname-override", &self.node, "--v=2"]);
        if let Some(kc) = &self.opts.kubeconfig {
            cmd.arg("--kubeconfig").arg(kc);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get("/healthz").as_deref() != Some("ok") {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the kubelet exited ({st}):\n{}", self.log_tail(80));
            }
            assert!(
                Instant::now() < deadline,
                "the kubelet did not become healthy:\n{}",
                self.log_tail(80)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Stops the kubelet (SIGTERM) and starts it again with the same config and state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET on the kubelet's API (HTTPS, its self-signed certificate): the body, or `None`.
    pub fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "--fail"])
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The static pod `name` as the kubelet reports it (`/pods`), if it knows it.
    pub fn pod(&self, name: &str) -> Option<serde_json::Value> {
        let full = format!("{name}-{}", self.node);
        let list: serde_json::Value = serde_json::from_str(&self.get("/pods")?).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
            .cloned()
    }

    /// The console log of the pod's container `vm`, as `kubectl logs` gets it.
    pub fn logs(&self, name: &str) -> String {
        self.get(&format!("/containerLogs/default/{name}-{}/vm", self.node))
            .unwrap_or_default()
    }

    /// The console log once it contains `needle` (a guest prints while its probes already
    /// pass, and the kubelet may answer a request for logs with an error now and then).
    pub fn wait_logs(&self, name: &str, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.logs(name);
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in {name}'s log after {within:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Polls `check` on the pod until it holds; panics with the pod and the kubelet log.
    pub fn wait_pod(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.pod(name)
                && check(&p)
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name}: not {what} within {within:?}; it is:\n{}\nkubelet log (end):\n{}",
                serde_json::to_string_pretty(&self.pod(name)).unwrap_or_default(),
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
        // The kubelet bind-mounts its root dir (and mounts pod volumes under it): unmount
        // them, deepest first, so the test's temp dir can go.
        let root = self
            .opts
            .root_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("root"));
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| Path::new(p).starts_with(&root))
            .collect();
        points.sort_unstable_by(|a, b| b.cmp(a));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The pod's one container status.
pub fn container(pod: &serde_json::Value) -> &serde_json::Value {
    &pod["status"]["containerStatuses"][0]
}

pub fn is_ready(pod: &serde_json::Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

pub fn restarts(pod: &serde_json::Value) -> u64 {
    container(pod)["restartCount"].as_u64().unwrap_or(0)
}
