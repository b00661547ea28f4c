//! hyperd's own VMM (issue 3, in progress): devices that run against guest memory.
//!
//! Today: the virtio-blk request engine ([`virtio_blk`]), driven through virtio-queue's
//! split queues and checked without a VM. Still to come: the KVM VM (memory, vCPUs, boot),
//! the MMIO transport, the agent channel, and the VMM process the daemon drives.
pub mod virtio_blk;
