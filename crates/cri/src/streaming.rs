//! The calls that run commands in a VM or hand out streaming URLs: ExecSync, Exec, Attach and
//! PortForward (the sessions themselves are `virtlet-stream`'s).

use k8s_cri::v1 as api;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use crate::runtime::{RuntimeServer, short, to_completion};
use crate::status::manager_error_status;

impl RuntimeServer {
    pub(crate) async fn exec_sync_call(
        &self,
        request: Request<api::ExecSyncRequest>,
    ) -> Result<Response<api::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let m = self.manager.clone();
        let span = info_span!("ExecSync", id = %short(&req.container_id), cmd = ?req.cmd, timeout = req.timeout);
        let timeout =
            (req.timeout > 0).then(|| std::time::Duration::from_secs(req.timeout.unsigned_abs()));
        // Run to completion even when the caller gives up: a timed-out command is killed.
        let out = to_completion(
            async move { m.exec_sync(&req.container_id, req.cmd, None, timeout).await }
                .instrument(span),
        )
        .await?
        .map_err(|e| manager_error_status(&e))?;
        Ok(Response::new(api::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    pub(crate) async fn exec_call(
        &self,
        request: Request<api::ExecRequest>,
    ) -> Result<Response<api::ExecResponse>, Status> {
        let r = request.into_inner();
        if r.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id is empty"));
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(Status::invalid_argument(
                "exec needs at least one of stdin, stdout and stderr",
            ));
        }
        self.manager
            .exec_check(&r.container_id, &r.cmd)
            .map_err(|e| manager_error_status(&e))?;
        // A terminal has one output: with a tty, stderr is part of stdout.
        let url = self.streams()?.url(virtlet_stream::Request::Exec {
            container_id: r.container_id,
            cmd: r.cmd,
            stdin: r.stdin,
            stdout: r.stdout || (r.tty && r.stderr),
            stderr: r.stderr && !r.tty,
            tty: r.tty,
        });
        Ok(Response::new(api::ExecResponse { url }))
    }

    pub(crate) async fn attach_call(
        &self,
        request: Request<api::AttachRequest>,
    ) -> Result<Response<api::AttachResponse>, Status> {
        let r = request.into_inner();
        if r.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id is empty"));
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(Status::invalid_argument(
                "attach needs at least one of stdin, stdout and stderr",
            ));
        }
        self.manager
            .console(&r.container_id)
            .map_err(|e| manager_error_status(&e))?;
        let url = self.streams()?.url(virtlet_stream::Request::Attach {
            container_id: r.container_id,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
            tty: r.tty,
        });
        Ok(Response::new(api::AttachResponse { url }))
    }

    pub(crate) async fn port_forward_call(
        &self,
        request: Request<api::PortForwardRequest>,
    ) -> Result<Response<api::PortForwardResponse>, Status> {
        let r = request.into_inner();
        if r.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("pod_sandbox_id is empty"));
        }
        let mut ports = Vec::new();
        for (i, p) in r.port.iter().enumerate() {
            match u16::try_from(*p) {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "port[{i}] {p} is not a port (1-65535)"
                    )));
                }
            }
        }
        let sandbox = self
            .manager
            .sandbox(&r.pod_sandbox_id)
            .map_err(|e| manager_error_status(&e))?;
        if sandbox.state != virtlet_core::SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {:?} is not ready",
                r.pod_sandbox_id
            )));
        }
        let url = self.streams()?.url(virtlet_stream::Request::PortForward {
            sandbox_id: r.pod_sandbox_id,
            ports,
        });
        Ok(Response::new(api::PortForwardResponse { url }))
    }
}
