//! libvirt secrets for Ceph volumes: a secret per RBD disk, its usage name starting with
//! `virtlet-<container ID>` so that the container's removal (and startup GC) finds it.

use base64::Engine as _;
use virt::sys;

use crate::{DriverError, Libvirt};

/// The secret's XML: private (libvirt never shows the value), persistent, of usage `ceph`.
pub fn ceph_secret_xml(uuid: &str, usage: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "<secret ephemeral='no' private='yes'><uuid>{}</uuid><usage type='ceph'><name>{}</name></usage></secret>",
        esc(uuid),
        esc(usage)
    )
}

/// The usage name in a secret's XML. (virt 0.5's `Secret::usage_id` frees the string libvirt
/// owns, a double free: the usage is read from the XML instead.)
fn usage_of(secret: &virt::secret::Secret) -> Option<String> {
    let xml = secret.xml_desc(0).ok()?;
    let start = xml.find("<name>")? + "<name>".len();
    let end = start + xml[start..].find("</name>")?;
    quick_xml::escape::unescape(&xml[start..end])
        .ok()
        .map(|s| s.into_owned())
}

impl Libvirt {
    /// Defines the Ceph secret `uuid` holding `key` (base64, as Ceph prints keys).
    pub fn define_ceph_secret(
        &self,
        uuid: &str,
        usage: &str,
        key: &str,
    ) -> Result<(), DriverError> {
        let value = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| DriverError::Call {
                action: "define secret",
                domain: usage.to_owned(),
                message: format!("the Ceph key is not base64: {e}"),
            })?;
        let xml = ceph_secret_xml(uuid, usage);
        self.call("define secret", usage, |c| {
            let s = c.define_secret_xml(&xml, 0)?;
            if let Err(e) = s.set_value(&value, 0) {
                let _ = s.undefine();
                return Err(e);
            }
            Ok(())
        })
    }

    /// Undefines every secret whose usage name starts with `prefix` and ends with `suffix`;
    /// answers how many.
    pub fn undefine_secrets(&self, prefix: &str, suffix: &str) -> Result<usize, DriverError> {
        self.call("undefine secrets", prefix, |c| {
            let mut n = 0;
            for s in c.list_all_secrets(0 as sys::virConnectListAllSecretsFlags)? {
                if usage_of(&s).is_some_and(|u| u.starts_with(prefix) && u.ends_with(suffix)) {
                    s.undefine()?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// The usage names of the secrets virtlet defined (`virtlet-...`).
    pub fn owned_secrets(&self) -> Result<Vec<String>, DriverError> {
        self.call("list secrets", "", |c| {
            Ok(c.list_all_secrets(0 as sys::virConnectListAllSecretsFlags)?
                .iter()
                .filter_map(usage_of)
                .filter(|u| u.starts_with("virtlet-"))
                .collect())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_private_and_named_for_its_container() {
        assert_eq!(
            ceph_secret_xml("u", "virtlet-c <x>"),
            "<secret ephemeral='no' private='yes'><uuid>u</uuid><usage type='ceph'><name>virtlet-c &lt;x&gt;</name></usage></secret>"
        );
    }
}
