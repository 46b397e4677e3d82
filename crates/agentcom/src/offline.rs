//! The offline commands: tokens, backups and restore, run against a data directory that
//! no hub holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentcom_core::auth::Role;
use agentcom_hub::{now_ms, tokens};
use agentcom_store::{backup, live_dir, sync_dir};
use agentcom_store::{Engine, SledEngine, StoreError, StoreReader, Table};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a token and print it on stdout.
    Create {
        #[arg(long)]
        agent_id: String,
        #[arg(long, default_value = "agent", value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// List tokens (agent, role, prefix; never the token).
    List {
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Revoke every token of an agent.
    Revoke {
        #[arg(long)]
        agent_id: String,
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

/// Where backups live: `--backup-dir`, else `<data_dir>/backups`.
#[derive(clap::Args, Clone)]
pub struct Dirs {
    #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "AGENTCOM_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
}

impl Dirs {
    fn backups(&self) -> PathBuf {
        self.backup_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups"))
    }
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Back up every table of a stopped hub's data directory.
    Create {
        #[command(flatten)]
        dirs: Dirs,
        /// Backups to keep (older ones are removed).
        #[arg(long, env = "AGENTCOM_BACKUP_KEEP", default_value_t = 3)]
        keep: usize,
    },
    /// List backups, newest first.
    List {
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Re-read a backup from disk and check every table against its manifest.
    Verify {
        /// A backup id (in the backup directory) or a path to a backup directory.
        backup: String,
        #[command(flatten)]
        dirs: Dirs,
    },
}

/// Open the store, turning failures into instructions for the operator. When it cannot be
/// opened at all, name the newest verified backup and the exact restore command.
pub fn open_store(data_dir: &Path, backup_dir: Option<&Path>) -> Result<SledEngine, String> {
    agentcom_store::create_dir_all_durable(data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    finish_interrupted_restore(data_dir)?;
    let opened = SledEngine::open(data_dir).and_then(|engine| {
        // Every record is read back once: a damaged one refuses the store, one that cannot
        // be decoded is moved to quarantine so that it stops nothing.
        for q in agentcom_store::quarantine::sweep(&engine, now_ms())? {
            tracing::error!(
                table = %q.table,
                key = %q.key_hex,
                reason = %q.reason,
                "a record that cannot be read back was moved to the quarantine table"
            );
        }
        Ok(engine)
    });
    opened.map_err(|e| match e {
        StoreError::Locked { .. } => format!("{e}. Stop the hub that uses {} first.", data_dir.display()),
        StoreError::Open { .. } | StoreError::Damaged { .. } => {
            let backups = backup_dir.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join("backups"));
            match backup::newest_verified(&backups) {
                Some(b) => format!(
                    "{e}\nThe store may be damaged. The newest verified backup is {} ({}). Restore it with:\n  agentcom restore --from {} --data-dir {}",
                    b.id,
                    b.path.display(),
                    b.path.display(),
                    data_dir.display()
                ),
                None => format!(
                    "{e}\nThe store may be damaged, and no verified backup was found in {}. If you keep backups elsewhere, restore one with:\n  agentcom restore --from <backup directory> --data-dir {}",
                    backups.display(),
                    data_dir.display()
                ),
            }
        }
        other => other.to_string(),
    })
}

pub fn token(cmd: TokenCommand) -> Result<(), String> {
    let data_dir = match &cmd {
        TokenCommand::Create { data_dir, .. }
        | TokenCommand::List { data_dir }
        | TokenCommand::Revoke { data_dir, .. } => data_dir.clone(),
    };
    let engine = Arc::new(open_store(&data_dir, None)?);
    let reader = StoreReader::new(engine.clone());
    let err = |e: StoreError| e.to_string();
    // A store written before the token index existed gets it first, as at hub start.
    let index = tokens::index_ops(&reader).map_err(err)?;
    if !index.is_empty() {
        engine.apply(&index).map_err(err)?;
        engine.flush().map_err(err)?;
    }
    match cmd {
        TokenCommand::Create { agent_id, role, .. } => {
            if !agentcom_core::auth::is_valid_agent_id(&agent_id) {
                return Err("agent id must be non-empty, without spaces or slashes".into());
            }
            let token = tokens::mint();
            let (_, ops) = tokens::create(&agent_id, role, &token, false, now_ms());
            engine.apply(&ops).map_err(err)?;
            engine.flush().map_err(err)?;
            println!("{token}");
        }
        TokenCommand::List { .. } => {
            for (_, r) in tokens::list(&reader).map_err(err)? {
                println!(
                    "{}\t{}\t{}...\t{}",
                    r.agent_id,
                    r.role.as_str(),
                    r.prefix,
                    r.created_at
                );
            }
        }
        TokenCommand::Revoke { agent_id, .. } => {
            let ops = tokens::revoke(&reader, &agent_id, None).map_err(err)?;
            engine.apply(&ops).map_err(err)?;
            engine.flush().map_err(err)?;
            println!(
                "revoked {} token(s) of {agent_id}",
                tokens::revoked_count(&ops)
            );
        }
    }
    Ok(())
}

pub fn backup(cmd: BackupCommand) -> Result<(), String> {
    match cmd {
        BackupCommand::Create { dirs, keep } => {
            let engine = open_store(&dirs.data_dir, dirs.backup_dir.as_deref())?;
            let created = backup::create(
                &engine,
                &dirs.backups(),
                now_ms(),
                env!("CARGO_PKG_VERSION"),
            )
            .map_err(|e| e.to_string())?;
            for r in &created.results {
                match &r.outcome {
                    Ok((_, size)) => println!("{}\tok\t{size} bytes", r.table.name()),
                    Err(e) => println!("{}\terror\t{e}", r.table.name()),
                }
            }
            if !created.verified {
                return Err(format!(
                    "backup {} did not verify: {:?}",
                    created.id, created.problems
                ));
            }
            backup::prune(&dirs.backups(), keep.max(1), Some(&created.id));
            println!(
                "backup {} written and verified: {}",
                created.id,
                created.path.display()
            );
            Ok(())
        }
        BackupCommand::List { dirs } => {
            for b in backup::list(&dirs.backups()).into_iter().rev() {
                match &b.manifest {
                    Some(m) => {
                        let records: u64 = m.tables.iter().map(|t| t.record_count).sum();
                        let bytes: u64 = m.tables.iter().map(|t| t.bytes).sum();
                        println!(
                            "{}\t{} records\t{bytes} bytes\t{}",
                            b.id,
                            records,
                            b.path.display()
                        );
                    }
                    None => println!("{}\tunreadable manifest\t{}", b.id, b.path.display()),
                }
            }
            Ok(())
        }
        BackupCommand::Verify {
            backup: which,
            dirs,
        } => {
            let path = resolve(&which, &dirs);
            let report = backup::verify_dir(&path);
            if report.ok() {
                println!(
                    "backup {} verified: every table matches its manifest",
                    report.id
                );
                Ok(())
            } else {
                for p in &report.problems {
                    println!("{}: {}", p.table.as_deref().unwrap_or("backup"), p.problem);
                }
                Err(format!(
                    "backup {} is damaged ({} problem(s))",
                    report.id,
                    report.problems.len()
                ))
            }
        }
    }
}

/// A backup named by id (in the backup directory) or by path.
fn resolve(which: &str, dirs: &Dirs) -> PathBuf {
    let as_path = PathBuf::from(which);
    if as_path.is_dir() {
        as_path
    } else {
        dirs.backups().join(which)
    }
}

/// `agentcom restore`: rebuild a data directory from a verified backup, keeping the
/// replaced database aside.
pub fn restore(from: &str, dirs: &Dirs) -> Result<(), String> {
    let source = resolve(from, dirs);
    let report = backup::verify_dir(&source);
    if !report.ok() {
        let problems: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.table.as_deref().unwrap_or("backup"), p.problem))
            .collect();
        return Err(format!(
            "refusing to restore {}: it does not verify:\n  {}",
            source.display(),
            problems.join("\n  ")
        ));
    }
    let data_dir = &dirs.data_dir;
    finish_interrupted_restore(data_dir)?;
    // The live database: `db`, or the generation a compaction switched to.
    let live = live_dir::live_path(data_dir).map_err(|e| format!("refusing to restore: {e}"))?;
    if live.exists() {
        // Opening takes sled's lock: a running hub makes this fail, and nothing is touched.
        // A store that fails to open for another reason is what restore is for.
        match SledEngine::open(data_dir) {
            Ok(engine) => drop(engine),
            Err(e @ StoreError::Locked { .. }) => return Err(format!("refusing to restore: {e}")),
            Err(_) => {}
        }
    }
    // Load into a new store beside the live one, which stays untouched until the new one
    // is durable; then mark the new one complete and swap them.
    let staging = data_dir.join(format!("{RESTORE_PREFIX}{}", report.id));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| format!("cannot remove {}: {e}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let engine = SledEngine::open(&staging).map_err(|e| e.to_string())?;
    let mut bar = Progress::new();
    let restored = backup::load(&source, &engine, &mut |table, done, total| {
        bar.update(table, done, total)
    })
    .map_err(|e| e.to_string())?;
    bar.finish();
    engine.flush().map_err(|e| e.to_string())?;
    drop(engine);
    let done = staging.join(RESTORE_COMPLETE);
    std::fs::File::create(&done)
        .and_then(|f| f.sync_all())
        .and_then(|()| sync_dir(&staging))
        .map_err(|e| format!("cannot write {}: {e}", done.display()))?;
    let replaced = if live.exists() {
        let aside = data_dir.join(format!("db.replaced-{}", backup::backup_id(now_ms())));
        std::fs::rename(&live, &aside)
            .and_then(|()| sync_dir(data_dir))
            .map_err(|e| format!("cannot move {} aside: {e}", live.display()))?;
        Some(aside)
    } else {
        None
    };
    finish_interrupted_restore(data_dir)?;
    let db = data_dir.join(live_dir::FIRST);
    println!("restored backup {} into {}", report.id, db.display());
    for (table, n) in &restored {
        println!("  {}\t{n} records", table.name());
    }
    if let Some(aside) = replaced {
        println!("the database it replaced was kept at {}", aside.display());
    }
    Ok(())
}

/// `agentcom compact`: compact the store of a stopped hub.
pub fn compact(dirs: &Dirs) -> Result<(), String> {
    let engine = open_store(&dirs.data_dir, dirs.backup_dir.as_deref())?;
    let report = agentcom_store::compact::compact_stopped(&engine).map_err(|e| e.to_string())?;
    println!(
        "compacted {} in {} ms: {} records, {} bytes on disk before, {} after ({} reclaimed)",
        engine.path().display(),
        report.duration_ms,
        report.records,
        report.bytes_before,
        report.bytes_after,
        report.reclaimed_bytes()
    );
    if !report.old_removed {
        println!("the old database could not be removed yet; the next start removes it");
    }
    Ok(())
}

/// A restore loads into `<data-dir>/.restore-<backup id>/db`, then writes this file there.
const RESTORE_PREFIX: &str = ".restore-";
const RESTORE_COMPLETE: &str = "complete";

/// Finish or clean up a restore that stopped before its end (a crash, a power cut):
/// - no live database and a staged store marked complete: move it into place as `db`
///   (forgetting the generation a compaction had switched to, which was moved aside);
/// - a staged store not marked complete, or one left beside a live database: remove it.
///
/// Every step is synced, so that after any crash one of the two stores is in place,
/// never neither.
pub fn finish_interrupted_restore(data_dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Ok(());
    };
    let live = live_dir::live_name(data_dir)
        .map(|name| data_dir.join(name))
        .map_err(|e| format!("cannot tell which database is live: {e}"))?;
    let db = data_dir.join(live_dir::FIRST);
    for entry in entries.filter_map(Result::ok) {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(RESTORE_PREFIX)
        {
            continue;
        }
        let staging = entry.path();
        if !live.exists() && staging.join(RESTORE_COMPLETE).exists() {
            // A `db` beside a live later generation is a replaced one not yet removed.
            let stale_first = db.exists() && db != live;
            (if stale_first {
                std::fs::remove_dir_all(&db)
            } else {
                Ok(())
            })
            .and_then(|()| live_dir::reset(data_dir))
            .and_then(|()| std::fs::rename(staging.join("db"), &db))
            .and_then(|()| sync_dir(data_dir))
            .map_err(|e| format!("cannot move the restored store into {}: {e}", db.display()))?;
        }
        std::fs::remove_dir_all(&staging)
            .and_then(|()| sync_dir(data_dir))
            .map_err(|e| format!("cannot remove {}: {e}", staging.display()))?;
    }
    Ok(())
}

/// A one-line progress bar on stderr, shown only for large tables.
struct Progress {
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Progress { shown: false }
    }

    fn update(&mut self, table: Table, done: u64, total: u64) {
        if total < 10_000 {
            return;
        }
        let width = 30;
        let filled = (done * width / total.max(1)) as usize;
        eprint!(
            "\r{:<18} [{}{}] {done}/{total}",
            table.name(),
            "#".repeat(filled),
            " ".repeat(width as usize - filled)
        );
        self.shown = true;
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_store::WriteOp;

    fn store_with(dir: &Path, value: &str) {
        let engine = SledEngine::open(dir).unwrap();
        engine
            .apply(&[WriteOp::Put {
                table: Table::HubMeta,
                key: b"k".to_vec(),
                value: agentcom_store::encode(&value),
            }])
            .unwrap();
        engine.flush().unwrap();
    }

    fn value_in(dir: &Path) -> String {
        let engine = SledEngine::open(dir).unwrap();
        StoreReader::new(Arc::new(engine))
            .get_record(Table::HubMeta, b"k")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_restore_stopped_between_its_renames_is_finished() {
        let data = tempfile::tempdir().unwrap();
        let staging = data.path().join(format!("{RESTORE_PREFIX}b1"));
        store_with(&staging, "restored");
        std::fs::File::create(staging.join(RESTORE_COMPLETE)).unwrap();
        // The live store was moved aside; the crash came before the new one moved in.
        finish_interrupted_restore(data.path()).unwrap();
        assert!(!staging.exists());
        assert_eq!(value_in(data.path()), "restored");
    }

    #[test]
    fn an_incomplete_restore_leaves_the_live_store_alone() {
        let data = tempfile::tempdir().unwrap();
        store_with(data.path(), "live");
        let staging = data.path().join(format!("{RESTORE_PREFIX}b2"));
        store_with(&staging, "half-loaded");
        finish_interrupted_restore(data.path()).unwrap();
        assert!(!staging.exists());
        assert_eq!(value_in(data.path()), "live");
        // Not marked complete and no live store: still not used.
        let data = tempfile::tempdir().unwrap();
        let staging = data.path().join(format!("{RESTORE_PREFIX}b3"));
        store_with(&staging, "half-loaded");
        finish_interrupted_restore(data.path()).unwrap();
        assert!(!data.path().join("db").exists() && !staging.exists());
    }

    #[test]
    fn a_restore_over_a_compacted_store_goes_back_to_db() {
        let data = tempfile::tempdir().unwrap();
        store_with(data.path(), "live");
        {
            let engine = SledEngine::open(data.path()).unwrap();
            agentcom_store::compact::compact_stopped(&engine).unwrap();
        }
        assert_eq!(live_dir::live_name(data.path()).unwrap(), "db.1");
        let staging = data.path().join(format!("{RESTORE_PREFIX}b4"));
        store_with(&staging, "restored");
        std::fs::File::create(staging.join(RESTORE_COMPLETE)).unwrap();
        // As a restore does: the live generation moved aside, then the crash.
        std::fs::rename(data.path().join("db.1"), data.path().join("db.replaced-x")).unwrap();
        finish_interrupted_restore(data.path()).unwrap();
        assert_eq!(live_dir::live_name(data.path()).unwrap(), "db");
        assert_eq!(value_in(data.path()), "restored");
    }
}
