//! The `ClusterStore` trait and its embedded single-node implementation.
//!
//! The trait is a small key-value interface with multi-key compare-and-set transactions, the
//! subset etcd offers natively (Txn with value/existence compares), so that the etcd store of
//! the multi-node issue drops in behind the same typed layer.

use async_trait::async_trait;
use brick_tuning::{STORE_LOG_COMPACT_BYTES, STORE_RECORD_BYTES_MAX};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster store record too large: {0} bytes")]
    TooLarge(usize),
    #[error("cluster store data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A condition of a transaction: the key holds exactly this value (`None`: the key is absent).
pub type Check = (String, Option<Vec<u8>>);

#[async_trait]
pub trait ClusterStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `ops` atomically and durably if every check holds; returns whether it did.
    async fn txn(&self, checks: &[Check], ops: &[TxnOp]) -> Result<bool, StoreError>;
    /// Puts `key` for as long as this process lives: etcd keeps it under a lease of
    /// `ttl_ms`, renewed in the background, so it vanishes when the process dies or hangs.
    /// The embedded store puts it plainly (its only node is alive while it runs).
    async fn put_alive(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), StoreError>;
    /// A counter that moves (coalesced) after keys under `prefix` changed.
    async fn watch(&self, prefix: &str) -> Result<tokio::sync::watch::Receiver<u64>, StoreError>;
    /// What backs this store, for `volume info` and logs.
    fn describe(&self) -> String;
}

/// Single-node store: a map in memory, a log of crc32c-protected transaction records on disk
/// (format: docs/disk-format.md). Each transaction is one record, fsynced before it applies.
pub struct EmbeddedStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

