//! The machine a VMM creates: the `create` request of the control socket, or the file of
//! `hyper-vmm --config`.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The most vCPUs a machine may have (the MP table's limit in hyper-vmm).
pub const MAX_VCPUS: u8 = 16;

/// The name of the virtio-console port the VMM connects to `agent_socket`: the guest
/// agent looks for it (hyperd's tests check it is the agent protocol's port name).
pub const AGENT_PORT_NAME: &str = "hyper.agent";

/// What a VM is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineConfig {
    pub vcpus: u8,
    pub mem_mib: u64,
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// The daemon's end of the agent channel: a Unix socket the VMM connects to; the
    /// guest sees it as the virtio-console port `hyper.agent`.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Where the guest's serial console goes.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// virtio-fs devices, each served by a vhost-user backend (virtiofsd) on a socket;
    /// with any, guest memory is a shared memfd the backend maps.
    #[serde(default)]
    pub shared_dirs: Vec<SharedDirConfig>,
    /// The virtio-net device and its backend, if the VM has a network.
    #[serde(default)]
    pub net: Option<NetConfig>,
}

/// How frames cross the network backend's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetFraming {
    /// A stream socket carrying each frame after its length as a 32-bit big-endian
    /// number: passt's (and qemu's `-netdev stream`) protocol.
    Stream,
    /// A tap device: one frame per read and write, no packet-information header.
    Tap,
}

/// The virtio-net device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetConfig {
    /// The backend's descriptor, inherited by the VMM process from the daemon (a socket to
    /// passt, or a tap opened in the pod's network namespace): the VMM opens nothing.
    pub fd: i32,
    pub framing: NetFraming,
    /// The guest's MAC, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// The largest MTU the guest may use (told through VIRTIO_NET_F_MTU).
    pub mtu: u16,
    /// Guest to host (bytes/s, frames/s; 0 is unlimited).
    #[serde(default)]
    pub tx_limit: Limits,
    /// Host to guest.
    #[serde(default)]
    pub rx_limit: Limits,
}

/// One virtio-fs device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedDirConfig {
    /// The tag the guest mounts it by.
    pub tag: String,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The virtio-blk serial (at most 20 bytes) the guest finds the disk by.
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub read_limit: Limits,
    #[serde(default)]
    pub write_limit: Limits,
}

/// A rate limit in both units; 0 is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes per second (0: unlimited).
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Requests (disks) or frames (network) per second (0: unlimited).
    #[serde(default)]
    pub ops_per_sec: u64,
}
