//! The typed pod spec: what the pod's annotations say, parsed once when the sandbox is made
//! (RunPodSandbox refuses a bad value there) and kept for the pod's containers.

use k8s_cri::v1::PodSandboxConfig;
use virtlet_cloudinit::CloudInitAnnotations;
use virtlet_core::VmAnnotations;

use crate::ManagerError;

#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The VM-shaping annotations (CPU, disks, UUID, root volume size, ...).
    pub vm: VmAnnotations,
    /// The cloud-init annotations (user-data, keys, sources, image type).
    pub cloud_init: CloudInitAnnotations,
    /// `linux.sysctls`, by name: set in the guest at every boot.
    pub sysctls: Vec<(String, String)>,
}

impl PodSpec {
    pub fn parse(config: &PodSandboxConfig) -> Result<PodSpec, ManagerError> {
        let mut sysctls: Vec<(String, String)> = config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default();
        sysctls.sort();
        for (name, value) in &sysctls {
            virtlet_cloudinit::sysctl::check(name, value).map_err(|reason| {
                ManagerError::invalid(format!("linux.sysctls[{name:?}]: {reason}"))
            })?;
        }
        Ok(PodSpec {
            vm: VmAnnotations::parse(&config.annotations)?,
            cloud_init: CloudInitAnnotations::parse(&config.annotations)?,
            sysctls,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn bad_annotations_are_refused_naming_them() {
        let config = |k: &str, v: &str| PodSandboxConfig {
            annotations: HashMap::from([(k.to_owned(), v.to_owned())]),
            ..Default::default()
        };
        let spec = PodSpec::parse(&config("VirtletVCPUCount", "2")).unwrap();
        assert_eq!(spec.vm.vcpus, 2);
        let err = PodSpec::parse(&config("VirtletVCPUCount", "two")).unwrap_err();
        assert_eq!(err.kind(), virtlet_core::ErrorKind::InvalidArgument);
        assert!(virtlet_core::error::chain(&err).contains("VirtletVCPUCount"));
        let err = PodSpec::parse(&config("VirtletCloudInitUserData", "[unclosed")).unwrap_err();
        assert_eq!(err.kind(), virtlet_core::ErrorKind::InvalidArgument);
    }

    #[test]
    fn sysctls_are_kept_sorted_and_bad_ones_refused_naming_them() {
        let config = |pairs: &[(&str, &str)]| PodSandboxConfig {
            linux: Some(k8s_cri::v1::LinuxPodSandboxConfig {
                sysctls: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = PodSpec::parse(&config(&[
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "100"),
        ]))
        .unwrap();
        assert_eq!(spec.sysctls[0].0, "fs.mqueue.msg_max");
        let err = PodSpec::parse(&config(&[("foo.bar", "1")])).unwrap_err();
        assert_eq!(err.kind(), virtlet_core::ErrorKind::InvalidArgument);
        assert!(
            err.to_string().contains("linux.sysctls[\"foo.bar\"]"),
            "{err}"
        );
    }
}
