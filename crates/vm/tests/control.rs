//! virtlet's own monitor against a real QEMU: a VM started with `-S` runs after `resume`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use virtlet_vm::control;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu(dir: &Path) -> Qemu {
    let console = dir.join("vm.sock");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-machine", "pc", "-m", "64", "-nodefaults"])
        .args(["-display", "none", "-S"])
        .args(control::qemu_args(&control::socket_for(&console)))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("check.sock").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "qemu-system-x86_64 cannot run ({e}): install qemu-system-x86 (scripts/setup-host)"
            )
        });
    Qemu(child)
}

/// `query-status` on the test's own monitor.
async fn status(dir: &Path) -> String {
    let s = virtlet_vm::console::connect(&dir.join("check.sock"), Duration::from_secs(10))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    lines.next_line().await.unwrap();
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
        .await
        .unwrap();
    loop {
        let line = lines.next_line().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(s) = v["return"]["status"].as_str() {
            return s.to_owned();
        }
    }
}

#[tokio::test]
async fn a_paused_qemu_runs_after_resume_and_the_socket_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let _qemu = qemu(dir.path());
    assert_eq!(status(dir.path()).await, "prelaunch");
    let socket = control::socket_for(&dir.path().join("vm.sock"));
    control::resume(&socket, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status(dir.path()).await, "running");
    assert!(!socket.exists(), "the control socket is removed after use");
}

#[tokio::test]
async fn no_qemu_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.qmp");
    let err = control::resume(&socket, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("none.qmp"), "{err}");
}
