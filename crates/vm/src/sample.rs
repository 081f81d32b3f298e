//! A running VM's resource use as the host sees it, for CRI's metrics: libvirt's CPU and
//! balloon figures, and the QEMU process's own (its `/proc` entry, the cgroups libvirt made
//! for the domain, and the pod netns's interfaces, which QEMU lives in). The parsers are pure;
//! [`read_process`] is the one place that reads the files.

use std::path::{Path, PathBuf};

/// Counters of one network interface (`/proc/<pid>/net/dev`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// What the QEMU process and its cgroups say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub threads: u64,
    pub threads_max: u64,
    pub processes: u64,
    pub file_descriptors: u64,
    pub sockets: u64,
    pub rss_bytes: u64,
    pub swap_bytes: u64,
    /// From the domain's memory cgroup (v1), when it has one.
    pub memory: CgroupMemory,
    /// From the domain's cpu cgroup (v1 `cpu.stat`).
    pub cfs: CfsStat,
    /// The pod netns's interfaces (loopback left out).
    pub interfaces: Vec<NetCounters>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    pub usage_bytes: u64,
    pub max_usage_bytes: u64,
    pub failcnt: u64,
    pub cache_bytes: u64,
    pub rss_bytes: u64,
    pub mapped_file_bytes: u64,
    pub kernel_bytes: u64,
    pub inactive_file_bytes: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    pub oom_kills: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CfsStat {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

/// `Key: value kB` lines of `/proc/<pid>/status`: (threads, rss bytes, swap bytes).
pub fn parse_status(text: &str) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "Threads:" => out.0 = v,
            "VmRSS:" => out.1 = v * 1024,
            "VmSwap:" => out.2 = v * 1024,
            _ => {}
        }
    }
    out
}

/// `/proc/<pid>/net/dev`, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<NetCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            (v.len() >= 12).then(|| NetCounters {
                name: name.to_owned(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

/// `key value` lines (cgroup v1 `memory.stat`, `cpu.stat`, `memory.oom_control`).
fn kv(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

pub fn parse_cpu_stat(text: &str) -> CfsStat {
    CfsStat {
        periods: kv(text, "nr_periods"),
        throttled_periods: kv(text, "nr_throttled"),
        throttled_ns: kv(text, "throttled_time"),
    }
}

/// A cgroup v1 memory controller's files: `memory.stat` and the single-number files.
pub fn parse_memory(
    stat: &str,
    usage: &str,
    max_usage: &str,
    failcnt: &str,
    kmem: &str,
    oom: &str,
) -> CgroupMemory {
    let num = |s: &str| s.trim().parse().unwrap_or(0);
    CgroupMemory {
        usage_bytes: num(usage),
        max_usage_bytes: num(max_usage),
        failcnt: num(failcnt),
        cache_bytes: kv(stat, "total_cache").max(kv(stat, "cache")),
        rss_bytes: kv(stat, "total_rss").max(kv(stat, "rss")),
        mapped_file_bytes: kv(stat, "total_mapped_file").max(kv(stat, "mapped_file")),
        kernel_bytes: num(kmem),
        inactive_file_bytes: kv(stat, "total_inactive_file").max(kv(stat, "inactive_file")),
        pgfault: kv(stat, "total_pgfault").max(kv(stat, "pgfault")),
        pgmajfault: kv(stat, "total_pgmajfault").max(kv(stat, "pgmajfault")),
        oom_kills: kv(oom, "oom_kill"),
    }
}

/// The cgroup v1 directory of `controller` for the process, from `/proc/<pid>/cgroup`, with
/// a trailing `/emulator` (libvirt's thread group) taken off: the domain's own group.
pub fn cgroup_dir(proc_cgroup: &str, controller: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if !controllers.split(',').any(|c| c == controller) || path == "/" {
            return None;
        }
        let path = path.strip_suffix("/emulator").unwrap_or(path);
        Some(
            Path::new("/sys/fs/cgroup")
                .join(controllers)
                .join(path.trim_start_matches('/')),
        )
    })
}

