//! The real crictl (from `../shared/tools`) against the daemon, one operator command after
//! another, checking what crictl prints: images with libvirt's test driver, then a whole VM pod
//! under libvirtd (runp, create, start, ps/pods with their filters, inspect, logs with -f and
//! --tail, attach, exec (-s, SPDY, WebSocket, -i, -it in a pseudo-terminal), port-forward over SPDY and WebSocket, stats,
//! stop, rm, stopp, rmp).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::background::{Background, http_get};
use common::cni::TestNet;
use common::tools::{Crictl, free_port, shell_line, table};
use common::vm::{DomainGuard, MARKER, require_libvirtd, tiny_image};
use common::{Daemon, Options};
use virtlet_testkit::{Route, TestServer, qcow2_image, sha256sum};

#[tokio::test(flavor = "multi_thread")]
async fn crictl_image_commands() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d.socket, d.dir.path());
    let server = TestServer::http().await.unwrap();
    let img = qcow2_image("64M").unwrap();
    let hex = sha256sum(&img).unwrap();
    server.route("/cirros.qcow2", Route::Content(Bytes::from(img.clone())));
    d.write_translation(
        "t.yaml",
        &format!(
            "translations:\n  - name: cirros\n    url: {}\n",
            server.url("/cirros.qcow2")
        ),
    );

    let version = c.ok(&["version"]);
    assert!(
        version.contains("RuntimeName:  virtlet") && version.contains("RuntimeApiVersion:  v1"),
        "{version}"
    );
    let info = c.json(&["info"]);
    let conditions = info["status"]["conditions"].as_array().unwrap();
    for t in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == t && c["status"] == true),
            "{info}"
        );
    }

    // pull: untagged means :latest; a second tag of the same content is the same image.
    let out = c.ok(&["pull", "virtlet.cloud/cirros"]);
    assert_eq!(out.trim(), format!("Image is up to date for sha256:{hex}"));
    c.ok(&["pull", "virtlet.cloud/cirros:v2"]);

    // images: name and tag columns, the short ID, sizes; --digests; -q.
    let rows = table(&c.ok(&["images"]));
    assert_eq!(rows[0], ["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
    let mut body: Vec<(String, String, String)> = rows[1..]
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    body.sort();
    let short = hex[..13].to_owned();
    assert_eq!(
        body,
        [
            (
                "virtlet.cloud/cirros".into(),
                "latest".into(),
                short.clone()
            ),
            ("virtlet.cloud/cirros".into(), "v2".into(), short.clone()),
        ]
    );
    let rows = table(&c.ok(&["images", "--digests"]));
    assert_eq!(rows[0], ["IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE"]);
    assert!(rows[1..].iter().all(|r| r[2] == short), "{rows:?}");
    assert_eq!(c.ok(&["images", "-q"]).trim(), format!("sha256:{hex}"));
    let filtered = table(&c.ok(&["images", "virtlet.cloud/cirros:v2"]));
    assert_eq!(
        filtered.len(),
        3,
        "the image with both its tags: {filtered:?}"
    );

    // inspecti by name, tag, ID and short ID: one image with both tags and its repo digest.
    for q in [
        "virtlet.cloud/cirros",
        "virtlet.cloud/cirros:v2",
        &format!("sha256:{hex}"),
        &short,
    ] {
        let st = c.json(&["inspecti", q]);
        assert_eq!(st["status"]["id"], format!("sha256:{hex}"), "{q}");
        assert_eq!(
            st["status"]["repoTags"],
            serde_json::json!(["virtlet.cloud/cirros:latest", "virtlet.cloud/cirros:v2"])
        );
        assert_eq!(
            st["status"]["repoDigests"],
            serde_json::json!([format!("virtlet.cloud/cirros@sha256:{hex}")])
        );
    }
    let err = c.fails(&["inspecti", "virtlet.cloud/cirros:v3"]);
    assert!(err.contains("no such image"), "{err}");

    // imagefsinfo.
    let fs = c.json(&["imagefsinfo"]);
    let usage = &fs["status"]["imageFilesystems"][0];
    assert_eq!(
        usage["fsId"]["mountpoint"],
        d.image_dir.display().to_string()
    );
    assert!(
        usage["usedBytes"]["value"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= img.len() as u64 / 2
    );

    // rmi by tag removes the image with all its tags; rmi by ID likewise.
    let out = c.ok(&["rmi", "virtlet.cloud/cirros:v2"]);
    assert!(
        out.contains("Deleted: virtlet.cloud/cirros:latest")
            && out.contains("Deleted: virtlet.cloud/cirros:v2"),
        "{out}"
    );
    assert!(table(&c.ok(&["images"])).len() == 1);
    c.ok(&["pull", "virtlet.cloud/cirros"]);
    let out = c.ok(&["rmi", &short]);
    assert!(
        out.contains("Deleted: virtlet.cloud/cirros:latest"),
        "{out}"
    );
    assert_eq!(c.ok(&["images", "-q"]).trim(), "");
    let err = c.fails(&["rmi", "virtlet.cloud/cirros"]);
    assert!(err.contains("no such image"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_runs_a_vm_pod_end_to_end() {
    require_libvirtd();
    let image = tiny_image();
    let net = TestNet::new(41);
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        cni_conflist: Some(net.conflist(60, true, &[])),
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let c = Crictl::new(&d.socket, d.dir.path());
    let server = TestServer::http().await.unwrap();
    server.route(
        "/tiny.qcow2",
        Route::Content(std::fs::read(&image).unwrap().into()),
    );
    d.write_translation(
        "t.yaml",
        &format!(
            "translations:\n  - name: tiny\n    url: {}\n",
            server.url("/tiny.qcow2")
        ),
    );
    c.ok(&["pull", "virtlet.cloud/tiny"]);

    let dir = d.dir.path();
    let logs = dir.join("pod-logs");
    let pod_json = dir.join("pod.json");
    let user_data = "runcmd:\n  - [sh, -c, 'mkdir -p /www && echo hello-from-vm >/www/index.html && httpd -p 8080 -h /www']\n";
    std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": "crictl-vm", "namespace": "crictl-ns", "uid": "crictl-uid-1", "attempt": 0},
            "log_directory": logs,
            "labels": {"app": "crictl-test"},
            "annotations": {"VirtletCloudInitUserData": user_data},
            "linux": {}
        })
        .to_string(),
    )
    .unwrap();
    let ctr_json = dir.join("ctr.json");
    std::fs::write(
        &ctr_json,
        serde_json::json!({
            "metadata": {"name": "vm", "attempt": 0},
            "image": {"image": "virtlet.cloud/tiny"},
            "log_path": "vm.log",
            "labels": {
                "io.kubernetes.pod.name": "crictl-vm",
                "io.kubernetes.pod.namespace": "crictl-ns",
                "io.kubernetes.container.name": "vm",
                "tier": "backend"
            },
            "linux": {}
        })
        .to_string(),
    )
    .unwrap();
    let (pod_json, ctr_json) = (pod_json.to_str().unwrap(), ctr_json.to_str().unwrap());

    // runp, create, start.
    let pod = c.ok(&["runp", pod_json]).trim().to_owned();
    assert_eq!(pod.len(), 64, "{pod}");
    let cid = c
        .ok(&["create", &pod, ctr_json, pod_json])
        .trim()
        .to_owned();
    assert_eq!(cid.len(), 64, "{cid}");
    guard.0.push(cid.clone());
    let rows = table(&c.ok(&["ps", "-a"]));
    assert_eq!(rows[1][3], "Created", "{rows:?}");
    c.ok(&["start", &cid]);

    // ps and pods, with their filters.
    let rows = table(&c.ok(&["ps"]));
    assert_eq!(
        rows[0],
        [
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID",
            "POD",
            "NAMESPACE"
        ]
    );
    let row = &rows[1];
    assert_eq!(row[0], cid[..13]);
    assert_eq!(row[1], "virtlet.cloud/tiny");
    assert_eq!(
        &row[3..],
        ["Running", "vm", "0", &pod[..13], "crictl-vm", "crictl-ns"]
    );
    for filter in [
        vec!["--name", "vm"],
        vec!["--label", "tier=backend"],
        vec!["--pod", &pod],
        vec!["--state", "running"],
        vec!["--image", "virtlet.cloud/tiny"],
        vec!["--id", &cid[..8]],
    ] {
        let mut args = vec!["ps", "-q"];
        args.extend(filter.iter().copied());
        assert_eq!(c.ok(&args).trim(), cid, "{filter:?}");
    }
    for filter in [
        vec!["--name", "other"],
        vec!["--label", "tier=frontend"],
        vec!["--state", "exited"],
    ] {
        let mut args = vec!["ps", "-a", "-q"];
        args.extend(filter.iter().copied());
        assert_eq!(c.ok(&args).trim(), "", "{filter:?}");
    }
    let rows = table(&c.ok(&["pods"]));
    assert_eq!(
        rows[0],
        [
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME"
        ]
    );
    assert_eq!(rows[1][0], pod[..13]);
    assert_eq!(&rows[1][2..6], ["Ready", "crictl-vm", "crictl-ns", "0"]);
    for filter in [
        vec!["--name", "crictl-vm"],
        vec!["--namespace", "crictl-ns"],
        vec!["--label", "app=crictl-test"],
        vec!["--state", "ready"],
        vec!["--id", &pod[..8]],
    ] {
        let mut args = vec!["pods", "-q"];
        args.extend(filter.iter().copied());
        assert_eq!(c.ok(&args).trim(), pod, "{filter:?}");
    }
    assert_eq!(c.ok(&["pods", "-q", "--state", "notready"]).trim(), "");

    // inspect and inspectp.
    let st = c.json(&["inspect", &cid]);
    assert_eq!(st["status"]["state"], "CONTAINER_RUNNING");
    assert_eq!(st["status"]["metadata"]["name"], "vm");
    assert_eq!(
        st["status"]["logPath"],
        logs.join("vm.log").display().to_string()
    );
    assert!(
        st["status"]["imageRef"]
            .as_str()
            .unwrap()
            .starts_with("virtlet.cloud/tiny@sha256:"),
        "{st}"
    );
    let stp = c.json(&["inspectp", &pod]);
    assert_eq!(stp["status"]["state"], "SANDBOX_READY");
    let ip = stp["status"]["network"]["ip"].as_str().unwrap().to_owned();
    assert!(ip.starts_with(&net.prefix), "{stp}");

    // logs, -f and --tail.
    let follow = Background::start(c.command(&["logs", "-f", &cid]));
    follow.wait_for(MARKER, Duration::from_secs(180));
    // The guest may still be printing (its shell's banner): compare while the log is still.
    let (all, last) = (0..10)
        .find_map(|_| {
            let all = c.ok(&["logs", &cid]);
            let last = c.ok(&["logs", "--tail", "2", &cid]);
            let still = c.ok(&["logs", &cid]) == all;
            if !still {
                std::thread::sleep(Duration::from_secs(1));
            }
            still.then_some((all, last))
        })
        .expect("the console log never stood still for a moment");
    assert!(all.contains(MARKER), "{all}");
    assert!(all.lines().count() > 5);
    assert_eq!(last.lines().count(), 2, "{last:?}");
    assert!(
        all.ends_with(&last),
        "--tail gives the end:\n{last}\nof:\n{all}"
    );

    // attach: type into the serial console, read the guest's answer; logs -f sees it too.
    let mut attach = c.command(&["attach", "-i", &cid]);
    let mut attach = attach
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"\necho attach-$((6*7))\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(stdin);
    let out = attach.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "attach: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("attach-42"), "attach saw:\n{text}");
    follow.wait_for("attach-42", Duration::from_secs(10));
    drop(follow);

    // exec through the guest agent: ExecSync (-s), and streaming exec over SPDY and
    // WebSocket with stdout, stderr, stdin and the exit code; with a terminal (-it).
    let hostname = c.ok(&["exec", "-s", &cid, "cat", "/etc/hostname"]);
    assert_eq!(hostname.trim(), "crictl-vm");
    for transport in ["spdy", "websocket"] {
        let out = c.run(&[
            "exec",
            "--transport",
            transport,
            &cid,
            "sh",
            "-c",
            "echo exec-out; echo exec-err >&2",
        ]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("exec-out") && stderr.contains("exec-err"),
            "{transport}: {:?}\n{stdout}\n{stderr}",
            out.status
        );
        // client-go reads the exit code from the status; crictl names it (and exits 1).
        let out = c.run(&["exec", "--transport", transport, &cid, "sh", "-c", "exit 3"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("command terminated with exit code 3"),
            "{transport}: {stderr}"
        );
    }
    let mut cat = c
        .command(&["exec", "-i", &cid, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through stdin\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exec_with_a_terminal(&c, &cid, d.dir.path());

    // port-forward over SPDY and over WebSocket: HTTP reaches the server in the VM, two
    // connections at once; a port where nothing listens gives client-go's error.
    for transport in ["spdy", "websocket"] {
        let local = free_port();
        let pf = Background::start(c.command(&[
            "port-forward",
            "--transport",
            transport,
            &pod,
            &format!("{local}:8080"),
        ]));
        pf.wait_for("Forwarding from 127.0.0.1", Duration::from_secs(20));
        let a = std::thread::spawn(move || http_get(local));
        let b = std::thread::spawn(move || http_get(local));
        for answer in [a.join().unwrap(), b.join().unwrap()] {
            assert!(
                answer.starts_with("HTTP/1.") && answer.contains("hello-from-vm"),
                "{transport}: {answer:?}; crictl said {:?}",
                pf.rest()
            );
        }
        drop(pf);

        let local = free_port();
        let pf = Background::start(c.command(&[
            "port-forward",
            "--transport",
            transport,
            &pod,
            &format!("{local}:9"),
        ]));
        pf.wait_for("Forwarding from 127.0.0.1", Duration::from_secs(20));
        let mut s = TcpStream::connect(("127.0.0.1", local)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "a refused port gives no data");
        let said = pf.wait_for("error forwarding port 9", Duration::from_secs(20));
        assert!(
            said.iter()
                .any(|l| l.contains(&pod) && l.contains("refused")),
            "{said:?}"
        );
    }

    // stats and statsp.
    let stats = c.json(&["stats"]);
    let s = &stats["stats"][0];
    assert_eq!(s["attributes"]["id"], cid);
    assert!(s["cpu"]["timestamp"].as_str().is_some(), "{stats}");
    assert!(
        s["memory"]["workingSetBytes"]["value"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let statsp = c.json(&["statsp"]);
    let p = &statsp["stats"][0];
    assert_eq!(p["attributes"]["id"], pod);
    assert_eq!(p["linux"]["containers"][0]["attributes"]["id"], cid);

    // stop (graceful: the ACPI button), rm, stopp, rmp; nothing is left.
    let started = Instant::now();
    c.ok(&["stop", "--timeout", "30", &cid]);
    assert!(started.elapsed() < Duration::from_secs(30));
    let st = c.json(&["inspect", &cid]);
    assert_eq!(st["status"]["state"], "CONTAINER_EXITED");
    assert_eq!(st["status"]["exitCode"], 0, "{st}");
    assert_eq!(st["status"]["reason"], "Completed");
    assert_eq!(c.ok(&["ps", "-a", "-q", "--state", "exited"]).trim(), cid);
    c.ok(&["stop", &cid]);
    c.ok(&["rm", &cid]);
    assert_eq!(c.ok(&["ps", "-a", "-q"]).trim(), "");
    c.ok(&["stopp", &pod]);
    assert_eq!(c.ok(&["pods", "-q", "--state", "notready"]).trim(), pod);
    c.ok(&["rmp", &pod]);
    assert_eq!(c.ok(&["pods", "-q"]).trim(), "");
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    let domains = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&domains.stdout).contains(&cid[..13]),
        "the domain is gone"
    );
}

/// `crictl exec -it` as a person at a terminal runs it: crictl in a pseudo-terminal
/// (util-linux `script`) sized 100x30, an interactive shell on a tty in the guest; Ctrl-C
/// interrupts a command, a resize of crictl's terminal reaches the guest, the exit code
/// comes back. A client that goes away hangs the terminal up: nothing is left running.
fn exec_with_a_terminal(c: &Crictl, cid: &str, dir: &std::path::Path) {
    for transport in ["spdy", "websocket"] {
        let flag = dir.join(format!("resize-{transport}"));
        let crictl = shell_line(&c.command(&["exec", "--transport", transport, "-it", cid, "sh"]));
        let mut script = std::process::Command::new("script");
        script.args([
            "-qefc",
            &format!(
                "stty cols 100 rows 30; (while [ ! -e '{}' ]; do sleep 0.1; done; stty cols 120 rows 40 </dev/tty) & {crictl}",
                flag.display()
            ),
            "/dev/null",
        ]);
        let mut term = Background::interactive(script);
        term.type_in("tty; stty size; echo \"answer $((6*7))\"\n");
        let seen = term
            .wait_for("answer 42", Duration::from_secs(60))
            .join("\n");
        assert!(
            seen.contains("/dev/hvc") && seen.contains("30 100"),
            "{transport}: no guest terminal of crictl's size in:\n{seen}"
        );
        // Ctrl-C reaches the command through the terminal.
        term.type_in("sleep 60\n");
        std::thread::sleep(Duration::from_secs(1));
        term.type_in("\x03echo inter\"\"rupted\n");
        term.wait_for("interrupted", Duration::from_secs(10));
        // A resize of crictl's terminal reaches the guest's.
        std::fs::write(&flag, "").unwrap();
        term.type_in(
            "while ! stty size | grep -q '40 120'; do sleep 0.2; done; echo re\"\"sized\n",
        );
        term.wait_for("resized", Duration::from_secs(20));
        term.type_in("exit 7\n");
        term.wait_for("exit code 7", Duration::from_secs(20));
        let status = term.wait(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| !s.success()),
            "{transport}: {status:?}"
        );
    }
    // The client goes away (its terminal closes) while a command runs: the command's process
    // group gets a hang-up in the guest.
    let crictl = shell_line(&c.command(&[
        "exec",
        "-it",
        cid,
        "sh",
        "-c",
        "sleep 600; echo sleep-ended",
    ]));
    let mut script = std::process::Command::new("script");
    script.args(["-qefc", &crictl, "/dev/null"]);
    let term = Background::interactive(script);
    let running = || {
        c.run(&["exec", "-s", cid, "pgrep", "sleep"])
            .status
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running() {
        assert!(
            Instant::now() < deadline,
            "sleep 600 never ran in the guest"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(term);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() {
        assert!(
            Instant::now() < deadline,
            "sleep 600 still runs in the guest 10 s after its client went away"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
