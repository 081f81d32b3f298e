//! CRI RuntimeService. `Version`, `Status` and `RuntimeConfig` are real; the pod and container
//! calls answer UNIMPLEMENTED until the VM runtime lands.

use std::future::Future;
use std::pin::Pin;

use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::{RUNTIME_API_VERSION, RUNTIME_NAME};

pub struct RuntimeServer {
    version: String,
}

impl RuntimeServer {
    /// `version` is the daemon's version, reported by `Version`.
    pub fn new(version: impl Into<String>) -> RuntimeServer {
        RuntimeServer {
            version: version.into(),
        }
    }
}

fn not_yet(call: &str) -> Status {
    tracing::debug!(call, "unimplemented CRI call");
    Status::unimplemented(format!(
        "{call} is not implemented yet by this virtlet version: it serves the image service only, \
         running VM pods comes in a later version"
    ))
}

/// Stubs in the shape `#[tonic::async_trait]` gives trait methods (the attribute does not look
/// inside macro invocations, so they are written desugared).
macro_rules! unimplemented_calls {
    ($($method:ident($req:ident) -> $resp:ident = $name:literal;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _request: Request<api::$req>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<api::$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Err(not_yet($name)) })
        }
    )*};
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>>;

fn condition(kind: &str, ready: bool, reason: &str, message: &str) -> api::RuntimeCondition {
    api::RuntimeCondition {
        r#type: kind.to_owned(),
        status: ready,
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServer {
    async fn version(
        &self,
        _request: Request<api::VersionRequest>,
    ) -> Result<Response<api::VersionResponse>, Status> {
        Ok(Response::new(api::VersionResponse {
            version: "0.1.0".to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: self.version.clone(),
            runtime_api_version: RUNTIME_API_VERSION.to_owned(),
        }))
    }

    async fn status(
        &self,
        _request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(api::StatusResponse {
            status: Some(api::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", true, "", ""),
                    condition(
                        "NetworkReady",
                        false,
                        "NetworkNotImplemented",
                        "pod networking is not implemented by this virtlet version",
                    ),
                ],
            }),
            ..api::StatusResponse::default()
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<api::RuntimeConfigRequest>,
    ) -> Result<Response<api::RuntimeConfigResponse>, Status> {
        Ok(Response::new(api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: api::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<api::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(not_yet("GetContainerEvents"))
    }

    unimplemented_calls! {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse = "RunPodSandbox";
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse = "StopPodSandbox";
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse = "RemovePodSandbox";
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse = "PodSandboxStatus";
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse = "ListPodSandbox";
        create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
        start_container(StartContainerRequest) -> StartContainerResponse = "StartContainer";
        stop_container(StopContainerRequest) -> StopContainerResponse = "StopContainer";
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse = "RemoveContainer";
        list_containers(ListContainersRequest) -> ListContainersResponse = "ListContainers";
        container_status(ContainerStatusRequest) -> ContainerStatusResponse = "ContainerStatus";
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse = "UpdateContainerResources";
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse = "ReopenContainerLog";
        exec_sync(ExecSyncRequest) -> ExecSyncResponse = "ExecSync";
        exec(ExecRequest) -> ExecResponse = "Exec";
        attach(AttachRequest) -> AttachResponse = "Attach";
        port_forward(PortForwardRequest) -> PortForwardResponse = "PortForward";
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse = "ContainerStats";
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse = "ListContainerStats";
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse = "PodSandboxStats";
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse = "ListPodSandboxStats";
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse = "UpdateRuntimeConfig";
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse = "ListMetricDescriptors";
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse = "ListPodSandboxMetrics";
    }
}