/// Reads what the process `pid` and its cgroups say. Missing files give zeros: a VM under
/// libvirt's test driver, or a host without some controller, still answers.
pub fn read_process(pid: u32) -> ProcessSample {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (threads, rss_bytes, swap_bytes) = parse_status(&read(&proc.join("status")));
    let (mut fds, mut sockets) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(proc.join("fd")) {
        for e in entries.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    let cgroups = read(&proc.join("cgroup"));
    let memory = cgroup_dir(&cgroups, "memory")
        .map(|d| {
            parse_memory(
                &read(&d.join("memory.stat")),
                &read(&d.join("memory.usage_in_bytes")),
                &read(&d.join("memory.max_usage_in_bytes")),
                &read(&d.join("memory.failcnt")),
                &read(&d.join("memory.kmem.usage_in_bytes")),
                &read(&d.join("memory.oom_control")),
            )
        })
        .unwrap_or_default();
    let cfs = cgroup_dir(&cgroups, "cpu")
        .map(|d| parse_cpu_stat(&read(&d.join("cpu.stat"))))
        .unwrap_or_default();
    let threads_max = cgroup_dir(&cgroups, "pids")
        .and_then(|d| read(&d.join("pids.max")).trim().parse().ok())
        .unwrap_or_else(|| {
            read(Path::new("/proc/sys/kernel/threads-max"))
                .trim()
                .parse()
                .unwrap_or(0)
        });
    ProcessSample {
        threads,
        threads_max,
        processes: 1,
        file_descriptors: fds,
        sockets,
        rss_bytes,
        swap_bytes,
        memory,
        cfs,
        interfaces: parse_net_dev(&read(&proc.join("net/dev"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_and_net_dev() {
        assert_eq!(
            parse_status("Name:\tqemu\nThreads:\t6\nVmRSS:\t   49888 kB\nVmSwap:\t       2 kB\n"),
            (6, 49888 * 1024, 2048)
        );
        let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0:    1374      15    1    2    0     0          0         0      926      11    3    4    0     0       0          0
";
        assert_eq!(
            parse_net_dev(dev),
            [NetCounters {
                name: "eth0".into(),
                rx_bytes: 1374,
                rx_packets: 15,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 926,
                tx_packets: 11,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }

    #[test]
    fn cgroups_of_a_libvirt_domain() {
        let text = "9:name=systemd:/\n8:pids:/\n4:memory:/machine/qemu-68-vm.libvirt-qemu\n2:cpuacct:/\n1:cpu:/machine/qemu-68-vm.libvirt-qemu/emulator\n0::/x\n";
        assert_eq!(
            cgroup_dir(text, "memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/machine/qemu-68-vm.libvirt-qemu")
        );
        assert_eq!(
            cgroup_dir(text, "cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/machine/qemu-68-vm.libvirt-qemu")
        );
        assert_eq!(
            cgroup_dir(text, "pids"),
            None,
            "the root group is not the domain's"
        );
        assert_eq!(
            cgroup_dir("3:cpu,cpuacct:/m/d\n", "cpuacct").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/m/d")
        );
        assert_eq!(
            parse_cpu_stat("nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n"),
            CfsStat {
                periods: 10,
                throttled_periods: 2,
                throttled_ns: 5000
            }
        );
        let m = parse_memory(
            "cache 5\nrss 7\nmapped_file 1\ninactive_file 2\npgfault 9\npgmajfault 3\ntotal_cache 6\n",
            "100\n",
            "150\n",
            "0\n",
            "12\n",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        assert_eq!(
            (m.usage_bytes, m.max_usage_bytes, m.cache_bytes, m.rss_bytes),
            (100, 150, 6, 7)
        );
        assert_eq!(
            (m.kernel_bytes, m.pgfault, m.pgmajfault, m.oom_kills),
            (12, 9, 3, 1)
        );
    }

    #[test]
    fn reading_a_process_that_is_gone_gives_zeros() {
        let s = read_process(u32::MAX);
        assert_eq!(s.threads, 0);
        assert!(s.interfaces.is_empty());
    }
}
