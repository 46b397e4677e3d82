//! The sled engine: one tree per table, plus an internal `__stats` tree holding the
//! per-table counters, updated in the same transaction as the writes they count.
//!
//! Durability: sled 0.34's own flush writes the log with `sync_file_range`, which neither
//! flushes the disk's write cache nor the file's metadata, and writes blob files without
//! any sync at all (sled issue #1452). [`SledFiles`] completes every flush with real syncs.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionResult, TransactionalTree};
use sled::Transactional;

use crate::engine::{Record, Visitor};
use crate::{Engine, StoreError, Table, TableStats, WriteOp};

const STATS_TREE: &str = "__stats";
const STATS_INDEX: usize = Table::ALL.len();

/// sled 0.34 behind the [`Engine`] trait.
pub struct SledEngine {
    db: sled::Db,
    path: PathBuf,
    /// One tree per table in [`Table::ALL`] order, then the stats tree.
    trees: Vec<sled::Tree>,
    counts: Vec<AtomicU64>,
    bytes: Vec<AtomicU64>,
    files: Mutex<SledFiles>,
}

/// The files sled 0.34.7 keeps under its directory, and what has been synced of them.
///
/// The layout, from sled's source (`config.rs`: `db_path`, `config_path`, `blob_path`;
/// `pagecache/snapshot.rs`: `write_snapshot`):
/// - `db`: the log, written in place by `pwrite` and `sync_file_range`;
/// - `conf`: the storage parameters, written once at creation, without a sync;
/// - `blobs/<lsn>`: one file per value too large for a log segment, created with
///   `create_new` and never modified, written without a sync; removed by sled's GC;
/// - `snap.<lsn>`: snapshots, synced by sled and renamed into place (no directory sync).
///
/// `sled_layout_is_what_the_syncs_assume` fails if an upgrade changes this.
struct SledFiles {
    dir: PathBuf,
    log: File,
    /// The entries of the sled directory as of the last directory sync.
    dir_entries: BTreeSet<OsString>,
    /// The blob files already synced (they never change once written).
    blobs: BTreeSet<OsString>,
}

impl SledFiles {
    /// Sync every file and directory of a freshly opened store, `data_dir` included, so
    /// that the store's creation (or sled's recovery writes) are durable.
    fn open(data_dir: &Path, dir: &Path) -> std::io::Result<SledFiles> {
        let log = File::open(dir.join("db"))?;
        let mut files = SledFiles {
            dir: dir.to_path_buf(),
            log,
            dir_entries: BTreeSet::new(),
            blobs: BTreeSet::new(),
        };
        for name in list_dir(dir)? {
            let path = dir.join(&name);
            if path.is_file() {
                File::open(&path)?.sync_all()?;
            }
        }
        files.sync()?;
        sync_dir(data_dir)?;
        Ok(files)
    }

