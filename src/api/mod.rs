//! hyperd's HTTP API on a Unix socket.
//!
//! - [`server`]: the listener, connection handling, version prefixes, routing.
//! - [`pods`], [`images`], [`system`]: the handlers.
//! - [`attach`]: hijacked connections (`Upgrade: tcp`) with Docker's stdcopy framing.
//! - [`http`]: request and response helpers shared by the handlers.
pub mod attach;
pub mod base64_field;
pub mod compat;
pub mod containers;

pub mod http;
pub mod images;
pub mod pods;
pub mod server;
pub mod system;

pub use server::serve;
