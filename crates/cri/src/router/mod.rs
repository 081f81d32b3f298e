//! A node shared with containerd: virtlet serves the kubelet's one CRI socket, runs VM pods
//! itself and hands every other pod, and every call about one, to containerd unchanged.
//!
//! - A pod is a VM pod when its RuntimeClass handler is virtlet's (`--runtime-handler`,
//!   `virtlet` by default) or it carries Virtlet's `kubernetes.io/target-runtime:
//!   virtlet.cloud` annotation.
//! - Calls naming a pod or container go where that ID lives: virtlet's records first, else
//!   containerd (IDs are random 256-bit values; the two runtimes never share one).
//! - List calls answer with both runtimes' items (the encoded answers are concatenated: a
//!   repeated field's entries may arrive in any number of pieces); Status and ImageFsInfo are
//!   combined ([`merge`]); streaming URLs from containerd pass through.
//! - Image calls go by name ([`images`]).
//! - When containerd is down, VM pods keep working: List calls answer with virtlet's items
//!   (and log that containerd is missing), calls for container pods fail with UNAVAILABLE.

/// The call to virtlet when `$remote` is `None`, else to containerd (its `$client`: runtime
/// or images), unchanged.
macro_rules! route {
    ($self:ident, $req:ident, $method:ident, $remote:expr, $client:ident) => {
        match $remote {
            None => $self.local.$method($req).await,
            Some(remote) => {
                tracing::debug!(call = stringify!($method), "forwarded to containerd");
                let changes = $crate::router::changes_pods(stringify!($method));
                if changes {
                    remote.changing();
                }
                let answer = remote.answer(remote.$client().$method($req.into_inner()).await);
                if changes {
                    remote.changing();
                }
                answer
            }
        }
    };
}

mod cache;
pub mod events;
pub mod fresh;
mod images;
pub mod merge;
mod remote;

use std::sync::Arc;

use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

pub use images::ImageRouter;
pub use remote::{LIST_CONTAINERS, LIST_POD_SANDBOX, Remote, STATUS};

use crate::RuntimeServer;

/// Virtlet's annotation that makes a pod a VM pod (and its value).
pub const TARGET_RUNTIME: &str = "kubernetes.io/target-runtime";
pub const TARGET_RUNTIME_VIRTLET: &str = "virtlet.cloud";

/// Routes the RuntimeService between virtlet and containerd.
pub struct Router {
    pub(crate) local: Arc<RuntimeServer>,
    pub(crate) remote: Arc<Remote>,
    handler: String,
}

impl Router {
    pub fn new(local: Arc<RuntimeServer>, remote: Arc<Remote>, handler: String) -> Router {
        Router {
            local,
            remote,
            handler,
        }
    }

    /// Whether a new pod is a VM pod.
    pub fn is_vm_pod(&self, req: &api::RunPodSandboxRequest) -> bool {
        is_vm_pod(&self.handler, req)
    }

    /// containerd, unless the sandbox is virtlet's (an empty ID stays here: virtlet names
    /// the missing field).
    fn sandbox_remote(&self, id: &str) -> Option<&Remote> {
        (!id.is_empty() && !self.local.manager.owns_sandbox(id)).then_some(&*self.remote)
    }

    fn container_remote(&self, id: &str) -> Option<&Remote> {
        (!id.is_empty() && !self.local.manager.owns_container(id)).then_some(&*self.remote)
    }

    /// Both runtimes' items: containerd's when it answers, else only virtlet's (logged by
    /// [`Remote::answer`]).
    fn both<T>(local: Vec<T>, remote: Result<Vec<T>, Status>) -> Vec<T> {
        let mut items = local;
        if let Ok(theirs) = remote {
            items.extend(theirs);
        }
        items
    }
}

/// Whether a forwarded call may change what containerd lists (its pods, their containers and
/// states, its Status): copies of containerd's answers ([`cache`]) are dropped before and
/// after it. Reads, stats, streaming URLs and image calls change nothing there (an exec'd
/// command that kills a container is seen by its exit event).
pub(crate) fn changes_pods(method: &str) -> bool {
    !matches!(
        method,
        "pod_sandbox_status"
            | "container_status"
            | "container_stats"
            | "pod_sandbox_stats"
            | "exec_sync"
            | "exec"
            | "attach"
            | "port_forward"
            | "image_status"
            | "pull_image"
            | "remove_image"
    )
}

/// See [`Router::is_vm_pod`].
pub fn is_vm_pod(handler: &str, req: &api::RunPodSandboxRequest) -> bool {
    req.runtime_handler == handler
        || req.config.as_ref().is_some_and(|c| {
            c.annotations
                .get(TARGET_RUNTIME)
                .is_some_and(|v| v == TARGET_RUNTIME_VIRTLET)
        })
}

