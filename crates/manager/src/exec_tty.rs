//! Exec with a terminal (`kubectl exec -it`): the command runs on one of the VM's exec
//! terminals, virtio consoles that are real ttys in the guest (`/dev/hvc1`..), each behind
//! a unix socket QEMU listens on. The QEMU guest agent starts the command there (a small
//! `sh` launcher makes the terminal its stdin, stdout, stderr and controlling tty), tells
//! when it exited and with what code, and sets the terminal's size (`stty -F`) on a resize.
//! The bytes flow through the socket as they come. When the client goes away first, the
//! command's process group gets a hang-up (SIGHUP, then SIGKILL), as a closed terminal
//! would give it. See docs/exec.md for why this design and what it needs from the guest.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use virtlet_core::ErrorKind;
use virtlet_core::vmspec::{EXEC_TTYS, exec_tty_device, exec_tty_socket};
use virtlet_vm::Libvirt;
use virtlet_vm::agent::{self, ExecStatus};

use crate::exec::{AGENT_CALL_TIMEOUT_S, agent_error, collect_status, exec_env, poll_delay};
use crate::{Manager, ManagerError, Result, blocking, lock};

/// After the command exited, output still on its way is read until the terminal has been
/// quiet this long ...
const QUIET: Duration = Duration::from_millis(100);
/// ... or for this long at most (a background process may keep writing).
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// A hung-up command has this long to end before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(1);
/// Once a session has lasted this long, its exit is polled less often.
const SLOW_POLLS_AFTER: Duration = Duration::from_secs(5);
const SLOW_POLL: Duration = Duration::from_millis(250);

/// A command running on an exec terminal, as the streaming server drives it.
pub struct TtySession {
    /// What the terminal prints; closed once the command has exited and its output is read.
    pub output: mpsc::Receiver<Vec<u8>>,
    /// What the client types.
    pub input: mpsc::Sender<Vec<u8>>,
    /// The client's terminal size: (columns, rows).
    pub resize: mpsc::Sender<(u16, u16)>,
    /// The command's exit code, once `output` is closed; an error when the VM or its agent
    /// went away first.
    pub exit: oneshot::Receiver<std::result::Result<i32, String>>,
}

/// Which exec terminals are in use, by container.
#[derive(Default, Clone)]
pub(crate) struct TtySlots(Arc<Mutex<HashSet<(String, usize)>>>);

/// One exec terminal held by a session, given back when dropped.
struct Slot {
    slots: TtySlots,
    key: (String, usize),
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.slots.0).remove(&self.key);
    }
}

impl TtySlots {
    /// The first free terminal of `container` whose socket exists (QEMU made it).
    fn take(&self, container: &str, console: &std::path::Path) -> Result<(Slot, PathBuf)> {
        if !exec_tty_socket(console, 1).exists() {
            return Err(ManagerError::precondition(format!(
                "container {container:?}: its VM was defined without exec terminals (by an older virtlet); recreate the pod to exec into it with a terminal"
            )));
        }
        let mut busy = lock(&self.0);
        for n in 1..=EXEC_TTYS {
            let key = (container.to_owned(), n);
            if !busy.contains(&key) {
                busy.insert(key.clone());
                let slot = Slot {
                    slots: self.clone(),
                    key,
                };
                return Ok((slot, exec_tty_socket(console, n)));
            }
        }
        Err(ManagerError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "container {container:?}: all {EXEC_TTYS} exec terminals of its VM are in use; end one of the `exec -t` sessions, or exec without -t"
            ),
        ))
    }
}

