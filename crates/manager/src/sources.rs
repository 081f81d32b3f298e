//! The ConfigMaps and Secrets that a pod's cloud-init annotations name, read through the
//! Kubernetes API before anything of the container is created.

use virtlet_cloudinit::annotations::{SSH_KEY_SOURCE, USER_DATA_SOURCE};
use virtlet_cloudinit::{CloudInitAnnotations, SourceKind, SourceRef};
use virtlet_core::ErrorKind;
use virtlet_kube::{Kind, KubeClient, KubeError};

use crate::ManagerError;

/// The key `VirtletSSHKeySource` reads when it names none.
pub const DEFAULT_SSH_KEY: &str = "authorized_keys";

/// What the sources gave, ready for [`virtlet_cloudinit::Input`].
#[derive(Debug, Default)]
pub struct Sources {
    /// Every key of the user-data source.
    pub entries: Vec<(String, Vec<u8>)>,
    /// The SSH keys from the key source, one per line.
    pub ssh_keys: Vec<String>,
}

fn kind(src: &SourceRef) -> Kind {
    match src.kind {
        SourceKind::ConfigMap => Kind::ConfigMap,
        SourceKind::Secret => Kind::Secret,
    }
}

fn noun(src: &SourceRef) -> &'static str {
    match src.kind {
        SourceKind::ConfigMap => "configmap",
        SourceKind::Secret => "secret",
    }
}

fn kube_error(annotation: &str, e: KubeError) -> ManagerError {
    let kind = match &e {
        KubeError::BadName { .. } => ErrorKind::InvalidArgument,
        KubeError::NotFound { .. } | KubeError::Refused { .. } | KubeError::Config { .. } => {
            ErrorKind::FailedPrecondition
        }
        KubeError::Unavailable { .. } | KubeError::Failed { .. } => ErrorKind::Unavailable,
    };
    ManagerError::failed(kind, annotation, e)
}

/// SSH keys from a source value: one per non-empty line, `#` comments skipped.
pub fn ssh_key_lines(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads every source the annotations name. Without API access (`kube` is `None`), a pod
/// that names one gets FailedPrecondition saying so.
pub async fn read(
    kube: Option<&KubeClient>,
    namespace: &str,
    pod_name: &str,
    a: &CloudInitAnnotations,
) -> Result<Sources, ManagerError> {
    let sources = a.sources();
    let Some(kube) = kube else {
        return match sources.first() {
            None => Ok(Sources::default()),
            Some((annotation, src)) => Err(ManagerError::precondition(format!(
                "pod {namespace}/{pod_name} names {}/{} in {annotation}, but this virtlet has no Kubernetes API access to read it (set --kubeconfig, or run virtlet in the cluster)",
                noun(src),
                src.name
            ))),
        };
    };
    let mut out = Sources::default();
    for (annotation, src) in sources {
        if annotation != USER_DATA_SOURCE && annotation != SSH_KEY_SOURCE {
            return Err(ManagerError::precondition(format!(
                "pod {namespace}/{pod_name}: {annotation} is not supported by this virtlet; mount the {} as a volume instead (its files are written into the VM by cloud-init)",
                noun(src)
            )));
        }
        let data = kube
            .get(kind(src), namespace, &src.name)
            .await
            .map_err(|e| kube_error(annotation, e))?;
        if annotation == USER_DATA_SOURCE {
            out.entries = data.into_iter().collect();
        } else {
            let key = src.key.as_deref().unwrap_or(DEFAULT_SSH_KEY);
            let value = data.get(key).ok_or_else(|| {
                ManagerError::precondition(format!(
                    "{annotation}: {} {namespace}/{} has no key {key:?} (it has {:?})",
                    noun(src),
                    src.name,
                    data.keys().collect::<Vec<_>>()
                ))
            })?;
            out.ssh_keys = ssh_key_lines(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_skip_blanks_and_comments() {
        assert_eq!(
            ssh_key_lines(b"# admins\nssh-rsa AAAA a@b\n\n  ssh-ed25519 BBBB c  \r\n"),
            ["ssh-rsa AAAA a@b", "ssh-ed25519 BBBB c"]
        );
    }
}
