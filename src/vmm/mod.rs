//! hyperd's own VMM (issue 3, in progress): devices that run against guest memory.
//!
//! Today: a KVM VM with guest memory and a vCPU run loop ([`kvm`], checked with a tiny
//! real-mode guest writing to the serial port), and the virtio-blk request engine
//! ([`virtio_blk`]), driven through virtio-queue's split queues and checked without a VM.
//! Still to come: 64-bit boot of vmlinux (linux-loader, boot params, e820, CPUID/MSRs),
//! the 8250 and i8042 devices, the MMIO transport, the agent channel, the host detection
//! for emulated KVM, and the VMM process the daemon drives as a `Driver`.
pub mod kvm;
pub mod virtio_blk;
