//! The phase record of a pod start: when each phase ended, in milliseconds from the
//! request (negative for what a VM booted ahead did before it), and the path taken.
//! The equivalent of Firecracker's boot timer; `/pod/info` shows it, and the start
//! benchmark and the pool tests read it.
use serde::Serialize;
use std::time::Instant;

/// How the pod got its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPath {
    /// An idle VM of the warm pool (or one booted ahead with `POST /vm/create`).
    Pool,
    /// A VM booted for this start.
    Cold,
    /// The pod's own VM, kept by a `stopVM=no` stop.
    Kept,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRecord {
    pub path: StartPath,
    /// When the start request arrived (RFC 3339).
    pub requested_at: String,
    /// The VM process was spawned.
    pub vm_spawned_ms: Option<f64>,
    /// The guest kernel started (the agent's uptime at ready, taken back from then).
    pub kernel_started_ms: Option<f64>,
    /// The agent answered.
    pub agent_ready_ms: Option<f64>,
    /// The VM was the pod's: taken from the pool, or booted.
    pub vm_ready_ms: f64,
    /// The last container's root filesystem was set up in the guest.
    pub container_created_ms: Option<f64>,
    /// The last container's process was started.
    pub process_started_ms: Option<f64>,
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_before_the_request_are_negative() {
        let a = Instant::now();
        let b = a + std::time::Duration::from_millis(250);
        assert!((ms_between(a, b) - 250.0).abs() < 0.01);
        assert!((ms_between(b, a) + 250.0).abs() < 0.01);
        let v = serde_json::to_value(StartPath::Pool).unwrap();
        assert_eq!(v, "pool");
    }
}
