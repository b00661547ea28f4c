//! hyperd's own VMM (issue 3, in progress): devices that run against guest memory.
//!
//! Today: a KVM VM with guest memory and a vCPU run loop ([`kvm`]), the 8250 console and
//! the i8042 reset on the port I/O bus ([`legacy`]; checked with tiny real-mode guests
//! that write to the console and reset the VM), and the virtio-blk request engine
//! ([`virtio_blk`]), driven through virtio-queue's split queues and checked without a VM.
//! The virtio-mmio transport registers ([`mmio`]) are in place, tested with a driver's
//! bring-up and misbehaviour, and the kernel loader ([`boot`]: vmlinux with its PVH entry,
//! command line, e820). Still to come: the vCPU's boot state (PVH start info, GDT, CPUID,
//! MSRs), wiring MMIO exits and queue notifications to the devices, the agent channel, the host detection
//! for emulated KVM, and the VMM process the daemon drives as a `Driver`.
pub mod boot;
pub mod control;
pub mod cpu;
pub mod kvm;
pub mod legacy;
pub mod machine;
pub mod mmio;
pub mod mptable;
pub mod privileges;
pub mod rate_limit;
pub mod seccomp;
pub mod virtio_blk;
pub mod virtio_console;