/// Both runtimes' answers of a List call, the items in field `$field`.
macro_rules! list_both {
    ($self:ident, $req:ident, $method:ident, $resp:ident { $field:ident }) => {{
        let theirs = $req.get_ref().clone();
        let ours = $self.local.$method($req).await?.into_inner().$field;
        let remote = $self
            .remote
            .read(|| async { $self.remote.runtime().$method(theirs.clone()).await })
            .await
            .map(|r| r.into_inner().$field);
        Ok(Response::new(api::$resp {
            $field: Router::both(ours, remote),
        }))
    }};
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RuntimeService for Router {
    async fn version(&self, req: Request<api::VersionRequest>) -> Answer<api::VersionResponse> {
        self.local.version(req).await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<api::RunPodSandboxRequest>,
    ) -> Answer<api::RunPodSandboxResponse> {
        let remote = (!self.is_vm_pod(req.get_ref())).then_some(&*self.remote);
        if remote.is_some() {
            let r = req.get_ref();
            let pod = r.config.as_ref().and_then(|c| c.metadata.as_ref());
            tracing::info!(
                pod = %pod.map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default(),
                handler = %r.runtime_handler,
                "RunPodSandbox: not a VM pod, handed to containerd"
            );
        }
        route!(self, req, run_pod_sandbox, remote, runtime)
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<api::StopPodSandboxRequest>,
    ) -> Answer<api::StopPodSandboxResponse> {
        let remote = self.sandbox_remote(&req.get_ref().pod_sandbox_id);
        route!(self, req, stop_pod_sandbox, remote, runtime)
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<api::RemovePodSandboxRequest>,
    ) -> Answer<api::RemovePodSandboxResponse> {
        let remote = self.sandbox_remote(&req.get_ref().pod_sandbox_id);
        route!(self, req, remove_pod_sandbox, remote, runtime)
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<api::PodSandboxStatusRequest>,
    ) -> Answer<api::PodSandboxStatusResponse> {
        let remote = self.sandbox_remote(&req.get_ref().pod_sandbox_id);
        route!(self, req, pod_sandbox_status, remote, runtime)
    }

    /// Served from bytes by [`crate::RuntimeService`]; this is the decoded fallback.
    async fn list_pod_sandbox(
        &self,
        req: Request<api::ListPodSandboxRequest>,
    ) -> Answer<api::ListPodSandboxResponse> {
        list_both!(
            self,
            req,
            list_pod_sandbox,
            ListPodSandboxResponse { items }
        )
    }

    async fn create_container(
        &self,
        req: Request<api::CreateContainerRequest>,
    ) -> Answer<api::CreateContainerResponse> {
        let remote = self.sandbox_remote(&req.get_ref().pod_sandbox_id);
        route!(self, req, create_container, remote, runtime)
    }

    async fn start_container(
        &self,
        req: Request<api::StartContainerRequest>,
    ) -> Answer<api::StartContainerResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, start_container, remote, runtime)
    }

    async fn stop_container(
        &self,
        req: Request<api::StopContainerRequest>,
    ) -> Answer<api::StopContainerResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, stop_container, remote, runtime)
    }

    async fn remove_container(
        &self,
        req: Request<api::RemoveContainerRequest>,
    ) -> Answer<api::RemoveContainerResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, remove_container, remote, runtime)
    }

    /// Served from bytes by [`crate::RuntimeService`]; this is the decoded fallback.
    async fn list_containers(
        &self,
        req: Request<api::ListContainersRequest>,
    ) -> Answer<api::ListContainersResponse> {
        list_both!(
            self,
            req,
            list_containers,
            ListContainersResponse { containers }
        )
    }

    async fn container_status(
        &self,
        req: Request<api::ContainerStatusRequest>,
    ) -> Answer<api::ContainerStatusResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, container_status, remote, runtime)
    }

    async fn update_container_resources(
        &self,
        req: Request<api::UpdateContainerResourcesRequest>,
    ) -> Answer<api::UpdateContainerResourcesResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, update_container_resources, remote, runtime)
    }

    async fn reopen_container_log(
        &self,
        req: Request<api::ReopenContainerLogRequest>,
    ) -> Answer<api::ReopenContainerLogResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, reopen_container_log, remote, runtime)
    }

    async fn exec_sync(&self, req: Request<api::ExecSyncRequest>) -> Answer<api::ExecSyncResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, exec_sync, remote, runtime)
    }

    async fn exec(&self, req: Request<api::ExecRequest>) -> Answer<api::ExecResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, exec, remote, runtime)
    }

    async fn attach(&self, req: Request<api::AttachRequest>) -> Answer<api::AttachResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, attach, remote, runtime)
    }

    async fn port_forward(
        &self,
        req: Request<api::PortForwardRequest>,
    ) -> Answer<api::PortForwardResponse> {
        let remote = self.sandbox_remote(&req.get_ref().pod_sandbox_id);
        route!(self, req, port_forward, remote, runtime)
    }

    async fn container_stats(
        &self,
        req: Request<api::ContainerStatsRequest>,
    ) -> Answer<api::ContainerStatsResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, container_stats, remote, runtime)
    }

    async fn list_container_stats(
        &self,
        req: Request<api::ListContainerStatsRequest>,
    ) -> Answer<api::ListContainerStatsResponse> {
        list_both!(
            self,
            req,
            list_container_stats,
            ListContainerStatsResponse { stats }
        )
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<api::PodSandboxStatsRequest>,
    ) -> Answer<api::PodSandboxStatsResponse> {
        let remote = self.sandbox_remote(&req.get_ref().pod_sandbox_id);
        route!(self, req, pod_sandbox_stats, remote, runtime)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<api::ListPodSandboxStatsRequest>,
    ) -> Answer<api::ListPodSandboxStatsResponse> {
        list_both!(
            self,
            req,
            list_pod_sandbox_stats,
            ListPodSandboxStatsResponse { stats }
        )
    }

    /// Both runtimes get the pod CIDR; containerd's failure is the answer.
    async fn update_runtime_config(
        &self,
        req: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Answer<api::UpdateRuntimeConfigResponse> {
        let theirs = req.get_ref().clone();
        self.local.update_runtime_config(req).await?;
        self.remote.changing();
        let answer = self
            .remote
            .answer(self.remote.runtime().update_runtime_config(theirs).await);
        self.remote.changing();
        answer
    }

    async fn status(&self, req: Request<api::StatusRequest>) -> Answer<api::StatusResponse> {
        let theirs = *req.get_ref();
        let (ours, remote) =
            tokio::join!(self.local.status(req), self.remote.cached(STATUS, theirs));
        let remote = remote.map_err(|s| s.message().to_owned()).and_then(|b| {
            <api::StatusResponse as prost::Message>::decode(b)
                .map_err(|e| format!("containerd's Status answer cannot be read: {e}"))
        });
        Ok(Response::new(merge::status(
            ours?.into_inner(),
            remote,
            &self.handler,
        )))
    }

    async fn checkpoint_container(
        &self,
        req: Request<api::CheckpointContainerRequest>,
    ) -> Answer<api::CheckpointContainerResponse> {
        let remote = self.container_remote(&req.get_ref().container_id);
        route!(self, req, checkpoint_container, remote, runtime)
    }

    type GetContainerEventsStream = <RuntimeServer as RuntimeService>::GetContainerEventsStream;

    /// containerd's events (virtlet has none yet: the kubelet's polling PLEG is used).
    async fn get_container_events(
        &self,
        req: Request<api::GetEventsRequest>,
    ) -> Answer<Self::GetContainerEventsStream> {
        let events = self.remote.answer(
            self.remote
                .runtime()
                .get_container_events(req.into_inner())
                .await,
        )?;
        let stream: Self::GetContainerEventsStream = Box::pin(events.into_inner());
        Ok(Response::new(stream))
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<api::ListMetricDescriptorsRequest>,
    ) -> Answer<api::ListMetricDescriptorsResponse> {
        list_both!(
            self,
            req,
            list_metric_descriptors,
            ListMetricDescriptorsResponse { descriptors }
        )
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Answer<api::ListPodSandboxMetricsResponse> {
        list_both!(
            self,
            req,
            list_pod_sandbox_metrics,
            ListPodSandboxMetricsResponse { pod_metrics }
        )
    }

    async fn runtime_config(
        &self,
        req: Request<api::RuntimeConfigRequest>,
    ) -> Answer<api::RuntimeConfigResponse> {
        self.local.runtime_config(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(handler: &str, target: Option<&str>) -> api::RunPodSandboxRequest {
        api::RunPodSandboxRequest {
            runtime_handler: handler.into(),
            config: Some(api::PodSandboxConfig {
                annotations: target
                    .map(|t| [(TARGET_RUNTIME.to_owned(), t.to_owned())].into())
                    .unwrap_or_default(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn vm_pods_by_handler_or_annotation() {
        assert!(is_vm_pod("virtlet", &pod("virtlet", None)));
        assert!(is_vm_pod("virtlet", &pod("", Some("virtlet.cloud"))));
        assert!(is_vm_pod("vm", &pod("vm", Some("containerd"))));
        assert!(!is_vm_pod("virtlet", &pod("", None)));
        assert!(!is_vm_pod("virtlet", &pod("runc", None)));
        assert!(!is_vm_pod("virtlet", &pod("", Some("containerd"))));
        assert!(
            !is_vm_pod("vm", &pod("virtlet", None)),
            "the handler is a setting"
        );
        assert!(!is_vm_pod("virtlet", &api::RunPodSandboxRequest::default()));
    }
}
