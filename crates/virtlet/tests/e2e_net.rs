//! End to end pod networking with real VMs: Debian's bridge + host-local + portmap plugins,
//! the tiny image under libvirtd. The VMs get their pod IPs (one by DHCP, one from the
//! network-config), the host reaches them (ping, ssh banner, a hostPort), one VM reaches the
//! other by a name resolved with the pod's search domain, ssh with the key from
//! `VirtletSSHKeys` works, and after a daemon restart the DHCP lease still renews.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cni::TestNet;
use common::vm::{
    DomainGuard, MARKER, require_libvirtd, run_vm_pod, serve_and_pull, tiny_image, wait_for_log,
};
use common::{Daemon, Options};
use k8s_cri::v1 as api;

/// A DNS server for the test's zone: answers `A` queries for names it knows, NXDOMAIN for
/// the rest, and remembers what it was asked.
async fn dns_server(bind: Ipv4Addr, zone: HashMap<String, Ipv4Addr>) -> Arc<Mutex<Vec<String>>> {
    let sock = tokio::net::UdpSocket::bind((bind, 53)).await.unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                break;
            };
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            // The question: labels from byte 12, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let l = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + l).min(n)]).to_lowercase());
                i += 1 + l;
            }
            let qend = i + 5;
            if qend > n {
                continue;
            }
            let name = labels.join(".");
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            log.lock().unwrap().push(name.clone());
            let answer = zone.get(&name).filter(|_| qtype == 1);
            let mut r = q[..qend].to_vec();
            r[2] = 0x84 | (q[2] & 0x01); // response, authoritative, RD copied
            r[3] = if answer.is_some() || zone.contains_key(&name) {
                0x00
            } else {
                0x03
            };
            r[6..8].copy_from_slice(&[0, u8::from(answer.is_some())]);
            r[8..12].copy_from_slice(&[0, 0, 0, 0]);
            if let Some(ip) = answer {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&ip.octets());
            }
            let _ = sock.send_to(&r, peer).await;
        }
    });
    asked
}

