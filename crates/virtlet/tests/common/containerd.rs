//! Debian's containerd for tests, started and stopped by `scripts/containerd` (its own state
//! dir, socket, bridge and subnet; the busybox test images imported).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::vm::repo_root;

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    bridge: String,
    subnet: String,
}

/// The image containerd's test pods run (busybox-static, every applet).
pub const BUSYBOX: &str = "docker.io/library/busybox:local";
/// busybox's httpd on port 80 serving `/www`.
pub const WEBSERVER: &str = "docker.io/library/webserver:local";

impl Containerd {
    /// Starts containerd with state in `dir`, pods on `bridge` in `subnet`.
    pub fn start(dir: &Path, bridge: &str, subnet: &str) -> Containerd {
        let mut c = Containerd {
            dir: dir.to_owned(),
            socket: PathBuf::new(),
            bridge: bridge.to_owned(),
            subnet: subnet.to_owned(),
        };
        c.up();
        c
    }

    /// Starts containerd again after [`Self::kill`], on the same config and state, as a
    /// supervisor would (`scripts/containerd start` would clean up the crashed instance).
    pub fn restart(&self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let mut child = Command::new("setsid")
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(self.dir.join("containerd.pid"), child.id().to_string()).unwrap();
        std::thread::spawn(move || child.wait());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let up = Command::new("ctr")
                .arg("-a")
                .arg(&self.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn up(&mut self) {
        let out = self
            .script("start")
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/containerd: {e}"));
        assert!(
            out.status.success(),
            "scripts/containerd start failed (it needs the containerd, runc and umoci packages scripts/setup-host installs):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        self.socket = PathBuf::from(socket);
        assert!(self.socket.exists(), "no socket at {:?}", self.socket);
    }

    /// SIGKILLs containerd itself (its shims and containers keep running), as in a crash.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("containerd.pid")).unwrap();
        let ok = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot kill containerd {pid}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", pid.trim())).exists() {
            assert!(std::time::Instant::now() < deadline, "containerd lives on");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to containerd itself.
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join("containerd.pid")).unwrap();
        let ok = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot send {signal} to containerd {pid}");
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn script(&self, verb: &str) -> Command {
        let mut cmd = Command::new(repo_root().join("scripts/containerd"));
        cmd.arg(verb)
            .arg(&self.dir)
            .env("CONTAINERD_BRIDGE", &self.bridge)
            .env("CONTAINERD_SUBNET", &self.subnet);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        match self.script("stop").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "scripts/containerd stop failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/containerd stop: {e}"),
        }
    }
}
