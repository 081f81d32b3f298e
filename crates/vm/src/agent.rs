//! The QEMU guest agent's protocol for exec, as pure functions: the `guest-exec` and
//! `guest-exec-status` requests virtlet sends through libvirt
//! (`virDomainQemuAgentCommand`), and their replies. The agent runs argv directly (no
//! shell), with the output captured and handed back base64-encoded once the process exits.
//!
//! See QEMU's `qga/qapi-schema.json` (`guest-exec`, `GuestExecStatus`).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

/// The virtio-serial port name the agent listens on (what cloud images' qemu-guest-agent
/// packages open, and what libvirt connects to).
pub const CHANNEL: &str = "org.qemu.guest_agent.0";

/// The PATH a command runs with, unless the container's environment sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    #[error("the guest agent's answer to {command} is not usable: {reason}")]
    BadReply {
        command: &'static str,
        reason: String,
    },
}

/// A `guest-exec` request: `argv` run directly (argv[0] looked up in the agent's PATH), with
/// `env` (`KEY=value`) as its whole environment, `stdin` fed in and closed, output captured.
pub fn exec_request(argv: &[String], env: &[String], stdin: Option<&[u8]>) -> String {
    let (path, args) = argv
        .split_first()
        .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let mut arguments = json!({
        "path": path,
        "arg": args,
        "env": env,
        "capture-output": true,
    });
    if let Some(input) = stdin {
        arguments["input-data"] = json!(base64::engine::general_purpose::STANDARD.encode(input));
    }
    json!({"execute": "guest-exec", "arguments": arguments}).to_string()
}

/// A `guest-exec-status` request for `pid`.
pub fn exec_status_request(pid: i64) -> String {
    json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}).to_string()
}

/// A request that runs `kill -KILL <pid>` in the guest: what stops a command whose time is
/// up (the agent has no command of its own for that).
pub fn kill_request(pid: i64) -> String {
    exec_request(
        &["kill".to_owned(), "-KILL".to_owned(), pid.to_string()],
        &[format!("PATH={DEFAULT_PATH}")],
        None,
    )
}

/// The shell that starts a command on an exec terminal (`$1`, a virtio console such as
/// `/dev/hvc1`): the terminal becomes its stdin, stdout and stderr, gets sane settings and
/// the client's size (`$2` columns, `$3` rows), and the command (the rest of the arguments,
/// run as given, not parsed by this shell) starts in a session of its own with the terminal
/// as its controlling tty, so that job control, Ctrl-C and SIGWINCH work as on any terminal.
/// Once the terminal is open it prints [`TTY_READY`]: input sent before that would be lost
/// (a virtio console nobody has open drops it). `setsid` execs in place, so the agent's pid
/// is the command's and its exit code comes back.
const TTY_LAUNCHER: &str = r#"t=$1 c=$2 r=$3; shift 3; exec <>"$t" >&0 2>&0 || exit 126; stty sane rows "$r" cols "$c" 2>/dev/null; printf '\033_virtlet-exec-ready\033\\'; exec setsid -c "$@""#;

/// What the launcher prints when the terminal is open: an APC sequence (which terminals
/// ignore), taken out of the output before the client sees it.
pub const TTY_READY: &[u8] = b"\x1b_virtlet-exec-ready\x1b\\";

/// A `guest-exec` request that runs `argv` on the exec terminal `device` (see
/// [`TTY_LAUNCHER`]) with `env`; nothing is captured (the output goes to the terminal).
pub fn tty_exec_request(
    device: &str,
    cols: u16,
    rows: u16,
    argv: &[String],
    env: &[String],
) -> String {
    let mut args = vec![
        "-c".to_owned(),
        TTY_LAUNCHER.to_owned(),
        "virtlet-exec".to_owned(),
        device.to_owned(),
        cols.to_string(),
        rows.to_string(),
    ];
    args.extend(argv.iter().cloned());
    json!({"execute": "guest-exec", "arguments": {
        "path": "/bin/sh",
        "arg": args,
        "env": env,
        "capture-output": false,
    }})
    .to_string()
}

