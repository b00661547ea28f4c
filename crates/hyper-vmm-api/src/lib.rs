//! What crosses the boundary between the hyperd daemon and a `hyper-vmm` process, and
//! nothing else: both sides depend on this crate, neither on the other.
//!
//! - [`config`]: the machine a VMM is asked to create (vCPUs, memory, kernel, disks with
//!   their rate limits, the agent socket, the console log).
//! - [`control`]: the control socket's line protocol, one JSON request and one JSON
//!   answer per line.
//! - [`host`]: facts about the host that both the daemon's driver choice and the VMM act
//!   on (KVM usable, hardware virtualization, emulated guest ring 0 and the kernel command
//!   line it needs).
pub mod config;
pub mod control;
pub mod host;
