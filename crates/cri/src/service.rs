//! The RuntimeService as it is served: the generated tonic service, except that the two
//! calls the kubelet makes every second on every node, ListContainers and ListPodSandbox,
//! answer with bytes written straight from the records ([`crate::listing`]). On a node shared
//! with containerd ([`crate::router`]) containerd's encoded answer follows virtlet's: both
//! are `repeated` entries of field 1, so the concatenation is the merged list.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_server::{RuntimeServiceServer, SERVICE_NAME};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::RuntimeServer;
use crate::listing::PreEncodedCodec;
use crate::router::{Remote, Router};

use crate::router::{LIST_CONTAINERS, LIST_POD_SANDBOX};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// `runtime.v1.RuntimeService` for [`tonic::transport::Server::add_service`].
#[derive(Clone)]
pub struct RuntimeService {
    generated: Generated,
    server: Arc<RuntimeServer>,
    /// containerd, on a node shared with it.
    remote: Option<Arc<Remote>>,
    max_message: usize,
}

#[derive(Clone)]
enum Generated {
    Local(RuntimeServiceServer<RuntimeServer>),
    Routed(RuntimeServiceServer<Router>),
}

impl RuntimeService {
    /// Serves `server`, taking and sending messages of up to `max_message` bytes.
    pub fn new(server: RuntimeServer, max_message: usize) -> RuntimeService {
        let server = Arc::new(server);
        RuntimeService {
            generated: Generated::Local(
                RuntimeServiceServer::from_arc(server.clone())
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            ),
            server,
            remote: None,
            max_message,
        }
    }

    /// Serves VM pods from `server` and every other pod from `remote` (containerd); `handler`
    /// is the RuntimeClass handler of VM pods.
    pub fn routed(
        server: RuntimeServer,
        remote: Arc<Remote>,
        handler: String,
        max_message: usize,
    ) -> RuntimeService {
        let server = Arc::new(server);
        let router = Router::new(server.clone(), remote.clone(), handler);
        RuntimeService {
            generated: Generated::Routed(
                RuntimeServiceServer::new(router)
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            ),
            server,
            remote: Some(remote),
            max_message,
        }
    }

    fn grpc<Req: prost::Message + Default + Send + 'static>(&self) -> Grpc<PreEncodedCodec<Req>> {
        Grpc::new(PreEncodedCodec::default())
            .apply_max_message_size_config(Some(self.max_message), Some(self.max_message))
    }
}

impl NamedService for RuntimeService {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for RuntimeService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match req.uri().path() {
            LIST_CONTAINERS => {
                let mut grpc = self.grpc::<api::ListContainersRequest>();
                let method = ListContainers(self.server.clone(), self.remote.clone());
                Box::pin(async move { Ok(grpc.unary(method, req).await) })
            }
            LIST_POD_SANDBOX => {
                let mut grpc = self.grpc::<api::ListPodSandboxRequest>();
                let method = ListPodSandbox(self.server.clone(), self.remote.clone());
                Box::pin(async move { Ok(grpc.unary(method, req).await) })
            }
            _ => match &mut self.generated {
                Generated::Local(g) => tower::Service::call(g, req),
                Generated::Routed(g) => tower::Service::call(g, req),
            },
        }
    }
}

/// virtlet's encoded answer, then containerd's (when it is shared with and answers).
async fn with_remote<Req: prost::Message + Clone + Send + Sync + 'static>(
    ours: Bytes,
    remote: Option<Arc<Remote>>,
    path: &'static str,
    request: Req,
) -> Bytes {
    let Some(remote) = remote else {
        return ours;
    };
    match remote.cached(path, request).await {
        Ok(theirs) if ours.is_empty() => theirs,
        Ok(theirs) => {
            let mut both = bytes::BytesMut::with_capacity(ours.len() + theirs.len());
            both.extend_from_slice(&ours);
            both.extend_from_slice(&theirs);
            both.freeze()
        }
        Err(_) => ours,
    }
}

struct ListContainers(Arc<RuntimeServer>, Option<Arc<Remote>>);

impl UnaryService<api::ListContainersRequest> for ListContainers {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<api::ListContainersRequest>) -> Self::Future {
        let server = self.0.clone();
        let remote = self.1.clone();
        Box::pin(async move {
            let request = request.into_inner();
            let ours = server.list_containers_encoded(request.filter.as_ref());
            Ok(Response::new(
                with_remote(ours, remote, LIST_CONTAINERS, request).await,
            ))
        })
    }
}

struct ListPodSandbox(Arc<RuntimeServer>, Option<Arc<Remote>>);

impl UnaryService<api::ListPodSandboxRequest> for ListPodSandbox {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<api::ListPodSandboxRequest>) -> Self::Future {
        let server = self.0.clone();
        let remote = self.1.clone();
        Box::pin(async move {
            let request = request.into_inner();
            let ours = server.list_pod_sandbox_encoded(request.filter.as_ref());
            Ok(Response::new(
                with_remote(ours, remote, LIST_POD_SANDBOX, request).await,
            ))
        })
    }
}
