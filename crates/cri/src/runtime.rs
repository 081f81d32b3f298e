//! CRI RuntimeService: requests become manager calls; records become CRI messages. ExecSync,
//! Exec, Attach and PortForward are in [`crate::streaming`]: commands run through the QEMU
//! guest agent, and the streaming calls answer with a URL of `virtlet_stream`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};
use virtlet_manager::{Manager, SandboxRecord, now_ns};
use virtlet_vm::VmStats;

use crate::convert::{
    condition, container, container_stats, container_status, json_info, pod_sandbox,
    sandbox_status, u64v,
};
use crate::status::manager_error_status;
use crate::{RUNTIME_API_VERSION, RUNTIME_NAME};

pub struct RuntimeServer {
    version: String,
    pub(crate) manager: Arc<Manager>,
    /// Hands out attach and port-forward URLs.
    streams: Option<Arc<virtlet_stream::StreamServer>>,
    /// How VMs run here (`KVM` or `TCG ...`), for Status's verbose info.
    accel: String,
    containers_list: crate::listing::ListCache,
    sandboxes_list: crate::listing::ListCache,
}

impl RuntimeServer {
    pub fn new(
        version: impl Into<String>,
        manager: Arc<Manager>,
        accel: impl Into<String>,
    ) -> RuntimeServer {
        RuntimeServer {
            version: version.into(),
            manager,
            streams: None,
            accel: accel.into(),
            containers_list: Default::default(),
            sandboxes_list: Default::default(),
        }
    }

    /// Serves Attach and PortForward through `streams`.
    pub fn with_streaming(mut self, streams: Arc<virtlet_stream::StreamServer>) -> RuntimeServer {
        self.streams = Some(streams);
        self
    }

    /// The encoded `ListContainersResponse` for `filter` (see [`crate::listing`]).
    pub fn list_containers_encoded(&self, filter: Option<&api::ContainerFilter>) -> bytes::Bytes {
        self.containers_list.answer(
            filter.is_none_or(|f| *f == api::ContainerFilter::default()),
            || self.manager.containers_generation(),
            |w| self.manager.for_each_container(filter, |c| w.container(c)),
        )
    }

    /// The encoded `ListPodSandboxResponse` for `filter` (see [`crate::listing`]).
    pub fn list_pod_sandbox_encoded(&self, filter: Option<&api::PodSandboxFilter>) -> bytes::Bytes {
        self.sandboxes_list.answer(
            filter.is_none_or(|f| *f == api::PodSandboxFilter::default()),
            || self.manager.sandboxes_generation(),
            |w| self.manager.for_each_sandbox(filter, |s| w.sandbox(s)),
        )
    }

    pub(crate) fn streams(&self) -> Result<&virtlet_stream::StreamServer, Status> {
        self.streams
            .as_deref()
            .ok_or_else(|| Status::unavailable("the streaming server is not running"))
    }
}

/// Runs a call that changes state to its end in a task of its own: a client that gives up
/// (crictl's 2 s default timeout, a cancelled context) must not stop it halfway, with a domain
/// defined and no record of it. The answer is dropped if nobody waits for it.
pub(crate) async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .map_err(|e| Status::internal(format!("the call's task failed: {e}")))
}

pub(crate) fn not_yet(call: &str, why: &str) -> Status {
    tracing::debug!(call, "unimplemented CRI call");
    Status::unimplemented(format!(
        "{call} is not implemented by this virtlet version: {why}"
    ))
}

/// Stubs in the shape `#[tonic::async_trait]` gives trait methods (the attribute does not look
/// inside macro invocations, so they are written desugared).
macro_rules! unimplemented_calls {
    ($($method:ident($req:ident) -> $resp:ident = $name:literal, $why:literal;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _request: Request<api::$req>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<api::$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Err(not_yet($name, $why)) })
        }
    )*};
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>>;

