//! Image references as the kubelet hands them over, e.g. `virtlet.cloud/cirros:latest` or
//! `virtlet.cloud/example.com/disk.qcow2@sha256:<hex>`.
//!
//! Rules:
//! - the **repository** is the reference without tag and digest; translation configs match on
//!   it with the `virtlet.cloud/` prefix stripped, and a tag never changes where an image comes
//!   from (Mirantis Virtlet compatible);
//! - the **tag** is kept, as CRI expects: an image pulled as `name` is `name:latest`, and
//!   `repoTags` show `name:tag` as pulled;
//! - a `@sha256:` digest pins the content: what is downloaded must have that sha256.
//!
//! A pulled reference is stored under its [key](ImageRef::key): `repo:tag`, or `repo@sha256:<hex>`
//! when it was pulled by digest (then it has no tag, as in CRI).

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
    /// The reference without tag and digest (`virtlet.cloud/cirros`).
    pub repo: String,
    /// The tag as written, if one was.
    pub tag: Option<String>,
    /// The pinned content, when the reference has `@sha256:`.
    pub digest: Option<Digest>,
}

/// What a status, list or remove call may name: an image ID or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageQuery {
    /// `sha256:<hex>`: the content, under whatever names.
    Id(Digest),
    /// A name, optionally tagged or pinned. `id_prefix` is set when the text could also be the
    /// start of an image ID (hex digits, as `crictl` prints them): the store tries that when no
    /// name matches.
    Ref {
        reference: ImageRef,
        id_prefix: Option<String>,
    },
}

/// The tag CRI implies when none is given.
pub const DEFAULT_TAG: &str = "latest";

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
        let repo = strip_tag(rest);
        // `a:b:c` would become `a:b`, whose pinned form `a:b@sha256:..` names `a`.
        if strip_tag(repo) != repo {
            return Err(ReferenceError::TwoTags {
                reference: reference.to_owned(),
            });
        }
        let bare = repo.strip_prefix(VIRTLET_PREFIX).unwrap_or(repo);
        if bare.is_empty() || bare.ends_with("://") {
            return Err(ReferenceError::NoName {
                reference: reference.to_owned(),
            });
        }
        let tag = (repo.len() < rest.len()).then(|| rest[repo.len() + 1..].to_owned());
        Ok(ImageRef {
            repo: repo.to_owned(),
            tag,
            digest,
        })
    }

    /// The repository without the `virtlet.cloud/` prefix: what translation configs match on.
    pub fn location(&self) -> &str {
        self.repo.strip_prefix(VIRTLET_PREFIX).unwrap_or(&self.repo)
    }

    /// `repo:tag`, with `latest` when no tag was given.
    pub fn tagged(&self) -> String {
        format!(
            "{}:{}",
            self.repo,
            self.tag.as_deref().unwrap_or(DEFAULT_TAG)
        )
    }

    /// The name a pull of this reference is stored under: `repo@sha256:<hex>` when pinned,
    /// else [`tagged`](Self::tagged).
    pub fn key(&self) -> String {
        match &self.digest {
            Some(d) => self.pinned(d),
            None => self.tagged(),
        }
    }

    /// `repo@sha256:<hex>`: a repo digest.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!("{}@{}", self.repo, digest.id())
    }
}

/// A stored key split into repository, tag (for `repo:tag` keys) and digest (for pinned keys).
pub fn parse_key(key: &str) -> Option<ImageRef> {
    ImageRef::parse(key).ok()
}

impl ImageQuery {
    pub fn parse(query: &str) -> Result<ImageQuery, ReferenceError> {
        if let Some(hex) = query.strip_prefix("sha256:") {
            if hex.len() < 64 && is_hex_prefix(hex) {
                // A shortened ID: only an ID can match it.
                return Ok(ImageQuery::Ref {
                    reference: ImageRef {
                        repo: query.to_owned(),
                        tag: None,
                        digest: None,
                    },
                    id_prefix: Some(hex.to_owned()),
                });
            }
            return Digest::from_id(query)
                .map(ImageQuery::Id)
                .map_err(|source| ReferenceError::Digest {
                    reference: query.to_owned(),
                    source,
                });
        }
        if query.len() == 64
            && let Ok(d) = Digest::from_hex(query)
        {
            return Ok(ImageQuery::Id(d));
        }
        let reference = ImageRef::parse(query)?;
        let id_prefix = is_hex_prefix(query).then(|| query.to_owned());
        Ok(ImageQuery::Ref {
            reference,
            id_prefix,
        })
    }
}

