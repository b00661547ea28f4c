//! The JSON progress messages of pulls, pushes and loads, as Docker's jsonmessage
//! stream: one JSON object per line, `status`, optional `id`, `progressDetail`,
//! `progress`, and `error`/`errorDetail` for a failure.
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

pub type ProgressTx = UnboundedSender<Value>;

pub fn status(s: impl Into<String>) -> Value {
    json!({ "status": s.into() })
}

pub fn layer(id: &str, status: &str) -> Value {
    json!({ "status": status, "progressDetail": {}, "id": id })
}

pub fn transfer(id: &str, verb: &str, current: u64, total: u64) -> Value {
    json!({
        "status": verb,
        "progressDetail": { "current": current, "total": total },
        "progress": bar(current, total),
        "id": id,
    })
}

pub fn error(msg: &str) -> Value {
    json!({ "errorDetail": { "message": msg }, "error": msg })
}

/// The short id Docker shows for a layer: 12 hex digits of its digest.
pub fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..12.min(hex.len())].to_string()
}

/// `[=====>      ]  1.2MB/3.4MB`, 50 columns wide as Docker draws it.
pub fn bar(current: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    if total == 0 {
        return format!("{:>8}", human(current));
    }
    let filled = (current.min(total) * WIDTH / total) as usize;
    let mut b = "=".repeat(filled);
    if filled < WIDTH as usize {
        b.push('>');
        b.push_str(&" ".repeat(WIDTH as usize - filled - 1));
    }
    format!("[{b}] {:>8}/{}", human(current), human(total))
}

/// Decimal units, as Docker prints sizes.
pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}{}", units[u]).replacen(".000", "", 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(1_500_000), "1.500MB");
        let b = bar(25, 100);
        assert!(b.starts_with("[============>"), "{b}");
        assert_eq!(b.find(']'), Some(51));
        assert!(bar(100, 100).starts_with(&format!("[{}]", "=".repeat(50))));
        assert_eq!(
            transfer("abc", "Downloading", 1, 2)["progressDetail"]["total"],
            2
        );
    }
}
