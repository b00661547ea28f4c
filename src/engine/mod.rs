//! Pods and their containers: creation, start (boot a VM, create and start the
//! containers through its agent), the stream of output and exits, stop and removal.
pub mod build_step;
mod commit;
mod containers;
pub(crate) mod exec;
pub(crate) mod io;
pub(crate) mod logs;
mod pool;
mod recovery;
mod relay;
pub(crate) mod slots;
pub(crate) mod start_record;
#[cfg(test)]
mod tests;
pub(crate) mod volumes;

use crate::config::Config;
use crate::image::{ImageError, ImageRecord, ImageStore};
use crate::spec::{ContainerSpec, PodSpec};
use crate::vm::agent::{AgentClient, AgentEvent};
use crate::vm::{Driver, RunningVm};
use hyperd_agent::protocol::{Op, ProcessSpec};
use io::{Chunk, ContainerIo, IoState};
pub use logs::LogLimits;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No pod, container, exec or VM answers to the key.
    #[error("{0}")]
    NoSuch(String),
    /// The object is not in a state that allows the operation (not running, paused,
    /// already started, name taken, no free slot).
    #[error("{0}")]
    WrongState(String),
    /// The request's own input is invalid (a spec, a signal, a label, a file).
    #[error("{0}")]
    Invalid(String),
    /// The guest refused an operation (the agent's own error).
    #[error("{0}")]
    GuestRefused(String),
    /// The guest did not do what it was asked in time, or answered nonsense.
    #[error("{0}")]
    GuestFailed(String),
    #[error(transparent)]
    Agent(#[from] crate::vm::agent::AgentError),
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// What the image store said, kept whole: the API layer maps it to a status in the
    /// one place it maps image errors.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl From<crate::spec::InvalidSpec> for EngineError {
    fn from(e: crate::spec::InvalidSpec) -> Self {
        EngineError::Invalid(e.0)
    }
}

impl EngineError {
    /// An I/O failure on `what` (a path or a step).
    pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> EngineError {
        let what = what.to_string();
        move |source| EngineError::Io { what, source }
    }
}

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Paused,
}

impl PodPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "pending",
            PodPhase::Running => "running",
            PodPhase::Succeeded => "succeeded",
            PodPhase::Failed => "failed",
            PodPhase::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ContainerStatus {
    pub exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// How often the daemon restarted the process under its restart policy.
    #[serde(default)]
    pub restart_count: u32,
}

pub struct Container {
    pub id: String,
    name: Mutex<String>,
    pub image: ImageRecord,
    pub image_ref: String,
    pub process: ProcessSpec,
    pub stream: u32,
    pub io: Arc<ContainerIo>,
    pub status: Mutex<ContainerStatus>,
    /// Exited, with a restart under its policy on the way.
    pub restarting: std::sync::atomic::AtomicBool,
    /// What the container was created from.
    pub spec: ContainerSpec,
    /// Stopped or killed on purpose: its restart policy does not apply until it starts.
    pub stop_requested: std::sync::atomic::AtomicBool,
}

impl Container {
    /// The signal a graceful stop sends first: the spec's `stopSignal`, else the image's
    /// `STOPSIGNAL`, else `SIGTERM`.
    pub fn stop_signal(&self) -> &str {
        [&self.spec.stop_signal, &self.image.config.stop_signal]
            .into_iter()
            .find(|s| !s.is_empty())
            .map_or("SIGTERM", String::as_str)
    }

    /// A container not started yet, its output going to `io`.
    pub fn new(
        id: String,
        name: String,
        image: ImageRecord,
        spec: ContainerSpec,
        process: ProcessSpec,
        stream: u32,
        io: Arc<ContainerIo>,
    ) -> Arc<Container> {
        Arc::new(Container {
            io,
            id,
            name: name.into(),
            image,
            image_ref: spec.image.clone(),
            process,
            stream,
            status: Mutex::new(ContainerStatus::default()),
            restarting: Default::default(),
            spec,
            stop_requested: Default::default(),
        })
    }

    pub fn name(&self) -> String {
        self.name.lock().unwrap().clone()
    }

    pub fn set_name(&self, name: String) {
        *self.name.lock().unwrap() = name;
    }

    pub fn phase(&self) -> &'static str {
        match *self.io.state().borrow() {
            IoState::NotStarted => "pending",
            IoState::Running => "running",
            IoState::Exited => match self.status.lock().unwrap().exit_code {
                Some(0) => "succeeded",
                _ => "failed",
            },
        }
    }
}

/// The VM of a running pod.
pub struct VmRuntime {
    pub id: String,
    /// Pause, resume, stop and kill go through it; the engine signals no pid.
    pub handle: Arc<crate::vm::VmHandle>,
    pub dir: PathBuf,
    pub agent: AgentClient,
    /// Becomes true once the VM process is gone and its files are cleaned up.
    pub gone: watch::Receiver<bool>,
    /// Which container holds each disk slot.
    pub slots: Mutex<Vec<Option<String>>>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// When the VM process was spawned (for a re-attached VM: when it was adopted).
    pub spawned_at: std::time::Instant,
    /// The agent protocol version the VM's agent speaks.
    pub agent_protocol: u32,
    /// Its network device and published ports.
    pub net: crate::vm::net::VmNet,
    /// Host ports added while it runs, relayed over the agent channel.
    pub relayed: Mutex<Vec<relay::Relayed>>,
}

