//! The backup format: write, list, verify, prune and restore backups of every table.
//!
//! A backup is a directory `<backup_dir>/<UTC time, ms precision>` (e.g.
//! `2026-11-29T01-31-06.123Z`, which sorts in time order) holding one file per table,
//! `<table>.rec`, and a `manifest.json`. It is written under a hidden temporary name,
//! fsynced, verified, and only then renamed into place, so a half-written backup is never
//! mistaken for a complete one.
//!
//! A table file is a header line, then each record as `u32 key length, key, u32 value
//! length, value` (big-endian lengths), in key order. The manifest records, per table,
//! the record count, the file's size and its SHA-256.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use agentcom_core::Millis;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::Visitor;
use crate::{Engine, StoreError, Table, WriteOp};

pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8] = b"AGENTCOM-BACKUP-TABLE 1\n";
pub const MANIFEST: &str = "manifest.json";
/// Bytes written between two syncs of a table file.
const SYNC_EVERY: u64 = 16 << 20;

/// Writes that happened while a table was being scanned, to lay over the scan so that the
/// backup is the state at one point in time: key → new value (`None`: deleted).
pub type Overlay = BTreeMap<Table, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// Fold batches of writes, in the order they were applied, into an [`Overlay`].
pub fn overlay_of(batches: &[Vec<WriteOp>]) -> Overlay {
    let mut overlay = Overlay::new();
    for op in batches.iter().flatten() {
        match op {
            WriteOp::Put { table, key, value } => overlay
                .entry(*table)
                .or_default()
                .insert(key.clone(), Some(value.clone())),
            WriteOp::Delete { table, key } => {
                overlay.entry(*table).or_default().insert(key.clone(), None)
            }
        };
    }
    overlay
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    pub table: String,
    pub file: String,
    pub record_count: u64,
    pub bytes: u64,
    /// `sha256:<hex>` of the file.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub hub_version: String,
    pub created_at: Millis,
    pub engine: String,
    pub tables: Vec<TableManifest>,
}

/// A problem found by [`verify`], naming the table when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub table: Option<String>,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub id: String,
    pub manifest: Option<Manifest>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One backup found on disk.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub id: String,
    pub path: PathBuf,
    pub manifest: Option<Manifest>,
}

/// The backup directory name for a UTC time in ms: `YYYY-MM-DDTHH-MM-SS.mmmZ`.
pub fn backup_id(ms: Millis) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn io(context: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{context} {}: {e}", path.display()))
}

/// A sorted source of records: calls the visitor for each, in key order.
type Source<'a> = dyn FnMut(&mut Visitor<'_>) -> Result<(), StoreError> + 'a;

/// Write one table file: the records of `source` with `overlay` laid over them.
fn write_table(
    table: Table,
    source: &mut Source<'_>,
    overlay: Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    path: &Path,
) -> Result<TableManifest, StoreError> {
    let file = File::create(path).map_err(|e| io("cannot create", path, e))?;
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    out.write_all(MAGIC)
        .map_err(|e| io("cannot write", path, e))?;
    let mut count = 0u64;
    let empty = BTreeMap::new();
    let overlay = overlay.unwrap_or(&empty);
    let mut pending = overlay.iter().peekable();
    let mut synced = 0u64;
    let mut emit = |out: &mut HashingWriter, k: &[u8], v: &[u8]| -> Result<(), StoreError> {
        count += 1;
        write_record(out, k, v).map_err(|e| io("cannot write", path, e))?;
        // Sync as we go: one huge fsync at the end would hold the disk for a long time and
        // stall the store's own flushes (and so every writer's acknowledgement).
        if out.bytes - synced >= SYNC_EVERY {
            synced = out.bytes;
            out.inner
                .flush()
                .and_then(|()| out.inner.get_ref().sync_data())
                .map_err(|e| io("cannot fsync", path, e))?;
        }
        Ok(())
    };
    source(&mut |key: &[u8], value: &[u8]| {
        // Overlay keys before this one that the scan did not see.
        while let Some((k, v)) = pending.next_if(|(k, _)| k.as_slice() < key) {
            if let Some(v) = v {
                emit(&mut out, k, v)?;
            }
        }
        match pending.next_if(|(k, _)| k.as_slice() == key) {
            Some((_, Some(v))) => emit(&mut out, key, v),
            Some((_, None)) => Ok(()),
            None => emit(&mut out, key, value),
        }
    })?;
    for (k, v) in pending {
        if let Some(v) = v {
            emit(&mut out, k, v)?;
        }
    }
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = out;
    let file = inner
        .into_inner()
        .map_err(|e| io("cannot write", path, e.into_error()))?;
    file.sync_all().map_err(|e| io("cannot fsync", path, e))?;
    Ok(TableManifest {
        table: table.name().to_string(),
        file: file_name(table),
        record_count: count,
        bytes,
        checksum: format!("sha256:{}", hex(&hasher.finalize())),
    })
}

