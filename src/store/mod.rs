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
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(PODS).map_err(db_err)?;
            t.insert(id, bytes.as_slice()).map_err(db_err)?;
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
