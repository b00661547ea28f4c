//! One running VM, whatever its driver: the engine's only way to act on a VM besides its
//! agent. `boot` returns a handle, [`VmHandle::adopt`] gives one back after a daemon
//! restart. The handle pauses, resumes, stops and queries the VM through its VMM's
//! control socket (hyper-vmm's `vmm.sock`, qemu's QMP `qmp.sock`), and kills and waits
//! for the VM process through a pidfd, so no signal can reach a recycled pid.
use super::hyper_vmm::Control;
use super::qmp::Qmp;
use super::VmError;
use hyper_vmm_api::control::{Request, VmState};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How a VM's monitor is driven.
#[derive(Debug, Clone)]
pub enum ControlSocket {
    /// hyper-vmm's control socket (`hyper_vmm_api::control`).
    Vmm(PathBuf),
    /// qemu's QMP socket.
    Qmp(PathBuf),
}

impl ControlSocket {
    /// The control socket a VM directory holds, if any.
    fn find(dir: &Path) -> Option<ControlSocket> {
        let vmm = dir.join("vmm.sock");
        let qmp = dir.join("qmp.sock");
        if vmm.exists() {
            Some(ControlSocket::Vmm(vmm))
        } else if qmp.exists() {
            Some(ControlSocket::Qmp(qmp))
        } else {
            None
        }
    }
}

/// What a VM is doing, as its monitor tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    Running,
    Paused,
    /// The process is gone, or its monitor says the guest stopped.
    Stopped,
}

/// The host's view of a VM process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Resident memory of the VM process (guest RAM it touched and the monitor's own).
    pub rss_bytes: u64,
    /// CPU time of the VM process (all vCPUs and device threads), in nanoseconds.
    pub cpu_ns: u64,
}

/// The VM process: a child of this daemon, or one adopted from a previous daemon
/// (followed through its pidfd, since only a parent can reap it).
enum Process {
    Child(tokio::process::Child),
    Adopted(AsyncFd<OwnedFd>),
}

pub struct VmHandle {
    id: String,
    dir: PathBuf,
    pid: u32,
    backend: Backend,
}

/// What a handle drives: a VM process, or (in the engine's unit tests) a fake VM.
#[cfg_attr(any(test, feature = "fake-vm"), allow(clippy::large_enum_variant))]
enum Backend {
    Process {
        /// Refers to the process itself, not its number: kills never hit a recycled pid.
        pidfd: OwnedFd,
        control: Option<ControlSocket>,
        process: tokio::sync::Mutex<Process>,
    },
    #[cfg(any(test, feature = "fake-vm"))]
    Fake(std::sync::Arc<super::fake::FakeVm>),
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether a process is still there (and not a zombie of ours).
pub fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(')') {
        Some((_, rest)) => !rest.trim_start().starts_with('Z'),
        None => false,
    }
}

/// When a process started (clock ticks after boot, `/proc/<pid>/stat` field 22): with
/// the pid, it names one process for good.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command start at field 3; the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records a helper process (a VM's network backend) as `<pid> <start time>` in
/// `<dir>/<pid_file>`.
pub(crate) fn record_helper(dir: &Path, pid_file: &str, pid: u32) -> std::io::Result<()> {
    let start = process_start_time(pid).unwrap_or(0);
    std::fs::write(dir.join(pid_file), format!("{pid} {start}"))
}

/// A pidfd on the helper recorded in `<dir>/<pid_file>` if it is still the same process
/// (a reused pid is not it).
fn recorded_helper(dir: &Path, pid_file: &str) -> Option<OwnedFd> {
    let text = std::fs::read_to_string(dir.join(pid_file)).unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (Some(Some(pid)), Some(Some(start))) = (it.next(), it.next()) else {
        return None;
    };
    let pid = pid as u32;
    // Opened before the check, so the check is about the process the fd holds.
    let pidfd = pidfd_open(pid).ok()?;
    // A zombie (exited, not yet reaped) has no start time left to match.
    let alive = process_start_time(pid) == Some(start)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
    alive.then_some(pidfd)
}

/// Kills the helper recorded in `<dir>/<pid_file>` if it is still the same process (a
/// reused pid is left alone). Whether it was there.
pub(crate) fn kill_helper(dir: &Path, pid_file: &str) -> bool {
    recorded_helper(dir, pid_file).is_some_and(|fd| sigkill(&fd))
}

