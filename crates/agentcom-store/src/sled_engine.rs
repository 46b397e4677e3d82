//! The sled engine: one tree per table, plus an internal `__stats` tree holding the
//! per-table counters, updated in the same transaction as the writes they count.
//!
//! Durability: the live database journals every batch (see [`crate::journal`]): appended
//! and synced before sled's trees take it, so a batch is durable when `apply` returns, and
//! sled's own files are synced only at a checkpoint. sled 0.34's own flush writes the log
//! with `sync_file_range`, which neither flushes the disk's write cache nor the file's
//! metadata, and writes blob files without any sync at all (sled issue #1452): [`SledFiles`]
//! completes every checkpoint (and every flush of a compaction's copy, which is not
//! journaled) with real syncs.
//!
//! Integrity: opening checks what sled's recovery lets pass (see [`crate::integrity`]): the
//! commit counter against the watermark file, and every record against the counters. Any
//! failure, a panic inside sled included, is [`StoreError::Open`].

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sled::transaction::{ConflictableTransactionResult, TransactionalTree};
use sled::Transactional;

use crate::engine::{Compaction, Record, Retired, Visitor};
use crate::integrity::{self, Watermark, WATERMARK_FILE};
use crate::journal::{self, Journal, RecordWriter, JOURNAL_FILE};
use crate::live_dir;
use crate::{sync_dir, Engine, StoreError, Table, TableStats, WriteOp};

const STATS_TREE: &str = "__stats";
const STATS_INDEX: usize = Table::ALL.len();

/// sled 0.34 behind the [`Engine`] trait: the live database of a data directory (see
/// [`crate::live_dir`]), replaced in place when a compaction switches to its copy.
pub struct SledEngine {
    data_dir: PathBuf,
    live: Arc<RwLock<Arc<SledDb>>>,
    /// Set while a compaction's copy exists: one at a time.
    compacting: Arc<std::sync::atomic::AtomicBool>,
    /// `LOCK` in the data directory, held while the engine is open: one process at a time
    /// may use a data directory, whichever database in it is live.
    _lock: File,
}

/// One sled database directory.
struct SledDb {
    db: sled::Db,
    path: PathBuf,
    /// One tree per table in [`Table::ALL`] order, then the stats tree.
    trees: Vec<sled::Tree>,
    counts: Vec<AtomicU64>,
    bytes: Vec<AtomicU64>,
    /// The commit number the next batch takes. Every batch writes its number into the
    /// counters of the tables it touches, in its transaction: the store's commit is the
    /// greatest number found there (no key is written for it alone).
    next_commit: AtomicU64,
    /// The greatest commit number of a batch applied (its `apply` returned).
    commits: AtomicU64,
    files: Mutex<SledFiles>,
    /// Held to read one key (`get`, `last_with_prefix`), and to apply a journaled batch to
    /// the trees: such reads see a batch whole or not at all, as sled's transactions gave
    /// them. Scans do not hold it (nor did they see batches whole under transactions).
    visible: RwLock<()>,
}

/// The journal grows up to this size between checkpoints.
const CHECKPOINT_BYTES: u64 = 32 << 20;
/// A batch holding a value this large is checkpointed at once: sled keeps such values in
/// blob files written without any sync, and opening a log that points to a blob lost in a
/// crash fails inside sled (before the journal could restore it). sled's threshold is a
/// quarter of its 512 KiB segments; this stays well below it.
const LARGE_VALUE: usize = 64 * 1024;

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
/// Beside them, our own [`WATERMARK_FILE`] (sled ignores names it did not choose).
///
/// `sled_layout_is_what_the_syncs_assume` fails if an upgrade changes this.
struct SledFiles {
    dir: PathBuf,
    log: File,
    /// The entries of the sled directory as of the last directory sync.
    dir_entries: BTreeSet<OsString>,
    /// The blob files already synced (they never change once written).
    blobs: BTreeSet<OsString>,
    /// Set once the store passed its checks at open.
    watermark: Option<Watermark>,
    /// Whether batches are journaled (the live database) or applied in sled transactions
    /// and made durable by a flush of sled's files (a compaction's copy, until its switch).
    journaled: bool,
    /// The journal, once started; `None` while journaled only if its restart failed.
    journal: Option<Journal>,
    /// A checkpoint is due at the next flush.
    checkpoint_due: bool,
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
            watermark: None,
            journaled: false,
            journal: None,
            checkpoint_due: false,
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

/// How long [`SledEngine::open`] waits for sled's lock once it holds its own.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn list_dir(dir: &Path) -> std::io::Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

impl SledEngine {
    /// Open (or create) the store of `data_dir`: its live database (`<data_dir>/db`, or the
    /// one `CURRENT` names), refusing a store that fails the integrity checks (see
    /// [`crate::integrity`]): every failure but [`StoreError::Locked`] is
    /// [`StoreError::Open`], a panic inside sled included. Once it is open, leftovers of an
    /// interrupted compaction are removed.
    pub fn open(data_dir: &Path) -> Result<SledEngine, StoreError> {
        let shown = data_dir.display().to_string();
        let io_failed = |what: &str, e: std::io::Error| StoreError::Open {
            path: shown.clone(),
            reason: format!("{what}: {e}"),
        };
        crate::create_dir_all_durable(data_dir)
            .map_err(|e| io_failed("cannot create the data directory", e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join(LOCK_FILE))
            .map_err(|e| io_failed("cannot open its lock file", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: shown });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_failed("cannot lock it", e)),
        }
        let live_name = live_dir::live_name(data_dir)
            .map_err(|e| io_failed("cannot tell which database is live", e))?;
        let path = live_dir::live_path(data_dir)
            .map_err(|e| io_failed("cannot open the live database", e))?;
        // Our lock is held, so no other process has the store open. sled's own lock on its
        // files can still be held for a moment by an engine of this process just dropped
        // (sled's I/O threads let go of its files last): wait for that, within a bound.
        let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
        let db = loop {
            match SledDb::open(data_dir, &path, CACHE_BYTES, true) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened?,
            }
        };
        for stale in live_dir::remove_stale(data_dir, &live_name)
            .map_err(|e| io_failed("cannot remove what an interrupted compaction left", e))?
        {
            tracing::info!(path = %stale.display(), "removed what an interrupted compaction left");
        }
        Ok(SledEngine {
            data_dir: data_dir.to_path_buf(),
            live: Arc::new(RwLock::new(Arc::new(db))),
            compacting: Arc::default(),
            _lock: lock,
        })
    }

    /// The live database directory.
    pub fn path(&self) -> PathBuf {
        self.live().path.clone()
    }

    fn live(&self) -> Arc<SledDb> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The lock file of a data directory.
