//! The ImageService on a node shared with containerd: VM images (a `virtlet.cloud/` name, a
//! name a translation config matches, an image virtlet holds, or any image pulled for a VM
//! pod) are virtlet's; every other image is containerd's.

use std::sync::Arc;

use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};
use virtlet_image::ImageStore;

use super::{Remote, TARGET_RUNTIME, TARGET_RUNTIME_VIRTLET, merge};
use crate::ImageServer;

pub struct ImageRouter {
    local: ImageServer,
    store: Arc<ImageStore>,
    remote: Arc<Remote>,
}

impl ImageRouter {
    pub fn new(store: Arc<ImageStore>, remote: Arc<Remote>) -> ImageRouter {
        ImageRouter {
            local: ImageServer::new(store.clone()),
            store,
            remote,
        }
    }

    /// containerd, unless the image is a VM image (an empty name stays here: virtlet names
    /// the missing field).
    fn remote_for(&self, spec: Option<&api::ImageSpec>) -> Option<&Remote> {
        let name = spec.map_or("", |s| s.image.as_str());
        (!name.is_empty() && !self.store.serves(name)).then_some(&*self.remote)
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ImageService for ImageRouter {
    async fn list_images(
        &self,
        req: Request<api::ListImagesRequest>,
    ) -> Answer<api::ListImagesResponse> {
        let theirs = req.get_ref().clone();
        let mut images = self.local.list_images(req).await?.into_inner().images;
        if let Ok(r) = self
            .remote
            .read(|| async { self.remote.images().list_images(theirs.clone()).await })
            .await
        {
            images.extend(r.into_inner().images);
        }
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<api::ImageStatusRequest>,
    ) -> Answer<api::ImageStatusResponse> {
        let remote = self.remote_for(req.get_ref().image.as_ref());
        route!(self, req, image_status, remote, images)
    }

    /// By name, or to virtlet for a VM pod whatever the name (the kubelet sends the pod's
    /// sandbox config along).
    async fn pull_image(
        &self,
        req: Request<api::PullImageRequest>,
    ) -> Answer<api::PullImageResponse> {
        let r = req.get_ref();
        let for_vm = r.sandbox_config.as_ref().is_some_and(|c| {
            c.annotations
                .get(TARGET_RUNTIME)
                .is_some_and(|v| v == TARGET_RUNTIME_VIRTLET)
        });
        let remote = if for_vm {
            None
        } else {
            self.remote_for(r.image.as_ref())
        };
        route!(self, req, pull_image, remote, images)
    }

    async fn remove_image(
        &self,
        req: Request<api::RemoveImageRequest>,
    ) -> Answer<api::RemoveImageResponse> {
        let remote = self.remote_for(req.get_ref().image.as_ref());
        route!(self, req, remove_image, remote, images)
    }

    async fn image_fs_info(
        &self,
        req: Request<api::ImageFsInfoRequest>,
    ) -> Answer<api::ImageFsInfoResponse> {
        let theirs = *req.get_ref();
        let ours = self.local.image_fs_info(req).await?.into_inner();
        match self
            .remote
            .read(|| async { self.remote.images().image_fs_info(theirs).await })
            .await
        {
            Ok(r) => Ok(Response::new(merge::image_fs(ours, r.into_inner()))),
            Err(_) => Ok(Response::new(ours)),
        }
    }
}
