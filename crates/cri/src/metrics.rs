//! CRI metrics (`ListMetricDescriptors`, `ListPodSandboxMetrics`): cAdvisor's container
//! metric names, for each VM from what the host sees of it (libvirt's figures, the QEMU
//! process and its cgroups, the pod netns's interfaces, the root disk's filesystem). Built by
//! pure functions from a [`Sample`]; label keys are sorted and values follow them, as CRI asks.

use k8s_cri::v1 as api;

/// Labels every container metric has, sorted.
const BASE: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Interface,
    Device,
    Failure,
    Blkio,
}

impl Extra {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Extra::None => &[],
            Extra::Interface => &["interface"],
            Extra::Device => &["device"],
            Extra::Failure => &["failure_type", "scope"],
            Extra::Blkio => &["device", "major", "minor", "operation"],
        }
    }
}

struct Desc {
    name: &'static str,
    help: &'static str,
    extra: Extra,
}

macro_rules! d {
    ($name:literal, $help:literal) => {
        Desc {
            name: $name,
            help: $help,
            extra: Extra::None,
        }
    };
    ($name:literal, $help:literal, $extra:ident) => {
        Desc {
            name: $name,
            help: $help,
            extra: Extra::$extra,
        }
    };
}

const DESCRIPTORS: &[Desc] = &[
    d!(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage of the VM's root disk",
        Blkio
    ),
    d!(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals of the VM's cgroup"
    ),
    d!(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals of the VM's cgroup"
    ),
    d!(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the VM's cgroup has been throttled, in seconds"
    ),
    d!(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time the VM consumed, in seconds"
    ),
    d!(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time the VM consumed, in seconds"
    ),
    d!(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time the VM consumed, in seconds"
    ),
    d!(
        "container_file_descriptors",
        "Number of open file descriptors of the VM's QEMU process"
    ),
    d!(
        "container_fs_inodes_free",
        "Number of available inodes on the filesystem of the VM's root disk",
        Device
    ),
    d!(
        "container_fs_inodes_total",
        "Number of inodes on the filesystem of the VM's root disk",
        Device
    ),
    d!(
        "container_fs_limit_bytes",
        "Bytes the filesystem of the VM's root disk can hold",
        Device
    ),
    d!(
        "container_fs_reads_bytes_total",
        "Cumulative bytes the VM read from its root disk",
        Device
    ),
    d!(
        "container_fs_reads_total",
        "Cumulative count of reads the VM made from its root disk",
        Device
    ),
    d!(
        "container_fs_usage_bytes",
        "Bytes the VM's root disk takes on the host",
        Device
    ),
    d!(
        "container_fs_writes_bytes_total",
        "Cumulative bytes the VM wrote to its root disk",
        Device
    ),
    d!(
        "container_fs_writes_total",
        "Cumulative count of writes the VM made to its root disk",
        Device
    ),
    d!(
        "container_last_seen",
        "Last time the VM was seen by virtlet, in seconds since the epoch"
    ),
    d!(
        "container_memory_cache",
        "Page cache of the VM's cgroup, in bytes"
    ),
    d!(
        "container_memory_failcnt",
        "Number of memory usage hits limits of the VM's cgroup"
    ),
    d!(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults) of the VM's cgroup",
        Failure
    ),
    d!(
        "container_memory_kernel_usage",
        "Kernel memory of the VM's cgroup, in bytes"
    ),
    d!(
        "container_memory_mapped_file",
        "Size of memory mapped files of the VM's cgroup, in bytes"
    ),
    d!(
        "container_memory_max_usage_bytes",
        "Maximum memory usage of the VM's cgroup, in bytes"
    ),
    d!("container_memory_rss", "Size of RSS of the VM, in bytes"),
    d!(
        "container_memory_swap",
        "Swap the VM's QEMU process uses, in bytes"
    ),
    d!(
        "container_memory_usage_bytes",
        "Memory the VM uses, including page cache, in bytes"
    ),
    d!(
        "container_memory_working_set_bytes",
        "Working set of the VM, in bytes"
    ),
    d!(
        "container_network_receive_bytes_total",
        "Cumulative bytes received on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_receive_errors_total",
        "Cumulative errors receiving on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_receive_packets_dropped_total",
        "Cumulative packets dropped receiving on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_receive_packets_total",
        "Cumulative packets received on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_transmit_bytes_total",
        "Cumulative bytes sent on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_transmit_errors_total",
        "Cumulative errors sending on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_transmit_packets_dropped_total",
        "Cumulative packets dropped sending on the pod's interfaces",
        Interface
    ),
    d!(
        "container_network_transmit_packets_total",
        "Cumulative packets sent on the pod's interfaces",
        Interface
    ),
    d!(
        "container_oom_events_total",
        "Count of out of memory events of the VM's cgroup"
    ),
    d!(
        "container_processes",
        "Number of processes running the VM (its QEMU process)"
    ),
    d!(
        "container_sockets",
        "Number of open sockets of the VM's QEMU process"
    ),
    d!(
        "container_spec_cpu_period",
        "CPU period of the container's resources"
    ),
    d!(
        "container_spec_cpu_shares",
        "CPU shares of the container's resources"
    ),
    d!(
        "container_spec_memory_limit_bytes",
        "Memory limit of the container's resources (0: the default VM memory)"
    ),
    d!(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit of the container's resources"
    ),
    d!(
        "container_start_time_seconds",
        "Start time of the VM, in seconds since the epoch"
    ),
    d!(
        "container_threads",
        "Number of threads of the VM's QEMU process"
    ),
    d!(
        "container_threads_max",
        "Maximum number of threads the VM's cgroup allows"
    ),
];

