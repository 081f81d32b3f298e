//! The CRI v1 gRPC edge of virtlet: tonic services that validate requests, call the image
//! store (and, as they land, the VM manager), and turn errors into `tonic::Status` in one place
//! ([`status`]).

mod image;
mod runtime;
mod status;

pub use image::ImageServer;
pub use runtime::RuntimeServer;
pub use status::image_error_status;

pub use k8s_cri::v1 as api;

/// The runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "virtlet";
/// The CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";
