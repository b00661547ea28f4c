//! Virtual machines: one interface, several drivers.
//!
//! A driver turns a [`VmConfig`] into a running VM process and a connected agent channel
//! ([`agent::AgentClient`]). Two drivers: hyperd's own VMM ([`hyper_vmm`], KVM only) and
//! qemu's `microvm` machine ([`qemu`], KVM or TCG). [`Driver::select`] picks one.
pub(crate) mod agent;
pub mod console;
#[cfg(any(test, feature = "fake-vm"))]
pub mod fake;
pub mod handle;
pub mod host;
pub mod hyper_vmm;
pub mod net;
pub mod netns;
pub mod qemu;
pub(crate) mod qmp;
pub mod share;

pub use handle::{process_alive, ControlSocket, VmHandle, VmStats, VmStatus};

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot launch the VM: {0}")]
    Launch(String),
    #[error("the VM's agent did not answer within {0:?} (see {1})")]
    BootTimeout(Duration, PathBuf),
    #[error("the VM exited during boot: {0}")]
    DiedDuringBoot(String),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error("the VM's monitor: {0}")]
    Control(String),
    #[error("VM {0} is gone")]
    Gone(String),
    #[error("host port {0} is already in use")]
    PortTaken(String),
    #[error("{0}")]
    Unsupported(String),
    /// The pod's network cannot be set up as asked (a network namespace that is not one,
    /// or has no single interface to take over).
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why a driver cannot be set up on this host.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("unknown VM driver {0:?} (known: auto, hyper-vmm, qemu)")]
    UnknownDriver(String),
    #[error("unknown accelerator {0:?} (known: auto, kvm, tcg)")]
    UnknownAccel(String),
    #[error("the hyper-vmm driver needs a usable /dev/kvm")]
    NoKvm,
    #[error("hyper-vmm not found next to {0} (set HYPERD_VMM)")]
    VmmNotFound(PathBuf),
    #[error("cannot find the running binary: {0}")]
    NoExe(std::io::Error),
    #[error("this host has no cgroup cpu controller")]
    NoCpuController,
    #[error("cannot cap the VM's CPU time through {dir}: {source}")]
    Cgroup {
        dir: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// virtio-blk serial (at most 20 bytes): how the agent finds the disk.
    pub serial: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub id: String,
    /// The VM's state directory: sockets, console log, pid file.
    pub dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disks: Vec<DiskConfig>,
    pub boot_timeout: Duration,
    /// Rate limits applied to every disk.
    pub disk_limits: crate::spec::DiskLimits,
    /// The network device and its backend.
    pub net: net::VmNet,
    /// Host directories and files shared with the guest (virtio-fs).
    pub share: share::VmShare,
}

impl VmConfig {
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// The VM drivers hyperd knows.
#[derive(Debug, Clone)]
pub enum Driver {
    Vmm(hyper_vmm::VmmDriver),
    Qemu(qemu::QemuDriver),
    /// VMs without a guest, for the engine's unit tests.
    #[cfg(any(test, feature = "fake-vm"))]
    Fake(fake::FakeDriver),
}

impl Driver {
    /// Picks the driver from the setting: `hyper-vmm`, `qemu`, or `auto`, which is
    /// hyper-vmm wherever KVM runs guests on the CPU (`/dev/kvm` and VT-x/AMD-V) and
    /// qemu otherwise. On hosts whose KVM emulates guest ring 0 hyper-vmm works but boots
    /// slower than qemu's TCG (docs/decisions.md), so `auto` takes qemu there.
    pub fn select(setting: &str, accel: &str) -> Result<Driver, SetupError> {
        match setting {
            "hyper-vmm" => Ok(Driver::Vmm(hyper_vmm::VmmDriver::new()?)),
            "qemu" => Ok(Driver::Qemu(qemu::QemuDriver::new(accel)?)),
            "auto" if host::kvm_usable() && host::cpu_has_hw_virt() => {
                match hyper_vmm::VmmDriver::new() {
                    Ok(d) => Ok(Driver::Vmm(d)),
                    Err(e) => {
                        tracing::warn!("hyper-vmm unavailable ({e}); using qemu");
                        Ok(Driver::Qemu(qemu::QemuDriver::new(accel)?))
                    }
                }
            }
            "auto" => Ok(Driver::Qemu(qemu::QemuDriver::new(accel)?)),
            other => Err(SetupError::UnknownDriver(other.to_string())),
        }
    }

    /// `hyper-vmm`, `qemu-tcg`, `qemu-kvm`: shown in `/info`.
    pub fn describe(&self) -> String {
        match self {
            Driver::Vmm(_) => "hyper-vmm".to_string(),
            Driver::Qemu(q) => format!("qemu-{}", q.accel.as_str()),
            #[cfg(any(test, feature = "fake-vm"))]
            Driver::Fake(_) => "fake".to_string(),
        }
    }

    /// Whether the driver gives VMs a network device (both real drivers have virtio-net;
    /// the fake VM has none).
    pub fn has_network(&self) -> bool {
        match self {
            Driver::Vmm(_) | Driver::Qemu(_) => true,
            #[cfg(any(test, feature = "fake-vm"))]
            Driver::Fake(_) => false,
        }
    }

