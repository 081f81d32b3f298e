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
}

impl PodSpec {
    pub fn parse(config: &PodSandboxConfig) -> Result<PodSpec, ManagerError> {
        Ok(PodSpec {
            vm: VmAnnotations::parse(&config.annotations)?,
            cloud_init: CloudInitAnnotations::parse(&config.annotations)?,
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
}
