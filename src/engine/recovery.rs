//! Pods across daemon restarts: every change of a pod is written to the state store;
//! at start the daemon reloads the pods, re-attaches to VMs that kept running (their agent
//! channel reconnects to the same socket path) and learns from each agent what ran and
//! what exited meanwhile; pods whose VM died are marked exited and their leftovers freed.
use super::io::IoState;
use super::{
    mark_exited, monitor, Container, ContainerStatus, Engine, Pod, PodPhase, PodState, VmRuntime,
};
use crate::engine::EngineError;
use crate::image::ImageRecord;
use crate::spec::{ContainerSpec, PodSpec};
use crate::vm::agent::AgentClient;
use crate::vm::{RunningVm, VmHandle, VmStatus};
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

/// The version of the pod records this daemon writes. Version 1 is the first release's
/// (records without a `version` field); each release that changes a record's meaning
/// bumps it and reads every older version it can.
pub(super) const RECORD_VERSION: u32 = 2;

fn record_v1() -> u32 {
    1
}

/// What a reloaded record's version means for this daemon.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RecordCheck {
    Current,
    /// Written by an older release: read, and written back in the current version.
    Older(u32),
    /// Written by a newer release: left untouched, with its pod's files and VM.
    Newer(u32),
}

pub(super) fn check_record_version(v: u32) -> RecordCheck {
    match v.cmp(&RECORD_VERSION) {
        std::cmp::Ordering::Equal => RecordCheck::Current,
        std::cmp::Ordering::Less => RecordCheck::Older(v),
        std::cmp::Ordering::Greater => RecordCheck::Newer(v),
    }
}

