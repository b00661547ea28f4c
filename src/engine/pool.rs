//! VMs: booting one for a pod, and VMs booted ahead (`POST /vm/create`) that the next
//! pod which fits takes, as hyperd's VM factory did.
use super::{slots, Engine, EngineError, VmRuntime};
use crate::spec::{NetworkMode, PodSpec};
use crate::vm::net::{Forward, Proto, VmNet};
use crate::vm::{RunningVm, VmConfig};
use hyperd_agent::protocol::{NetworkConfig, Op};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A booted VM and what its pod's monitor will need.
pub struct Booted {
    pub vm: RunningVm,
    pub runtime: Arc<VmRuntime>,
    pub gone: watch::Sender<bool>,
    /// Booted by the pool keeper (not by `POST /vm/create`): it ages out.
    pub auto: bool,
}

/// The size the warm pool keeps: the default pod's.
fn pooled_vm_size() -> crate::spec::Resource {
    crate::spec::Resource::default()
}

/// How many of `idle` (id, vCPUs, MiB) have the size the pool keeps.
fn of_pooled_size(idle: &[(String, u32, u32)]) -> usize {
    let size = pooled_vm_size();
    idle.iter()
        .filter(|(_, v, m)| *v == size.vcpu && *m == size.memory)
        .count()
}

/// Powers an idle VM off (agent shutdown, then kill past the deadline) and removes its
/// directory.
async fn power_off_idle(b: Booted) {
    let handle = b.vm.handle.clone();
    super::stop_runtime_with(&b.runtime, async move { handle.wait().await }).await;
    super::remove_vm_dir(b.runtime.dir.clone()).await;
}

/// Counts a pod start while it runs, so that the pool keeper waits for it.
pub(super) struct StartInProgress<'a>(&'a Engine);

impl<'a> StartInProgress<'a> {
    pub(super) fn new(engine: &'a Engine) -> Self {
        engine
            .starts_in_progress
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        StartInProgress(engine)
    }
}

impl Drop for StartInProgress<'_> {
    fn drop(&mut self) {
        self.0
            .starts_in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // A start may have taken an idle VM: the keeper refills once starts are done.
        self.0.pool_wake.notify_one();
    }
}

impl Engine {
    /// Boots a VM of `resource`'s size and limits with `n_slots` empty disk slots and
    /// the network `net` (configured in the guest before it is handed out).
    pub async fn boot_vm(
        &self,
        resource: &crate::spec::Resource,
        n_slots: usize,
        net: VmNet,
        storage: super::volumes::PodStorage,
    ) -> Result<Booted, EngineError> {
        let (vcpus, memory_mib) = (resource.vcpu, resource.memory);
        let id = crate::ids::vm_id();
        let dir = self.cfg.root.join("vm").join(&id);
        let scratch_mib = resource.scratch_size_mib();
        let super::volumes::PodStorage {
            share,
            disks: volume_disks,
        } = storage;
        let disks = {
            let dir = dir.clone();
            super::blocking(move || {
                let mut disks =
                    slots::make(&dir, n_slots).map_err(EngineError::io("disk slots"))?;
                disks.push(
                    slots::make_scratch(&dir, scratch_mib)
                        .map_err(EngineError::io("the scratch disk"))?,
                );
                disks.extend(volume_disks);
                Ok(disks)
            })
            .await
        };
        let disks = match disks {
            Ok(d) => d,
            Err(e) => {
                super::remove_vm_dir(dir).await;
                return Err(e);
            }
        };
        let cfg = VmConfig {
            id: id.clone(),
            dir: dir.clone(),
            vcpus,
            memory_mib,
            kernel: self.cfg.kernel.clone(),
            initrd: self.cfg.initrd.clone(),
            disks,
            boot_timeout: self.cfg.boot_timeout,
            disk_limits: resource.disk,
            net: net.clone(),
            share,
        };
        let started = std::time::Instant::now();
        let vm = match self.driver.boot(&cfg).await {
            Ok(vm) => vm,
            Err(e) => {
                super::remove_vm_dir(dir).await;
                return Err(e.into());
            }
        };
        if let Some(guest) = net.guest() {
            let configure = Op::ConfigureNetwork {
                network: NetworkConfig {
                    interface: crate::vm::net::INTERFACE.into(),
                    address: guest.address.to_string(),
                    prefix: guest.prefix,
                    gateway: guest.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    mtu: guest.mtu,
                },
            };
            if let Err(e) = vm.agent.call(configure, super::AGENT_TIMEOUT).await {
                vm.handle.kill();
                vm.handle.wait().await;
                super::remove_vm_dir(dir).await;
                return Err(EngineError::GuestFailed(format!("network set-up: {e}")));
            }
        }
        tracing::info!(vm = %id, pid = vm.handle.pid(), "VM booted in {:?}", started.elapsed());
        if resource.cpu_percent > 0 {
            if let Err(e) = vm.handle.cap_cpu(resource.cpu_percent) {
                tracing::warn!(vm = %id, "{e}");
            }
        }
        let (gone, gone_rx) = watch::channel(false);
        let runtime = Arc::new(VmRuntime {
            id,
            handle: vm.handle.clone(),
            dir,
            agent: vm.agent.clone(),
            gone: gone_rx,
            slots: Mutex::new(vec![None; n_slots]),
            vcpus,
            memory_mib,
            spawned_at: started,
            agent_protocol: vm
                .agent
                .protocol()
                .unwrap_or(hyperd_agent::protocol::VERSION),
            net,
            relayed: Mutex::new(Vec::new()),
        });
        Ok(Booted {
            vm,
            runtime,
            gone,
            auto: false,
        })
    }