impl Manager {
    /// Starts `cmd` on a free exec terminal of the container's VM, sized `cols` x `rows`.
    pub async fn exec_tty(
        &self,
        id: &str,
        cmd: Vec<String>,
        (cols, rows): (u16, u16),
    ) -> Result<TtySession> {
        let rec = self.exec_check(id, &cmd)?;
        let console = rec.console_socket.clone().ok_or_else(|| {
            ManagerError::precondition(format!(
                "container {id:?}: its VM has no console sockets (a libvirt driver without QEMU), so no exec terminal"
            ))
        })?;
        let (slot, socket) = self.tty_slots.take(id, &console)?;
        let n = slot.key.1;
        let device = exec_tty_device(n);
        // Connected before the command starts, so that none of its output is lost.
        let stream = UnixStream::connect(&socket).await.map_err(|e| {
            ManagerError::failed(
                ErrorKind::Unavailable,
                format!(
                    "container {id:?}: cannot connect to exec terminal {}",
                    socket.display()
                ),
                e,
            )
        })?;
        let mut env = exec_env(&rec.config.envs);
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".to_owned());
        }
        let request = agent::tty_exec_request(&device, cols.max(1), rows.max(1), &cmd, &env);
        let pid = match self.start_in_guest(&rec, request, None).await? {
            Ok(pid) => pid,
            Err(refused) => {
                return Err(ManagerError::precondition(format!(
                    "container {id:?}: the guest agent cannot start /bin/sh for the terminal: {refused}"
                )));
            }
        };
        tracing::info!(container = id, pid, %device, ?cmd, "exec with a terminal started");
        let (out_tx, output) = mpsc::channel(64);
        let (input, in_rx) = mpsc::channel(64);
        let (resize, resize_rx) = mpsc::channel(8);
        let (exit_tx, exit) = oneshot::channel();
        let session = Session {
            lv: self.libvirt.clone(),
            domain: rec.domain_name.clone(),
            container: id.to_owned(),
            pid,
            device,
        };
        tokio::spawn(async move {
            let result = session.run(stream, out_tx, in_rx, resize_rx).await;
            let _ = exit_tx.send(result);
            drop(slot);
        });
        Ok(TtySession {
            output,
            input,
            resize,
            exit,
        })
    }
}

/// What follows the launcher's ready mark in `held`, once it is there.
fn split_ready(held: &[u8]) -> Option<Vec<u8>> {
    held.windows(agent::TTY_READY.len())
        .position(|w| w == agent::TTY_READY)
        .map(|i| held[i + agent::TTY_READY.len()..].to_vec())
}

/// One running terminal session.
struct Session {
    lv: Arc<Libvirt>,
    domain: String,
    container: String,
    pid: i64,
    device: String,
}

