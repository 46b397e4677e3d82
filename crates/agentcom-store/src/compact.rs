//! Compaction: copy the live records into a fresh database and switch to it, leaving
//! behind what the old one wasted (sled keeps superseded versions of pages in its log
//! until it rewrites segments, and never shrinks its file).
//!
//! The copy goes through [`Compaction`]: [`copy_all`] copies every table; a hub compacting
//! online also replays the writes applied meanwhile (see the hub's compaction module)
//! before it switches, while writes wait. [`compact_stopped`] is the whole of it for a store
//! no one else writes to (`agentcom compact`).

use std::time::{Duration, Instant};

use crate::{Compaction, Engine, StoreError, Table, WriteOp};

/// A copied chunk is applied once it holds this many bytes of keys and values.
const CHUNK_BYTES: usize = 4 << 20;
/// ... or this many records.
const CHUNK_RECORDS: usize = 2_000;
/// The copy is made durable every this many bytes, so that the dirty pages it leaves in
/// the page cache stay few: with many of them, a sync of the live database (every
/// acknowledged write) waits for the file system to write them out too (ext4's ordered
/// journal), which stalled acknowledgements for a quarter of a second.
const SYNC_EVERY_BYTES: usize = 16 << 20;
/// How long a compaction waits for the readers of the replaced database before leaving
/// its removal to the next start.
pub const RETIRE_WITHIN: Duration = Duration::from_secs(10);

