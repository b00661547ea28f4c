//! hyperd's HTTP API as types, shared by the daemon's handlers, the client and
//! `hyperctl`: one definition of the wire format, from which `docs/openapi.json`'s
//! schemas are generated ([`openapi::schemas`]).
//!
//! - [`spec`]: the pod spec (`POST /pod/create`, pod files) and its validation.
//! - [`pods`]: pod answers (`/pod/*`, `/list`, `/exitcode`) and the start record.
//! - [`containers`]: container and exec requests and answers.
//! - [`images`]: image answers.
//! - [`system`]: `/info` and `/version`.
//! - [`error`]: the body of every failed request.
//! - [`stdcopy`]: Docker's multiplexed stream framing (attach, logs, exec).
pub mod containers;
pub mod error;
pub mod images;
pub mod openapi;
pub mod pods;
pub mod spec;
pub mod stdcopy;
pub mod system;

/// The answer of routes that act on one object: its id (`{"ID": ...}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct IdReply {
    #[serde(rename = "ID")]
    pub id: String,
}
