//! The container APIs of `../shared/seeds/` served on hyperd's socket, mapped onto pods:
//! a "container" of these APIs is a one-container pod in its own micro-VM.
//!
//! - [`docker`]: the Docker remote/Engine API, as the `docker` CLI uses it;
//!   [`docker_ops`]: its graceful stop, restart, pause, rename, stats and top;
//!   [`docker_volumes`]: binds, mounts and the `/volumes` API.
//! - [`flask`]: the Docker Flask API.
//! - [`mcm`]: the mimik mCM container API.
//!
//! Routing: paths with parameters in them (`/containers/{id}/json`) are matched here
//! after hyperd's own fixed routes; see docs/api-compat.md for which API owns which path.
pub(crate) mod docker;
pub(crate) mod docker_models;
pub(crate) mod docker_ops;
pub(crate) mod docker_volumes;
pub(crate) mod flask;
pub(crate) mod mcm;
