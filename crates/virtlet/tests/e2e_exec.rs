//! End to end: ExecSync into a real VM through the QEMU guest agent of the tiny image. What
//! the command prints and its exit code come back; a command that cannot start fails like in
//! a shell; a timed-out command is killed in the guest; bad input and a VM whose agent is
//! gone get their codes and messages quickly. Needs what `e2e_vm` needs.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::vm::{
    DomainGuard, MARKER, create_vm_pod, require_libvirtd, serve_and_pull, tiny_image, wait_for_log,
};
use common::{Daemon, Options, assert_status};
use k8s_cri::v1 as api;
use tonic::Code;

async fn exec(
    d: &Daemon,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<api::ExecSyncResponse, tonic::Status> {
    d.runtime()
        .await
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_runs_commands_in_the_guest() {
    require_libvirtd();
    let image = tiny_image();
    let d = Daemon::start_with(Options {
        libvirt_uri: "qemu:///system",
        ..Options::default()
    })
    .await;
    let mut guard = DomainGuard(Vec::new());
    let (_server, name) = serve_and_pull(&d, &image).await;
    let logs = d.dir.path().join("logs/exec");
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "exec-vm".into(),
            uid: "uid-exec".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "exec-vm".into(),
        log_directory: logs.display().to_string(),
        annotations: HashMap::new(),
        ..Default::default()
    };
    let (pod, c) = create_vm_pod(
        &d,
        &mut guard,
        config,
        api::ContainerConfig {
            envs: vec![api::KeyValue {
                key: "GREETING".into(),
                value: "hello from the pod spec".into(),
            }],
            ..common::vm_container(&name)
        },
    )
    .await;
    let mut rt = d.runtime().await;

    // Created, not started: no VM to exec into.
    assert_status(
        exec(&d, &c, &["true"], 0).await,
        Code::FailedPrecondition,
        &["exec needs a running VM"],
    );
    rt.start_container(api::StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    // Right after the start the guest agent is not up yet: ExecSync waits for it.
    let started = Instant::now();
    let r = exec(&d, &c, &["true"], 0).await.unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    eprintln!(
        "first ExecSync after StartContainer: {:?}",
        started.elapsed()
    );
    wait_for_log(&logs.join("vm.log"), MARKER, Duration::from_secs(120)).await;

    // argv, no shell: the hostname file, and a word with a space kept whole.
    let r = exec(&d, &c, &["cat", "/etc/hostname"], 10).await.unwrap();
    assert_eq!(
        (r.exit_code, text(&r.stdout).trim()),
        (0, "exec-vm"),
        "{r:?}"
    );
    let r = exec(&d, &c, &["echo", "a  b", "$HOME"], 10).await.unwrap();
    assert_eq!(text(&r.stdout), "a  b $HOME\n");

    // A shell when the argv asks for one: stdout, stderr and the exit code apart; the
    // container's environment.
    let r = exec(
        &d,
        &c,
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo \"$GREETING\"; exit 3",
        ],
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.exit_code, text(&r.stdout), text(&r.stderr)),
        (3, "out\nhello from the pod spec\n".into(), "err\n".into())
    );

    // A program that does not exist: 127 and the reason, as a shell says it.
    let r = exec(&d, &c, &["no-such-program"], 10).await.unwrap();
    assert_eq!(r.exit_code, 127, "{r:?}");
    assert!(text(&r.stderr).contains("no-such-program"), "{r:?}");

    // Exec probes are cheap enough to run often.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(exec(&d, &c, &["true"], 5).await.unwrap().exit_code, 0);
    }
    eprintln!("ExecSync true: {:?} each", started.elapsed() / 10);

    // A timeout: DeadlineExceeded soon after it, and the command is gone from the guest.
    let started = Instant::now();
    assert_status(
        exec(&d, &c, &["sleep", "4321"], 1).await,
        Code::DeadlineExceeded,
        &["timed out", "killed in the guest"],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "a 1 s timeout took {took:?}");
    let r = exec(
        &d,
        &c,
        &["sh", "-c", "ps | grep -v grep | grep 'sleep 4321' || true"],
        10,
    )
    .await
    .unwrap();
    assert_eq!(text(&r.stdout), "", "the timed-out command still runs");

    // Bad input.
    assert_status(
        exec(&d, &c, &[], 0).await,
        Code::InvalidArgument,
        &["cmd is empty"],
    );
    assert_status(
        exec(&d, &c, &[""], 0).await,
        Code::InvalidArgument,
        &["cmd[0] is empty"],
    );
    assert_status(
        exec(&d, "0123456789abcdef", &["true"], 0).await,
        Code::NotFound,
        &["0123456789abcdef"],
    );

    // The agent gone: Unavailable, saying what the image needs, within the call's timeout
    // (a VM that started less than two minutes ago may still be booting, so the call waits
    // for its agent that long at most).
    let _ = exec(&d, &c, &["killall", "qemu-ga"], 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    assert_status(
        exec(&d, &c, &["true"], 2).await,
        Code::Unavailable,
        &["qemu-guest-agent"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an ExecSync without an agent took {:?}",
        started.elapsed()
    );

    rt.stop_container(api::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    assert_status(
        exec(&d, &c, &["true"], 0).await,
        Code::FailedPrecondition,
        &["exec needs a running VM"],
    );
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}