/// A table file's records as a [`Source`].
fn file_source(path: &Path) -> impl FnMut(&mut Visitor<'_>) -> Result<(), StoreError> + '_ {
    move |visit: &mut Visitor<'_>| {
        let file = File::open(path).map_err(|e| io("cannot read", path, e))?;
        let mut failure = None;
        read_records(BufReader::new(file), &mut Sha256::new(), &mut |k, v| {
            visit(&k, &v).map_err(|e| {
                let text = e.to_string();
                failure = Some(e);
                text
            })
        })
        .map_err(|e| failure.take().unwrap_or(StoreError::Engine(e)))
    }
}

fn file_name(table: Table) -> String {
    format!("{}.rec", table.name())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_record(out: &mut impl Write, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    out.write_all(&(k.len() as u32).to_be_bytes())?;
    out.write_all(k)?;
    out.write_all(&(v.len() as u32).to_be_bytes())?;
    out.write_all(v)
}

struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Per-table outcome of writing a backup (the seed's `results`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableResult {
    pub table: Table,
    pub outcome: Result<(PathBuf, u64), String>,
}

/// What [`create`] produced.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub path: PathBuf,
    pub manifest: Manifest,
    pub results: Vec<TableResult>,
    pub verified: bool,
    pub problems: Vec<Problem>,
}

/// Write a backup of every table of `engine` (no concurrent writers: the offline CLI)
/// into `backup_dir`, verify it, and rename it into place.
pub fn create(
    engine: &dyn Engine,
    backup_dir: &Path,
    created_at: Millis,
    hub_version: &str,
) -> Result<Created, StoreError> {
    create_live(engine, backup_dir, created_at, hub_version, || {
        Ok(Overlay::new())
    })
}

