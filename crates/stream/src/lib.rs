//! The CRI streaming server: the URLs virtlet's Attach and PortForward return point here, and
//! the kubelet (or crictl) connects to them with the protocols Kubernetes speaks:
//!
//! - attach ([`attach`]): SPDY/3.1 with `channel.k8s.io`, `v2`, `v3`, `v4.channel.k8s.io`, and
//!   WebSocket with `v4.channel.k8s.io` and `v5.channel.k8s.io`. It is the VM's serial
//!   console: several clients at once, input typed into the VM, Ctrl-] detaches, the log
//!   keeps flowing, resize messages are read and ignored (a serial line has no size).
//! - exec ([`exec`]): the same protocols as attach, without a terminal; the command runs
//!   through the runtime's guest agent, stdin read to its end first, output and the exit
//!   status (client-go's `NonZeroExitCode`) sent when it ends. With a terminal
//!   ([`exec_tty`]): bytes both ways as they come, window resizes, then the exit status.
//! - port-forward ([`portforward`]): SPDY/3.1 `portforward.k8s.io` (error/data stream pairs),
//!   the same tunnelled through WebSocket (`SPDY/3.1+portforward.k8s.io`), and WebSocket
//!   `v4.channel.k8s.io` (two channels per port). Connections are made from inside the pod's
//!   netns to the VM's address.
//!
//! Every URL carries a random single-use token that expires after a minute; anything else is
//! 404. SPDY is `virtlet-wire`'s; WebSocket is tokio-tungstenite ([`ws`]).

mod attach;
pub mod client;
mod exec;
mod exec_tty;
mod portforward;
mod server;
pub mod tokens;
pub mod ws;

pub use exec::MAX_STDIN;
pub use exec_tty::TtyExec;
pub use server::{Backend, ConsoleIo, DETACH_KEY, ExecOutcome, ExecOutput, StreamServer};
pub use tokens::{Request, Tokens};
