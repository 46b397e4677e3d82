//! The engine trait: the narrow surface the hub needs from an embedded store.

use std::sync::Arc;

use crate::{StoreError, Table};

/// A stored key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// A visitor of records in key order; an error stops the scan.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
}

impl WriteOp {
    pub fn table(&self) -> Table {
        match self {
            WriteOp::Put { table, .. } | WriteOp::Delete { table, .. } => *table,
        }
    }
}

/// Per-table figures kept as counters, never computed by scanning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub record_count: u64,
    /// Sum of key and value lengths of the live records.
    pub logical_bytes: u64,
}

/// An embedded key-value engine with one ordered tree per [`Table`].
///
/// Contract for implementations:
/// - `apply` is atomic across tables: after a crash either every op of a batch is present
///   or none is. It is visible to readers at once but durable only after `flush`.
/// - `flush` makes every batch applied before the call durable.
/// - `stats` are maintained with the writes (atomically with them), not by scanning.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every record of `table` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError>;
    /// Up to `limit` records of `table` with `from <= key < to`, in key order.
    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// The record with the greatest key starting with `prefix`.
    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<Record>, StoreError>;
    /// Visit every record of `table` in key order, without holding them all in memory.
    /// Concurrent writes may or may not be seen (a fuzzy scan).
    fn for_each(&self, table: Table, f: &mut Visitor<'_>) -> Result<(), StoreError>;
    fn apply(&self, batch: &[WriteOp]) -> Result<(), StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
    fn stats(&self, table: Table) -> TableStats;
    /// Bytes the engine occupies on disk (whole store).
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Did opening the store recover from an unclean shutdown?
    fn was_recovered(&self) -> bool;
    /// Short engine name for reports (`"sled"`).
    fn name(&self) -> &'static str;
    /// Begin an online compaction: an empty database beside the live one, to copy the live
    /// records into (see [`Compaction`]). Engines that cannot compact refuse.
    fn start_compaction(&self) -> Result<Box<dyn Compaction>, StoreError> {
        Err(StoreError::Engine(format!(
            "the {} engine cannot compact",
            self.name()
        )))
    }
}

/// A compaction in progress: a new database being filled with the live records. Whoever
/// drives it copies every table into it, then every write applied since the copy began,
/// and calls [`Compaction::switch`] while no write is applied to the live database. Dropped
/// before the switch, the copy is discarded; the live database never changes.
pub trait Compaction: Send {
    /// Write a batch into the new database (a copied chunk or a replayed write).
    fn apply(&mut self, batch: &[WriteOp]) -> Result<(), StoreError>;
    /// Make what was written to the new database durable.
    fn flush(&mut self) -> Result<(), StoreError>;
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Make the new database the live one: durable first (after a crash from here on the
    /// new database opens), then for every reader. Returns the replaced database, to remove.
    fn switch(self: Box<Self>) -> Result<Retired, StoreError>;
}

/// Truncate every large file under `dir` a step at a time before it is deleted: freeing
/// gigabytes in one unlink is one long file-system transaction, which a sync of the live
/// database would wait for.
fn shrink_files(dir: &std::path::Path) -> std::io::Result<()> {
    const STEP: u64 = 64 << 20;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            shrink_files(&entry.path())?;
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
        let mut len = file.metadata()?.len();
        while len > STEP {
            len -= STEP;
            file.set_len(len)?;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    Ok(())
}

/// A database replaced by a compaction: still open while readers that began before the
/// switch finish, then removed from disk by [`Retired::remove`].
pub struct Retired {
    db: Option<Arc<dyn Send + Sync>>,
    dir: std::path::PathBuf,
    parent: std::path::PathBuf,
}

impl Retired {
    pub fn new(
        db: Arc<dyn Send + Sync>,
        dir: std::path::PathBuf,
        parent: std::path::PathBuf,
    ) -> Retired {
        Retired {
            db: Some(db),
            dir,
            parent,
        }
    }

    /// Wait (up to `within`) for the last reader of the replaced database, close it and
    /// delete its directory. `Ok(false)` if a reader still holds it: the next start removes
    /// it then.
    pub fn remove(mut self, within: std::time::Duration) -> std::io::Result<bool> {
        let deadline = std::time::Instant::now() + within;
        let db = self.db.take().expect("removed once");
        while Arc::strong_count(&db) > 1 {
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(db);
        shrink_files(&self.dir)?;
        std::fs::remove_dir_all(&self.dir)?;
        crate::sync_dir(&self.parent)?;
        Ok(true)
    }

    /// The replaced database's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// Logical bytes (keys and values) of every table's live records, from the counters.
pub fn live_bytes(engine: &dyn Engine) -> u64 {
    Table::ALL
        .iter()
        .map(|t| engine.stats(*t).logical_bytes)
        .sum()
}

/// Read-only access to the store, shared by every actor. Writes go through the store actor.
#[derive(Clone)]
pub struct StoreReader {
    engine: Arc<dyn Engine>,
}

impl StoreReader {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        StoreReader { engine }
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(table, key)
    }

    pub fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.engine.scan_prefix(table, prefix)
    }

    /// Visit every record of `table` in key order without holding them all in memory.
    pub fn for_each(&self, table: Table, f: &mut Visitor<'_>) -> Result<(), StoreError> {
        self.engine.for_each(table, f)
    }

    pub fn range(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.engine.range(table, from, to, limit)
    }

    pub fn last_with_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Option<Record>, StoreError> {
        self.engine.last_with_prefix(table, prefix)
    }

    /// Read and decode one record.
    pub fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(table, key)?
            .map(|bytes| crate::decode(table, &bytes))
            .transpose()
    }

    /// The first `limit` records of `owner` in an owned-sequence table (keys
    /// `<owner>\0<seq>`) with `seq > since`, in sequence order, decoded.
    pub fn owned_after<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        owner: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let records = self.owned_records_after(table, owner, since)?;
        Ok(records
            .iter()
            .take(limit)
            .filter_map(|(key, bytes)| crate::decode_or_skip(table, key, bytes))
            .collect())
    }

    /// The last (newest) `limit` records of `owner` with `seq > since`, in sequence
    /// order, decoded: what a reader catching up on the latest wants.
    pub fn owned_newest_after<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        owner: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let records = self.owned_records_after(table, owner, since)?;
        let skip = records.len().saturating_sub(limit);
        Ok(records[skip..]
            .iter()
            .filter_map(|(key, bytes)| crate::decode_or_skip(table, key, bytes))
            .collect())
    }

    /// Every record of `owner` with `seq > since`, undecoded, in sequence order.
    fn owned_records_after(
        &self,
        table: Table,
        owner: &str,
        since: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let Some(first) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        let from = crate::owned_seq_key(owner, first);
        let mut to = crate::owner_prefix(owner);
        *to.last_mut().expect("prefix ends with a separator") = 1;
        // Exactly `<owner>\0` and 8 bytes: a key of an owner whose name extends this one
        // after a NUL (`bob\0x`, stored before ids were validated) is not `owner`'s.
        let key_len = to.len() + 8;
        let mut records = self.range(table, &from, &to, usize::MAX)?;
        records.retain(|(key, _)| key.len() == key_len);
        Ok(records)
    }

    pub fn stats(&self, table: Table) -> TableStats {
        self.engine.stats(table)
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.engine.size_on_disk()
    }

    pub fn was_recovered(&self) -> bool {
        self.engine.was_recovered()
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }
}
