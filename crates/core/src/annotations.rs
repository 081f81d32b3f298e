//! Pod annotations that shape the VM (Mirantis Virtlet's `Virtlet*` keys), parsed once into a
//! typed value. A bad value is an error naming the annotation, the value and what is allowed
//! (the reference system sometimes ignored them).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::quantity;

pub const VCPU_COUNT: &str = "VirtletVCPUCount";
pub const DISK_DRIVER: &str = "VirtletDiskDriver";
pub const CPU_MODEL: &str = "VirtletCPUModel";
pub const LIBVIRT_CPU_SETTING: &str = "VirtletLibvirtCPUSetting";
pub const SYSTEM_UUID: &str = "VirtletSystemUUID";
pub const ROOT_VOLUME_SIZE: &str = "VirtletRootVolumeSize";
pub const CLOUD_INIT_IMAGE_TYPE: &str = "VirtletCloudInitImageType";
pub const FORCE_DHCP_NETWORK_CONFIG: &str = "VirtletForceDHCPNetworkConfig";
pub const CHOWN_9PFS_MOUNTS: &str = "VirtletChown9pfsMounts";

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?} is invalid: {allowed}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub allowed: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DiskDriver {
    /// virtio-scsi (`sda`...), the default.
    #[default]
    Scsi,
    /// virtio-blk (`vda`...).
    Virtio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CpuModel {
    /// Whatever the hypervisor gives by default.
    #[default]
    Default,
    HostModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CloudInitImageType {
    #[default]
    NoCloud,
    ConfigDrive,
}

/// A libvirt `<cpu>` element written as YAML (keys case-insensitive, as the reference read them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSetting {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default, rename = "match")]
    pub match_: Option<String>,
    #[serde(default)]
    pub check: Option<String>,
    #[serde(default)]
    pub model: Option<CpuSettingModel>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub topology: Option<CpuTopology>,
    #[serde(default, alias = "feature")]
    pub features: Vec<CpuFeature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSettingModel {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub fallback: Option<String>,
    #[serde(default, alias = "vendorid")]
    pub vendor_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    #[serde(default)]
    pub sockets: Option<u32>,
    #[serde(default)]
    pub dies: Option<u32>,
    #[serde(default)]
    pub cores: Option<u32>,
    #[serde(default)]
    pub threads: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeature {
    pub name: String,
    #[serde(default)]
    pub policy: Option<String>,
}

/// The VM-shaping annotations of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmAnnotations {
    pub vcpus: u32,
    pub disk_driver: DiskDriver,
    pub cpu_model: Option<CpuModel>,
    pub cpu_setting: Option<CpuSetting>,
    pub system_uuid: Option<String>,
    pub root_volume_size: Option<u64>,
    pub cloud_init_image_type: CloudInitImageType,
    pub force_dhcp_network_config: bool,
    pub chown_9pfs_mounts: bool,
}

fn bad(annotation: &'static str, value: &str, allowed: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation,
        value: value.to_owned(),
        allowed: allowed.into(),
    }
}

impl VmAnnotations {
    /// Parses the annotations of a pod; absent ones take their defaults.
    pub fn parse(annotations: &HashMap<String, String>) -> Result<VmAnnotations, AnnotationError> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let mut out = VmAnnotations {
            vcpus: 1,
            ..VmAnnotations::default()
        };
        if let Some(v) = get(VCPU_COUNT) {
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| bad(VCPU_COUNT, v, format!("must be an integer 1-{MAX_VCPUS}")))?;
            if n > i64::from(MAX_VCPUS) {
                return Err(bad(
                    VCPU_COUNT,
                    v,
                    format!("must be an integer 1-{MAX_VCPUS}"),
                ));
            }
            out.vcpus = u32::try_from(n.max(1)).unwrap_or(1);
        }
        if let Some(v) = get(DISK_DRIVER) {
            out.disk_driver = match v {
                "scsi" => DiskDriver::Scsi,
                "virtio" => DiskDriver::Virtio,
                _ => return Err(bad(DISK_DRIVER, v, "must be scsi or virtio")),
            };
        }
        if let Some(v) = get(CPU_MODEL) {
            out.cpu_model = match v {
                "" => None,
                "host-model" => Some(CpuModel::HostModel),
                _ => return Err(bad(CPU_MODEL, v, "must be empty or host-model")),
            };
        }
        if let Some(v) = get(LIBVIRT_CPU_SETTING)
            && !v.trim().is_empty()
        {
            out.cpu_setting = Some(parse_cpu_setting(v)?);
        }
        if let Some(v) = get(SYSTEM_UUID) {
            let u = uuid::Uuid::parse_str(v.trim()).map_err(|_| {
                bad(
                    SYSTEM_UUID,
                    v,
                    "must be a UUID such as 4e5b4f1a-3f5e-4d7b-9a3c-2b1e0c9d8f7a",
                )
            })?;
            out.system_uuid = Some(u.hyphenated().to_string());
        }
        if let Some(v) = get(ROOT_VOLUME_SIZE) {
            let size = quantity::parse_bytes(v).map_err(|e| {
                bad(
                    ROOT_VOLUME_SIZE,
                    v,
                    format!("must be a Kubernetes quantity: {e}"),
                )
            })?;
            out.root_volume_size = Some(size);
        }
        if let Some(v) = get(CLOUD_INIT_IMAGE_TYPE) {
            out.cloud_init_image_type = match v.to_ascii_lowercase().as_str() {
                "" | "nocloud" => CloudInitImageType::NoCloud,
                "configdrive" => CloudInitImageType::ConfigDrive,
                _ => {
                    return Err(bad(
                        CLOUD_INIT_IMAGE_TYPE,
                        v,
                        "must be nocloud or configdrive",
                    ));
                }
            };
        }
        out.force_dhcp_network_config = get(FORCE_DHCP_NETWORK_CONFIG) == Some("true");
        out.chown_9pfs_mounts = get(CHOWN_9PFS_MOUNTS) == Some("true");
        Ok(out)
    }
}

