//! Records -> CRI messages (pure): statuses, list items, stats.

use std::collections::HashMap;

use k8s_cri::v1 as api;
use virtlet_manager::{
    ContainerRecord, SandboxRecord, container_cri_state, now_ns, sandbox_cri_state,
};
use virtlet_vm::VmStats;

pub(crate) fn condition(
    kind: &str,
    ready: bool,
    reason: &str,
    message: &str,
) -> api::RuntimeCondition {
    api::RuntimeCondition {
        r#type: kind.to_owned(),
        status: ready,
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

/// The pod IP (the first IPv4 address the VM gets) and the others.
pub(crate) fn network_status(s: &SandboxRecord) -> api::PodSandboxNetworkStatus {
    let Some(pod) = s.pod_network() else {
        return api::PodSandboxNetworkStatus::default();
    };
    api::PodSandboxNetworkStatus {
        ip: pod.pod_ip().map(|ip| ip.to_string()).unwrap_or_default(),
        additional_ips: pod
            .additional_ips()
            .into_iter()
            .map(|ip| api::PodIp { ip: ip.to_string() })
            .collect(),
    }
}

pub(crate) fn sandbox_status(s: &SandboxRecord) -> api::PodSandboxStatus {
    api::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_cri_state(s.state),
        created_at: s.created_at_ns,
        network: Some(network_status(s)),
        linux: Some(api::LinuxPodSandboxStatus {
            namespaces: Some(api::Namespace {
                options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Pod as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
            }),
        }),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

pub(crate) fn container_status(c: &ContainerRecord) -> api::ContainerStatus {
    let exit = c.exit.clone().unwrap_or(virtlet_manager::Exit {
        code: 0,
        reason: String::new(),
        message: String::new(),
    });
    api::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: container_cri_state(c.state),
        created_at: c.created_at_ns,
        started_at: c.started_at_ns,
        finished_at: c.finished_at_ns,
        exit_code: exit.code,
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        reason: exit.reason,
        message: exit.message,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        image_id: c.image_id.clone(),
        ..Default::default()
    }
}

pub(crate) fn pod_sandbox(s: &SandboxRecord) -> api::PodSandbox {
    api::PodSandbox {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_cri_state(s.state),
        created_at: s.created_at_ns,
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

pub(crate) fn container(c: &ContainerRecord) -> api::Container {
    api::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.sandbox_id.clone(),
        metadata: c.config.metadata.clone(),
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        state: container_cri_state(c.state),
        created_at: c.created_at_ns,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

pub(crate) fn u64v(value: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value })
}

pub(crate) fn container_stats(c: &ContainerRecord, s: &VmStats) -> api::ContainerStats {
    let ts = now_ns();
    api::ContainerStats {
        attributes: Some(api::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: Some(api::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: u64v(s.cpu_ns),
            ..Default::default()
        }),
        memory: Some(api::MemoryUsage {
            timestamp: ts,
            working_set_bytes: u64v(s.memory_bytes),
            usage_bytes: u64v(s.memory_bytes),
            rss_bytes: u64v(s.memory_bytes),
            ..Default::default()
        }),
        writable_layer: Some(api::FilesystemUsage {
            timestamp: ts,
            fs_id: None,
            used_bytes: u64v(s.disk_bytes),
            inodes_used: u64v(1),
        }),
        swap: None,
    }
}

pub(crate) fn json_info(value: impl serde::Serialize) -> HashMap<String, String> {
    HashMap::from([(
        "info".to_owned(),
        serde_json::to_string(&value).unwrap_or_default(),
    )])
}