/// Copy every record of every table into `target`, in chunks. Concurrent writes may or may
/// not be seen (a fuzzy copy): whoever writes meanwhile replays its writes afterwards.
/// Returns the number of records copied.
pub fn copy_all(engine: &dyn Engine, target: &mut dyn Compaction) -> Result<u64, StoreError> {
    let mut copied = 0u64;
    let mut unsynced = 0usize;
    for table in Table::ALL {
        let mut chunk: Vec<WriteOp> = Vec::new();
        let mut bytes = 0usize;
        engine.for_each(table, &mut |key, value| {
            bytes += key.len() + value.len();
            chunk.push(WriteOp::Put {
                table,
                key: key.to_vec(),
                value: value.to_vec(),
            });
            if bytes >= CHUNK_BYTES || chunk.len() >= CHUNK_RECORDS {
                target.apply(&chunk)?;
                copied += chunk.len() as u64;
                chunk.clear();
                unsynced += std::mem::take(&mut bytes);
                if unsynced >= SYNC_EVERY_BYTES {
                    target.flush()?;
                    unsynced = 0;
                }
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            target.apply(&chunk)?;
            copied += chunk.len() as u64;
        }
    }
    Ok(copied)
}

/// Replay writes applied to the live database since the copy began, in their order.
pub fn replay(target: &mut dyn Compaction, batches: &[Vec<WriteOp>]) -> Result<(), StoreError> {
    batches.iter().try_for_each(|batch| target.apply(batch))
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    pub duration_ms: u64,
    /// The live database's size on disk before, and the new one's after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records: u64,
    /// Whether the replaced database is already deleted (else the next start deletes it).
    pub old_removed: bool,
}

impl CompactReport {
    pub fn reclaimed_bytes(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// Compact a store that nobody else writes to: copy, switch, remove the old database.
pub fn compact_stopped(engine: &dyn Engine) -> Result<CompactReport, StoreError> {
    let started = Instant::now();
    let bytes_before = engine.size_on_disk()?;
    let mut target = engine.start_compaction()?;
    let records = copy_all(engine, target.as_mut())?;
    let retired = target.switch()?;
    let old_removed = retired.remove(RETIRE_WITHIN).map_err(|e| {
        StoreError::Engine(format!(
            "compacted, but cannot remove the old database: {e}"
        ))
    })?;
    Ok(CompactReport {
        duration_ms: started.elapsed().as_millis() as u64,
        bytes_before,
        bytes_after: engine.size_on_disk()?,
        records,
        old_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{live_dir, SledEngine, TableStats};

    fn put(table: Table, key: String, value: Vec<u8>) -> WriteOp {
        WriteOp::Put {
            table,
            key: key.into_bytes(),
            value,
        }
    }

    /// A store whose log holds many superseded versions: each key rewritten often.
    fn churned(engine: &SledEngine) {
        for round in 0..20u8 {
            let batch: Vec<WriteOp> = (0..200)
                .map(|i| put(Table::TaskQueue, format!("task-{i:04}"), vec![round; 2_000]))
                .collect();
            engine.apply(&batch).unwrap();
            engine.flush().unwrap();
        }
        engine
            .apply(&[put(Table::HubMeta, "big".into(), vec![7; 300 * 1024])])
            .unwrap();
        engine.flush().unwrap();
    }

    fn everything(engine: &dyn Engine) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for table in Table::ALL {
            engine
                .for_each(table, &mut |k, v| {
                    out.push((table, k.to_vec(), v.to_vec()));
                    Ok(())
                })
                .unwrap();
        }
        out
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    fn stats(engine: &dyn Engine) -> Vec<TableStats> {
        Table::ALL.iter().map(|t| engine.stats(*t)).collect()
    }

    #[test]
    fn a_stopped_compaction_keeps_every_record_and_shrinks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        churned(&engine);
        let (before, counted) = (everything(&engine), stats(&engine));
        let report = compact_stopped(&engine).unwrap();
        assert!(report.old_removed);
        assert!(
            report.bytes_after < report.bytes_before,
            "{report:?}: nothing reclaimed"
        );
        assert_eq!(everything(&engine), before);
        assert_eq!(stats(&engine), counted);
        assert_eq!(live_dir::live_name(dir.path()).unwrap(), "db.1");
        assert!(!dir.path().join("db").exists(), "the old database is gone");
        // Writes go on in the new database, and survive a reopen with the same checks.
        engine
            .apply(&[put(Table::HubMeta, "after".into(), b"1".to_vec())])
            .unwrap();
        engine.flush().unwrap();
        drop(engine);
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(Table::HubMeta, b"after").unwrap().unwrap(), b"1");
        assert_eq!(everything(&engine).len(), before.len() + 1);
        // A second compaction takes the next generation.
        compact_stopped(&engine).unwrap();
        assert_eq!(live_dir::live_name(dir.path()).unwrap(), "db.2");
    }

    #[test]
    fn a_copy_never_switched_to_changes_nothing_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        churned(&engine);
        let before = everything(&engine);
        let mut target = engine.start_compaction().unwrap();
        copy_all(&engine, target.as_mut()).unwrap();
        target.flush().unwrap();
        // A crash here: the copy is complete on disk but not named live. (Dropping the
        // copy removes it, so the files as the crash would leave them are put back.)
        let saved = tempfile::tempdir().unwrap();
        copy_dir(&dir.path().join("db.1"), saved.path());
        drop(target);
        drop(engine);
        copy_dir(saved.path(), &dir.path().join("db.1"));
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(everything(&engine), before);
        assert_eq!(live_dir::live_name(dir.path()).unwrap(), "db");
        assert!(
            !dir.path().join("db.1").exists(),
            "the interrupted copy is removed"
        );
        // Dropped (an error mid-way): removed at once. One at a time.
        let target = engine.start_compaction().unwrap();
        assert!(dir.path().join("db.1").exists());
        assert!(engine.start_compaction().is_err(), "a second one at once");
        drop(target);
        assert!(!dir.path().join("db.1").exists());
        assert!(engine.start_compaction().is_ok(), "the first one is over");
    }

    #[test]
    fn a_switch_interrupted_before_the_old_database_is_removed_opens_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        churned(&engine);
        let before = everything(&engine);
        let mut target = engine.start_compaction().unwrap();
        copy_all(&engine, target.as_mut()).unwrap();
        let retired = target.switch().unwrap();
        // A crash here: both directories exist, CURRENT names the new one.
        drop(retired);
        drop(engine);
        assert!(dir.path().join("db").exists() && dir.path().join("db.1").exists());
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(everything(&engine), before);
        assert!(
            !dir.path().join("db").exists(),
            "the replaced database is removed"
        );
    }

    #[test]
    fn a_second_process_cannot_open_a_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        compact_stopped(&engine).unwrap();
        assert!(matches!(
            SledEngine::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
    }
}
