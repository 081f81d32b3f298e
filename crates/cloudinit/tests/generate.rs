//! cloud-init generation: golden files for whole seeds, and the rules one by one.
//! `UPDATE_GOLDEN=1 cargo test -p virtlet-cloudinit` rewrites the golden files.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use virtlet_cloudinit::generate::{SeedKind, generate, seed_files};
use virtlet_cloudinit::{CloudInitAnnotations, CloudInitError, Input, WriteFile};

fn annotations(pairs: &[(&str, &str)]) -> CloudInitAnnotations {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CloudInitAnnotations::parse(&map).unwrap()
}

fn input(pairs: &[(&str, &str)], kind: SeedKind) -> Input<'static> {
    Input {
        pod_name: "vm1",
        namespace: "prod",
        uuid: "6a1f3c2e-1d2b-4c3a-9e8f-7a6b5c4d3e2f",
        annotations: annotations(pairs),
        files: vec![WriteFile {
            path: "/etc/app/config.yaml".into(),
            content: b"debug: true\n".to_vec(),
            permissions: 0o640,
        }],
        env: vec![
            ("GREETING".into(), "it's me".into()),
            ("EMPTY".into(), String::new()),
        ],
        command: vec!["/bin/echo".into(), "hello from args".into()],
        kind,
        ..Input::default()
    }
}

fn render(input: &Input<'_>) -> String {
    let data = generate(input).unwrap();
    seed_files(&data)
        .into_iter()
        .map(|(path, content)| format!("==> {path} <==\n{}\n", String::from_utf8(content).unwrap()))
        .collect()
}

#[test]
fn golden_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let cases = [
        (
            "nocloud",
            input(
                &[("VirtletSSHKeys", "ssh-ed25519 AAAA key1\nssh-rsa BBBB key2")],
                SeedKind::NoCloud,
            ),
        ),
        (
            "configdrive-merged",
            input(
                &[
                    ("VirtletSSHKeys", "ssh-ed25519 AAAA key1"),
                    (
                        "VirtletCloudInitUserData",
                        "runcmd:\n  - echo from annotation\nusers:\n  - name: alice\n",
                    ),
                    (
                        "VirtletCloudInitMetaData",
                        "{\"local-hostname\": \"custom\"}",
                    ),
                ],
                SeedKind::ConfigDrive,
            ),
        ),
        (
            "script",
            input(
                &[(
                    "VirtletCloudInitUserDataScript",
                    "#!/bin/sh\necho script ran\n@virtlet-mount-script@\n",
                )],
                SeedKind::NoCloud,
            ),
        ),
    ];
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    for (name, inp) in cases {
        let got = render(&inp);
        let path = dir.join(format!("{name}.txt"));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
        assert_eq!(got, want, "{name} differs from {}", path.display());
    }
}

#[test]
fn sources_merge_and_overwrite() {
    let mut inp = input(
        &[(
            "VirtletCloudInitUserData",
            "runcmd:\n  - echo b\nhostname: from-annotation\n",
        )],
        SeedKind::NoCloud,
    );
    inp.command.clear();
    inp.files.clear();
    inp.env.clear();
    inp.source_entries = vec![
        ("runcmd".into(), b"- echo a\n".to_vec()),
        ("hostname".into(), b"from-source".to_vec()),
    ];
    inp.source_ssh_keys = vec!["ssh-rsa SRC".into()];
    inp.annotations.ssh_keys = vec!["ssh-rsa ANN".into()];
    let d = generate(&inp).unwrap();
    assert!(
        d.user_data.contains("- echo a\n- echo b"),
        "lists append:\n{}",
        d.user_data
    );
    assert!(
        d.user_data.contains("hostname: from-annotation"),
        "scalars override:\n{}",
        d.user_data
    );
    assert_eq!(
        d.meta_data["public-keys"],
        serde_json::json!(["ssh-rsa SRC", "ssh-rsa ANN"])
    );

    inp.annotations.user_data_overwrite = true;
    let d = generate(&inp).unwrap();
    assert!(
        !d.user_data.contains("echo a"),
        "overwrite drops the source:\n{}",
        d.user_data
    );
    assert_eq!(
        d.meta_data["public-keys"],
        serde_json::json!(["ssh-rsa ANN"])
    );
}

