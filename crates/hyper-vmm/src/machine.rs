//! One micro-VM assembled from the parts: KVM VM with the in-kernel interrupt controllers
//! and PIT, guest memory, the kernel and initramfs loaded for the 64-bit boot protocol,
//! the legacy devices on port I/O, virtio-mmio devices (announced on the command line),
//! and the vCPU threads that run it until the guest powers off or resets.
use super::boot::{self, LoadedInitrd};
use super::cpu;
use super::kvm::KvmVm;
use super::legacy::{Flag, LegacyDevices, PioBus};
use super::mmio::{MmioTransport, VirtioDevice};
use super::mptable;
use super::vhost_user_fs::VhostUserFs;
use super::virtio_blk::{Backend, Block, SECTOR_SIZE};
use super::virtio_console::{AgentPort, Console};
use super::virtio_net::{FdLink, Net};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The virtio-mmio windows: 4 KiB each from here, IRQ 5 onwards.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_WINDOW: u64 = 0x1000;
pub const FIRST_IRQ: u32 = 5;
const SERIAL_IRQ: u32 = 4;
/// Guest RAM must end below the MMIO hole.
pub const MAX_MEM_MIB: u64 = MMIO_BASE >> 20;

pub use hyper_vmm_api::config::{DiskConfig, MachineConfig};

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Kvm(#[from] super::kvm::KvmError),
    #[error("KVM: {0}")]
    Ioctl(#[from] kvm_ioctls::Error),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error("{0}")]
    Config(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Fs(#[from] super::vhost_user_fs::FsError),
}

/// A device whose queues a rate limiter can hold back: a timer thread takes them up again.
pub trait Throttled: VirtioDevice + Send + 'static {
    /// When the device wants to look at its queues again, if it is waiting.
    fn throttled_until(&self) -> Option<std::time::Instant>;
    /// Takes the queues up again; answers whether buffers were used.
    fn retry(&mut self) -> bool;
}

impl Throttled for Block {
    fn throttled_until(&self) -> Option<std::time::Instant> {
        self.throttled_until
    }
    fn retry(&mut self) -> bool {
        self.process_queue(0)
    }
}

impl Throttled for Net {
    fn throttled_until(&self) -> Option<std::time::Instant> {
        self.throttled_until
    }
    fn retry(&mut self) -> bool {
        Net::retry(self)
    }
}

/// A device in an MMIO window.
trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A virtio device on its transport, with its interrupt line.
pub struct VirtioSlot<D: VirtioDevice> {
    pub transport: MmioTransport<D>,
    irq: EventFd,
}

impl<D: VirtioDevice> VirtioSlot<D> {
    /// Runs an outside event on the device and interrupts the guest if it used buffers.
    pub fn device_event(&mut self, f: impl FnOnce(&mut D) -> bool) {
        if self.transport.device_event(f) {
            let _ = self.irq.write(1);
        }
    }
}

impl<D: VirtioDevice + Send> MmioDevice for VirtioSlot<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.transport.write(offset, data);
        if self.transport.process_notifications() {
            let _ = self.irq.write(1);
        }
    }
}

/// Where the vCPUs' exits go.
struct Bus {
    legacy: Mutex<LegacyDevices>,
    mmio: Vec<Arc<Mutex<dyn MmioDevice>>>,
}

impl Bus {
    fn mmio(&self, addr: u64) -> Option<(&Arc<Mutex<dyn MmioDevice>>, u64)> {
        let offset = addr.checked_sub(MMIO_BASE)?;
        let dev = self.mmio.get((offset / MMIO_WINDOW) as usize)?;
        Some((dev, offset % MMIO_WINDOW))
    }
}

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The guest reset or powered off (hyperd's guests do so to stop).
    Stopped,
    /// KVM could not run the guest on: the reason, for the log.
    Failed(String),
}

