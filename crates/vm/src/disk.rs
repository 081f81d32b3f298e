//! Disks made with Debian's `qemu-img`, the tool QEMU's own disks are made with: root disks
//! (a qcow2 overlay backed by the image, grown to the requested size), empty qcow2 volumes,
//! and an image written onto a block device after a header (a persistent root filesystem).

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("qemu-img {action} for {path} failed: {message}")]
pub struct DiskError {
    pub action: &'static str,
    pub path: String,
    pub message: String,
}

fn run(action: &'static str, path: &Path, cmd: &mut Command) -> Result<(), DiskError> {
    let err = |message: String| DiskError {
        action,
        path: path.display().to_string(),
        message,
    };
    let out = cmd.output().map_err(|e| {
        err(format!(
            "cannot run qemu-img (Debian package qemu-utils): {e}"
        ))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Creates `overlay` backed by `image` (of `image_format`), with at least `size` bytes of
/// virtual size when given and larger than the image's.
pub fn create_overlay(
    overlay: &Path,
    image: &Path,
    image_format: &str,
    image_virtual_size: u64,
    size: Option<u64>,
) -> Result<(), DiskError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", image_format, "-b"])
        .arg(image)
        .arg(overlay);
    if let Some(size) = size.filter(|s| *s > image_virtual_size) {
        cmd.arg(size.to_string());
    }
    run("create", overlay, &mut cmd)
}

/// Creates an empty qcow2 disk of `size` bytes.
pub fn create_qcow2(path: &Path, size: u64) -> Result<(), DiskError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string());
    run("create", path, &mut cmd)
}

/// Writes `image` (of `image_format`) as raw bytes onto the block device `device` from
/// `offset` on; the device is not resized or recreated.
pub fn write_raw_at(
    image: &Path,
    image_format: &str,
    device: &Path,
    offset: u64,
) -> Result<(), DiskError> {
    let target = format!(
        "driver=raw,offset={offset},file.driver=host_device,file.filename={}",
        device.display().to_string().replace(',', ",,")
    );
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-q", "-n", "-f", image_format])
        .arg(image)
        .args(["--target-image-opts", &target]);
    run("convert", device, &mut cmd)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overlays_grow_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M")
            .status()
            .expect("qemu-img (Debian package qemu-utils) is needed for this test");
        assert!(st.success());
        let o1 = dir.path().join("o1.qcow2");
        create_overlay(&o1, &base, "qcow2", 64 << 20, Some(1 << 30)).unwrap();
        let o2 = dir.path().join("o2.qcow2");
        create_overlay(&o2, &base, "qcow2", 64 << 20, Some(1 << 20)).unwrap();
        let size = |p: &Path| {
            let out = Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(p)
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["virtual-size"].as_u64().unwrap()
        };
        assert_eq!(size(&o1), 1 << 30);
        assert_eq!(size(&o2), 64 << 20, "never shrunk below the image");
        let err = create_overlay(
            &dir.path().join("x"),
            &dir.path().join("missing"),
            "qcow2",
            0,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
