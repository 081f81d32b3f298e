//! Single-use, expiring tokens for the URLs Attach and PortForward hand out: the URL is the
//! only credential, so it is random, works once and not for long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Attach {
        container_id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    /// A command, on a terminal of the VM when `tty`.
    Exec {
        container_id: String,
        cmd: Vec<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    PortForward {
        sandbox_id: String,
        ports: Vec<u16>,
    },
}

pub struct Tokens {
    ttl: Duration,
    live: Mutex<HashMap<String, (Request, Instant)>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A new token for `req` (32 random bytes, URL-safe).
    pub fn issue(&self, req: Request) -> String {
        let bytes: [u8; 24] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        live.insert(token.clone(), (req, now));
        token
    }

    /// The request of a live token, which is used up by this.
    pub fn redeem(&self, token: &str) -> Option<Request> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let (req, at) = live.remove(token)?;
        (at.elapsed() < self.ttl).then_some(req)
    }

    pub fn outstanding(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pf() -> Request {
        Request::PortForward {
            sandbox_id: "s".into(),
            ports: vec![22],
        }
    }

    #[test]
    fn tokens_work_once() {
        let t = Tokens::new(Duration::from_secs(60));
        let a = t.issue(pf());
        let b = t.issue(pf());
        assert_ne!(a, b);
        assert_eq!(a.len(), 48);
        assert_eq!(t.redeem(&a), Some(pf()));
        assert_eq!(t.redeem(&a), None);
        assert_eq!(t.redeem("nope"), None);
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn tokens_expire() {
        let t = Tokens::new(Duration::from_millis(20));
        let a = t.issue(pf());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.redeem(&a), None);
        // Expired ones are dropped when new ones are issued.
        let _ = t.issue(pf());
        let _ = t.issue(pf());
        std::thread::sleep(Duration::from_millis(40));
        let _ = t.issue(pf());
        assert_eq!(t.outstanding(), 1);
    }
}