    /// `POST /vm/create`: boots a VM ahead of its pod.
    pub async fn create_vm(&self, vcpus: u32, memory_mib: u32) -> Result<String, EngineError> {
        if vcpus == 0
            || vcpus > crate::spec::MAX_VCPU
            || !(crate::spec::MIN_MEMORY..=crate::spec::MAX_MEMORY).contains(&memory_mib)
        {
            return Err(EngineError::Invalid(format!(
                "invalid VM size: {vcpus} vCPUs, {memory_mib} MiB"
            )));
        }
        let size = crate::spec::Resource {
            vcpu: vcpus,
            memory: memory_mib,
            ..Default::default()
        };
        let booted = self
            .boot_vm(
                &size,
                slots::MIN_SLOTS,
                self.pooled_net(),
                Default::default(),
            )
            .await?;
        let id = booted.runtime.id.clone();
        self.pool.lock().unwrap().push(booted);
        Ok(id)
    }

    /// Keeps `pool_size` idle VMs of the default size booted, in the background: one
    /// boot at a time, never while a pod starts, and idle VMs older than
    /// `pool_max_age` replaced. A VM leaves the pool only to a pod and never returns.
    pub fn start_pool_keeper(self: &Arc<Self>) {
        if self.cfg.pool_size == 0 {
            return;
        }
        // The engine lives as long as the daemon; so does its keeper.
        let e = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                e.expire_idle().await;
                if of_pooled_size(&e.idle_vms()) < e.cfg.pool_size {
                    // Pod starts first: a refill never competes with one for the CPUs.
                    while e
                        .starts_in_progress
                        .load(std::sync::atomic::Ordering::SeqCst)
                        > 0
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    match e
                        .boot_vm(
                            &pooled_vm_size(),
                            slots::MIN_SLOTS,
                            e.pooled_net(),
                            Default::default(),
                        )
                        .await
                    {
                        Ok(mut b) => {
                            failures = 0;
                            b.auto = true;
                            tracing::info!(vm = %b.runtime.id, "warm pool: VM ready");
                            e.pool.lock().unwrap().push(b);
                        }
                        Err(err) => {
                            failures += 1;
                            tracing::warn!("warm pool: boot failed: {err}");
                            let backoff = 2u64.saturating_pow(failures.min(6));
                            tokio::time::sleep(std::time::Duration::from_secs(backoff)).await;
                        }
                    }
                    continue;
                }
                let wait = (e.cfg.pool_max_age / 4).min(std::time::Duration::from_secs(30));
                let wake = e.pool_wake.notified();
                tokio::select! {
                    _ = wake => {},
                    _ = tokio::time::sleep(wait) => {},
                }
            }
        });
    }

    /// Powers off every idle VM (at daemon shutdown: unlike pods, they hold nothing worth
    /// keeping, and the next daemon boots fresh ones).
    pub async fn drain_pool(&self) {
        let idle: Vec<Booted> = self.pool.lock().unwrap().drain(..).collect();
        for b in idle {
            power_off_idle(b).await;
        }
    }

    /// Powers off idle pool VMs older than `pool_max_age` (and any whose VM is gone).
    async fn expire_idle(&self) {
        let expired: Vec<Booted> = {
            let mut pool = self.pool.lock().unwrap();
            let (old, keep): (Vec<_>, Vec<_>) = pool.drain(..).partition(|b| {
                b.auto
                    && (b.runtime.spawned_at.elapsed() > self.cfg.pool_max_age
                        || !b.runtime.handle.is_alive())
            });
            *pool = keep;
            old
        };
        for b in expired {
            tracing::info!(vm = %b.runtime.id, "warm pool: replacing an idle VM");
            power_off_idle(b).await;
        }
    }

    /// The warm pool as `/info` shows it: sizes, idle VMs and their memory.
    pub fn pool_info(&self) -> hyperd_api::system::PoolInfo {
        let size = pooled_vm_size();
        let idle = self.idle_vms();
        let of_size = of_pooled_size(&idle);
        hyperd_api::system::PoolInfo {
            target: self.cfg.pool_size,
            max_age_seconds: self.cfg.pool_max_age.as_secs(),
            sizes: vec![hyperd_api::system::PoolSize {
                vcpus: size.vcpu,
                memory_mib: size.memory,
                idle: of_size,
                target: self.cfg.pool_size,
            }],
            idle_vms: idle.len(),
            idle_memory_mib: idle.iter().map(|(_, _, m)| u64::from(*m)).sum(),
        }
    }

    /// Idle VMs: (id, vCPUs, MiB).
    pub fn idle_vms(&self) -> Vec<(String, u32, u32)> {
        self.pool
            .lock()
            .unwrap()
            .iter()
            .map(|b| (b.runtime.id.clone(), b.runtime.vcpus, b.runtime.memory_mib))
            .collect()
    }

    /// `DELETE /vm?vm=ID`: powers off an idle VM, or the VM of a pod (stopping the pod).
    pub async fn delete_vm(&self, id: &str) -> Result<(), EngineError> {
        let taken = {
            let mut pool = self.pool.lock().unwrap();
            pool.iter()
                .position(|b| b.runtime.id == id)
                .map(|i| pool.remove(i))
        };
        if let Some(b) = taken {
            power_off_idle(b).await;
            return Ok(());
        }
        let pod = self
            .pods()
            .into_iter()
            .find(|p| p.vm().is_some_and(|v| v.id == id))
            .ok_or_else(|| EngineError::NoSuch(format!("no such VM: {id}")))?;
        self.stop_pod(&pod.id).await.map(|_| ())
    }

    /// A VM for a pod: the idle VM named by `hint`, else an idle one of the pod's size,
    /// else a new one.
    pub(super) async fn take_vm(
        &self,
        pod: &super::Pod,
        hint: Option<&str>,
    ) -> Result<(RunningVm, Arc<VmRuntime>, watch::Sender<bool>, bool), EngineError> {
        let r = &pod.spec.resource;
        let need = pod.containers().len();
        let net = self.pod_net(&pod.spec).await?;
        let storage = self.pod_storage(pod).await?;
        let taken = {
            let mut pool = self.pool.lock().unwrap();
            let i = match hint.filter(|h| !h.is_empty()) {
                Some(h) => {
                    let i = pool
                        .iter()
                        .position(|b| b.runtime.id == h)
                        .ok_or_else(|| EngineError::NoSuch(format!("no idle VM {h}")))?;
                    // A VM's network and share are fixed when it boots (passt's
                    // forwards, virtiofsd's entries).
                    if !storage.is_empty() {
                        return Err(EngineError::WrongState(format!(
                            "VM {h} was booted without this pod's volumes; start it without a VM"
                        )));
                    }
                    if pool[i].runtime.net != net {
                        return Err(EngineError::WrongState(format!(
                            "VM {h} was booted without the network this pod asks for \
                             (published ports, host-gateway or none); start it without a VM"
                        )));
                    }
                    Some(i)
                }
                // Pooled VMs have no limits, the default scratch disk and share
                // nothing: a pod with limits, its own scratch size or volumes boots its
                // own.
                None if r.cpu_percent > 0
                    || !r.disk.is_none()
                    || r.scratch_mib != 0
                    || !storage.is_empty() =>
                {
                    None
                }
                // Pooled VMs publish no port: a pod that publishes boots its own.
                None => pool.iter().position(|b| {
                    b.runtime.vcpus == r.vcpu
                        && b.runtime.memory_mib == r.memory
                        && b.runtime.net == net
                        && b.runtime.slots.lock().unwrap().len() >= need
                }),
            };
            i.map(|i| pool.remove(i))
        };
        if let Some(b) = taken {
            if b.runtime.handle.is_alive() && !b.runtime.agent.is_closed() {
                tracing::info!(pod = %pod.id, vm = %b.runtime.id, "pod takes a VM booted ahead");
                return Ok((b.vm, b.runtime, b.gone, true));
            }
            super::remove_vm_dir(b.runtime.dir.clone()).await;
            if hint.is_some_and(|h| !h.is_empty()) {
                return Err(EngineError::WrongState(format!(
                    "VM {} is gone",
                    b.runtime.id
                )));
            }
        }
        let b = self
            .boot_vm(r, self.slots_for(need, &net, &storage)?, net, storage)
            .await?;
        Ok((b.vm, b.runtime, b.gone, false))
    }
}

