//! One `RUN` of a Dockerfile: a pod of one container from the image built so far, run to
//! its end in its own micro-VM; its output goes to the build's progress, and its changes
//! come out as the agent's tar stream (the same export as a commit). The pod, its VM and
//! its disks go however the step ends.
use super::io::{Chunk, IoState};
use super::{Engine, EngineError};
use hyperd_api::spec::{ContainerSpec, EnvVar, PodSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a `RUN` runs and how.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// The image the step runs in (an id).
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: String,
}

/// How a `RUN` ended badly.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("The command '{command}' returned a non-zero code: {code}")]
    Failed { command: String, code: i32 },
    #[error("{0}")]
    Engine(#[from] EngineError),
}

/// Longest a `RUN` may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Label that marks a build's pods (the listing shows them while they run).
pub const BUILD_LABEL: &str = "sh.hyper.build";

impl Engine {
    /// Runs a step; its changes as a tar file (the caller removes it). `output` gets the
    /// command's stdout and stderr as they come.
    pub async fn run_build_step(
        self: &Arc<Self>,
        step: StepRun,
        output: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    ) -> Result<PathBuf, StepError> {
        let name = format!("build-{}", crate::ids::random_hex(6));
        let spec = PodSpec {
            id: name.clone(),
            containers: vec![ContainerSpec {
                name: name.clone(),
                image: step.image.clone(),
                entrypoint: step.argv.clone(),
                envs: step
                    .env
                    .iter()
                    .map(|(k, v)| EnvVar {
                        env: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                workdir: step.workdir.clone(),
                user: step.user.clone(),
                restart_policy: "never".into(),
                ..Default::default()
            }],
            labels: [(BUILD_LABEL.to_string(), "true".to_string())].into(),
            ..Default::default()
        };
        let pod = self.create_pod(spec).await?;
        // The VM stays up once the command exits, for its changes to be exported.
        pod.state().keep_vm = true;
        let result = self.run_step_in(&pod, &step, output).await;
        if let Err(e) = self.remove_pod(&pod.id).await {
            tracing::warn!(pod = %pod.id, "removing a build step's pod: {e}");
        }
        result
    }

    async fn run_step_in(
        self: &Arc<Self>,
        pod: &Arc<super::Pod>,
        step: &StepRun,
        output: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    ) -> Result<PathBuf, StepError> {
        let c = pod.containers().into_iter().next().expect("one container");
        let mut follower = c.io.attach(false);
        let mut state = c.io.state();
        self.start_pod(&pod.id, None).await?;
        let run = async {
            if let Some(f) = follower.as_mut() {
                while let Some(chunk) = f.recv().await {
                    let (Chunk::Stdout(b) | Chunk::Stderr(b)) = chunk;
                    let _ = output.send(b);
                }
            }
            let _ = state.wait_for(|s| *s == IoState::Exited).await;
        };
        tokio::time::timeout(STEP_TIMEOUT, run).await.map_err(|_| {
            EngineError::GuestFailed(format!("the step ran longer than {STEP_TIMEOUT:?}"))
        })?;
        let code = c.status.lock().unwrap().exit_code.unwrap_or(-1);
        if code != 0 {
            return Err(StepError::Failed {
                command: step.argv.join(" "),
                code,
            });
        }
        let vm = pod.vm().ok_or_else(|| {
            EngineError::GuestFailed("the step's VM ended before its changes were read".into())
        })?;
        Ok(self.export_diff(pod, &c, &vm).await?)
    }
}
