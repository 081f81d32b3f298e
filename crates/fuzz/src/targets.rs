//! The fuzz targets. Each takes arbitrary bytes, must never panic, and checks what it can
//! about the result (round trips, invariants). Seeds are small valid inputs; dictionaries hold
//! the tokens a parser looks for, so mutation reaches past them.

use std::collections::HashMap;

use bytes::BytesMut;
use serde_yaml_ng::Value;
use virtlet_cloudinit::annotations as ci;
use virtlet_core::annotations as vm;

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target; `fuzz/fuzz_targets/<name>.rs` wraps each for libFuzzer, its seeds are in
/// `fuzz/corpus/<name>/`, its dictionary in `fuzz/dict/<name>.dict`.
pub const TARGETS: &[Target] = &[
    Target {
        name: "vm_annotations",
        run: vm_annotations,
    },
    Target {
        name: "cloudinit_user_data",
        run: cloudinit_user_data,
    },
    Target {
        name: "user_data_merge",
        run: user_data_merge,
    },
    Target {
        name: "image_reference",
        run: image_reference,
    },
    Target {
        name: "translation_config",
        run: translation_config,
    },
    Target {
        name: "disk_format",
        run: disk_format,
    },
    Target {
        name: "spdy_frames",
        run: spdy_frames,
    },
    Target {
        name: "dhcp_packet",
        run: dhcp_packet,
    },
];

pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Annotations from bytes: fields split at NUL; a field's first byte picks the key from
/// `keys` (past the end: the field is `key=value` text), the rest is the value.
fn annotations(data: &[u8], keys: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for field in data.split(|&b| b == 0) {
        let Some((&pick, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match keys.get(usize::from(pick)) {
            Some(key) => {
                out.insert((*key).to_owned(), value);
            }
            None => {
                if let Some((k, v)) = value.split_once('=') {
                    out.insert(k.to_owned(), v.to_owned());
                }
            }
        }
    }
    out
}

const VM_KEYS: &[&str] = &[
    "",
    vm::VCPU_COUNT,
    vm::DISK_DRIVER,
    vm::VCPU_COUNT,
    vm::DISK_DRIVER,
    vm::CPU_MODEL,
    vm::LIBVIRT_CPU_SETTING,
    vm::ROOT_VOLUME_SIZE,
    vm::CLOUD_INIT_IMAGE_TYPE,
    vm::FORCE_DHCP_NETWORK_CONFIG,
    vm::SYSTEM_UUID,
    vm::CHOWN_9PFS_MOUNTS,
];

pub fn vm_annotations(data: &[u8]) {
    let map = annotations(data, VM_KEYS);
    if let Ok(parsed) = virtlet_core::VmAnnotations::parse(&map) {
        assert!(
            parsed.vcpus >= 1 && parsed.vcpus <= vm::MAX_VCPUS,
            "vCPU count {} accepted from {map:?}",
            parsed.vcpus
        );
    }
}

const CLOUD_INIT_KEYS: &[&str] = &[
    ci::META_DATA,
    ci::USER_DATA,
    ci::USER_DATA_OVERWRITE,
    ci::USER_DATA_SCRIPT,
    ci::USER_DATA_SOURCE,
    ci::USER_DATA_SOURCE_KEY,
    ci::USER_DATA_SOURCE_ENCODING,
    ci::SSH_KEYS,
    ci::SSH_KEY_SOURCE,
    ci::FILES_FROM_DATA_SOURCE,
];

/// The annotations are parsed; when they are valid, user-data is generated from them (with
/// the fuzz input's tail as a source entry) and must be `#cloud-config` YAML or a script.
pub fn cloudinit_user_data(data: &[u8]) {
    let map = annotations(data, CLOUD_INIT_KEYS);
    let Ok(parsed) = virtlet_cloudinit::CloudInitAnnotations::parse(&map) else {
        return;
    };
    let tail = data.rsplit(|&b| b == 0).next().unwrap_or_default();
    for kind in [
        virtlet_cloudinit::generate::SeedKind::NoCloud,
        virtlet_cloudinit::generate::SeedKind::ConfigDrive,
    ] {
        let input = virtlet_cloudinit::Input {
            pod_name: "pod",
            namespace: "ns",
            uuid: "00000000-0000-0000-0000-000000000000",
            annotations: parsed.clone(),
            // The caller reads sources only when the annotations name them.
            source_entries: if parsed.user_data_source.is_some() {
                vec![
                    ("data".into(), tail.to_vec()),
                    ("user-data".into(), tail.to_vec()),
                ]
            } else {
                Vec::new()
            },
            source_ssh_keys: if parsed.ssh_key_source.is_some() {
                vec!["ssh-ed25519 AAAA k".into()]
            } else {
                Vec::new()
            },
            env: vec![("K".into(), String::from_utf8_lossy(tail).into_owned())],
            command: vec![
                "/bin/echo".into(),
                String::from_utf8_lossy(tail).into_owned(),
            ],
            kind,
            ..Default::default()
        };
        let Ok(out) = virtlet_cloudinit::generate::generate(&input) else {
            continue;
        };
        // A script (the annotation's, or a source key named as one) is passed on as it is;
        // everything else must come out as #cloud-config YAML.
        let scripted = parsed.user_data_script.is_some()
            || (parsed.user_data_source_key.is_some() && !input.source_entries.is_empty());
        if scripted {
            continue;
        }
        let Some(body) = out.user_data.strip_prefix("#cloud-config\n") else {
            panic!(
                "user-data without a script is not #cloud-config: {:?}",
                out.user_data
            );
        };
        if let Err(e) = serde_yaml_ng::from_str::<Value>(body) {
            panic!("generated user-data is not YAML ({e}):\n{}", out.user_data);
        }
    }
}

/// Two YAML documents split at the first NUL, merged: maps recurse, lists append, scalars
/// override.
pub fn user_data_merge(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('\0').unwrap_or((&text, ""));
    let (Ok(base), Ok(over)) = (
        serde_yaml_ng::from_str::<Value>(a),
        serde_yaml_ng::from_str::<Value>(b),
    ) else {
        return;
    };
    let mut merged = base.clone();
    virtlet_cloudinit::merge::merge(&mut merged, over.clone());
    match (&base, &over) {
        (Value::Mapping(bm), Value::Mapping(om)) => {
            let Value::Mapping(mm) = &merged else {
                panic!("two maps merged into a non-map");
            };
            for k in bm.keys().chain(om.keys()) {
                assert!(mm.contains_key(k), "key {k:?} lost");
            }
            assert!(mm.len() <= bm.len() + om.len());
        }
        (Value::Sequence(bs), Value::Sequence(os)) => {
            let Value::Sequence(ms) = &merged else {
                panic!("two lists merged into a non-list");
            };
            assert_eq!(ms.len(), bs.len() + os.len(), "lists must append");
        }
        _ => assert_eq!(merged, over, "a scalar overrides"),
    }
    // Merging into an empty map gives the other map back.
    if let Value::Mapping(_) = over {
        let mut empty = Value::Mapping(Default::default());
        virtlet_cloudinit::merge::merge(&mut empty, over.clone());
        assert_eq!(empty, over);
    }
}

pub fn image_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = virtlet_image::reference::ImageRef::parse(text) {
        assert!(!r.repo.is_empty(), "empty repository from {text:?}");
        assert!(
            !r.repo.contains('@'),
            "repository {:?} keeps a digest",
            r.repo
        );
        // The pinned form (a repo digest) parses back to the same repository and digest.
        let digest = r
            .digest
            .unwrap_or_else(|| virtlet_image::Digest::from_bytes([7; 32]));
        let again = virtlet_image::reference::ImageRef::parse(&r.pinned(&digest));
        assert_eq!(
            again.as_ref().ok().map(|a| (&a.repo, &a.digest)),
            Some((&r.repo, &Some(digest))),
            "{text:?} pinned does not parse back"
        );
        // The key it is stored under (repo:tag) parses back to the same repository and tag.
        let key = virtlet_image::reference::ImageRef::parse(&r.tagged());
        assert_eq!(
            key.as_ref().ok().map(|k| (&k.repo, k.tag.as_deref())),
            Some((&r.repo, Some(r.tag.as_deref().unwrap_or("latest")))),
            "{text:?} tagged does not parse back"
        );
    }
    let _ = virtlet_image::reference::ImageQuery::parse(text);
}

pub fn translation_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = virtlet_image::translation::parse_config(text);
}