/// Whether the helper recorded in `<dir>/<pid_file>` still runs.
pub(crate) fn helper_alive(dir: &Path, pid_file: &str) -> bool {
    recorded_helper(dir, pid_file).is_some()
}

/// SIGKILL to the process a pidfd holds; whether it was sent.
fn sigkill(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal reads only its integer arguments; the pidfd is open for
    // the call, and a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Whether `pid` is a VM process started for the VM directory `dir` (its command line
/// names the directory).
fn is_vm_of(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
}

impl VmHandle {
    /// The handle of a VM process this daemon just spawned.
    pub(crate) fn spawned(
        id: &str,
        dir: &Path,
        child: tokio::process::Child,
        control: Option<ControlSocket>,
    ) -> Result<VmHandle, VmError> {
        let pid = child
            .id()
            .ok_or_else(|| VmError::Launch("the VM process exited at once".into()))?;
        Ok(VmHandle {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            pid,
            backend: Backend::Process {
                pidfd: pidfd_open(pid)?,
                control,
                process: tokio::sync::Mutex::new(Process::Child(child)),
            },
        })
    }

    /// Takes over a VM a previous daemon started in `dir`, as process `pid`, if that
    /// process is still there and is that VM's (`VmError::Gone` otherwise). Its control
    /// socket is found in the directory.
    pub fn adopt(id: &str, dir: &Path, pid: u32) -> Result<VmHandle, VmError> {
        if pid <= 1 || !process_alive(pid) || !is_vm_of(pid, dir) {
            return Err(VmError::Gone(id.to_string()));
        }
        let pidfd = pidfd_open(pid)?;
        // The pid could have been reused between the checks and pidfd_open: check again
        // now that the descriptor pins the process.
        if !is_vm_of(pid, dir) {
            return Err(VmError::Gone(id.to_string()));
        }
        let watch = pidfd.try_clone()?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same fd until
        // the AsyncFd is dropped.
        let watch = unsafe { AsyncFd::register(watch) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(VmHandle {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            pid,
            backend: Backend::Process {
                pidfd,
                control: ControlSocket::find(dir),
                process: tokio::sync::Mutex::new(Process::Adopted(watch)),
            },
        })
    }

    /// The handle of a fake VM (engine unit tests).
    #[cfg(any(test, feature = "fake-vm"))]
    pub(crate) fn fake(id: &str, dir: &Path, vm: std::sync::Arc<super::fake::FakeVm>) -> VmHandle {
        VmHandle {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            pid: 0,
            backend: Backend::Fake(vm),
        }
    }

    /// Kills the VM process a previous daemon left in `dir` (its `pid` file), if it is
    /// still there and is that VM's; answers whether one was killed.
    pub fn kill_leftover(dir: &Path) -> bool {
        let pid = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match pid.map(|pid| VmHandle::adopt(&id, dir, pid)) {
            Some(Ok(vm)) => {
                vm.kill();
                true
            }
            _ => false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VM process's number, for display (`vmPid`, Docker's `State.Pid`) and the
    /// state store; nothing is signalled through it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Freezes the guest's vCPUs.
    pub async fn pause(&self) -> Result<(), VmError> {
        #[cfg(any(test, feature = "fake-vm"))]
        if let Backend::Fake(vm) = &self.backend {
            return vm.set_paused(true);
        }
        match self.control()? {
            ControlSocket::Vmm(p) => self.vmm_call(p, &Request::Pause).await.map(drop),
            ControlSocket::Qmp(p) => Qmp::connect(p).await?.execute("stop").await.map(drop),
        }
    }

    /// Lets a paused guest run again.
    pub async fn resume(&self) -> Result<(), VmError> {
        #[cfg(any(test, feature = "fake-vm"))]
        if let Backend::Fake(vm) = &self.backend {
            return vm.set_paused(false);
        }
        match self.control()? {
            ControlSocket::Vmm(p) => self.vmm_call(p, &Request::Resume).await.map(drop),
            ControlSocket::Qmp(p) => Qmp::connect(p).await?.execute("cont").await.map(drop),
        }
    }

    /// What the VM's monitor says it is doing.
    pub async fn status(&self) -> Result<VmStatus, VmError> {
        #[cfg(any(test, feature = "fake-vm"))]
        if let Backend::Fake(vm) = &self.backend {
            return Ok(vm.status());
        }
        if !process_alive(self.pid) {
            return Ok(VmStatus::Stopped);
        }
        match self.control()? {
            ControlSocket::Vmm(p) => {
                let r = self.vmm_call(p, &Request::Status).await?;
                Ok(match r.state {
                    Some(VmState::Paused) => VmStatus::Paused,
                    Some(VmState::Running | VmState::Created | VmState::Empty) => VmStatus::Running,
                    Some(VmState::Stopped) | None => VmStatus::Stopped,
                })
            }
            ControlSocket::Qmp(p) => {
                let s = Qmp::connect(p).await?.query_status().await?;
                Ok(match (s.running, s.status.as_str()) {
                    (true, _) => VmStatus::Running,
                    (false, "paused") => VmStatus::Paused,
                    (false, _) => VmStatus::Stopped,
                })
            }
        }
    }

    /// Ends the VM through its monitor (hyper-vmm `stop`, QMP `quit`) and waits for the
    /// process to go, killing it past `within`. The guest is not asked: powering off
    /// cleanly is the agent's `shutdown`, which the engine tries first.
    pub async fn stop(&self, within: Duration) {
        let ask = async {
            #[cfg(any(test, feature = "fake-vm"))]
            if let Backend::Fake(vm) = &self.backend {
                return vm.monitor_stop();
            }
            match self.control()? {
                ControlSocket::Vmm(p) => self.vmm_call(p, &Request::Stop).await.map(drop),
                ControlSocket::Qmp(p) => Qmp::connect(p).await?.execute("quit").await.map(drop),
            }
        };
        let asked = tokio::time::timeout(within, ask).await;
        if !matches!(asked, Ok(Ok(()))) || tokio::time::timeout(within, self.wait()).await.is_err()
        {
            tracing::warn!(vm = %self.id, "the VM did not stop through its monitor; killing it");
            self.kill();
            self.wait().await;
        }
    }

    /// SIGKILL to the VM process, through its pidfd.
    pub fn kill(&self) {
        match &self.backend {
            Backend::Process { pidfd, .. } => {
                sigkill(pidfd);
            }
            #[cfg(any(test, feature = "fake-vm"))]
            Backend::Fake(vm) => vm.kill(),
        }
    }

    /// Waits until the VM process has exited (cancel-safe); describes how.
    pub async fn wait(&self) -> String {
        let process = match &self.backend {
            Backend::Process { process, .. } => process,
            #[cfg(any(test, feature = "fake-vm"))]
            Backend::Fake(vm) => return vm.wait().await,
        };
        let mut p = process.lock().await;
        match &mut *p {
            Process::Child(c) => format!("{:?}", c.wait().await),
            Process::Adopted(fd) => {
                let _ = fd.readable().await;
                format!("adopted VM process {} exited", self.pid)
            }
        }
    }

    /// Whether the VM process is still there.
    pub fn is_alive(&self) -> bool {
        match &self.backend {
            Backend::Process { .. } => process_alive(self.pid),
            #[cfg(any(test, feature = "fake-vm"))]
            Backend::Fake(vm) => vm.status() != VmStatus::Stopped,
        }
    }

    /// The VM process's memory and CPU time, from /proc.
    pub fn stats(&self) -> VmStats {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is the first, utime and
        // stime the 12th and 13th.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        VmStats {
            rss_bytes: rss_kib * 1024,
            cpu_ns: ticks * (1_000_000_000 / hz),
        }
    }

    /// Caps the VM process at `percent` of one CPU (a cgroup of its own).
    pub fn cap_cpu(&self, percent: u32) -> Result<(), super::SetupError> {
        super::host::cap_cpu(&self.id, self.pid, percent)
    }

    fn control(&self) -> Result<&ControlSocket, VmError> {
        let control = match &self.backend {
            Backend::Process { control, .. } => control,
            #[cfg(any(test, feature = "fake-vm"))]
            Backend::Fake(_) => &None,
        };
        control.as_ref().ok_or_else(|| {
            VmError::Control(format!(
                "VM {} has no control socket (started by an older hyperd)",
                self.id
            ))
        })
    }

    async fn vmm_call(
        &self,
        path: &Path,
        req: &Request,
    ) -> Result<hyper_vmm_api::control::Response, VmError> {
        let mut ctl = Control::connect(path, Duration::from_secs(2)).await?;
        tokio::time::timeout(Duration::from_secs(10), ctl.call(req))
            .await
            .map_err(|_| VmError::Control("hyper-vmm did not answer".into()))?
    }
}