fn sorted_keys(extra: Extra) -> Vec<String> {
    let mut keys: Vec<String> = BASE
        .iter()
        .chain(extra.keys())
        .map(|k| (*k).to_owned())
        .collect();
    keys.sort();
    keys
}

/// Every metric virtlet reports, with its help and label keys.
pub fn descriptors() -> Vec<api::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| api::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: sorted_keys(d.extra),
        })
        .collect()
}

/// What one running VM's metrics are made of.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub container: String,
    pub id: String,
    pub image: String,
    pub domain: String,
    pub namespace: String,
    pub pod: String,
    pub vm: virtlet_vm::VmSample,
    /// The root disk's file, reported as the filesystem `device`.
    pub root_disk: String,
    pub fs_capacity_bytes: u64,
    pub fs_inodes_total: u64,
    pub fs_inodes_free: u64,
    pub cpu_period: i64,
    pub cpu_shares: i64,
    pub memory_limit_bytes: i64,
    pub memory_swap_limit_bytes: i64,
    pub started_at_ns: i64,
    pub now_ns: i64,
}

struct Out<'a> {
    sample: &'a Sample,
    metrics: Vec<api::Metric>,
}

impl Out<'_> {
    /// One value of `name` with the extra labels `extra` (key, value), any order.
    fn put(&mut self, name: &str, kind: api::MetricType, value: u64, extra: &[(&str, &str)]) {
        let s = self.sample;
        let mut labels: Vec<(&str, &str)> = vec![
            ("container", &s.container),
            ("id", &s.id),
            ("image", &s.image),
            ("name", &s.domain),
            ("namespace", &s.namespace),
            ("pod", &s.pod),
        ];
        labels.extend_from_slice(extra);
        labels.sort_by_key(|(k, _)| *k);
        self.metrics.push(api::Metric {
            name: name.to_owned(),
            timestamp: 0,
            metric_type: kind as i32,
            label_values: labels.into_iter().map(|(_, v)| v.to_owned()).collect(),
            value: Some(api::UInt64Value { value }),
        });
    }
}

fn secs(ns: u64) -> u64 {
    ns / 1_000_000_000
}