pub fn disk_format(data: &[u8]) {
    for total in [data.len() as u64, 1 << 30, u64::MAX] {
        let _ = virtlet_image::format::detect(data, total);
    }
}

/// Frames are decoded until the input runs out; each decoded frame, encoded by a fresh
/// encoder and decoded by a fresh decoder, must come back the same.
pub fn spdy_frames(data: &[u8]) {
    use virtlet_wire::spdy::{FrameDecoder, FrameEncoder};
    let mut buf = BytesMut::from(data);
    let mut decoder = FrameDecoder::new();
    for _ in 0..64 {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let mut wire = BytesMut::new();
                if FrameEncoder::new().encode(&frame, &mut wire).is_ok() {
                    let again = FrameDecoder::new().decode(&mut wire);
                    assert_eq!(again.ok().flatten().as_ref(), Some(&frame), "round trip");
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = virtlet_wire::spdy::decode_header_block(data);
}

/// The responder's path: `virtlet_dhcp::decode` (dhcproto behind the checks it leaves to its
/// user) never panics; a decoded message encodes and decodes back to the same message (dhcproto
/// alone does not promise that, the decoder keeps only options dhcproto writes back as it read
/// them); the reply to it, from a lease for its own MAC, encodes and decodes back to itself.
pub fn dhcp_packet(data: &[u8]) {
    use std::net::Ipv4Addr;
    use virtlet_dhcp::{Config, Lease, Route, decode, encode, respond};
    let Ok(m) = decode(data) else {
        return;
    };
    let again = encode(&m).map(|bytes| decode(&bytes));
    assert!(
        matches!(&again, Ok(Ok(a)) if *a == m),
        "round trip: {again:?}"
    );
    let Some(mac) = virtlet_dhcp::packet::client_mac(&m) else {
        return;
    };
    let gateway = Ipv4Addr::new(10, 77, 0, 1);
    let config = Config {
        server_id: Ipv4Addr::new(169, 254, 254, 2),
        lease_secs: 3600,
        leases: vec![Lease {
            mac,
            ip: Ipv4Addr::new(10, 77, 0, 5),
            prefix_len: 24,
            gateway: Some(gateway),
            routes: vec![Route {
                dst: Ipv4Addr::new(192, 168, 50, 0),
                prefix_len: 24,
                gateway: Some(gateway),
            }],
            dns_servers: vec![Ipv4Addr::new(10, 77, 0, 53)],
            search: vec!["svc.test".into(), "test".into()],
            mtu: Some(1400),
            hostname: Some("vm-1".into()),
        }],
    };
    if let Some(reply) = respond(&config, &m) {
        let again = encode(&reply.message).map(|bytes| decode(&bytes));
        assert!(
            matches!(&again, Ok(Ok(a)) if *a == reply.message),
            "reply round trip: {again:?}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
    }

    #[test]
    fn every_seed_runs_clean() {
        for t in TARGETS {
            let dir = fuzz_dir().join("corpus").join(t.name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                (t.run)(&std::fs::read(entry.unwrap().path()).unwrap());
                seeds += 1;
            }
            assert!(seeds > 0, "{} has no seeds in {}", t.name, dir.display());
            (t.run)(b"");
        }
    }

    #[test]
    fn every_target_has_a_libfuzzer_binary_and_a_dictionary() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(
                TARGETS[i + 1..].iter().all(|o| o.name != t.name),
                "{}",
                t.name
            );
            assert!(find(t.name).is_some());
            let bin = std::fs::read_to_string(
                fuzz_dir()
                    .join("fuzz_targets")
                    .join(format!("{}.rs", t.name)),
            )
            .unwrap();
            assert!(
                bin.contains(&format!("virtlet_fuzz::targets::{}", t.name)),
                "{bin}"
            );
            let dict =
                std::fs::read_to_string(fuzz_dir().join("dict").join(format!("{}.dict", t.name)))
                    .unwrap();
            assert!(dict.lines().any(|l| l.starts_with('"')), "{}", t.name);
        }
        let bins = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .count();
        assert_eq!(
            bins,
            TARGETS.len(),
            "a fuzz_targets/*.rs without its TARGETS entry"
        );
    }
}
