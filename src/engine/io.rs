//! A container's stdio on the host: output goes to its log file and to every attached
//! client; stdin comes from attached clients.
use super::logs::{LogFile, LogLimits, LogSnapshot, LogWriter};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Stdout(b) | Chunk::Stderr(b) => b.len(),
        }
    }
}

/// Output bytes an attached client may have waiting; past this it is dropped (its
/// stream ends), so a client that never reads cannot grow the daemon's memory.
pub(crate) const MAX_QUEUED: usize = 8 << 20;

/// An attached client's side: the output chunks sent to it, in order.
pub struct Follower {
    rx: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<AtomicUsize>,
}

impl Follower {
    /// The next chunk; `None` once the process exited or the client was dropped.
    pub async fn recv(&mut self) -> Option<Chunk> {
        let c = self.rx.recv().await?;
        self.queued.fetch_sub(c.len(), Ordering::SeqCst);
        Some(c)
    }
}

/// The daemon's side of an attached client.
struct Attacher {
    tx: mpsc::UnboundedSender<Chunk>,
    queued: Arc<AtomicUsize>,
}

impl Attacher {
    fn pair() -> (Attacher, Follower) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Attacher {
                tx,
                queued: queued.clone(),
            },
            Follower { rx, queued },
        )
    }

    /// Queues a chunk; false (drop this client) if it is gone or too far behind.
    fn send(&self, chunk: &Chunk) -> bool {
        let len = chunk.len();
        if self.queued.load(Ordering::SeqCst) + len > MAX_QUEUED {
            tracing::warn!("an attached client fell {MAX_QUEUED} bytes behind: dropped");
            return false;
        }
        self.queued.fetch_add(len, Ordering::SeqCst);
        self.tx.send(chunk.clone()).is_ok()
    }
}

/// Where a container's process is in its life, as attach needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoState {
    NotStarted,
    Running,
    Exited,
}

pub struct ContainerIo {
    /// Attached clients; also the lock that fixes the order of output lines.
    attachers: Mutex<Vec<Attacher>>,
    log: Arc<LogFile>,
    logs: LogWriter,
    /// Set when a client attached with stdin before the start: the process gets a pipe.
    pub stdin_wanted: AtomicBool,
    state_tx: watch::Sender<IoState>,
}

impl ContainerIo {
    pub fn new(log_path: PathBuf, logs: &LogWriter, limits: LogLimits) -> ContainerIo {
        ContainerIo {
            attachers: Mutex::new(Vec::new()),
            log: logs.file(log_path, limits),
            logs: logs.clone(),
            stdin_wanted: AtomicBool::new(false),
            state_tx: watch::channel(IoState::NotStarted).0,
        }
    }

    pub fn log_path(&self) -> &std::path::Path {
        self.log.path()
    }

    pub fn state(&self) -> watch::Receiver<IoState> {
        self.state_tx.subscribe()
    }

    pub fn set_state(&self, s: IoState) {
        self.state_tx.send_replace(s);
        if s == IoState::Exited {
            // Dropping the senders ends every attached client's stream.
            self.attachers.lock().unwrap().clear();
            self.logs.close(&self.log);
        }
    }

    /// Output from now on; `None` if the process already exited.
    pub fn attach(&self, stdin: bool) -> Option<Follower> {
        if *self.state_tx.borrow() == IoState::Exited {
            return None;
        }
        if stdin {
            self.stdin_wanted.store(true, Ordering::SeqCst);
        }
        let (a, f) = Attacher::pair();
        self.attachers.lock().unwrap().push(a);
        Some(f)
    }

    /// The log so far and, with `follow` and while the process runs, what comes next:
    /// the read is queued behind every line before it and the follower registered at
    /// the same moment, so that no line is missed or seen twice.
    pub async fn log_and_follow(&self, follow: bool) -> (LogSnapshot, Option<Follower>) {
        let slot = self.logs.slot().await;
        let (read, rx) = {
            let mut attachers = self.attachers.lock().unwrap();
            let read = slot.read(&self.log);
            let rx = (follow && *self.state_tx.borrow() != IoState::Exited).then(|| {
                let (a, f) = Attacher::pair();
                attachers.push(a);
                f
            });
            (read, rx)
        };
        (read.await.unwrap_or_default(), rx)
    }

    /// Records output: a JSON line in the log (as Docker's json-file driver writes), and a
    /// copy to each attached client still listening. Waits while the log writer is
    /// behind, which holds back the guest's output channel.
    pub async fn output(&self, chunk: Chunk) {
        let (stream, data) = match &chunk {
            Chunk::Stdout(d) => ("stdout", d),
            Chunk::Stderr(d) => ("stderr", d),
        };
        let entry = LogEntry {
            log: String::from_utf8_lossy(data).into_owned(),
            stream: stream.into(),
            time: chrono_now(),
        };
        let mut line = serde_json::to_vec(&entry).expect("a log entry serializes");
        line.push(b'\n');
        let slot = self.logs.slot().await;
        let mut attachers = self.attachers.lock().unwrap();
        slot.append(&self.log, line);
        attachers.retain(|a| a.send(&chunk));
    }

    /// Removes the log and its rotated files.
    pub async fn remove_log(&self) {
        self.logs.remove(&self.log).await;
    }
}

pub(crate) use super::logs::LogEntry;

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
    async fn a_client_that_does_not_read_is_dropped_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogWriter::start();
        let io = ContainerIo::new(dir.path().join("c.log"), &logs, Default::default());
        let mut stuck = io.attach(false).unwrap();
        let mut reader = io.attach(false).unwrap();
        let mib = Bytes::from(vec![b'x'; 1 << 20]);
        let n = MAX_QUEUED / (1 << 20) + 4;
        for _ in 0..n {
            io.output(Chunk::Stdout(mib.clone())).await;
            assert_eq!(reader.recv().await.map(|c| c.len()), Some(1 << 20));
        }
        // The reader kept up and is still attached; the stuck one got what fitted, then
        // its stream ended.
        assert_eq!(io.attachers.lock().unwrap().len(), 1);
        let mut got = 0;
        while let Some(c) = stuck.recv().await {
            got += c.len();
        }
        assert_eq!(got, MAX_QUEUED);
    }

    #[tokio::test]
    async fn fans_out_and_ends_on_exit() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogWriter::start();
        let io = ContainerIo::new(dir.path().join("c.log"), &logs, Default::default());
        let mut a = io.attach(false).unwrap();
        io.output(Chunk::Stdout(Bytes::from_static(b"hi\n"))).await;
        io.set_state(IoState::Exited);
        assert_eq!(
            a.recv().await,
            Some(Chunk::Stdout(Bytes::from_static(b"hi\n")))
        );
        assert_eq!(a.recv().await, None);
        assert!(io.attach(false).is_none());
        let (snapshot, follower) = io.log_and_follow(true).await;
        assert_eq!(snapshot.entries().len(), 1);
        assert!(follower.is_none());
        let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
        assert!(log.contains(r#""stream":"stdout""#), "{log}");
    }
}