    /// Make durable everything sled has written: the log's data (and its size), every blob
    /// file written since the last call, and the directory entries sled created, renamed
    /// or removed. Called after sled's own flush, so it covers every write flushed by it.
    fn sync(&mut self) -> std::io::Result<()> {
        self.log.sync_data()?;
        let blob_dir = self.dir.join("blobs");
        let blobs = list_dir(&blob_dir)?;
        if blobs != self.blobs {
            for name in blobs.difference(&self.blobs) {
                match File::open(blob_dir.join(name)) {
                    Ok(f) => f.sync_data()?,
                    // Written and collected again since the listing.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            sync_dir(&blob_dir)?;
            self.blobs = blobs;
        }
        let entries = list_dir(&self.dir)?;
        if entries != self.dir_entries {
            sync_dir(&self.dir)?;
            self.dir_entries = entries;
        }
        Ok(())
    }
}

fn list_dir(dir: &Path) -> std::io::Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

/// `fsync` a directory, making the creation, renaming and removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl SledEngine {
    /// Open (or create) the store under `<data_dir>/db`.
    pub fn open(data_dir: &Path) -> Result<SledEngine, StoreError> {
        let path = data_dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let mut trees = Vec::with_capacity(STATS_INDEX + 1);
        for table in Table::ALL {
            trees.push(
                db.open_tree(table.name())
                    .map_err(|e| open_error(&path, e))?,
            );
        }
        trees.push(db.open_tree(STATS_TREE).map_err(|e| open_error(&path, e))?);
        db.flush().map_err(|e| open_error(&path, e))?;
        let files = SledFiles::open(data_dir, &path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("could not sync the store's files: {e}"),
        })?;
        let engine = SledEngine {
            db,
            path,
            trees,
            counts: Table::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            bytes: Table::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            files: Mutex::new(files),
        };
        engine.load_stats()?;
        engine.flush()?;
        Ok(engine)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load the persisted counters. A table without a counter (a store written before
    /// counters existed) is counted once and the result persisted.
    fn load_stats(&self) -> Result<(), StoreError> {
        let stats_tree = &self.trees[STATS_INDEX];
        for table in Table::ALL {
            let i = table.index();
            let stats = match stats_tree.get([i as u8])? {
                Some(raw) => decode_stats(&raw),
                None => {
                    let mut s = TableStats::default();
                    for entry in self.trees[i].iter() {
                        let (k, v) = entry?;
                        s.record_count += 1;
                        s.logical_bytes += (k.len() + v.len()) as u64;
                    }
                    stats_tree.insert([i as u8], &encode_stats(s))?;
                    s
                }
            };
            self.counts[i].store(stats.record_count, Ordering::Relaxed);
            self.bytes[i].store(stats.logical_bytes, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    let reason = e.to_string();
    if reason.contains("could not acquire lock") {
        StoreError::Locked {
            path: path.display().to_string(),
        }
    } else {
        StoreError::Open {
            path: path.display().to_string(),
            reason,
        }
    }
}

fn encode_stats(s: TableStats) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&s.record_count.to_be_bytes());
    out[8..].copy_from_slice(&s.logical_bytes.to_be_bytes());
    out
}

fn decode_stats(raw: &[u8]) -> TableStats {
    let word = |r: std::ops::Range<usize>| {
        raw.get(r)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    };
    TableStats {
        record_count: word(0..8),
        logical_bytes: word(8..16),
    }
}

/// Apply `batch` inside a transaction and return the new stats of every table it touched.
fn apply_in_tx(
    views: &[TransactionalTree],
    batch: &[WriteOp],
) -> ConflictableTransactionResult<Vec<(Table, TableStats)>, ()> {
    let mut deltas: Vec<(Table, i64, i64)> = Vec::new();
    for op in batch {
        let table = op.table();
        let view = &views[table.index()];
        let (dc, db) = match op {
            WriteOp::Put { key, value, .. } => {
                let new_len = (key.len() + value.len()) as i64;
                match view.insert(key.as_slice(), value.as_slice())? {
                    Some(prev) => (0, new_len - (key.len() + prev.len()) as i64),
                    None => (1, new_len),
                }
            }
            WriteOp::Delete { key, .. } => match view.remove(key.as_slice())? {
                Some(prev) => (-1, -((key.len() + prev.len()) as i64)),
                None => (0, 0),
            },
        };
        match deltas.iter_mut().find(|(t, _, _)| *t == table) {
            Some(entry) => {
                entry.1 += dc;
                entry.2 += db;
            }
            None => deltas.push((table, dc, db)),
        }
    }
    let stats_view = &views[STATS_INDEX];
    let mut out = Vec::with_capacity(deltas.len());
    for (table, dc, db) in deltas {
        let key = [table.index() as u8];
        let old = stats_view
            .get(key)?
            .map(|raw| decode_stats(&raw))
            .unwrap_or_default();
        let new = TableStats {
            record_count: old.record_count.saturating_add_signed(dc),
            logical_bytes: old.logical_bytes.saturating_add_signed(db),
        };
        stats_view.insert(&key, &encode_stats(new))?;
        out.push((table, new));
    }
    Ok(out)
}

impl Engine for SledEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.trees[table.index()].get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.trees[table.index()]
            .scan_prefix(prefix)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.trees[table.index()]
            .range(from..to)
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<Record>, StoreError> {
        match self.trees[table.index()].scan_prefix(prefix).next_back() {
            Some(entry) => {
                let (k, v) = entry?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn for_each(&self, table: Table, f: &mut Visitor<'_>) -> Result<(), StoreError> {
        for entry in self.trees[table.index()].iter() {
            let (k, v) = entry?;
            f(&k, &v)?;
        }
        Ok(())
    }

    fn apply(&self, batch: &[WriteOp]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let new_stats = self.trees[..]
            .transaction(|views| apply_in_tx(views, batch))
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Engine("transaction aborted".into())
                }
                sled::transaction::TransactionError::Storage(e) => e.into(),
            })?;
        for (table, s) in new_stats {
            self.counts[table.index()].store(s.record_count, Ordering::Relaxed);
            self.bytes[table.index()].store(s.logical_bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // One sync at a time: a flush that waits here is covered by the next sync, which
        // begins after its writes reached the files.
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        self.db.flush()?;
        files
            .sync()
            .map_err(|e| StoreError::Engine(format!("could not sync the store's files: {e}")))
    }

    fn stats(&self, table: Table) -> TableStats {
        TableStats {
            record_count: self.counts[table.index()].load(Ordering::Relaxed),
            logical_bytes: self.bytes[table.index()].load(Ordering::Relaxed),
        }
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn was_recovered(&self) -> bool {
        self.db.was_recovered()
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(table: Table, k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            table,
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_table_opens_and_counters_follow_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        for t in Table::ALL {
            assert_eq!(engine.stats(t), TableStats::default());
        }
        engine
            .apply(&[
                put(Table::AgentcomConfig, "a", "1"),
                put(Table::AgentcomConfig, "b", "22"),
                put(Table::AuthTokens, "t", "x"),
            ])
            .unwrap();
        engine
            .apply(&[put(Table::AgentcomConfig, "a", "333")])
            .unwrap();
        let cfg = engine.stats(Table::AgentcomConfig);
        assert_eq!(cfg.record_count, 2);
        assert_eq!(cfg.logical_bytes, (1 + 3) + (1 + 2));
        engine
            .apply(&[
                WriteOp::Delete {
                    table: Table::AgentcomConfig,
                    key: b"b".to_vec(),
                },
                WriteOp::Delete {
                    table: Table::AgentcomConfig,
                    key: b"missing".to_vec(),
                },
            ])
            .unwrap();
        assert_eq!(engine.stats(Table::AgentcomConfig).record_count, 1);
        assert_eq!(
            engine.get(Table::AgentcomConfig, b"a").unwrap().unwrap(),
            b"333"
        );
    }

    /// The syncs in [`SledFiles`] assume sled's file layout; a sled upgrade that changes it
    /// must fail here rather than silently leave files unsynced.
    #[test]
    fn sled_layout_is_what_the_syncs_assume() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        // Larger than a quarter segment (sled's blob threshold): stored as a blob file.
        let big = vec![b'x'; 300 * 1024];
        engine
            .apply(&[WriteOp::Put {
                table: Table::HubMeta,
                key: b"big".to_vec(),
                value: big.clone(),
            }])
            .unwrap();
        engine.flush().unwrap();
        let db = dir.path().join("db");
        for name in list_dir(&db).unwrap() {
            let name = name.to_string_lossy().into_owned();
            assert!(
                name == "db" || name == "conf" || name == "blobs" || name.starts_with("snap."),
                "sled wrote a file the syncs do not know: {name}"
            );
        }
        assert!(db.join("db").is_file() && db.join("conf").is_file());
        let blobs = list_dir(&db.join("blobs")).unwrap();
        assert_eq!(blobs.len(), 1, "the large value is a blob file");
        let files = engine.files.lock().unwrap();
        assert_eq!(files.blobs, blobs, "the flush synced the new blob file");
        assert!(files.dir_entries.contains(std::ffi::OsStr::new("blobs")));
        drop(files);
        assert_eq!(engine.get(Table::HubMeta, b"big").unwrap().unwrap(), big);
    }

    #[test]
    fn counters_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            engine.apply(&[put(Table::HubMeta, "k", "v")]).unwrap();
            engine.flush().unwrap();
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.stats(Table::HubMeta).record_count, 1);
        assert_eq!(engine.stats(Table::HubMeta).logical_bytes, 2);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledEngine::open(dir.path()).unwrap();
        match SledEngine::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("expected Locked, got a second engine"),
        }
    }

    #[test]
    fn ranges_and_last_with_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        engine
            .apply(&[
                put(Table::MessageHistory, "a1", "x"),
                put(Table::MessageHistory, "a2", "y"),
                put(Table::MessageHistory, "a3", "z"),
                put(Table::MessageHistory, "b1", "w"),
            ])
            .unwrap();
        let rows = engine
            .range(Table::MessageHistory, b"a2", b"b", 10)
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            engine.range(Table::MessageHistory, b"a1", b"b", 1).unwrap()[0].0,
            b"a1"
        );
        assert_eq!(
            engine
                .last_with_prefix(Table::MessageHistory, b"a")
                .unwrap()
                .unwrap()
                .0,
            b"a3"
        );
        assert!(engine
            .last_with_prefix(Table::MessageHistory, b"c")
            .unwrap()
            .is_none());
    }

    #[test]
    fn scan_prefix_returns_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        engine
            .apply(&[
                put(Table::ThreadReplies, "p/2", "b"),
                put(Table::ThreadReplies, "p/1", "a"),
                put(Table::ThreadReplies, "q/1", "c"),
            ])
            .unwrap();
        let rows = engine.scan_prefix(Table::ThreadReplies, b"p/").unwrap();
        let keys: Vec<_> = rows.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![b"p/1".as_slice(), b"p/2".as_slice()]);
    }
}
