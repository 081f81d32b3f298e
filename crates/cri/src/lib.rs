//! The CRI v1 gRPC edge of virtlet: tonic services that validate requests, call the image
//! store (and, as they land, the VM manager), and turn errors into `tonic::Status` in one place
//! ([`status`]).

mod convert;
mod image;
mod listing;
mod metrics;
pub mod router;
mod runtime;
pub mod serve;
mod service;
mod status;
pub mod stream;
mod streaming;

pub use image::ImageServer;
pub use router::{ImageRouter, Remote};
pub use runtime::RuntimeServer;
pub use service::RuntimeService;
pub use status::image_error_status;

pub use k8s_cri::v1 as api;

/// The runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "virtlet";
/// The CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";

/// A gRPC channel to a CRI server on a unix socket (for clients: virtletctl, tests, benches).
pub async fn connect_unix(
    socket: &std::path::Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
