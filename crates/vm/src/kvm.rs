//! Is KVM usable here? `/dev/kvm` existing is not enough: inside some VMs the device opens and
//! simple guests run, but real-mode and mode-switching code (what bootloaders do) dies with
//! "KVM internal error". So the probe boots a 512-byte guest of our own (`kvm_probe.asm`)
//! that does exactly that and exits QEMU with a known code. That code within the time limit
//! means KVM works.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_IMAGE: &[u8; 512] = include_bytes!("kvm_probe.img");
/// isa-debug-exit turns the guest's 0x2a into this exit status.
const PROBE_SUCCESS: i32 = (0x2a << 1) | 1;

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
    match run_probe_guest(qemu, "kvm").await {
        Ok(()) => KvmProbe {
            usable: true,
            detail: "a test guest ran under KVM".into(),
        },
        Err(why) => KvmProbe {
            usable: false,
            detail: format!("a test guest failed under KVM: {why}"),
        },
    }
}

/// Boots the probe guest with `accel` (`kvm` or `tcg`); Ok when it exits as designed.
pub async fn run_probe_guest(qemu: &Path, accel: &str) -> Result<(), String> {
    let mut image = tempfile_in_tmp().map_err(|e| format!("cannot write the probe image: {e}"))?;
    image
        .1
        .write_all(PROBE_IMAGE)
        .map_err(|e| format!("cannot write the probe image: {e}"))?;
    let drive = format!("file={},format=raw,if=ide", image.0.display());
    let child = Command::new(qemu)
        .args([
            "-accel",
            accel,
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
            "-device",
            "isa-debug-exit,iobase=0x501,iosize=1",
            "-drive",
            &drive,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = child.map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let mut stderr = child.stderr.take();
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
        // A broken KVM makes QEMU print an internal error and hang: stop at that output
        // instead of waiting out the timeout.
        let mut buf = vec![0u8; 4096];
        let mut seen = String::new();
        if let Some(err) = stderr.as_mut() {
            loop {
                tokio::select! {
                    n = err.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                            if seen.contains("error") {
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
    let _ = std::fs::remove_file(&image.0);
    match outcome {
        Ok((Some(status), _)) if status.code() == Some(PROBE_SUCCESS) => Ok(()),
        Ok((status, seen)) => Err(seen
            .lines()
            .find(|l| l.contains("error"))
            .map(str::trim)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("QEMU ended with {status:?}"))),
        Err(_) => Err(format!(
            "it did not finish within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

fn tempfile_in_tmp() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("virtlet-kvm-probe-{}-{n}.img", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe guest itself works (under TCG, which every machine has), so a KVM failure
    /// is KVM's, not the probe's.
    #[tokio::test]
    async fn the_probe_guest_runs_under_tcg() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        assert!(
            qemu.exists(),
            "qemu-system-x86_64 (Debian package qemu-system-x86) is needed"
        );
        assert_eq!(run_probe_guest(qemu, "tcg").await, Ok(()));
    }

    #[tokio::test]
    async fn disabled_skips_the_probe() {
        let p = probe(Path::new("/nonexistent"), true).await;
        assert!(!p.usable);
        assert!(p.detail.contains("--disable-kvm"));
    }
}
