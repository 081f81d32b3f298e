//! Is KVM usable here? `/dev/kvm` existing is not enough (inside some VMs the device opens
//! but every guest dies with "KVM internal error"), so the probe runs a throwaway guest: QEMU
//! with KVM, no disks, SeaBIOS finding nothing to boot and rebooting at once, `-no-reboot`
//! making that an exit. A clean exit within the time limit means KVM works.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    pub usable: bool,
    /// Why not, or how it was decided.
    pub detail: String,
}

/// Probes KVM with `qemu` (the QEMU binary). `disabled` (the node's `--disable-kvm`) skips it.
pub async fn probe(qemu: &Path, disabled: bool) -> KvmProbe {
    if disabled {
        return KvmProbe {
            usable: false,
            detail: "disabled by --disable-kvm".into(),
        };
    }
    if !Path::new("/dev/kvm").exists() {
        return KvmProbe {
            usable: false,
            detail: "/dev/kvm does not exist".into(),
        };
    }
    let child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "32",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-boot",
            "strict=on,reboot-timeout=0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return KvmProbe {
                usable: false,
                detail: format!("cannot run {}: {e}", qemu.display()),
            };
        }
    };
    let mut stderr = child.stderr.take();
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
        // A broken KVM makes QEMU print an internal error and hang paused: stop at the first
        // error output instead of waiting out the timeout.
        let mut buf = vec![0u8; 4096];
        let mut seen = String::new();
        if let Some(err) = stderr.as_mut() {
            loop {
                tokio::select! {
                    n = err.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                            if seen.contains("error") || seen.contains("failed") {
                                return (None, seen);
                            }
                        }
                    },
                    status = child.wait() => return (status.ok(), seen),
                }
            }
        }
        (child.wait().await.ok(), seen)
    })
    .await;
    let _ = child.start_kill();
    match outcome {
        Ok((Some(status), _)) if status.success() => KvmProbe {
            usable: true,
            detail: "a test guest ran under KVM".into(),
        },
        Ok((_, seen)) => KvmProbe {
            usable: false,
            detail: format!(
                "a test guest failed under KVM: {}",
                seen.lines()
                    .next()
                    .unwrap_or("QEMU exited with an error")
                    .trim()
            ),
        },
        Err(_) => KvmProbe {
            usable: false,
            detail: format!(
                "a test guest did not finish under KVM within {} s",
                PROBE_TIMEOUT.as_secs()
            ),
        },
    }
}
