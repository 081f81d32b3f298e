//! Exec into a VM: the command runs in the guest through the QEMU guest agent (`guest-exec`,
//! then `guest-exec-status` until it exits), argv as given, no shell. A command whose time is
//! up is killed in the guest (`kill -KILL <pid>`, also through the agent) and the call ends
//! with DeadlineExceeded, which the kubelet reads as a probe timeout.

use std::time::{Duration, Instant};

use virtlet_core::{ContainerState, ErrorKind};
use virtlet_vm::agent::{self, ExecOutput, ExecStatus};
use virtlet_vm::{AgentFailure, DriverError};

use crate::{Manager, ManagerError, Result, blocking};

/// The most output one answer carries: the kubelet's gRPC client refuses messages over
/// 16 MiB, and the answer needs some room besides the output.
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024 - 64 * 1024;

/// How long one agent command may take before the agent counts as hung.
pub(crate) const AGENT_CALL_TIMEOUT_S: i32 = 10;

/// For this long after a VM started, an exec waits for its agent to come up.
const BOOT_GRACE: Duration = Duration::from_secs(120);

/// How often a booting VM's agent is tried.
const AGENT_RETRY: Duration = Duration::from_millis(250);

/// Waits between `guest-exec-status` polls: short first (a probe's `true` or `cat` ends in a
/// few milliseconds), then at most every 50 ms.
pub(crate) fn poll_delay(polls: u32) -> Duration {
    Duration::from_millis((1u64 << polls.min(6)).min(50))
}

/// The environment a command runs with: the container's `envs`, and PATH when they have
/// none. (The agent runs a command with exactly the environment it is given.)
pub fn exec_env(envs: &[k8s_cri::v1::KeyValue]) -> Vec<String> {
    let mut env: Vec<String> = envs
        .iter()
        .filter(|kv| !kv.key.is_empty())
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    if !envs.iter().any(|kv| kv.key == "PATH") {
        env.push(format!("PATH={}", agent::DEFAULT_PATH));
    }
    env
}

/// A command the agent could not start (no such file, not executable) ends as a shell would
/// report it: exit code 127 or 126 and the reason on stderr, so that a probe fails with a
/// message instead of erroring.
fn not_started(argv0: &str, message: &str) -> ExecOutput {
    let code = if message.contains("No such file") {
        127
    } else {
        126
    };
    ExecOutput {
        exit_code: code,
        stderr: format!("{argv0}: {message}\n").into_bytes(),
        ..Default::default()
    }
}

pub(crate) fn agent_error(container: &str, e: DriverError) -> ManagerError {
    let failure = match &e {
        DriverError::Agent { failure, .. } => Some(*failure),
        _ => None,
    };
    let (kind, context) = match failure {
        Some(AgentFailure::NotConfigured) => (
            ErrorKind::FailedPrecondition,
            format!(
                "container {container:?}: its VM was defined without the guest agent channel (by an older virtlet); recreate the pod to exec into it"
            ),
        ),
        Some(AgentFailure::NotConnected) => (
            ErrorKind::Unavailable,
            format!(
                "container {container:?}: exec needs the QEMU guest agent running in the VM (Debian/Ubuntu package qemu-guest-agent; cloud images ship it), and it does not answer yet"
            ),
        ),
        _ => (
            ErrorKind::Internal,
            format!("container {container:?}: exec through the guest agent failed"),
        ),
    };
    ManagerError::failed(kind, context, e)
}

