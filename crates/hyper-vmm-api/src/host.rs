//! Facts about the host that both the daemon's VM drivers and the VMM act on: whether
//! KVM is usable, whether the CPU runs guests natively, and the kernel command line a
//! host whose KVM emulates guest ring 0 needs. Here so that neither imports the other
//! for them.
//!
//! `/dev/kvm` alone is not enough: on nested, software-assisted KVM (as on hyperd's CI
//! machines) guest ring 0 is interpreted instruction by instruction, a stock kernel boot
//! takes minutes and user space faults at its first system call. Such hosts expose
//! `/dev/kvm` while the CPU flags lack `vmx`/`svm`.
use std::fs::OpenOptions;

/// Whether `/dev/kvm` can be opened for reading and writing.
pub fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether the CPU advertises hardware virtualization (Intel VT-x or AMD-V).
pub fn cpu_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| cpuinfo_has_hw_virt(&s))
        .unwrap_or(false)
}

fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Whether this host's KVM interprets guest ring 0 instead of running it (nested,
/// software-assisted KVM): `/dev/kvm` opens but the CPU shows no `vmx`/`svm`.
pub fn kvm_emulates_ring0() -> bool {
    kvm_usable() && !cpu_has_hw_virt()
}

/// What the kernel command line gets on a host whose KVM emulates guest ring 0 (nested,
/// software-assisted KVM, found by [`kvm_emulates_ring0`]): keep the
/// instructions KVM's emulator cannot run out of the kernel. The guest's CPUID shows the
/// host's features there, so the VMM cannot hide them; the kernel has to be told.
/// `clearcpuid=` takes at most 127 characters.
pub const EMULATED_RING0_CMDLINE: &str = " noxsave mitigations=off clearcpuid=popcnt,cx16,avx,avx2,bmi1,bmi2,smap,smep,fsgsbase,pcid,invpcid,rdrand,rdseed,erms,fsrm,movbe,xsaveopt,rdpid,pku,fma";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_flags() {
        assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vme svm lm\n"));
        assert!(cpuinfo_has_hw_virt("flags\t: fpu vmx\n"));
        assert!(!cpuinfo_has_hw_virt("flags\t: fpu hypervisor lm\n"));
        // `clearcpuid=` takes at most 127 characters.
        let clear = EMULATED_RING0_CMDLINE
            .split_whitespace()
            .find(|w| w.starts_with("clearcpuid="))
            .unwrap();
        assert!(clear.len() - "clearcpuid=".len() <= 127);
    }
}