impl Session {
    async fn run(
        &self,
        stream: UnixStream,
        out_tx: mpsc::Sender<Vec<u8>>,
        mut in_rx: mpsc::Receiver<Vec<u8>>,
        mut resize_rx: mpsc::Receiver<(u16, u16)>,
    ) -> std::result::Result<i32, String> {
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; 16 * 1024];
        let started = Instant::now();
        let (mut input_open, mut resize_open) = (true, true);
        let mut polls = 0u32;
        let mut next_poll = tokio::time::Instant::now();
        // Until the launcher says the terminal is open, input waits and output is held.
        let mut early: Option<Vec<u8>> = Some(Vec::new());
        let code = loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        let data = match early.as_mut() {
                            None => buf[..n].to_vec(),
                            Some(held) => {
                                held.extend_from_slice(&buf[..n]);
                                match split_ready(held) {
                                    Some(rest) => {
                                        early = None;
                                        rest
                                    }
                                    None => continue,
                                }
                            }
                        };
                        if !data.is_empty() && out_tx.send(data).await.is_err() {
                            self.hang_up().await;
                            return Err("the client went away".into());
                        }
                    }
                    _ => return Err(format!(
                        "the exec terminal of container {:?} closed: its VM stopped", self.container
                    )),
                },
                data = in_rx.recv(), if input_open && early.is_none() => match data {
                    Some(d) => {
                        if wr.write_all(&d).await.is_err() {
                            return Err("the exec terminal closed".into());
                        }
                    }
                    None => input_open = false,
                },
                size = resize_rx.recv(), if resize_open => match size {
                    Some((cols, rows)) => self.resize(cols, rows).await,
                    None => resize_open = false,
                },
                () = out_tx.closed() => {
                    self.hang_up().await;
                    return Err("the client went away".into());
                }
                () = tokio::time::sleep_until(next_poll) => {
                    if let Some(code) = self.exited().await? {
                        break code;
                    }
                    let delay = if started.elapsed() > SLOW_POLLS_AFTER {
                        SLOW_POLL
                    } else {
                        poll_delay(polls)
                    };
                    polls += 1;
                    next_poll = tokio::time::Instant::now() + delay;
                }
            }
        };
        // Output written just before the exit may still be on its way.
        let until = Instant::now() + DRAIN_MAX;
        while Instant::now() < until {
            match tokio::time::timeout(QUIET, rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if out_tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        tracing::info!(container = %self.container, pid = self.pid, code, "exec with a terminal ended");
        Ok(code)
    }

    /// The exit code once the command has exited.
    async fn exited(&self) -> std::result::Result<Option<i32>, String> {
        let (lv, domain, pid) = (self.lv.clone(), self.domain.clone(), self.pid);
        let reply = blocking(move || {
            lv.agent_command(
                &domain,
                &agent::exec_status_request(pid),
                AGENT_CALL_TIMEOUT_S,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| virtlet_core::error::chain(&agent_error(&self.container, e)))?;
        match agent::parse_exec_status(&reply) {
            Ok(ExecStatus::Exited(out)) => Ok(Some(out.exit_code)),
            Ok(ExecStatus::Running) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs an agent command and collects its status (so that the agent forgets it).
    async fn run_quietly(&self, request: String, what: &'static str) {
        let (lv, domain) = (self.lv.clone(), self.domain.clone());
        let result = blocking(
            move || -> std::result::Result<(), virtlet_vm::DriverError> {
                let reply = lv.agent_command(&domain, &request, AGENT_CALL_TIMEOUT_S)?;
                if let Ok(pid) = agent::parse_exec_started(&reply) {
                    collect_status(&lv, &domain, pid)?;
                }
                Ok(())
            },
        )
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(container = %self.container, pid = self.pid, "{what} failed: {e}");
        }
    }

    async fn resize(&self, cols: u16, rows: u16) {
        let request = agent::tty_resize_request(&self.device, cols.max(1), rows.max(1));
        self.run_quietly(request, "resizing the exec terminal")
            .await;
    }

    /// What closing a terminal does: SIGHUP to the command's process group, SIGKILL if it
    /// is still there after [`HANGUP_GRACE`]; its status is collected.
    async fn hang_up(&self) {
        tracing::info!(container = %self.container, pid = self.pid, "exec client gone: hanging up the terminal");
        self.run_quietly(agent::kill_group_request(self.pid, "HUP"), "hang-up")
            .await;
        let until = Instant::now() + HANGUP_GRACE;
        while Instant::now() < until {
            if !matches!(self.exited().await, Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.run_quietly(agent::kill_group_request(self.pid, "KILL"), "kill")
            .await;
        let _ = self.exited().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn output_starts_after_the_ready_mark() {
        let mut held = b"noise".to_vec();
        assert_eq!(split_ready(&held), None);
        held.extend_from_slice(agent::TTY_READY);
        held.extend_from_slice(b"$ ");
        assert_eq!(split_ready(&held), Some(b"$ ".to_vec()));
    }

    #[test]
    fn terminals_are_taken_in_order_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("c.sock");
        let slots = TtySlots::default();
        let err = slots.take("c1", &console).err().unwrap();
        assert!(err.to_string().contains("recreate the pod"), "{err}");
        for n in 1..=EXEC_TTYS {
            std::fs::write(exec_tty_socket(&console, n), "").unwrap();
        }
        let held: Vec<_> = (0..EXEC_TTYS)
            .map(|_| slots.take("c1", &console).unwrap())
            .collect();
        assert_eq!(held[1].1, exec_tty_socket(&console, 2));
        let err = slots.take("c1", &console).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        assert!(slots.take("c2", &console).is_ok());
        drop(held);
        assert_eq!(
            slots.take("c1", &console).unwrap().1,
            exec_tty_socket(&console, 1)
        );
    }
}