/// Write a point-in-time backup of a store that writers keep changing. Every table is
/// first scanned as it is (a fuzzy scan); `end_capture` then returns the writes applied
/// since the capture began, and the final files are the scans with those writes laid
/// over them: the state of every table at the moment the capture ended. A table that
/// fails is reported and the others still written; such a backup stays under its
/// temporary name (never listed).
pub fn create_live(
    engine: &dyn Engine,
    backup_dir: &Path,
    created_at: Millis,
    hub_version: &str,
    end_capture: impl FnOnce() -> Result<Overlay, StoreError>,
) -> Result<Created, StoreError> {
    crate::create_dir_all_durable(backup_dir).map_err(|e| io("cannot create", backup_dir, e))?;
    // Names never collide: a taken millisecond moves to the next one.
    let mut stamp = created_at;
    let id = loop {
        let id = backup_id(stamp);
        if !backup_dir.join(&id).exists() && !backup_dir.join(temp_name(&id)).exists() {
            break id;
        }
        stamp += 1;
    };
    let tmp = backup_dir.join(temp_name(&id));
    fs::create_dir(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
    let final_path = backup_dir.join(&id);
    // Pass 1: fuzzy scans, straight into the table files (two at a time).
    let scans = on_two_threads(
        &Table::ALL,
        |table| engine.stats(table).logical_bytes,
        |table| {
            let path = tmp.join(file_name(table));
            let result = write_table(
                table,
                &mut |visit: &mut Visitor<'_>| engine.for_each(table, visit),
                None,
                &path,
            );
            (path, result)
        },
    );
    let scanned: Vec<_> = Table::ALL
        .into_iter()
        .zip(scans)
        .map(|(table, (path, result))| (table, path, result))
        .collect();
    let overlay = end_capture()?;
    // Pass 2: a table written to during its scan is rewritten with those writes laid over
    // it; the others are final already.
    let mut tables = Vec::new();
    let mut results: Vec<TableResult> = Vec::new();
    for (table, path, scanned) in scanned {
        let written = match (scanned, overlay.get(&table)) {
            (Ok(m), None) => Ok(m),
            (Ok(_), Some(writes)) => {
                let scan = tmp.join(format!("{}.scan", table.name()));
                fs::rename(&path, &scan)
                    .map_err(|e| io("cannot rename", &path, e))
                    .and_then(|()| {
                        let mut source = file_source(&scan);
                        let m = write_table(table, &mut source, Some(writes), &path);
                        let _ = fs::remove_file(&scan);
                        m
                    })
            }
            (Err(e), _) => Err(e),
        };
        match written {
            Ok(m) => {
                results.push(TableResult {
                    table,
                    outcome: Ok((final_path.join(&m.file), m.bytes)),
                });
                tables.push(m);
            }
            Err(e) => results.push(TableResult {
                table,
                outcome: Err(e.to_string()),
            }),
        }
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        hub_version: hub_version.to_string(),
        created_at: stamp,
        engine: engine.name().to_string(),
        tables,
    };
    let manifest_path = tmp.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    let mut f = File::create(&manifest_path).map_err(|e| io("cannot create", &manifest_path, e))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| io("cannot write", &manifest_path, e))?;
    let problems = verify_dir(&tmp).problems;
    // Only a complete backup that verifies is renamed into place; anything else stays
    // under its hidden name (never listed, removed by the next prune) and is reported.
    let good = problems.is_empty() && results.iter().all(|r| r.outcome.is_ok());
    if good {
        // Every table file and the manifest were synced as written; their directory
        // entries, the rename and the backup directory's entry are synced here, before the
        // backup is reported complete (and so before any older one is pruned).
        sync_dir(&tmp)?;
        fs::rename(&tmp, &final_path).map_err(|e| io("cannot rename", &tmp, e))?;
        sync_dir(backup_dir)?;
    } else {
        for r in results.iter_mut() {
            if let Ok((path, _)) = &mut r.outcome {
                *path = tmp.join(path.file_name().unwrap_or_default());
            }
        }
    }
    let failed = !good;
    Ok(Created {
        id,
        path: if failed { tmp } else { final_path },
        manifest,
        results,
        verified: problems.is_empty() && !failed,
        problems,
    })
}

fn temp_name(id: &str) -> String {
    format!(".{id}.tmp")
}

/// `fsync` a directory: the creation, renaming or removal of its entries is durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::sync_dir(dir).map_err(|e| io("cannot fsync", dir, e))
}

