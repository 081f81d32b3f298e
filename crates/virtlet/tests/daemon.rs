//! The daemon as a process: socket, lock, health, signals, configuration, startup GC.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use bytes::Bytes;
use common::{Daemon, binary, connect};
use k8s_cri::v1::{RuntimeConfigRequest, StatusRequest, VersionRequest};
use tonic::Code;
use virtlet_testkit::{Route, TestServer, raw_image};

#[tokio::test(flavor = "multi_thread")]
async fn serves_version_status_health_on_a_private_socket() {
    let d = Daemon::start().await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");

    let mut rt = d.runtime().await;
    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "virtlet");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let st = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    let runtime_ready = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime_ready.status);
    // The harness gives the daemon a usable (loopback) CNI config; network.rs covers the rest.
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(net.status, "{net:?}");

    let rc = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        k8s_cri::v1::CgroupDriver::Cgroupfs as i32
    );

    // ExecSync checks its input before anything else.
    let err = rt
        .exec_sync(k8s_cri::v1::ExecSyncRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cmd is empty"), "{}", err.message());

    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    for service in ["", "runtime.v1.RuntimeService", "runtime.v1.ImageService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_is_refused_and_sigterm_stops_gracefully() {
    let mut d = Daemon::start().await;
    let out = d.command("http").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another virtlet is already serving")
            && stderr.contains(&d.socket.display().to_string()),
        "{stderr}"
    );
    // The first daemon is unharmed.
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();

    let status = d.terminate();
    assert!(
        status.success(),
        "SIGTERM must stop virtlet cleanly: {status}"
    );
    assert!(!d.socket.exists(), "the socket is removed on shutdown");
    assert!(d.log_text().contains("SIGTERM received"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced() {
    let mut d = Daemon::start().await;
    // SIGKILL leaves the socket file behind.
    d.kill();
    assert!(d.socket.exists());
    assert!(
        connect(&d.socket).await.is_err() || {
            // A connect may succeed at the socket layer only to fail on the first call.
            let mut rt = d.runtime().await;
            rt.version(VersionRequest::default()).await.is_err()
        }
    );
    d.restart().await;
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
    assert!(d.log_text().contains("replacing a stale socket"));
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_gc_removes_partial_and_unreferenced_data_and_keeps_images() {
    let mut d = Daemon::start().await;
    let server = TestServer::http().await.unwrap();
    server.route("/a.img", Route::Content(Bytes::from(raw_image(4096, 1))));
    let pulled = d
        .pull(&format!("virtlet.cloud/{}", server.location("/a.img")))
        .await
        .unwrap();
    let hex = pulled.rsplit(':').next().unwrap().to_owned();
    d.kill();

    let partial = d.image_dir.join("tmp/pull-00000000deadbeef");
    std::fs::write(&partial, b"half an image").unwrap();
    let orphan = d.image_dir.join("blobs/sha256").join("a".repeat(64));
    std::fs::write(&orphan, b"nobody refers to me").unwrap();

    d.restart().await;
    assert!(!partial.exists(), "temp downloads are removed at startup");
    assert!(!orphan.exists(), "unreferenced data is removed at startup");
    assert!(
        d.image_dir.join("blobs/sha256").join(&hex).exists(),
        "pulled data stays"
    );
    assert!(d.status(&pulled, false).await.image.is_some());
}

#[test]
fn a_newer_database_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("virtlet.db");
    {
        let db = redb::Database::create(&db_path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u32> = redb::TableDefinition::new("meta");
            let mut t = txn.open_table(def).unwrap();
            t.insert("schema_version", virtlet_store::SCHEMA_VERSION + 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let out = Command::new(binary())
        .arg("--listen")
        .arg(dir.path().join("v.sock"))
        .arg("--database-path")
        .arg(&db_path)
        .arg("--image-dir")
        .arg(dir.path().join("img"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "schema version {}",
            virtlet_store::SCHEMA_VERSION + 1
        )) && stderr.contains("newer"),
        "{stderr}"
    );
}

#[test]
fn invalid_settings_exit_nonzero_naming_setting_and_value() {
    let out = Command::new(binary())
        .args(["--image-download-protocol", "gopher"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--image-download-protocol") && stderr.contains("gopher"),
        "{stderr}"
    );

    let out = Command::new(binary())
        .env("VIRTLET_STREAM_PORT", "http")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VIRTLET_STREAM_PORT=\"http\""));

    let out = Command::new(binary())
        .args(["--dump-config", "--image-dir", "/flag/images"])
        .env("VIRTLET_DOWNLOAD_PROTOCOL", "http")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("export VIRTLET_IMAGE_DIR='/flag/images'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("export VIRTLET_DOWNLOAD_PROTOCOL='http'"),
        "{stdout}"
    );
}
