//! Writes the seed disk: a FAT image made with Debian's dosfstools and mtools (`mkfs.vfat -C`,
//! `mmd`, `mcopy`), which build it as a file without mounting anything. FAT rather than
//! ISO9660: both are valid seeds for cloud-init and the reference, and this takes about 30 ms
//! where `xorriso` took about 130 ms of every pod start (measured, see bench/README.md).
//! FAT labels are upper case: `CIDATA` and `CONFIG-2`, which cloud-init looks for as well.

use std::path::Path;
use std::process::Command;

use crate::generate::{CloudInitData, CloudInitError, seed_files};

fn run(cmd: &mut Command, err: &dyn Fn(String) -> CloudInitError) -> Result<(), CloudInitError> {
    let output = cmd.output().map_err(|e| {
        err(format!(
            "cannot run {cmd:?} (Debian packages dosfstools, mtools): {e}"
        ))
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Writes `data` as a FAT seed image at `out` (replaced if present).
pub fn write_seed(data: &CloudInitData, out: &Path) -> Result<(), CloudInitError> {
    let err = |reason: String| CloudInitError::Seed {
        path: out.display().to_string(),
        reason,
    };
    let files = seed_files(data);
    let content: usize = files.iter().map(|(_, c)| c.len()).sum();
    // Room for the content, FAT overhead and rounding to clusters.
    let size_kib = (content / 1024 * 5 / 4 + 1024).max(1024);
    let _ = std::fs::remove_file(out);
    let result = (|| {
        let label = data.kind.label().to_ascii_uppercase();
        run(
            Command::new("mkfs.vfat")
                .args(["-C", "-n", &label])
                .arg(out)
                .arg(size_kib.to_string()),
            &err,
        )?;
        let mut dirs: Vec<String> = Vec::new();
        for (rel, _) in &files {
            let mut prefix = String::new();
            for part in rel
                .split('/')
                .rev()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                prefix = format!("{prefix}/{part}");
                if !dirs.contains(&prefix) {
                    dirs.push(prefix.clone());
                }
            }
        }
        for dir in &dirs {
            run(
                Command::new("mmd")
                    .arg("-i")
                    .arg(out)
                    .arg(format!("::{dir}")),
                &err,
            )?;
        }
        let staging = out.with_extension("d");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| err(e.to_string()))?;
        let copied = (|| {
            for (i, (rel, bytes)) in files.iter().enumerate() {
                let src = staging.join(i.to_string());
                std::fs::write(&src, bytes).map_err(|e| err(e.to_string()))?;
                run(
                    Command::new("mcopy")
                        .arg("-i")
                        .arg(out)
                        .arg(&src)
                        .arg(format!("::/{rel}")),
                    &err,
                )?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&staging);
        copied
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}