/// Polls `guest-exec-status` of `pid` until it has exited (for a second at most), so that
/// the agent forgets the process. Blocking.
pub(crate) fn collect_status(
    lv: &virtlet_vm::Libvirt,
    domain: &str,
    pid: i64,
) -> std::result::Result<(), DriverError> {
    for _ in 0..100 {
        let s = lv.agent_command(
            domain,
            &agent::exec_status_request(pid),
            AGENT_CALL_TIMEOUT_S,
        )?;
        if agent::parse_exec_status(&s).is_ok_and(|s| s != ExecStatus::Running) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Manager {
    /// Runs `cmd` in the container's VM and returns its output and exit code. `timeout`:
    /// none means no limit.
    /// Whether `cmd` can run in the container now (the checks of [`exec_sync`]), for Exec
    /// before it hands out a URL.
    ///
    /// [`exec_sync`]: Manager::exec_sync
    pub fn exec_check(&self, id: &str, cmd: &[String]) -> Result<crate::ContainerRecord> {
        match cmd.first() {
            None => {
                return Err(ManagerError::invalid(
                    "cmd is empty: exec needs the command's argv (e.g. [\"cat\", \"/etc/hostname\"])",
                ));
            }
            Some(argv0) if argv0.is_empty() => {
                return Err(ManagerError::invalid(format!(
                    "cmd[0] is empty in {cmd:?}: it names the program to run"
                )));
            }
            Some(_) => {}
        }
        let rec = self.records.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(ManagerError::precondition(format!(
                "container {id:?} is {:?}; exec needs a running VM",
                rec.state
            )));
        }
        Ok(rec)
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        stdin: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let rec = self.exec_check(id, &cmd)?;
        let argv0 = cmd.first().cloned().unwrap_or_default();
        let env = exec_env(&rec.config.envs);
        let started = Instant::now();
        let request = agent::exec_request(&cmd, &env, stdin.as_deref());
        let pid = match self.start_in_guest(&rec, request, timeout).await? {
            Ok(pid) => pid,
            Err(refused) => return Ok(not_started(&argv0, &refused)),
        };
        let mut polls = 0;
        loop {
            let lv = self.libvirt.clone();
            let domain = rec.domain_name.clone();
            let reply = blocking(move || {
                lv.agent_command(
                    &domain,
                    &agent::exec_status_request(pid),
                    AGENT_CALL_TIMEOUT_S,
                )
            })
            .await?
            .map_err(|e| agent_error(id, e))?;
            let status = agent::parse_exec_status(&reply).map_err(|e| {
                ManagerError::failed(ErrorKind::Internal, format!("container {id:?}"), e)
            })?;
            if let ExecStatus::Exited(mut out) = status {
                if agent::cap_output(&mut out, MAX_EXEC_OUTPUT) || out.truncated {
                    tracing::warn!(
                        container = id,
                        "exec output cut to the first {MAX_EXEC_OUTPUT} bytes"
                    );
                }
                return Ok(out);
            }
            if let Some(limit) = timeout
                && started.elapsed() >= limit
            {
                self.kill_in_guest(&rec.domain_name, pid).await;
                return Err(ManagerError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "command {cmd:?} timed out after {} s in container {id:?}; it was killed in the guest",
                        limit.as_secs_f64()
                    ),
                ));
            }
            let mut delay = poll_delay(polls);
            if let Some(limit) = timeout {
                delay = delay.min(limit.saturating_sub(started.elapsed()));
            }
            tokio::time::sleep(delay).await;
            polls += 1;
        }
    }

    /// Sends a `guest-exec` request and answers the pid it started, or the agent's reason
    /// when the program could not start. While the VM boots its agent is not up yet: this
    /// waits for it (within `timeout`), as an exec right after StartContainer expects.
    pub(crate) async fn start_in_guest(
        &self,
        rec: &crate::ContainerRecord,
        request: String,
        timeout: Option<Duration>,
    ) -> Result<std::result::Result<i64, String>> {
        let id = rec.id.as_str();
        let started = Instant::now();
        let running_for =
            Duration::from_nanos((crate::now_ns() - rec.started_at_ns).max(0).unsigned_abs());
        let booting_until = started + BOOT_GRACE.saturating_sub(running_for);
        let wait_until = timeout.map_or(booting_until, |t| booting_until.min(started + t));
        let reply = loop {
            let lv = self.libvirt.clone();
            let domain = rec.domain_name.clone();
            let request = request.clone();
            match blocking(move || lv.agent_command(&domain, &request, AGENT_CALL_TIMEOUT_S))
                .await?
            {
                Ok(reply) => break reply,
                Err(DriverError::Agent {
                    failure: AgentFailure::Refused,
                    message,
                    ..
                }) => return Ok(Err(message)),
                Err(DriverError::Agent {
                    failure: AgentFailure::NotConnected,
                    ..
                }) if Instant::now() + AGENT_RETRY < wait_until => {
                    tokio::time::sleep(AGENT_RETRY).await;
                }
                Err(e) => return Err(agent_error(id, e)),
            }
        };
        let pid = agent::parse_exec_started(&reply).map_err(|e| {
            ManagerError::failed(ErrorKind::Internal, format!("container {id:?}"), e)
        })?;
        tracing::debug!(pid, "command started in the guest");
        Ok(Ok(pid))
    }

    /// Kills a command of the agent's, and collects its status so that the agent forgets it.
    async fn kill_in_guest(&self, domain: &str, pid: i64) {
        let lv = self.libvirt.clone();
        let domain = domain.to_owned();
        let result = blocking(move || {
            let killer =
                lv.agent_command(&domain, &agent::kill_request(pid), AGENT_CALL_TIMEOUT_S)?;
            // The kill command's own status, then the killed one's.
            if let Ok(k) = agent::parse_exec_started(&killer) {
                collect_status(&lv, &domain, k)?;
            }
            collect_status(&lv, &domain, pid)
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pid, "could not kill a timed-out command in the guest: {e}")
            }
            Err(e) => tracing::warn!(pid, "could not kill a timed-out command in the guest: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::KeyValue;

    #[test]
    fn the_environment_is_the_containers_with_a_path() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(
            exec_env(&[kv("A", "1"), kv("", "x")]),
            vec!["A=1".to_owned(), format!("PATH={}", agent::DEFAULT_PATH)]
        );
        assert_eq!(
            exec_env(&[kv("PATH", "/opt")]),
            vec!["PATH=/opt".to_owned()]
        );
    }

    #[test]
    fn commands_that_cannot_start_fail_like_in_a_shell() {
        let out = not_started(
            "nope",
            "Failed to execute child process “nope” (No such file or directory)",
        );
        assert_eq!(out.exit_code, 127);
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("nope: Failed"));
        assert_eq!(not_started("/etc", "Permission denied").exit_code, 126);
    }

    #[test]
    fn polls_start_fast_and_settle_at_50ms() {
        assert_eq!(poll_delay(0), Duration::from_millis(1));
        assert_eq!(poll_delay(3), Duration::from_millis(8));
        assert_eq!(poll_delay(10), Duration::from_millis(50));
    }
}
