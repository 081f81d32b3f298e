//! `virtlet-bench`: the measuring half of `bench/run`. Each subcommand runs virtlet (A) and its
//! baseline (B) interleaved, A B A B ..., and prints one JSON object with the raw times.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::Channel;

mod baseline;
mod cri;
mod forward;
mod volumes;

use baseline::*;
use cri::*;

const MARKER: &str = "VIRTLET-GUEST-READY";

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    socket: PathBuf,
    /// The VM image name to use (pulled already).
    #[arg(long, default_value = "")]
    image: String,
    /// Scratch directory for logs, overlays and seeds.
    #[arg(long)]
    work: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// RunPodSandbox + CreateContainer + StartContainer vs `virsh create` of the same XML.
    PodStart {
        #[arg(long, default_value_t = 8)]
        runs: usize,
    },
    /// RunPodSandbox to the guest's marker in the CRI log vs plain QEMU to the same marker.
    Ready {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The image file plain QEMU boots (the blob virtlet pulled).
        #[arg(long)]
        image_file: PathBuf,
    },
    /// N pods started at once until all are ready vs N plain QEMU boots at once.
    Parallel {
        #[arg(long, default_value_t = 8)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long)]
        image_file: PathBuf,
    },
    /// List/Status latency with many sandboxes (each with a created VM) present.
    Scale {
        #[arg(long, default_value_t = 1000)]
        sandboxes: usize,
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// The daemon's pid, for its RSS.
        #[arg(long)]
        pid: u32,
    },
    /// Through a standalone kubelet: a static pod's manifest written to the pod Running (as
    /// the kubelet reports it) and to the guest's marker in its log, vs `virsh create` of the
    /// same domain XML to the same marker on its console.
    Kubelet {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The kubelet's static pod folder.
        #[arg(long)]
        manifests: PathBuf,
        /// The kubelet's podLogsDir.
        #[arg(long)]
        pod_logs: PathBuf,
        /// The kubelet's API port (https on 127.0.0.1).
        #[arg(long)]
        port: u16,
        /// The kubelet's node name (static pods are named `<pod>-<node>`).
        #[arg(long)]
        node: String,
    },
    /// ExecSync of `true` through CRI vs the same through `virsh qemu-agent-command`
    /// (guest-exec, then guest-exec-status until it exited), interleaved; then the daemon's
    /// CPU time for a run of exec probes.
    Exec {
        #[arg(long, default_value_t = 200)]
        calls: usize,
        #[arg(long, default_value_t = 1000)]
        probes: usize,
        #[arg(long)]
        pid: u32,
    },
    /// A pod with four volumes (qcow2 and raw FlexVolumes, a block volume, a 9p emptyDir) vs
    /// the same pod with none: Run+Create+Start and to the guest's marker, per volume.
    Volumes {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The daemon's --kubelet-root-dir (where the volumes are laid out).
        #[arg(long)]
        kubelet_root: PathBuf,
    },
    /// CRI calls about container pods through virtlet (forwarded to containerd) vs against
    /// containerd directly; `--image` is the container image.
    Forward {
        /// containerd's CRI socket.
        #[arg(long)]
        direct: PathBuf,
        #[arg(long, default_value_t = 20)]
        pods: usize,
        #[arg(long, default_value_t = 500)]
        calls: usize,
    },
    /// Full pod lifecycles one after another; first vs last durations, and leaks afterwards.
    Steady {
        #[arg(long, default_value_t = 100)]
        cycles: usize,
        #[arg(long)]
        pid: u32,
        /// The daemon's VM and netns dirs, checked for leftovers.
        #[arg(long)]
        vm_dir: PathBuf,
        #[arg(long)]
        netns_dir: PathBuf,
    },
}