fn pos(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The metrics of one running VM (pure). Optional ones virtlet cannot measure (block I/O
/// counters) are described but not reported.
pub fn container_metrics(s: &Sample) -> Vec<api::Metric> {
    use api::MetricType::{Counter as C, Gauge as G};
    let p = &s.vm.process;
    let m = &p.memory;
    let mut out = Out {
        sample: s,
        metrics: Vec::new(),
    };
    out.put("container_cpu_cfs_periods_total", C, p.cfs.periods, &[]);
    out.put(
        "container_cpu_cfs_throttled_periods_total",
        C,
        p.cfs.throttled_periods,
        &[],
    );
    out.put(
        "container_cpu_cfs_throttled_seconds_total",
        C,
        secs(p.cfs.throttled_ns),
        &[],
    );
    out.put(
        "container_cpu_system_seconds_total",
        C,
        secs(s.vm.cpu_system_ns),
        &[],
    );
    out.put(
        "container_cpu_usage_seconds_total",
        C,
        secs(s.vm.stats.cpu_ns),
        &[],
    );
    out.put(
        "container_cpu_user_seconds_total",
        C,
        secs(s.vm.cpu_user_ns),
        &[],
    );
    out.put("container_file_descriptors", G, p.file_descriptors, &[]);
    let dev = [("device", s.root_disk.as_str())];
    out.put("container_fs_inodes_free", G, s.fs_inodes_free, &dev);
    out.put("container_fs_inodes_total", G, s.fs_inodes_total, &dev);
    out.put("container_fs_limit_bytes", G, s.fs_capacity_bytes, &dev);
    out.put("container_fs_usage_bytes", G, s.vm.stats.disk_bytes, &dev);
    out.put("container_last_seen", G, pos(s.now_ns) / 1_000_000_000, &[]);
    let usage = if m.usage_bytes > 0 {
        m.usage_bytes
    } else {
        s.vm.stats.memory_bytes
    };
    let rss = if m.rss_bytes > 0 {
        m.rss_bytes
    } else {
        p.rss_bytes.max(s.vm.stats.memory_bytes)
    };
    out.put("container_memory_cache", G, m.cache_bytes, &[]);
    out.put("container_memory_failcnt", C, m.failcnt, &[]);
    for (kind, v) in [("pgfault", m.pgfault), ("pgmajfault", m.pgmajfault)] {
        out.put(
            "container_memory_failures_total",
            C,
            v,
            &[("failure_type", kind), ("scope", "container")],
        );
    }
    out.put("container_memory_kernel_usage", G, m.kernel_bytes, &[]);
    out.put("container_memory_mapped_file", G, m.mapped_file_bytes, &[]);
    out.put(
        "container_memory_max_usage_bytes",
        G,
        m.max_usage_bytes.max(usage),
        &[],
    );
    out.put("container_memory_rss", G, rss, &[]);
    out.put("container_memory_swap", G, p.swap_bytes, &[]);
    out.put("container_memory_usage_bytes", G, usage, &[]);
    out.put(
        "container_memory_working_set_bytes",
        G,
        usage.saturating_sub(m.inactive_file_bytes),
        &[],
    );
    for i in &p.interfaces {
        let l = [("interface", i.name.as_str())];
        out.put("container_network_receive_bytes_total", C, i.rx_bytes, &l);
        out.put("container_network_receive_errors_total", C, i.rx_errors, &l);
        out.put(
            "container_network_receive_packets_dropped_total",
            C,
            i.rx_dropped,
            &l,
        );
        out.put(
            "container_network_receive_packets_total",
            C,
            i.rx_packets,
            &l,
        );
        out.put("container_network_transmit_bytes_total", C, i.tx_bytes, &l);
        out.put(
            "container_network_transmit_errors_total",
            C,
            i.tx_errors,
            &l,
        );
        out.put(
            "container_network_transmit_packets_dropped_total",
            C,
            i.tx_dropped,
            &l,
        );
        out.put(
            "container_network_transmit_packets_total",
            C,
            i.tx_packets,
            &l,
        );
    }
    out.put("container_oom_events_total", C, m.oom_kills, &[]);
    out.put("container_processes", G, p.processes.max(1), &[]);
    out.put("container_sockets", G, p.sockets, &[]);
    out.put("container_spec_cpu_period", G, pos(s.cpu_period), &[]);
    out.put("container_spec_cpu_shares", G, pos(s.cpu_shares), &[]);
    out.put(
        "container_spec_memory_limit_bytes",
        G,
        pos(s.memory_limit_bytes),
        &[],
    );
    out.put(
        "container_spec_memory_swap_limit_bytes",
        G,
        pos(s.memory_swap_limit_bytes),
        &[],
    );
    out.put(
        "container_start_time_seconds",
        G,
        pos(s.started_at_ns) / 1_000_000_000,
        &[],
    );
    out.put("container_threads", G, p.threads, &[]);
    out.put("container_threads_max", G, p.threads_max, &[]);
    out.metrics
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn descriptors_have_help_and_sorted_label_keys() {
        let d = descriptors();
        assert_eq!(d.len(), 45);
        for x in &d {
            assert!(!x.help.is_empty() && !x.label_keys.is_empty(), "{}", x.name);
            let mut sorted = x.label_keys.clone();
            sorted.sort();
            assert_eq!(sorted, x.label_keys, "{}", x.name);
        }
    }

    #[test]
    fn every_metric_matches_its_descriptor() {
        let mut s = Sample {
            container: "vm".into(),
            id: "abc".into(),
            image: "virtlet.cloud/tiny".into(),
            domain: "virtlet-abc-vm".into(),
            namespace: "default".into(),
            pod: "p".into(),
            root_disk: "/var/lib/virtlet/vms/s/root-vm.qcow2".into(),
            started_at_ns: 5_000_000_000,
            now_ns: 9_000_000_000,
            ..Default::default()
        };
        s.vm.stats.cpu_ns = 3_500_000_000;
        s.vm.process.interfaces = vec![virtlet_vm::sample::NetCounters {
            name: "eth0".into(),
            rx_bytes: 10,
            ..Default::default()
        }];
        let keys: HashMap<String, Vec<String>> = descriptors()
            .into_iter()
            .map(|d| (d.name, d.label_keys))
            .collect();
        let metrics = container_metrics(&s);
        let mut names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        names.dedup();
        // critest's list minus the optional block I/O counters.
        assert_eq!(names.len(), 40, "{names:?}");
        for m in &metrics {
            let k = &keys[&m.name];
            assert_eq!(k.len(), m.label_values.len(), "{}", m.name);
            let i = k.iter().position(|k| k == "id").unwrap();
            assert_eq!(m.label_values[i], "abc");
        }
        let cpu = metrics
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 3);
        let rx = metrics
            .iter()
            .find(|m| m.name == "container_network_receive_bytes_total")
            .unwrap();
        let iface = keys[&rx.name]
            .iter()
            .position(|k| k == "interface")
            .unwrap();
        assert_eq!(rx.label_values[iface], "eth0");
        assert_eq!(rx.value.as_ref().unwrap().value, 10);
    }
}
