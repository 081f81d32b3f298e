//! Pod networking over the real socket with Debian's CNI plugins (bridge, host-local,
//! portmap, tuning) and libvirt's test driver (no QEMU): addresses, the bridge and tap in the
//! netns, the DHCP responder answering only the VM's MAC, teardown, faults, restarts, leaks.
//! A veth with the VM's MAC on the pod's bridge stands in for the VM's NIC; real VMs are in
//! `e2e_net.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::cni::{TestNet, bridge_ports, dhcp_as_vm, in_netns, iptables_lines};
use common::{Daemon, Options, assert_status};
use k8s_cri::v1 as api;
use tonic::Code;

fn pod(name: &str, uid: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        dns_config: Some(api::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: 22,
            host_port: 0,
            host_ip: String::new(),
        }],
        ..Default::default()
    }
}

async fn daemon(conflist: Option<String>) -> Daemon {
    daemon_with_bins(conflist, common::CNI_BIN_DIR.to_owned()).await
}

async fn daemon_with_bins(conflist: Option<String>, bins: String) -> Daemon {
    Daemon::start_with(Options {
        cni_conflist: conflist,
        cni_bin_dir: bins,
        ..Default::default()
    })
    .await
}

async fn run(d: &Daemon, config: api::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn stop(d: &Daemon, id: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .await
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn remove(d: &Daemon, id: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .await
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn status(d: &Daemon, id: &str) -> api::PodSandboxStatus {
    d.runtime()
        .await
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

async fn runtime_status(d: &Daemon) -> (api::RuntimeCondition, u64) {
    let s = d
        .runtime()
        .await
        .status(api::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let cond = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    (cond, info["dhcpResponders"].as_u64().unwrap())
}

fn netns_dir(d: &Daemon) -> PathBuf {
    d.dir.path().join("netns")
}

fn netns_entries(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(netns_dir(d))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn link_json(netns: &Path, dev: &str) -> serde_json::Value {
    let out = in_netns(netns, &["ip", "-j", "addr", "show", "dev", dev]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// The MAC the VM's NIC gets: the one the CNI interface had (host-local/bridge print it).
fn vm_mac(d: &Daemon, sandbox: &str) -> String {
    // The daemon logs each NIC with its MAC at pod start.
    let log = d.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("VM NIC") && l.contains(&sandbox[..13]))
        .unwrap_or_else(|| panic!("no `VM NIC` line for {sandbox} in the log:\n{log}"));
    let at = line.find("mac=").unwrap() + 4;
    line[at..at + 17].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_gets_its_cni_address_through_the_bridge_and_dhcp() {
    let net = TestNet::new(11);
    let d = daemon(Some(net.conflist(50, true, &[]))).await;
    let (ready, responders) = runtime_status(&d).await;
    assert!(ready.status, "NetworkReady: {ready:?}");
    assert_eq!(responders, 0);

    let id = run(&d, pod("web", "uid-web")).await.unwrap();
    let st = status(&d, &id).await;
    let ip = st.network.as_ref().unwrap().ip.clone();
    assert!(ip.starts_with(&format!("{}.", net.prefix)), "pod IP {ip:?}");
    assert_eq!(net.allocated(), vec![ip.clone()]);
    assert_eq!(runtime_status(&d).await.1, 1);

    let ns = netns_dir(&d).join("uid-web");
    let mac = vm_mac(&d, &id);
    // The CNI interface: no address, a MAC of its own, on the bridge with the tap.
    let eth0 = link_json(&ns, "eth0");
    assert_eq!(
        eth0["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .count(),
        0,
        "{eth0}"
    );
    assert_ne!(eth0["address"].as_str().unwrap(), mac);
    assert_eq!(eth0["master"], "vbr0");
    let tap = link_json(&ns, "vtap0");
    assert_eq!(tap["master"], "vbr0");
    assert_eq!(tap["mtu"], 1400);
    let br = link_json(&ns, "vbr0");
    assert!(br.to_string().contains("169.254.254.2"), "{br}");
    let rules = in_netns(&ns, &["ebtables", "-L"]);
    assert!(rules.contains("--ip-dport 67:68 -j DROP"), "{rules}");

    // A DHCP client with the VM's MAC gets the pod's address and settings.
    let got = dhcp_as_vm(&ns, "vbr0", &mac).expect("the responder did not answer the VM's MAC");
    assert!(
        got.contains(&format!("ip={ip} mask=24 router={}", net.gateway())),
        "{got}"
    );
    assert!(got.contains("dns=10.96.0.10"), "{got}");
    assert!(
        got.contains("search=default.svc.cluster.local svc.cluster.local"),
        "{got}"
    );
    assert!(got.contains("mtu=1400"), "{got}");
    assert!(got.contains("serverid=169.254.254.2"), "{got}");
    assert!(got.contains("169.254.254.2/32 0.0.0.0"), "{got}");
    assert!(
        got.contains(&format!("192.168.77.0/24 {}.254", net.prefix)),
        "{got}"
    );
    assert!(
        got.contains(&format!("0.0.0.0/0 {}", net.gateway())),
        "{got}"
    );
    // The VM's DHCP broadcasts stopped at the CNI link.
    let rules = in_netns(&ns, &["ebtables", "-L", "FORWARD", "--Lc"]);
    let dropped = rules
        .lines()
        .find(|l| l.contains("-o eth0") && l.contains("--ip-dport 67:68"))
        .unwrap_or_default()
        .to_owned();
    assert!(!dropped.contains("pcnt = 0 "), "{rules}");
    // Any other MAC gets nothing.
    assert_eq!(dhcp_as_vm(&ns, "vbr0", "02:11:22:33:44:55"), None);
    // DHCP does not cross the CNI link: a client on the host's side of it gets no answer.
    let st = std::process::Command::new("busybox")
        .args([
            "udhcpc",
            "-i",
            &net.bridge,
            "-n",
            "-q",
            "-f",
            "-t",
            "2",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(
        !st.status.success(),
        "a DHCP client outside the pod got an answer"
    );

    stop(&d, &id).await.unwrap();
    assert_eq!(
        net.allocated(),
        Vec::<String>::new(),
        "CNI DEL released the address"
    );
    assert_eq!(runtime_status(&d).await.1, 0);
    // A stopped pod keeps its status; stopping again is fine.
    stop(&d, &id).await.unwrap();
    remove(&d, &id).await.unwrap();
    assert!(netns_entries(&d).is_empty(), "{:?}", netns_entries(&d));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_config_or_missing_plugin_is_a_clear_precondition_and_leaves_nothing() {
    let d = daemon(None).await;
    let (ready, _) = runtime_status(&d).await;
    assert!(!ready.status);
    assert_eq!(ready.reason, "NetworkPluginNotReady");
    assert!(ready.message.contains("no CNI network config"), "{ready:?}");
    assert_status(
        run(&d, pod("a", "uid-a")).await,
        Code::FailedPrecondition,
        &["no CNI network config in", "cni"],
    );
    assert!(netns_entries(&d).is_empty());

    std::fs::write(
        d.cni_conf_dir.join("10-x.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"loopback"},{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let (ready, _) = runtime_status(&d).await;
    assert!(!ready.status);
    assert!(ready.message.contains("\"no-such-plugin\""), "{ready:?}");
    assert_status(
        run(&d, pod("a", "uid-a")).await,
        Code::FailedPrecondition,
        &["CNI plugin \"no-such-plugin\"", "not found in /usr/lib/cni"],
    );
    assert!(netns_entries(&d).is_empty());
    let pods = d
        .runtime()
        .await
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_add_is_undone_and_an_exhausted_pool_is_resource_exhausted() {
    let net = TestNet::new(12);
    // tuning fails on a sysctl that does not exist, after bridge + host-local succeeded.
    let bad =
        serde_json::json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}});
    let d = daemon(Some(net.conflist(10, false, &[bad]))).await;
    assert_status(
        run(&d, pod("a", "uid-a")).await,
        Code::Internal,
        &["CNI plugin \"tuning\" failed ADD", "no_such_knob"],
    );
    assert!(netns_entries(&d).is_empty(), "{:?}", netns_entries(&d));
    assert_eq!(
        net.allocated(),
        Vec::<String>::new(),
        "DEL ran after the failed ADD"
    );
    assert_eq!(
        bridge_ports(&net.bridge),
        Vec::<String>::new(),
        "no veth left on the bridge"
    );

    // A pool of one address: the second pod is refused as exhausted, and leaves nothing.
    std::fs::write(
        d.cni_conf_dir.join("10-test.conflist"),
        net.conflist(10, false, &[]),
    )
    .unwrap();
    let first = run(&d, pod("a", "uid-a")).await.unwrap();
    assert_status(
        run(&d, pod("b", "uid-b")).await,
        Code::ResourceExhausted,
        &["no IP addresses available"],
    );
    assert_eq!(netns_entries(&d), vec!["uid-a".to_owned()]);
    stop(&d, &first).await.unwrap();
    remove(&d, &first).await.unwrap();
    // The address is free again.
    let second = run(&d, pod("b", "uid-b")).await.unwrap();
    stop(&d, &second).await.unwrap();
    remove(&d, &second).await.unwrap();
    assert_eq!(net.allocated(), Vec::<String>::new());
}

/// A CNI bin dir with Debian's plugins plus `bridge` wrapped so that DEL fails while
/// `<dir>/fail-del` exists.
fn flaky_bin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(common::CNI_BIN_DIR).unwrap().flatten() {
        if e.file_name() != "bridge" {
            std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let script = format!(
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = DEL ] && [ -e {0}/fail-del ]; then\n  echo '{{\"code\":100,\"msg\":\"injected DEL failure\"}}'\n  exit 1\nfi\nexec {1}/bridge\n",
        dir.path().display(),
        common::CNI_BIN_DIR
    );
    let p = dir.path().join("bridge");
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_del_is_retried_and_never_blocks_removal() {
    let net = TestNet::new(13);
    let bins = flaky_bin_dir();
    let d = daemon_with_bins(
        Some(net.conflist(50, false, &[])),
        bins.path().display().to_string(),
    )
    .await;
    let marker = bins.path().join("fail-del");

    let a = run(&d, pod("a", "uid-a")).await.unwrap();
    std::fs::write(&marker, "").unwrap();
    assert_status(
        stop(&d, &a).await,
        Code::Unavailable,
        &["injected DEL failure", "attempt 1", "retry StopPodSandbox"],
    );
    assert_eq!(
        status(&d, &a).await.state,
        api::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(net.allocated().len(), 1);
    std::fs::remove_file(&marker).unwrap();
    stop(&d, &a).await.unwrap();
    assert_eq!(
        net.allocated(),
        Vec::<String>::new(),
        "the retried DEL released the address"
    );
    remove(&d, &a).await.unwrap();

    // DEL keeps failing: removal still goes through, and says so in the log.
    let b = run(&d, pod("b", "uid-b")).await.unwrap();
    std::fs::write(&marker, "").unwrap();
    assert!(stop(&d, &b).await.is_err());
    remove(&d, &b).await.unwrap();
    assert!(netns_entries(&d).is_empty());
    assert!(
        d.log_text()
            .contains("removing the pod although CNI DEL failed")
    );
    std::fs::remove_file(&marker).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_dhcp_comes_back_and_del_still_works() {
    let net = TestNet::new(14);
    let mut d = daemon(Some(net.conflist(50, true, &[]))).await;
    let mut cfg = pod("a", "uid-a");
    cfg.port_mappings[0].host_port = 30022;
    let id = run(&d, cfg).await.unwrap();
    let ip = status(&d, &id).await.network.unwrap().ip;
    let mac = vm_mac(&d, &id);
    assert!(!iptables_lines(&id).is_empty(), "portmap rules for the pod");
    d.restart().await;
    assert_eq!(runtime_status(&d).await.1, 1, "the responder is back");
    assert_eq!(status(&d, &id).await.network.unwrap().ip, ip);
    let ns = netns_dir(&d).join("uid-a");
    let got = dhcp_as_vm(&ns, "vbr0", &mac).expect("no DHCP answer after the restart");
    assert!(got.contains(&format!("ip={ip} ")), "{got}");
    stop(&d, &id).await.unwrap();
    assert!(iptables_lines(&id).is_empty(), "{:?}", iptables_lines(&id));
    remove(&d, &id).await.unwrap();
    assert_eq!(net.allocated(), Vec::<String>::new());

    // Killed in the middle of nowhere in particular: a pod whose netns vanished still stops.
    let id = run(&d, pod("b", "uid-b")).await.unwrap();
    d.kill();
    let ns = netns_dir(&d).join("uid-b");
    nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&ns).unwrap();
    d.restart().await;
    stop(&d, &id).await.unwrap();
    remove(&d, &id).await.unwrap();
    assert_eq!(net.allocated(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_cycles_with_host_ports_leak_nothing() {
    let net = TestNet::new(15);
    let d = daemon(Some(net.conflist(60, true, &[]))).await;
    // The first pod creates the host bridge and portmap's shared chains; count after it.
    let warm = run(&d, pod("warm", "uid-warm")).await.unwrap();
    stop(&d, &warm).await.unwrap();
    remove(&d, &warm).await.unwrap();
    let rules = iptables_lines(&net.name);
    let mut ids = Vec::new();
    for i in 0..50 {
        let mut cfg = pod(&format!("p{i}"), &format!("uid-cycle-{i}"));
        cfg.port_mappings[0].host_port = 31000 + i;
        let id = run(&d, cfg).await.unwrap();
        assert!(!iptables_lines(&id).is_empty());
        stop(&d, &id).await.unwrap();
        remove(&d, &id).await.unwrap();
        ids.push(id);
    }
    assert!(netns_entries(&d).is_empty(), "{:?}", netns_entries(&d));
    assert_eq!(
        bridge_ports(&net.bridge),
        Vec::<String>::new(),
        "host links"
    );
    assert_eq!(iptables_lines(&net.name), rules, "iptables rules");
    for id in &ids {
        assert!(iptables_lines(id).is_empty(), "rules left for {id}");
    }
    assert_eq!(net.allocated(), Vec::<String>::new(), "IPAM addresses");
    assert_eq!(runtime_status(&d).await.1, 0, "DHCP responders");
}

/// A meta plugin in the manner of Multus: ADD/DEL the real `bridge` plugin twice, as `eth0`
/// on one network and `net1` on another, and merge the results (interfaces and IPs in order).
const META_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, subprocess, sys
conf = json.load(sys.stdin)
out = {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": [], "routes": [], "dns": {}}
nets = conf["delegates"]
if os.environ["CNI_COMMAND"] == "DEL":
    nets = list(reversed(nets))
for n, (ifname, deleg) in enumerate(nets):
    d = dict(deleg, cniVersion=conf["cniVersion"])
    env = dict(os.environ, CNI_IFNAME=ifname)
    p = subprocess.run(["/usr/lib/cni/" + d["type"]], input=json.dumps(d).encode(), env=env, capture_output=True)
    if p.returncode != 0:
        sys.stdout.write(p.stdout.decode()); sys.exit(p.returncode)
    if os.environ["CNI_COMMAND"] == "ADD":
        r = json.loads(p.stdout)
        base = len(out["interfaces"])
        out["interfaces"] += r.get("interfaces", [])
        for ip in r.get("ips", []):
            ip["interface"] = ip["interface"] + base
            out["ips"].append(ip)
        out["routes"] += r.get("routes", [])
if os.environ["CNI_COMMAND"] == "ADD":
    json.dump(out, sys.stdout)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn several_cni_interfaces_become_several_nics_in_order() {
    let a = TestNet::new(16);
    let b = TestNet::new(17);
    let bins = flaky_bin_dir();
    let meta = bins.path().join("meta");
    std::fs::write(&meta, META_PLUGIN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&meta, std::fs::Permissions::from_mode(0o755)).unwrap();
    let delegate = |n: &TestNet| -> serde_json::Value {
        let list: serde_json::Value = serde_json::from_str(&n.conflist(50, false, &[])).unwrap();
        let mut p = list["plugins"][0].clone();
        p["name"] = n.name.clone().into();
        p
    };
    let mut second = delegate(&b);
    second["isGateway"] = false.into();
    second["ipam"]["routes"] = serde_json::json!([]);
    let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "multi", "plugins": [
        {"type": "meta", "delegates": [["eth0", delegate(&a)], ["net1", second]]}
    ]});
    let d = daemon_with_bins(
        Some(conflist.to_string()),
        bins.path().display().to_string(),
    )
    .await;
    let id = run(&d, pod("two", "uid-two")).await.unwrap();
    let st = status(&d, &id).await.network.unwrap();
    assert!(st.ip.starts_with(&a.prefix), "{st:?}");
    assert_eq!(st.additional_ips.len(), 1);
    assert!(st.additional_ips[0].ip.starts_with(&b.prefix), "{st:?}");
    let ns = netns_dir(&d).join("uid-two");
    assert_eq!(link_json(&ns, "eth0")["master"], "vbr0");
    assert_eq!(link_json(&ns, "net1")["master"], "vbr1");
    assert_eq!(runtime_status(&d).await.1, 2, "one responder per bridge");
    stop(&d, &id).await.unwrap();
    remove(&d, &id).await.unwrap();
    assert_eq!(a.allocated(), Vec::<String>::new());
    assert_eq!(b.allocated(), Vec::<String>::new());
}