const LOCK_FILE: &str = "LOCK";
/// sled's page cache, per open database.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledDb {
    /// Open (or create) the database at `path`; `journaled` for the live database, which
    /// replays its journal first.
    fn open(
        data_dir: &Path,
        path: &Path,
        cache_bytes: u64,
        journaled: bool,
    ) -> Result<SledDb, StoreError> {
        integrity::catch_panic(|| SledDb::open_checked(data_dir, path, cache_bytes, journaled))
            .unwrap_or_else(|panic| {
                Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("the storage engine failed while reading it: {panic}"),
                })
            })
    }

    fn open_checked(
        data_dir: &Path,
        path: &Path,
        cache_bytes: u64,
        journaled: bool,
    ) -> Result<SledDb, StoreError> {
        let damaged = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        integrity::remove_interrupted_snapshots(path)
            .map_err(|e| damaged(format!("cannot remove an interrupted snapshot file: {e}")))?;
        integrity::check_files_readable(path).map_err(damaged)?;
        let watermark = Watermark::read(path).map_err(damaged)?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // No background flushes: every write that must be durable is flushed (and
            // synced) by `flush`, and sled's own flush every 500 ms only wrote out bursts
            // (of a compaction's copy above all) that the next sync had to wait for.
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(path, e))?;
        let mut trees = Vec::with_capacity(STATS_INDEX + 1);
        for table in Table::ALL {
            trees.push(
                db.open_tree(table.name())
                    .map_err(|e| open_error(path, e))?,
            );
        }
        trees.push(db.open_tree(STATS_TREE).map_err(|e| open_error(path, e))?);
        db.flush().map_err(|e| open_error(path, e))?;
        let sync_failed =
            |e: std::io::Error| damaged(format!("could not sync the store's files: {e}"));
        let files = SledFiles::open(data_dir, path).map_err(sync_failed)?;
        let engine = SledDb {
            db,
            path: path.to_path_buf(),
            trees,
            counts: Table::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            bytes: Table::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            next_commit: AtomicU64::new(1),
            commits: AtomicU64::new(0),
            files: Mutex::new(files),
            visible: RwLock::new(()),
        };
        let read_failed = |e: StoreError| damaged(format!("reading it failed: {e}"));
        let mut commits = engine.load_stats().map_err(read_failed)?;
        if journaled {
            commits = engine.replay().map_err(damaged)?;
        }
        if let Some(durable) = watermark.filter(|&w| w > commits) {
            return Err(damaged(format!(
                "acknowledged writes are missing: its log ends at commit {commits}, but commit \
                 {durable} had been made durable ({WATERMARK_FILE}). The log was truncated or \
                 damaged, and the storage engine dropped everything after the damage"
            )));
        }
        engine.verify_tables().map_err(damaged)?;
        // The store is sound: record the commit it reached (durable: sled's recovery read it
        // from the synced log, or the flush above wrote it) and watch it from now on.
        let created = Watermark::create(path, commits).map_err(sync_failed)?;
        let mut files = engine.files.lock().unwrap_or_else(|p| p.into_inner());
        files.watermark = Some(created);
        files.journaled = journaled;
        if journaled {
            engine.checkpoint(&mut files)?;
        }
        drop(files);
        engine.flush()?;
        Ok(engine)
    }

    /// Replay the journal over what sled recovered (see [`crate::journal`]) and return the
    /// store's commit number after it.
    fn replay(&self) -> Result<u64, String> {
        let recovered = self.commits.load(Ordering::Acquire);
        let path = self.path.join(JOURNAL_FILE);
        let Some(contents) = journal::read(&path, self.trees.len())? else {
            return Ok(recovered);
        };
        let Some(base) = contents.base else {
            return Ok(recovered);
        };
        // The records number on from `base` (`journal::read` stops at any other).
        let last = contents.records.last().map_or(base, |(c, _)| *c);
        if recovered < base {
            return Err(format!(
                "acknowledged writes are missing: the database ends at commit {recovered}, \
                 but it had been made durable up to commit {base} (the journal's checkpoint). \
                 The log was truncated or damaged, and the storage engine dropped everything \
                 after the damage"
            ));
        }
        if recovered > last {
            return Err(format!(
                "the journal {} ends at commit {last}, but the database holds commit \
                 {recovered}, which was journaled before it was applied: the journal was \
                 truncated or damaged",
                path.display()
            ));
        }
        let mut replayed = 0;
        for (_, entries) in contents.records {
            for entry in entries {
                let tree = &self.trees[entry.tree];
                let done = match entry.value {
                    Some(value) => tree.insert(entry.key, value).map(drop),
                    None => tree.remove(entry.key).map(drop),
                };
                done.map_err(|e| format!("replaying the journal failed: {e}"))?;
            }
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(path = %self.path.display(), batches = replayed, "replayed the journal");
        }
        self.load_stats()
            .map_err(|e| format!("reading it after the journal's replay failed: {e}"))
    }

    /// Make sled's files durable and start the journal afresh: every batch applied so far is
    /// in them.
    fn checkpoint(&self, files: &mut SledFiles) -> Result<(), StoreError> {
        let failed = |e: std::io::Error| {
            StoreError::Engine(format!("could not checkpoint the store's files: {e}"))
        };
        let commits = self.commits.load(Ordering::Acquire);
        self.db.flush()?;
        files.sync().map_err(failed)?;
        if let Some(w) = &files.watermark {
            w.store(commits).map_err(failed)?;
        }
        // No batch is being applied (journaled ones hold `files`; a compaction's copy is
        // checkpointed while the store waits): the journal's records number on from here,
        // even if a failed transaction of the copy used a number.
        self.next_commit.store(commits + 1, Ordering::Release);
        // A journal that cannot be restarted takes no more writes (until the hub restarts).
        files.journal = None;
        files.journal =
            Some(Journal::restart(&files.dir, commits, 2 * CHECKPOINT_BYTES).map_err(failed)?);
        files.checkpoint_due = false;
        Ok(())
    }

    /// Stop journaling: a database replaced by a compaction takes no more writes, and its
    /// close is no reason for a checkpoint (its directory is about to be removed).
    fn retire(&self) {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).journal = None;
    }

    /// Journal every batch from now on (a compaction's copy, before it becomes live).
    fn start_journal(&self) -> Result<(), StoreError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.journaled = true;
        self.checkpoint(&mut files)
    }

    /// Apply a batch through the journal: its record (with the counters it changes) appended
    /// and synced, then applied to the trees. Durable once it returns.
    fn apply_journaled(&self, batch: &[WriteOp], files: &mut SledFiles) -> Result<(), StoreError> {
        let journal = files.journal.as_mut().ok_or_else(|| {
            StoreError::Engine(
                "the store stopped taking writes after a failure of its journal or of its storage \
                 engine (logged when it happened); restart the hub"
                    .into(),
            )
        })?;
        let commit = self.next_commit.load(Ordering::Acquire);
        let mut record = RecordWriter::new(commit);
        // The size of each key's value as of the batch's previous write to it.
        let mut sizes: std::collections::HashMap<(usize, &[u8]), Option<usize>> =
            std::collections::HashMap::new();
        let mut deltas = Deltas::default();
        let mut large = false;
        for op in batch {
            let table = op.table();
            let i = table.index();
            let key = match op {
                WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => key.as_slice(),
            };
            let prev = match sizes.get(&(i, key)) {
                Some(size) => *size,
                None => self.trees[i].get(key)?.map(|v| v.len()),
            };
            let size = match op {
                WriteOp::Put { value, .. } => {
                    record.put(i, key, value);
                    large |= value.len() >= LARGE_VALUE;
                    Some(value.len())
                }
                WriteOp::Delete { .. } => {
                    record.delete(i, key);
                    None
                }
            };
            sizes.insert((i, key), size);
            deltas.add(table, key.len(), prev, size);
        }
        let mut new_stats = Vec::with_capacity(deltas.0.len());
        for (table, dc, db) in deltas.0 {
            let new = Deltas::adjust(self.stats(table), dc, db);
            record.put(
                STATS_INDEX,
                &[table.index() as u8],
                &encode_stats(new, commit),
            );
            new_stats.push((table, new));
        }
        journal
            .append(&record.finish())
            .map_err(StoreError::Engine)?;
        let visible = self.visible.write().unwrap_or_else(|p| p.into_inner());
        let applied = batch
            .iter()
            .try_for_each(|op| match op {
                WriteOp::Put { table, key, value } => self.trees[table.index()]
                    .insert(key.as_slice(), value.as_slice())
                    .map(drop),
                WriteOp::Delete { table, key } => {
                    self.trees[table.index()].remove(key.as_slice()).map(drop)
                }
            })
            .and_then(|()| {
                new_stats.iter().try_for_each(|(table, s)| {
                    self.trees[STATS_INDEX]
                        .insert([table.index() as u8], &encode_stats(*s, commit))
                        .map(drop)
                })
            });
        drop(visible);
        if let Err(e) = applied {
            // Durable in the journal but not (wholly) in the trees: the next start replays it.
            let why = format!(
                "the storage engine failed while applying a journaled write ({e}); no write \
                 is accepted until the hub restarts"
            );
            files.journal = None;
            return Err(StoreError::Engine(why));
        }
        for (table, s) in new_stats {
            self.counts[table.index()].store(s.record_count, Ordering::Relaxed);
            self.bytes[table.index()].store(s.logical_bytes, Ordering::Relaxed);
        }
        self.commits.fetch_max(commit, Ordering::Release);
        self.next_commit.store(commit + 1, Ordering::Release);
        let journal_len = files.journal.as_ref().map_or(0, Journal::len);
        files.checkpoint_due |= large || journal_len >= CHECKPOINT_BYTES;
        Ok(())
    }

    /// Load the persisted counters and return the store's commit number. A table without a
    /// counter (a store written before counters existed) is counted once and the result
    /// persisted.
    fn load_stats(&self) -> Result<u64, StoreError> {
        let stats_tree = &self.trees[STATS_INDEX];
        let mut commits = 0;
        for table in Table::ALL {
            let i = table.index();
            let stats = match stats_tree.get([i as u8])? {
                Some(raw) => {
                    let (stats, commit) = decode_stats(&raw);
                    commits = commits.max(commit);
                    stats
                }
                None => {
                    let mut s = TableStats::default();
                    for entry in self.trees[i].iter() {
                        let (k, v) = entry?;
                        s.record_count += 1;
                        s.logical_bytes += (k.len() + v.len()) as u64;
                    }
                    stats_tree.insert([i as u8], &encode_stats(s, 0))?;
                    s
                }
            };
            self.counts[i].store(stats.record_count, Ordering::Relaxed);
            self.bytes[i].store(stats.logical_bytes, Ordering::Relaxed);
        }
        self.commits.store(commits, Ordering::Release);
        self.next_commit.store(commits + 1, Ordering::Release);
        Ok(commits)
    }

    /// Read every record of every table (sled checks the CRC of every page it reads in) and
    /// compare what is there with the counters kept with the writes: a page that sled
    /// dropped or cannot read shows here.
    fn verify_tables(&self) -> Result<(), String> {
        for table in Table::ALL {
            let mut found = TableStats::default();
            for entry in self.trees[table.index()].iter() {
                let (k, v) = entry.map_err(|e| format!("reading table {table} failed: {e}"))?;
                found.record_count += 1;
                found.logical_bytes += (k.len() + v.len()) as u64;
            }
            let counted = self.stats(table);
            if found != counted {
                return Err(format!(
                    "table {table} holds {} records ({} bytes) but its counters, written with \
                     every change, say {} records ({} bytes): records were lost or altered",
                    found.record_count,
                    found.logical_bytes,
                    counted.record_count,
                    counted.logical_bytes
                ));
            }
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

/// A table's counters and the commit number of the last batch that touched the table.
/// (Stores written before commit numbers have 16-byte counters: commit 0.)
fn encode_stats(s: TableStats, commit: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&s.record_count.to_be_bytes());
    out[8..16].copy_from_slice(&s.logical_bytes.to_be_bytes());
    out[16..].copy_from_slice(&commit.to_be_bytes());
    out
}

fn decode_stats(raw: &[u8]) -> (TableStats, u64) {
    let word = |r: std::ops::Range<usize>| {
        raw.get(r)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    };
    let stats = TableStats {
        record_count: word(0..8),
        logical_bytes: word(8..16),
    };
    (stats, word(16..24))
}

/// What a batch changes in the counters of the tables it touches: (table, records, bytes),
/// in the order the tables are first touched.
#[derive(Default)]
struct Deltas(Vec<(Table, i64, i64)>);

impl Deltas {
    /// A key of `table` whose value goes from `prev` to `new` bytes (`None`: absent).
    fn add(&mut self, table: Table, key_len: usize, prev: Option<usize>, new: Option<usize>) {
        let bytes = |size: Option<usize>| size.map_or(0, |s| (key_len + s) as i64);
        let dc = i64::from(new.is_some()) - i64::from(prev.is_some());
        let db = bytes(new) - bytes(prev);
        match self.0.iter_mut().find(|(t, _, _)| *t == table) {
            Some(entry) => {
                entry.1 += dc;
                entry.2 += db;
            }
            None => self.0.push((table, dc, db)),
        }
    }

    /// `old` counters after a change of `dc` records and `db` bytes.
    fn adjust(old: TableStats, dc: i64, db: i64) -> TableStats {
        TableStats {
            record_count: old.record_count.saturating_add_signed(dc),
            logical_bytes: old.logical_bytes.saturating_add_signed(db),
        }
    }
}

/// Apply `batch` inside a transaction, recording `commit` with the counters of every table
/// it touches, and return their new stats.
fn apply_in_tx(
    views: &[TransactionalTree],
    batch: &[WriteOp],
    commit: u64,
) -> ConflictableTransactionResult<Vec<(Table, TableStats)>, ()> {
    let mut deltas = Deltas::default();
    for op in batch {
        let table = op.table();
        let view = &views[table.index()];
        match op {
            WriteOp::Put { key, value, .. } => {
                let prev = view.insert(key.as_slice(), value.as_slice())?;
                deltas.add(table, key.len(), prev.map(|v| v.len()), Some(value.len()));
            }
            WriteOp::Delete { key, .. } => {
                let prev = view.remove(key.as_slice())?;
                deltas.add(table, key.len(), prev.map(|v| v.len()), None);
            }
        }
    }
    let stats_view = &views[STATS_INDEX];
    let mut out = Vec::with_capacity(deltas.0.len());
    for (table, dc, db) in deltas.0 {
        let key = [table.index() as u8];
        let (old, old_commit) = stats_view
            .get(key)?
            .map(|raw| decode_stats(&raw))
            .unwrap_or_default();
        let new = Deltas::adjust(old, dc, db);
        // Never backwards: concurrent batches may commit out of their numbers' order.
        stats_view.insert(&key, &encode_stats(new, commit.max(old_commit)))?;
        out.push((table, new));
    }
    Ok(out)
}

impl Drop for SledDb {
    /// Checkpoint a journaled database at a clean close, so that the next open has nothing
    /// to replay, and sync the watermark (between closes the kernel writes it back). A
    /// failure only leaves the journal to replay, or the watermark lagging, which weakens
    /// the next open's check but loses nothing.
    fn drop(&mut self) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.journal.is_some() {
            if let Err(e) = self.checkpoint(&mut files) {
                tracing::warn!(path = %self.path.display(), error = %e, "no checkpoint at close: the next start replays the journal");
            }
        }
        if let Some(w) = &files.watermark {
            let _ = w.sync();
        }
    }
}

