//! The libvirt driver: define, start, stop, undefine and observe domains. It decides nothing;
//! callers (the manager) decide. Calls block: run them on a blocking thread.
//!
//! One connection is shared; when libvirtd restarts under us, the next call finds the
//! connection dead, reconnects once and retries.

use std::sync::Mutex;

use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::{Domain, DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;
use virtlet_core::naming::DOMAIN_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("libvirt refused to {action} domain {domain}: {message}")]
    Call {
        action: &'static str,
        domain: String,
        message: String,
    },
    #[error("{failure} (domain {domain}): {message}")]
    Agent {
        domain: String,
        failure: AgentFailure,
        message: String,
    },
}

/// Why a command for the QEMU guest agent failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentFailure {
    /// The domain has no agent channel.
    #[error("the VM has no guest agent channel")]
    NotConfigured,
    /// The channel exists but no agent answers on it (not installed, not started yet, or
    /// hung).
    #[error("no QEMU guest agent answers in the VM")]
    NotConnected,
    /// The agent ran the command and reported an error.
    #[error("the QEMU guest agent refused the command")]
    Refused,
    /// Anything else libvirt reported.
    #[error("libvirt could not pass the command to the guest agent")]
    Other,
}

/// How a VM ended, as a container exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: i32,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainStatus {
    Running,
    Paused,
    /// The domain is defined but not running.
    ShutOff(ExitInfo),
}

/// A domain of virtlet's, as [`Libvirt::list_owned`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDomain {
    pub name: String,
    pub status: DomainStatus,
    /// Its disks' files.
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: u64,
    /// Memory the VM uses (RSS when the balloon reports it, else its current allocation).
    pub memory_bytes: u64,
    /// Bytes the root disk occupies on the host.
    pub disk_bytes: u64,
}

/// What CRI's metrics are made of: [`VmStats`], libvirt's user and system CPU split, and the
/// QEMU process's figures ([`crate::sample`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmSample {
    pub stats: VmStats,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub process: crate::sample::ProcessSample,
}

pub struct Libvirt {
    uri: String,
    conn: Mutex<Connect>,
}

fn open(uri: &str) -> Result<Connect, DriverError> {
    Connect::open(Some(uri)).map_err(|e| DriverError::Connect {
        uri: uri.to_owned(),
        message: e.message().to_owned(),
    })
}

