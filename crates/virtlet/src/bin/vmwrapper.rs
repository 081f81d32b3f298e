//! libvirt cannot start QEMU inside a network namespace, so virtlet names this program as the
//! domain's emulator. libvirt passes the domain's `<qemu:env>` variables: with
//! `VIRTLET_NETNS=<path>` it enters that network namespace; then it becomes QEMU
//! (`VIRTLET_EMULATOR`, default `/usr/bin/qemu-system-x86_64`) with the same arguments.
//! Without `VIRTLET_NETNS` (libvirt probing the emulator's capabilities) it just becomes QEMU.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

const DEFAULT_QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn main() -> ExitCode {
    let qemu = std::env::var("VIRTLET_EMULATOR").unwrap_or_else(|_| DEFAULT_QEMU.to_owned());
    if let Ok(netns) = std::env::var("VIRTLET_NETNS") {
        let file = match std::fs::File::open(&netns) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("vmwrapper: cannot open network namespace {netns}: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("vmwrapper: cannot enter network namespace {netns}: {e}");
            return ExitCode::from(1);
        }
    }
    let err = Command::new(&qemu).args(std::env::args_os().skip(1)).exec();
    eprintln!("vmwrapper: cannot run {qemu}: {err}");
    ExitCode::from(127)
}
