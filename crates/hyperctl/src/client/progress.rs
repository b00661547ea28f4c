//! Renders a stream of JSON progress lines (pull, push, load) on a terminal: one
//! indicatif bar per layer id, status lines for the rest. Without a terminal, plain lines.
use super::ClientError;
use http_body_util::BodyExt;
use hyperd_api::images::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;

/// What a progress stream ended with.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The last `id` seen on a status line that was not a layer (the image id of a pull).
    pub image_id: Option<String>,
    pub messages: Vec<Progress>,
}

pub async fn render(
    resp: hyper::Response<hyper::body::Incoming>,
    quiet: bool,
) -> Result<Outcome, ClientError> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:.bold} {msg:<18} [{bar:40}] {bytes}/{total_bytes}")
            .expect("template")
            .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut outcome = Outcome::default();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut handle = |v: Progress, outcome: &mut Outcome| -> Result<(), ClientError> {
        if let Some(e) = &v.error {
            return Err(ClientError::BadResponse(e.clone()));
        }
        let status = v.status.clone().unwrap_or_default();
        let id = v.id.clone();
        let detail = v.progress_detail.clone().unwrap_or_default();
        match id {
            Some(id) if id.len() == 12 => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(0));
                    b.set_style(style.clone());
                    b.set_prefix(id.clone());
                    b
                });
                if let (Some(cur), Some(total)) = (detail.current, detail.total) {
                    bar.set_length(total);
                    bar.set_position(cur);
                }
                bar.set_message(status.clone());
                if !tty && !quiet && detail.current.is_none() {
                    eprintln!("{id}: {status}");
                }
            }
            other => {
                if let Some(id) = &other {
                    if id.starts_with("sha256:") {
                        outcome.image_id = Some(id.clone());
                    }
                }
                if let Some(s) = &v.stream {
                    if !quiet {
                        let _ = multi.println(s.trim_end());
                        if !tty {
                            eprintln!("{}", s.trim_end());
                        }
                    }
                } else if !status.is_empty() && !quiet {
                    let line = match &other {
                        Some(id) if !id.starts_with("sha256:") => format!("{id}: {status}"),
                        _ => status.clone(),
                    };
                    let _ = multi.println(&line);
                    if !tty {
                        eprintln!("{line}");
                    }
                }
            }
        }
        outcome.messages.push(v);
        Ok(())
    };
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                let v: Progress = serde_json::from_str(text.trim())
                    .map_err(|e| ClientError::BadResponse(format!("{e}: {text}")))?;
                handle(v, &mut outcome)?;
            }
        }
    }
    if !buf.iter().all(u8::is_ascii_whitespace) {
        let v: Progress =
            serde_json::from_slice(&buf).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        handle(v, &mut outcome)?;
    }
    for b in bars.values() {
        b.finish();
    }
    Ok(outcome)
}
