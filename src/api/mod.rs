//! hyperd's HTTP API on a Unix socket.
//!
//! - [`server`]: the listener, connection handling, version prefixes, routing.
//! - [`pods`], [`containers`], [`images`], [`system`]: the handlers of hyperd's routes.
//! - [`compat`]: the seed APIs (Docker Engine, Docker Flask, mimik mCM).
//! - [`build`]: image builds from a Dockerfile (hyperd's and Docker's route).
//! - [`attach`]: hijacked connections (`Upgrade: tcp`) with Docker's stdcopy framing.
//! - [`base64_field`]: a JSON body's large base64 member, decoded as it streams.
//! - [`http`]: request and response helpers shared by the handlers, and the one place
//!   errors become statuses.
pub(crate) mod attach;
pub mod base64_field;
pub(crate) mod build;
pub(crate) mod compat;
pub(crate) mod containers;

pub(crate) mod http;
pub(crate) mod images;
pub(crate) mod pods;
pub mod server;
pub(crate) mod system;

pub use server::serve;
