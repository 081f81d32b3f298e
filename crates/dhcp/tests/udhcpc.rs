//! A real DHCP client against the responder: busybox udhcpc in a "vm" network namespace, the
//! responder bound to the other end of a veth pair in a "pod" namespace, as the runtime binds
//! it to the bridge in the pod namespace.
//!
//! Needs root (namespaces, port 67) and /usr/bin/busybox; fails, not skips, without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use virtlet_dhcp::{Config, Lease, Responder, Route, bind_in_netns, live_responders};

const BUSYBOX: &str = "/usr/bin/busybox";
const SERVER_ID: Ipv4Addr = Ipv4Addr::new(169, 254, 254, 2);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The cases share the live responder count, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_root_and_busybox() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(
        euid, "0",
        "this test creates network namespaces and binds port 67: run it as root"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: this test runs busybox udhcpc (apt-get install busybox)"
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A pod namespace holding `d0` (address 169.254.254.2/32, where the responder listens) and a
/// vm namespace holding its veth peer `c0` (where udhcpc runs); both deleted on drop.
struct Topology {
    pod: String,
    vm: String,
    vm_mac: [u8; 6],
}

impl Topology {
    fn new(case: &str) -> Topology {
        let prefix = format!("virtlet-dhcp-test-{}-{case}", std::process::id());
        let mut topology = Topology {
            pod: format!("{prefix}-pod"),
            vm: format!("{prefix}-vm"),
            vm_mac: [0; 6],
        };
        let (pod, vm) = (topology.pod.as_str(), topology.vm.as_str());
        run("ip", &["netns", "add", pod]);
        run("ip", &["netns", "add", vm]);
        run(
            "ip",
            &[
                "-n", pod, "link", "add", "d0", "type", "veth", "peer", "name", "c0", "netns", vm,
            ],
        );
        run(
            "ip",
            &["-n", pod, "addr", "add", "169.254.254.2/32", "dev", "d0"],
        );
        run("ip", &["-n", pod, "link", "set", "d0", "up"]);
        // Renewals come from the VM's address: with strict reverse-path filtering, whatever
        // the host's default, the pod side accepts them only through a route to that address.
        run(
            "ip",
            &[
                "netns",
                "exec",
                pod,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=1",
            ],
        );
        run(
            "ip",
            &["-n", pod, "route", "add", "10.77.0.5/32", "dev", "d0"],
        );
        run("ip", &["-n", vm, "link", "set", "c0", "up"]);
        let address = run(
            "ip",
            &["netns", "exec", vm, "cat", "/sys/class/net/c0/address"],
        );
        let address = String::from_utf8(address.stdout).unwrap();
        for (byte, hex) in topology.vm_mac.iter_mut().zip(address.trim().split(':')) {
            *byte = u8::from_str_radix(hex, 16).unwrap();
        }
        topology
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in [&self.pod, &self.vm] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn config(mac: [u8; 6]) -> Config {
    Config {
        server_id: SERVER_ID,
        lease_secs: 3600,
        leases: vec![Lease {
            mac,
            ip: POD_IP,
            prefix_len: 24,
            gateway: Some(GATEWAY),
            routes: vec![Route {
                dst: Ipv4Addr::new(192, 168, 50, 0),
                prefix_len: 24,
                gateway: Some(GATEWAY),
            }],
            dns_servers: vec![Ipv4Addr::new(10, 77, 0, 53)],
            search: vec!["svc.test".into(), "test".into()],
            mtu: Some(1400),
            hostname: Some("vm-1".into()),
        }],
    }
}

/// The udhcpc script: records every event with its variables in `log`, and when `configure` is
/// set applies the lease to the interface like a real client script (address, then the option
/// 121 routes, 0.0.0.0 meaning on-link).
fn write_script(dir: &Path, log: &Path, configure: bool) -> PathBuf {
    let vars = [
        "interface",
        "ip",
        "subnet",
        "mask",
        "broadcast",
        "router",
        "staticroutes",
        "dns",
        "search",
        "domain",
        "mtu",
        "hostname",
        "serverid",
        "lease",
    ];
    // The event is recorded after the configuration it describes is in place, so a test that
    // sees the event can look at the routes at once.
    let mut record = String::from("{\n  echo \"event=$ev\"\n");
    for var in vars {
        record.push_str(&format!("  echo \"{var}=${var}\"\n"));
    }
    record.push_str(&format!("}} >> '{}'\n", log.display()));
    let mut script = String::from("#!/bin/sh\nev=$1\n");
    if configure {
        script.push_str(
            r#"case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      if [ "$2" = 0.0.0.0 ]; then
        ip route replace "$1" dev "$interface"
      else
        ip route replace "$1" via "$2" dev "$interface"
      fi
      shift 2
    done
    ;;
esac
"#,
        );
    }
    script.push_str(&record);
    let path = dir.join("script.sh");
    std::fs::write(&path, script).unwrap();
    run("chmod", &["+x", path.to_str().unwrap()]);
    path
}

/// The events the script recorded, each with its variables, values trimmed.
fn events(log: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut events: Vec<HashMap<String, String>> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "event" {
            events.push(HashMap::new());
        }
        if let Some(event) = events.last_mut() {
            event.insert(key.to_owned(), value.trim().to_owned());
        }
    }
    events
}

fn find_event(log: &Path, name: &str) -> Option<HashMap<String, String>> {
    events(log)
        .into_iter()
        .find(|event| event.get("event").map(String::as_str) == Some(name))
}

async fn wait_for_event(log: &Path, name: &str, within: Duration) -> HashMap<String, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(event) = find_event(log, name) {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no {name:?} event from udhcpc within {within:?}; events: {:?}",
            events(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn udhcpc(topology: &Topology, script: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &topology.vm,
            BUSYBOX,
            "udhcpc",
            "-i",
            "c0",
            "-f",
        ])
        .args(["-O", "staticroutes", "-O", "search", "-O", "mtu"])
        .arg("-s")
        .arg(script)
        .args(extra)
        .kill_on_drop(true);
    command
}

fn assert_lease(event: &HashMap<String, String>) {
    let var = |name: &str| event.get(name).map(String::as_str).unwrap_or_default();
    assert_eq!(var("interface"), "c0");
    assert_eq!(var("ip"), "10.77.0.5");
    assert_eq!(var("mask"), "24");
    assert_eq!(var("subnet"), "255.255.255.0");
    assert_eq!(var("broadcast"), "10.77.0.255");
    assert_eq!(var("router"), "10.77.0.1");
    assert_eq!(var("serverid"), "169.254.254.2");
    assert_eq!(var("lease"), "3600");
    assert_eq!(var("dns"), "10.77.0.53");
    assert_eq!(var("domain"), "svc.test");
    assert_eq!(var("search"), "svc.test test");
    assert_eq!(var("mtu"), "1400");
    assert_eq!(var("hostname"), "vm-1");
    let routes = var("staticroutes");
    assert!(
        routes.starts_with("169.254.254.2/32 0.0.0.0"),
        "the on-link route to the server comes first: {routes}"
    );
    assert!(routes.contains("192.168.50.0/24 10.77.0.1"), "{routes}");
    assert!(routes.contains("0.0.0.0/0 10.77.0.1"), "{routes}");
}

#[tokio::test(flavor = "multi_thread")]
async fn udhcpc_gets_the_pod_address_and_routes() {
    require_root_and_busybox();
    let _serial = SERIAL.lock().await;
    let topology = Topology::new("lease");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let script = write_script(dir.path(), &log, false);

    let socket = bind_in_netns(&topology.netns_path(), "d0").unwrap();
    let responder = Responder::spawn(socket, config(topology.vm_mac), "test/lease".into()).unwrap();
    assert_eq!(live_responders(), 1);

    let output = tokio::time::timeout(
        Duration::from_secs(30),
        udhcpc(&topology, &script, &["-n", "-q", "-t", "5", "-T", "1"]).output(),
    )
    .await
    .expect("udhcpc did not finish within 30 s")
    .unwrap();
    assert!(
        output.status.success(),
        "udhcpc failed: {}\nevents: {:?}",
        String::from_utf8_lossy(&output.stderr),
        events(&log)
    );
    let bound = find_event(&log, "bound").expect("udhcpc reported no bound event");
    assert_lease(&bound);

    responder.stop().await;
    assert_eq!(live_responders(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn udhcpc_renews_by_unicast_to_the_server_id() {
    require_root_and_busybox();
    let _serial = SERIAL.lock().await;
    let topology = Topology::new("renew");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let script = write_script(dir.path(), &log, true);

    let socket = bind_in_netns(&topology.netns_path(), "d0").unwrap();
    let responder = Responder::spawn(socket, config(topology.vm_mac), "test/renew".into()).unwrap();

    let stderr = dir.path().join("stderr");
    let mut client = udhcpc(&topology, &script, &["-t", "5", "-T", "1"])
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let bound = wait_for_event(&log, "bound", Duration::from_secs(20)).await;
    assert_lease(&bound);
    let routes = run("ip", &["-n", &topology.vm, "route", "show", "dev", "c0"]);
    let routes = String::from_utf8(routes.stdout).unwrap();
    assert!(routes.contains("169.254.254.2 scope link"), "{routes}");
    assert!(routes.contains("default via 10.77.0.1"), "{routes}");

    // SIGUSR1 makes udhcpc renew at once: a DHCPREQUEST by unicast to the server id ("sending
    // renew to server"); without an answer it would fall back to "broadcasting renew".
    let udp_no_ports = || -> u64 {
        let snmp = run(
            "ip",
            &["netns", "exec", &topology.vm, "cat", "/proc/net/snmp"],
        );
        let snmp = String::from_utf8(snmp.stdout).unwrap();
        // The second "Udp:" line holds the values: InDatagrams NoPorts ...
        let values = snmp
            .lines()
            .filter(|l| l.starts_with("Udp: "))
            .nth(1)
            .unwrap();
        values.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let no_ports_before = udp_no_ports();
    let pid = i32::try_from(client.id().unwrap()).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    let renew = wait_for_event(&log, "renew", Duration::from_secs(10)).await;
    assert_lease(&renew);
    // udhcpc's messages may reach the file a little after the script ran.
    let mut said = String::new();
    for _ in 0..100 {
        said = std::fs::read_to_string(&stderr).unwrap();
        if said.contains("sending renew to server") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        said.contains("sending renew to server 169.254.254.2"),
        "{said}"
    );
    // udhcpc sends the unicast renew before it opens the socket that hears the answer; on a
    // busy machine the answer can beat it (counted as UDP NoPorts in the client's netns), and
    // udhcpc then falls back to broadcasting. Either way the unicast renewal was answered.
    let no_ports = udp_no_ports() - no_ports_before;
    assert!(
        !said.contains("broadcasting renew") || no_ports > 0,
        "the unicast renew went unanswered (NoPorts +{no_ports}):\n{said}"
    );

    client.start_kill().unwrap();
    client.wait().await.unwrap();
    responder.stop().await;
    assert_eq!(live_responders(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn udhcpc_gets_no_answer_for_another_mac() {
    require_root_and_busybox();
    let _serial = SERIAL.lock().await;
    let topology = Topology::new("foreign");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let script = write_script(dir.path(), &log, false);

    let mut other_mac = topology.vm_mac;
    other_mac[5] ^= 0x01;
    let socket = bind_in_netns(&topology.netns_path(), "d0").unwrap();
    let responder = Responder::spawn(socket, config(other_mac), "test/foreign".into()).unwrap();

    let output = tokio::time::timeout(
        Duration::from_secs(30),
        udhcpc(&topology, &script, &["-n", "-q", "-t", "3", "-T", "1"]).output(),
    )
    .await
    .expect("udhcpc did not finish within 30 s")
    .unwrap();
    assert!(
        !output.status.success(),
        "udhcpc got a lease for a MAC without one: {:?}",
        events(&log)
    );
    assert_eq!(find_event(&log, "bound"), None);
    assert!(
        find_event(&log, "leasefail").is_some(),
        "{:?}",
        events(&log)
    );

    responder.stop().await;
    assert_eq!(live_responders(), 0);
}
