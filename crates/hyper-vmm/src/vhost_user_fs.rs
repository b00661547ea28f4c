//! virtio-fs through a vhost-user backend (virtiofsd): the device's queues are served by
//! the backend process, which maps the guest's memory (a shared memfd) and reads and
//! writes the rings itself. hyper-vmm only presents the device (type 26, its tag in the
//! config space), hands the negotiated features, the memory table and each queue's
//! addresses to the backend when the driver starts, turns the driver's queue
//! notifications into the backend's kick eventfds, and turns the backend's call eventfds
//! into the device's interrupts (a thread of [`super::machine`]).
//!
//! The rust-vmm `vhost` crate speaks the protocol (its frontend); nothing of the file
//! system passes through this process.
use super::mmio::VirtioDevice;
use std::path::Path;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// virtio device id of a file system.
pub const DEVICE_FS: u32 = 26;
/// A high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
pub const QUEUE_SIZE: u16 = 128;
/// The tag's room in the config space.
const TAG_LEN: usize = 36;
/// vhost-user's feature bit that announces protocol features (not a virtio feature).
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// The ring features hyper-vmm lets through to the driver (indirect descriptors, event
/// index) besides VIRTIO_F_VERSION_1, which the transport adds.
const RING_FEATURES: u64 = (1 << 28) | (1 << 29);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("vhost-user backend {0}: {1}")]
    Vhost(String, vhost::Error),
    #[error("virtio-fs tag {0:?}: 1 to {TAG_LEN} bytes")]
    Tag(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

pub struct VhostUserFs {
    tag: [u8; TAG_LEN],
    frontend: Frontend,
    socket: String,
    mem: GuestMemoryMmap,
    backend_features: u64,
    protocol_features: bool,
    acked: u64,
    kicks: Vec<EventFd>,
    /// The backend's "used buffers" signals, one per queue; the machine's interrupt thread
    /// polls clones of them.
    pub calls: Vec<EventFd>,
}

impl VhostUserFs {
    /// Connects to the backend at `socket` and takes ownership of it; the rings follow
    /// when the driver starts the device.
    pub fn connect(socket: &Path, tag: &str, mem: GuestMemoryMmap) -> Result<VhostUserFs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let name = socket.display().to_string();
        let err = |e| FsError::Vhost(name.clone(), e);
        let mut frontend = Frontend::connect(socket, NUM_QUEUES as u64).map_err(err)?;
        frontend.set_owner().map_err(err)?;
        let backend_features = frontend.get_features().map_err(err)?;
        let protocol_features = backend_features & F_PROTOCOL_FEATURES != 0;
        if protocol_features {
            let offered = frontend.get_protocol_features().map_err(err)?;
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::MQ)
                .map_err(err)?;
        }
        let fds = || -> Result<Vec<EventFd>, FsError> {
            (0..NUM_QUEUES)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd))
                .collect()
        };
        let mut t = [0u8; TAG_LEN];
        t[..tag.len()].copy_from_slice(tag.as_bytes());
        Ok(VhostUserFs {
            tag: t,
            frontend,
            socket: name,
            mem,
            backend_features,
            protocol_features,
            acked: 0,
            kicks: fds()?,
            calls: fds()?,
        })
    }

    /// The host address of a guest address in the (single-region) guest memory.
    fn host_address(&self, gpa: u64) -> Option<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .ok()
            .map(|p| p as u64)
    }

    /// Hands the features, memory and rings to the backend.
    fn start_backend(&mut self, queues: &[Queue]) -> Result<(), vhost::Error> {
        self.frontend.set_features(
            (self.acked | super::mmio::F_VERSION_1) & self.backend_features
                | (self.backend_features & F_PROTOCOL_FEATURES),
        )?;
        let regions = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        for (i, q) in queues.iter().enumerate() {
            let addr = |gpa: u64| {
                self.host_address(gpa)
                    .ok_or(vhost::Error::InvalidGuestMemory)
            };
            self.frontend.set_vring_num(i, q.size())?;
            self.frontend.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: q.max_size(),
                    queue_size: q.size(),
                    flags: 0,
                    desc_table_addr: addr(q.desc_table())?,
                    used_ring_addr: addr(q.used_ring())?,
                    avail_ring_addr: addr(q.avail_ring())?,
                    log_addr: None,
                },
            )?;
            self.frontend.set_vring_base(i, 0)?;
            self.frontend.set_vring_call(i, &self.calls[i])?;
            self.frontend.set_vring_kick(i, &self.kicks[i])?;
            if self.protocol_features {
                self.frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        DEVICE_FS
    }

    fn features(&self) -> u64 {
        self.backend_features & RING_FEATURES
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; NUM_QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut cfg = [0u8; TAG_LEN + 4];
        cfg[..TAG_LEN].copy_from_slice(&self.tag);
        cfg[TAG_LEN..].copy_from_slice(&((NUM_QUEUES - 1) as u32).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| cfg.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn activate(&mut self, queues: Vec<Queue>) {
        if let Err(e) = self.start_backend(&queues) {
            // The guest's file system requests then go unanswered; the log says why.
            tracing::error!(
                "virtio-fs: the backend {} refused its rings: {e}",
                self.socket
            );
        }
    }

    fn process_queue(&mut self, index: u32) -> bool {
        if let Some(k) = self.kicks.get(index as usize) {
            let _ = k.write(1);
        }
        // Interrupts come when the backend signals a call eventfd.
        false
    }

    fn reset(&mut self) {
        if self.protocol_features {
            for i in 0..NUM_QUEUES {
                let _ = self.frontend.set_vring_enable(i, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// virtiofsd (scripts/setup.sh installs it) on a fresh directory, listening on a
    /// socket in `dir`.
    fn virtiofsd(dir: &Path) -> (std::process::Child, std::path::PathBuf) {
        let bin = std::env::var_os("HYPERD_VIRTIOFSD")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd"))
            })
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "virtiofsd".into());
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let sock = dir.join("fs.sock");
        let child = std::process::Command::new(bin)
            .args(["--sandbox", "none", "--log-level", "error", "--shared-dir"])
            .arg(&share)
            .arg("--socket-path")
            .arg(&sock)
            .spawn()
            .expect("virtiofsd (scripts/setup.sh installs it)");
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (child, sock)
    }

    #[test]
    fn a_real_backend_is_owned_and_the_device_shows_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, sock) = virtiofsd(dir.path());
        let mem = crate::kvm::guest_memory(1 << 20, true).unwrap();
        let dev = VhostUserFs::connect(&sock, "hyper-share", mem).unwrap();
        assert_eq!(dev.device_type(), DEVICE_FS);
        // virtiofsd announces protocol features; the driver never sees that bit.
        assert!(dev.protocol_features);
        assert_eq!(dev.features() & F_PROTOCOL_FEATURES, 0);
        let mut cfg = [0u8; TAG_LEN + 4];
        dev.read_config(0, &mut cfg);
        assert_eq!(&cfg[..11], b"hyper-share");
        assert!(cfg[11..TAG_LEN].iter().all(|b| *b == 0));
        assert_eq!(u32::from_le_bytes(cfg[TAG_LEN..].try_into().unwrap()), 1);
        let mut past = [0xffu8; 4];
        dev.read_config(TAG_LEN as u64 + 4, &mut past);
        assert_eq!(past, [0; 4], "reads past the config space are zero");
        assert!(
            VhostUserFs::connect(&sock, "", crate::kvm::guest_memory(1 << 20, true).unwrap())
                .is_err()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
