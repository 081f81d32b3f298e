//! CRI ImageService on the content-addressed image store.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, ListImagesRequest, ListImagesResponse,
    PullImageRequest, PullImageResponse, RemoveImageRequest, RemoveImageResponse, UInt64Value,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};
use virtlet_image::{ImageInfo, ImageStore};

use crate::status::image_error_status;

pub struct ImageServer {
    store: Arc<ImageStore>,
}

impl ImageServer {
    pub fn new(store: Arc<ImageStore>) -> ImageServer {
        ImageServer { store }
    }
}

fn spec_image(spec: Option<&ImageSpec>, field: &str) -> Result<String, Status> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image.clone()),
        _ => Err(Status::invalid_argument(format!(
            "{field} is empty: name the image"
        ))),
    }
}

fn to_cri(info: &ImageInfo) -> Image {
    Image {
        id: info.id(),
        repo_tags: info.repo_tags(),
        repo_digests: info.repo_digests(),
        size: info.size,
        spec: Some(ImageSpec {
            image: info.id(),
            ..ImageSpec::default()
        }),
        ..Image::default()
    }
}

fn verbose_info(info: &ImageInfo) -> HashMap<String, String> {
    let details = serde_json::json!({
        "sourceUrl": info.source_url,
        "size": info.size,
        "format": info.format,
        "virtualSize": info.virtual_size,
        "pulledAtNs": info.pulled_at_ns,
        "names": info.names,
        "repoTags": info.repo_tags(),
    });
    HashMap::from([("info".to_owned(), details.to_string())])
}

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("image store task failed: {e}"))
}

#[tonic::async_trait]
impl ImageService for ImageServer {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let _span = info_span!("ListImages", filter = filter.as_deref().unwrap_or("")).entered();
        let images = self
            .store
            .list(filter.as_deref())
            .map_err(|e| image_error_status(&e))?;
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref(), "image.image")?;
        let _span = info_span!("ImageStatus", image = %image).entered();
        let found = self
            .store
            .status(&image)
            .map_err(|e| image_error_status(&e))?;
        Ok(Response::new(ImageStatusResponse {
            info: match (&found, req.verbose) {
                (Some(i), true) => verbose_info(i),
                _ => HashMap::new(),
            },
            image: found.as_ref().map(to_cri),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref(), "image.image")?;
        let span = info_span!("PullImage", image = %image);
        let pulled = self
            .store
            .pull(&image)
            .instrument(span)
            .await
            .map_err(|e| image_error_status(&e))?;
        Ok(Response::new(PullImageResponse {
            image_ref: pulled.image_ref,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let image = spec_image(request.into_inner().image.as_ref(), "image.image")?;
        let store = self.store.clone();
        let span = info_span!("RemoveImage", image = %image);
        tokio::task::spawn_blocking(move || span.in_scope(|| store.remove(&image)))
            .await
            .map_err(blocking_err)?
            .map_err(|e| image_error_status(&e))?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let store = self.store.clone();
        let usage = tokio::task::spawn_blocking(move || store.fs_usage())
            .await
            .map_err(blocking_err)?
            .map_err(|e| image_error_status(&e))?;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp: usage.timestamp_ns,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: usage.mountpoint.display().to_string(),
                }),
                used_bytes: Some(UInt64Value {
                    value: usage.used_bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes_used,
                }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}
