//! hyperd: pods in micro-VMs.
//!
//! - [`api`]: the HTTP API on a Unix socket (routing, handlers, hijacked attach).
//! - [`engine`]: pods, containers and their lifecycle.
//! - [`image`]: the local image store (import, unpack, read-only rootfs images).
//! - [`vm`]: the VM drivers (hyper-vmm, qemu microvm), host detection and the host side
//!   of the agent channel.
//! - [`root_dir`]: the private state directory.
//!
//! hyperd's own VMM is the `hyper-vmm` crate (crates/hyper-vmm), a separate process the
//! [`vm`] driver talks to through the types of `hyper-vmm-api`; see docs/architecture.md
//! for the crate graph.
pub mod api;
pub mod build;
pub mod config;
pub mod engine;
pub(crate) mod ids;
pub mod image;
pub mod root_dir;
/// The pod spec lives with the API's types (`hyperd-api`), shared with the client.
pub use hyperd_api::spec;
pub(crate) mod store;
pub mod vm;

/// The daemon's version, reported by `/version` and `/info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The API version hyperd speaks; clients may prefix routes with `/v{any version}/`.
pub const API_VERSION: &str = "1.41";
