//! Image references as the kubelet hands them over, e.g. `virtlet.cloud/cirros:latest` or
//! `virtlet.cloud/example.com/disk.qcow2@sha256:<hex>`.
//!
//! Rules (Mirantis Virtlet compatible): the tag is ignored; a `@sha256:` digest pins the content;
//! the `virtlet.cloud/` prefix marks a VM image and is stripped before translation; what is left
//! is a translation name or a URL (a default protocol is prepended when it has no `://`).

use crate::digest::{Digest, DigestError};

/// The prefix that marks VM images in pod specs.
pub const VIRTLET_PREFIX: &str = "virtlet.cloud/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {reference:?} contains whitespace or control characters")]
    BadCharacter { reference: String },
    #[error("image reference {reference:?} names no image after the prefix")]
    NoName { reference: String },
    #[error(
        "image reference {reference:?} has an '@' in its name: only a trailing `@sha256:<hex>` digest may follow the name"
    )]
    AtInName { reference: String },
    #[error("image reference {reference:?} has more than one `:tag`")]
    TwoTags { reference: String },
    #[error("image reference {reference:?} has a bad digest: {source}")]
    Digest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

/// A parsed reference to a named image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The name the store keys on: the reference without tag and digest.
    pub name: String,
    /// The pinned content, when the reference has `@sha256:`.
    pub digest: Option<Digest>,
}

/// What a status, list or remove call may name: an image ID or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageQuery {
    /// `sha256:<hex>`: the content, under whatever names.
    Id(Digest),
    /// A name, optionally pinned.
    Ref(ImageRef),
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        if reference.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ReferenceError::BadCharacter {
                reference: reference.to_owned(),
            });
        }
        let (rest, digest) = match reference.rsplit_once('@') {
            Some((rest, digest)) => {
                let digest = Digest::from_id(digest).map_err(|source| ReferenceError::Digest {
                    reference: reference.to_owned(),
                    source,
                })?;
                if rest.contains('@') {
                    return Err(ReferenceError::AtInName {
                        reference: reference.to_owned(),
                    });
                }
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        let name = strip_tag(rest);
        // `a:b:c` would become `a:b`, whose pinned form `a:b@sha256:..` names `a`.
        if strip_tag(name) != name {
            return Err(ReferenceError::TwoTags {
                reference: reference.to_owned(),
            });
        }
        let bare = name.strip_prefix(VIRTLET_PREFIX).unwrap_or(name);
        if bare.is_empty() || bare.ends_with("://") {
            return Err(ReferenceError::NoName {
                reference: reference.to_owned(),
            });
        }
        Ok(ImageRef {
            name: name.to_owned(),
            digest,
        })
    }

    /// The name without the `virtlet.cloud/` prefix: what translation configs match on.
    pub fn location(&self) -> &str {
        self.name.strip_prefix(VIRTLET_PREFIX).unwrap_or(&self.name)
    }

    /// `name@sha256:<hex>`, the form PullImage returns.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!("{}@{}", self.name, digest.id())
    }
}

impl ImageQuery {
    pub fn parse(query: &str) -> Result<ImageQuery, ReferenceError> {
        if query.starts_with("sha256:") {
            return Digest::from_id(query)
                .map(ImageQuery::Id)
                .map_err(|source| ReferenceError::Digest {
                    reference: query.to_owned(),
                    source,
                });
        }
        ImageRef::parse(query).map(ImageQuery::Ref)
    }
}

/// Removes a `:tag` from the last path component. A colon right after `://` with no path after
/// it is a port (`https://host:8443`), not a tag.
fn strip_tag(name: &str) -> &str {
    let last_slash = name.rfind('/');
    let last_component_start = last_slash.map_or(0, |i| i + 1);
    if name[..last_component_start].ends_with("://") {
        return name;
    }
    match name[last_component_start..].rfind(':') {
        Some(i) if is_tag(&name[last_component_start + i + 1..]) => {
            &name[..last_component_start + i]
        }
        _ => name,
    }
}

fn is_tag(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn strips_tags_not_ports() {
        for (input, name) in [
            ("virtlet.cloud/cirros", "virtlet.cloud/cirros"),
            ("virtlet.cloud/cirros:latest", "virtlet.cloud/cirros"),
            (
                "virtlet.cloud/example.com:8080/img/disk.qcow2",
                "virtlet.cloud/example.com:8080/img/disk.qcow2",
            ),
            (
                "virtlet.cloud/example.com:8080/img/disk.qcow2:v1.2",
                "virtlet.cloud/example.com:8080/img/disk.qcow2",
            ),
            (
                "virtlet.cloud/https://example.com:8443",
                "virtlet.cloud/https://example.com:8443",
            ),
            ("plain-name:tag", "plain-name"),
        ] {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.name, name, "{input}");
            assert_eq!(r.digest, None);
        }
    }

    #[test]
    fn location_strips_prefix() {
        let r = ImageRef::parse("virtlet.cloud/example.com/disk.img:1").unwrap();
        assert_eq!(r.location(), "example.com/disk.img");
        let r = ImageRef::parse("http://example.com/disk.img").unwrap();
        assert_eq!(r.location(), "http://example.com/disk.img");
    }

    #[test]
    fn digests_pin() {
        let r = ImageRef::parse(&format!("virtlet.cloud/cirros:1@sha256:{HEX}")).unwrap();
        assert_eq!(r.name, "virtlet.cloud/cirros");
        let d = r.digest.unwrap();
        assert_eq!(r.pinned(&d), format!("virtlet.cloud/cirros@sha256:{HEX}"));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(ImageRef::parse(""), Err(ReferenceError::Empty));
        for bad in [
            "virtlet.cloud/",
            "virtlet.cloud/:latest",
            "virtlet.cloud/a b",
            " virtlet.cloud/a",
            "virtlet.cloud/a\n",
            "virtlet.cloud/a@sha256:abc",
            "virtlet.cloud/a@md5:abc",
            // Found by the fuzzer: a second '@' used to stay in the name, and a second tag
            // made a name whose pinned form named another image.
            "virtlet.cloud/host/disk.img:v1:v2",
            &format!("virtlet.cloud/user@host/a@sha256:{HEX}"),
            "virtlet.cloud/https://",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn queries() {
        assert!(matches!(
            ImageQuery::parse(&format!("sha256:{HEX}")).unwrap(),
            ImageQuery::Id(_)
        ));
        assert!(ImageQuery::parse("sha256:zz").is_err());
        assert!(matches!(
            ImageQuery::parse("virtlet.cloud/x").unwrap(),
            ImageQuery::Ref(_)
        ));
    }
}
