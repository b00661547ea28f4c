//! Daemon settings: where it keeps state, where it listens, what it boots.
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (images, pods, VMs).
    pub root: PathBuf,
    /// Unix socket the API listens on.
    pub socket: PathBuf,
    /// Guest kernel (uncompressed ELF vmlinux).
    pub kernel: PathBuf,
    /// Initramfs holding the guest agent as /init.
    pub initrd: PathBuf,
    /// `auto` (hyper-vmm where the CPU runs KVM guests natively, else qemu),
    /// `hyper-vmm`, `qemu`.
    pub driver: String,
    /// `auto`, `kvm`, `tcg`: how the qemu driver runs the guest.
    pub accel: String,
    /// How long a VM may take from launch to the agent's first answer.
    pub boot_timeout: std::time::Duration,
    /// Plain-HTTP registries, trusted token realms and the bounds of what a registry
    /// may send.
    pub registry: crate::image::registry::RegistryOptions,
    /// Largest unpacked size of one image layer (bytes); protects against archive bombs.
    pub max_layer_bytes: u64,
    /// Idle VMs of the default size kept booted ahead (the warm pool); 0 turns it off.
    pub pool_size: usize,
    /// Idle pool VMs older than this are replaced.
    pub pool_max_age: std::time::Duration,
    /// How much of each container's log is kept on disk.
    pub log_limits: crate::engine::LogLimits,
}

/// The cache the build scripts write to: `$HYPERD_CACHE`, else `$XDG_CACHE_HOME/hyperd`,
/// else `~/.cache/hyperd`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HYPERD_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("hyperd");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hyperd")
}