/// vCPU pause handshake: the control socket sets `paused`, kicks the threads out of
/// KVM_RUN with a signal and waits until all of them are parked.
#[derive(Default)]
struct PauseGate {
    paused: AtomicBool,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Machine {
    vm: KvmVm,
    vcpus: Vec<VcpuFd>,
    bus: Arc<Bus>,
    pub agent: Option<Arc<Mutex<VirtioSlot<Console>>>>,
    limited_disks: Vec<Arc<Mutex<VirtioSlot<Block>>>>,
    shared_dirs: Vec<Arc<Mutex<VirtioSlot<VhostUserFs>>>>,
    net: Option<NetSlot>,
    agent_socket: Option<PathBuf>,
    pub ending: Arc<(Mutex<Option<Ending>>, Condvar)>,
    gate: Arc<PauseGate>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn vcpu_kick_signal() -> i32 {
    libc::SIGRTMIN()
}

/// Makes a vCPU thread leave KVM_RUN (it returns EINTR and the run loop looks at the
/// pause gate).
fn kick(thread: libc::pthread_t) {
    // SAFETY: vCPU threads are never joined or detached while the process runs, so the
    // handle names a live thread; `Machine::start` installed a handler for the signal
    // before starting them.
    unsafe { libc::pthread_kill(thread, vcpu_kick_signal()) };
}

/// The command line hyperd adds for its devices: one `virtio_mmio.device=` per window.
pub fn device_cmdline(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                " virtio_mmio.device=4K@{:#x}:{}",
                MMIO_BASE + i as u64 * MMIO_WINDOW,
                FIRST_IRQ + i as u32
            )
        })
        .collect()
}

/// The virtio devices of a machine, in MMIO window order.
#[derive(Default)]
struct Devices {
    mmio: Vec<Arc<Mutex<dyn MmioDevice>>>,
    /// Disks with a rate limit, whose throttled queues a timer retries.
    limited_disks: Vec<Arc<Mutex<VirtioSlot<Block>>>>,
    agent: Option<Arc<Mutex<VirtioSlot<Console>>>>,
    /// virtio-fs devices, whose backends' signals a thread turns into interrupts.
    shared_dirs: Vec<Arc<Mutex<VirtioSlot<VhostUserFs>>>>,
    net: Option<NetSlot>,
}

/// The virtio-net device and its backend's descriptor (read by a thread once started).
struct NetSlot {
    slot: Arc<Mutex<VirtioSlot<Net>>>,
    fd: Arc<std::os::fd::OwnedFd>,
    framing: hyper_vmm_api::config::NetFraming,
}

impl Devices {
    /// An interrupt line for the next MMIO window.
    fn next_irq(&self, vm: &KvmVm) -> Result<EventFd, MachineError> {
        let evt =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MachineError::Io("eventfd".into(), e))?;
        vm.fd
            .register_irqfd(&evt, FIRST_IRQ + self.mmio.len() as u32)?;
        Ok(evt)
    }
}

/// Step 1: the configuration is one this VMM can build.
fn check_config(cfg: &MachineConfig) -> Result<(), MachineError> {
    if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_VCPUS {
        return Err(MachineError::Config(format!(
            "{} vCPUs asked: 1 to {} are possible",
            cfg.vcpus,
            mptable::MAX_VCPUS
        )));
    }
    if !(16..=MAX_MEM_MIB).contains(&cfg.mem_mib) {
        return Err(MachineError::Config(format!(
            "memory must be 16 to {MAX_MEM_MIB} MiB, not {}",
            cfg.mem_mib
        )));
    }
    Ok(())
}

/// Step 2: the KVM VM with its memory, in-kernel interrupt controllers and PIT; answers
/// the CPUID KVM supports, for the vCPUs.
fn create_vm(cfg: &MachineConfig) -> Result<(KvmVm, kvm_bindings::CpuId), MachineError> {
    // A vhost-user backend maps guest memory: then it must be a shared memfd.
    let vm = KvmVm::new((cfg.mem_mib << 20) as usize, !cfg.shared_dirs.is_empty())?;
    let supported = vm.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    vm.fd.set_tss_address(0xfffb_d000)?;
    vm.fd.create_irq_chip()?;
    vm.fd.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;
    Ok((vm, supported))
}

