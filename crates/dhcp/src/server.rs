//! The side effects: a UDP socket bound to one interface inside a network namespace, and a
//! tokio task that answers what arrives on it with [`respond`].

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::lease::{Config, Mac, SERVER_PORT, respond};
use crate::packet::{self, MessageType};

/// Large enough for any UDP datagram, so that nothing is silently truncated.
const RECV_BUFFER_LEN: usize = 65_536;
/// The smallest maximum message size a client may announce (RFC 2132 section 9.10).
const MIN_MAX_MESSAGE_SIZE: u16 = 576;
/// IPv4 and UDP headers, counted in the maximum message size.
const IP_UDP_HEADERS: usize = 28;
/// The pause after a failed receive, so that a persistent error does not spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(100);

static LIVE_RESPONDERS: AtomicUsize = AtomicUsize::new(0);

/// How many responder tasks are running: counted up by [`Responder::spawn`], down when a
/// task ends. Tests use it to check that nothing leaks.
pub fn live_responders() -> usize {
    LIVE_RESPONDERS.load(Ordering::SeqCst)
}

/// Why the DHCP socket could not be set up; carried inside the `io::Error` of
/// [`bind_in_netns`], which keeps the kind of the underlying error.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up the DHCP socket on {ifname} in network namespace {}: {step}",
    netns.display()
)]
struct BindError {
    step: &'static str,
    ifname: String,
    netns: PathBuf,
    #[source]
    source: io::Error,
}

/// Opens a UDP socket on port 67 bound to `ifname` inside the network namespace at `netns`
/// (e.g. `/var/run/netns/<name>` or `/proc/<pid>/ns/net`), with SO_REUSEADDR, SO_BROADCAST
/// and non-blocking mode.
///
/// The namespace is entered on a short-lived thread of its own, so no other thread changes
/// namespace; the socket stays in the namespace it was created in.
pub fn bind_in_netns(netns: &Path, ifname: &str) -> io::Result<StdUdpSocket> {
    let (netns_path, name) = (netns.to_path_buf(), ifname.to_owned());
    let thread = std::thread::Builder::new()
        .name("dhcp-netns".into())
        .spawn(move || bind_here(&netns_path, &name))
        .map_err(bind_error("starting a thread failed", netns, ifname))?;
    thread
        .join()
        .map_err(|_| bind_error("the thread panicked", netns, ifname)(io::Error::other("panic")))?
}

/// Wraps an error of one step of [`bind_in_netns`] in a [`BindError`], keeping its kind.
fn bind_error(
    step: &'static str,
    netns: &Path,
    ifname: &str,
) -> impl FnOnce(io::Error) -> io::Error {
    let (netns, ifname) = (netns.to_path_buf(), ifname.to_owned());
    move |source| {
        let kind = source.kind();
        io::Error::new(
            kind,
            BindError {
                step,
                ifname,
                netns,
                source,
            },
        )
    }
}

/// The body of [`bind_in_netns`], on its own thread.
fn bind_here(netns: &Path, ifname: &str) -> io::Result<StdUdpSocket> {
    let fail = |step| bind_error(step, netns, ifname);
    let namespace = File::open(netns).map_err(fail("opening the namespace failed"))?;
    setns(&namespace, CloneFlags::CLONE_NEWNET)
        .map_err(io::Error::from)
        .map_err(fail("entering the namespace failed"))?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(fail("creating the socket failed"))?;
    socket
        .set_reuse_address(true)
        .map_err(fail("setting SO_REUSEADDR failed"))?;
    socket
        .set_broadcast(true)
        .map_err(fail("setting SO_BROADCAST failed"))?;
    socket
        .bind_device(Some(ifname.as_bytes()))
        .map_err(fail("setting SO_BINDTODEVICE failed"))?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT);
    socket
        .bind(&addr.into())
        .map_err(fail("binding 0.0.0.0:67 failed"))?;
    socket
        .set_nonblocking(true)
        .map_err(fail("setting non-blocking mode failed"))?;
    Ok(socket.into())
}