impl Engine for SledDb {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _visible = self.visible.read().unwrap_or_else(|p| p.into_inner());
        Ok(self.trees[table.index()].get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        // Scans do not hold `visible`: a long one would hold up the writer, and every read
        // behind it. As with sled's transactions, a scan may see part of a batch.
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
        let _visible = self.visible.read().unwrap_or_else(|p| p.into_inner());
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
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.journaled {
            return self.apply_journaled(batch, &mut files);
        }
        drop(files);
        let commit = self.next_commit.fetch_add(1, Ordering::AcqRel);
        let new_stats = self.trees[..]
            .transaction(|views| apply_in_tx(views, batch, commit))
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
        self.commits.fetch_max(commit, Ordering::Release);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // One sync at a time: a flush that waits here is covered by the next sync, which
        // begins after its writes reached the files.
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        // Every batch up to this commit was applied before sled's flush begins: the flush
        // and the syncs cover it, so the watermark may claim it once they are done.
        let commits = self.commits.load(Ordering::Acquire);
        if files.journaled {
            // Every batch applied is durable already: its journal record was synced first.
            if files.checkpoint_due {
                return self.checkpoint(&mut files);
            }
            return match &files.watermark {
                Some(w) => w.store(commits).map_err(|e| {
                    StoreError::Engine(format!("could not write the commit watermark: {e}"))
                }),
                None => Ok(()),
            };
        }
        self.db.flush()?;
        let synced = files.sync().and_then(|()| match &files.watermark {
            Some(w) => w.store(commits),
            None => Ok(()),
        });
        synced.map_err(|e| StoreError::Engine(format!("could not sync the store's files: {e}")))
    }