/// Step 3: one virtio-blk device per disk, with its rate limits.
fn attach_disks(
    vm: &KvmVm,
    cfg: &MachineConfig,
    devices: &mut Devices,
) -> Result<(), MachineError> {
    for (i, d) in cfg.disks.iter().enumerate() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .open(&d.path)
            .map_err(|e| MachineError::Io(d.path.display().to_string(), e))?;
        let len = file
            .metadata()
            .map_err(|e| MachineError::Io(d.path.display().to_string(), e))?
            .len();
        let backend = Backend {
            file,
            sectors: len / SECTOR_SIZE,
            read_only: d.read_only,
            serial: if d.serial.is_empty() {
                format!("hyperd-disk{i}")
            } else {
                d.serial.clone()
            },
        };
        let block = Block::new(backend, vm.mem.clone()).with_limits(d.read_limit, d.write_limit);
        let limited = block.is_limited();
        let slot = Arc::new(Mutex::new(VirtioSlot {
            transport: MmioTransport::new(block),
            irq: devices.next_irq(vm)?,
        }));
        if limited {
            devices.limited_disks.push(slot.clone());
        }
        devices.mmio.push(slot);
    }
    Ok(())
}

/// Step 3b: one virtio-fs device per shared directory, its backend connected.
fn attach_shared_dirs(
    vm: &KvmVm,
    cfg: &MachineConfig,
    devices: &mut Devices,
) -> Result<(), MachineError> {
    for d in &cfg.shared_dirs {
        let fs = VhostUserFs::connect(&d.socket, &d.tag, vm.mem.clone())?;
        let slot = Arc::new(Mutex::new(VirtioSlot {
            transport: MmioTransport::new(fs),
            irq: devices.next_irq(vm)?,
        }));
        devices.mmio.push(slot.clone());
        devices.shared_dirs.push(slot);
    }
    Ok(())
}

/// Turns a virtio-fs backend's call eventfds into the device's interrupts, until the VM
/// ends.
fn forward_backend_calls(
    slot: Arc<Mutex<VirtioSlot<VhostUserFs>>>,
    ending: Arc<(Mutex<Option<Ending>>, Condvar)>,
) -> Result<(), MachineError> {
    let calls: Vec<EventFd> = slot
        .lock()
        .unwrap()
        .transport
        .device
        .calls
        .iter()
        .map(EventFd::try_clone)
        .collect::<Result<_, _>>()
        .map_err(|e| MachineError::Io("eventfd".into(), e))?;
    std::thread::Builder::new()
        .name("virtio-fs".into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            let mut fds: Vec<libc::pollfd> = calls
                .iter()
                .map(|c| libc::pollfd {
                    fd: c.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            while ending.0.lock().unwrap().is_none() {
                // SAFETY: poll reads and writes `fds.len()` pollfd records in `fds`,
                // which lives across the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
                if n <= 0 {
                    continue;
                }
                let mut signalled = false;
                for (i, p) in fds.iter_mut().enumerate() {
                    if p.revents & libc::POLLIN != 0 {
                        let _ = calls[i].read();
                        signalled = true;
                    }
                    p.revents = 0;
                }
                if signalled {
                    slot.lock().unwrap().device_event(|_| true);
                }
            }
        })
        .map_err(|e| MachineError::Io("virtio-fs thread".into(), e))?;
    Ok(())
}

/// Step 3c: the virtio-net device on the backend descriptor the daemon handed over.
fn attach_net(vm: &KvmVm, cfg: &MachineConfig, devices: &mut Devices) -> Result<(), MachineError> {
    let Some(n) = &cfg.net else {
        return Ok(());
    };
    let mac = super::virtio_net::parse_mac(&n.mac)
        .ok_or_else(|| MachineError::Config(format!("bad MAC {:?}", n.mac)))?;
    if n.fd <= 2 {
        return Err(MachineError::Config(format!(
            "network descriptor {} is not one of the inherited ones",
            n.fd
        )));
    }
    // SAFETY: F_GETFD on a descriptor number only reads its flags.
    if unsafe { libc::fcntl(n.fd, libc::F_GETFD) } < 0 {
        return Err(MachineError::Io(
            format!("network descriptor {}", n.fd),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the daemon passed this descriptor to this process for the network and
    // nothing else in the process owns it; it is open (checked above) and taken once,
    // when the machine is built.
    let fd =
        Arc::new(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n.fd) });
    let net = Net::new(
        vm.mem.clone(),
        mac,
        n.mtu,
        Box::new(FdLink::new(fd.clone(), n.framing)),
    )
    .with_limits(n.tx_limit, n.rx_limit);
    let slot = Arc::new(Mutex::new(VirtioSlot {
        transport: MmioTransport::new(net),
        irq: devices.next_irq(vm)?,
    }));
    devices.mmio.push(slot.clone());
    devices.net = Some(NetSlot {
        slot,
        fd,
        framing: n.framing,
    });
    Ok(())
}

/// Step 4: the virtio-console with the agent's port, when the daemon gave a socket.
fn attach_agent_port(
    vm: &KvmVm,
    cfg: &MachineConfig,
    devices: &mut Devices,
) -> Result<(), MachineError> {
    if cfg.agent_socket.is_none() {
        return Ok(());
    }
    let slot = Arc::new(Mutex::new(VirtioSlot {
        transport: MmioTransport::new(Console::new(
            vm.mem.clone(),
            vec![AgentPort::new(hyper_vmm_api::config::AGENT_PORT_NAME)],
        )),
        irq: devices.next_irq(vm)?,
    }));
    devices.mmio.push(slot.clone());
    devices.agent = Some(slot);
    Ok(())
}

/// Step 5: the legacy devices on port I/O (the 8250 into the console log, the i8042).
fn attach_legacy(vm: &KvmVm, cfg: &MachineConfig) -> Result<LegacyDevices, MachineError> {
    let serial_irq = Arc::new(
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MachineError::Io("eventfd".into(), e))?,
    );
    vm.fd.register_irqfd(&serial_irq, SERIAL_IRQ)?;
    let console: Box<dyn Write + Send> = match &cfg.console_log {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| MachineError::Io(p.display().to_string(), e))?,
        ),
        None => Box::new(std::io::sink()),
    };
    Ok(LegacyDevices::with_serial_irq(
        console,
        Flag::irq(serial_irq),
    ))
}

