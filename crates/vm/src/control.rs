//! virtlet's own QMP monitor on a VM, used for one thing: letting the guest run while libvirt
//! is still finishing its start.
//!
//! libvirt starts QEMU stopped (`-S`) and, before it lets the guest run, checks the guest CPU
//! with one QMP `qom-get` per CPU feature: about 400 round trips, 0.4-0.6 s on our nodes, during
//! which the VM could already be booting. So while libvirt works, virtlet attaches the console
//! as soon as QEMU has created its socket, then sends `cont` on this second monitor. QEMU emits
//! `RESUME` on libvirt's monitor too, libvirt marks the domain running, goes on with its checks
//! (which only read properties) and its own `cont` at the end finds the guest running already.
//! The guest runs only once the console is attached, so no output is lost. The price: for
//! those 0.4-0.6 s the guest runs before libvirt has put its vCPU threads into their own
//! cgroups (the VM's CPU quota applies from then on), and libvirt records the running reason
//! as "unpaused" instead of "booted".
//!
//! The monitor is a unix socket QEMU listens on (see [`socket_for`]); virtlet removes it right
//! after use, so nothing else can reach it. A tiny hand-written client: the protocol needs three
//! lines each way, and the QMP crates on crates.io would pull in their whole schema.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The QEMU chardev id of virtlet's monitor.
pub const CHARDEV_ID: &str = "virtlet-control";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("VM control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM control socket {path}: QEMU closed it")]
    Closed { path: PathBuf },
    #[error("VM control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// virtlet's monitor socket for a VM whose console socket is `console`: next to it.
pub fn socket_for(console: &Path) -> PathBuf {
    console.with_extension("qmp")
}

/// The QEMU arguments that add virtlet's monitor on `socket` (QEMU listens, does not wait).
pub fn qemu_args(socket: &Path) -> Vec<String> {
    // A comma inside a QEMU option value is written twice.
    let path = socket.to_string_lossy().replace(',', ",,");
    vec![
        "-chardev".into(),
        format!("socket,id={CHARDEV_ID},path={path},server=on,wait=off"),
        "-mon".into(),
        format!("chardev={CHARDEV_ID},mode=control"),
    ]
}

/// One line from QEMU's monitor.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// The greeting QEMU sends on connect.
    Greeting,
    /// An asynchronous event (skipped).
    Event(String),
    /// A command succeeded.
    Return,
    /// A command failed.
    Error(String),
}

/// Parses one line of QMP (pure).
pub fn parse_reply(line: &str) -> Result<Reply, String> {
    let v: Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("not QMP JSON ({e}): {line:?}"))?;
    if v.get("QMP").is_some() {
        Ok(Reply::Greeting)
    } else if v.get("return").is_some() {
        Ok(Reply::Return)
    } else if let Some(e) = v.get("error") {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("Error");
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("");
        Ok(Reply::Error(format!("{class}: {desc}")))
    } else if let Some(name) = v.get("event").and_then(Value::as_str) {
        Ok(Reply::Event(name.to_owned()))
    } else {
        Err(format!("unexpected QMP line: {line:?}"))
    }
}

/// A QMP command line (pure).
pub fn command(name: &str) -> String {
    format!("{}\n", serde_json::json!({ "execute": name }))
}

/// Lets a VM started paused run, through virtlet's monitor on `socket`; waits up to `patience`
/// for QEMU to create the socket. Removes the socket afterwards, whatever happened.
pub async fn resume(socket: &Path, patience: Duration) -> Result<(), ControlError> {
    let result = resume_inner(socket, patience).await;
    let _ = std::fs::remove_file(socket);
    result
}

async fn resume_inner(socket: &Path, patience: Duration) -> Result<(), ControlError> {
    let io = |source| ControlError::Io {
        path: socket.to_owned(),
        source,
    };
    let stream = crate::console::connect(socket, patience)
        .await
        .map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || -> Result<Reply, ControlError> {
        loop {
            let line =
                lines
                    .next_line()
                    .await
                    .map_err(io)?
                    .ok_or_else(|| ControlError::Closed {
                        path: socket.to_owned(),
                    })?;
            match parse_reply(&line) {
                Ok(Reply::Event(_)) => continue,
                Ok(r) => return Ok(r),
                Err(message) => {
                    return Err(ControlError::Protocol {
                        path: socket.to_owned(),
                        message,
                    });
                }
            }
        }
    };
    let unexpected = |what: &str, got: Reply| ControlError::Protocol {
        path: socket.to_owned(),
        message: format!("{what}: got {got:?}"),
    };
    match next().await? {
        Reply::Greeting => {}
        other => return Err(unexpected("expected the QMP greeting", other)),
    }
    for cmd in ["qmp_capabilities", "cont"] {
        write.write_all(command(cmd).as_bytes()).await.map_err(io)?;
        match next().await? {
            Reply::Return => {}
            other => return Err(unexpected(cmd, other)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_told_apart() {
        assert_eq!(
            parse_reply(
                r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#
            ),
            Ok(Reply::Greeting)
        );
        assert_eq!(parse_reply("{\"return\": {}}\r\n"), Ok(Reply::Return));
        assert_eq!(
            parse_reply(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#),
            Ok(Reply::Event("RESUME".into()))
        );
        assert_eq!(
            parse_reply(
                r#"{"error": {"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}}"#
            ),
            Ok(Reply::Error(
                "GenericError: Resetting the Virtual Machine is required".into()
            ))
        );
        assert!(
            parse_reply("{\"id\": 1}")
                .unwrap_err()
                .contains("unexpected")
        );
        assert!(parse_reply("garbage").unwrap_err().contains("not QMP JSON"));
    }

    #[test]
    fn commands_and_args_are_what_qemu_reads() {
        assert_eq!(command("cont"), "{\"execute\":\"cont\"}\n");
        assert_eq!(
            qemu_args(Path::new("/run/virtlet/consoles/abc.qmp")),
            [
                "-chardev",
                "socket,id=virtlet-control,path=/run/virtlet/consoles/abc.qmp,server=on,wait=off",
                "-mon",
                "chardev=virtlet-control,mode=control"
            ]
        );
        assert!(qemu_args(Path::new("/run/a,b/c.qmp"))[1].contains("path=/run/a,,b/c.qmp,server"));
        assert_eq!(
            socket_for(Path::new("/run/virtlet/consoles/abc.sock")),
            Path::new("/run/virtlet/consoles/abc.qmp")
        );
    }
}