/// Exit status from a shut-off domain's reason. A guest that powers itself off (or answers
/// the ACPI power button) exits 0; anything else is a failure.
pub fn exit_info(reason: DomainShutoffReason) -> ExitInfo {
    let (code, reason, message) = match reason {
        DomainShutoffReason::Shutdown => (0, "Completed", "the guest powered off"),
        DomainShutoffReason::Destroyed => (
            137,
            "Killed",
            "the VM was forced off (a stop timed out, or it was destroyed outside virtlet)",
        ),
        DomainShutoffReason::Crashed => (139, "Error", "the guest crashed"),
        DomainShutoffReason::Failed => (1, "Error", "QEMU failed to run the VM"),
        DomainShutoffReason::Daemon => (1, "Error", "libvirtd stopped the VM"),
        other => (1, "Error", return_unknown(other)),
    };
    ExitInfo {
        code,
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

fn return_unknown(_: DomainShutoffReason) -> &'static str {
    "the VM stopped for a reason libvirt did not say"
}

fn status_of(dom: &Domain) -> Result<DomainStatus, virt::error::Error> {
    let (state, reason) = dom.state()?;
    Ok(match state {
        Enum::Known(DomainState::Running) | Enum::Known(DomainState::Blocked) => {
            DomainStatus::Running
        }
        Enum::Known(DomainState::Paused)
        | Enum::Known(DomainState::PMSuspended)
        | Enum::Known(DomainState::Shutdown) => DomainStatus::Paused,
        Enum::Known(DomainState::Crashed) => {
            DomainStatus::ShutOff(exit_info(DomainShutoffReason::Crashed))
        }
        _ => {
            let r = match reason {
                Enum::Known(DomainStateReason::Shutoff(Enum::Known(r))) => r,
                _ => DomainShutoffReason::Unknown,
            };
            DomainStatus::ShutOff(exit_info(r))
        }
    })
}

fn not_found(e: &virt::error::Error) -> bool {
    e.code() == Enum::Known(ErrorNumber::NoDomain)
}

fn not_running(e: &virt::error::Error) -> bool {
    e.code() == Enum::Known(ErrorNumber::OperationInvalid)
}

impl Libvirt {
    pub fn connect(uri: &str) -> Result<Libvirt, DriverError> {
        // Errors come back to us as values; libvirt need not also print them to stderr.
        virt::error::clear_error_callback();
        Ok(Libvirt {
            uri: uri.to_owned(),
            conn: Mutex::new(open(uri)?),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether the driver runs real QEMU processes (not libvirt's `test:` driver).
    pub fn runs_qemu(&self) -> bool {
        self.uri.starts_with("qemu")
    }

    fn conn(&self) -> Connect {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `op`; if it fails because the connection died (libvirtd restarted), reconnects once
    /// and runs it again.
    pub(crate) fn call<T>(
        &self,
        action: &'static str,
        domain: &str,
        op: impl Fn(&Connect) -> Result<T, virt::error::Error>,
    ) -> Result<T, DriverError> {
        let conn = self.conn();
        match op(&conn) {
            Ok(v) => Ok(v),
            Err(e) if conn.is_alive().unwrap_or(false) => Err(DriverError::Call {
                action,
                domain: domain.to_owned(),
                message: e.message().to_owned(),
            }),
            Err(first) => {
                warn!(uri = %self.uri, "libvirt connection lost ({}); reconnecting", first.message());
                let fresh = open(&self.uri)?;
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                info!(uri = %self.uri, "reconnected to libvirt");
                op(&fresh).map_err(|e| DriverError::Call {
                    action,
                    domain: domain.to_owned(),
                    message: e.message().to_owned(),
                })
            }
        }
    }

    /// Defines (persistently) the domain of `xml`.
    pub fn define(&self, name: &str, xml: &str) -> Result<(), DriverError> {
        self.call("define", name, |c| c.define_domain_xml(xml).map(|_| ()))
    }

    /// Starts a defined domain, paused when asked (so the console can be attached first).
    pub fn start(&self, name: &str, paused: bool) -> Result<(), DriverError> {
        let flags = if paused {
            sys::VIR_DOMAIN_START_PAUSED
        } else {
            0
        };
        self.call("start", name, |c| {
            let d = c.lookup_domain_by_name(name)?;
            match d.create_with_flags(flags) {
                // Drivers without START_PAUSED (libvirt's test driver): start, then pause.
                Err(e) if paused && e.message().contains("unsupported flags") => {
                    d.create()?;
                    d.suspend().map(|_| ())
                }
                other => other.map(|_| ()),
            }
        })
    }

    pub fn resume(&self, name: &str) -> Result<(), DriverError> {
        self.call("resume", name, |c| {
            c.lookup_domain_by_name(name)?.resume().map(|_| ())
        })
    }

    /// Presses the ACPI power button. A domain that is not running is fine.
    pub fn shutdown(&self, name: &str) -> Result<(), DriverError> {
        self.call("shut down", name, |c| {
            let result = c.lookup_domain_by_name(name).and_then(|d| {
                match d.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) {
                    // Drivers without the ACPI flag (libvirt's test driver).
                    Err(e) if e.message().contains("unsupported flags") => d.shutdown(),
                    other => other.map(|_| ()),
                }
            });
            match result {
                Err(e) if not_found(&e) || not_running(&e) => Ok(()),
                other => other,
            }
        })
    }

    /// Forces the domain off. Absent or stopped is fine.
    pub fn destroy(&self, name: &str) -> Result<(), DriverError> {
        self.call("destroy", name, |c| {
            match c.lookup_domain_by_name(name).and_then(|d| d.destroy()) {
                Err(e) if not_found(&e) || not_running(&e) => Ok(()),
                other => other,
            }
        })
    }

    /// Removes the domain's definition (forcing it off first). Absent is fine.
    pub fn undefine(&self, name: &str) -> Result<(), DriverError> {
        self.destroy(name)?;
        self.call("undefine", name, |c| {
            match c.lookup_domain_by_name(name).and_then(|d| d.undefine()) {
                Err(e) if not_found(&e) => Ok(()),
                other => other,
            }
        })
    }

    /// The domain that has `uuid`, if any: its name and whether it runs.
    pub fn domain_with_uuid(&self, uuid: &str) -> Result<Option<(String, bool)>, DriverError> {
        self.call("look up by UUID", uuid, |c| {
            match c.lookup_domain_by_uuid_string(uuid) {
                Ok(d) => Ok(Some((d.name()?, d.is_active()?))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// The domain's status, or `None` when no such domain exists.
    pub fn status(&self, name: &str) -> Result<Option<DomainStatus>, DriverError> {
        self.call("inspect", name, |c| match c.lookup_domain_by_name(name) {
            Ok(d) => status_of(&d).map(Some),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Every domain whose name marks it as virtlet's, with its status and its disks' files
    /// (which tell the virtlet instance it belongs to, where several share a libvirtd).
    pub fn list_owned(&self) -> Result<Vec<OwnedDomain>, DriverError> {
        self.call("list", "*", |c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(0)? {
                let name = d.name()?;
                if name.starts_with(DOMAIN_PREFIX) {
                    let files = crate::domain_xml::disk_files(&d.xml_desc(0)?);
                    out.push(OwnedDomain {
                        name,
                        status: status_of(&d)?,
                        files,
                    });
                }
            }
            Ok(out)
        })
    }

    /// CPU, memory and root disk use of a domain (zeros for what the driver cannot tell).
    pub fn stats(&self, name: &str, root_target: &str) -> Result<VmStats, DriverError> {
        self.call("read stats of", name, |c| {
            let d = c.lookup_domain_by_name(name)?;
            let info = d.info()?;
            let mut stats = VmStats {
                cpu_ns: info.cpu_time,
                memory_bytes: info.memory.saturating_mul(1024),
                disk_bytes: 0,
            };
            if let Ok(mem) = d.memory_stats(0)
                && let Some(rss) = mem
                    .iter()
                    .find(|m| m.tag == sys::VIR_DOMAIN_MEMORY_STAT_RSS)
            {
                stats.memory_bytes = rss.val.saturating_mul(1024);
            }
            if let Ok(b) = d.block_info(root_target, 0) {
                stats.disk_bytes = b.allocation;
            }
            Ok(stats)
        })
    }

    /// [`stats`](Self::stats) plus the CPU time split and the QEMU process's own figures
    /// (found through libvirt's pid file for `qemu:///system`; zeros elsewhere).
    pub fn sample(&self, name: &str, root_target: &str) -> Result<VmSample, DriverError> {
        let stats = self.stats(name, root_target)?;
        let (user, system) = self
            .call("read CPU stats of", name, |c| {
                let d = c.lookup_domain_by_name(name)?;
                Ok(d.cpu_stats(-1, 1, 0)
                    .ok()
                    .and_then(|v| v.into_iter().next())
                    .map(|s| (s.user_time.unwrap_or(0), s.system_time.unwrap_or(0)))
                    .unwrap_or((0, 0)))
            })
            .unwrap_or((0, 0));
        let process = (self.uri == "qemu:///system")
            .then(|| {
                std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
            })
            .flatten()
            .map(crate::sample::read_process)
            .unwrap_or_default();
        Ok(VmSample {
            stats,
            cpu_user_ns: user,
            cpu_system_ns: system,
            process,
        })
    }

    /// Sends one command (JSON) to the QEMU guest agent and returns its reply (JSON), waiting
    /// at most `timeout_s` seconds for it.
    pub fn agent_command(
        &self,
        name: &str,
        cmd: &str,
        timeout_s: i32,
    ) -> Result<String, DriverError> {
        let d = self.call("look up", name, |c| c.lookup_domain_by_name(name))?;
        d.qemu_agent_command(cmd, timeout_s, 0).map_err(|e| {
            let failure = match e.code() {
                Enum::Known(ErrorNumber::ArgumentUnsupported) => AgentFailure::NotConfigured,
                Enum::Known(
                    ErrorNumber::AgentUnresponsive
                    | ErrorNumber::AgentUnsynced
                    | ErrorNumber::AgentCommandTimeout,
                ) => AgentFailure::NotConnected,
                Enum::Known(ErrorNumber::AgentCommandFailed | ErrorNumber::InternalError) => {
                    AgentFailure::Refused
                }
                _ => AgentFailure::Other,
            };
            DriverError::Agent {
                domain: name.to_owned(),
                failure,
                message: e.message().to_owned(),
            }
        })
    }

    /// Changes the running VM's memory balloon target (up to its defined maximum).
    pub fn set_memory(&self, name: &str, bytes: u64) -> Result<(), DriverError> {
        self.call("set memory of", name, |c| {
            c.lookup_domain_by_name(name)?
                .set_memory_flags(bytes.div_ceil(1024), sys::VIR_DOMAIN_AFFECT_LIVE)
                .map(|_| ())
        })
    }
}