/// At least 4 lowercase hex digits (and at most 64): could start an image ID.
fn is_hex_prefix(s: &str) -> bool {
    (4..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Removes a `:tag` from the last path component. Right after `://` the last component is a
/// host: there a lone `:<digits>` is its port, not a tag (`https://host:8443`), while
/// `https://host:8443:v1` has the tag `v1`.
fn strip_tag(name: &str) -> &str {
    let last_slash = name.rfind('/');
    let last_component_start = last_slash.map_or(0, |i| i + 1);
    let component = &name[last_component_start..];
    let Some(i) = component.rfind(':') else {
        return name;
    };
    let candidate = &component[i + 1..];
    if name[..last_component_start].ends_with("://")
        && !component[..i].contains(':')
        && !candidate.is_empty()
        && candidate.bytes().all(|b| b.is_ascii_digit())
    {
        return name;
    }
    if is_tag(candidate) {
        &name[..last_component_start + i]
    } else {
        name
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
        for (input, repo, tag) in [
            ("virtlet.cloud/cirros", "virtlet.cloud/cirros", None),
            (
                "virtlet.cloud/cirros:latest",
                "virtlet.cloud/cirros",
                Some("latest"),
            ),
            (
                "virtlet.cloud/example.com:8080/img/disk.qcow2",
                "virtlet.cloud/example.com:8080/img/disk.qcow2",
                None,
            ),
            (
                "virtlet.cloud/example.com:8080/img/disk.qcow2:v1.2",
                "virtlet.cloud/example.com:8080/img/disk.qcow2",
                Some("v1.2"),
            ),
            (
                "virtlet.cloud/https://example.com:8443",
                "virtlet.cloud/https://example.com:8443",
                None,
            ),
            ("plain-name:tag", "plain-name", Some("tag")),
        ] {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.repo, repo, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest, None);
        }
    }

    #[test]
    fn keys_and_tagged_names() {
        let r = ImageRef::parse("virtlet.cloud/cirros").unwrap();
        assert_eq!(r.tagged(), "virtlet.cloud/cirros:latest");
        assert_eq!(r.key(), "virtlet.cloud/cirros:latest");
        let r = ImageRef::parse("reg.io/a/b:1.2").unwrap();
        assert_eq!(r.key(), "reg.io/a/b:1.2");
        // A URL with only a port after the host has no tag; its key still parses back.
        let r = ImageRef::parse("virtlet.cloud/https://example.com:8443").unwrap();
        let k = ImageRef::parse(&r.key()).unwrap();
        assert_eq!((k.repo, k.tag.as_deref()), (r.repo, Some("latest")));
        let r = ImageRef::parse(&format!("reg.io/a:1@sha256:{HEX}")).unwrap();
        assert_eq!(r.key(), format!("reg.io/a@sha256:{HEX}"));
        assert_eq!(r.tagged(), "reg.io/a:1");
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
        assert_eq!(r.repo, "virtlet.cloud/cirros");
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
        assert!(matches!(ImageQuery::parse(HEX).unwrap(), ImageQuery::Id(_)));
        assert!(ImageQuery::parse("sha256:zz").is_err());
        assert!(matches!(
            ImageQuery::parse("virtlet.cloud/x").unwrap(),
            ImageQuery::Ref {
                id_prefix: None,
                ..
            }
        ));
        for short in ["e3b0c44298fc1", "sha256:e3b0c44298fc1"] {
            let ImageQuery::Ref { id_prefix, .. } = ImageQuery::parse(short).unwrap() else {
                panic!("{short}")
            };
            assert_eq!(id_prefix.as_deref(), Some("e3b0c44298fc1"));
        }
    }
}
