//! hyperd's own VMM, run as `hyper-vmm` (one process per VM; see docs/vmm.md).
//!
//! - [`machine`]: a VM assembled from the parts below, its vCPU threads and pause;
//!   [`control`]: the control socket the daemon drives it through.
//! - [`kvm`]: the KVM VM and guest memory; [`cpu`]: the long-mode boot state, CPUID, MSRs,
//!   local APIC; [`boot`]: kernel, initramfs, command line, zero page and e820;
//!   [`mptable`]: CPUs and I/O APIC for a guest without ACPI.
//! - [`legacy`]: the 8250 console and the i8042 reset on port I/O.
//! - [`mmio`]: the virtio-mmio transport; [`virtio_blk`], [`virtio_net`], [`virtio_console`] (the
//!   agent port) and [`vhost_user_fs`] (virtio-fs served by virtiofsd) behind it;
//!   [`rate_limit`]: token buckets for disks.
//! - [`privileges`] and [`seccomp`]: what the process gives up before it serves a guest.
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
pub mod vhost_user_fs;
pub mod virtio_blk;
pub mod virtio_console;
pub mod virtio_net;