impl Engine {
    /// How many image slots a pod's own VM gets: at least one per container, up to
    /// [`slots::MIN_SLOTS`] (room for containers added later) as far as the driver's
    /// device budget allows once the agent channel, network, scratch disk, share and
    /// block volumes have theirs.
    fn slots_for(
        &self,
        need: usize,
        net: &VmNet,
        storage: &super::volumes::PodStorage,
    ) -> Result<usize, EngineError> {
        let fixed = 2 // the agent channel, the scratch disk
            + usize::from(*net != VmNet::None)
            + usize::from(!storage.share.is_empty())
            + storage.disks.len();
        let room = self.driver.max_devices().saturating_sub(fixed);
        if need > room {
            return Err(EngineError::Invalid(format!(
                "a VM of the {} driver has room for {room} container images beside this pod's \
                 volumes and network, and the pod has {need} containers",
                self.driver.describe()
            )));
        }
        Ok(need.max(slots::MIN_SLOTS.min(room)))
    }

    /// The network of pool VMs: user mode where the driver has a network device.
    pub(super) fn pooled_net(&self) -> VmNet {
        if self.driver.has_network() {
            VmNet::User {
                forwards: Vec::new(),
                host_loopback: false,
            }
        } else {
            VmNet::None
        }
    }

    /// The network a pod's VM gets: its mode, and its published ports with a free host
    /// port chosen for each one published without (`publishAll`), or the interface of
    /// its network namespace.
    pub(super) async fn pod_net(&self, spec: &PodSpec) -> Result<VmNet, EngineError> {
        if spec.network_mode == NetworkMode::None {
            return Ok(VmNet::None);
        }
        if let Some(path) = &spec.network_namespace {
            if !self.driver.has_network() {
                return Err(crate::vm::VmError::Unsupported(format!(
                    "the {} driver has no network device",
                    self.driver.describe()
                ))
                .into());
            }
            let p = path.clone();
            let link = tokio::task::spawn_blocking(move || crate::vm::netns::inspect(&p))
                .await
                .map_err(|e| EngineError::Invalid(format!("network namespace: {e}")))??;
            return Ok(VmNet::Netns {
                path: path.clone(),
                link,
            });
        }
        let forwards = spec
            .published_ports()
            .map(forward_of)
            .collect::<Result<Vec<_>, _>>()?;
        if !self.driver.has_network() {
            if !forwards.is_empty() {
                return Err(crate::vm::VmError::Unsupported(format!(
                    "the {} driver has no network device yet: published ports need the qemu driver",
                    self.driver.describe()
                ))
                .into());
            }
            return Ok(VmNet::None);
        }
        // The host's loopback at the gateway only for pods that name the host, or that
        // publish UDP: passt 2023-03 gives datagrams from the host's loopback the gateway
        // as their source only with the mapping on, and the guest's answers need it.
        let host_loopback = spec.extra_host_entries().any(|(_, a)| a == "host-gateway")
            || forwards.iter().any(|f| f.proto == Proto::Udp);
        Ok(VmNet::User {
            forwards,
            host_loopback,
        })
    }
}

/// The forward a published port asks for, with a free host port picked if it names none.
pub(super) fn forward_of(p: &crate::spec::Port) -> Result<Forward, EngineError> {
    let proto = Proto::of(p.protocol());
    let host_ip =
        if p.host_ip.is_empty() {
            None
        } else {
            Some(p.host_ip.parse().map_err(|_| {
                EngineError::Invalid(format!("invalid host address {:?}", p.host_ip))
            })?)
        };
    let host_port = match p.host_port {
        0 => crate::vm::net::free_port(proto, host_ip)?,
        n => n as u16,
    };
    Ok(Forward {
        proto,
        host_ip,
        host_port,
        guest_port: p.container_port as u16,
    })
}