#[test]
fn source_key_scripts_and_encodings() {
    let mut inp = input(
        &[
            ("VirtletCloudInitUserDataSource", "secret/ud"),
            ("VirtletCloudInitUserDataSourceKey", "script"),
            ("VirtletCloudInitUserDataSourceEncoding", "base64"),
        ],
        SeedKind::NoCloud,
    );
    inp.source_entries = vec![("script".into(), b"IyEvYmluL3NoCmVjaG8gaGkK".to_vec())];
    assert_eq!(generate(&inp).unwrap().user_data, "#!/bin/sh\necho hi\n");
    inp.source_entries = vec![("script".into(), b"not base64!!".to_vec())];
    let e = generate(&inp).unwrap_err();
    assert!(
        matches!(
            e,
            CloudInitError::Source {
                expected: "base64",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("\"script\""), "{e}");
    // A key the source does not have is an error naming it, as in Mirantis Virtlet.
    inp.source_entries = vec![("other".into(), b"x".to_vec())];
    let e = generate(&inp).unwrap_err();
    assert_eq!(
        e.to_string(),
        "user-data script source not found under key \"script\" (VirtletCloudInitUserDataSourceKey) in secret/ud"
    );
}

#[test]
fn too_much_user_data_is_refused() {
    let mut inp = input(&[], SeedKind::NoCloud);
    inp.files = vec![WriteFile {
        path: "/big".into(),
        content: vec![b'x'; 13 << 20],
        permissions: 0o644,
    }];
    let e = generate(&inp).unwrap_err();
    assert!(matches!(e, CloudInitError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("more than the 16777216"), "{e}");
}

#[test]
fn environment_lines_are_virtlets_and_safe_to_source() {
    let text = virtlet_cloudinit::generate::environment_file(&[
        ("A".into(), "x'; rm -rf / #".into()),
        ("B".into(), "$HOME `id`".into()),
        ("C".into(), "http://10.96.0.1:443/api,v=1".into()),
        ("D".into(), String::new()),
    ]);
    // Plain values are written as Mirantis Virtlet wrote them.
    assert!(
        text.contains("\nC=http://10.96.0.1:443/api,v=1\nD=\n"),
        "{text}"
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{text}printf '%s|%s|%s|%s' \"$A\" \"$B\" \"$C\" \"$D\""
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "x'; rm -rf / #|$HOME `id`|http://10.96.0.1:443/api,v=1|"
    );
}

#[test]
fn seeds_carry_the_label_and_files() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, label, file) in [
        (SeedKind::NoCloud, "CIDATA", "::/meta-data"),
        (
            SeedKind::ConfigDrive,
            "CONFIG-2",
            "::/openstack/latest/meta_data.json",
        ),
    ] {
        let data = generate(&input(&[], kind)).unwrap();
        let img = dir.path().join(format!("{label}.img"));
        virtlet_cloudinit::seed::write_seed(&data, &img).unwrap();
        let out = std::process::Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(label), "label {text}");
        let out = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file} missing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("instance-id"));
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        assert_eq!(leftovers, 0, "no staging dir left");
    }
}

#[test]
fn sysctls_are_set_at_every_boot() {
    let sysctls = vec![
        ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
        ("kernel.msgmax".to_owned(), "8192".to_owned()),
    ];
    let mut i = input(
        &[("VirtletCloudInitUserData", "bootcmd:\n- [echo, mine]\n")],
        SeedKind::NoCloud,
    );
    i.sysctls = sysctls.clone();
    let data = generate(&i).unwrap();
    let user: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(data.user_data.trim_start_matches("#cloud-config\n")).unwrap();
    let bootcmd = serde_yaml_ng::to_string(&user["bootcmd"]).unwrap();
    assert_eq!(
        bootcmd,
        "- - echo\n  - mine\n- - sysctl\n  - -w\n  - kernel.shm_rmid_forced=1\n- - sysctl\n  - -w\n  - kernel.msgmax=8192\n"
    );
    // A shell script gets them as its first commands; other scripts are left alone.
    let mut i = input(
        &[("VirtletCloudInitUserDataScript", "#!/bin/sh\necho hi\n")],
        SeedKind::NoCloud,
    );
    i.sysctls = sysctls.clone();
    assert_eq!(
        generate(&i).unwrap().user_data,
        "#!/bin/sh\nsysctl -w 'kernel.shm_rmid_forced=1'\nsysctl -w 'kernel.msgmax=8192'\necho hi\n"
    );
    let mut i = input(
        &[(
            "VirtletCloudInitUserDataScript",
            "#!/usr/bin/python3\nprint(1)\n",
        )],
        SeedKind::NoCloud,
    );
    i.sysctls = sysctls;
    assert_eq!(
        generate(&i).unwrap().user_data,
        "#!/usr/bin/python3\nprint(1)\n"
    );
}

#[test]
fn the_pods_hostname_wins_over_its_name() {
    let mut i = input(&[], SeedKind::ConfigDrive);
    assert_eq!(generate(&i).unwrap().meta_data["local-hostname"], "vm1");
    i.hostname = "web-0";
    let data = generate(&i).unwrap();
    assert_eq!(data.meta_data["local-hostname"], "web-0");
    assert_eq!(data.meta_data["hostname"], "web-0");
}

#[test]
fn resolver_options_go_to_resolv_conf() {
    let dns = virtlet_core::netinfo::DnsInfo {
        servers: vec!["10.10.10.10".parse().unwrap()],
        search: vec!["google.com".into()],
        options: vec!["ndots:8".into(), "rotate".into(), "attempts:x".into()],
    };
    let mut i = input(&[], SeedKind::NoCloud);
    i.dns = Some(&dns);
    let data = generate(&i).unwrap();
    let user: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(data.user_data.trim_start_matches("#cloud-config\n")).unwrap();
    assert_eq!(user["manage_resolv_conf"], serde_yaml_ng::Value::Bool(true));
    assert_eq!(
        serde_yaml_ng::to_string(&user["resolv_conf"]).unwrap(),
        "nameservers:\n- 10.10.10.10\nsearchdomains:\n- google.com\noptions:\n  ndots: 8\n  rotate: true\n  attempts: x\n"
    );
    // Without options nothing takes over the guest's resolv.conf.
    let plain = virtlet_core::netinfo::DnsInfo {
        options: vec![],
        ..dns.clone()
    };
    let mut i = input(&[], SeedKind::NoCloud);
    i.dns = Some(&plain);
    assert!(!generate(&i).unwrap().user_data.contains("resolv_conf"));
}
