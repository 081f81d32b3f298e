//! The RuntimeService as it is served: the generated tonic service, except that the two
//! calls the kubelet makes every second on every node, ListContainers and ListPodSandbox,
//! answer with bytes written straight from the records ([`crate::listing`]).

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

const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// `runtime.v1.RuntimeService` for [`tonic::transport::Server::add_service`].
#[derive(Clone)]
pub struct RuntimeService {
    generated: RuntimeServiceServer<RuntimeServer>,
    server: Arc<RuntimeServer>,
    max_message: usize,
}

impl RuntimeService {
    /// Serves `server`, taking and sending messages of up to `max_message` bytes.
    pub fn new(server: RuntimeServer, max_message: usize) -> RuntimeService {
        let server = Arc::new(server);
        RuntimeService {
            generated: RuntimeServiceServer::from_arc(server.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            server,
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
                let method = ListContainers(self.server.clone());
                Box::pin(async move { Ok(grpc.unary(method, req).await) })
            }
            LIST_POD_SANDBOX => {
                let mut grpc = self.grpc::<api::ListPodSandboxRequest>();
                let method = ListPodSandbox(self.server.clone());
                Box::pin(async move { Ok(grpc.unary(method, req).await) })
            }
            _ => tower::Service::call(&mut self.generated, req),
        }
    }
}

struct ListContainers(Arc<RuntimeServer>);

impl UnaryService<api::ListContainersRequest> for ListContainers {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<api::ListContainersRequest>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            let filter = request.into_inner().filter;
            Ok(Response::new(
                server.list_containers_encoded(filter.as_ref()),
            ))
        })
    }
}

struct ListPodSandbox(Arc<RuntimeServer>);

impl UnaryService<api::ListPodSandboxRequest> for ListPodSandbox {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<api::ListPodSandboxRequest>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            let filter = request.into_inner().filter;
            Ok(Response::new(
                server.list_pod_sandbox_encoded(filter.as_ref()),
            ))
        })
    }
}
