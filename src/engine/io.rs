//! A container's stdio on the host: output goes to its log file and to every attached
//! client; stdin comes from attached clients.
use bytes::Bytes;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Where a container's process is in its life, as attach needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoState {
    NotStarted,
    Running,
    Exited,
}

pub struct ContainerIo {
    attachers: Mutex<Vec<mpsc::UnboundedSender<Chunk>>>,
    log: Mutex<Option<std::fs::File>>,
    pub log_path: PathBuf,
    /// Set when a client attached with stdin before the start: the process gets a pipe.
    pub stdin_wanted: AtomicBool,
    state_tx: watch::Sender<IoState>,
}

impl ContainerIo {
    pub fn new(log_path: PathBuf) -> ContainerIo {
        ContainerIo {
            attachers: Mutex::new(Vec::new()),
            log: Mutex::new(None),
            log_path,
            stdin_wanted: AtomicBool::new(false),
            state_tx: watch::channel(IoState::NotStarted).0,
        }
    }

    pub fn state(&self) -> watch::Receiver<IoState> {
        self.state_tx.subscribe()
    }

    pub fn set_state(&self, s: IoState) {
        self.state_tx.send_replace(s);
        if s == IoState::Exited {
            // Dropping the senders ends every attached client's stream.
            self.attachers.lock().unwrap().clear();
            *self.log.lock().unwrap() = None;
        }
    }

    /// Output from now on; `None` if the process already exited.
    pub fn attach(&self, stdin: bool) -> Option<mpsc::UnboundedReceiver<Chunk>> {
        if *self.state_tx.borrow() == IoState::Exited {
            return None;
        }
        if stdin {
            self.stdin_wanted.store(true, Ordering::SeqCst);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.attachers.lock().unwrap().push(tx);
        Some(rx)
    }

    /// The log so far and, with `follow` and while the process runs, what comes next;
    /// taken under the log's lock so that no line is missed or seen twice.
    pub fn log_and_follow(
        &self,
        follow: bool,
    ) -> (Vec<LogEntry>, Option<mpsc::UnboundedReceiver<Chunk>>) {
        let _log = self.log.lock().unwrap();
        let entries = std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let rx = if follow && *self.state_tx.borrow() != IoState::Exited {
            let (tx, rx) = mpsc::unbounded_channel();
            self.attachers.lock().unwrap().push(tx);
            Some(rx)
        } else {
            None
        };
        (entries, rx)
    }

    /// Records output: a JSON line in the log (as Docker's json-file driver writes), and a
    /// copy to each attached client still listening.
    pub fn output(&self, chunk: Chunk) {
        {
            let mut log = self.log.lock().unwrap();
            if log.is_none() {
                *log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log_path)
                    .ok();
            }
            if let Some(f) = log.as_mut() {
                let (stream, data) = match &chunk {
                    Chunk::Stdout(d) => ("stdout", d),
                    Chunk::Stderr(d) => ("stderr", d),
                };
                let line = serde_json::json!({
                    "log": String::from_utf8_lossy(data),
                    "stream": stream,
                    "time": chrono_now(),
                });
                let _ = writeln!(f, "{line}");
            }
        }
        self.attachers
            .lock()
            .unwrap()
            .retain(|tx| tx.send(chunk.clone()).is_ok());
    }
}

/// A line of a container's log file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// RFC 3339 time with nanoseconds, UTC.
pub(crate) fn chrono_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch (UTC) as RFC 3339.
pub(crate) fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
    }

    #[tokio::test]
    async fn fans_out_and_ends_on_exit() {
        let dir = tempfile::tempdir().unwrap();
        let io = ContainerIo::new(dir.path().join("c.log"));
        let mut a = io.attach(false).unwrap();
        io.output(Chunk::Stdout(Bytes::from_static(b"hi\n")));
        io.set_state(IoState::Exited);
        assert_eq!(
            a.recv().await,
            Some(Chunk::Stdout(Bytes::from_static(b"hi\n")))
        );
        assert_eq!(a.recv().await, None);
        assert!(io.attach(false).is_none());
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        assert!(log.contains(r#""stream":"stdout""#), "{log}");
    }
}
