//! The real Kubernetes clients (crictl, critest, the kubelet) from `../shared/tools`, which
//! CI has beside the repository. Nothing is downloaded: a missing archive fails the test and
//! says where it was looked for.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::vm::repo_root;

/// The folder with `bin/crictl`, `bin/critest`, `bin/kubelet`, ...: `../shared/tools/unpack`
/// unpacks it once (into `$VIRTLET_TEST_TOOLS` or `/var/cache/virtlet-test-tools`).
pub fn tools_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let unpack = repo_root().join("../shared/tools/unpack");
        assert!(
            unpack.exists(),
            "the Kubernetes test tools are missing: expected {} (the shared folder beside the \
             repository, which CI provides)",
            unpack.display()
        );
        let out = Command::new(&unpack)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", unpack.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            unpack.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

pub fn tool(name: &str) -> PathBuf {
    let p = tools_dir().join("bin").join(name);
    assert!(p.exists(), "{} is missing from the test tools", p.display());
    p
}

/// crictl pointed at one daemon's socket, with an empty config file (so it reads no
/// /etc/crictl.yaml) and a timeout long enough for VM calls.
pub struct Crictl {
    bin: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Crictl {
    pub fn new(socket: &Path, scratch: &Path) -> Crictl {
        let config = scratch.join("crictl.yaml");
        std::fs::write(&config, "").unwrap();
        Crictl {
            bin: tool("crictl"),
            config,
            endpoint: format!("unix://{}", socket.display()),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(["--timeout", "120s"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run crictl: {e}"))
    }

    /// Runs crictl and returns its stdout; panics with both outputs when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crictl {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs crictl expecting failure; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "crictl {} should have failed; it printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `crictl <command> -o json ...` parsed (flags go before the arguments).
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args[..1].to_vec();
        all.extend(["-o", "json"]);
        all.extend(&args[1..]);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("crictl {} gave no JSON ({e}):\n{text}", args.join(" ")))
    }
}

/// The rows of a crictl table (header first), split on runs of two or more spaces.
pub fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cmd`'s program and arguments quoted for `sh -c` (its environment is not kept): to run it
/// in a pseudo-terminal with util-linux `script -c`, as a person at a terminal would.
pub fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
