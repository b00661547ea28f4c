//! What the host can run guests with.
//!
//! `/dev/kvm` alone is not enough: on nested, software-assisted KVM (as on hyperd's CI
//! machines) guest ring 0 is interpreted instruction by instruction, a stock kernel boot
//! takes minutes and user space faults at its first system call. Such hosts expose
//! `/dev/kvm` while the CPU flags lack `vmx`/`svm`. There qemu's TCG is the dependable
//! choice; where the CPU has hardware virtualization, KVM.

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

pub use hyper_vmm_api::host::{cpu_has_hw_virt, kvm_emulates_ring0, kvm_usable};

/// The accelerator for a setting of `auto`, `kvm` or `tcg`.
pub fn choose_accel(setting: &str) -> Result<Accel, super::SetupError> {
    match setting {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        "auto" => Ok(if kvm_usable() && cpu_has_hw_virt() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
        other => Err(super::SetupError::UnknownAccel(other.to_string())),
    }
}

/// Where a VM's CPU cgroup lives: under the unified hierarchy (cgroup v2) when the host
/// has one, else under the v1 `cpu` controller.
pub fn cpu_cgroup(vm_id: &str) -> Option<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        Some(root.join("hyperd").join(vm_id))
    } else if root.join("cpu/cpu.cfs_quota_us").exists() {
        Some(root.join("cpu/hyperd").join(vm_id))
    } else {
        None
    }
}

/// Caps a VM process at `percent` of one CPU: `cpu.max` (v2) or CFS quota (v1).
pub fn cap_cpu(vm_id: &str, pid: u32, percent: u32) -> Result<(), super::SetupError> {
    let dir = cpu_cgroup(vm_id).ok_or(super::SetupError::NoCpuController)?;
    let v2 = dir.starts_with("/sys/fs/cgroup/hyperd");
    let period = 100_000u64;
    let quota = u64::from(percent) * period / 100;
    let setup = || -> std::io::Result<()> {
        let parent = dir.parent().expect("cgroup parent");
        std::fs::create_dir_all(parent)?;
        if v2 {
            // The cpu controller must be enabled for the children of both levels.
            std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu")?;
            std::fs::write(parent.join("cgroup.subtree_control"), "+cpu")?;
        }
        std::fs::create_dir_all(&dir)?;
        if v2 {
            std::fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
    };
    setup().map_err(|source| super::SetupError::Cgroup { dir, source })
}

/// Removes a VM's CPU cgroup (after the VM exited).
pub fn remove_cpu_cgroup(vm_id: &str) {
    if let Some(dir) = cpu_cgroup(vm_id) {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_flags() {
        assert!(choose_accel("bogus").is_err());
        assert_eq!(choose_accel("tcg").unwrap(), Accel::Tcg);
    }
}
