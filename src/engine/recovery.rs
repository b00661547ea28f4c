//! Pods across daemon restarts: every change of a pod is written to the state store;
//! at start the daemon reloads the pods, re-attaches to VMs that kept running (their agent
//! channel reconnects to the same socket path) and learns from each agent what ran and
//! what exited meanwhile; pods whose VM died are marked exited and their leftovers freed.
use super::io::{ContainerIo, IoState};
use super::{mark_exited, monitor, Container, ContainerStatus, Engine, Pod, PodPhase, VmRuntime};
use crate::engine::EngineError;
use crate::image::ImageRecord;
use crate::spec::{ContainerSpec, PodSpec};
use crate::vm::agent::AgentClient;
use crate::vm::{RunningVm, VmProcess};
use hyperd_agent::protocol::{Op, ProcessSpec, Status};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a re-attach waits for qemu to reconnect its agent channel (it retries every
/// second).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub pid: u32,
    pub dir: PathBuf,
    /// Which container holds each disk slot.
    #[serde(default)]
    pub slots: Vec<Option<String>>,
}

#[derive(Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    name: String,
    image: ImageRecord,
    image_ref: String,
    process: ProcessSpec,
    stream: u32,
    status: ContainerStatus,
    #[serde(default)]
    spec: Option<ContainerSpec>,
}

#[derive(Serialize, Deserialize)]
struct PodRecord {
    id: String,
    name: String,
    spec: PodSpec,
    created: String,
    phase: PodPhase,
    vm: Option<VmRecord>,
    containers: Vec<ContainerRecord>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

impl Engine {
    /// Writes a pod's current state to the store; a request whose change cannot be
    /// stored fails with the error.
    pub fn persist(&self, pod: &Pod) -> Result<(), EngineError> {
        let vm = pod
            .vm()
            .map(|v| VmRecord {
                id: v.id.clone(),
                pid: v.pid,
                dir: v.dir.clone(),
                slots: v.slots.lock().unwrap().clone(),
            })
            .or_else(|| pod.recorded_vm.lock().unwrap().clone());
        let record = PodRecord {
            id: pod.id.clone(),
            name: pod.name.clone(),
            spec: pod.spec.clone(),
            created: pod.created.clone(),
            phase: pod.phase(),
            vm,
            labels: pod.labels.lock().unwrap().clone(),
            containers: pod
                .containers()
                .iter()
                .map(|c| ContainerRecord {
                    id: c.id.clone(),
                    name: c.name().clone(),
                    image: c.image.clone(),
                    image_ref: c.image_ref.clone(),
                    process: c.process.clone(),
                    stream: c.stream,
                    status: c.status.lock().unwrap().clone(),
                    spec: Some(c.spec.clone()),
                })
                .collect(),
        };
        self.store.put_pod(&pod.id, &record).map_err(|e| {
            tracing::error!(pod = %pod.id, "cannot record pod: {e}");
            EngineError::Internal(format!("cannot record pod {}: {e}", pod.id))
        })
    }

    /// [`Engine::persist`] where no request waits for the answer (VM events, recovery):
    /// the error is logged, and the next change records the pod again.
    pub fn persist_in_background(&self, pod: &Pod) {
        let _ = self.persist(pod);
    }