/// A request that sets the size of the terminal `device` (`stty -F`): the kernel then sends
/// SIGWINCH to the terminal's foreground process group.
pub fn tty_resize_request(device: &str, cols: u16, rows: u16) -> String {
    let argv: Vec<String> = [
        "stty",
        "-F",
        device,
        "rows",
        &rows.to_string(),
        "cols",
        &cols.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    exec_request(&argv, &[format!("PATH={DEFAULT_PATH}")], None)
}

/// A request that sends `signal` (`HUP`, `KILL`) to the process group of `pid`: what a
/// terminal's hang-up does, when the client of an exec terminal goes away.
pub fn kill_group_request(pid: i64, signal: &str) -> String {
    exec_request(
        &[
            "kill".to_owned(),
            format!("-{signal}"),
            "--".to_owned(),
            format!("-{pid}"),
        ],
        &[format!("PATH={DEFAULT_PATH}")],
        None,
    )
}

#[derive(Deserialize)]
struct Reply<T> {
    #[serde(rename = "return")]
    ret: T,
}

#[derive(Deserialize)]
struct Started {
    pid: i64,
}

/// The pid of the process a `guest-exec` started.
pub fn parse_exec_started(reply: &str) -> Result<i64, AgentError> {
    serde_json::from_str::<Reply<Started>>(reply)
        .map(|r| r.ret.pid)
        .map_err(|e| AgentError::BadReply {
            command: "guest-exec",
            reason: format!("{e}: {reply}"),
        })
}

#[derive(Deserialize)]
struct RawStatus {
    exited: bool,
    exitcode: Option<i32>,
    signal: Option<i32>,
    #[serde(rename = "out-data")]
    out_data: Option<String>,
    #[serde(rename = "err-data")]
    err_data: Option<String>,
    #[serde(rename = "out-truncated", default)]
    out_truncated: bool,
    #[serde(rename = "err-truncated", default)]
    err_truncated: bool,
}

/// Where a process run by the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Running,
    Exited(ExecOutput),
}

/// What a finished process left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; 128 + the signal's number for a process killed by a signal, as a shell
    /// reports it.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent kept only the first part of an output (it keeps 16 MiB of each).
    pub truncated: bool,
}

/// A `guest-exec-status` reply.
pub fn parse_exec_status(reply: &str) -> Result<ExecStatus, AgentError> {
    let bad = |reason: String| AgentError::BadReply {
        command: "guest-exec-status",
        reason,
    };
    let raw = serde_json::from_str::<Reply<RawStatus>>(reply)
        .map_err(|e| bad(format!("{e}: {reply}")))?
        .ret;
    if !raw.exited {
        return Ok(ExecStatus::Running);
    }
    let decode = |field: &str, data: Option<String>| {
        data.map_or(Ok(Vec::new()), |d| {
            base64::engine::general_purpose::STANDARD
                .decode(d)
                .map_err(|e| bad(format!("{field} is not base64: {e}")))
        })
    };
    let exit_code = match (raw.exitcode, raw.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => {
            return Err(bad(
                "an exited process with neither exitcode nor signal".into()
            ));
        }
    };
    Ok(ExecStatus::Exited(ExecOutput {
        exit_code,
        stdout: decode("out-data", raw.out_data)?,
        stderr: decode("err-data", raw.err_data)?,
        truncated: raw.out_truncated || raw.err_truncated,
    }))
}

