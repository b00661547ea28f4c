//! Renders a stream of JSON progress lines (pull, push, load, build) on a terminal: one
//! indicatif bar per layer id, status lines for the rest. Without a terminal, plain lines.
//! The lines come as a chunked answer ([`render`]) or on a hijacked connection
//! ([`render_stream`]).
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

/// Renders the progress answer of a plain (chunked) request.
pub async fn render(
    resp: hyper::Response<hyper::body::Incoming>,
    quiet: bool,
) -> Result<Outcome, ClientError> {
    let mut r = Renderer::new(quiet);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            r.feed(data)?;
        }
    }
    r.finish()
}

/// Renders the progress lines of a hijacked connection (`Upgrade: tcp`) until the
/// daemon closes it.
pub async fn render_stream(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    quiet: bool,
) -> Result<Outcome, ClientError> {
    use tokio::io::AsyncReadExt;
    let mut r = Renderer::new(quiet);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        r.feed(&buf[..n])?;
    }
    r.finish()
}

/// Turns JSON progress lines into bars and lines.
struct Renderer {
    tty: bool,
    quiet: bool,
    multi: MultiProgress,
    style: ProgressStyle,
    bars: HashMap<String, ProgressBar>,
    outcome: Outcome,
    buf: Vec<u8>,
}

impl Renderer {
    fn new(quiet: bool) -> Renderer {
        let tty = std::io::stderr().is_terminal() && !quiet;
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {msg:<18} [{bar:40}] {bytes}/{total_bytes}",
        )
        .expect("template")
        .progress_chars("=> ");
        Renderer {
            tty,
            quiet,
            multi,
            style,
            bars: HashMap::new(),
            outcome: Outcome::default(),
            buf: Vec::new(),
        }
    }

    /// Takes bytes of the stream; handles each complete line.
    fn feed(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let v: Progress = serde_json::from_str(text.trim())
                .map_err(|e| ClientError::BadResponse(format!("{e}: {text}")))?;
            self.handle(v)?;
        }
        if self.buf.len() > 16 << 20 {
            return Err(ClientError::BadResponse(
                "a progress line longer than 16 MiB".into(),
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Outcome, ClientError> {
        if !self.buf.iter().all(u8::is_ascii_whitespace) {
            let v: Progress = serde_json::from_slice(&self.buf)
                .map_err(|e| ClientError::BadResponse(e.to_string()))?;
            self.handle(v)?;
        }
        for b in self.bars.values() {
            b.finish();
        }
        Ok(self.outcome)
    }

    fn handle(&mut self, v: Progress) -> Result<(), ClientError> {
        let (tty, quiet) = (self.tty, self.quiet);
        if let Some(e) = &v.error {
            return Err(ClientError::Failed(e.clone()));
        }
        let status = v.status.clone().unwrap_or_default();
        let id = v.id.clone();
        let detail = v.progress_detail.clone().unwrap_or_default();
        match id {
            Some(id) if id.len() == 12 => {
                let bar = self.bars.entry(id.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(0));
                    b.set_style(self.style.clone());
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
                        self.outcome.image_id = Some(id.clone());
                    }
                }
                if let Some(s) = &v.stream {
                    if !quiet {
                        let _ = self.multi.println(s.trim_end());
                        if !tty {
                            eprintln!("{}", s.trim_end());
                        }
                    }
                } else if !status.is_empty() && !quiet {
                    let line = match &other {
                        Some(id) if !id.starts_with("sha256:") => format!("{id}: {status}"),
                        _ => status.clone(),
                    };
                    let _ = self.multi.println(&line);
                    if !tty {
                        eprintln!("{line}");
                    }
                }
            }
        }
        self.outcome.messages.push(v);
        Ok(())
    }
}
