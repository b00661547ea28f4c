//! A KVM virtual machine: guest memory registered with KVM and vCPUs run on their
//! threads, through kvm-ioctls (as Firecracker and Cloud Hypervisor do).
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("the guest stopped with an exit hyperd does not handle: {0}")]
    UnhandledExit(String),
}

pub struct KvmVm {
    // Declared before `mem`: the VM goes before the memory it maps.
    pub fd: VmFd,
    pub mem: GuestMemoryMmap,
    _kvm: Kvm,
}

impl KvmVm {
    /// A VM with `mem_bytes` of guest memory at guest physical address 0.
    pub fn new(mem_bytes: usize) -> Result<KvmVm, KvmError> {
        let kvm = Kvm::new()?;
        let fd = kvm.create_vm()?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes)])
            .map_err(|e| KvmError::Memory(e.to_string()))?;
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
        Ok(KvmVm { fd, mem, _kvm: kvm })
    }
}

/// Why a vCPU stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    Halted,
    Shutdown,
}

/// Runs a vCPU until it halts or shuts down; port writes go to `on_out`.
pub fn run_vcpu(vcpu: &mut VcpuFd, mut on_out: impl FnMut(u16, &[u8])) -> Result<Stop, KvmError> {
    loop {
        match vcpu.run()? {
            VcpuExit::IoOut(port, data) => on_out(port, data),
            VcpuExit::IoIn(_, data) => data.fill(0),
            VcpuExit::Hlt => return Ok(Stop::Halted),
            VcpuExit::Shutdown => return Ok(Stop::Shutdown),
            other => return Err(KvmError::UnhandledExit(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// A real-mode guest writes "hi" to the serial port and halts.
    #[test]
    fn a_guest_runs_through_kvm() {
        if !crate::vm::host::kvm_usable() {
            eprintln!("skipped: /dev/kvm is not usable here");
            return;
        }
        let vm = KvmVm::new(1 << 20).unwrap();
        // mov dx, 0x3f8; mov al, 'h'; out dx, al; mov al, 'i'; out dx, al; hlt
        let code = [0xba, 0xf8, 0x03, 0xb0, b'h', 0xee, 0xb0, b'i', 0xee, 0xf4];
        vm.mem.write_slice(&code, GuestAddress(0x1000)).unwrap();
        let mut vcpu = vm.fd.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        let mut serial = Vec::new();
        let stop = run_vcpu(&mut vcpu, |port, data| {
            if port == 0x3f8 {
                serial.extend_from_slice(data);
            }
        })
        .unwrap();
        assert_eq!(stop, Stop::Halted);
        assert_eq!(serial, b"hi");
    }
}