struct Inner {
    map: BTreeMap<String, Vec<u8>>,
    log: File,
    log_bytes: u64,
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        // The store holds password-equivalent keys: the daemon's alone (it runs with umask 0).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join("cluster.log");
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let mut map = BTreeMap::new();
        let mut at = 0;
        while let Some((ops, used)) = parse_record(&bytes[at..]) {
            for op in ops {
                apply(&mut map, op);
            }
            at += used;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        if at < bytes.len() {
            // A torn tail from a crash mid-append: never applied, cut so appends stay parseable.
            log.set_len(at as u64)?;
            log.sync_all()?;
        }
        let store = EmbeddedStore {
            changed: tokio::sync::watch::channel(0).0,
            path,
            inner: Mutex::new(Inner {
                map,
                log,
                log_bytes: at as u64,
            }),
        };
        if at as u64 > STORE_LOG_COMPACT_BYTES {
            store.compact()?;
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn compact(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        // Several records when the state outgrows one; the file is only renamed into place once
        // complete, so the split does not weaken atomicity.
        let mut snapshot = Vec::new();
        let mut ops = Vec::new();
        let mut ops_bytes = 0usize;
        for (k, v) in &inner.map {
            let op_bytes = 9 + k.len() + v.len();
            if !ops.is_empty() && ops_bytes + op_bytes > STORE_RECORD_BYTES_MAX / 2 {
                snapshot.extend_from_slice(&encode_record(&ops)?);
                ops.clear();
                ops_bytes = 0;
            }
            ops.push(TxnOp::Put(k.clone(), v.clone()));
            ops_bytes += op_bytes;
        }
        snapshot.extend_from_slice(&encode_record(&ops)?);
        let tmp = self.path.with_extension("log.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&snapshot)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        inner.log = OpenOptions::new().append(true).open(&self.path)?;
        inner.log_bytes = snapshot.len() as u64;
        Ok(())
    }
}

fn apply(map: &mut BTreeMap<String, Vec<u8>>, op: TxnOp) {
    match op {
        TxnOp::Put(k, v) => {
            map.insert(k, v);
        }
        TxnOp::Delete(k) => {
            map.remove(&k);
        }
    }
}

fn encode_record(ops: &[TxnOp]) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::new();
    body.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        let (code, key, value): (u8, &str, &[u8]) = match op {
            TxnOp::Put(k, v) => (OP_PUT, k, v),
            TxnOp::Delete(k) => (OP_DELETE, k, &[]),
        };
        body.push(code);
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value);
    }
    if body.len() > STORE_RECORD_BYTES_MAX {
        return Err(StoreError::TooLarge(body.len()));
    }
    let mut record = Vec::with_capacity(body.len() + 8);
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

fn parse_record(bytes: &[u8]) -> Option<(Vec<TxnOp>, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if len > STORE_RECORD_BYTES_MAX {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(8..8 + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = body.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut ops = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let code = take(1)?[0];
        let klen = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let key = String::from_utf8(take(klen)?.to_vec()).ok()?;
        let vlen = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let value = take(vlen)?.to_vec();
        ops.push(match code {
            OP_PUT => TxnOp::Put(key, value),
            OP_DELETE => TxnOp::Delete(key),
            _ => return None,
        });
    }
    Some((ops, 8 + len))
}

#[async_trait]
impl ClusterStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().map.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn txn(&self, checks: &[Check], ops: &[TxnOp]) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        for (key, expected) in checks {
            if inner.map.get(key) != expected.as_ref() {
                return Ok(false);
            }
        }
        let record = encode_record(ops)?;
        let written = inner
            .log
            .write_all(&record)
            .and_then(|_| inner.log.sync_data());
        if let Err(e) = written {
            // Cut the partial record, or later transactions would sit behind it and be lost.
            let len = inner.log_bytes;
            let _ = inner.log.set_len(len);
            return Err(e.into());
        }
        inner.log_bytes += record.len() as u64;
        for op in ops {
            apply(&mut inner.map, op.clone());
        }
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    async fn put_alive(&self, key: &str, value: Vec<u8>, _ttl_ms: u64) -> Result<(), StoreError> {
        self.txn(&[], &[TxnOp::Put(key.to_string(), value)]).await?;
        Ok(())
    }

    async fn watch(&self, _prefix: &str) -> Result<tokio::sync::watch::Receiver<u64>, StoreError> {
        Ok(self.changed.subscribe())
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transactions_are_durable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            assert!(s
                .txn(
                    &[("a".into(), None)],
                    &[TxnOp::Put("a".into(), b"1".to_vec())]
                )
                .await
                .unwrap());
            assert!(!s
                .txn(
                    &[("a".into(), None)],
                    &[TxnOp::Put("a".into(), b"2".to_vec())]
                )
                .await
                .unwrap());
            assert!(s
                .txn(
                    &[("a".into(), Some(b"1".to_vec()))],
                    &[
                        TxnOp::Put("a".into(), b"3".to_vec()),
                        TxnOp::Put("b/x".into(), b"4".to_vec())
                    ]
                )
                .await
                .unwrap());
            s.txn(
                &[],
                &[
                    TxnOp::Put("b/y".into(), b"5".to_vec()),
                    TxnOp::Delete("a".into()),
                ],
            )
            .await
            .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.get("a").await.unwrap(), None);
        let listed = s.list("b/").await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1], ("b/y".to_string(), b"5".to_vec()));
    }

    #[tokio::test]
    async fn torn_and_corrupt_tails_are_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.txn(&[], &[TxnOp::Put("k".into(), b"good".to_vec())])
                .await
                .unwrap();
            s.txn(&[], &[TxnOp::Put("k".into(), b"later".to_vec())])
                .await
                .unwrap();
        }
        let path = dir.path().join("cluster.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xFF; // corrupt the value of the second record
        std::fs::write(&path, &bytes).unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.get("k").await.unwrap(), Some(b"good".to_vec()));
        // Appends after the cut tail still parse on the next open.
        s.txn(&[], &[TxnOp::Put("k2".into(), b"v".to_vec())])
            .await
            .unwrap();
        drop(s);
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.get("k2").await.unwrap(), Some(b"v".to_vec()));
    }
}
