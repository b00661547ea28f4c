//! hyperd's guest agent: the protocol shared with the host, and (in `main.rs`) the
//! agent binary that runs as PID 1 inside each micro-VM.
pub mod protocol;
