//! `volumes`: a pod with four volumes (a qcow2 FlexVolume, a raw FlexVolume, a block
//! volume, a 9p emptyDir) against the same pod with none, interleaved: Run+Create+Start, and
//! RunPodSandbox to the guest's marker (the guest formats and mounts the disks first). The
//! volumes are laid out as the kubelet leaves them (FlexVolume directories with virtlet's
//! description, an emptyDir directory) before the timed calls; the loop devices are made once.

use super::*;

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, size: u64) -> Result<Loop> {
        std::fs::File::create(file)?.set_len(size)?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .context("losetup (util-linux)")?;
        anyhow::ensure!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The container config of run `name`: with the four volumes, or none.
fn config(
    image: &str,
    kubelet_root: &Path,
    name: &str,
    loops: Option<(&Loop, &Loop)>,
) -> Result<api::ContainerConfig> {
    let mut c = container_config(image);
    let Some((raw, block)) = loops else {
        return Ok(c);
    };
    let volumes = kubelet_root.join(format!("bench-{name}/volumes"));
    let flex = |vol: &str, options: String| -> Result<api::Mount> {
        let dir = volumes.join("virtlet~flexvolume_driver").join(vol);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("virtlet-flexvolume.json"), options)?;
        Ok(api::Mount {
            host_path: dir.display().to_string(),
            container_path: format!("/mnt/{vol}"),
            ..Default::default()
        })
    };
    let empty_dir = volumes.join("kubernetes.io~empty-dir/scratch");
    std::fs::create_dir_all(&empty_dir)?;
    c.mounts = vec![
        flex("qcow", r#"{"type":"qcow2","capacity":"64Mi"}"#.into())?,
        flex("raw", format!(r#"{{"type":"raw","path":"{}"}}"#, raw.0))?,
        api::Mount {
            host_path: empty_dir.display().to_string(),
            container_path: "/scratch".into(),
            ..Default::default()
        },
    ];
    c.devices = vec![api::Device {
        host_path: block.0.clone(),
        container_path: "/dev/data".into(),
        permissions: "mrw".into(),
    }];
    Ok(c)
}

pub(crate) async fn run(
    cri: &mut Cri,
    image: &str,
    work: &Path,
    kubelet_root: &Path,
    runs: usize,
) -> Result<serde_json::Value> {
    let raw = Loop::new(&work.join("raw.img"), 64 << 20)?;
    let st = Command::new("mkfs.ext4").args(["-q", &raw.0]).status()?;
    anyhow::ensure!(st.success(), "mkfs.ext4 failed");
    let block = Loop::new(&work.join("block.img"), 64 << 20)?;
    let logs = work.join("logs");
    let (mut start, mut ready) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for i in 0..=runs {
        for (k, loops) in [None, Some((&raw, &block))].into_iter().enumerate() {
            let name = format!("vol{i}-{k}");
            let container = config(image, kubelet_root, &name, loops)?;
            let t = Instant::now();
            let (pod, _) = cri
                .pod_with(&name, container, &logs.join(&name), true)
                .await?;
            let started = t.elapsed();
            wait_marker(&logs.join(&name).join("vm.log"), Duration::from_secs(180)).await?;
            let up = t.elapsed();
            cri.remove_pod(&pod).await?;
            // The first pair warms caches.
            if i > 0 {
                start[k].push(secs(started));
                ready[k].push(secs(up));
            }
        }
    }
    let per_volume = |v: &[Vec<f64>; 2]| (median(&v[1]) - median(&v[0])) / 4.0;
    Ok(json!({
        "volumes": 4,
        "start_none_s": start[0], "start_with_s": start[1],
        "ready_none_s": ready[0], "ready_with_s": ready[1],
        "start_per_volume_s": per_volume(&start),
        "ready_per_volume_s": per_volume(&ready),
    }))
}
