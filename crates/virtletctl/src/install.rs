//! `virtletctl install`: the manifests of `deploy/` for a cluster, with the image, the
//! containerd socket and the RuntimeClass handler of this install, and the kubelet settings
//! that make virtlet the node's runtime.

use std::path::Path;

use anyhow::{Context, Result};

/// The manifests, in the order `kubectl apply` takes them.
const MANIFESTS: &[(&str, &str)] = &[
    ("rbac.yaml", include_str!("../../../deploy/rbac.yaml")),
    (
        "runtimeclass.yaml",
        include_str!("../../../deploy/runtimeclass.yaml"),
    ),
    ("config.yaml", include_str!("../../../deploy/config.yaml")),
    (
        "virtlet-libvirt.yaml",
        include_str!("../../../deploy/virtlet-libvirt.yaml"),
    ),
    ("virtlet.yaml", include_str!("../../../deploy/virtlet.yaml")),
];

/// The image name the manifests are written with.
const IMAGE: &str = "localhost/virtlet:latest";
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

pub struct Install {
    pub image: String,
    pub containerd_socket: String,
    pub handler: String,
}

/// Every manifest file with this install's values.
pub fn render(install: &Install) -> Vec<(&'static str, String)> {
    MANIFESTS
        .iter()
        .map(|(name, text)| {
            let text = text
                .replace(IMAGE, &install.image)
                .replace(CONTAINERD_SOCKET, &install.containerd_socket)
                .replace("handler: virtlet", &format!("handler: {}", install.handler))
                .replace(
                    "VIRTLET_RUNTIME_HANDLER: \"virtlet\"",
                    &format!("VIRTLET_RUNTIME_HANDLER: {:?}", install.handler),
                );
            (*name, text)
        })
        .collect()
}

/// What the node's kubelet needs (merged into its KubeletConfiguration).
pub fn kubelet_config(socket: &Path) -> String {
    format!(
        "# Merge into the node's KubeletConfiguration, then restart the kubelet: virtlet serves\n\
         # its one CRI socket and hands every pod that is not a VM to containerd.\n\
         containerRuntimeEndpoint: unix://{s}\n\
         imageServiceEndpoint: unix://{s}\n\
         # VM pods boot for a while; give their first status a moment.\n\
         runtimeRequestTimeout: 4m\n",
        s = socket.display()
    )
}

/// Writes the manifests and `kubelet-config.yaml` into `dir`, or prints the manifests as
/// one YAML stream.
pub fn run(install: &Install, socket: &Path, dir: Option<&Path>, node: Option<&str>) -> Result<()> {
    let files = render(install);
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, text) in &files {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let path = dir.join("kubelet-config.yaml");
            std::fs::write(&path, kubelet_config(socket))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {} manifests and kubelet-config.yaml to {}; apply them with: kubectl apply -f {}",
                files.len(),
                dir.display(),
                dir.display()
            );
        }
        None => {
            for (name, text) in &files {
                println!("---\n# {name}\n{}", text.trim_start_matches("---\n"));
            }
        }
    }
    if let Some(node) = node {
        eprintln!(
            "virtlet runs on the nodes labelled extraRuntime=virtlet: kubectl label node {node} extraRuntime=virtlet"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_reach_every_manifest() {
        let files = render(&Install {
            image: "registry.example.com/virtlet:1.2".into(),
            containerd_socket: "/var/run/ctrd.sock".into(),
            handler: "vm".into(),
        });
        assert_eq!(files.len(), MANIFESTS.len());
        let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
        assert!(!all.contains(IMAGE), "the default image is left in");
        assert!(all.contains("image: registry.example.com/virtlet:1.2"));
        assert!(all.contains("/var/run/ctrd.sock"));
        assert!(!all.contains(CONTAINERD_SOCKET));
        assert!(all.contains("handler: vm"));
        for (name, text) in &files {
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let v: serde_yaml_ng::Value =
                    serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(v.is_null() || v.get("kind").is_some(), "{name}: {v:?}");
            }
        }
    }

    #[test]
    fn kubelet_points_at_virtlet() {
        let c = kubelet_config(Path::new("/run/virtlet.sock"));
        assert!(c.contains("containerRuntimeEndpoint: unix:///run/virtlet.sock\n"));
        assert!(c.contains("imageServiceEndpoint: unix:///run/virtlet.sock\n"));
    }
}
