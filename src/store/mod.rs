//! The daemon's persistent state: an embedded, crash-safe database (redb, with
//! checksummed commit slots and `Durability::Immediate` commits) under the root directory,
//! `<root>/state.redb`. Values are JSON so that records can grow fields without
//! migrations.
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Db(String),
    #[error("state store: bad record {0}: {1}")]
    Decode(String, String),
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let db = Database::create(root.join("state.redb")).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(PODS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    pub fn put_pod<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(db_err)?;
        self.put_raw(id, &bytes)
    }

    fn put_raw(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(PODS).map_err(db_err)?;
            t.insert(id, bytes).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub fn delete_pod(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(PODS).map_err(db_err)?;
            t.remove(id).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Every pod record; records that do not decode are reported, not fatal.
    pub fn pods<T: DeserializeOwned>(&self) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PODS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Decode(k.value().to_string(), e.to_string())),
            );
        }
        Ok(out)
    }
}

/// One change for the writer thread.
enum Job {
    Put(String, Vec<u8>),
    Delete(String),
    /// Nothing: answered once every job before it is done.
    Flush,
}

/// Where the writer says how a job went (nowhere for a background write).
type Done = Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>;

/// The state store's writer: one thread that makes every commit (each an fsync), in the
/// order they were asked for, so that no commit runs on an async worker and a later
/// snapshot of a pod is never overwritten by an earlier one.
pub(crate) struct Writer {
    tx: Option<std::sync::mpsc::Sender<(Job, Done)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Unit tests commit on the caller's thread: a wait for another thread would let
    /// tokio's paused clock jump ahead meanwhile.
    #[cfg(test)]
    inline: std::sync::Arc<Store>,
}

impl Drop for Writer {
    /// Finishes the queued commits and closes the store (a new daemon, or a test, may open
    /// it right after).
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    pub(crate) fn start(store: std::sync::Arc<Store>) -> Writer {
        #[cfg(test)]
        let inline = store.clone();
        let (tx, rx) = std::sync::mpsc::channel::<(Job, Done)>();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                for (job, done) in rx {
                    let r = match &job {
                        Job::Put(id, bytes) => store.put_raw(id, bytes),
                        Job::Delete(id) => store.delete_pod(id),
                        Job::Flush => Ok(()),
                    };
                    if let Err(e) = &r {
                        tracing::error!("{e}");
                    }
                    if let Some(done) = done {
                        let _ = done.send(r);
                    }
                }
            })
            .expect("the state writer thread starts");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
            #[cfg(test)]
            inline,
        }
    }

    fn send(&self, job: Job) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = tokio::sync::oneshot::channel();
        #[cfg(test)]
        let _ = done.send(match &job {
            Job::Put(id, bytes) => self.inline.put_raw(id, bytes),
            Job::Delete(id) => self.inline.delete_pod(id),
            Job::Flush => Ok(()),
        });
        #[cfg(not(test))]
        if let Some(tx) = &self.tx {
            let _ = tx.send((job, Some(done)));
        }
        rx
    }

    /// Queues a record's commit now; the answer says when it is on disk.
    pub(crate) fn queue<T: Serialize>(
        &self,
        id: &str,
        record: &T,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> {
        let rx = match serde_json::to_vec(record) {
            Ok(bytes) => Ok(self.send(Job::Put(id.to_string(), bytes))),
            Err(e) => Err(db_err(e)),
        };
        async move {
            rx?.await
                .unwrap_or_else(|_| Err(StoreError::Db("the state writer stopped".into())))
        }
    }

    /// Commits a record without waiting (failures are logged).
    pub(crate) fn put_in_background<T: Serialize>(&self, id: &str, record: &T) {
        if let Ok(bytes) = serde_json::to_vec(record) {
            #[cfg(test)]
            let _ = self.inline.put_raw(id, &bytes);
            #[cfg(not(test))]
            if let Some(tx) = &self.tx {
                let _ = tx.send((Job::Put(id.to_string(), bytes), None));
            }
        }
    }

    /// Waits until every commit queued so far is on disk.
    pub(crate) async fn flush(&self) {
        let _ = self.send(Job::Flush).await;
    }

    /// Deletes a record and waits until that is on disk.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.send(Job::Delete(id.to_string()))
            .await
            .unwrap_or_else(|_| Err(StoreError::Db("the state writer stopped".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_pod("a", &serde_json::json!({"x": 1})).unwrap();
            s.put_pod("b", &serde_json::json!({"x": 2})).unwrap();
            s.delete_pod("a").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let pods: Vec<serde_json::Value> =
            s.pods().unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(pods, vec![serde_json::json!({"x": 2})]);
    }
}