/// How many pods the scale benchmark creates (and removes) at a time.
const FILL_PARALLEL: usize = 4;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn wait_marker(path: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(MARKER)
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("no marker in {} within {timeout:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { 0.0 } else { s[s.len() / 2] }
}

fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else {
        s[((s.len() as f64 * 0.99).ceil() as usize)
            .saturating_sub(1)
            .min(s.len() - 1)]
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, in milliseconds (from /proc, in clock ticks).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 0 is field 3 (state).
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    (ticks(11) + ticks(12)) * 1000.0 / hz
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Logs are appended to: a marker left by an earlier run must not count.
    let _ = std::fs::remove_dir_all(cli.work.join("logs"));
    std::fs::create_dir_all(&cli.work)?;
    let ch = virtlet_cri::connect_unix(&cli.socket).await?;
    let mut cri = Cri {
        rt: RuntimeServiceClient::new(ch.clone()),
        img: ImageServiceClient::new(ch),
    };
    let logs = cli.work.join("logs");
    let out = match cli.cmd {
        Cmd::PodStart { runs } => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for i in 0..runs + 1 {
                let name = format!("start{i}");
                let t = Instant::now();
                let (pod, c) = cri.pod(&name, &cli.image, &logs.join(&name), true).await?;
                let da = t.elapsed();
                let domain = cri.domain_of(&c).await?;
                // The same domain, defined by hand: its own disks and console, no netns.
                let xml = virsh(&["dumpxml", "--inactive", &domain])?;
                let root = overlay(&cli.work, &name, &blob_of(&xml)?)?;
                let seed_copy = cli.work.join(format!("{name}-seed.img"));
                std::fs::copy(seed_path_of(&xml)?, &seed_copy)?;
                let xml = rewrite_for_baseline(
                    &xml,
                    &format!("{domain}-base"),
                    &root,
                    &seed_copy,
                    &cli.work.join(format!("{name}.sock")),
                )?;
                cri.remove_pod(&pod).await?;
                let file = cli.work.join(format!("{name}.xml"));
                std::fs::write(&file, xml)?;
                let t = Instant::now();
                virsh(&["create", &file.display().to_string()])?;
                let db = t.elapsed();
                virsh(&["destroy", &format!("{domain}-base")])?;
                if i > 0 {
                    // The first pair warms caches.
                    a.push(secs(da));
                    b.push(secs(db));
                }
            }
            json!({ "virtlet_s": a, "baseline_s": b })
        }
        Cmd::Kubelet {
            runs,
            manifests,
            pod_logs,
            port,
            node,
        } => {
            let (mut running, mut ready, mut base) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..runs + 1 {
                let name = format!("kb{i}");
                let manifest = manifests.join(format!("{name}.yaml"));
                let t = Instant::now();
                std::fs::write(
                    &manifest,
                    format!(
                        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n    kubernetes.io/target-runtime: virtlet.cloud\nspec:\n  containers:\n  - name: vm\n    image: {}\n    imagePullPolicy: IfNotPresent\n",
                        cli.image
                    ),
                )?;
                let full = format!("{name}-{node}");
                let uid = loop {
                    if let Some((phase, uid)) = kubelet_pod(port, &full)?
                        && phase == "Running"
                    {
                        break uid;
                    }
                    anyhow::ensure!(
                        t.elapsed() < Duration::from_secs(120),
                        "{full} is not Running after 120 s"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                let t_running = t.elapsed();
                let log = pod_logs
                    .join(format!("default_{full}_{uid}"))
                    .join("vm")
                    .join("0.log");
                wait_marker(&log, Duration::from_secs(180)).await?;
                let t_ready = t.elapsed();
                // The same VM by hand: its domain XML, its own disks, the console to a file.
                let c = cri.container_of_pod(&full).await?;
                let domain = cri.domain_of(&c).await?;
                let xml = virsh(&["dumpxml", "--inactive", &domain])?;
                let root = overlay(&cli.work, &name, &blob_of(&xml)?)?;
                let seed_copy = cli.work.join(format!("{name}-seed.img"));
                std::fs::copy(seed_path_of(&xml)?, &seed_copy)?;
                let serial = cli.work.join(format!("{name}-serial.log"));
                let _ = std::fs::remove_file(&serial);
                let xml = console_to_file(
                    &rewrite_for_baseline(
                        &xml,
                        &format!("{domain}-base"),
                        &root,
                        &seed_copy,
                        &cli.work.join(format!("{name}.sock")),
                    )?,
                    &serial,
                )?;
                std::fs::remove_file(&manifest)?;
                let gone = Instant::now();
                while kubelet_pod(port, &full)?.is_some() || cri.has_pod(&full).await? {
                    anyhow::ensure!(
                        gone.elapsed() < Duration::from_secs(120),
                        "{full} was not removed"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let file = cli.work.join(format!("{name}.xml"));
                std::fs::write(&file, xml)?;
                let t = Instant::now();
                virsh(&["create", &file.display().to_string()])?;
                let r = wait_marker(&serial, Duration::from_secs(180)).await;
                let t_base = t.elapsed();
                virsh(&["destroy", &format!("{domain}-base")])?;
                r?;
                eprintln!(
                    "kubelet run {i}: Running {:.2} s, ready {:.2} s; virsh create to ready {:.2} s",
                    secs(t_running),
                    secs(t_ready),
                    secs(t_base)
                );
                if i > 0 {
                    running.push(secs(t_running));
                    ready.push(secs(t_ready));
                    base.push(secs(t_base));
                }
            }
            json!({ "running_s": running, "virtlet_s": ready, "baseline_s": base })
        }
        Cmd::Volumes { runs, kubelet_root } => {
            volumes::run(&mut cri, &cli.image, &cli.work, &kubelet_root, runs).await?
        }
        Cmd::Forward {
            direct,
            pods,
            calls,
        } => forward::run(&mut cri, &direct, &cli.image, &cli.work, pods, calls).await?,
        Cmd::Exec { calls, probes, pid } => {
            let name = "exec0";
            let (pod, c) = cri.pod(name, &cli.image, &logs.join(name), true).await?;
            wait_marker(&logs.join(name).join("vm.log"), Duration::from_secs(180)).await?;
            let domain = cri.domain_of(&c).await?;
            // Warm-up: the first of each starts the agent's and libvirt's caches.
            cri.exec_true(&c).await?;
            baseline::agent_true(&domain)?;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..calls {
                let t = Instant::now();
                cri.exec_true(&c).await?;
                a.push(secs(t.elapsed()));
                let t = Instant::now();
                baseline::agent_true(&domain)?;
                b.push(secs(t.elapsed()));
            }
            let before = cpu_ms(pid);
            let t = Instant::now();
            for _ in 0..probes {
                cri.exec_true(&c).await?;
            }
            let took = t.elapsed();
            let cpu = cpu_ms(pid) - before;
            cri.remove_pod(&pod).await?;
            json!({
                "virtlet_s": a,
                "baseline_s": b,
                "probes": probes,
                "probes_s": secs(took),
                "cpu_ms_per_1000": cpu * 1000.0 / probes.max(1) as f64,
            })
        }
        Cmd::Ready { runs, image_file } => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for i in 0..runs {
                let name = format!("ready{i}");
                let t = Instant::now();
                let (pod, _c) = cri.pod(&name, &cli.image, &logs.join(&name), true).await?;
                wait_marker(&logs.join(&name).join("vm.log"), Duration::from_secs(180)).await?;
                a.push(secs(t.elapsed()));
                cri.remove_pod(&pod).await?;
                let t = Instant::now();
                let (mut child, serial) =
                    plain_qemu(&cli.work, &format!("{name}-base"), &image_file)?;
                let r = wait_marker(&serial, Duration::from_secs(180)).await;
                b.push(secs(t.elapsed()));
                let _ = child.kill();
                let _ = child.wait();
                r?;
            }
            json!({ "virtlet_s": a, "baseline_s": b })
        }
        Cmd::Parallel {
            count,
            rounds,
            image_file,
        } => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                let t = Instant::now();
                let mut pods = Vec::new();
                let mut starts = Vec::new();
                for i in 0..count {
                    let name = format!("par{r}x{i}");
                    let mut c2 = Cri {
                        rt: cri.rt.clone(),
                        img: cri.img.clone(),
                    };
                    let log_dir = logs.join(&name);
                    let image = cli.image.clone();
                    starts.push(tokio::spawn(async move {
                        c2.pod(&name, &image, &log_dir, true).await
                    }));
                }
                for s in starts {
                    pods.push(s.await??.0);
                }
                for i in 0..count {
                    wait_marker(
                        &logs.join(format!("par{r}x{i}")).join("vm.log"),
                        Duration::from_secs(600),
                    )
                    .await?;
                }
                a.push(secs(t.elapsed()));
                for p in pods {
                    cri.remove_pod(&p).await?;
                }
                let t = Instant::now();
                let mut children = Vec::new();
                for i in 0..count {
                    children.push(plain_qemu(&cli.work, &format!("par{r}b{i}"), &image_file)?);
                }
                let mut res = Ok(());
                for (_, serial) in &children {
                    res = res.and(wait_marker(serial, Duration::from_secs(600)).await);
                }
                b.push(secs(t.elapsed()));
                for (mut c, _) in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                res?;
            }
            json!({ "virtlet_s": a, "baseline_s": b, "count": count })
        }
        Cmd::Scale {
            sandboxes,
            calls,
            pid,
        } => {
            let rss_before = rss_kib(pid);
            let mut pods = Vec::new();
            let mut containers = Vec::new();
            let t = Instant::now();
            // Filled a few at a time: the daemon serves calls on different pods in parallel,
            // and one at a time the fill alone took about 5 minutes.
            let names: Vec<usize> = (0..sandboxes).collect();
            for chunk in names.chunks(FILL_PARALLEL) {
                let mut set = tokio::task::JoinSet::new();
                for &i in chunk {
                    let mut c = cri.clone();
                    let (image, logs) = (cli.image.clone(), logs.clone());
                    set.spawn(
                        async move { c.pod(&format!("scale{i}"), &image, &logs, false).await },
                    );
                }
                while let Some(r) = set.join_next().await {
                    let (p, c) = r??;
                    pods.push(p);
                    containers.push(c);
                }
            }
            let fill = t.elapsed();
            let rss = rss_kib(pid);
            let mut lat: HashMap<&str, Vec<f64>> = HashMap::new();
            for i in 0..calls {
                let p = &pods[i % pods.len()];
                let c = &containers[i % containers.len()];
                let t = Instant::now();
                cri.rt
                    .list_pod_sandbox(api::ListPodSandboxRequest::default())
                    .await?;
                lat.entry("ListPodSandbox")
                    .or_default()
                    .push(secs(t.elapsed()) * 1000.0);
                let t = Instant::now();
                cri.rt
                    .list_containers(api::ListContainersRequest::default())
                    .await?;
                lat.entry("ListContainers")
                    .or_default()
                    .push(secs(t.elapsed()) * 1000.0);
                let t = Instant::now();
                cri.rt
                    .pod_sandbox_status(api::PodSandboxStatusRequest {
                        pod_sandbox_id: p.clone(),
                        verbose: false,
                    })
                    .await?;
                lat.entry("PodSandboxStatus")
                    .or_default()
                    .push(secs(t.elapsed()) * 1000.0);
                let t = Instant::now();
                cri.rt
                    .container_status(api::ContainerStatusRequest {
                        container_id: c.clone(),
                        verbose: false,
                    })
                    .await?;
                lat.entry("ContainerStatus")
                    .or_default()
                    .push(secs(t.elapsed()) * 1000.0);
            }
            for chunk in pods.chunks(FILL_PARALLEL) {
                let mut set = tokio::task::JoinSet::new();
                for p in chunk {
                    let mut c = cri.clone();
                    let p = p.clone();
                    set.spawn(async move { c.remove_pod(&p).await });
                }
                while let Some(r) = set.join_next().await {
                    r??;
                }
            }
            let summary: serde_json::Map<String, serde_json::Value> = lat
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        json!({ "p50_ms": median(v), "p99_ms": p99(v) }),
                    )
                })
                .collect();
            json!({
                "sandboxes": sandboxes, "calls": calls, "fill_s": secs(fill),
                "rss_kib_before": rss_before, "rss_kib": rss, "latency": summary,
            })
        }
        Cmd::Steady {
            cycles,
            pid,
            vm_dir,
            netns_dir,
        } => {
            let fds_before = fds(pid);
            let mut times = Vec::new();
            for i in 0..cycles {
                let name = format!("steady{i}");
                let t = Instant::now();
                let (pod, c) = cri.pod(&name, &cli.image, &logs.join(&name), true).await?;
                cri.rt
                    .stop_container(api::StopContainerRequest {
                        container_id: c.clone(),
                        timeout: 0,
                    })
                    .await?;
                cri.rt
                    .remove_container(api::RemoveContainerRequest { container_id: c })
                    .await?;
                cri.remove_pod(&pod).await?;
                times.push(secs(t.elapsed()));
                let _ = std::fs::remove_dir_all(logs.join(&name));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let domains = virsh(&["list", "--all", "--name"])?
                .lines()
                .filter(|l| l.starts_with("virtlet-"))
                .count();
            let count = |d: &Path| std::fs::read_dir(d).map(|e| e.count()).unwrap_or(0);
            let pods = cri
                .rt
                .list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items
                .len();
            let first = median(&times[..10.min(times.len())]);
            let last = median(&times[times.len().saturating_sub(10)..]);
            json!({
                "cycles": cycles, "first10_median_s": first, "last10_median_s": last,
                "ratio": if first > 0.0 { last / first } else { 0.0 },
                "leaked": { "domains": domains, "vm_dir_entries": count(&vm_dir), "netns": count(&netns_dir),
                            "pods": pods, "fds_before": fds_before, "fds_after": fds(pid) },
            })
        }
    };
    println!("{out}");
    Ok(())
}

/// The phase and UID of a pod the kubelet at `port` reports, if it knows the pod.
fn kubelet_pod(port: u16, name: &str) -> Result<Option<(String, String)>> {
    let out = run(Command::new("curl").args([
        "-sk",
        "--max-time",
        "5",
        &format!("https://127.0.0.1:{port}/pods"),
    ]))?;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(list["items"].as_array().and_then(|items| {
        items
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .map(|p| {
                (
                    p["status"]["phase"].as_str().unwrap_or("").to_owned(),
                    p["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                )
            })
    }))
}