pub struct Pod {
    pub id: String,
    pub name: String,
    pub spec: PodSpec,
    pub created: String,
    pub dir: PathBuf,
    /// What changes, under the pod's one lock (held briefly, never across an await).
    state: Mutex<PodState>,
    /// Serializes start, stop and removal (held across their awaits).
    op: tokio::sync::Mutex<()>,
    /// Stream numbers for execs (containers use 1..=n).
    next_stream: std::sync::atomic::AtomicU32,
}

/// Everything about a pod that changes while it lives.
pub struct PodState {
    pub containers: Vec<Arc<Container>>,
    pub phase: PodPhase,
    pub vm: Option<Arc<VmRuntime>>,
    /// The VM a reloaded pod had, until it is re-attached or found dead.
    pub recorded_vm: Option<recovery::VmRecord>,
    /// The pod's labels (from its spec, then `POST /pod/labels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Extra processes run in the pod's containers, by exec id.
    pub execs: HashMap<String, Arc<exec::Exec>>,
    /// The last CPU sample (for percentages) and the largest memory use seen (MiB).
    pub cpu_sample: Option<(std::time::Instant, u64)>,
    pub mem_max: f64,
    /// Set by a stop with `stopVM=no`: the VM outlives the containers and the pod's next
    /// start runs them in it again.
    pub keep_vm: bool,
    /// The phases of the pod's last start.
    pub start_record: Option<start_record::StartRecord>,
    /// Streams of commits under way: what the agent sends on them goes to the commit.
    pub(crate) exports: HashMap<u32, tokio::sync::mpsc::Sender<commit::ExportEvent>>,
    /// Relayed connections: what the agent sends on their streams goes to the client.
    pub(crate) relays: HashMap<u32, tokio::sync::mpsc::Sender<relay::RelayEvent>>,
}

impl PodState {
    fn new(
        containers: Vec<Arc<Container>>,
        phase: PodPhase,
        labels: std::collections::BTreeMap<String, String>,
        recorded_vm: Option<recovery::VmRecord>,
    ) -> PodState {
        PodState {
            containers,
            phase,
            vm: None,
            recorded_vm,
            labels,
            execs: HashMap::new(),
            cpu_sample: None,
            mem_max: 0.0,
            keep_vm: false,
            start_record: None,
            exports: HashMap::new(),
            relays: HashMap::new(),
        }
    }
}

impl Pod {
    fn new(
        id: String,
        name: String,
        spec: PodSpec,
        created: String,
        dir: PathBuf,
        state: PodState,
    ) -> Pod {
        Pod {
            id,
            name,
            spec,
            created,
            dir,
            state: Mutex::new(state),
            op: tokio::sync::Mutex::new(()),
            next_stream: std::sync::atomic::AtomicU32::new(1000),
        }
    }

