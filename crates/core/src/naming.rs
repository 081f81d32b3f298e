//! Names virtlet gives to what it creates, so that what it owns can be told apart (startup GC
//! touches only names with these prefixes).

use crate::annotations::DiskDriver;

/// Every libvirt domain virtlet defines starts with this.
pub const DOMAIN_PREFIX: &str = "virtlet-";

/// A new random ID for a sandbox or container: 64 lowercase hex digits, like other runtimes'.
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `virtlet-<first 13 of the container ID>-<container name>`; the name is reduced to
/// characters libvirt and shells take without quoting.
pub fn domain_name(container_id: &str, container_name: &str) -> String {
    let short: String = container_id.chars().take(13).collect();
    let name: String = container_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{DOMAIN_PREFIX}{short}-{name}")
}

/// The container ID a domain name was made from, as far as the name tells (13 characters).
pub fn domain_id_prefix(domain_name: &str) -> Option<&str> {
    let rest = domain_name.strip_prefix(DOMAIN_PREFIX)?;
    rest.get(..13)
}

const UUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2b0e_3b7d_4c55_9a0e_7d1f_36c2_a9e1);

/// The VM's UUID (also its SMBIOS system UUID): `VirtletSystemUUID` when given, else derived
/// from the pod UID (the UID itself when it is a UUID, as Kubernetes makes them).
pub fn domain_uuid(pod_uid: &str, system_uuid: Option<&str>) -> String {
    if let Some(u) = system_uuid {
        return u.to_owned();
    }
    match uuid::Uuid::parse_str(pod_uid) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => uuid::Uuid::new_v5(&UUID_NAMESPACE, pod_uid.as_bytes())
            .hyphenated()
            .to_string(),
    }
}

/// The UUID of a pod's further VMs (every container but the one with the pod's network, which
/// gets [`domain_uuid`]): derived from the pod UID and the container name, so it is stable
/// across restarts of that container and differs from its siblings'.
pub fn sibling_uuid(pod_uid: &str, container_name: &str) -> String {
    uuid::Uuid::new_v5(
        &UUID_NAMESPACE,
        format!("{pod_uid}/{container_name}").as_bytes(),
    )
    .hyphenated()
    .to_string()
}

/// The most disks a VM can have on each bus.
pub fn max_disks(bus: DiskDriver) -> usize {
    match bus {
        DiskDriver::Scsi => 26,
        DiskDriver::Virtio => 21,
    }
}

/// The guest device name of the `index`th disk: scsi `sda..sdz`, virtio `vda..vdu`.
pub fn disk_target(bus: DiskDriver, index: usize) -> Option<String> {
    if index >= max_disks(bus) {
        return None;
    }
    let prefix = match bus {
        DiskDriver::Scsi => "sd",
        DiskDriver::Virtio => "vd",
    };
    let letter = char::from(b'a' + u8::try_from(index).ok()?);
    Some(format!("{prefix}{letter}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_domain_names() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let name = domain_name(&id, "my vm/1");
        assert_eq!(name, format!("virtlet-{}-my_vm_1", &id[..13]));
        assert_eq!(domain_id_prefix(&name), Some(&id[..13]));
        assert_eq!(domain_id_prefix("other-domain"), None);
    }

    #[test]
    fn uuids() {
        let uid = "0c9d8f7a-3f5e-4d7b-9a3c-2b1e4e5b4f1a";
        assert_eq!(domain_uuid(uid, None), uid);
        assert_eq!(domain_uuid(uid, Some("x")), "x");
        let derived = domain_uuid("not-a-uuid", None);
        assert_eq!(derived, domain_uuid("not-a-uuid", None));
        assert_eq!(derived.len(), 36);
    }

    #[test]
    fn disk_targets() {
        assert_eq!(disk_target(DiskDriver::Scsi, 0).as_deref(), Some("sda"));
        assert_eq!(disk_target(DiskDriver::Scsi, 25).as_deref(), Some("sdz"));
        assert_eq!(disk_target(DiskDriver::Scsi, 26), None);
        assert_eq!(disk_target(DiskDriver::Virtio, 20).as_deref(), Some("vdu"));
        assert_eq!(disk_target(DiskDriver::Virtio, 21), None);
    }
}
