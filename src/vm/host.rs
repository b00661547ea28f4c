//! What the host can run guests with.
//!
//! `/dev/kvm` alone is not enough: on nested, software-assisted KVM (as on hyperd's CI
//! machines) guest ring 0 is interpreted instruction by instruction, a stock kernel boot
//! takes minutes and user space faults at its first system call. Such hosts expose
//! `/dev/kvm` while the CPU flags lack `vmx`/`svm`. There qemu's TCG is the dependable
//! choice; where the CPU has hardware virtualization, KVM.
use std::fs::OpenOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

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

/// The accelerator for a setting of `auto`, `kvm` or `tcg`.
pub fn choose_accel(setting: &str) -> Result<Accel, String> {
    match setting {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        "auto" => Ok(if kvm_usable() && cpu_has_hw_virt() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
        other => Err(format!(
            "unknown accelerator {other:?} (known: auto, kvm, tcg)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_flags() {
        assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vme svm lm\n"));
        assert!(cpuinfo_has_hw_virt("flags\t: fpu vmx\n"));
        assert!(!cpuinfo_has_hw_virt("flags\t: fpu hypervisor lm\n"));
        assert!(choose_accel("bogus").is_err());
        assert_eq!(choose_accel("tcg").unwrap(), Accel::Tcg);
    }
}