    /// The pod's state, locked: read or change it in one statement or a short block
    /// that calls no other method of the pod.
    pub fn state(&self) -> std::sync::MutexGuard<'_, PodState> {
        self.state.lock().unwrap()
    }

    /// The pod's containers, in order.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.state().containers.clone()
    }

    pub fn phase(&self) -> PodPhase {
        self.state().phase
    }

    pub fn vm(&self) -> Option<Arc<VmRuntime>> {
        self.state().vm.clone()
    }

    /// The pod's network identity and published ports, while its VM has a network.
    pub fn network(&self) -> Option<hyperd_api::pods::PodNetwork> {
        use crate::vm::net;
        let vm = self.vm()?;
        let guest = vm.net.guest()?;
        let (mode, forwards): (&str, &[net::Forward]) = match &vm.net {
            net::VmNet::User { forwards, .. } => ("user", forwards),
            net::VmNet::Netns { .. } => ("netns", &[]),
            net::VmNet::None => return None,
        };
        let relayed: Vec<net::Forward> = vm
            .relayed
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.forward.clone())
            .collect();
        Some(hyperd_api::pods::PodNetwork {
            mode: mode.into(),
            ip_address: guest.address.to_string(),
            prefix_len: guest.prefix,
            gateway: guest.gateway.map(|g| g.to_string()).unwrap_or_default(),
            mac_address: guest.mac,
            ports: forwards
                .iter()
                .chain(relayed.iter())
                .map(|f| hyperd_api::pods::PublishedPort {
                    container_port: f.guest_port,
                    host_port: f.host_port,
                    protocol: f.proto.as_str().into(),
                    host_ip: f.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                })
                .collect(),
        })
    }

    fn set_phase(&self, p: PodPhase) {
        self.state().phase = p;
    }

    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.state().labels.clone()
    }

    pub fn start_record(&self) -> Option<start_record::StartRecord> {
        self.state().start_record.clone()
    }

    /// Whether every container has exited for good (none is waiting for a restart).
    fn all_done(&self) -> bool {
        self.containers().iter().all(|c| {
            *c.io.state().borrow() == IoState::Exited
                && !c.restarting.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// The phase once every container has exited.
    fn finished_phase(&self) -> PodPhase {
        let all_ok = self
            .containers()
            .iter()
            .all(|c| c.status.lock().unwrap().exit_code == Some(0));
        if all_ok {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        }
    }
}

pub struct Engine {
    pub cfg: Config,
    pub images: Arc<ImageStore>,
    pub credentials: crate::image::auth::CredentialStore,
    pub store: Arc<crate::store::Store>,
    pub driver: Driver,
    /// VMs booted ahead of their pods.
    pool: Mutex<Vec<pool::Booted>>,
    /// Wakes the pool keeper (a VM was taken).
    pool_wake: tokio::sync::Notify,
    /// Pod starts under way: the pool keeper waits for them.
    starts_in_progress: std::sync::atomic::AtomicUsize,
    /// Held by a start of a pod with block volumes from the check that they are free
    /// until its VM is recorded, so two starts never both take one.
    block_volume_starts: tokio::sync::Mutex<()>,
    pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// Pod and VM directories of records a newer hyperd wrote: never cleaned up.
    foreign_dirs: Mutex<Vec<PathBuf>>,
    /// Commits pod records off the async workers.
    writer: crate::store::Writer,
    /// Writes container logs off the async workers.
    pub(crate) logs: logs::LogWriter,
    /// Held while a pod's record is taken and queued, so queue order is snapshot order.
    record_order: Mutex<()>,
}

/// The process a container runs: its spec over its image's defaults (Docker's rules for
/// entrypoint and command).
pub fn process_for(spec: &ContainerSpec, image: &ImageRecord) -> Result<ProcessSpec, EngineError> {
    let cfg = &image.config;
    let entrypoint = if spec.entrypoint.is_empty() {
        cfg.entrypoint.clone()
    } else {
        spec.entrypoint.clone()
    };
    let cmd = if !spec.command.is_empty() {
        spec.command.clone()
    } else if spec.entrypoint.is_empty() {
        cfg.cmd.clone()
    } else {
        vec![]
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(EngineError::Invalid(format!(
            "no command given for a container of image {} and the image has none",
            spec.image
        )));
    }
    let mut env: Vec<String> = cfg.env.clone();
    for e in &spec.envs {
        env.retain(|kv| kv.split_once('=').map(|(k, _)| k) != Some(e.env.as_str()));
        env.push(format!("{}={}", e.env, e.value));
    }
    Ok(ProcessSpec {
        args,
        env,
        workdir: if spec.workdir.is_empty() {
            cfg.working_dir.clone()
        } else {
            spec.workdir.clone()
        },
        user: if spec.user.is_empty() {
            cfg.user.clone()
        } else {
            spec.user.clone()
        },
        tty: spec.tty,
        stdin: spec.tty,
    })
}

impl Engine {
    pub fn new(cfg: Config, driver: Driver) -> Result<Engine, EngineError> {
        let limits = crate::image::unpack::Limits {
            max_bytes: cfg.max_layer_bytes,
            ..Default::default()
        };
        let images = ImageStore::open(&cfg.root, limits)?;
        for d in ["pods", "vm"] {
            std::fs::create_dir_all(cfg.root.join(d))
                .map_err(EngineError::io(cfg.root.join(d).display()))?;
        }
        let store = Arc::new(crate::store::Store::open(&cfg.root)?);
        let writer = crate::store::Writer::start(store.clone());
        let engine = Engine {
            credentials: crate::image::auth::CredentialStore::new(&cfg.root),
            store,
            cfg,
            images: Arc::new(images),
            driver,
            pool: Mutex::new(Vec::new()),
            pool_wake: tokio::sync::Notify::new(),
            starts_in_progress: std::sync::atomic::AtomicUsize::new(0),
            block_volume_starts: tokio::sync::Mutex::new(()),
            pods: Mutex::new(HashMap::new()),
            foreign_dirs: Mutex::new(Vec::new()),
            writer,
            logs: logs::LogWriter::start(),
            record_order: Mutex::new(()),
        };
        engine.load_pods();
        engine.clean_leftovers();
        Ok(engine)
    }

    /// Removes what no pod record accounts for: VM directories (killing their VM process,
    /// after checking its command line names the directory) and pod directories.
    fn clean_leftovers(&self) {
        let foreign = self.foreign_dirs.lock().unwrap().clone();
        let known_vms: std::collections::HashSet<PathBuf> = self
            .pods()
            .iter()
            .filter_map(|p| p.state().recorded_vm.as_ref().map(|v| v.dir.clone()))
            .collect();
        let known_pods: std::collections::HashSet<PathBuf> = self
            .pods()
            .iter()
            .map(|p| p.dir.clone())
            .chain(foreign.iter().cloned())
            .collect();
        if let Ok(dir) = std::fs::read_dir(self.cfg.root.join("pods")) {
            for e in dir.flatten() {
                if !known_pods.contains(&e.path()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let Ok(dir) = std::fs::read_dir(self.cfg.root.join("vm")) else {
            return;
        };
        for e in dir
            .flatten()
            .filter(|e| !known_vms.contains(&e.path()) && !foreign.contains(&e.path()))
        {
            if crate::vm::VmHandle::kill_leftover(&e.path()) {
                tracing::warn!(
                    "killed VM {} that no pod owns",
                    e.file_name().to_string_lossy()
                );
            }
            crate::vm::stop_helpers(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        let mut v: Vec<_> = self.pods.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        v
    }

    /// A pod by id or name.
    pub fn pod(&self, key: &str) -> Result<Arc<Pod>, EngineError> {
        let pods = self.pods.lock().unwrap();
        pods.get(key)
            .or_else(|| pods.values().find(|p| p.name == key))
            .cloned()
            .ok_or_else(|| EngineError::NoSuch(format!("no such pod: {key}")))
    }

    /// A container by id, unique id prefix, or name.
    pub fn container(&self, key: &str) -> Result<(Arc<Pod>, Arc<Container>), EngineError> {
        let pods = self.pods.lock().unwrap();
        let mut found = Vec::new();
        for p in pods.values() {
            for c in &p.containers() {
                if c.id == key || c.name() == key || (key.len() >= 4 && c.id.starts_with(key)) {
                    found.push((p.clone(), c.clone()));
                }
            }
        }
        match found.len() {
            1 => Ok(found.pop().unwrap()),
            0 => Err(EngineError::NoSuch(format!("no such container: {key}"))),
            _ => Err(EngineError::Invalid(format!(
                "container id {key} is ambiguous"
            ))),
        }
    }

    /// Pulls an image without progress messages, with the credentials stored for its
    /// registry (for the seed APIs, whose pulls answer once done).
    pub async fn pull_image(
        &self,
        reference: &str,
    ) -> Result<crate::image::ImageRecord, crate::image::ImageError> {
        use crate::image::registry;
        let image = crate::image::ImageRef::parse(reference)?;
        let creds = self.credentials.get(&image.registry).unwrap_or_default();
        let r = Arc::new(
            registry::Registry::connect(
                image,
                &creds,
                &self.cfg.registry,
                oci_client::RegistryOperation::Pull,
            )
            .await?,
        );
        let resolved = registry::resolve(&r).await?;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        registry::pull(self.images.clone(), r, resolved, tx).await
    }

    /// Pulls `reference` unless the store has it already (the seed APIs' create paths
    /// pull a missing image, as the clients they imitate expect).
    pub async fn ensure_image(&self, reference: &str) -> Result<(), EngineError> {
        match self.images.resolve(reference) {
            Ok(_) => Ok(()),
            Err(crate::image::ImageError::NotFound(_)) => {
                tracing::info!(image = reference, "pulling a missing image");
                self.pull_image(reference)
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.pods
            .lock()
            .unwrap()
            .values()
            .any(|p| p.containers().iter().any(|c| c.image.id == image_id))
    }

    pub async fn create_pod(&self, spec: PodSpec) -> Result<Arc<Pod>, EngineError> {
        spec.validate()?;
        let id = crate::ids::pod_id();
        let name = if spec.id.is_empty() {
            id.clone()
        } else {
            spec.id.clone()
        };
        if self.pod(&name).is_ok() {
            return Err(EngineError::WrongState(format!(
                "a pod named {name} already exists"
            )));
        }
        // Everything that can fail on bad input is checked before anything is written.
        let mut containers = Vec::new();
        let dir = self.cfg.root.join("pods").join(&id);
        for (i, cs) in spec.containers.iter().enumerate() {
            let image = self.images.resolve(&cs.image)?;
            let process = process_for(cs, &image)?;
            let cid = crate::ids::container_id();
            let cname = if cs.name.is_empty() {
                // `<pod>-<image base name>-<index>`, as hyperd names unnamed containers.
                let base = cs.image.rsplit('/').next().unwrap_or("c");
                let base = base.split(':').next().unwrap_or("c");
                format!("{name}-{base}-{i}")
            } else {
                cs.name.clone()
            };
            containers.push(Container::new(
                cid.clone(),
                cname,
                image,
                cs.clone(),
                process,
                i as u32 + 1,
                self.container_io(&dir, &cid, &spec),
            ));
        }
        let spec_json = serde_json::to_vec_pretty(&spec).unwrap_or_default();
        let pod_dir = dir.clone();
        blocking(move || {
            std::fs::create_dir_all(&pod_dir).map_err(EngineError::io(pod_dir.display()))?;
            let _ = crate::image::write_atomic(&pod_dir.join("spec.json"), &spec_json);
            Ok(())
        })
        .await?;
        let state = PodState::new(containers, PodPhase::Pending, spec.labels.clone(), None);
        let pod = Arc::new(Pod::new(
            id.clone(),
            name,
            spec,
            io::chrono_now(),
            dir,
            state,
        ));
        let taken = {
            let mut pods = self.pods.lock().unwrap();
            let taken = pods.values().any(|p| p.name == pod.name);
            if !taken {
                // Taken now, so that a second create of the name fails while this one
                // is being recorded.
                pods.insert(id.clone(), pod.clone());
            }
            taken
        };
        if taken {
            remove_tree(pod.dir.clone()).await;
            return Err(EngineError::WrongState(format!(
                "a pod named {} already exists",
                pod.name
            )));
        }
        if let Err(e) = self.persist(&pod).await {
            self.pods.lock().unwrap().remove(&id);
            remove_tree(pod.dir.clone()).await;
            return Err(e);
        }
        tracing::info!(pod = %pod.id, name = %pod.name, "pod created");
        Ok(pod)
    }

    /// Boots the pod's VM (or takes a VM booted ahead, `vm_hint` naming one) and starts
    /// its containers.
    pub async fn start_pod(
        self: &Arc<Self>,
        key: &str,
        vm_hint: Option<&str>,
    ) -> Result<Arc<Pod>, EngineError> {
        let requested = std::time::Instant::now();
        let requested_at = io::chrono_now();
        let _starting = pool::StartInProgress::new(self);
        let pod = self.pod(key)?;
        let _op = pod.op.lock().await;
        let keep_vm = pod.state().keep_vm;
        let kept = keep_vm && pod.all_done();
        let mut path = start_record::StartPath::Kept;
        if pod.phase() == PodPhase::Running || (pod.vm().is_some() && !kept) {
            return Err(EngineError::WrongState(format!(
                "pod {} is already running",
                pod.id
            )));
        }
        let runtime = match pod.vm().filter(|_| kept) {
            // The VM a `stopVM=no` stop kept: the containers' old layers go, and they
            // start again in it.
            Some(runtime) => {
                for c in &pod.containers() {
                    self.unplace(&runtime, c).await;
                }
                pod.state().keep_vm = false;
                runtime
            }
            None => {
                let count = pod.containers().len();
                let _block_volumes = if volumes::has_block_volumes(&pod.spec) {
                    Some(self.block_volume_starts.lock().await)
                } else {
                    None
                };
                let (vm, runtime, gone_tx, pooled) = match self.take_vm(&pod, vm_hint).await {
                    Ok(v) => v,
                    Err(e) => {
                        pod.set_phase(PodPhase::Failed);
                        self.persist_in_background(&pod);
                        return Err(e);
                    }
                };
                if runtime.slots.lock().unwrap().len() < count {
                    runtime.handle.kill();
                    return Err(EngineError::WrongState(format!(
                        "VM {} has fewer disk slots than the pod has containers",
                        runtime.id
                    )));
                }
                path = if pooled {
                    start_record::StartPath::Pool
                } else {
                    start_record::StartPath::Cold
                };
                pod.state().vm = Some(runtime.clone());
                tokio::spawn(monitor(
                    self.clone(),
                    pod.clone(),
                    vm,
                    gone_tx,
                    runtime.dir.clone(),
                ));
                runtime
            }
        };
        for c in &pod.containers() {
            c.io.set_state(IoState::NotStarted);
            *c.status.lock().unwrap() = ContainerStatus::default();
        }
        let vm_ready = std::time::Instant::now();
        let boot = runtime.agent.boot_times();
        let at = |t: std::time::Instant| start_record::ms_between(requested, t);
        let record = start_record::StartRecord {
            path,
            requested_at,
            vm_spawned_ms: (path != start_record::StartPath::Kept).then(|| at(runtime.spawned_at)),
            kernel_started_ms: boot.map(|(k, _)| at(k)),
            agent_ready_ms: boot.map(|(_, r)| at(r)),
            vm_ready_ms: at(vm_ready),
            container_created_ms: None,
            process_started_ms: None,
        };
        pod.state().start_record = Some(record);
        let agent = runtime.agent.clone();
        pod.set_phase(PodPhase::Running);
        let mut failures = Vec::new();
        for c in &pod.containers() {
            let mut process = c.process.clone();
            process.stdin |= c.io.stdin_wanted.load(std::sync::atomic::Ordering::SeqCst);
            let start = Op::StartProcess {
                container: c.id.clone(),
                stream: c.stream,
                process,
            };
            let res = async {
                self.place(&pod, &runtime, c).await?;
                let created = std::time::Instant::now();
                c.status.lock().unwrap().started_at = Some(io::chrono_now());
                c.io.set_state(IoState::Running);
                agent.call(start, AGENT_TIMEOUT).await?;
                if let Some(r) = pod.state().start_record.as_mut() {
                    r.container_created_ms = Some(start_record::ms_between(requested, created));
                    r.process_started_ms = Some(start_record::ms_between(
                        requested,
                        std::time::Instant::now(),
                    ));
                }
                Ok::<_, EngineError>(())
            }
            .await;
            if let Err(e) = res {
                let msg = format!("container {}: {e}", c.name());
                tracing::warn!(pod = %pod.id, "{msg}");
                c.io.output(Chunk::Stderr(bytes::Bytes::from(format!(
                    "hyperd: {msg}\n"
                ))))
                .await;
                mark_exited(&c.io, &c.status, 127);
                failures.push(msg);
            }
        }
        // Only containers that failed to start count: a process may also have run and
        // exited already (the fake VM's tests found a start refused for that).
        if failures.len() == pod.containers().len() {
            drop(_op);
            self.stop_vm(&pod).await;
            return Err(EngineError::Invalid(format!(
                "pod {}: no container could start",
                pod.id
            )));
        }
        self.persist(&pod).await?;
        drop(_op);
        Ok(pod)
    }

    /// Stops the pod's VM (its containers die with it).
    pub async fn stop_pod(&self, key: &str) -> Result<Arc<Pod>, EngineError> {
        let pod = self.pod(key)?;
        let _op = pod.op.lock().await;
        if pod.vm().is_none() {
            return Err(EngineError::WrongState(format!(
                "pod {} is not running",
                pod.id
            )));
        }
        self.stop_vm(&pod).await;
        drop(_op);
        Ok(pod)
    }

    /// Stops a pod gracefully: every running container gets its stop signal, and
    /// SIGKILL after `grace`; then the VM powers off (it also does by itself once the
    /// last container is gone).
    pub async fn stop_pod_gracefully(
        &self,
        key: &str,
        grace: Duration,
    ) -> Result<Arc<Pod>, EngineError> {
        self.stop_pod_keeping_vm(key, grace, false).await
    }

    /// [`Engine::stop_pod_gracefully`]; with `keep_vm` (hyperd's `stopVM=no`) the VM
    /// stays up, idle, for the pod's next start.
    pub async fn stop_pod_keeping_vm(
        &self,
        key: &str,
        grace: Duration,
        keep_vm: bool,
    ) -> Result<Arc<Pod>, EngineError> {
        let pod = self.pod(key)?;
        let running = matches!(pod.phase(), PodPhase::Running | PodPhase::Paused);
        if pod.vm().is_none() || (keep_vm && !running) {
            return Err(EngineError::WrongState(format!(
                "pod {} is not running",
                pod.id
            )));
        }
        pod.state().keep_vm = keep_vm;
        if pod.phase() == PodPhase::Paused {
            self.pause_pod(&pod.id, false).await?;
        }
        let stops = pod
            .containers()
            .into_iter()
            .map(|c| async move { self.stop_container(&c.id, grace).await });
        for r in futures_util::future::join_all(stops).await {
            if let Err(e) = r {
                tracing::warn!(pod = %pod.id, "graceful stop: {e}");
            }
        }
        if keep_vm {
            pod.set_phase(pod.finished_phase());
            self.persist(&pod).await?;
            return Ok(pod);
        }
        match self.stop_pod(&pod.id).await {
            Ok(p) => Ok(p),
            Err(EngineError::WrongState(_)) => Ok(pod),
            Err(e) => Err(e),
        }
    }

    /// Asks the agent to power off, then kills the VM if it does not go in time.
    async fn stop_vm(&self, pod: &Arc<Pod>) {
        let Some(vm) = pod.vm() else { return };
        if pod.phase() == PodPhase::Paused {
            // A frozen guest cannot power itself off: thaw it first.
            if let Err(e) = vm.handle.resume().await {
                tracing::warn!(pod = %pod.id, "resume before stop: {e}");
            }
            pod.set_phase(PodPhase::Running);
        }
        stop_runtime(&vm).await;
    }

    /// Removes a pod: stops it if running, then deletes its files.
    pub async fn remove_pod(&self, key: &str) -> Result<(), EngineError> {
        let pod = self.pod(key)?;
        let _op = pod.op.lock().await;
        self.stop_vm(&pod).await;
        self.pods.lock().unwrap().remove(&pod.id);
        if let Err(e) = self.writer.delete(&pod.id).await {
            tracing::error!(pod = %pod.id, "cannot delete the pod record: {e}");
        }
        let dir = pod.dir.clone();
        remove_tree(dir).await;
        tracing::info!(pod = %pod.id, "pod removed");
        Ok(())
    }
}

async fn stop_runtime(vm: &VmRuntime) {
    let mut gone = vm.gone.clone();
    if *gone.borrow() {
        return;
    }
    stop_runtime_with(vm, async move {
        let _ = gone.wait_for(|g| *g).await;
        String::new()
    })
    .await;
}

/// Asks the agent to power off and waits for `exited` (the VM is gone); past STOP_TIMEOUT
/// the VM handle stops the VM through its monitor, and kills it past another.
async fn stop_runtime_with(vm: &VmRuntime, exited: impl std::future::Future<Output = String>) {
    let _ = vm.agent.call(Op::Shutdown, Duration::from_secs(5)).await;
    tokio::pin!(exited);
    if tokio::time::timeout(STOP_TIMEOUT, &mut exited)
        .await
        .is_err()
    {
        tracing::warn!(vm = %vm.id, "VM did not power off; stopping it through its monitor");
        vm.handle.stop(STOP_TIMEOUT).await;
        let _ = tokio::time::timeout(STOP_TIMEOUT, exited).await;
    }
}

/// Starts a container's process again under its restart policy, after a delay that
/// doubles with each restart (100 ms up to 10 s).
async fn restart_container(
    engine: Arc<Engine>,
    pod: Arc<Pod>,
    c: Arc<Container>,
    agent: AgentClient,
) {
    let n = c.status.lock().unwrap().restart_count;
    tokio::time::sleep(
        Duration::from_millis(100u64.saturating_mul(1 << n.min(7))).min(Duration::from_secs(10)),
    )
    .await;
    let result = if pod.phase() == PodPhase::Running && pod.vm().is_some() {
        {
            let mut st = c.status.lock().unwrap();
            st.exit_code = None;
            st.finished_at = None;
            st.started_at = Some(io::chrono_now());
            st.restart_count += 1;
        }
        c.io.set_state(IoState::Running);
        let op = Op::StartProcess {
            container: c.id.clone(),
            stream: c.stream,
            process: c.process.clone(),
        };
        agent
            .call(op, AGENT_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(EngineError::from)
    } else {
        Err(EngineError::WrongState(
            "the pod is no longer running".into(),
        ))
    };
    c.restarting
        .store(false, std::sync::atomic::Ordering::SeqCst);
    match result {
        Ok(()) => tracing::info!(pod = %pod.id, container = %c.name(), "container restarted"),
        Err(e) => {
            tracing::warn!(pod = %pod.id, container = %c.name(), "restart failed: {e}");
            mark_exited(&c.io, &c.status, 127);
            if pod.all_done() {
                pod.set_phase(pod.finished_phase());
                let _ = agent.call(Op::Shutdown, Duration::from_secs(10)).await;
            }
        }
    }
    engine.persist_in_background(&pod);
}

impl Engine {
    /// The stdio of container `id` of the pod in `pod_dir`: its log is `<id>.log` there,
    /// kept within the pod's log limits.
    fn container_io(
        &self,
        pod_dir: &std::path::Path,
        id: &str,
        spec: &PodSpec,
    ) -> Arc<ContainerIo> {
        Arc::new(ContainerIo::new(
            pod_dir.join(format!("{id}.log")),
            &self.logs,
            self.log_limits(spec),
        ))
    }

    /// A pod's log limits: its own, else the daemon's.
    pub(crate) fn log_limits(&self, spec: &PodSpec) -> LogLimits {
        let d = self.cfg.log_limits;
        let own = spec.log.unwrap_or_default();
        LogLimits {
            max_size: own.max_size.unwrap_or(d.max_size),
            max_files: own.max_files.unwrap_or(d.max_files),
        }
    }
}

/// Removes a VM's directory once its process is gone, stopping its network backend if
/// that is still there.
pub(crate) async fn remove_vm_dir(dir: PathBuf) {
    let _ = blocking(move || {
        crate::vm::stop_helpers(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
    .await;
}

/// Removes a directory tree (a pod's or a VM's) on the blocking pool; a tree that is
/// already gone is fine.
pub(crate) async fn remove_tree(dir: PathBuf) {
    let _ = blocking(move || {
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
    .await;
}

/// Runs blocking file work on tokio's blocking pool, not on an async worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Io {
            what: "a blocking task".into(),
            source: std::io::Error::other(e),
        })?
}

/// Records a process's exit (the first report wins) and ends its attached streams.
fn mark_exited(io: &ContainerIo, status: &Mutex<ContainerStatus>, code: i32) {
    {
        let mut st = status.lock().unwrap();
        if st.exit_code.is_none() {
            st.exit_code = Some(code);
            st.finished_at = Some(io::chrono_now());
        }
    }
    io.set_state(IoState::Exited);
}

/// One event of a VM's agent: output to its container's or exec's log and clients, an
/// exit recorded (and a restart or the VM's shutdown begun).
async fn handle_event(
    engine: &Arc<Engine>,
    pod: &Arc<Pod>,
    agent: &AgentClient,
    ev: AgentEvent,
    shutting_down: &mut bool,
) {
    // Containers come and go while the VM runs: look them up at each event.
    let container_of = |stream: u32| pod.containers().into_iter().find(|c| c.stream == stream);
    match ev {
        AgentEvent::Output {
            stream,
            stderr,
            data,
        } => {
            if !stderr && relay::route(pod, stream, relay::RelayEvent::Data(data.clone())) {
                return;
            }
            if pod.state().exports.contains_key(&stream) {
                let ev = if stderr {
                    commit::ExportEvent::Error(data)
                } else {
                    commit::ExportEvent::Data(data)
                };
                commit::route_export(pod, stream, ev).await;
                return;
            }
            let chunk = if stderr {
                Chunk::Stderr(data)
            } else {
                Chunk::Stdout(data)
            };
            if let Some(c) = container_of(stream) {
                c.io.output(chunk).await;
            } else if let Some(e) = pod.exec_by_stream(stream) {
                e.io.output(chunk).await;
            }
        }
        AgentEvent::Exited { stream, code } => {
            if relay::route(pod, stream, relay::RelayEvent::Done) {
                return;
            }
            if commit::route_export(pod, stream, commit::ExportEvent::Done(code)).await {
                return;
            }
            if let Some(c) = container_of(stream) {
                // An exit counts once: a repeated `exited` (a hostile or confused agent)
                // neither changes the recorded code nor starts another restart.
                if *c.io.state().borrow() != IoState::Running {
                    tracing::debug!(pod = %pod.id, stream, "an exit of a process not running: ignored");
                    return;
                }
                tracing::info!(pod = %pod.id, container = %c.name(), code, "container exited");
                mark_exited(&c.io, &c.status, code);
                if c.spec.restarts_after(code)
                    && !c.stop_requested.load(std::sync::atomic::Ordering::SeqCst)
                    && pod.phase() == PodPhase::Running
                {
                    c.restarting
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    tokio::spawn(restart_container(
                        engine.clone(),
                        pod.clone(),
                        c.clone(),
                        agent.clone(),
                    ));
                }
                engine.persist_in_background(pod);
            } else if let Some(e) = pod.exec_by_stream(stream) {
                if *e.io.state().borrow() == IoState::Running {
                    mark_exited(&e.io, &e.status, code);
                }
                return;
            }
            if pod.all_done() && !*shutting_down {
                pod.set_phase(pod.finished_phase());
                if !pod.state().keep_vm {
                    *shutting_down = true;
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        let _ = agent.call(Op::Shutdown, Duration::from_secs(10)).await;
                    });
                }
            }
        }
        AgentEvent::Closed => {}
    }
}

/// Follows a VM: routes its output to the containers, records exits, powers the VM off
/// when every container has exited, and cleans up when the VM process is gone.
async fn monitor(
    engine: Arc<Engine>,
    pod: Arc<Pod>,
    mut vm: RunningVm,
    gone: watch::Sender<bool>,
    dir: PathBuf,
) {
    let mut shutting_down = false;
    let mut console_check = tokio::time::interval(Duration::from_secs(2));
    console_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (console, console_max) = (dir.join("console.log"), engine.cfg.console_log_max);
    let status = loop {
        tokio::select! {
            _ = console_check.tick() => {
                let log = console.clone();
                let _ = blocking(move || {
                    if let Ok(true) = crate::vm::console::cap_console_log(&log, console_max) {
                        tracing::warn!("{} passed {console_max} bytes: emptied", log.display());
                    }
                    Ok(())
                })
                .await;
            }
            ev = vm.events.recv() => match ev {
                Some(ev) => handle_event(&engine, &pod, &vm.agent, ev, &mut shutting_down).await,
                None => break vm.handle.wait().await,
            },
            status = vm.handle.wait() => {
                // Whatever the agent sent before the end is still delivered.
                while let Ok(ev) = vm.events.try_recv() {
                    handle_event(&engine, &pod, &vm.agent, ev, &mut shutting_down).await;
                }
                break status;
            }
        }
    };
    tracing::info!(pod = %pod.id, "VM exited: {status:?}");
    let unexpected = pod
        .containers()
        .iter()
        .any(|c| *c.io.state().borrow() == IoState::Running);
    if unexpected {
        // Containers were still running: a kill, or the guest ended on its own (a panic,
        // a reset).
        // Its last console lines say why, before the directory goes.
        let console = dir.join("console.log");
        let tail = blocking(move || {
            let text = std::fs::read(&console).unwrap_or_default();
            Ok(String::from_utf8_lossy(&text[text.len().saturating_sub(2048)..]).into_owned())
        })
        .await
        .unwrap_or_default();
        tracing::warn!(pod = %pod.id, "the VM ended with containers running; its console ended with:\n{tail}");
    }
    for c in &pod.containers() {
        if *c.io.state().borrow() != IoState::Exited {
            mark_exited(&c.io, &c.status, 137);
        }
    }
    let execs: Vec<_> = pod.state().execs.values().cloned().collect();
    for e in execs {
        if *e.io.state().borrow() == IoState::Running {
            mark_exited(&e.io, &e.status, 137);
        }
    }
    pod.set_phase(pod.finished_phase());
    {
        let mut state = pod.state();
        // Its relayed ports stop listening, and their connections end.
        if let Some(vm) = state.vm.take() {
            vm.relayed.lock().unwrap().clear();
        }
        state.relays.clear();
    }
    // The guest console stays with the pod, for `hyperctl inspect` readers and bug reports.
    let pod_dir = pod.dir.clone();
    let _ = blocking(move || {
        let _ = std::fs::rename(dir.join("console.log"), pod_dir.join("console.log"));
        crate::vm::stop_helpers(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(vm_id) = dir.file_name() {
            crate::vm::host::remove_cpu_cgroup(&vm_id.to_string_lossy());
        }
        Ok(())
    })
    .await;
    engine.persist_in_background(&pod);
    let _ = gone.send(true);
    if pod.spec.auto_remove && pod.phase() != PodPhase::Running {
        let id = pod.id.clone();
        drop(pod);
        if let Err(e) = engine.remove_pod(&id).await {
            tracing::warn!(pod = %id, "auto-remove: {e}");
        }
    }
}
