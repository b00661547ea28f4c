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
    /// Bounds of the API socket's connections.
    pub api_limits: ApiLimits,
    /// A build boots a micro-VM for each `RUN` rather than one per stage (slower; kept
    /// for measuring the two against each other, docs/benchmarks.md).
    pub build_vm_per_step: bool,
    /// Bytes a VM's console log may hold before the daemon empties it.
    pub console_log_max: u64,
}

/// Bounds of the API socket: a client that does not finish a request's head in
/// `header_timeout` is disconnected, and at most `max_connections` are served at once
/// (more wait in the listen queue until one ends).
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            header_timeout: std::time::Duration::from_secs(30),
            max_connections: 1024,
        }
    }
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