    fn stats(&self, table: Table) -> TableStats {
        TableStats {
            record_count: self.counts[table.index()].load(Ordering::Relaxed),
            logical_bytes: self.bytes[table.index()].load(Ordering::Relaxed),
        }
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let journal = files.journal.as_ref().map_or(0, Journal::len);
        Ok(self.db.size_on_disk()? + journal)
    }

    fn was_recovered(&self) -> bool {
        self.db.was_recovered()
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}

impl Engine for SledEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.live().get(table, key)
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.live().scan_prefix(table, prefix)
    }

    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.live().range(table, from, to, limit)
    }

    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<Record>, StoreError> {
        self.live().last_with_prefix(table, prefix)
    }

    fn for_each(&self, table: Table, f: &mut Visitor<'_>) -> Result<(), StoreError> {
        self.live().for_each(table, f)
    }

    fn apply(&self, batch: &[WriteOp]) -> Result<(), StoreError> {
        self.live().apply(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.live().flush()
    }

    fn stats(&self, table: Table) -> TableStats {
        self.live().stats(table)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.live().size_on_disk()
    }

    fn was_recovered(&self) -> bool {
        self.live().was_recovered()
    }

    fn name(&self) -> &'static str {
        "sled"
    }

    fn start_compaction(&self) -> Result<Box<dyn Compaction>, StoreError> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Engine(
                "a compaction is already in progress".into(),
            ));
        }
        let busy = CompactingGuard(self.compacting.clone());
        let live = self.live();
        let live_name = live
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| live_dir::FIRST.to_string());
        let name = live_dir::next_name(&live_name);
        let path = self.data_dir.join(&name);
        // A directory of that name is what an earlier attempt left (its removal failed).
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| {
                StoreError::Engine(format!("cannot remove {}: {e}", path.display()))
            })?;
        }
        let target = SledDb::open(&self.data_dir, &path, CACHE_BYTES, false)?;
        Ok(Box::new(SledCompaction {
            data_dir: self.data_dir.clone(),
            live: self.live.clone(),
            name,
            target: Some(target),
            _busy: busy,
        }))
    }
}

