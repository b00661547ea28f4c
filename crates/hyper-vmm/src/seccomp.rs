//! The system calls a `hyper-vmm` process may make once it serves its VM: an allowlist
//! (seccompiler, as Firecracker), anything else kills the process. Installed on the
//! main thread before any other thread exists, so every vCPU and device thread inherits
//! it. The list was taken from strace runs of the VMM through boot, pods, daemon
//! restarts, pause and stop, plus what Rust's runtime needs to report a panic.
//! `ioctl` is allowed for the KVM requests the VMM makes (the numbers computed here as
//! kvm-ioctls does, since its own are private) and a few terminal/fd requests of std.
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

const ALLOWED: &[i64] = &[
    // I/O on the VM's own files, sockets and eventfds
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fcntl,
    libc::SYS_close,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    // create: kernel, initramfs, disks, console log
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // the control socket and the agent port
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    // memory
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // guest memory shared with a vhost-user backend (virtiofsd)
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    // threads, signals (vCPU kicks), time
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_prlimit64,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    // a panic's backtrace
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
    // ending
    libc::SYS_exit,
    libc::SYS_exit_group,
];

#[derive(Debug, thiserror::Error)]
#[error("seccomp filter: {0}")]
pub struct SeccompError(String);

#[allow(non_snake_case)]
mod kvm {
    use kvm_bindings::*;
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};
    ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
    ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_pit_config);
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);

    /// Every KVM request hyper-vmm makes (creating the VM, setting vCPUs up, running them,
    /// reading a failed vCPU's registers).
    pub(super) fn requests() -> Vec<u64> {
        [
            KVM_CREATE_VM(),
            KVM_GET_VCPU_MMAP_SIZE(),
            KVM_GET_SUPPORTED_CPUID(),
            KVM_CREATE_VCPU(),
            KVM_SET_USER_MEMORY_REGION(),
            KVM_SET_TSS_ADDR(),
            KVM_CREATE_IRQCHIP(),
            KVM_IRQFD(),
            KVM_CREATE_PIT2(),
            KVM_RUN(),
            KVM_GET_REGS(),
            KVM_SET_REGS(),
            KVM_GET_SREGS(),
            KVM_SET_SREGS(),
            KVM_SET_MSRS(),
            KVM_SET_FPU(),
            KVM_GET_LAPIC(),
            KVM_SET_LAPIC(),
            KVM_SET_CPUID2(),
        ]
        .to_vec()
    }
}

/// ioctl requests std may make on the VMM's descriptors: isatty, non-blocking, close-on-exec.
const STD_IOCTLS: &[u64] = &[libc::TCGETS, libc::FIONBIO, libc::FIOCLEX];

/// The filter program.
pub fn program() -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    // prctl only to name threads (vcpu0, agent-port, ...).
    let set_name = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::PR_SET_NAME as u64,
    )
    .map_err(err)?;
    rules.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![set_name]).map_err(err)?],
    );
    // ioctl only with the requests above.
    let ioctls = kvm::requests()
        .into_iter()
        .chain(STD_IOCTLS.iter().copied())
        .map(|req| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    rules.insert(libc::SYS_ioctl, ioctls);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    filter.try_into().map_err(err)
}

/// Installs the filter on the calling thread (and so on every thread it starts later).
/// Needs `no_new_privs` ([`super::privileges::drop_all`]).
pub fn install() -> Result<(), SeccompError> {
    seccompiler::apply_filter(&program()?).map_err(|e| SeccompError(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filter_compiles_and_allows_only_its_list() {
        let prog = super::program().unwrap();
        // One comparison per allowed call at least, plus the verdicts.
        assert!(prog.len() > super::ALLOWED.len(), "{}", prog.len());
        assert!(!super::ALLOWED.contains(&libc::SYS_execve));
        assert!(!super::ALLOWED.contains(&libc::SYS_ptrace));
        // The computed KVM request numbers match the kernel's (linux/kvm.h).
        let reqs = super::kvm::requests();
        assert!(reqs.contains(&0xae80), "KVM_RUN");
        assert!(reqs.contains(&0xae01), "KVM_CREATE_VM");
        assert!(reqs.contains(&0x8090_ae81), "KVM_GET_REGS");
        assert!(reqs.contains(&0x4020_ae46), "KVM_SET_USER_MEMORY_REGION");
        assert!(reqs.contains(&0x4008_ae90), "KVM_SET_CPUID2");
    }
}
