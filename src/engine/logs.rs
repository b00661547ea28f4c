//! Containers' log files, written by one thread off the async workers.
//!
//! Each container (and exec) has a log in Docker's json-file format: one JSON line per
//! chunk of output. Lines go to the writer thread through a bounded queue, so a guest
//! that writes faster than the disk takes them is slowed down (its agent channel waits)
//! instead of growing the daemon's memory. A log is capped like json-file's `max-size`
//! and `max-file`: when the current file would pass `max_size`, it becomes `<log>.1`
//! (older ones shift up, the oldest is dropped) and a new file starts.
//!
//! Reads go through the same queue, so a reader sees every line queued before it and a
//! follower registered at the same moment sees every line after: nothing is missed or
//! seen twice.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// How much of a log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes in one file before it rotates.
    pub max_size: u64,
    /// Files kept, the current one included (at least 1).
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 10 MiB × 3: at most 30 MiB of disk per container.
    fn default() -> LogLimits {
        LogLimits {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

/// A line of a container's log file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// One log: its path and limits; the open file belongs to the writer thread.
pub(crate) struct LogFile {
    path: PathBuf,
    limits: LogLimits,
    open: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current file and the rotated ones, newest first.
    fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (0..self.limits.max_files.max(1)).map(|i| rotated(&self.path, i))
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap();
        if let Some((_, size)) = open.as_ref() {
            if *size > 0 && *size + line.len() as u64 > self.limits.max_size {
                *open = None;
                self.rotate()?;
            }
        }
        if open.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let size = f.metadata()?.len();
            *open = Some((f, size));
        }
        let (f, size) = open.as_mut().expect("opened above");
        f.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }

    fn rotate(&self) -> std::io::Result<()> {
        let n = self.limits.max_files.max(1);
        if n == 1 {
            return std::fs::remove_file(&self.path);
        }
        for i in (1..n).rev() {
            let from = rotated(&self.path, i - 1);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i))?;
            }
        }
        Ok(())
    }

    /// The kept files as they are now, oldest first, each open with its current length:
    /// what a reader reads, however the log rotates or grows afterwards.
    fn snapshot(&self) -> LogSnapshot {
        let mut files: Vec<PathBuf> = self.files().collect();
        files.reverse();
        let files = files
            .into_iter()
            .filter_map(|p| {
                let f = File::open(&p).ok()?;
                let len = f.metadata().ok()?.len();
                Some((f, len))
            })
            .collect();
        LogSnapshot {
            files: Arc::new(files),
        }
    }

    fn remove(&self) {
        *self.open.lock().unwrap() = None;
        for p in self.files() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    if i == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

enum Op {
    Append(Arc<LogFile>, Vec<u8>),
    Read(Arc<LogFile>, oneshot::Sender<LogSnapshot>),
    Close(Arc<LogFile>),
    Remove(Arc<LogFile>, oneshot::Sender<()>),
}

/// Lines queued at most before writers wait (each at most one agent frame, 32 KiB of
/// output, escaped).
const QUEUE: usize = 256;

/// The handle to the writer thread; cloned into every container's I/O.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Op>,
}

/// A place in the writer's queue, taken before a line's order is fixed.
pub(crate) struct Slot(Option<mpsc::OwnedPermit<Op>>);