/// A running responder: a tokio task answering DHCP on one socket.
///
/// [`Responder::stop`] ends it and waits; dropping it aborts the task.
#[derive(Debug)]
pub struct Responder {
    config: watch::Sender<Config>,
    task: Option<JoinHandle<()>>,
}

impl Responder {
    /// Starts answering on `socket` (from [`bind_in_netns`]) with `config`. `label` names the
    /// responder in logs, e.g. the pod and interface. Must be called within a tokio runtime.
    pub fn spawn(socket: StdUdpSocket, config: Config, label: String) -> io::Result<Responder> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("a DHCP responder must be spawned within a tokio runtime")
        })?;
        socket.set_nonblocking(true)?;
        let socket = {
            let _entered = runtime.enter();
            UdpSocket::from_std(socket)?
        };
        let (config, updates) = watch::channel(config);
        let live = LiveGuard::new();
        let task = runtime.spawn(serve(socket, updates, label, live));
        Ok(Responder {
            config,
            task: Some(task),
        })
    }

    /// Replaces the configuration; the next message is answered with it.
    pub fn update(&self, config: Config) {
        self.config.send_replace(config);
    }

    /// Ends the task and waits for it; the socket is closed when this returns.
    pub async fn stop(mut self) {
        let task = self.task.take();
        // Dropping the configuration sender is the task's signal to end.
        drop(self);
        if let Some(task) = task
            && let Err(err) = task.await
            && err.is_panic()
        {
            tracing::error!("DHCP responder task panicked");
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Counts a task in [`live_responders`] from its creation until its future is dropped,
/// whether it finished or was aborted.
struct LiveGuard;

impl LiveGuard {
    fn new() -> LiveGuard {
        LIVE_RESPONDERS.fetch_add(1, Ordering::SeqCst);
        LiveGuard
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE_RESPONDERS.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    socket: UdpSocket,
    mut config: watch::Receiver<Config>,
    label: String,
    _live: LiveGuard,
) {
    let mut buf = vec![0; RECV_BUFFER_LEN];
    debug!(%label, "DHCP responder started");
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    let bytes = buf.get(..len).unwrap_or_default();
                    answer(&socket, &config, &label, bytes, from).await;
                }
                Err(err) => {
                    warn!(%label, error = %err, "receiving a DHCP message failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
            },
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    debug!(%label, "DHCP responder stopped");
}

async fn answer(
    socket: &UdpSocket,
    config: &watch::Receiver<Config>,
    label: &str,
    bytes: &[u8],
    from: SocketAddr,
) {
    let request = match packet::decode(bytes) {
        Ok(request) => request,
        Err(err) => {
            debug!(%label, %from, error = %err, "ignoring a malformed DHCP message");
            return;
        }
    };
    let request_type = request.opts().msg_type();
    let mac = packet::client_mac(&request).map(Mac);
    let Some(reply) = respond(&config.borrow(), &request) else {
        debug!(%label, %from, mac = ?mac, request = ?request_type, "not answering");
        return;
    };
    let mac = mac.map(|mac| mac.to_string()).unwrap_or_default();
    let reply_type = reply.message.opts().msg_type();
    match reply_type {
        Some(MessageType::Nak) => {
            let ip = packet::requested_ip(&request).unwrap_or(request.ciaddr());
            info!(%label, %mac, %ip, request = ?request_type, "DHCPNAK: not the client's address");
        }
        Some(MessageType::Ack) => {
            let ip = match reply.message.yiaddr() {
                Ipv4Addr::UNSPECIFIED => reply.message.ciaddr(),
                yiaddr => yiaddr,
            };
            info!(%label, %mac, %ip, request = ?request_type, "DHCPACK");
        }
        _ => {
            let ip = reply.message.yiaddr();
            debug!(%label, %mac, %ip, request = ?request_type, reply = ?reply_type, "answering");
        }
    }
    let encoded = match packet::encode(&reply.message) {
        Ok(encoded) => encoded,
        Err(err) => {
            warn!(%label, %mac, reply = ?reply_type, error = %err, "encoding a DHCP reply failed");
            return;
        }
    };
    let accepted = packet::max_message_size(&request)
        .map_or(MIN_MAX_MESSAGE_SIZE, |size| size.max(MIN_MAX_MESSAGE_SIZE));
    let limit = usize::from(accepted) - IP_UDP_HEADERS;
    if encoded.len() > limit {
        let len = encoded.len();
        warn!(%label, %mac, len, limit, "DHCP reply is longer than the client accepts");
    }
    if let Err(err) = socket.send_to(&encoded, reply.dest).await {
        let dest = reply.dest;
        warn!(%label, %mac, %dest, reply = ?reply_type, error = %err, "sending a DHCP reply failed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Serializes the tests that count live responders.
    static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn loopback_socket() -> StdUdpSocket {
        StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap()
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn config() -> Config {
        Config {
            server_id: Ipv4Addr::new(169, 254, 254, 2),
            lease_secs: 3600,
            leases: vec![crate::Lease {
                mac: MAC,
                ip: Ipv4Addr::new(10, 77, 0, 5),
                prefix_len: 24,
                gateway: None,
                routes: vec![],
                dns_servers: vec![],
                search: vec![],
                mtu: None,
                hostname: None,
            }],
        }
    }

    fn discover(mac: [u8; 6]) -> Vec<u8> {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut message = packet::Message::new_with_id(
            7,
            unspecified,
            unspecified,
            unspecified,
            unspecified,
            &mac,
        );
        message
            .opts_mut()
            .insert(packet::DhcpOption::MessageType(MessageType::Discover));
        packet::encode(&message).unwrap()
    }

    async fn wait_for_live(count: usize) {
        for _ in 0..200 {
            if live_responders() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(live_responders(), count);
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error() {
        let err = Responder::spawn(loopback_socket(), config(), "test".into()).unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }

    #[test]
    fn bind_errors_name_the_namespace_and_interface() {
        let err = bind_in_netns(Path::new("/nonexistent/netns/pod"), "br-test").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "cannot set up the DHCP socket on br-test in network namespace \
             /nonexistent/netns/pod: opening the namespace failed"
        );
        let source = std::error::Error::source(&err).unwrap();
        assert!(source.to_string().contains("No such file"), "{source}");
    }

    #[tokio::test]
    async fn stop_ends_the_task() {
        let _counting = COUNTING.lock().await;
        let before = live_responders();
        let responder = Responder::spawn(loopback_socket(), config(), "test".into()).unwrap();
        assert_eq!(live_responders(), before + 1);
        responder.update(config());
        responder.stop().await;
        assert_eq!(live_responders(), before);
    }

    #[tokio::test]
    async fn drop_aborts_the_task() {
        let _counting = COUNTING.lock().await;
        let before = live_responders();
        let responder = Responder::spawn(loopback_socket(), config(), "test".into()).unwrap();
        assert_eq!(live_responders(), before + 1);
        drop(responder);
        wait_for_live(before).await;
    }

    #[tokio::test]
    async fn garbage_and_unanswerable_messages_do_not_end_the_task() {
        let socket = loopback_socket();
        let addr = socket.local_addr().unwrap();
        let responder = Responder::spawn(socket, config(), "test".into()).unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        client.send_to(&[], addr).await.unwrap();
        client.send_to(&[1; 100], addr).await.unwrap();
        client.send_to(&[0xff; 2000], addr).await.unwrap();
        // Not ours, then ours: the OFFER to 255.255.255.255 cannot leave a loopback socket
        // without SO_BROADCAST, and the failed send is only logged.
        client.send_to(&discover([2; 6]), addr).await.unwrap();
        client.send_to(&discover(MAC), addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let task = responder.task.as_ref().unwrap();
        assert!(!task.is_finished());
        responder.stop().await;
    }
}
