//! The runtime side of the streaming server: consoles and pod connections from the manager.

use std::sync::Arc;

use virtlet_manager::Manager;
use virtlet_stream::{Backend, ConsoleIo, ExecOutcome, ExecOutput, TtyExec};

pub struct ManagerBackend(pub Arc<Manager>);

impl Backend for ManagerBackend {
    fn attach(&self, container_id: &str) -> Result<ConsoleIo, String> {
        let hub = self
            .0
            .console(container_id)
            .map_err(|e| virtlet_core::error::chain(&e))?;
        let stdin_once = self
            .0
            .container(container_id)
            .is_ok_and(|c| c.config.stdin && c.config.stdin_once);
        Ok(ConsoleIo {
            output: hub.subscribe(),
            input: hub.input(),
            stdin_once,
        })
    }

    fn dial(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tokio::net::TcpStream, String>> + Send>,
    > {
        let m = self.0.clone();
        let id = sandbox_id.to_owned();
        Box::pin(async move {
            m.dial_pod(&id, port)
                .await
                .map_err(|e| virtlet_core::error::chain(&e))
        })
    }

    fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ExecOutcome> + Send>> {
        let m = self.0.clone();
        let id = container_id.to_owned();
        Box::pin(async move {
            // Its own task: the command is waited for (and cleaned up) even when the client
            // goes away.
            tokio::spawn(async move { m.exec_sync(&id, cmd, stdin, None).await })
                .await
                .map_err(|e| format!("the exec task failed: {e}"))?
                .map(|o| ExecOutput {
                    exit_code: o.exit_code,
                    stdout: o.stdout,
                    stderr: o.stderr,
                })
                .map_err(|e| virtlet_core::error::chain(&e))
        })
    }

    fn exec_tty(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        size: (u16, u16),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TtyExec, String>> + Send>> {
        let m = self.0.clone();
        let id = container_id.to_owned();
        Box::pin(async move {
            let s = m
                .exec_tty(&id, cmd, size)
                .await
                .map_err(|e| virtlet_core::error::chain(&e))?;
            Ok(TtyExec {
                output: s.output,
                input: s.input,
                resize: s.resize,
                exit: s.exit,
            })
        })
    }
}
