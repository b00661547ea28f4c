//! The `RUN` steps of a Dockerfile: each is a container from the image built so far, run
//! to its end in a micro-VM; its output goes to the build's progress, and its changes
//! come out as the agent's tar stream (the same export as a commit).
//!
//! One VM serves the steps of a stage: a pod whose VM stays up between steps
//! ([`StepVm`]); each step is a new container in it (its image placed on a free disk
//! slot, its layer on the VM's scratch disk), removed once its changes are out. With
//! `--build-vm-per-step` every step boots its own VM instead (docs/benchmarks.md
//! measures both). The pod, its VM and its disks go however the stage ends.
use super::io::{Chunk, IoState};
use super::{Container, Engine, EngineError, Pod, PodPhase};
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

/// Label that marks a build's pods (the listing shows them while they run; a daemon
/// restart removes them).
pub const BUILD_LABEL: &str = "sh.hyper.build";

/// The micro-VM that runs a stage's steps: a pod that keeps its VM between them.
pub struct StepVm {
    pod: Arc<Pod>,
}

fn step_spec(step: &StepRun) -> ContainerSpec {
    ContainerSpec {
        name: format!("build-{}", crate::ids::random_hex(6)),
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
    }
}

impl Engine {
    /// Runs a step in the stage's VM (`vm`; booted by the first step, or per step with
    /// `--build-vm-per-step`); its changes as a tar file (the caller removes it).
    /// `output` gets the command's stdout and stderr as they come. The caller ends the VM
    /// with [`Engine::end_build_vm`].
    pub async fn run_build_step(
        self: &Arc<Self>,
        vm: &mut Option<StepVm>,
        step: StepRun,
        output: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    ) -> Result<PathBuf, StepError> {
        if self.cfg.build_vm_per_step {
            if let Some(old) = vm.take() {
                self.end_build_vm(old).await;
            }
        }
        let spec = step_spec(&step);
        let (pod, c, first) = match vm {
            None => {
                let spec = PodSpec {
                    id: format!("build-{}", crate::ids::random_hex(6)),
                    containers: vec![spec],
                    labels: [(BUILD_LABEL.to_string(), "true".to_string())].into(),
                    ..Default::default()
                };
                let pod = self.create_pod(spec).await?;
                // The VM stays up once a step exits: for its changes to be exported,
                // and for the next step.
                pod.state().keep_vm = true;
                *vm = Some(StepVm { pod: pod.clone() });
                let c = pod.containers().into_iter().next().expect("one container");
                (pod, c, true)
            }
            Some(v) => {
                let pod = v.pod.clone();
                if pod.vm().is_none() {
                    return Err(
                        EngineError::GuestFailed("the stage's build VM is gone".into()).into(),
                    );
                }
                pod.set_phase(PodPhase::Running);
                let (_, c) = self.create_container(&pod.id, spec).await?;
                (pod, c, false)
            }
        };
        let result = self.run_step_in(&pod, &c, &step, output, first).await;
        // The step's container goes (its changes are in the tar); the VM stays.
        if pod.vm().is_some() {
            if let Err(e) = self.remove_container(&c.id).await {
                tracing::warn!(pod = %pod.id, "removing a build step's container: {e}");
            }
        }
        result
    }

    /// Ends a stage's build VM: its pod, VM and disks go.
    pub async fn end_build_vm(&self, vm: StepVm) {
        if let Err(e) = self.remove_pod(&vm.pod.id).await {
            tracing::warn!(pod = %vm.pod.id, "removing a build's pod: {e}");
        }
    }

    async fn run_step_in(
        self: &Arc<Self>,
        pod: &Arc<Pod>,
        c: &Arc<Container>,
        step: &StepRun,
        output: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
        first: bool,
    ) -> Result<PathBuf, StepError> {
        let mut follower = c.io.attach(false);
        let mut state = c.io.state();
        if first {
            self.start_pod(&pod.id, None).await?;
        } else {
            self.start_container(&c.id).await?;
        }
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
        Ok(self.export_diff(pod, c, &vm, false).await?)
    }
}
