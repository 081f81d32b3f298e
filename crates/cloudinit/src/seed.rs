//! Writes the seed disk: an ISO9660 image (with Joliet and Rock Ridge) made by Debian's
//! `xorriso`, the standard tool for this, from the files laid out in a temporary directory.

use std::path::Path;
use std::process::Command;

use crate::generate::{CloudInitData, CloudInitError, seed_files};

/// Writes `data` as an ISO9660 seed at `out` (replaced if present).
pub fn write_iso(data: &CloudInitData, out: &Path) -> Result<(), CloudInitError> {
    let err = |reason: String| CloudInitError::Seed {
        path: out.display().to_string(),
        reason,
    };
    let parent = out
        .parent()
        .ok_or_else(|| err("no parent directory".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
    let staging = parent.join(format!(
        ".{}.d",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| {
        for (rel, content) in seed_files(data) {
            let path = staging.join(&rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            std::fs::write(&path, content).map_err(|e| err(e.to_string()))?;
        }
        let _ = std::fs::remove_file(out);
        let output = Command::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-quiet",
                "-J",
                "-r",
                "-V",
                data.kind.label(),
                "-o",
            ])
            .arg(out)
            .arg(&staging)
            .output()
            .map_err(|e| err(format!("cannot run xorriso (Debian package xorriso): {e}")))?;
        if !output.status.success() {
            return Err(err(String::from_utf8_lossy(&output.stderr)
                .trim()
                .to_owned()));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}