/// Read a manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let text =
        fs::read(dir.join(MANIFEST)).map_err(|e| format!("manifest.json cannot be read: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("manifest.json is malformed: {e}"))
}

/// Every complete backup in `backup_dir`, oldest first.
pub fn list(backup_dir: &Path) -> Vec<BackupEntry> {
    let Ok(entries) = fs::read_dir(backup_dir) else {
        return Vec::new();
    };
    let mut out: Vec<BackupEntry> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().to_string();
            if !is_backup_id(&id) {
                return None;
            }
            let manifest = read_manifest(&e.path()).ok();
            // Gone since the directory was read (renamed away by `prune`): not a backup
            // any more. One still there without a readable manifest is damaged: listed.
            if manifest.is_none() && !e.path().is_dir() {
                return None;
            }
            Some(BackupEntry {
                manifest,
                path: e.path(),
                id,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Re-read a backup from disk: every table present, each file's size, checksum and record
/// count as the manifest says.
pub fn verify_dir(dir: &Path) -> VerifyReport {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let manifest = match read_manifest(dir) {
        Ok(m) => m,
        Err(problem) => {
            return VerifyReport {
                id,
                manifest: None,
                problems: vec![Problem {
                    table: None,
                    problem,
                }],
            }
        }
    };
    if manifest.format_version != FORMAT_VERSION {
        problems.push(Problem {
            table: None,
            problem: format!("unsupported format version {}", manifest.format_version),
        });
    }
    let entry = |table: Table| manifest.tables.iter().find(|t| t.table == table.name());
    // Each table file read back, two at a time.
    let checked = on_two_threads(
        &Table::ALL,
        |table| entry(table).map_or(0, |m| m.bytes),
        |table| entry(table).map(|m| verify_table(table, &dir.join(&m.file), m)),
    );
    for (table, checked) in Table::ALL.into_iter().zip(checked) {
        match checked {
            // Backups written before the table existed: it was empty then.
            None if table.added_later() => {}
            None => problems.push(Problem {
                table: Some(table.name().into()),
                problem: "missing from the manifest".into(),
            }),
            Some(Ok(())) => {}
            Some(Err(problem)) => problems.push(Problem {
                table: Some(table.name().into()),
                problem,
            }),
        }
    }
    VerifyReport {
        id,
        manifest: Some(manifest),
        problems,
    }
}

/// `f` for each of `tables` on two threads (this one and a scoped one), the tables shared
/// out by `weight` (their bytes) so that both finish at about the same time; the results
/// in the order of `tables`. Reading, hashing and checking records is CPU work that a
/// second core shares (docs/BENCHMARKS.md, "Stop 14").
fn on_two_threads<T: Send>(
    tables: &[Table],
    weight: impl Fn(Table) -> u64,
    f: impl Fn(Table) -> T + Sync,
) -> Vec<T> {
    let weights: Vec<u64> = tables.iter().map(|&t| weight(t)).collect();
    let mut heaviest_first: Vec<usize> = (0..tables.len()).collect();
    heaviest_first.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
    let (mut here, mut there, mut loads) = (Vec::new(), Vec::new(), [0u64; 2]);
    for i in heaviest_first {
        // To the side with less so far.
        if loads[1] < loads[0] {
            loads[1] += weights[i];
            there.push(i);
        } else {
            loads[0] += weights[i];
            here.push(i);
        }
    }
    let mut results: Vec<Option<T>> = tables.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let f = &f;
        let theirs = scope.spawn(move || {
            there
                .into_iter()
                .map(|i| (i, f(tables[i])))
                .collect::<Vec<_>>()
        });
        for i in here {
            results[i] = Some(f(tables[i]));
        }
        let theirs = theirs
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        for (i, result) in theirs {
            results[i] = Some(result);
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every table is done on one side"))
        .collect()
}

/// Check a table file against its manifest entry, and read back every record in it as the
/// hub will (checksums alone would pass a record that the hub cannot decode).
fn verify_table(table: Table, path: &Path, m: &TableManifest) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("file {} cannot be read: {e}", m.file))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != m.bytes {
        return Err(format!(
            "file is {size} bytes, the manifest says {}",
            m.bytes
        ));
    }
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    read_records(BufReader::new(file), &mut hasher, &mut |key, value| {
        count += 1;
        crate::check_readable(table, &value).map_err(|e| {
            format!(
                "record {} cannot be read back: {e}",
                String::from_utf8_lossy(&key)
            )
        })
    })?;
    let checksum = format!("sha256:{}", hex(&hasher.finalize()));
    if checksum != m.checksum {
        return Err(format!(
            "checksum {checksum} does not match the manifest's {}",
            m.checksum
        ));
    }
    if count != m.record_count {
        return Err(format!(
            "file holds {count} records, the manifest says {}",
            m.record_count
        ));
    }
    Ok(())
}

/// Parse a table file, hashing every byte, calling `f` for each record.
fn read_records(
    mut r: impl Read,
    hasher: &mut Sha256,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let mut read_exact = |buf: &mut [u8]| -> Result<bool, String> {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err("file is truncated".into()),
                Ok(n) => filled += n,
                Err(e) => return Err(e.to_string()),
            }
        }
        hasher.update(&*buf);
        Ok(true)
    };
    let mut magic = vec![0u8; MAGIC.len()];
    if !read_exact(&mut magic)? || magic != MAGIC {
        return Err("not a table file (bad header)".into());
    }
    loop {
        let mut len = [0u8; 4];
        if !read_exact(&mut len)? {
            return Ok(());
        }
        let mut key = vec![0u8; u32::from_be_bytes(len) as usize];
        if !read_exact(&mut key)? && !key.is_empty() {
            return Err("file is truncated".into());
        }
        if !read_exact(&mut len)? {
            return Err("file is truncated".into());
        }
        let mut value = vec![0u8; u32::from_be_bytes(len) as usize];
        if !read_exact(&mut value)? && !value.is_empty() {
            return Err("file is truncated".into());
        }
        f(key, value)?;
    }
}

/// Is `name` a backup id (`YYYY-MM-DDTHH-MM-SS.mmmZ`)? Only such directories are ever
/// listed or pruned.
pub fn is_backup_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'-',
            10 => *c == b'T',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The hidden name a backup is renamed to before it is deleted.
fn deleted_name(id: &str) -> String {
    format!(".{id}.deleted")
}

/// Delete all but the newest `keep` backups (never the newest verified one), and the
/// hidden directories of runs that did not complete or of deletions a crash cut short.
/// Call it only while no backup runs. `verified` names a backup the caller has just
/// verified (the one a run wrote), which is not read again to find the newest verified;
/// nothing is verified at all when no backup is in excess.
///
/// A backup leaves the listing in one step: it is renamed to a hidden name, then
/// deleted. Deleted in place, it would be listed half-deleted (without its manifest)
/// by a [`list`] running beside the deletion.
pub fn prune(backup_dir: &Path, keep: usize, verified: Option<&str>) -> Vec<String> {
    if let Ok(entries) = fs::read_dir(backup_dir) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            let hidden = [".tmp", ".deleted"].iter().any(|suffix| {
                name.strip_prefix('.')
                    .and_then(|n| n.strip_suffix(suffix))
                    .is_some_and(is_backup_id)
            });
            if hidden {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let all = list(backup_dir);
    let excess = all.len().saturating_sub(keep.max(1));
    if excess == 0 {
        return Vec::new();
    }
    let newest_verified = all
        .iter()
        .rev()
        .find(|b| Some(b.id.as_str()) == verified || verify_dir(&b.path).ok())
        .map(|b| b.id.clone());
    let mut removed = Vec::new();
    for b in all.into_iter().take(excess) {
        if Some(&b.id) == newest_verified.as_ref() {
            continue;
        }
        let hidden = backup_dir.join(deleted_name(&b.id));
        if fs::rename(&b.path, &hidden).is_ok() {
            let _ = fs::remove_dir_all(&hidden);
            removed.push(b.id);
        }
    }
    if !removed.is_empty() {
        // Best effort: a removal that a crash undoes is removed again by the next prune.
        let _ = sync_dir(backup_dir);
    }
    removed
}

/// The newest backup that verifies.
pub fn newest_verified(backup_dir: &Path) -> Option<BackupEntry> {
    list(backup_dir)
        .into_iter()
        .rev()
        .find(|b| verify_dir(&b.path).ok())
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub tables: Vec<(Table, u64)>,
    /// Where the database that was replaced now lives.
    pub replaced: Option<PathBuf>,
}

/// Load every table of a verified backup into `engine` (which must be empty), calling
/// `progress(table, records so far, records in table)` as it goes.
pub fn load(
    dir: &Path,
    engine: &dyn Engine,
    progress: &mut dyn FnMut(Table, u64, u64),
) -> Result<Vec<(Table, u64)>, StoreError> {
    let report = verify_dir(dir);
    if !report.ok() {
        let list: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.table.as_deref().unwrap_or("backup"), p.problem))
            .collect();
        return Err(StoreError::Engine(format!(
            "the backup does not verify: {}",
            list.join("; ")
        )));
    }
    let manifest = report.manifest.expect("a verified backup has a manifest");
    let mut out = Vec::new();
    for table in Table::ALL {
        let Some(m) = manifest.tables.iter().find(|t| t.table == table.name()) else {
            continue; // a table newer than the backup (verified: `Table::added_later`)
        };
        let path = dir.join(&m.file);
        let file = File::open(&path).map_err(|e| io("cannot read", &path, e))?;
        let mut batch = Vec::new();
        let mut done = 0u64;
        let mut failure = None;
        read_records(
            BufReader::new(file),
            &mut Sha256::new(),
            &mut |key, value| {
                batch.push(WriteOp::Put { table, key, value });
                if batch.len() >= 1000 {
                    done += batch.len() as u64;
                    if let Err(e) = engine.apply(&std::mem::take(&mut batch)) {
                        failure = Some(e);
                        return Err("write failed".into());
                    }
                    progress(table, done, m.record_count);
                }
                Ok(())
            },
        )
        .map_err(|e| failure.take().unwrap_or(StoreError::Engine(e)))?;
        done += batch.len() as u64;
        engine.apply(&batch)?;
        progress(table, done, m.record_count);
        out.push((table, done));
    }
    engine.flush()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SledEngine;

    #[test]
    fn ids_are_utc_with_milliseconds_and_sort_in_time_order() {
        assert_eq!(backup_id(0), "1970-01-01T00-00-00.000Z");
        assert_eq!(backup_id(1_795_914_562_540), "2026-11-29T01-09-22.540Z");
        assert!(backup_id(1_000) < backup_id(1_001));
        assert_eq!(backup_id(951_782_400_000), "2000-02-29T00-00-00.000Z");
    }

    fn put(table: Table, k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            table,
            key: k.into(),
            value: crate::encode(&v),
        }
    }

    #[test]
    fn create_verify_and_load_round_trip_with_an_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(&dir.path().join("a")).unwrap();
        engine
            .apply(&[
                put(Table::AgentcomConfig, "a", "1"),
                put(Table::AgentcomConfig, "c", "3"),
                put(Table::HubMeta, "m", "x"),
            ])
            .unwrap();
        // Writes "during the scan": b added, c deleted, a changed.
        let overlay = overlay_of(&[
            vec![
                put(Table::AgentcomConfig, "b", "2"),
                WriteOp::Delete {
                    table: Table::AgentcomConfig,
                    key: b"c".to_vec(),
                },
            ],
            vec![put(Table::AgentcomConfig, "a", "9")],
        ]);
        let backups = dir.path().join("backups");
        let created = create_live(&engine, &backups, 1_000, "test", || Ok(overlay)).unwrap();
        assert!(created.verified, "{:?}", created.problems);
        assert_eq!(created.manifest.tables.len(), Table::ALL.len());
        let again = create(&engine, &backups, 1_000, "test").unwrap();
        assert_ne!(again.id, created.id, "names never collide");

        let target = SledEngine::open(&dir.path().join("b")).unwrap();
        let loaded = load(&created.path, &target, &mut |_, _, _| {}).unwrap();
        assert_eq!(
            loaded
                .iter()
                .find(|(t, _)| *t == Table::AgentcomConfig)
                .unwrap()
                .1,
            2
        );
        let rows = target.scan_prefix(Table::AgentcomConfig, b"").unwrap();
        assert_eq!(
            rows,
            vec![
                (b"a".to_vec(), crate::encode(&"9")),
                (b"b".to_vec(), crate::encode(&"2"))
            ]
        );
        assert_eq!(
            target.get(Table::HubMeta, b"m").unwrap().unwrap(),
            crate::encode(&"x")
        );
    }

    #[test]
    fn a_backup_holding_an_unreadable_record_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(&dir.path().join("a")).unwrap();
        let mut deep = serde_json::json!([]);
        for _ in 0..130 {
            deep = serde_json::json!([deep]);
        }
        engine
            .apply(&[
                put(Table::AgentcomConfig, "fine", "1"),
                WriteOp::Put {
                    table: Table::AgentMailbox,
                    key: b"bob".to_vec(),
                    value: crate::encode(&deep),
                },
            ])
            .unwrap();
        let b = create(&engine, &dir.path().join("backups"), 5, "test").unwrap();
        assert!(!b.verified);
        assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
        assert_eq!(b.problems[0].table.as_deref(), Some("agent_mailbox"));
        assert!(b.problems[0].problem.contains("cannot be read back"));
    }

    #[test]
    fn verify_names_the_damaged_table() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(&dir.path().join("a")).unwrap();
        engine
            .apply(&[
                put(Table::TaskQueue, "t", "v"),
                put(Table::AgentMailbox, "m", "v"),
            ])
            .unwrap();
        let backups = dir.path().join("backups");
        let b = create(&engine, &backups, 5, "test").unwrap();
        // Flip a byte in task_queue.
        let tq = b.path.join("task_queue.rec");
        let mut bytes = fs::read(&tq).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&tq, &bytes).unwrap();
        // Truncate agent_mailbox.
        let mb = b.path.join("agent_mailbox.rec");
        let bytes = fs::read(&mb).unwrap();
        fs::write(&mb, &bytes[..bytes.len() - 2]).unwrap();
        // Remove thread_replies.
        fs::remove_file(b.path.join("thread_replies.rec")).unwrap();
        let report = verify_dir(&b.path);
        let tables: Vec<&str> = report
            .problems
            .iter()
            .filter_map(|p| p.table.as_deref())
            .collect();
        assert_eq!(
            tables,
            vec!["task_queue", "agent_mailbox", "thread_replies"],
            "{:?}",
            report.problems
        );
        let target = SledEngine::open(&dir.path().join("b")).unwrap();
        assert!(load(&b.path, &target, &mut |_, _, _| {}).is_err());
    }

    #[test]
    fn only_backup_ids_count() {
        assert!(is_backup_id(&backup_id(1_795_914_562_540)));
        assert!(!is_backup_id("notes"));
        assert!(!is_backup_id(".2026-11-29T01-09-22.540Z.tmp"));
    }

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(&dir.path().join("a")).unwrap();
        let backups = dir.path().join("backups");
        let ids: Vec<String> = (0..4)
            .map(|i| create(&engine, &backups, 1000 + i, "t").unwrap().id)
            .collect();
        let removed = prune(&backups, 3, None);
        assert_eq!(removed, vec![ids[0].clone()]);
        let left: Vec<String> = list(&backups).into_iter().map(|b| b.id).collect();
        assert_eq!(left, ids[1..].to_vec());
    }

    /// The newest verified backup is kept; one the caller has just verified is taken at
    /// its word (a run's own backup is not read through a second time).
    #[test]
    fn prune_keeps_the_newest_verified_and_trusts_a_backup_just_verified() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(&dir.path().join("a")).unwrap();
        let backups = dir.path().join("backups");
        let older = create(&engine, &backups, 1000, "t").unwrap().id;
        let newer = create(&engine, &backups, 2000, "t").unwrap();
        // Damage the newer backup: it no longer verifies when read again.
        let file = newer.path.join(&newer.manifest.tables[0].file);
        fs::write(&file, b"damaged").unwrap();
        assert!(
            prune(&backups, 1, None).is_empty(),
            "the older one is the newest verified"
        );
        assert_eq!(list(&backups).len(), 2);
        assert_eq!(prune(&backups, 1, Some(&newer.id)), vec![older]);
        let left: Vec<String> = list(&backups).into_iter().map(|b| b.id).collect();
        assert_eq!(left, vec![newer.id]);
    }

    #[test]
    fn a_backup_being_pruned_is_never_listed_half_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(&dir.path().join("a")).unwrap();
        let backups = dir.path().join("backups");
        for round in 0..3u64 {
            for i in 0..12 {
                create(&engine, &backups, 1000 + round * 100 + i, "t").unwrap();
            }
            let done = std::sync::atomic::AtomicBool::new(false);
            let torn = std::thread::scope(|s| {
                let lister = s.spawn(|| {
                    let mut torn = Vec::new();
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        torn.extend(list(&backups).into_iter().filter(|b| b.manifest.is_none()));
                    }
                    torn
                });
                prune(&backups, 1, None);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                lister.join().unwrap()
            });
            let ids: Vec<&str> = torn.iter().map(|b| b.id.as_str()).collect();
            assert!(
                ids.is_empty(),
                "listed without a manifest while pruned: {ids:?}"
            );
            assert_eq!(list(&backups).len(), 1);
        }
    }
}