/// The agent protocol versions this daemon can drive in an adopted VM.
pub(super) const AGENT_PROTOCOLS: std::ops::RangeInclusive<u32> =
    1..=hyperd_agent::protocol::VERSION;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub pid: u32,
    pub dir: PathBuf,
    /// Which container holds each disk slot.
    #[serde(default)]
    pub slots: Vec<Option<String>>,
    /// The agent protocol the VM's agent spoke when it booted.
    #[serde(default = "record_v1")]
    pub agent_protocol: u32,
    /// Its network and published ports (records before networking: none).
    #[serde(default)]
    pub net: crate::vm::net::VmNet,
    /// Host ports added while it ran, relayed by the daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relayed: Vec<crate::vm::net::Forward>,
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
    /// [`RECORD_VERSION`] when written; absent in the first release's records.
    #[serde(default = "record_v1")]
    version: u32,
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
    /// Writes a pod's current state to the store, on the store's writer thread; a request
    /// whose change cannot be stored fails with the error.
    pub async fn persist(&self, pod: &Pod) -> Result<(), EngineError> {
        let done = {
            // Snapshots reach the writer in the order they were taken.
            let _order = self.record_order.lock().unwrap();
            self.writer.queue(&pod.id, &self.record_of(pod))
        };
        done.await.map_err(|e| {
            tracing::error!(pod = %pod.id, "cannot record pod: {e}");
            EngineError::Store(e)
        })
    }

    /// [`Engine::persist`] where no request waits for the answer (VM events, recovery):
    /// the error is logged, and the next change records the pod again.
    pub fn persist_in_background(&self, pod: &Pod) {
        let _order = self.record_order.lock().unwrap();
        self.writer.put_in_background(&pod.id, &self.record_of(pod));
    }

    /// Waits until every pod record queued so far is on disk (at shutdown).
    pub async fn flush_records(&self) {
        self.writer.flush().await;
    }

    fn record_of(&self, pod: &Pod) -> PodRecord {
        let vm = pod
            .vm()
            .map(|v| VmRecord {
                id: v.id.clone(),
                pid: v.handle.pid(),
                dir: v.dir.clone(),
                slots: v.slots.lock().unwrap().clone(),
                agent_protocol: v.agent_protocol,
                net: v.net.clone(),
                relayed: v
                    .relayed
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|r| r.forward.clone())
                    .collect(),
            })
            .or_else(|| pod.state().recorded_vm.clone());
        PodRecord {
            version: RECORD_VERSION,
            id: pod.id.clone(),
            name: pod.name.clone(),
            spec: pod.spec.clone(),
            created: pod.created.clone(),
            phase: pod.phase(),
            vm,
            labels: pod.labels(),
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
        }
    }

    /// Rebuilds the pods of the store (their VMs not yet re-attached).
    pub(super) fn load_pods(&self) {
        let records = match self.store.pods::<serde_json::Value>() {
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
            let version = r.get("version").and_then(|v| v.as_u64()).unwrap_or(1) as u32;
            let id = r
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            match check_record_version(version) {
                RecordCheck::Current => {}
                RecordCheck::Older(v) => {
                    tracing::info!(pod = %id, "reading a version {v} record (this hyperd writes version {RECORD_VERSION})")
                }
                RecordCheck::Newer(v) => {
                    tracing::error!(
                        pod = %id,
                        "the pod was recorded by a newer hyperd (record version {v}; this one reads up to {RECORD_VERSION}): it is left alone, with its files and VM"
                    );
                    let mut keep = self.foreign_dirs.lock().unwrap();
                    keep.push(self.cfg.root.join("pods").join(&id));
                    if let Some(dir) = r.pointer("/vm/dir").and_then(|d| d.as_str()) {
                        keep.push(PathBuf::from(dir));
                    }
                    continue;
                }
            }
            let r: PodRecord = match serde_json::from_value(r) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("cannot read the record of pod {id}: {e}");
                    continue;
                }
            };
            let dir = self.cfg.root.join("pods").join(&r.id);
            let containers = r
                .containers
                .into_iter()
                .map(|c| {
                    let io = self.container_io(&dir, &c.id, &r.spec);
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
            let state = PodState::new(containers, r.phase, r.labels, r.vm);
            let pod = Arc::new(Pod::new(
                r.id.clone(),
                r.name,
                r.spec,
                r.created,
                dir,
                state,
            ));
            pods.insert(r.id, pod);
        }
        tracing::info!("{} pods in the state store", pods.len());
    }

    /// Re-attaches to the VMs of reloaded pods, or records that they died.
    pub async fn recover(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for pod in self.pods() {
            let Some(vm) = pod.state().recorded_vm.clone() else {
                continue;
            };
            let engine = self.clone();
            tasks.spawn(async move {
                let handle = crate::vm::VmHandle::adopt(&vm.id, &vm.dir, vm.pid).map(Arc::new);
                let result = match &handle {
                    Ok(_) if !AGENT_PROTOCOLS.contains(&vm.agent_protocol) => {
                        Err(EngineError::GuestFailed(format!(
                            "its agent speaks protocol {}, this hyperd drives {} to {}; the VM is stopped",
                            vm.agent_protocol,
                            AGENT_PROTOCOLS.start(),
                            AGENT_PROTOCOLS.end()
                        )))
                    }
                    Ok(h) => engine.reattach(&pod, &vm, h.clone()).await,
                    Err(_) => Err(EngineError::Vm(crate::vm::VmError::Gone(vm.id.clone()))),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(pod = %pod.id, vm = %vm.id, "re-attached to running VM")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod.id, vm = %vm.id, "VM lost: {e}");
                        if let Ok(h) = &handle {
                            h.kill();
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
                        pod.state().recorded_vm = None;
                        let (vm_dir, pod_dir) = (vm.dir.clone(), pod.dir.clone());
                        let _ = super::blocking(move || {
                            let _ = std::fs::rename(
                                vm_dir.join("console.log"),
                                pod_dir.join("console.log"),
                            );
                            crate::vm::stop_helpers(&vm_dir);
                            let _ = std::fs::remove_dir_all(&vm_dir);
                            Ok(())
                        })
                        .await;
                        engine.persist_in_background(&pod);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        // A build's pods do not outlive the daemon that ran the build: its client is
        // gone, and so is the build.
        for pod in self.pods() {
            if pod.labels().contains_key(super::build_step::BUILD_LABEL) {
                tracing::info!(pod = %pod.id, "removing a build's pod left by the last daemon");
                if let Err(e) = self.remove_pod(&pod.id).await {
                    tracing::warn!(pod = %pod.id, "{e}");
                }
            }
        }
    }

    async fn reattach(
        self: &Arc<Self>,
        pod: &Arc<Pod>,
        vm: &VmRecord,
        handle: Arc<VmHandle>,
    ) -> Result<(), EngineError> {
        let sock = vm.dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let listener =
            tokio::net::UnixListener::bind(&sock).map_err(EngineError::io(sock.display()))?;
        let accepted = tokio::select! {
            r = tokio::time::timeout(RECONNECT_TIMEOUT, listener.accept()) => r,
            _ = handle.wait() => {
                return Err(EngineError::GuestFailed("the VM exited while re-attaching".into()))
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&sock);
        let (stream, _) = accepted
            .map_err(|_| {
                EngineError::GuestFailed("the VM did not reconnect its agent channel".into())
            })?
            .map_err(EngineError::io(sock.display()))?;
        let (agent, events) = AgentClient::new(stream);
        // A guest that may take the boot timeout to boot may take as long to answer once
        // it reconnects (hyper-vmm on emulated ring 0 runs its guest ~100x slower).
        let status = agent.call(Op::Status, self.cfg.boot_timeout).await?;
        let status: Status = serde_json::from_value(status.unwrap_or_default())
            .map_err(|e| EngineError::GuestFailed(format!("bad status: {e}")))?;
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
        pod.state().vm = Some(Arc::new(VmRuntime {
            id: vm.id.clone(),
            handle: handle.clone(),
            dir: vm.dir.clone(),
            agent: agent.clone(),
            gone: gone_rx,
            slots: Mutex::new(vm.slots.clone()),
            vcpus: pod.spec.resource.vcpu,
            memory_mib: pod.spec.resource.memory,
            spawned_at: std::time::Instant::now(),
            agent_protocol: vm.agent_protocol,
            net: vm.net.clone(),
            relayed: Mutex::new(Vec::new()),
        }));
        pod.state().recorded_vm = None;
        // Ports added while it ran: listened on again.
        if let Some(runtime) = pod.vm() {
            for f in &vm.relayed {
                if let Err(e) = super::relay::start(pod, &runtime, f.clone()).await {
                    tracing::warn!(pod = %pod.id, "relayed port {}: {e}", f.host_port);
                }
            }
        }
        let stopped = matches!(handle.status().await, Ok(VmStatus::Paused));
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
            handle,
            agent: agent.clone(),
            events,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::config;

    fn record(id: &str, version: Option<u32>, vm_dir: &std::path::Path) -> serde_json::Value {
        let mut r = serde_json::json!({
            "id": id,
            "name": id,
            "spec": {"id": id, "containers": []},
            "created": "2026-11-29T00:00:00Z",
            "phase": "running",
            // A pid that cannot be a VM: the pod's VM counts as lost.
            "vm": {"id": "vm-x", "pid": 1, "dir": vm_dir},
            "containers": [],
        });
        if let Some(v) = version {
            r["version"] = v.into();
        }
        r
    }

    #[test]
    fn versions_are_checked_in_order() {
        assert_eq!(check_record_version(RECORD_VERSION), RecordCheck::Current);
        assert_eq!(check_record_version(1), RecordCheck::Older(1));
        assert_eq!(
            check_record_version(RECORD_VERSION + 1),
            RecordCheck::Newer(RECORD_VERSION + 1)
        );
        assert!(AGENT_PROTOCOLS.contains(&1));
        assert!(!AGENT_PROTOCOLS.contains(&(hyperd_agent::protocol::VERSION + 1)));
    }

    /// A record of the first release (no version) is read and written back in the
    /// current version; one from a newer release is left alone, files and all.
    #[tokio::test]
    async fn older_records_load_and_newer_ones_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let (old_vm, new_vm) = (root.join("vm/vm-old"), root.join("vm/vm-new"));
        for d in [
            &old_vm,
            &new_vm,
            &root.join("pods/pod-old"),
            &root.join("pods/pod-new"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        {
            let store = crate::store::Store::open(root).unwrap();
            store
                .put_pod("pod-old", &record("pod-old", None, &old_vm))
                .unwrap();
            store
                .put_pod(
                    "pod-new",
                    &record("pod-new", Some(RECORD_VERSION + 1), &new_vm),
                )
                .unwrap();
        }
        let driver = crate::vm::Driver::select("qemu", "tcg").unwrap();
        let engine = Engine::new(config(root), driver).unwrap();
        let ids: Vec<String> = engine.pods().iter().map(|p| p.id.clone()).collect();
        assert_eq!(ids, vec!["pod-old".to_string()]);
        assert!(
            root.join("pods/pod-new").is_dir(),
            "a newer pod's files stay"
        );
        assert!(new_vm.is_dir(), "a newer pod's VM directory stays");
        assert!(root.join("pods/pod-old").is_dir());
        // Written back, the old record carries the current version.
        let pod = engine.pods().pop().unwrap();
        engine.persist(&pod).await.unwrap();
        let back: Vec<serde_json::Value> = engine
            .store
            .pods::<serde_json::Value>()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .filter(|r| r["id"] == "pod-old")
            .collect();
        assert_eq!(back[0]["version"], RECORD_VERSION);
        assert_eq!(back[0]["vm"]["agent_protocol"], 1);
    }
}
