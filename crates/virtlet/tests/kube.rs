//! ConfigMaps and Secrets named by cloud-init annotations, read from an API server given by
//! `--kubeconfig`. No kube-apiserver can be installed here, so a real HTTPS server (its own
//! CA, bearer-token check) answers the two API paths with the JSON a kube-apiserver sends.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{Daemon, Options, assert_status};
use k8s_cri::v1 as api;
use tonic::Code;
use virtlet_testkit::{Route, TestCa, TestServer, qcow2_image};

const TOKEN: &str = "s3cret-token";

fn b64(data: &[u8]) -> String {
    // A tiny encoder keeps the test free of another dependency.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn api_object(path: &str, api: &TestServer, json: serde_json::Value) {
    api.route(
        path,
        Route::Authorized {
            authorization: format!("Bearer {TOKEN}"),
            body: Bytes::from(json.to_string()),
        },
    );
}

fn kubeconfig(dir: &Path, server: &str, ca_pem: &str, token: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: node\n\
             clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
             users:\n- name: virtlet\n  user:\n    token: {token}\n\
             contexts:\n- name: node\n  context: {{cluster: test, user: virtlet}}\n",
            b64(ca_pem.as_bytes())
        ),
    )
    .unwrap();
    path
}

fn seed_file(d: &Daemon, sandbox: &str, name: &str) -> String {
    let dir = d.dir.path().join("vms").join(sandbox);
    let seed = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".seed.img"))
        .unwrap_or_else(|| panic!("no seed in {}", dir.display()));
    let out = std::process::Command::new("mtype")
        .args(["-i"])
        .arg(&seed)
        .arg(format!("::{name}"))
        .output()
        .expect("mtype (package mtools) is needed to read the seed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn pod_with(d: &Daemon, uid: &str, annotations: &[(&str, &str)]) -> String {
    d.runtime()
        .await
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod_config(uid, annotations)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id
}

fn pod_config(uid: &str, annotations: &[(&str, &str)]) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: format!("vm-{uid}"),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

async fn create(d: &Daemon, pod: &str, image: &str) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(common::vm_container(image)),
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn containers(d: &Daemon) -> usize {
    d.runtime()
        .await
        .list_containers(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_come_from_the_api_server_and_every_failure_is_named() {
    let ca = TestCa::new("test apiserver CA").unwrap();
    let apiserver = TestServer::https(&ca, &[], None).await.unwrap();
    api_object(
        "/api/v1/namespaces/default/configmaps/vm-user-data",
        &apiserver,
        serde_json::json!({
            "kind": "ConfigMap", "apiVersion": "v1",
            "data": {"user-data": "runcmd:\n- [echo, from-the-configmap]\n"},
        }),
    );
    api_object(
        "/api/v1/namespaces/default/secrets/vm-keys",
        &apiserver,
        serde_json::json!({
            "kind": "Secret", "apiVersion": "v1",
            "data": {"authorized_keys": b64(b"# ops\nssh-ed25519 AAAAFromTheSecret ops@example\n")},
        }),
    );
    apiserver.route(
        "/api/v1/namespaces/default/configmaps/broken",
        Route::Status(500),
    );
    apiserver.route(
        "/api/v1/namespaces/default/secrets/other-token",
        Route::Authorized {
            authorization: "Bearer another".into(),
            body: Bytes::from_static(b"{}"),
        },
    );

    let conf_dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(conf_dir.path(), &apiserver.url(""), &ca.cert_pem, TOKEN);
    let d = Daemon::start_with(Options {
        extra_env: vec![("VIRTLET_KUBECONFIG".into(), kc.display().to_string())],
        ..Default::default()
    })
    .await;
    let images = TestServer::http().await.unwrap();
    images.route(
        "/vm.qcow2",
        Route::Content(Bytes::from(qcow2_image("64M").unwrap())),
    );
    let image = format!("virtlet.cloud/{}", images.location("/vm.qcow2"));
    d.pull(&image).await.unwrap();

    // Both sources are read and end up in the seed.
    let pod = pod_with(
        &d,
        "kube-ok",
        &[
            ("VirtletCloudInitUserDataSource", "configmap/vm-user-data"),
            ("VirtletSSHKeySource", "secret/vm-keys"),
            ("VirtletSSHKeys", "ssh-rsa AAAAFromTheAnnotation x@y"),
        ],
    )
    .await;
    create(&d, &pod, &image).await.unwrap();
    let user_data = seed_file(&d, &pod, "user-data");
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains("from-the-configmap"), "{user_data}");
    let meta = seed_file(&d, &pod, "meta-data");
    let secret_at = meta.find("AAAAFromTheSecret").expect(&meta);
    let annotation_at = meta.find("AAAAFromTheAnnotation").expect(&meta);
    assert!(
        secret_at < annotation_at,
        "the source's keys come first: {meta}"
    );
    assert!(
        !meta.contains("# ops"),
        "comment lines are not keys: {meta}"
    );

    // Each failure: the right code, a message naming the annotation and the object, and no
    // container left behind.
    let before = containers(&d).await;
    for (uid, annotations, code, needles) in [
        (
            "missing",
            vec![("VirtletCloudInitUserDataSource", "configmap/nope")],
            Code::FailedPrecondition,
            vec![
                "VirtletCloudInitUserDataSource",
                "configmap default/nope does not exist",
            ],
        ),
        (
            "nokey",
            vec![("VirtletSSHKeySource", "secret/vm-keys/id_rsa.pub")],
            Code::FailedPrecondition,
            vec![
                "VirtletSSHKeySource",
                "has no key \"id_rsa.pub\"",
                "authorized_keys",
            ],
        ),
        (
            "refused",
            vec![("VirtletSSHKeySource", "secret/other-token")],
            Code::FailedPrecondition,
            vec!["secret default/other-token", "HTTP 401", "Unauthorized"],
        ),
        (
            "broken",
            vec![("VirtletCloudInitUserDataSource", "configmap/broken")],
            Code::Unavailable,
            vec!["configmap default/broken", "HTTP 500"],
        ),
    ] {
        let pod = pod_with(&d, uid, &annotations).await;
        assert_status(create(&d, &pod, &image).await, code, &needles);
    }
    assert_eq!(
        containers(&d).await,
        before,
        "a failed CreateContainer left a container"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_kubeconfig_stops_the_daemon_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, "current-context: nowhere\ncontexts: []\n").unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["--kubeconfig"])
        .arg(&kc)
        .args(["--listen"])
        .arg(dir.path().join("s.sock"))
        .args(["--libvirt-uri", "test:///default", "--disable-kvm"])
        .arg("--database-path")
        .arg(dir.path().join("db"))
        .arg("--image-dir")
        .arg(dir.path().join("images"))
        .arg("--vm-dir")
        .arg(dir.path().join("vms"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--netns-dir")
        .arg(dir.path().join("netns"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kubeconfig") && err.contains("failed to load current context: nowhere"),
        "{err}"
    );
}
