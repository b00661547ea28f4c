//! The JSON progress messages of pulls, pushes and loads, as Docker's jsonmessage
//! stream: one JSON object per line, `status`, optional `id`, `progressDetail`,
//! `progress`, and `error`/`errorDetail` for a failure.
pub(crate) use hyperd_api::images::Progress;
use hyperd_api::images::{Aux, ErrorDetail, ProgressDetail, PushAux};
use tokio::sync::mpsc::UnboundedSender;

pub(crate) type ProgressTx = UnboundedSender<Progress>;

pub(crate) fn status(s: impl Into<String>) -> Progress {
    Progress {
        status: Some(s.into()),
        ..Default::default()
    }
}

/// A status about `id` (a layer or the image).
pub(crate) fn about(id: &str, status: impl Into<String>) -> Progress {
    Progress {
        status: Some(status.into()),
        id: Some(id.to_string()),
        ..Default::default()
    }
}

pub(crate) fn layer(id: &str, status: &str) -> Progress {
    Progress {
        progress_detail: Some(ProgressDetail::default()),
        ..about(id, status)
    }
}

pub(crate) fn transfer(id: &str, verb: &str, current: u64, total: u64) -> Progress {
    Progress {
        progress_detail: Some(ProgressDetail {
            current: Some(current),
            total: Some(total),
        }),
        progress: Some(bar(current, total)),
        ..about(id, verb)
    }
}

/// What a push stored: the tag, the manifest's digest and size.
pub(crate) fn pushed(tag: &str, digest: &str, size: u64) -> Progress {
    Progress {
        progress_detail: Some(ProgressDetail::default()),
        aux: Some(Aux::Push(PushAux {
            tag: tag.to_string(),
            digest: digest.to_string(),
            size,
        })),
        ..Default::default()
    }
}

/// Free text, as `docker load` prints it.
pub(crate) fn stream(text: impl Into<String>) -> Progress {
    Progress {
        stream: Some(text.into()),
        ..Default::default()
    }
}

pub(crate) fn error(msg: &str) -> Progress {
    error_with_code(msg, None)
}

/// A failure with the exit code of the step that failed (a build's `RUN`).
pub(crate) fn error_with_code(msg: &str, code: Option<i32>) -> Progress {
    Progress {
        error: Some(msg.to_string()),
        error_detail: Some(ErrorDetail {
            code,
            message: msg.to_string(),
        }),
        ..Default::default()
    }
}

/// What a build made (`aux.ID`).
pub(crate) fn built(id: &str) -> Progress {
    Progress {
        aux: Some(Aux::Built(hyperd_api::images::BuiltAux {
            id: id.to_string(),
        })),
        ..Default::default()
    }
}

/// The short id Docker shows for a layer: 12 hex digits of its digest.
pub(crate) fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..12.min(hex.len())].to_string()
}

/// `[=====>      ]  1.2MB/3.4MB`, 50 columns wide as Docker draws it.
pub(crate) fn bar(current: u64, total: u64) -> String {
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
pub(crate) fn human(bytes: u64) -> String {
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
        let t = serde_json::to_value(transfer("abc", "Downloading", 1, 2)).unwrap();
        assert_eq!(t["progressDetail"]["total"], 2);
        let l = serde_json::to_value(layer("abc", "Pull complete")).unwrap();
        assert_eq!(
            l["progressDetail"],
            serde_json::json!({}),
            "Docker's empty detail"
        );
        assert_eq!(
            serde_json::to_value(error("no")).unwrap(),
            serde_json::json!({ "error": "no", "errorDetail": { "message": "no" } })
        );
    }
}
