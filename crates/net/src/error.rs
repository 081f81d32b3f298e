//! Network errors, each with the kind the gRPC edge maps to a status code.

use std::path::PathBuf;

use virtlet_core::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no CNI network config in {dir} (looked for *.conflist, *.conf, *.json){problems}")]
    NoConfig { dir: PathBuf, problems: String },
    #[error("CNI config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("CNI plugin {plugin:?} (network {network:?}) not found in {dirs}")]
    PluginMissing {
        plugin: String,
        network: String,
        dirs: String,
    },
    #[error("CNI plugin {plugin:?} failed {command} for network {network:?}: {message}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        network: String,
        /// CNI error code (0 when the plugin printed none).
        code: u32,
        message: String,
    },
    #[error("CNI plugin {plugin:?} {command} gave a result virtlet cannot read: {reason}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("pod netns {netns}: {what}: {reason}")]
    Setup {
        netns: PathBuf,
        what: String,
        reason: String,
    },
}

impl NetError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetError::NoConfig { .. }
            | NetError::BadConfig { .. }
            | NetError::PluginMissing { .. } => ErrorKind::FailedPrecondition,
            NetError::PluginFailed { message, code, .. } => {
                if is_exhaustion(message) {
                    ErrorKind::ResourceExhausted
                } else if *code == 11 {
                    // CNI 1.0: "try again later"
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Internal
                }
            }
            NetError::BadResult { .. } | NetError::Setup { .. } => ErrorKind::Internal,
        }
    }
}

/// IPAM plugins say "no more addresses" in words, not codes (host-local: "no IP addresses
/// available in range set").
fn is_exhaustion(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no ip addresses available")
        || m.contains("no more addresses")
        || m.contains("ip pool exhausted")
}
