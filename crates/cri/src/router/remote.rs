//! The container runtime virtlet shares the node with (containerd): a lazily connected gRPC
//! channel on its CRI socket, its answers passed through, and one place that turns "cannot
//! reach it" into UNAVAILABLE naming the socket.

use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::uri::PathAndQuery;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{info, warn};

use super::cache::{self, Cache, Lookup};

/// containerd's CRI socket and a channel to it.
pub struct Remote {
    socket: PathBuf,
    channel: Channel,
    max_message: usize,
    /// Whether the last call found it unreachable (to log changes once, not every call).
    down: AtomicBool,
    /// containerd's last answers to the periodic calls, kept while its events allow.
    cache: Cache,
}

impl Remote {
    /// A channel to `socket` that connects on first use and again after containerd restarts.
    pub fn new(socket: &Path, max_message: usize) -> Result<Remote, tonic::transport::Error> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Ok(Remote {
            socket: socket.to_path_buf(),
            channel,
            max_message,
            down: AtomicBool::new(false),
            cache: Cache::default(),
        })
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// A call that may change containerd's pods went (or goes) through virtlet: copies of its
    /// answers fetched before are not served again.
    pub fn changing(&self) {
        self.cache.fresh(super::fresh::Fresh::bump);
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    /// Passes an answer through, noting whether containerd could be reached. A failure to
    /// reach it becomes UNAVAILABLE naming the socket; containerd's own errors stay as they are.
    pub fn answer<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        match result {
            Err(s) if unreachable(&s) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(socket = %self.socket.display(), error = %s.message(), "containerd is not reachable: calls for container pods fail until it is back; VM pods keep working");
                }
                Err(Status::unavailable(format!(
                    "containerd (--containerd-socket {}) is not reachable: {}",
                    self.socket.display(),
                    s.message()
                )))
            }
            other => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(socket = %self.socket.display(), "containerd is reachable again");
                }
                other
            }
        }
    }

    /// A call that only reads, tried a second time when containerd was not reached: the
    /// first call after containerd restarted finds the old connection gone.
    pub async fn read<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        match call().await {
            Err(s) if unreachable(&s) => self.answer(call().await),
            other => self.answer(other),
        }
    }

    /// A unary call that only reads, its answer kept encoded (List calls are merged as bytes).
    pub async fn raw<Req>(&self, path: &'static str, request: Req) -> Result<Bytes, Status>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
    {
        self.read(|| {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone())
                .max_decoding_message_size(self.max_message)
                .max_encoding_message_size(self.max_message);
            let request = request.clone();
            async move {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                grpc.unary(
                    Request::new(request),
                    PathAndQuery::from_static(path),
                    RawReplyCodec::<Req>(PhantomData),
                )
                .await
                .map(tonic::Response::into_inner)
            }
        })
        .await
    }
}

impl Remote {
    /// A periodic read (ListPodSandbox, ListContainers, Status), its answer kept encoded and
    /// served from virtlet's copy while containerd's events say nothing changed ([`cache`]).
    pub async fn cached<Req>(&self, path: &'static str, request: Req) -> Result<Bytes, Status>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
    {
        let key = cache::key(path, &request.encode_to_vec());
        let generation = match self.cache.lookup(&key, Instant::now()) {
            Lookup::Hit(bytes) => return Ok(bytes),
            Lookup::Miss {
                generation,
                pending,
            } => {
                if pending {
                    self.settle().await;
                    self.cache.fresh(|f| f.generation())
                } else {
                    generation
                }
            }
        };
        let bytes = self.raw(path, request).await?;
        self.cache
            .store(key, generation, bytes.clone(), Instant::now());
        Ok(bytes)
    }

    /// Looks at containerd's two lists for the effect of the events still pending.
    async fn settle(&self) {
        let generation = self.cache.fresh(|f| f.generation());
        let (containers, sandboxes) = tokio::join!(
            self.raw(LIST_CONTAINERS, api::ListContainersRequest::default()),
            self.raw(LIST_POD_SANDBOX, api::ListPodSandboxRequest::default()),
        );
        let decoded = containers.ok().zip(sandboxes.ok()).and_then(|(c, s)| {
            let c = api::ListContainersResponse::decode(c).ok()?;
            let s = api::ListPodSandboxResponse::decode(s).ok()?;
            Some((
                c.containers.into_iter().map(|c| (c.id, c.state)).collect(),
                s.items.into_iter().map(|s| (s.id, s.state)).collect(),
            ))
        });
        if let Some((containers, sandboxes)) = decoded {
            self.cache
                .fresh(|f| f.observe(generation, &containers, &sandboxes));
        }
    }
}

/// The paths of the calls kept by [`Remote::cached`] and used to settle events.
pub const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
pub const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
pub const STATUS: &str = "/runtime.v1.RuntimeService/Status";

/// Whether a status means the call never reached containerd.
fn unreachable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => true,
        Code::Unknown => s.message().contains("transport error"),
        _ => false,
    }
}

/// Requests encoded with prost; answers kept as their encoded bytes.
struct RawReplyCodec<Req>(PhantomData<fn() -> Req>);

impl<Req: prost::Message + Send + 'static> Codec for RawReplyCodec<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<Req>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_statuses() {
        assert!(unreachable(&Status::unavailable("connection refused")));
        assert!(unreachable(&Status::unknown("transport error")));
        assert!(!unreachable(&Status::unknown("runc failed")));
        assert!(!unreachable(&Status::not_found("no such container")));
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable_and_named() {
        let dir = std::env::temp_dir().join(format!("virtlet-remote-{}", std::process::id()));
        let remote = Remote::new(&dir.join("containerd.sock"), 1 << 20).unwrap_or_else(|e| {
            panic!("channel: {e}");
        });
        let err = remote
            .answer(
                remote
                    .runtime()
                    .version(k8s_cri::v1::VersionRequest::default())
                    .await,
            )
            .err()
            .map(|s| (s.code(), s.message().to_owned()));
        let (code, message) = err.unwrap_or_else(|| panic!("a call to a missing socket worked"));
        assert_eq!(code, Code::Unavailable);
        assert!(message.contains("containerd.sock"), "{message}");
    }
}