/// A compaction's copy: a new database in the next generation directory, written through
/// [`Compaction::apply`] (so its counters are kept as for any write), then switched to.
/// Dropped without switching, it removes its directory.
struct SledCompaction {
    data_dir: PathBuf,
    live: Arc<RwLock<Arc<SledDb>>>,
    name: String,
    target: Option<SledDb>,
    /// Declared last: released once the copy is switched to or removed.
    _busy: CompactingGuard,
}

/// Clears the engine's `compacting` flag when dropped.
struct CompactingGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CompactingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl SledCompaction {
    fn target(&self) -> &SledDb {
        self.target
            .as_ref()
            .expect("a compaction is used only before its switch")
    }
}

impl Compaction for SledCompaction {
    fn apply(&mut self, batch: &[WriteOp]) -> Result<(), StoreError> {
        self.target().apply(batch)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.target().flush()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.target().size_on_disk()
    }

    fn switch(mut self: Box<Self>) -> Result<Retired, StoreError> {
        let target = self.target.take().expect("switched once");
        if let Err(e) = target.flush().and_then(|()| target.start_journal()) {
            self.target = Some(target);
            return Err(e);
        }
        if let Err(e) = live_dir::switch_to(&self.data_dir, &self.name) {
            // Only a failure before the rename leaves the old database live; after it, the
            // file system names the new one, and so must every reader.
            let renamed = live_dir::live_name(&self.data_dir).is_ok_and(|n| n == self.name);
            if !renamed {
                self.target = Some(target);
                return Err(StoreError::Engine(format!(
                    "cannot switch to the compacted database: {e}"
                )));
            }
            tracing::error!(error = %e, "the switch to the compacted database may not be durable yet");
        }
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *live, Arc::new(target));
        drop(live);
        old.retire();
        let dir = old.path.clone();
        Ok(Retired::new(old, dir, self.data_dir.clone()))
    }
}

