//! Containers on their own: added to a pod (also a running one, through a disk slot),
//! started, stopped, removed and renamed.
use super::io::IoState;
use super::{
    mark_exited, process_for, Container, Engine, EngineError, Pod, PodPhase, AGENT_TIMEOUT,
};
use crate::spec::{valid_name, ContainerSpec};
use hyperd_agent::protocol::Op;
use std::sync::Arc;
use std::time::Duration;

/// Streams up to this number are containers'; execs count from here.
const FIRST_EXEC_STREAM: u32 = 1000;

impl Engine {
    fn name_taken(&self, name: &str) -> bool {
        self.pods()
            .iter()
            .any(|p| p.containers().iter().any(|c| c.name() == name))
    }

    /// `POST /container/create`: a new container in a pod; placed in the pod's VM at once
    /// when the pod runs.
    pub async fn create_container(
        &self,
        pod_key: &str,
        spec: ContainerSpec,
    ) -> Result<(Arc<Pod>, Arc<Container>), EngineError> {
        spec.validate()?;
        let pod = self.pod(pod_key)?;
        let image = self.images.resolve(&spec.image)?;
        let process = process_for(&spec, &image)?;
        let _op = pod.op.lock().await;
        let stream = pod.containers().iter().map(|c| c.stream).max().unwrap_or(0) + 1;
        if stream >= FIRST_EXEC_STREAM {
            return Err(EngineError::WrongState(format!(
                "pod {} has too many containers",
                pod.id
            )));
        }
        let name = if spec.name.is_empty() {
            let base = spec
                .image
                .rsplit('/')
                .next()
                .unwrap_or("c")
                .split([':', '@'])
                .next()
                .unwrap_or("c")
                .to_string();
            format!("{}-{base}-{}", pod.name, stream - 1)
        } else {
            spec.name.clone()
        };
        if self.name_taken(&name) {
            return Err(EngineError::WrongState(format!(
                "a container named {name} already exists"
            )));
        }
        let id = crate::ids::container_id();
        let c = Container::new(
            id.clone(),
            name,
            image,
            spec,
            process,
            stream,
            self.container_io(&pod.dir, &id, &pod.spec),
        );
        if let (PodPhase::Running, Some(vm)) = (pod.phase(), pod.vm()) {
            self.place(&pod, &vm, &c).await?;
        }
        pod.state().containers.push(c.clone());
        self.persist(&pod).await?;
        drop(_op);
        Ok((pod, c))
    }

    /// Starts a container that is not running, in its running pod.
    pub async fn start_container(&self, key: &str) -> Result<Arc<Container>, EngineError> {
        let (pod, c) = self.container(key)?;
        let vm = match (pod.phase(), pod.vm()) {
            (PodPhase::Running, Some(vm)) => vm,
            _ => {
                return Err(EngineError::WrongState(format!(
                    "pod {} is not running; start the pod",
                    pod.id
                )))
            }
        };
        if *c.io.state().borrow() == IoState::Running {
            return Err(EngineError::WrongState(format!(
                "container {} is already running",
                c.name()
            )));
        }
        let placed = vm
            .slots
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.as_deref() == Some(c.id.as_str()));
        if !placed {
            self.place(&pod, &vm, &c).await?;
        }
        c.stop_requested
            .store(false, std::sync::atomic::Ordering::SeqCst);
        {
            let mut st = c.status.lock().unwrap();
            st.exit_code = None;
            st.finished_at = None;
            st.started_at = Some(super::io::chrono_now());
        }
        c.io.set_state(IoState::Running);
        let mut process = c.process.clone();
        process.stdin |= c.io.stdin_wanted.load(std::sync::atomic::Ordering::SeqCst);
        let op = Op::StartProcess {
            container: c.id.clone(),
            stream: c.stream,
            process,
        };
        if let Err(e) = vm.agent.call(op, AGENT_TIMEOUT).await {
            mark_exited(&c.io, &c.status, 127);
            self.persist_in_background(&pod);
            return Err(EngineError::Invalid(format!("container {}: {e}", c.name())));
        }
        self.persist(&pod).await?;
        Ok(c)
    }

    /// Stops a container: its stop signal (the spec's, the image's `STOPSIGNAL`, else
    /// SIGTERM), then SIGKILL after `grace`. A container that is not running is left as
    /// it is. The exit code is the process's own.
    pub async fn stop_container(
        &self,
        key: &str,
        grace: Duration,
    ) -> Result<Arc<Container>, EngineError> {
        let (pod, c) = self.container(key)?;
        if *c.io.state().borrow() != IoState::Running {
            return Ok(c);
        }
        let Some(vm) = pod.vm() else { return Ok(c) };
        // No restart for a container stopped on purpose.
        c.stop_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut state = c.io.state();
        let first = super::exec::parse_signal(c.stop_signal()).unwrap_or(libc::SIGTERM);
        for (sig, wait) in [(first, grace), (libc::SIGKILL, Duration::from_secs(20))] {
            let _ = vm
                .agent
                .call(
                    Op::Signal {
                        stream: c.stream,
                        signal: sig,
                    },
                    AGENT_TIMEOUT,
                )
                .await;
            if tokio::time::timeout(wait, state.wait_for(|s| *s == IoState::Exited))
                .await
                .is_ok()
            {
                return Ok(c);
            }
        }
        Err(EngineError::GuestFailed(format!(
            "container {} did not stop",
            c.name()
        )))
    }

    /// Removes a container that is not running from its pod.
    pub async fn remove_container(&self, key: &str) -> Result<(), EngineError> {
        let (pod, c) = self.container(key)?;
        let _op = pod.op.lock().await;
        if *c.io.state().borrow() == IoState::Running {
            return Err(EngineError::WrongState(format!(
                "container {} is running; stop it first",
                c.name()
            )));
        }
        if let Some(vm) = pod.vm() {
            self.unplace(&vm, &c).await;
        }
        pod.state().containers.retain(|x| x.id != c.id);
        c.io.remove_log().await;
        self.persist(&pod).await?;
        Ok(())
    }

    pub async fn rename_container(
        &self,
        key: &str,
        new_name: &str,
    ) -> Result<Arc<Container>, EngineError> {
        if !valid_name(new_name) {
            return Err(EngineError::Invalid(format!(
                "invalid container name {new_name:?}"
            )));
        }
        let (pod, c) = self.container(key)?;
        if c.name() != new_name && self.name_taken(new_name) {
            return Err(EngineError::WrongState(format!(
                "a container named {new_name} already exists"
            )));
        }
        c.set_name(new_name.to_string());
        self.persist(&pod).await?;
        Ok(c)
    }
}