impl RuntimeServer {
    async fn sandbox_stats(&self, s: &SandboxRecord) -> api::PodSandboxStats {
        let mut containers = Vec::new();
        let mut total = VmStats::default();
        for c in self.manager.list_containers(Some(&api::ContainerFilter {
            pod_sandbox_id: s.id.clone(),
            ..Default::default()
        })) {
            if let Ok((rec, st)) = self.manager.stats(&c.id).await {
                total.cpu_ns += st.cpu_ns;
                total.memory_bytes += st.memory_bytes;
                total.disk_bytes += st.disk_bytes;
                containers.push(container_stats(&rec, &st));
            }
        }
        let ts = now_ns();
        api::PodSandboxStats {
            attributes: Some(api::PodSandboxAttributes {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
            }),
            linux: Some(api::LinuxPodSandboxStats {
                cpu: Some(api::CpuUsage {
                    timestamp: ts,
                    usage_core_nano_seconds: u64v(total.cpu_ns),
                    ..Default::default()
                }),
                memory: Some(api::MemoryUsage {
                    timestamp: ts,
                    working_set_bytes: u64v(total.memory_bytes),
                    usage_bytes: u64v(total.memory_bytes),
                    ..Default::default()
                }),
                network: None,
                process: None,
                containers,
            }),
            windows: None,
        }
    }
}

