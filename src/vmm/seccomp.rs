//! The system calls a `hyper-vmm` process may make once it serves its VM: an allowlist
//! (seccompiler, as Firecracker), anything else kills the process. Installed on the
//! main thread before any other thread exists, so every vCPU and device thread inherits
//! it. The list was taken from strace runs of the VMM through boot, pods, daemon
//! restarts, pause and stop, plus what Rust's runtime needs to report a panic.
//! `ioctl` is allowed whole: the KVM and eventfd ioctls go through it, and their file
//! descriptors are the VMM's own.
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
    libc::SYS_ioctl,
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
    }
}