fn lowercase_keys(v: serde_yaml_ng::Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => Value::String(s.to_ascii_lowercase().replace('_', "")),
                        other => other,
                    };
                    (k, lowercase_keys(v))
                })
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}

fn parse_cpu_setting(v: &str) -> Result<CpuSetting, AnnotationError> {
    let allowed = |e: String| {
        bad(
            LIBVIRT_CPU_SETTING,
            v,
            format!(
                "must be YAML of a libvirt <cpu> element (mode, match, check, model {{value, fallback}}, vendor, topology, features [{{name, policy}}]): {e}"
            ),
        )
    };
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(v).map_err(|e| allowed(e.to_string()))?;
    let value = lowercase_keys(value);
    let mut map: BTreeMap<String, serde_yaml_ng::Value> =
        serde_yaml_ng::from_value(value).map_err(|e| allowed(e.to_string()))?;
    // `model: core2duo` is short for `model: {value: core2duo}`.
    if let Some(serde_yaml_ng::Value::String(s)) = map.get("model").cloned() {
        let mut m = serde_yaml_ng::Mapping::new();
        m.insert("value".into(), s.into());
        map.insert("model".into(), serde_yaml_ng::Value::Mapping(m));
    }
    let value = serde_yaml_ng::to_value(map).map_err(|e| allowed(e.to_string()))?;
    serde_yaml_ng::from_value(value).map_err(|e| allowed(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<VmAnnotations, AnnotationError> {
        VmAnnotations::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.vcpus, 1);
        assert_eq!(a.disk_driver, DiskDriver::Scsi);
        assert_eq!(a.cpu_model, None);
        assert_eq!(a.cloud_init_image_type, CloudInitImageType::NoCloud);
        assert!(!a.force_dhcp_network_config);
    }

    #[test]
    fn values() {
        let a = parse(&[
            (VCPU_COUNT, "4"),
            (DISK_DRIVER, "virtio"),
            (CPU_MODEL, "host-model"),
            (SYSTEM_UUID, "4E5B4F1A-3F5E-4D7B-9A3C-2B1E0C9D8F7A"),
            (ROOT_VOLUME_SIZE, "4Gi"),
            (CLOUD_INIT_IMAGE_TYPE, "ConfigDrive"),
            (FORCE_DHCP_NETWORK_CONFIG, "true"),
            (CHOWN_9PFS_MOUNTS, "True"),
        ])
        .unwrap();
        assert_eq!(a.vcpus, 4);
        assert_eq!(a.disk_driver, DiskDriver::Virtio);
        assert_eq!(a.cpu_model, Some(CpuModel::HostModel));
        assert_eq!(
            a.system_uuid.as_deref(),
            Some("4e5b4f1a-3f5e-4d7b-9a3c-2b1e0c9d8f7a")
        );
        assert_eq!(a.root_volume_size, Some(4 << 30));
        assert_eq!(a.cloud_init_image_type, CloudInitImageType::ConfigDrive);
        assert!(a.force_dhcp_network_config);
        assert!(!a.chown_9pfs_mounts, "only exactly \"true\" is on");
        assert_eq!(parse(&[(VCPU_COUNT, "0")]).unwrap().vcpus, 1);
        assert_eq!(parse(&[(VCPU_COUNT, "-3")]).unwrap().vcpus, 1);
    }

    #[test]
    fn bad_values_name_annotation_value_and_rule() {
        for (k, v, needle) in [
            (VCPU_COUNT, "two", "integer 1-255"),
            (VCPU_COUNT, "256", "integer 1-255"),
            (DISK_DRIVER, "ide", "scsi or virtio"),
            (CPU_MODEL, "Haswell", "host-model"),
            (SYSTEM_UUID, "not-a-uuid", "UUID"),
            (ROOT_VOLUME_SIZE, "4GB", "quantity"),
            (CLOUD_INIT_IMAGE_TYPE, "iso", "nocloud or configdrive"),
            (LIBVIRT_CPU_SETTING, "mode: [", "YAML"),
            (LIBVIRT_CPU_SETTING, "flavour: spicy", "YAML"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(k) && msg.contains(&format!("{v:?}")) && msg.contains(needle),
                "{msg}"
            );
        }
    }

    #[test]
    fn cpu_setting_yaml() {
        let a = parse(&[(
            LIBVIRT_CPU_SETTING,
            "Mode: custom\nmodel:\n  value: core2duo\n  fallback: allow\nfeatures:\n  - name: avx\n    policy: disable\ntopology:\n  sockets: 1\n  cores: 2\n  threads: 1\n",
        )])
        .unwrap();
        let c = a.cpu_setting.unwrap();
        assert_eq!(c.mode.as_deref(), Some("custom"));
        assert_eq!(c.model.unwrap().value.as_deref(), Some("core2duo"));
        assert_eq!(c.features[0].name, "avx");
        assert_eq!(c.topology.unwrap().cores, Some(2));
        let short =
            parse(&[(LIBVIRT_CPU_SETTING, "mode: host-passthrough\nmodel: qemu64")]).unwrap();
        assert_eq!(
            short.cpu_setting.unwrap().model.unwrap().value.as_deref(),
            Some("qemu64")
        );
    }
}