    /// Rebuilds the pods of the store (their VMs not yet re-attached).
    pub(super) fn load_pods(&self) {
        let records = match self.store.pods::<PodRecord>() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read pods: {e}");
                return;
            }
        };
        let mut pods = self.pods.lock().unwrap();
        for r in records {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            };
            let dir = self.cfg.root.join("pods").join(&r.id);
            let containers = r
                .containers
                .into_iter()
                .map(|c| {
                    let io = Arc::new(ContainerIo::new(dir.join(format!("{}.log", c.id))));
                    io.set_state(match (&c.status.exit_code, &c.status.started_at) {
                        (Some(_), _) => IoState::Exited,
                        (None, Some(_)) => IoState::Running,
                        (None, None) => IoState::NotStarted,
                    });
                    Arc::new(Container {
                        id: c.id,
                        name: c.name.into(),
                        image: c.image,
                        image_ref: c.image_ref,
                        process: c.process,
                        stream: c.stream,
                        io,
                        status: Mutex::new(c.status),
                        restarting: Default::default(),
                        stop_requested: Default::default(),
                        spec: c
                            .spec
                            .or_else(|| r.spec.containers.get(c.stream as usize - 1).cloned())
                            .unwrap_or_default(),
                    })
                })
                .collect::<Vec<_>>();
            let pod = Arc::new(Pod {
                id: r.id.clone(),
                name: r.name,
                spec: r.spec,
                created: r.created,
                dir,
                containers: containers.into(),
                phase: Mutex::new(r.phase),
                vm: Mutex::new(None),
                recorded_vm: Mutex::new(r.vm),
                labels: Mutex::new(r.labels),
                op: tokio::sync::Mutex::new(()),
                execs: Mutex::new(HashMap::new()),
                cpu_sample: Mutex::new(None),
                mem_max: Mutex::new(0.0),
                next_stream: std::sync::atomic::AtomicU32::new(1000),
                keep_vm: std::sync::atomic::AtomicBool::new(false),
                start_record: Mutex::new(None),
            });
            pods.insert(r.id, pod);
        }
        tracing::info!("{} pods in the state store", pods.len());
    }

    /// Re-attaches to the VMs of reloaded pods, or records that they died.
    pub async fn recover(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for pod in self.pods() {
            let Some(vm) = pod.recorded_vm.lock().unwrap().clone() else {
                continue;
            };
            let engine = self.clone();
            tasks.spawn(async move {
                let alive = crate::vm::process_alive(vm.pid) && super::is_our_vm(vm.pid, &vm.dir);
                let result = if alive {
                    engine.reattach(&pod, &vm).await
                } else {
                    Err("its VM process is gone".to_string())
                };
                match result {
                    Ok(()) => {
                        tracing::info!(pod = %pod.id, vm = %vm.id, "re-attached to running VM")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod.id, vm = %vm.id, "VM lost: {e}");
                        if alive {
                            crate::vm::kill_process(vm.pid);
                        }
                        for c in &pod.containers() {
                            if *c.io.state().borrow() != IoState::Exited {
                                mark_exited(&c.io, &c.status, 137);
                            }
                        }
                        pod.set_phase(
                            if pod
                                .containers()
                                .iter()
                                .any(|c| c.status.lock().unwrap().started_at.is_some())
                            {
                                pod.finished_phase()
                            } else {
                                PodPhase::Failed
                            },
                        );
                        *pod.recorded_vm.lock().unwrap() = None;
                        let _ = std::fs::rename(
                            vm.dir.join("console.log"),
                            pod.dir.join("console.log"),
                        );
                        let _ = std::fs::remove_dir_all(&vm.dir);
                        engine.persist_in_background(&pod);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn reattach(self: &Arc<Self>, pod: &Arc<Pod>, vm: &VmRecord) -> Result<(), String> {
        let mut process = VmProcess::adopt(vm.pid).map_err(|e| format!("pidfd: {e}"))?;
        let sock = vm.dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        let accepted = tokio::select! {
            r = tokio::time::timeout(RECONNECT_TIMEOUT, listener.accept()) => r,
            _ = process.wait() => return Err("the VM exited while re-attaching".into()),
        };
        drop(listener);
        let _ = std::fs::remove_file(&sock);
        let (stream, _) = accepted
            .map_err(|_| "the VM did not reconnect its agent channel".to_string())?
            .map_err(|e| e.to_string())?;
        let (agent, events) = AgentClient::new(stream);
        // A guest that may take the boot timeout to boot may take as long to answer once
        // it reconnects (hyper-vmm on emulated ring 0 runs its guest ~100x slower).
        let status = agent
            .call(Op::Status, self.cfg.boot_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let status: Status = serde_json::from_value(status.unwrap_or_default())
            .map_err(|e| format!("bad status: {e}"))?;
        let exited: HashMap<u32, i32> = status.exited.into_iter().collect();
        for c in &pod.containers() {
            if status.running.contains(&c.stream) {
                c.io.set_state(IoState::Running);
            } else if let Some(code) = exited.get(&c.stream) {
                mark_exited(&c.io, &c.status, *code);
            } else if *c.io.state().borrow() == IoState::Running {
                mark_exited(&c.io, &c.status, 255);
            }
        }
        let (gone_tx, gone_rx) = watch::channel(false);
        *pod.vm.lock().unwrap() = Some(Arc::new(VmRuntime {
            id: vm.id.clone(),
            pid: vm.pid,
            dir: vm.dir.clone(),
            agent: agent.clone(),
            gone: gone_rx,
            slots: Mutex::new(vm.slots.clone()),
            vcpus: pod.spec.resource.vcpu,
            memory_mib: pod.spec.resource.memory,
            spawned_at: std::time::Instant::now(),
        }));
        *pod.recorded_vm.lock().unwrap() = None;
        let stopped = std::fs::read_to_string(format!("/proc/{}/stat", vm.pid))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false);
        let all_done = pod
            .containers()
            .iter()
            .all(|c| *c.io.state().borrow() == IoState::Exited);
        pod.set_phase(if all_done {
            pod.finished_phase()
        } else if stopped {
            PodPhase::Paused
        } else {
            PodPhase::Running
        });
        self.persist_in_background(pod);
        let running = RunningVm {
            pid: vm.pid,
            agent: agent.clone(),
            events,
            process,
        };
        tokio::spawn(monitor(
            self.clone(),
            pod.clone(),
            running,
            gone_tx,
            vm.dir.clone(),
        ));
        if all_done {
            let _ = agent.call(Op::Shutdown, Duration::from_secs(10)).await;
        }
        Ok(())
    }
}
