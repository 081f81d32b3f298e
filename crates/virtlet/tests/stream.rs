//! The streaming server's refusals, over the real socket and HTTP, with libvirt's test driver:
//! bad CRI requests, unknown and used-up tokens, unsupported subprotocols, a pod connection
//! that fails; and exec's clear UNIMPLEMENTED. Real attach and port-forward are in
//! `e2e_stream.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, assert_status};
use futures::StreamExt;
use k8s_cri::v1 as api;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;
use virtlet_stream::client::{ClientError, connect_websocket, upgrade_spdy};

async fn ready_pod(d: &Daemon) -> String {
    d.runtime()
        .await
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: "s".into(),
                    uid: "uid-s".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id
}

async fn pf_url(d: &Daemon, id: &str, ports: Vec<i32>) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: id.into(),
            port: ports,
        })
        .await
        .map(|r| r.into_inner().url)
}

fn refused<T>(r: Result<(T, String), ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, body }) => (status, body),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, protocol)) => panic!("expected an HTTP refusal, got an upgrade to {protocol}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_stream_requests_get_clean_errors() {
    let d = Daemon::start().await;
    let mut rt = d.runtime().await;
    // CRI side.
    assert_status(
        rt.attach(api::AttachRequest {
            container_id: "nope".into(),
            stdout: true,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["nope"],
    );
    assert_status(
        rt.attach(api::AttachRequest {
            container_id: "x".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["at least one of stdin, stdout and stderr"],
    );
    assert_status(
        pf_url(&d, "nope", vec![22]).await,
        Code::NotFound,
        &["nope"],
    );
    let pod = ready_pod(&d).await;
    assert_status(
        pf_url(&d, &pod, vec![70000]).await,
        Code::InvalidArgument,
        &["port[0] 70000"],
    );
    // Exec: its checks come before a URL is handed out.
    assert_status(
        rt.exec(api::ExecRequest {
            container_id: "x".into(),
            cmd: vec!["ls".into()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["at least one of stdin, stdout and stderr"],
    );
    assert_status(
        rt.exec(api::ExecRequest {
            container_id: "x".into(),
            cmd: vec!["ls".into()],
            stdout: true,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["container \"x\""],
    );
    assert_status(
        rt.exec(api::ExecRequest {
            container_id: "x".into(),
            stdout: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["cmd is empty"],
    );
    // ExecSync of a container that does not exist.
    assert_status(
        rt.exec_sync(api::ExecSyncRequest {
            container_id: "x".into(),
            cmd: vec!["ls".into()],
            timeout: 1,
        })
        .await,
        Code::NotFound,
        &["container \"x\""],
    );

    // HTTP side.
    let url = pf_url(&d, &pod, vec![22]).await.unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let base = url.rsplit_once('/').unwrap().0.to_owned();
    let (status, body) =
        refused(upgrade_spdy(&format!("{base}/not-a-token"), "", &["portforward.k8s.io"]).await);
    assert_eq!(status, 404, "{body}");
    // An unsupported subprotocol: 403 naming both sides.
    let (status, body) = refused(upgrade_spdy(&url, "", &["v9.portforward.example"]).await);
    assert_eq!(status, 403);
    assert!(
        body.contains("unable to negotiate protocol") && body.contains("portforward.k8s.io"),
        "{body}"
    );
    // Tokens are single-use: that request used this one up.
    let (status, _) = refused(upgrade_spdy(&url, "", &["portforward.k8s.io"]).await);
    assert_eq!(status, 404);
    // A fresh token works once; the pod has no address (loopback network), so the stream
    // reports the failure on its error channel.
    let url = pf_url(&d, &pod, vec![22]).await.unwrap();
    let (mut ws, protocol) = connect_websocket(&url, "port=22", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let mut error_text = String::new();
    for _ in 0..4 {
        match ws.next().await {
            Some(Ok(Message::Binary(m))) if m[0] == 1 && m.len() > 3 => {
                error_text = String::from_utf8_lossy(&m[1..]).into_owned();
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(error_text.contains("has no IPv4 address"), "{error_text:?}");
    let (status, _) = refused(connect_websocket(&url, "port=22", &["v4.channel.k8s.io"]).await);
    assert_eq!(status, 404);
    // No upgrade at all.
    let url = pf_url(&d, &pod, vec![22]).await.unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}
