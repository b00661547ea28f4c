//! The VMM's control socket: how the daemon drives one `hyper-vmm` process.
//!
//! One JSON request per line, one JSON answer per line:
//!
//! ```text
//! {"op":"create","config":{...MachineConfig...}}   -> {"ok":true,"state":"created"}
//! {"op":"start"}                                   -> {"ok":true,"state":"running"}
//! {"op":"pause"} / {"op":"resume"}                 -> {"ok":true,"state":"paused"|"running"}
//! {"op":"status"}                                  -> {"ok":true,"state":...,"pid":...}
//! {"op":"stop"}                                    -> {"ok":true,"state":"stopped"}, then exit
//! ```
//!
//! Errors answer `{"ok":false,"error":"..."}` and change nothing. The process exits when
//! the guest powers off or resets, or after `stop`.
use crate::config::MachineConfig;
use serde::{Deserialize, Serialize};

/// The longest request line a VMM reads (a machine configuration with its disks fits
/// many times over).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Create { config: Box<MachineConfig> },
    Start,
    Pause,
    Resume,
    Stop,
    Status,
}

/// Where a VMM's machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// No machine yet.
    Empty,
    Created,
    Running,
    Paused,
    /// The guest powered off or reset, or `stop` was asked.
    Stopped,
}

#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Response {
    /// A success in `state`, from the VMM process `pid`.
    pub fn state(state: VmState, pid: u32) -> Response {
        Response {
            ok: true,
            state: Some(state),
            pid: Some(pid),
            ..Default::default()
        }
    }

    pub fn error(e: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_the_documented_one() {
        let r: Request = serde_json::from_str(r#"{"op":"pause"}"#).unwrap();
        assert!(matches!(r, Request::Pause));
        let a = serde_json::to_string(&Response::state(VmState::Paused, 7)).unwrap();
        assert_eq!(a, r#"{"ok":true,"state":"paused","pid":7}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }
}