pub(crate) fn short(id: &str) -> &str {
    &id[..13.min(id.len())]
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
        request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(api::StatusResponse {
            status: Some(api::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", true, "", ""),
                    match self.manager.network_ready() {
                        Ok(()) => condition("NetworkReady", true, "", ""),
                        Err(why) => condition("NetworkReady", false, "NetworkPluginNotReady", &why),
                    },
                ],
            }),
            info: if request.into_inner().verbose {
                json_info(serde_json::json!({
                    "accelerator": self.accel,
                    "dhcpResponders": self.manager.dhcp_responders(),
                }))
            } else {
                HashMap::new()
            },
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

    async fn update_runtime_config(
        &self,
        _request: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<api::UpdateRuntimeConfigResponse>, Status> {
        Ok(Response::new(api::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<api::RunPodSandboxRequest>,
    ) -> Result<Response<api::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is missing"))?;
        let span = info_span!("RunPodSandbox", pod = %config.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default());
        let m = self.manager.clone();
        let id = to_completion(
            async move { m.run_pod_sandbox(config, req.runtime_handler).await }.instrument(span),
        )
        .await?
        .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<api::StopPodSandboxRequest>,
    ) -> Result<Response<api::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let m = self.manager.clone();
        let span = info_span!("StopPodSandbox", id = %short(&id));
        to_completion(async move { m.stop_pod_sandbox(&id).await }.instrument(span))
            .await?
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<api::RemovePodSandboxRequest>,
    ) -> Result<Response<api::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let m = self.manager.clone();
        let span = info_span!("RemovePodSandbox", id = %short(&id));
        to_completion(async move { m.remove_pod_sandbox(&id).await }.instrument(span))
            .await?
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<api::PodSandboxStatusRequest>,
    ) -> Result<Response<api::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let s = self
            .manager
            .sandbox(&req.pod_sandbox_id)
            .map_err(|e| manager_error_status(&e))?;
        let containers = self.manager.map_containers(
            Some(&api::ContainerFilter {
                pod_sandbox_id: s.id.clone(),
                ..Default::default()
            }),
            container_status,
        );
        Ok(Response::new(api::PodSandboxStatusResponse {
            status: Some(sandbox_status(&s)),
            info: if req.verbose {
                json_info(serde_json::json!({
                    "netns": s.netns,
                    "rootDisks": s.root_disks.iter().map(|r| serde_json::json!({
                        "container": r.container_name,
                        "path": r.path,
                    })).collect::<Vec<_>>(),
                    "networkOwner": s.network_owner,
                    "state": format!("{:?}", s.state),
                }))
            } else {
                HashMap::new()
            },
            containers_statuses: containers,
            timestamp: now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<api::ListPodSandboxRequest>,
    ) -> Result<Response<api::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        let items = self.manager.map_sandboxes(filter.as_ref(), pod_sandbox);
        Ok(Response::new(api::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<api::CreateContainerRequest>,
    ) -> Result<Response<api::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is missing"))?;
        let span = info_span!("CreateContainer", sandbox = %short(&req.pod_sandbox_id));
        let m = self.manager.clone();
        let id = to_completion(
            async move {
                m.create_container(&req.pod_sandbox_id, config, req.sandbox_config)
                    .await
            }
            .instrument(span),
        )
        .await?
        .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<api::StartContainerRequest>,
    ) -> Result<Response<api::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let m = self.manager.clone();
        let span = info_span!("StartContainer", id = %short(&id));
        to_completion(async move { m.start_container(&id).await }.instrument(span))
            .await?
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::StartContainerResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<api::ExecSyncRequest>,
    ) -> Result<Response<api::ExecSyncResponse>, Status> {
        self.exec_sync_call(request).await
    }

    async fn stop_container(
        &self,
        request: Request<api::StopContainerRequest>,
    ) -> Result<Response<api::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let m = self.manager.clone();
        let span =
            info_span!("StopContainer", id = %short(&req.container_id), timeout = req.timeout);
        to_completion(
            async move { m.stop_container(&req.container_id, req.timeout).await }.instrument(span),
        )
        .await?
        .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<api::RemoveContainerRequest>,
    ) -> Result<Response<api::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let m = self.manager.clone();
        let span = info_span!("RemoveContainer", id = %short(&id));
        to_completion(async move { m.remove_container(&id).await }.instrument(span))
            .await?
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<api::ListContainersRequest>,
    ) -> Result<Response<api::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        let containers = self.manager.map_containers(filter.as_ref(), container);
        Ok(Response::new(api::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<api::ContainerStatusRequest>,
    ) -> Result<Response<api::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let c = self
            .manager
            .container(&req.container_id)
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::ContainerStatusResponse {
            status: Some(container_status(&c)),
            info: if req.verbose {
                json_info(serde_json::json!({
                    "domain": c.domain_name,
                    "consoleSocket": c.console_socket,
                    "state": format!("{:?}", c.state),
                }))
            } else {
                HashMap::new()
            },
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<api::UpdateContainerResourcesRequest>,
    ) -> Result<Response<api::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        self.manager
            .update_resources(&req.container_id, req.linux)
            .instrument(info_span!("UpdateContainerResources", id = %short(&req.container_id)))
            .await
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<api::ReopenContainerLogRequest>,
    ) -> Result<Response<api::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        self.manager
            .reopen_log(&id)
            .await
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::ReopenContainerLogResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<api::ContainerStatsRequest>,
    ) -> Result<Response<api::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let (rec, stats) = self
            .manager
            .stats(&id)
            .await
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::ContainerStatsResponse {
            stats: Some(container_stats(&rec, &stats)),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<api::ListContainerStatsRequest>,
    ) -> Result<Response<api::ListContainerStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = api::ContainerFilter {
            id: f.id,
            pod_sandbox_id: f.pod_sandbox_id,
            label_selector: f.label_selector,
            state: None,
        };
        let mut stats = Vec::new();
        for c in self.manager.list_containers(Some(&filter)) {
            if let Ok((rec, s)) = self.manager.stats(&c.id).await {
                stats.push(container_stats(&rec, &s));
            }
        }
        Ok(Response::new(api::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<api::PodSandboxStatsRequest>,
    ) -> Result<Response<api::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let s = self
            .manager
            .sandbox(&id)
            .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::PodSandboxStatsResponse {
            stats: Some(self.sandbox_stats(&s).await),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<api::ListPodSandboxStatsRequest>,
    ) -> Result<Response<api::ListPodSandboxStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = api::PodSandboxFilter {
            id: f.id,
            label_selector: f.label_selector,
            state: None,
        };
        let mut stats = Vec::new();
        for s in self.manager.list_sandboxes(Some(&filter)) {
            stats.push(self.sandbox_stats(&s).await);
        }
        Ok(Response::new(api::ListPodSandboxStatsResponse { stats }))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<api::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(not_yet(
            "GetContainerEvents",
            "the kubelet's generic (polling) PLEG works with virtlet",
        ))
    }

    #[tracing::instrument(name = "Attach", skip_all, fields(id = %short(&request.get_ref().container_id)))]
    async fn attach(
        &self,
        request: Request<api::AttachRequest>,
    ) -> Result<Response<api::AttachResponse>, Status> {
        self.attach_call(request).await
    }

    #[tracing::instrument(name = "Exec", skip_all, fields(id = %short(&request.get_ref().container_id)))]
    async fn exec(
        &self,
        request: Request<api::ExecRequest>,
    ) -> Result<Response<api::ExecResponse>, Status> {
        self.exec_call(request).await
    }

    #[tracing::instrument(name = "PortForward", skip_all, fields(id = %short(&request.get_ref().pod_sandbox_id)))]
    async fn port_forward(
        &self,
        request: Request<api::PortForwardRequest>,
    ) -> Result<Response<api::PortForwardResponse>, Status> {
        self.port_forward_call(request).await
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<api::ListMetricDescriptorsRequest>,
    ) -> Result<Response<api::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(api::ListMetricDescriptorsResponse {
            descriptors: crate::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<api::ListPodSandboxMetricsResponse>, Status> {
        let mut pod_metrics = Vec::new();
        for s in self.manager.list_sandboxes(None) {
            let meta = s.config.metadata.clone().unwrap_or_default();
            let mut containers = Vec::new();
            for c in self.manager.list_containers(Some(&api::ContainerFilter {
                pod_sandbox_id: s.id.clone(),
                ..Default::default()
            })) {
                let Ok(Some((rec, vm, fs))) = self.manager.sample(&c.id).await else {
                    continue;
                };
                let resources = rec
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.resources.clone())
                    .unwrap_or_default();
                let sample = crate::metrics::Sample {
                    container: rec
                        .config
                        .metadata
                        .as_ref()
                        .map(|m| m.name.clone())
                        .unwrap_or_default(),
                    id: rec.id.clone(),
                    image: rec
                        .config
                        .image
                        .as_ref()
                        .map(|i| i.image.clone())
                        .unwrap_or_default(),
                    domain: rec.domain_name.clone(),
                    namespace: meta.namespace.clone(),
                    pod: meta.name.clone(),
                    vm,
                    root_disk: s
                        .root_disk_of(
                            rec.config
                                .metadata
                                .as_ref()
                                .map(|m| m.name.as_str())
                                .unwrap_or(""),
                        )
                        .map(|r| r.path.display().to_string())
                        .unwrap_or_default(),
                    fs_capacity_bytes: fs.capacity_bytes,
                    fs_inodes_total: fs.inodes_total,
                    fs_inodes_free: fs.inodes_free,
                    cpu_period: resources.cpu_period,
                    cpu_shares: resources.cpu_shares,
                    memory_limit_bytes: resources.memory_limit_in_bytes,
                    memory_swap_limit_bytes: resources.memory_swap_limit_in_bytes,
                    started_at_ns: rec.started_at_ns,
                    now_ns: now_ns(),
                };
                containers.push(api::ContainerMetrics {
                    container_id: rec.id.clone(),
                    metrics: crate::metrics::container_metrics(&sample),
                });
            }
            pod_metrics.push(api::PodSandboxMetrics {
                pod_sandbox_id: s.id.clone(),
                metrics: Vec::new(),
                container_metrics: containers,
            });
        }
        Ok(Response::new(api::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    unimplemented_calls! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer", "VM checkpoints are not supported";
    }
}