    /// Whether the driver can share host directories with VMs (virtio-fs on a
    /// virtiofsd: both drivers can; the fake VM cannot).
    pub fn has_shared_dirs(&self) -> bool {
        match self {
            Driver::Vmm(_) | Driver::Qemu(_) => true,
            #[cfg(any(test, feature = "fake-vm"))]
            Driver::Fake(_) => false,
        }
    }

    /// How many virtio devices a VM of the driver can have: qemu's microvm has 8
    /// virtio-mmio transports without its second I/O APIC (which needs ACPI); hyper-vmm
    /// has a window and an interrupt line for each up to the I/O APIC's last pin.
    pub fn max_devices(&self) -> usize {
        match self {
            Driver::Qemu(_) => 8,
            Driver::Vmm(_) => 16,
            #[cfg(any(test, feature = "fake-vm"))]
            Driver::Fake(_) => 16,
        }
    }

    /// Boots a VM and returns once its agent answered.
    pub async fn boot(&self, cfg: &VmConfig) -> Result<RunningVm, VmError> {
        match self {
            Driver::Vmm(v) => v.boot(cfg).await,
            Driver::Qemu(q) => q.boot(cfg).await,
            #[cfg(any(test, feature = "fake-vm"))]
            Driver::Fake(f) => f.boot(cfg).await,
        }
    }
}

/// What both drivers do to boot: listen on `<vm dir>/agent.sock`, start the VM process
/// (`cmd`, output into `<vm dir>/<log>`, its own process group), run `setup` (the
/// driver's own steps once the process is there), then wait until the agent answers a
/// ping. On any failure the process is killed and reaped.
pub(crate) async fn launch<F>(
    cfg: &VmConfig,
    mut cmd: tokio::process::Command,
    log: &str,
    control: ControlSocket,
    setup: F,
) -> Result<RunningVm, VmError>
where
    F: std::future::Future<Output = Result<(), VmError>>,
{
    std::fs::create_dir_all(&cfg.dir)?;
    let sock = cfg.dir.join("agent.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)?;
    let log_path = cfg.dir.join(log);
    let log = std::fs::File::create(&log_path)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for the daemon does not reach the VM.
        .process_group(0)
        .kill_on_drop(false);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .map_err(|e| VmError::Launch(format!("{program}: {e}")))?;
    let pid = child.id().unwrap_or(0);
    std::fs::write(cfg.dir.join("pid"), pid.to_string())?;
    let handle = match VmHandle::spawned(&cfg.id, &cfg.dir, child, Some(control)) {
        Ok(h) => std::sync::Arc::new(h),
        Err(e) => {
            drop(listener);
            let _ = std::fs::remove_file(&sock);
            return Err(e);
        }
    };
    let boot = async {
        setup.await?;
        let (stream, _) = listener.accept().await?;
        let (agent, events) = agent::AgentClient::new(stream);
        agent
            .call(hyperd_agent::protocol::Op::Ping, cfg.boot_timeout)
            .await?;
        Ok::<_, VmError>((agent, events))
    };
    let result = tokio::select! {
        r = tokio::time::timeout(cfg.boot_timeout + Duration::from_secs(5), boot) => match r {
            Ok(r) => r,
            Err(_) => Err(VmError::BootTimeout(cfg.boot_timeout, cfg.console_log())),
        },
        _ = handle.wait() => Err(VmError::DiedDuringBoot(log_tail(&log_path))),
    };
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    match result {
        Ok((agent, events)) => Ok(RunningVm {
            handle,
            agent,
            events,
        }),
        Err(e) => {
            handle.kill();
            handle.wait().await;
            Err(e)
        }
    }
}

/// The last lines of a monitor's log, for an error that outlives the VM's directory.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(600)..]).into_owned();
    let tail = tail.trim();
    if tail.is_empty() {
        format!("{} is empty", path.display())
    } else {
        tail.to_string()
    }
}

/// After the monitor started (`result`): fails the boot, killing the VM, if a helper it
/// needs (passt, virtiofsd) has quit meanwhile.
pub(crate) async fn check_helpers(
    cfg: &VmConfig,
    backend: Option<net::Backend>,
    result: Result<RunningVm, VmError>,
) -> Result<RunningVm, VmError> {
    let vm = result?;
    let helpers = backend
        .map_or(Ok(()), |b| b.check_running())
        .and_then(|()| {
            if cfg.share.is_empty() {
                Ok(())
            } else {
                share::check_running(&cfg.dir)
            }
        });
    match helpers {
        Ok(()) => Ok(vm),
        Err(e) => {
            vm.handle.kill();
            vm.handle.wait().await;
            Err(e)
        }
    }
}

/// Stops a VM's helper processes that are still there (its network backend, its
/// virtiofsd): they quit with their VM on their own; this covers a VM that never
/// connected, and leftovers.
pub(crate) fn stop_helpers(dir: &std::path::Path) {
    net::stop_backend(dir);
    netns::detach(dir);
    share::stop(dir);
}

/// A booted VM: its handle and its agent.
pub struct RunningVm {
    pub handle: std::sync::Arc<VmHandle>,
    pub agent: agent::AgentClient,
    pub events: tokio::sync::mpsc::Receiver<agent::AgentEvent>,
}