impl LogWriter {
    /// Starts the writer thread; it ends when the last handle is dropped.
    pub fn start() -> LogWriter {
        let (tx, mut rx) = mpsc::channel::<Op>(QUEUE);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                while let Some(op) = rx.blocking_recv() {
                    match op {
                        Op::Append(log, line) => {
                            if let Err(e) = log.append(&line) {
                                tracing::warn!(log = %log.path.display(), "log write: {e}");
                            }
                        }
                        Op::Read(log, reply) => drop(reply.send(log.snapshot())),
                        Op::Close(log) => *log.open.lock().unwrap() = None,
                        Op::Remove(log, done) => {
                            log.remove();
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawn the log writer thread");
        LogWriter { tx }
    }

    /// A log at `path` kept within `limits`.
    pub(crate) fn file(&self, path: PathBuf, limits: LogLimits) -> Arc<LogFile> {
        Arc::new(LogFile {
            path,
            limits,
            open: Mutex::new(None),
        })
    }

    /// Waits for room in the queue (back-pressure); a slot of a stopped writer is empty.
    pub(crate) async fn slot(&self) -> Slot {
        Slot(self.tx.clone().reserve_owned().await.ok())
    }

    /// Closes the file (the process exited); best effort, as dropping it would.
    pub(crate) fn close(&self, log: &Arc<LogFile>) {
        let _ = self.tx.try_send(Op::Close(log.clone()));
    }

    /// Removes the log and its rotated files, after every line queued before.
    pub(crate) async fn remove(&self, log: &Arc<LogFile>) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Remove(log.clone(), done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

impl Slot {
    pub(crate) fn append(self, log: &Arc<LogFile>, line: Vec<u8>) {
        if let Some(p) = self.0 {
            p.send(Op::Append(log.clone(), line));
        }
    }

    /// Asks for the log as it is once every line queued before this one is written.
    pub(crate) fn read(self, log: &Arc<LogFile>) -> oneshot::Receiver<LogSnapshot> {
        let (tx, rx) = oneshot::channel();
        if let Some(p) = self.0 {
            p.send(Op::Read(log.clone(), tx));
        }
        rx
    }
}

/// A log as it was at one moment: its files, open, and how much of each to read. Read
/// in batches ([`LogReader`]), so a reader never holds more than a batch of a log that
/// may be tens of MiB.
#[derive(Clone, Default)]
pub struct LogSnapshot {
    files: Arc<Vec<(File, u64)>>,
}

/// Most bytes of a line kept while looking for its end: the daemon writes lines of at
/// most one agent frame's output, escaped; anything longer is not one of its lines.
const MAX_LINE: usize = 1 << 20;

impl LogSnapshot {
    /// A reader from the first line.
    pub fn reader(&self) -> LogReader {
        LogReader {
            snapshot: self.clone(),
            index: 0,
            offset: 0,
            pending: Vec::new(),
            skipping: false,
        }
    }

    /// Every entry at once (blocking I/O): for tests and small logs.
    pub fn entries(&self) -> Vec<LogEntry> {
        let mut r = self.reader();
        let mut all = Vec::new();
        loop {
            let batch = r.next_batch(1 << 20);
            if batch.is_empty() && r.done() {
                return all;
            }
            all.extend(batch);
        }
    }
}

/// Reads a [`LogSnapshot`] in order, a batch at a time.
pub struct LogReader {
    snapshot: LogSnapshot,
    index: usize,
    offset: u64,
    pending: Vec<u8>,
    skipping: bool,
}

impl LogReader {
    /// Whether every file has been read.
    pub fn done(&self) -> bool {
        self.index >= self.snapshot.files.len()
    }

    /// The entries of about `budget` more bytes of the log, oldest first (blocking
    /// I/O: call it off the async workers). Lines that do not parse are skipped. Empty
    /// once [`done`](Self::done).
    pub fn next_batch(&mut self, budget: usize) -> Vec<LogEntry> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        let mut read = 0;
        let mut buf = vec![0u8; 64 << 10];
        while read < budget && !self.done() {
            let (file, len) = &self.snapshot.files[self.index];
            let want =
                (len - self.offset.min(*len)).min(buf.len().min(budget - read) as u64) as usize;
            let n = if want == 0 {
                0
            } else {
                file.read_at(&mut buf[..want], self.offset).unwrap_or(0)
            };
            if n == 0 {
                // This file is read (or shorter than it was): its last line, if it
                // has no newline, still counts.
                if !self.skipping {
                    out.extend(serde_json::from_slice(&self.pending).ok());
                }
                self.pending.clear();
                self.skipping = false;
                self.index += 1;
                self.offset = 0;
                continue;
            }
            self.offset += n as u64;
            read += n;
            let mut rest = &buf[..n];
            while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                if !self.skipping {
                    self.pending.extend_from_slice(&rest[..i]);
                    out.extend(serde_json::from_slice(&self.pending).ok());
                }
                self.pending.clear();
                self.skipping = false;
                rest = &rest[i + 1..];
            }
            if !self.skipping {
                self.pending.extend_from_slice(rest);
                if self.pending.len() > MAX_LINE {
                    self.pending.clear();
                    self.skipping = true;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Vec<u8> {
        let e = LogEntry {
            log: format!("{n:04}\n"),
            stream: "stdout".into(),
            time: "2026-01-01T00:00:00.000000000Z".into(),
        };
        let mut v = serde_json::to_vec(&e).unwrap();
        v.push(b'\n');
        v
    }

    #[tokio::test]
    async fn rotates_and_reads_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: 1000,
            max_files: 3,
        };
        let w = LogWriter::start();
        let log = w.file(dir.path().join("c.log"), limits);
        for n in 0..200 {
            w.slot().await.append(&log, line(n));
        }
        let entries = w.slot().await.read(&log).await.unwrap().entries();
        // Three files of at most 1000 bytes: the newest lines, in order, none twice.
        let total: u64 = log
            .files()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        assert!(total <= 3000, "{total} bytes kept");
        assert!(!rotated(&log.path, 3).exists());
        let nums: Vec<usize> = entries
            .iter()
            .map(|e| e.log.trim().parse().unwrap())
            .collect();
        assert_eq!(nums.last(), Some(&199));
        assert!(nums.len() > 20, "{}", nums.len());
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        w.remove(&log).await;
        assert!(log.files().all(|p| !p.exists()));
    }

    #[tokio::test]
    async fn one_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: 500,
            max_files: 1,
        };
        let w = LogWriter::start();
        let log = w.file(dir.path().join("c.log"), limits);
        for n in 0..50 {
            w.slot().await.append(&log, line(n));
        }
        let entries = w.slot().await.read(&log).await.unwrap().entries();
        assert!(std::fs::metadata(log.path()).unwrap().len() <= 500);
        assert_eq!(entries.last().unwrap().log, "0049\n");
    }

    /// A snapshot is read in batches of about the budget asked, in order, across rotated
    /// files; lines appended after it are not in it; a line without its end too long to
    /// be one of the daemon's is skipped, and the next line read.
    #[tokio::test]
    async fn snapshots_read_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: 2000,
            max_files: 3,
        };
        let w = LogWriter::start();
        let log = w.file(dir.path().join("c.log"), limits);
        for n in 0..60 {
            w.slot().await.append(&log, line(n));
        }
        let snap = w.slot().await.read(&log).await.unwrap();
        for n in 60..70 {
            w.slot().await.append(&log, line(n));
        }
        let mut r = snap.reader();
        let mut nums = Vec::new();
        while !r.done() {
            let batch = r.next_batch(200);
            assert!(
                batch.len() <= 4,
                "{} entries for a 200-byte budget",
                batch.len()
            );
            nums.extend(batch.iter().map(|e| e.log.trim().parse::<usize>().unwrap()));
        }
        assert_eq!(nums.last(), Some(&59));
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");

        let path = dir.path().join("long.log");
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.push(b'\n');
        data.extend(line(7));
        std::fs::write(&path, &data).unwrap();
        let long = w.file(path, limits);
        let entries = w.slot().await.read(&long).await.unwrap().entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].log, "0007\n");
    }
}