/// Keeps at most `limit` bytes of output in all, stdout first, as the kubelet refuses larger
/// answers. Returns whether anything was cut.
pub fn cap_output(out: &mut ExecOutput, limit: usize) -> bool {
    let mut cut = false;
    if out.stdout.len() > limit {
        out.stdout.truncate(limit);
        cut = true;
    }
    let left = limit - out.stdout.len();
    if out.stderr.len() > left {
        out.stderr.truncate(left);
        cut = true;
    }
    cut
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn terminal_requests_launch_the_argv_untouched_on_the_device() {
        let argv = [
            "sh".to_owned(),
            "-c".to_owned(),
            "echo \"$X\"; exit 3".to_owned(),
        ];
        let r = v(&tty_exec_request(
            "/dev/hvc2",
            100,
            30,
            &argv,
            &["TERM=xterm".into()],
        ));
        assert_eq!(r["arguments"]["path"], "/bin/sh");
        assert_eq!(r["arguments"]["capture-output"], false);
        assert_eq!(r["arguments"]["env"], json!(["TERM=xterm"]));
        let args = r["arguments"]["arg"].as_array().unwrap();
        assert_eq!(args[0], "-c");
        assert_eq!(args[1], TTY_LAUNCHER);
        // $0, then the device and size, then the argv as given (no shell parses it).
        assert_eq!(
            args[2..],
            [
                json!("virtlet-exec"),
                json!("/dev/hvc2"),
                json!("100"),
                json!("30"),
                json!("sh"),
                json!("-c"),
                json!("echo \"$X\"; exit 3")
            ]
        );
        assert!(TTY_LAUNCHER.contains(r"\033_virtlet-exec-ready\033\\"));
        let r = v(&tty_resize_request("/dev/hvc1", 120, 40));
        assert_eq!(
            r["arguments"]["arg"],
            json!(["-F", "/dev/hvc1", "rows", "40", "cols", "120"])
        );
        let r = v(&kill_group_request(42, "HUP"));
        assert_eq!(r["arguments"]["path"], "kill");
        assert_eq!(r["arguments"]["arg"], json!(["-HUP", "--", "-42"]));
    }

    #[test]
    fn exec_requests_carry_argv_env_and_stdin() {
        let argv = ["cat".to_owned(), "/etc/host name".to_owned()];
        assert_eq!(
            v(&exec_request(&argv, &["PATH=/bin".into()], None)),
            json!({"execute": "guest-exec", "arguments": {
                "path": "cat", "arg": ["/etc/host name"], "env": ["PATH=/bin"],
                "capture-output": true}})
        );
        assert_eq!(
            v(&exec_request(&argv[..1], &[], Some(b"hi\n")))["arguments"]["input-data"],
            "aGkK"
        );
        assert_eq!(
            v(&exec_status_request(42)),
            json!({"execute": "guest-exec-status", "arguments": {"pid": 42}})
        );
        assert_eq!(
            v(&kill_request(7))["arguments"]["arg"],
            json!(["-KILL", "7"])
        );
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse_exec_started(r#"{"return":{"pid":1234}}"#), Ok(1234));
        assert!(parse_exec_started(r#"{"return":{}}"#).is_err());
        assert_eq!(
            parse_exec_status(r#"{"return":{"exited":false}}"#),
            Ok(ExecStatus::Running)
        );
        assert_eq!(
            parse_exec_status(
                r#"{"return":{"exited":true,"exitcode":3,"out-data":"b3V0","err-data":"ZXJy"}}"#
            ),
            Ok(ExecStatus::Exited(ExecOutput {
                exit_code: 3,
                stdout: b"out".to_vec(),
                stderr: b"err".to_vec(),
                truncated: false
            }))
        );
        let ExecStatus::Exited(killed) =
            parse_exec_status(r#"{"return":{"exited":true,"signal":9,"out-truncated":true}}"#)
                .unwrap()
        else {
            panic!("not exited")
        };
        assert_eq!((killed.exit_code, killed.truncated), (137, true));
        let err = parse_exec_status(r#"{"return":{"exited":true,"out-data":"%%","exitcode":0}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("out-data is not base64"), "{err}");
        assert!(parse_exec_status(r#"{"return":{"exited":true}}"#).is_err());
    }

    #[test]
    fn output_is_capped_stdout_first() {
        let mut out = ExecOutput {
            stdout: vec![b'o'; 10],
            stderr: vec![b'e'; 10],
            ..Default::default()
        };
        assert!(!cap_output(&mut out.clone(), 20));
        assert!(cap_output(&mut out, 14));
        assert_eq!((out.stdout.len(), out.stderr.len()), (10, 4));
        let mut out = ExecOutput {
            stdout: vec![b'o'; 10],
            stderr: vec![b'e'; 10],
            ..Default::default()
        };
        assert!(cap_output(&mut out, 5));
        assert_eq!((out.stdout.len(), out.stderr.len()), (5, 0));
    }
}
