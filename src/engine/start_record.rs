//! The phase record of a pod start: when each phase ended, in milliseconds from the
//! request (negative for what a VM booted ahead did before it), and the path taken.
//! The equivalent of Firecracker's boot timer; `/pod/info` shows it, and the start
//! benchmark and the pool tests read it.
pub(crate) use hyperd_api::pods::{StartPath, StartRecord};
use std::time::Instant;

/// Milliseconds from `from` to `to`, negative when `to` came first.
pub(crate) fn ms_between(from: Instant, to: Instant) -> f64 {
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