fn ssh_banner(addr: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs `cmd` in the VM over ssh (dropbear's client) with the key in `dir`.
fn ssh(dir: &Path, ip: &str, cmd: &str) -> String {
    let out = Command::new("dbclient")
        .env("HOME", dir)
        .args(["-y", "-y", "-i"])
        .arg(dir.join("id_ed25519"))
        .arg(format!("root@{ip}"))
        .arg(cmd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        out.status.success(),
        "ssh {ip} {cmd:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn make_key(dir: &Path) -> String {
    let key = dir.join("id_ed25519");
    let st = Command::new("dropbearkey")
        .args(["-t", "ed25519", "-f"])
        .arg(&key)
        .output()
        .expect("dropbearkey is missing: scripts/setup-host installs dropbear-bin");
    assert!(st.status.success());
    let out = Command::new("dropbearkey")
        .args(["-y", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("ssh-"))
        .unwrap()
        .to_owned()
}

fn ping(ip: &str) -> bool {
    Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "3", ip])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Pod {
    sandbox: String,
    ip: String,
    log: std::path::PathBuf,
}

#[allow(clippy::too_many_arguments)]
async fn start_pod(
    d: &Daemon,
    guard: &mut DomainGuard,
    image: &str,
    name: &str,
    annotations: HashMap<String, String>,
    net: &TestNet,
    host_port: i32,
) -> Pod {
    let mut rt = d.runtime().await;
    let logs = d.dir.path().join("logs").join(name);
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        annotations,
        dns_config: Some(api::DnsConfig {
            servers: vec![net.gateway()],
            searches: vec!["virtlet.test".into()],
            options: vec![],
        }),
        port_mappings: if host_port > 0 {
            vec![api::PortMapping {
                protocol: api::Protocol::Tcp as i32,
                container_port: 22,
                host_port,
                host_ip: String::new(),
            }]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let (sandbox, _) = run_vm_pod(d, guard, config, image).await;
    let ip = rt
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    Pod {
        sandbox,
        ip,
        log: logs.join("vm.log"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_pods_get_their_ips_reach_each_other_and_are_reached() {
    require_libvirtd();
    let image = tiny_image();
    let net = TestNet::new(21);
    let mut d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        cni_conflist: Some(net.conflist(60, true, &[])),
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let keys = tempfile::tempdir().unwrap();
    let pubkey = make_key(keys.path());

    // A asks DHCP for everything; B applies the network-config virtlet writes.
    let a = start_pod(
        &d,
        &mut guard,
        &name,
        "net-a",
        HashMap::from([
            (
                "VirtletForceDHCPNetworkConfig".to_owned(),
                "true".to_owned(),
            ),
            ("VirtletSSHKeys".to_owned(), pubkey.clone()),
        ]),
        &net,
        30122,
    )
    .await;
    let b = start_pod(
        &d,
        &mut guard,
        &name,
        "net-b",
        HashMap::from([("VirtletSSHKeys".to_owned(), pubkey.clone())]),
        &net,
        0,
    )
    .await;
    // The host bridge exists now: the test's DNS server listens on its address, and knows
    // B as `peer.virtlet.test`.
    let asked = dns_server(
        net.gateway().parse().unwrap(),
        HashMap::from([("peer.virtlet.test".to_owned(), b.ip.parse().unwrap())]),
    )
    .await;

    for p in [&a, &b] {
        wait_for_log(&p.log, MARKER, Duration::from_secs(120)).await;
        let text = std::fs::read_to_string(&p.log).unwrap();
        assert!(
            text.contains(&format!("ip={}", p.ip)),
            "the guest's first address is not the pod IP {}:\n{text}",
            p.ip
        );
    }
    let text_a = std::fs::read_to_string(&a.log).unwrap();
    assert!(text_a.contains("DHCP on"), "A used DHCP:\n{text_a}");

    // The host reaches both: ping, the ssh banner, and A's hostPort.
    for p in [&a, &b] {
        assert!(ping(&p.ip), "no ping answer from {}", p.ip);
        let banner = ssh_banner(&format!("{}:22", p.ip));
        assert!(banner.starts_with("SSH-2.0"), "{banner:?}");
    }
    let banner = ssh_banner(&format!("{}:30122", net.gateway()));
    assert!(banner.starts_with("SSH-2.0"), "hostPort 30122: {banner:?}");

    // ssh with the injected key; A reaches B by address and by a name found through the
    // pod's search domain.
    let out = ssh(
        keys.path(),
        &a.ip,
        "hostname; cat /etc/resolv.conf; ping -c 1 -W 3 peer && echo PEER-OK",
    );
    assert!(out.contains("net-a"), "{out}");
    assert!(out.contains("search virtlet.test"), "{out}");
    assert!(
        out.contains(&format!("nameserver {}", net.gateway())),
        "{out}"
    );
    assert!(out.contains(&b.ip) && out.contains("PEER-OK"), "{out}");
    assert!(
        asked
            .lock()
            .unwrap()
            .iter()
            .any(|n| n == "peer.virtlet.test"),
        "{:?}",
        asked.lock().unwrap()
    );
    let out = ssh(
        keys.path(),
        &b.ip,
        &format!("ping -c 1 -W 3 {} && echo A-OK", a.ip),
    );
    assert!(out.contains("A-OK"), "{out}");

    // After a daemon restart the responder is back: A's renewal (unicast to the responder)
    // is answered, and the answer reaches the guest.
    d.restart().await;
    let log_mark = d.log_text().len();
    // Datagrams that reached the guest's UDP layer: delivered (InDatagrams) or, when they beat
    // udhcpc's switch to its listening socket, counted as NoPorts. Either way the answer got
    // there; udhcpc retries on its own.
    let udp_in = |text: &str| -> u64 {
        let line = text
            .lines()
            .filter(|l| l.starts_with("Udp: "))
            .nth(1)
            .unwrap_or_default();
        line.split_whitespace()
            .skip(1)
            .take(2)
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    };
    let out = ssh(
        keys.path(),
        &a.ip,
        "grep Udp: /proc/net/snmp; kill -USR1 $(cat /run/udhcpc.eth0.pid); sleep 3; echo ---; grep Udp: /proc/net/snmp",
    );
    let (before, after) = out.split_once("---").unwrap();
    let log = d.log_text()[log_mark..].to_owned();
    assert!(
        log.contains("DHCPACK") && log.contains(&format!("ip={}", a.ip)),
        "the restarted daemon did not answer A's renewal:\n{log}"
    );
    assert!(
        udp_in(after) > udp_in(before),
        "the renewal's answer did not reach the guest:\n{out}"
    );

    let mut rt = d.runtime().await;
    for p in [&a, &b] {
        rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: p.sandbox.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: p.sandbox.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(net.allocated(), Vec::<String>::new());
    assert!(!ping(&a.ip));
}
