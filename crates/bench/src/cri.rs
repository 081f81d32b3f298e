//! The CRI client the benchmarks drive virtlet with.

use super::*;

#[derive(Clone)]
pub(crate) struct Cri {
    pub(crate) rt: RuntimeServiceClient<Channel>,
    pub(crate) img: ImageServiceClient<Channel>,
}

pub(crate) fn pod_config(name: &str, log_dir: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("bench-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    }
}

pub(crate) fn container_config(image: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "vm".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        log_path: "vm.log".into(),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Cri {
    /// ExecSync of `true`, as an exec probe runs it.
    pub(crate) async fn exec_true(&mut self, container: &str) -> Result<()> {
        let r = self
            .rt
            .exec_sync(api::ExecSyncRequest {
                container_id: container.into(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        anyhow::ensure!(r.exit_code == 0, "true exited {}", r.exit_code);
        Ok(())
    }

    pub(crate) async fn pod(
        &mut self,
        name: &str,
        image: &str,
        log_dir: &Path,
        start: bool,
    ) -> Result<(String, String)> {
        self.pod_with(name, container_config(image), log_dir, start)
            .await
    }

    /// A pod with `container` as its one container.
    pub(crate) async fn pod_with(
        &mut self,
        name: &str,
        container: api::ContainerConfig,
        log_dir: &Path,
        start: bool,
    ) -> Result<(String, String)> {
        let config = pod_config(name, log_dir);
        let pod = self
            .rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let c = self
            .rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        if start {
            self.rt
                .start_container(api::StartContainerRequest {
                    container_id: c.clone(),
                })
                .await?;
        }
        Ok((pod, c))
    }

    pub(crate) async fn remove_pod(&mut self, pod: &str) -> Result<()> {
        self.rt
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await?;
        self.rt
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await?;
        Ok(())
    }

    /// Whether a sandbox of the pod named `name` exists.
    pub(crate) async fn has_pod(&mut self, name: &str) -> Result<bool> {
        let pods = self
            .rt
            .list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        Ok(pods
            .iter()
            .any(|p| p.metadata.as_ref().is_some_and(|m| m.name == name)))
    }

    /// The container of the pod named `name`.
    pub(crate) async fn container_of_pod(&mut self, name: &str) -> Result<String> {
        let pods = self
            .rt
            .list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        let pod = pods
            .iter()
            .find(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
            .with_context(|| format!("no pod {name}"))?;
        let cs = self
            .rt
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        Ok(cs
            .first()
            .with_context(|| format!("pod {name} has no container"))?
            .id
            .clone())
    }

    pub(crate) async fn domain_of(&mut self, container: &str) -> Result<String> {
        let info = self
            .rt
            .container_status(api::ContainerStatusRequest {
                container_id: container.into(),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
        let v: serde_json::Value =
            serde_json::from_str(info.get("info").context("no verbose info")?)?;
        Ok(v["domain"]
            .as_str()
            .context("no domain in info")?
            .to_owned())
    }
}