/// Step 6: the guest in memory: kernel, command line naming the devices, initramfs, MP
/// table, zero page. Answers the kernel's entry point.
fn load_guest(
    vm: &KvmVm,
    cfg: &MachineConfig,
    device_count: usize,
) -> Result<GuestAddress, MachineError> {
    let ram = cfg.mem_mib << 20;
    let mut cmdline = format!("{}{}", cfg.cmdline, device_cmdline(device_count));
    if hyper_vmm_api::host::kvm_emulates_ring0() {
        cmdline.push_str(hyper_vmm_api::host::EMULATED_RING0_CMDLINE);
    }
    let kernel = boot::load_kernel(&vm.mem, &cfg.kernel, &cmdline)?;
    let initrd: Option<LoadedInitrd> = match &cfg.initrd {
        Some(p) => Some(boot::load_initrd(&vm.mem, p, kernel.kernel_end, ram)?),
        None => None,
    };
    mptable::write(&vm.mem, cfg.vcpus).map_err(|e| MachineError::Config(e.to_string()))?;
    boot::write_zero_page(
        &vm.mem,
        GuestAddress(cpu::ZERO_PAGE_START),
        cmdline.len(),
        initrd,
        ram,
    )?;
    Ok(kernel.kernel_load)
}

/// Step 7: the vCPUs, the first one set up to enter the kernel.
fn create_vcpus(
    vm: &KvmVm,
    cfg: &MachineConfig,
    supported: &kvm_bindings::CpuId,
    entry: GuestAddress,
) -> Result<Vec<VcpuFd>, MachineError> {
    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        let vcpu = vm.fd.create_vcpu(u64::from(id))?;
        cpu::setup_vcpu(&vcpu, id, cfg.vcpus, supported)?;
        if id == 0 {
            cpu::setup_boot_vcpu(&vcpu, &vm.mem, entry.0)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

impl Machine {
    /// Builds a machine in named steps (as Firecracker's `builder.rs`): check the
    /// configuration, create the KVM VM, attach the disks, the agent port and the legacy
    /// devices, load the guest, create the vCPUs. Nothing runs until [`Machine::start`].
    pub fn new(cfg: &MachineConfig) -> Result<Machine, MachineError> {
        check_config(cfg)?;
        let (vm, supported) = create_vm(cfg)?;
        let mut devices = Devices::default();
        attach_disks(&vm, cfg, &mut devices)?;
        attach_shared_dirs(&vm, cfg, &mut devices)?;
        attach_net(&vm, cfg, &mut devices)?;
        attach_agent_port(&vm, cfg, &mut devices)?;
        let legacy = attach_legacy(&vm, cfg)?;
        let entry = load_guest(&vm, cfg, devices.mmio.len())?;
        let vcpus = create_vcpus(&vm, cfg, &supported, entry)?;
        Ok(Machine {
            vm,
            vcpus,
            bus: Arc::new(Bus {
                legacy: Mutex::new(legacy),
                mmio: devices.mmio,
            }),
            agent: devices.agent,
            limited_disks: devices.limited_disks,
            shared_dirs: devices.shared_dirs,
            net: devices.net,
            agent_socket: cfg.agent_socket.clone(),
            ending: Arc::new((Mutex::new(None), Condvar::new())),
            gate: Arc::new(PauseGate::default()),
            threads: Vec::new(),
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.vm.mem
    }

    /// Starts the vCPU threads and the agent channel.
    pub fn start(&mut self) -> Result<(), MachineError> {
        // SAFETY: the handler is an empty `extern "C"` function: it only exists so the
        // signal interrupts KVM_RUN (EINTR) instead of killing the process.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = kick_handler as *const () as usize;
            libc::sigaction(vcpu_kick_signal(), &act, std::ptr::null_mut());
        }
        for disk in &self.limited_disks {
            retry_throttled(disk.clone(), self.ending.clone());
        }
        for fs in &self.shared_dirs {
            forward_backend_calls(fs.clone(), self.ending.clone())?;
        }
        if let Some(n) = &self.net {
            if n.slot.lock().unwrap().transport.device.is_limited() {
                retry_throttled(n.slot.clone(), self.ending.clone());
            }
            super::virtio_net::connect_backend(
                n.slot.clone(),
                n.fd.clone(),
                n.framing,
                self.ending.clone(),
            )
            .map_err(|e| MachineError::Io("network thread".into(), e))?;
        }
        if let (Some(slot), Some(path)) = (&self.agent, &self.agent_socket) {
            super::virtio_console::connect_host(slot.clone(), path.clone());
        }
        for (id, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let bus = self.bus.clone();
            let ending = self.ending.clone();
            let gate = self.gate.clone();
            let mem = self.vm.mem.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let end = run_vcpu(vcpu, &bus, &gate, &mem);
                    let (lock, cv) = &*ending;
                    let mut e = lock.lock().unwrap();
                    e.get_or_insert(end);
                    cv.notify_all();
                })
                .map_err(|e| MachineError::Io("vCPU thread".into(), e))?;
            self.threads.push(t);
        }
        start_sampler(
            self.threads
                .iter()
                .map(std::os::unix::thread::JoinHandleExt::as_pthread_t)
                .collect(),
        );
        Ok(())
    }

    /// Stops the vCPUs at their next exit and waits until they are parked.
    pub fn pause(&self) {
        self.gate.paused.store(true, Ordering::SeqCst);
        while self.gate.parked.load(Ordering::SeqCst) < self.threads.len() {
            if self.ended().is_some() {
                return;
            }
            for t in &self.threads {
                kick(std::os::unix::thread::JoinHandleExt::as_pthread_t(t));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    pub fn resume(&self) {
        let _g = self.gate.lock.lock().unwrap();
        self.gate.paused.store(false, Ordering::SeqCst);
        self.gate.wake.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.gate.paused.load(Ordering::SeqCst)
    }

    pub fn ended(&self) -> Option<Ending> {
        self.ending.0.lock().unwrap().clone()
    }

    /// Blocks until the guest ends.
    pub fn wait(&self) -> Ending {
        let (lock, cv) = &*self.ending;
        let mut e = lock.lock().unwrap();
        loop {
            if let Some(end) = e.clone() {
                return end;
            }
            e = cv.wait(e).unwrap();
        }
    }
}

/// Takes up the queues of a rate-limited device again when its limiter allows.
fn retry_throttled<D: Throttled>(
    disk: Arc<Mutex<VirtioSlot<D>>>,
    ending: Arc<(Mutex<Option<Ending>>, Condvar)>,
) {
    std::thread::spawn(move || {
        while ending.0.lock().unwrap().is_none() {
            let due = disk.lock().unwrap().transport.device.throttled_until();
            let now = std::time::Instant::now();
            match due {
                Some(t) if t <= now => disk.lock().unwrap().device_event(|b| b.retry()),
                Some(t) => std::thread::sleep((t - now).min(std::time::Duration::from_millis(10))),
                None => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
}

/// `HYPER_VMM_SAMPLE_MS=n`: every n ms the vCPUs are kicked out of KVM_RUN and print
/// where the guest was (for following a slow or stuck guest; resolve with `nm vmlinux`).
fn sampling() -> bool {
    std::env::var_os("HYPER_VMM_SAMPLE_MS").is_some()
}

fn start_sampler(threads: Vec<libc::pthread_t>) {
    let Some(ms) = std::env::var("HYPER_VMM_SAMPLE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(ms.max(1)));
        threads.iter().for_each(|t| kick(*t));
    });
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn run_vcpu(mut vcpu: VcpuFd, bus: &Bus, gate: &PauseGate, mem: &GuestMemoryMmap) -> Ending {
    loop {
        if gate.paused.load(Ordering::SeqCst) {
            let mut g = gate.lock.lock().unwrap();
            gate.parked.fetch_add(1, Ordering::SeqCst);
            while gate.paused.load(Ordering::SeqCst) {
                g = gate.wake.wait(g).unwrap();
            }
            gate.parked.fetch_sub(1, Ordering::SeqCst);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if bus.legacy.lock().unwrap().write(port, data) {
                    return Ending::Stopped;
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => bus.legacy.lock().unwrap().read(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => match bus.mmio(addr) {
                Some((dev, off)) => dev.lock().unwrap().read(off, data),
                None => data.fill(0),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((dev, off)) = bus.mmio(addr) {
                    dev.lock().unwrap().write(off, data);
                }
            }
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::SystemEvent(..)) => return Ending::Stopped,
            Ok(VcpuExit::Hlt) => return Ending::Stopped,
            Ok(other) => {
                let what = format!("{other:?}");
                return Ending::Failed(with_rip(what, &vcpu, mem));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                if sampling() {
                    if let Ok(r) = vcpu.get_regs() {
                        let cs = vcpu.get_sregs().map(|s| s.cs.selector).unwrap_or(0);
                        eprintln!("hyper-vmm: sample rip {:#x} cs {cs:#x}", r.rip);
                    }
                }
            }
            Err(e) => return Ending::Failed(format!("KVM_RUN: {e}")),
        }
    }
}

/// An exit KVM could not handle, with the guest's instruction pointer and the code bytes
/// there (KVM's emulation failures name no instruction: these do).
fn with_rip(exit: String, vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> String {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    let cr3 = vcpu.get_sregs().map(|s| s.cr3).unwrap_or(0);
    let code = translate(mem, cr3, rip)
        .and_then(|pa| {
            let mut b = [0u8; 16];
            mem.read_slice(&mut b, GuestAddress(pa)).ok().map(|_| b)
        })
        .map(|b| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unreadable".into());
    format!("{exit} at rip {rip:#x} (code: {code})")
}

/// Walks the guest's 4-level page tables from `cr3` for `va`.
fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR;
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let index = (va >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        // 1 GiB and 2 MiB pages end the walk early.
        if (level == 1 || level == 2) && entry & 0x80 != 0 {
            let page = (1u64 << shift) - 1;
            return Some((entry & ADDR & !page) | (va & page));
        }
        table = entry & ADDR;
    }
    Some(table | (va & 0xfff))
}
