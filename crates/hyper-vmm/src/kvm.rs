//! A KVM virtual machine with its guest memory registered, through kvm-ioctls (as
//! Firecracker and Cloud Hypervisor do). The vCPUs' run loop is [`super::machine`]'s.
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("guest memory: {0}")]
    Memory(String),
}

pub struct KvmVm {
    // Declared before `mem`: the VM goes before the memory it maps.
    pub fd: VmFd,
    pub mem: GuestMemoryMmap,
    /// The /dev/kvm handle the VM was made with (also asked for the supported CPUID).
    pub kvm: Kvm,
}

/// `mem_bytes` of guest memory at guest physical address 0: anonymous, or with `shared`
/// a memfd mapped shared, which a vhost-user backend (virtiofsd) can map too.
pub fn guest_memory(mem_bytes: usize, shared: bool) -> Result<GuestMemoryMmap, KvmError> {
    let file = if shared {
        // SAFETY: memfd_create reads the NUL-terminated name; the new fd is owned below.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(KvmError::Memory(format!(
                "memfd_create: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(mem_bytes as u64)
            .map_err(|e| KvmError::Memory(format!("memfd size: {e}")))?;
        Some(vm_memory::FileOffset::new(file, 0))
    } else {
        None
    };
    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), mem_bytes, file)])
        .map_err(|e| KvmError::Memory(e.to_string()))
}

impl KvmVm {
    /// A VM with `mem_bytes` of guest memory at guest physical address 0 (shareable with
    /// a vhost-user backend when `shared`).
    pub fn new(mem_bytes: usize, shared: bool) -> Result<KvmVm, KvmError> {
        let kvm = Kvm::new()?;
        let fd = kvm.create_vm()?;
        let mem = guest_memory(mem_bytes, shared)?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| KvmError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: mem_bytes as u64,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `mem_bytes` owned by `mem`, which this
        // struct keeps for as long as the VM exists (and drops after the VM fd).
        unsafe { fd.set_user_memory_region(region)? };
        Ok(KvmVm { fd, mem, kvm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::{LegacyDevices, PioBus};
    use kvm_ioctls::{VcpuExit, VcpuFd};
    use vm_memory::Bytes;

    /// Why a vCPU stopped.
    #[derive(Debug, PartialEq, Eq)]
    enum Stop {
        Halted,
        Shutdown,
        /// The guest asked for a reset (i8042): the VM ends.
        Reset,
    }

    /// Runs a vCPU until it halts, shuts down or asks for a reset; its port I/O goes to `bus`.
    fn run_vcpu(vcpu: &mut VcpuFd, bus: &mut impl PioBus) -> Result<Stop, String> {
        loop {
            match vcpu.run().map_err(|e| e.to_string())? {
                VcpuExit::IoOut(port, data) => {
                    if bus.write(port, data) {
                        return Ok(Stop::Reset);
                    }
                }
                VcpuExit::IoIn(port, data) => bus.read(port, data),
                VcpuExit::Hlt => return Ok(Stop::Halted),
                VcpuExit::Shutdown => return Ok(Stop::Shutdown),
                other => return Err(format!("{other:?}")),
            }
        }
    }

    /// Collects what the guest writes to the console.
    #[derive(Clone, Default)]
    struct Console(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Console {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn real_mode_vm(code: &[u8]) -> (KvmVm, VcpuFd) {
        let vm = KvmVm::new(1 << 20, false).unwrap();
        vm.mem.write_slice(code, GuestAddress(0x1000)).unwrap();
        let vcpu = vm.fd.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        (vm, vcpu)
    }

    /// A real-mode guest writes to the 8250 console, then halts; another resets the VM
    /// through the i8042.
    #[test]
    fn guests_run_through_kvm_with_console_and_reset() {
        if !hyper_vmm_api::host::kvm_usable() {
            eprintln!("skipped: /dev/kvm is not usable here");
            return;
        }
        // mov dx, 0x3f8; mov al, 'h'; out dx, al; mov al, 'i'; out dx, al; hlt
        let (_vm, mut vcpu) =
            real_mode_vm(&[0xba, 0xf8, 0x03, 0xb0, b'h', 0xee, 0xb0, b'i', 0xee, 0xf4]);
        let console = Console::default();
        let mut bus = LegacyDevices::new(Box::new(console.clone()));
        assert_eq!(run_vcpu(&mut vcpu, &mut bus).unwrap(), Stop::Halted);
        assert_eq!(*console.0.lock().unwrap(), b"hi");
        // mov al, 0xfe; out 0x64, al; hlt (never reached)
        let (_vm, mut vcpu) = real_mode_vm(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
        let mut bus = LegacyDevices::new(Box::new(std::io::sink()));
        assert_eq!(run_vcpu(&mut vcpu, &mut bus).unwrap(), Stop::Reset);
    }
}