impl Drop for SledCompaction {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            let dir = target.path.clone();
            drop(target);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove an abandoned compaction (removed at the next start)");
            }
        }
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
                name == "db"
                    || name == "conf"
                    || name == "blobs"
                    || name.starts_with("snap.")
                    || name == WATERMARK_FILE
                    || name == JOURNAL_FILE,
                "sled wrote a file the syncs do not know: {name}"
            );
        }
        assert!(db.join("db").is_file() && db.join("conf").is_file());
        let blobs = list_dir(&db.join("blobs")).unwrap();
        assert_eq!(blobs.len(), 1, "the large value is a blob file");
        let live = engine.live();
        let files = live.files.lock().unwrap();
        assert_eq!(files.blobs, blobs, "the flush synced the new blob file");
        assert!(files.dir_entries.contains(std::ffi::OsStr::new("blobs")));
        drop(files);
        assert_eq!(engine.get(Table::HubMeta, b"big").unwrap().unwrap(), big);
    }

    /// Two runs, as a hub has them: sled writes its snapshot when it opens, so the second
    /// run's writes are in the log after the snapshot, where recovery treats a damaged
    /// message as a torn tail. `big` goes into a blob file in the given run.
    fn two_runs(dir: &Path, big_in_run: u8) -> Vec<u8> {
        let big = [b"BIG:".as_slice(), &vec![b'b'; 300 * 1024]].concat();
        for run in 1..=2u8 {
            let engine = SledEngine::open(dir).unwrap();
            for i in 0..200 {
                let key = format!("r{run}-{i:04}");
                let value = format!("value of {key}: {}", "x".repeat(100));
                engine
                    .apply(&[put(Table::ChannelHistory, &key, &value)])
                    .unwrap();
                engine.flush().unwrap();
            }
            if run == big_in_run {
                engine
                    .apply(&[WriteOp::Put {
                        table: Table::HubMeta,
                        key: b"big".to_vec(),
                        value: big.clone(),
                    }])
                    .unwrap();
                engine.flush().unwrap();
            }
        }
        big
    }

    fn refusal(dir: &Path) -> String {
        match SledEngine::open(dir) {
            Err(StoreError::Open { reason, .. }) => reason,
            Err(other) => panic!("expected an Open error, got {other}"),
            Ok(engine) => panic!(
                "the damaged store opened, with {} records in channel_history",
                engine.stats(Table::ChannelHistory).record_count
            ),
        }
    }

    /// Flip a byte in every copy of `needle` in `file`.
    fn flip_every(file: &Path, needle: &[u8]) {
        let mut bytes = std::fs::read(file).unwrap();
        let at: Vec<usize> = (0..=bytes.len() - needle.len())
            .filter(|&i| &bytes[i..i + needle.len()] == needle)
            .collect();
        assert!(!at.is_empty(), "the log holds the record");
        for i in at {
            bytes[i + needle.len() - 1] ^= 0x20;
        }
        std::fs::write(file, bytes).unwrap();
    }

    #[test]
    fn the_watermark_follows_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        let db = dir.path().join("db");
        assert_eq!(Watermark::read(&db).unwrap(), Some(0));
        engine.apply(&[put(Table::HubMeta, "a", "1")]).unwrap();
        engine.apply(&[put(Table::HubMeta, "b", "2")]).unwrap();
        assert_eq!(Watermark::read(&db).unwrap(), Some(0), "not before a flush");
        engine.flush().unwrap();
        assert_eq!(Watermark::read(&db).unwrap(), Some(2));
        drop(engine);
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.live().commits.load(Ordering::Acquire), 2);
    }

    /// sled alone opens this store without the second run's last writes.
    #[test]
    fn a_damaged_message_in_the_log_tail_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        two_runs(dir.path(), 0);
        flip_every(&dir.path().join("db/db"), b"value of r2-0150");
        let reason = refusal(dir.path());
        assert!(
            reason.contains("acknowledged writes are missing"),
            "{reason}"
        );
        // Refused again on the next try: sled's recovery rewrote the tail, the watermark stays.
        assert!(refusal(dir.path()).contains("acknowledged writes are missing"));
    }

    #[test]
    fn a_truncated_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        two_runs(dir.path(), 0);
        cut_at(&dir.path().join("db/db"), b"value of r2-0199");
        let reason = refusal(dir.path());
        assert!(
            reason.contains("acknowledged writes are missing"),
            "{reason}"
        );
    }

    /// sled skips a log message whose blob file is gone: the page is dropped.
    #[test]
    fn a_missing_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        two_runs(dir.path(), 2);
        for blob in list_dir(&dir.path().join("db/blobs")).unwrap() {
            std::fs::remove_file(dir.path().join("db/blobs").join(blob)).unwrap();
        }
        let reason = refusal(dir.path());
        assert!(reason.contains("hub_meta holds 0 records"), "{reason}");
    }

    /// sled panics on an emptied blob file of an earlier run: the panic is an Open error.
    #[test]
    fn an_emptied_blob_of_an_earlier_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        two_runs(dir.path(), 1);
        for blob in list_dir(&dir.path().join("db/blobs")).unwrap() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("db/blobs").join(blob))
                .unwrap();
            f.set_len(0).unwrap();
        }
        refusal(dir.path());
    }

    #[test]
    fn a_damaged_watermark_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        two_runs(dir.path(), 0);
        std::fs::write(dir.path().join("db").join(WATERMARK_FILE), b"").unwrap();
        let reason = refusal(dir.path());
        assert!(reason.contains("watermark"), "{reason}");
    }

    /// sled rewrites a missing `conf` and rebuilds a missing snapshot from the log: both
    /// open with every record, which the checks confirm.
    #[test]
    fn a_missing_conf_or_snapshot_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let big = two_runs(dir.path(), 2);
        let db = dir.path().join("db");
        std::fs::remove_file(db.join("conf")).unwrap();
        for name in list_dir(&db).unwrap() {
            if name.to_string_lossy().starts_with("snap.") {
                std::fs::remove_file(db.join(name)).unwrap();
            }
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.stats(Table::ChannelHistory).record_count, 400);
        assert_eq!(engine.get(Table::HubMeta, b"big").unwrap().unwrap(), big);
        let last = engine
            .get(Table::ChannelHistory, b"r2-0199")
            .unwrap()
            .unwrap();
        assert!(last.starts_with(b"value of r2-0199"));
    }

    /// Copy a data directory as it is on disk now (what a `kill -9` leaves), lock file aside.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else if entry.file_name() != LOCK_FILE {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// Truncate `file` where `needle` first appears (inside the record that wrote it).
    fn cut_at(file: &Path, needle: &[u8]) {
        let bytes = std::fs::read(file).unwrap();
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.set_len(at as u64).unwrap();
    }

    /// Writes of every kind, then the directory as a crash leaves it: sled has written none
    /// of them (its buffer is written out at a checkpoint or when full), the journal has
    /// them all, and opening the copy replays them, counters included.
    fn journaled_writes_then_crash(dir: &Path, copy: &Path) -> SledEngine {
        let engine = SledEngine::open(dir).unwrap();
        for i in 0..50 {
            engine
                .apply(&[
                    put(Table::ChannelHistory, &format!("k{i:02}"), &"v".repeat(i)),
                    put(Table::HubMeta, "last", &i.to_string()),
                ])
                .unwrap();
            engine.flush().unwrap();
        }
        engine
            .apply(&[
                WriteOp::Delete {
                    table: Table::ChannelHistory,
                    key: b"k07".to_vec(),
                },
                put(Table::ChannelHistory, "k08", "overwritten"),
                WriteOp::Delete {
                    table: Table::ChannelHistory,
                    key: b"k08".to_vec(),
                },
            ])
            .unwrap();
        engine.flush().unwrap();
        copy_dir(dir, copy);
        engine
    }

    #[test]
    fn a_crash_after_journaled_writes_loses_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let live = journaled_writes_then_crash(dir.path(), copy.path());
        let expected: Vec<Record> = live.scan_prefix(Table::ChannelHistory, b"").unwrap();
        assert_eq!(expected.len(), 48);
        let journal = std::fs::metadata(copy.path().join("db").join(JOURNAL_FILE)).unwrap();
        assert!(journal.len() > 1000, "the writes are in the journal");
        let reopened = SledEngine::open(copy.path()).unwrap();
        assert_eq!(
            reopened.scan_prefix(Table::ChannelHistory, b"").unwrap(),
            expected
        );
        for table in [Table::ChannelHistory, Table::HubMeta] {
            assert_eq!(reopened.stats(table), live.stats(table), "{table}");
        }
        assert_eq!(
            reopened.get(Table::HubMeta, b"last").unwrap().unwrap(),
            b"49"
        );
        assert_eq!(
            reopened.live().commits.load(Ordering::Acquire),
            live.live().commits.load(Ordering::Acquire)
        );
        // The open checkpointed: nothing is left to replay.
        drop(reopened);
        let contents = journal::read(&copy.path().join("db").join(JOURNAL_FILE), 14)
            .unwrap()
            .unwrap();
        assert!(contents.records.is_empty());
    }

    #[test]
    fn a_journal_missing_acknowledged_writes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let _live = journaled_writes_then_crash(dir.path(), copy.path());
        // Cut inside the record that wrote `k30`.
        cut_at(&copy.path().join("db").join(JOURNAL_FILE), b"k30");
        let reason = refusal(copy.path());
        assert!(
            reason.contains("acknowledged writes are missing"),
            "{reason}"
        );
    }

    /// sled's log holding a batch that the journal no longer reaches: every batch is
    /// journaled before sled sees it, so the journal lost it.
    #[test]
    fn a_log_ahead_of_its_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let live = journaled_writes_then_crash(dir.path(), copy.path());
        // sled writes out everything it holds (no checkpoint: the journal stays as it is).
        live.live().db.flush().unwrap();
        std::fs::remove_dir_all(copy.path()).unwrap();
        copy_dir(dir.path(), copy.path());
        cut_at(&copy.path().join("db").join(JOURNAL_FILE), b"k40");
        let reason = refusal(copy.path());
        assert!(
            reason.contains("the journal was truncated or damaged"),
            "{reason}"
        );
    }

    #[test]
    fn a_batch_with_a_large_value_is_checkpointed_at_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        let path = dir.path().join("db").join(JOURNAL_FILE);
        engine.apply(&[put(Table::HubMeta, "small", "1")]).unwrap();
        engine.flush().unwrap();
        engine
            .apply(&[WriteOp::Put {
                table: Table::HubMeta,
                key: b"big".to_vec(),
                value: vec![b'x'; LARGE_VALUE],
            }])
            .unwrap();
        let contents = journal::read(&path, 14).unwrap().unwrap();
        assert_eq!(contents.records.len(), 2, "both are journaled");
        engine.flush().unwrap();
        let contents = journal::read(&path, 14).unwrap().unwrap();
        assert!(
            contents.records.is_empty(),
            "the checkpoint began a new generation of the journal"
        );
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

    /// sled's lock still held (as by an engine of this process whose I/O threads have
    /// not let go of its files yet) while the store's own lock is free: the open waits.
    #[test]
    fn an_open_waits_for_sleds_lock_to_be_released() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledEngine::open(dir.path()).unwrap());
        let held = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let engine = SledEngine::open(dir.path());
        release.join().unwrap();
        assert!(engine.is_ok(), "{:?}", engine.err());
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

    /// A key stored under an owner id with a NUL in it (`bob\0x`, before ids were
    /// validated) shares `bob`'s prefix; it is not one of `bob`'s records.
    #[test]
    fn owned_ranges_skip_keys_of_longer_owners() {
        let dir = tempfile::tempdir().unwrap();
        let engine = std::sync::Arc::new(SledEngine::open(dir.path()).unwrap());
        let op = |key: Vec<u8>, seq: u64| WriteOp::Put {
            table: Table::AgentMailbox,
            key,
            value: crate::encode(&seq),
        };
        engine
            .apply(&[
                op(crate::owned_seq_key("bob", 2), 2),
                op(crate::owned_seq_key("bob\0x", 3), 3),
                op(crate::owned_seq_key("bob", 4), 4),
                op(crate::owned_seq_key("bobby", 5), 5),
            ])
            .unwrap();
        let reader = crate::StoreReader::new(engine);
        let seqs: Vec<u64> = reader
            .owned_after(Table::AgentMailbox, "bob", 0, 10)
            .unwrap();
        assert_eq!(seqs, vec![2, 4]);
        let first: Vec<u64> = reader
            .owned_after(Table::AgentMailbox, "bob", 0, 1)
            .unwrap();
        assert_eq!(first, vec![2]);
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
