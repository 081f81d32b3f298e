//! kubectl attach and port-forward against a real VM, through a Rust client speaking the
//! protocols kubectl and the kubelet speak: attach over SPDY v4 and WebSocket v5 at the same
//! time (a command typed into the tiny VM's serial shell, its output read back, Ctrl-] to
//! detach without stopping the VM, the CRI log still written), port-forward over SPDY and
//! WebSocket to the VM's ssh port, and a refused port reported on the error stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cni::TestNet;
use common::vm::{
    DomainGuard, MARKER, require_libvirtd, run_vm_pod, serve_and_pull, tiny_image, wait_for_log,
};
use common::{Daemon, Options};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as api;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use virtlet_stream::client::{connect_websocket, upgrade_spdy};
use virtlet_wire::spdy;

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Reads a SPDY stream until `needle` shows up (or panics after `within`).
async fn read_until(stream: &mut spdy::Stream, needle: &str, within: Duration) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + within;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, stream.read()).await {
            Ok(Some(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(None) => panic!("the stream ended before {needle:?}; it said:\n{seen}"),
            Err(_) => panic!("no {needle:?} within {within:?}; the stream said:\n{seen}"),
        }
    }
    seen
}

async fn ws_read_until(
    ws: &mut WebSocketStream<tokio::net::TcpStream>,
    channel: u8,
    needle: &str,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(m)))) if m.first() == Some(&channel) => {
                seen.push_str(&String::from_utf8_lossy(&m[1..]));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no {needle:?} on channel {channel}: {other:?}; seen:\n{seen}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_and_port_forward_reach_the_vm() {
    require_libvirtd();
    let image = tiny_image();
    let net = TestNet::new(31);
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        cni_conflist: Some(net.conflist(60, false, &[])),
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let mut rt = d.runtime().await;
    let logs = d.dir.path().join("logs/stream");
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "stream".into(),
            uid: "uid-stream".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let (pod, c) = run_vm_pod(&d, &mut guard, config, &name).await;
    let log = logs.join("vm.log");
    wait_for_log(&log, MARKER, Duration::from_secs(120)).await;
    let fds_before = fd_links(d.child.as_ref().unwrap().id());

    // Attach over SPDY v4 (kubectl attach -i -t).
    let url = rt
        .attach(api::AttachRequest {
            container_id: c.clone(),
            stdin: true,
            stdout: true,
            tty: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (io, protocol) = upgrade_spdy(&url, "", &["v4.channel.k8s.io", "v3.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let (session, _incoming) = spdy::Session::client(io);
    let mut error = session
        .open_stream(h(&[("streamtype", "error")]), false)
        .await
        .unwrap();
    let stdin = session
        .open_stream(h(&[("streamtype", "stdin")]), false)
        .await
        .unwrap();
    let mut stdout = session
        .open_stream(h(&[("streamtype", "stdout")]), false)
        .await
        .unwrap();
    let resize = session
        .open_stream(h(&[("streamtype", "resize")]), false)
        .await
        .unwrap();
    resize.write(br#"{"Width":120,"Height":40}"#).await.unwrap();

    // A second client at the same time, over WebSocket v5.
    let url2 = rt
        .attach(api::AttachRequest {
            container_id: c.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, protocol) =
        connect_websocket(&url2, "", &["v5.channel.k8s.io", "v4.channel.k8s.io"])
            .await
            .unwrap();
    assert_eq!(protocol, "v5.channel.k8s.io");

    stdin.write(b"echo attach-$((6*7))\r").await.unwrap();
    let seen = read_until(&mut stdout, "attach-42", Duration::from_secs(30)).await;
    assert!(seen.contains("attach-42"), "{seen}");
    ws_read_until(&mut ws, 1, "attach-42").await;
    // Ctrl-] detaches this client: the session ends with Success, the VM runs on.
    stdin.write(&[0x1d]).await.unwrap();
    let status = read_until(&mut error, "Success", Duration::from_secs(10)).await;
    assert!(status.contains(r#""status":"Success""#), "{status}");
    let st = rt
        .container_status(api::ContainerStatusRequest {
            container_id: c.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, api::ContainerState::ContainerRunning as i32);
    // The console kept going to the CRI log while attached.
    wait_for_log(&log, "attach-42", Duration::from_secs(5)).await;
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);

    // Port-forward over SPDY: two connections to the ssh port at once, and a refused port.
    let url = rt
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![22],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (io, _) = upgrade_spdy(&url, "", &["portforward.k8s.io"])
        .await
        .unwrap();
    let (session, _incoming) = spdy::Session::client(io);
    let mut datas = Vec::new();
    for (rid, port) in [("0", "22"), ("1", "22")] {
        let _err = session
            .open_stream(
                h(&[("streamtype", "error"), ("port", port), ("requestid", rid)]),
                false,
            )
            .await
            .unwrap();
        let data = session
            .open_stream(
                h(&[("streamtype", "data"), ("port", port), ("requestid", rid)]),
                false,
            )
            .await
            .unwrap();
        datas.push((_err, data));
    }
    for (_, data) in &mut datas {
        let banner = read_until(data, "SSH-2.0", Duration::from_secs(20)).await;
        assert!(banner.starts_with("SSH-2.0"), "{banner}");
    }
    let mut refused_err = session
        .open_stream(
            h(&[("streamtype", "error"), ("port", "23"), ("requestid", "2")]),
            false,
        )
        .await
        .unwrap();
    let _refused_data = session
        .open_stream(
            h(&[("streamtype", "data"), ("port", "23"), ("requestid", "2")]),
            false,
        )
        .await
        .unwrap();
    let msg = read_until(&mut refused_err, "23", Duration::from_secs(20)).await;
    assert!(
        msg.contains("error forwarding port 23 to pod")
            && msg.contains("uid : ")
            && msg.to_lowercase().contains("refused"),
        "{msg}"
    );
    session.close().await;

    // Port-forward over WebSocket.
    let url = rt
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![22],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = connect_websocket(&url, "port=22", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let banner = ws_read_until(&mut ws, 0, "SSH-2.0").await;
    assert!(banner.contains("SSH-2.0"), "{banner}");
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);

    // Nothing stays open in the daemon: a detached attach session lingers 2 s for its
    // client's goodbye, so this waits for a little longer than that.
    let t0 = std::time::Instant::now();
    let mut fds_after = fd_links(d.child.as_ref().unwrap().id());
    while fds_after.len() > fds_before.len() && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds_after = fd_links(d.child.as_ref().unwrap().id());
    }
    let opened: Vec<&String> = fds_after
        .iter()
        .filter(|(fd, link)| fds_before.get(*fd) != Some(link))
        .map(|(_, link)| link)
        .collect();
    assert!(
        fds_after.len() <= fds_before.len(),
        "fds {} -> {}; new: {opened:?}",
        fds_before.len(),
        fds_after.len()
    );

    // An attached client is let go when the VM stops.
    let url = rt
        .attach(api::AttachRequest {
            container_id: c.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = connect_websocket(&url, "", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    rt.stop_container(api::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let status = ws_read_until(&mut ws, 3, "Success").await;
    assert!(status.contains(r#""status":"Success""#), "{status}");

    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

/// The daemon's open files: fd number -> what it points at.
fn fd_links(pid: u32) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let mut link = std::fs::read_link(e.path())
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            // A socket: which one, from the kernel's tables.
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
            {
                for table in ["tcp", "tcp6", "udp", "unix"] {
                    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
                        .unwrap_or_default();
                    if let Some(line) = text
                        .lines()
                        .find(|l| l.split_whitespace().any(|f| f == inode.as_str()))
                    {
                        link = format!("{link} {table} {}", line.trim());
                    }
                }
            }
            (e.file_name().to_string_lossy().into_owned(), link)
        })
        .collect()
}
