//! One answer from two runtimes: Status and ImageFsInfo of virtlet and containerd combined
//! (pure; List answers are concatenated, see [`super`]).

use k8s_cri::v1 as api;

use crate::convert::condition;

/// The condition types containerd's own conditions are reported under.
const CONTAINERD_PREFIX: &str = "Containerd";

/// virtlet's Status with containerd's folded in. virtlet's `RuntimeReady` and `NetworkReady`
/// stay the node's (the kubelet stops all pod work when they are false, and VM pods keep
/// working without containerd); containerd's conditions follow as `ContainerdRuntimeReady`
/// and `ContainerdNetworkReady`, false with the reason when it cannot be reached. The
/// runtime handlers are virtlet's (named `handler`) and containerd's; verbose info from
/// containerd is under `containerd.<key>`.
pub fn status(
    mut local: api::StatusResponse,
    remote: Result<api::StatusResponse, String>,
    handler: &str,
) -> api::StatusResponse {
    let mut handlers = vec![api::RuntimeHandler {
        name: handler.to_owned(),
        features: local.runtime_handlers.first().and_then(|h| h.features),
    }];
    let conditions = &mut local.status.get_or_insert_with(Default::default).conditions;
    match remote {
        Ok(remote) => {
            let theirs = remote.status.map(|s| s.conditions).unwrap_or_default();
            for kind in ["RuntimeReady", "NetworkReady"] {
                let c = theirs.iter().find(|c| c.r#type == kind);
                conditions.push(match c {
                    Some(c) => condition(
                        &format!("{CONTAINERD_PREFIX}{kind}"),
                        c.status,
                        &c.reason,
                        &c.message,
                    ),
                    None => condition(
                        &format!("{CONTAINERD_PREFIX}{kind}"),
                        false,
                        "ContainerdSaidNothing",
                        &format!("containerd's Status has no {kind} condition"),
                    ),
                });
            }
            let mut theirs = remote.runtime_handlers;
            if theirs.is_empty() {
                theirs.push(api::RuntimeHandler::default());
            }
            handlers.extend(theirs.into_iter().filter(|h| h.name != handler));
            for (k, v) in remote.info {
                local.info.insert(format!("containerd.{k}"), v);
            }
        }
        Err(why) => {
            for kind in ["RuntimeReady", "NetworkReady"] {
                conditions.push(condition(
                    &format!("{CONTAINERD_PREFIX}{kind}"),
                    false,
                    "ContainerdUnreachable",
                    &why,
                ));
            }
        }
    }
    local.runtime_handlers = handlers;
    local
}

/// containerd's filesystems first (the kubelet's image GC and eviction read the first
/// image filesystem), virtlet's after; usage on the same mountpoint is added up.
pub fn image_fs(
    local: api::ImageFsInfoResponse,
    remote: api::ImageFsInfoResponse,
) -> api::ImageFsInfoResponse {
    api::ImageFsInfoResponse {
        image_filesystems: add_up(remote.image_filesystems, local.image_filesystems),
        container_filesystems: add_up(remote.container_filesystems, local.container_filesystems),
    }
}

fn add_up(
    mut first: Vec<api::FilesystemUsage>,
    then: Vec<api::FilesystemUsage>,
) -> Vec<api::FilesystemUsage> {
    for fs in then {
        let mount = |f: &api::FilesystemUsage| f.fs_id.as_ref().map(|i| i.mountpoint.clone());
        match first.iter_mut().find(|f| mount(f) == mount(&fs)) {
            Some(same) => {
                same.timestamp = same.timestamp.max(fs.timestamp);
                same.used_bytes = sum(same.used_bytes, fs.used_bytes);
                same.inodes_used = sum(same.inodes_used, fs.inodes_used);
            }
            None => first.push(fs),
        }
    }
    first
}

fn sum(a: Option<api::UInt64Value>, b: Option<api::UInt64Value>) -> Option<api::UInt64Value> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(api::UInt64Value {
            value: a
                .map_or(0, |v| v.value)
                .saturating_add(b.map_or(0, |v| v.value)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> api::StatusResponse {
        api::StatusResponse {
            status: Some(api::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", true, "", ""),
                    condition("NetworkReady", true, "", ""),
                ],
            }),
            info: [("accelerator".to_owned(), "\"TCG\"".to_owned())].into(),
            ..Default::default()
        }
    }

    fn kinds(s: &api::StatusResponse) -> Vec<(String, bool, String)> {
        s.status
            .iter()
            .flat_map(|s| &s.conditions)
            .map(|c| (c.r#type.clone(), c.status, c.reason.clone()))
            .collect()
    }

    #[test]
    fn containerd_conditions_follow_ours() {
        let theirs = api::StatusResponse {
            status: Some(api::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", true, "", ""),
                    condition("NetworkReady", false, "NetworkPluginNotReady", "cni"),
                ],
            }),
            info: [("config".to_owned(), "{}".to_owned())].into(),
            ..Default::default()
        };
        let s = status(ours(), Ok(theirs), "virtlet");
        assert_eq!(
            kinds(&s),
            [
                ("RuntimeReady".into(), true, "".into()),
                ("NetworkReady".into(), true, "".into()),
                ("ContainerdRuntimeReady".into(), true, "".into()),
                (
                    "ContainerdNetworkReady".into(),
                    false,
                    "NetworkPluginNotReady".into()
                ),
            ]
        );
        let names: Vec<_> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["virtlet", ""]);
        assert_eq!(s.info["containerd.config"], "{}");
        assert_eq!(s.info["accelerator"], "\"TCG\"");
    }

    #[test]
    fn unreachable_containerd_leaves_virtlet_ready() {
        let s = status(ours(), Err("connection refused".into()), "vm");
        let k = kinds(&s);
        assert_eq!(k[0], ("RuntimeReady".into(), true, "".into()));
        assert_eq!(
            k[2],
            (
                "ContainerdRuntimeReady".into(),
                false,
                "ContainerdUnreachable".into()
            )
        );
        assert_eq!(s.runtime_handlers.len(), 1);
        assert_eq!(s.runtime_handlers[0].name, "vm");
    }

    fn fs(mount: &str, bytes: u64, ts: i64) -> api::FilesystemUsage {
        api::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: mount.into(),
            }),
            used_bytes: Some(api::UInt64Value { value: bytes }),
            inodes_used: Some(api::UInt64Value { value: 1 }),
        }
    }

    #[test]
    fn filesystems_add_up_by_mountpoint() {
        let local = api::ImageFsInfoResponse {
            image_filesystems: vec![fs("/var/lib/virtlet", 10, 5), fs("/shared", 1, 9)],
            container_filesystems: vec![],
        };
        let remote = api::ImageFsInfoResponse {
            image_filesystems: vec![fs("/var/lib/containerd", 100, 7), fs("/shared", 2, 3)],
            container_filesystems: vec![fs("/var/lib/containerd", 50, 7)],
        };
        let m = image_fs(local, remote);
        let got: Vec<_> = m
            .image_filesystems
            .iter()
            .map(|f| {
                (
                    f.fs_id.as_ref().map(|i| i.mountpoint.as_str()),
                    f.used_bytes.map(|v| v.value),
                    f.inodes_used.map(|v| v.value),
                    f.timestamp,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some("/var/lib/containerd"), Some(100), Some(1), 7),
                (Some("/shared"), Some(3), Some(2), 9),
                (Some("/var/lib/virtlet"), Some(10), Some(1), 5),
            ]
        );
        assert_eq!(m.container_filesystems.len(), 1);
    }
}
