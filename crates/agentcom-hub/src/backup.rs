//! The backup actor: consistent point-in-time backups of every table while writers keep
//! running, on a fixed-rate schedule derived from the backups on disk (F2), and on
//! request. Runs never overlap: a request made during a run gets that run's result.
//!
//! It also runs compactions ([`crate::compaction`]), which need the store's capture as
//! backups do: never during a backup (a compaction asked for then is refused), and a
//! backup due during a compaction starts when the compaction ends. With
//! `compact_when_fragmented`, a scheduled backup that finds the store highly fragmented
//! is followed by a compaction (so at most one per backup interval).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_core::Millis;
use agentcom_store::backup::{self, overlay_of, Created};
use agentcom_store::{encode, Engine, StoreError, StoreReader, Table, WriteOp};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::compaction::CompactionRun;
use crate::events::{HubEvent, Topic};
use crate::pubsub::Publisher;
use crate::service::Service;
use crate::store::StoreMsg;
use crate::{now_ms, HubError, CALL_TIMEOUT};

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct BackupRun {
    pub created: Created,
    pub duration_ms: u64,
}

/// What the hub remembers of the latest run (the disk is the truth for the rest). Kept
/// in `hub_meta`, so a restart does not forget it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    pub at: Millis,
    pub duration_ms: u64,
    /// Bytes of the backup written.
    pub bytes: u64,
    pub backup_id: Option<String>,
    pub ok: bool,
    pub verified: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BackupStatus {
    pub backup_dir: PathBuf,
    pub running: bool,
    pub next_backup_at: Millis,
    pub last_run: Option<LastRun>,
    pub compactions: CompactionStats,
}

/// Compactions since the hub started (for `/metrics` and the dashboard).
#[derive(Debug, Clone, Default)]
pub struct CompactionStats {
    pub running: bool,
    pub completed: u64,
    pub failed: u64,
    pub reclaimed_bytes: u64,
    pub last: Option<CompactionRun>,
}

type CompactionWaiter = RpcReplyPort<Result<CompactionRun, HubError>>;

type Waiter = RpcReplyPort<Result<BackupRun, HubError>>;

/// The `hub_meta` key of the latest run's [`LastRun`].
const LAST_RUN_KEY: &[u8] = b"last_backup_run";

/// How long after a failed scheduled run the next attempt comes.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(600);

pub enum BackupMsg {
    /// Back up now (or join the run in progress) and answer with its result.
    Run(Option<Waiter>),
    Finished(Result<BackupRun, String>),
    Status(RpcReplyPort<BackupStatus>),
    /// Compact the store now and answer with the result; refused during a backup or
    /// another compaction.
    Compact(Option<CompactionWaiter>),
    Compacted(Result<CompactionRun, String>, Option<CompactionWaiter>),
}

pub struct BackupArgs {
    pub engine: Arc<dyn Engine>,
    pub store: Service<StoreMsg>,
    pub publisher: Publisher,
    pub backup_dir: PathBuf,
    pub keep: usize,
    pub interval: Duration,
    /// Test hook (zero unless `--test-hooks`): a pause before each run writes anything.
    pub test_pause: Duration,
    /// Compact after a scheduled backup when the store is highly fragmented.
    pub compact_when_fragmented: bool,
    pub fragmentation_floor: u64,
}

pub struct BackupState {
    args: BackupArgs,
    waiters: Vec<Waiter>,
    running: bool,
    last_run: Option<LastRun>,
    next_at: Millis,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<BackupMsg>>>>,
    compactions: CompactionStats,
    /// A backup was asked for (or fell due) during a compaction.
    backup_deferred: bool,
    /// When `compact_when_fragmented` last started one (at most one per backup interval).
    last_auto_compaction: Option<Instant>,
}

pub struct BackupActor;

/// When the next scheduled backup is due: one interval after the newest backup on disk
/// (so a restart neither forgets it nor postpones the next one), or one interval after
/// `now` when there is none.
pub fn next_due(backup_dir: &std::path::Path, interval: Duration, now: Millis) -> Millis {
    let newest = backup::list(backup_dir)
        .into_iter()
        .rev()
        .find_map(|b| b.manifest.map(|m| m.created_at));
    newest.unwrap_or(now) + interval.as_millis() as u64
}

impl Actor for BackupActor {
    type Msg = BackupMsg;
    type State = BackupState;
    type Arguments = BackupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BackupArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let last_run = StoreReader::new(args.engine.clone())
            .get_record::<LastRun>(Table::HubMeta, LAST_RUN_KEY)
            .unwrap_or_default();
        let mut state = BackupState {
            args,
            waiters: Vec::new(),
            running: false,
            last_run,
            next_at: 0,
            timer: None,
            compactions: CompactionStats::default(),
            backup_deferred: false,
            last_auto_compaction: None,
        };
        state.schedule(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackupMsg::Run(waiter) => {
                state.waiters.extend(waiter);
                if state.compactions.running {
                    state.backup_deferred = true;
                } else if !state.running {
                    state.running = true;
                    state.args.publisher.publish(
                        Topic::Backups,
                        HubEvent::BackupStarted {
                            timestamp: now_ms(),
                        },
                    );
                    let (engine, store, dir) = (
                        state.args.engine.clone(),
                        state.args.store.clone(),
                        state.args.backup_dir.clone(),
                    );
                    let (me, pause) = (myself.clone(), state.args.test_pause);
                    tokio::spawn(async move {
                        tokio::time::sleep(pause).await;
                        let result = run(engine, store, dir).await;
                        let _ = me.send_message(BackupMsg::Finished(result));
                    });
                }
            }
            BackupMsg::Finished(result) => {
                state.running = false;
                let now = now_ms();
                match &result {
                    Ok(run) => {
                        let c = &run.created;
                        let ok = c.results.iter().all(|r| r.outcome.is_ok());
                        if ok {
                            // Off the async workers: pruning may read a backup through.
                            let (dir, keep) = (state.args.backup_dir.clone(), state.args.keep);
                            let verified = c.verified.then(|| c.id.clone());
                            let removed = tokio::task::spawn_blocking(move || {
                                backup::prune(&dir, keep, verified.as_deref())
                            })
                            .await
                            .unwrap_or_default();
                            if !removed.is_empty() {
                                tracing::info!(actor = "backup", ?removed, "old backups removed");
                            }
                        }
                        tracing::info!(actor = "backup", backup_id = %c.id, duration_ms = run.duration_ms, verified = c.verified, "backup complete");
                        state.last_run = Some(LastRun {
                            at: now,
                            duration_ms: run.duration_ms,
                            bytes: c.manifest.tables.iter().map(|t| t.bytes).sum(),
                            backup_id: Some(c.id.clone()),
                            ok,
                            verified: c.verified,
                            error: None,
                        });
                        let tables_backed_up = c
                            .results
                            .iter()
                            .filter(|r| r.outcome.is_ok())
                            .map(|r| r.table.name().to_string())
                            .collect();
                        state.args.publisher.publish(
                            Topic::Backups,
                            HubEvent::BackupComplete {
                                timestamp: now,
                                tables_backed_up,
                                backup_id: c.id.clone(),
                                duration_ms: run.duration_ms,
                                verified: c.verified,
                            },
                        );
                    }
                    Err(error) => {
                        tracing::error!(actor = "backup", %error, "backup failed");
                        state.last_run = Some(LastRun {
                            at: now,
                            duration_ms: 0,
                            bytes: 0,
                            backup_id: None,
                            ok: false,
                            verified: false,
                            error: Some(error.clone()),
                        });
                        state.args.publisher.publish(
                            Topic::Backups,
                            HubEvent::BackupFailed {
                                timestamp: now,
                                error: error.clone(),
                            },
                        );
                    }
                }
                if let Some(last) = &state.last_run {
                    let op = WriteOp::Put {
                        table: Table::HubMeta,
                        key: LAST_RUN_KEY.to_vec(),
                        value: encode(last),
                    };
                    // Durable before the callers hear of the run, so a restart right after
                    // still reports it.
                    let write = state
                        .args
                        .store
                        .request(
                            |p| StoreMsg::Write(vec![op], p),
                            crate::service::DEFAULT_WAIT,
                        )
                        .await;
                    if let Ok(pending) = write {
                        let _ = pending.wait(crate::store::WRITE_TIMEOUT).await;
                    }
                }
                for waiter in state.waiters.drain(..) {
                    let _ = waiter.send(
                        result
                            .clone()
                            .map_err(|e| HubError::Store(StoreError::Engine(e))),
                    );
                }
                state.schedule(&myself);
                let due = state
                    .last_auto_compaction
                    .is_none_or(|at| at.elapsed() >= state.args.interval);
                if due && result.is_ok() && state.fragmented() {
                    tracing::info!(
                        actor = "backup",
                        "the store is highly fragmented: compacting"
                    );
                    state.last_auto_compaction = Some(Instant::now());
                    state.start_compaction(&myself, None);
                }
            }
            BackupMsg::Status(reply) => {
                let _ = reply.send(BackupStatus {
                    backup_dir: state.args.backup_dir.clone(),
                    running: state.running,
                    next_backup_at: state.next_at,
                    last_run: state.last_run.clone(),
                    compactions: state.compactions.clone(),
                });
            }
            BackupMsg::Compact(waiter) => {
                let busy = if state.running {
                    Some("backup_in_progress")
                } else if state.compactions.running {
                    Some("compaction_in_progress")
                } else {
                    None
                };
                match (busy, waiter) {
                    (Some(code), Some(w)) => {
                        let _ = w.send(Err(HubError::Conflict(code)));
                    }
                    (Some(_), None) => {}
                    (None, waiter) => state.start_compaction(&myself, waiter),
                }
            }
            BackupMsg::Compacted(result, waiter) => {
                let now = now_ms();
                let c = &mut state.compactions;
                c.running = false;
                match &result {
                    Ok(run) => {
                        tracing::info!(
                            actor = "backup",
                            duration_ms = run.duration_ms,
                            bytes_before = run.bytes_before,
                            bytes_after = run.bytes_after,
                            pause_ms = run.longest_write_pause_ms,
                            "compaction complete"
                        );
                        c.completed += 1;
                        c.reclaimed_bytes += run.reclaimed_bytes;
                        c.last = Some(run.clone());
                        state.args.publisher.publish(
                            Topic::Backups,
                            HubEvent::CompactionComplete {
                                timestamp: now,
                                run: run.clone(),
                            },
                        );
                    }
                    Err(error) => {
                        tracing::error!(actor = "backup", %error, "compaction failed");
                        c.failed += 1;
                        state.args.publisher.publish(
                            Topic::Backups,
                            HubEvent::CompactionFailed {
                                timestamp: now,
                                error: error.clone(),
                            },
                        );
                    }
                }
                if let Some(w) = waiter {
                    let _ = w.send(result.map_err(HubError::Compaction));
                }
                if std::mem::take(&mut state.backup_deferred) {
                    let _ = myself.send_message(BackupMsg::Run(None));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }
}

impl BackupState {
    fn start_compaction(&mut self, myself: &ActorRef<BackupMsg>, waiter: Option<CompactionWaiter>) {
        self.compactions.running = true;
        self.args.publisher.publish(
            Topic::Backups,
            HubEvent::CompactionStarted {
                timestamp: now_ms(),
            },
        );
        let (engine, store, me) = (
            self.args.engine.clone(),
            self.args.store.clone(),
            myself.clone(),
        );
        tokio::spawn(async move {
            let result = crate::compaction::run(engine, store).await;
            let _ = me.send_message(BackupMsg::Compacted(result, waiter));
        });
    }

    /// Is automatic compaction on, and the store highly fragmented?
    fn fragmented(&self) -> bool {
        if !self.args.compact_when_fragmented {
            return false;
        }
        let engine = &self.args.engine;
        let live = agentcom_store::live_bytes(engine.as_ref());
        engine.size_on_disk().is_ok_and(|size| {
            agentcom_core::health::high_fragmentation(size, live, self.args.fragmentation_floor)
        })
    }

    /// Arm the timer for the next scheduled run, computed from the disk.
    fn schedule(&mut self, myself: &ActorRef<BackupMsg>) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        let now = now_ms();
        self.next_at = next_due(&self.args.backup_dir, self.args.interval, now);
        // After a failed run, retry no sooner than a while later (not in a tight loop).
        if self.last_run.as_ref().is_some_and(|r| !r.ok || !r.verified) {
            self.next_at = self
                .next_at
                .max(now + RETRY_AFTER_FAILURE.min(self.args.interval).as_millis() as u64);
        }
        let delay = Duration::from_millis(self.next_at.saturating_sub(now));
        self.timer = Some(myself.send_after(delay, || BackupMsg::Run(None)));
    }
}

/// One run: capture writes, scan, lay the captured writes over the scan, verify.
pub async fn run(
    engine: Arc<dyn Engine>,
    store: Service<StoreMsg>,
    dir: PathBuf,
) -> Result<BackupRun, String> {
    let started = Instant::now();
    let id = crate::store::capture_id();
    store
        .call(|r| StoreMsg::StartCapture(id, r), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let handle = tokio::runtime::Handle::current();
    let end_store = store.clone();
    let created = tokio::task::spawn_blocking(move || {
        backup::create_live(engine.as_ref(), &dir, now_ms(), env!("CARGO_PKG_VERSION"), || {
            let captured = handle
                .block_on(store.call(|r| StoreMsg::EndCapture(id, r), CALL_TIMEOUT))
                .map_err(|e| StoreError::Engine(e.to_string()))?
                .ok_or_else(|| {
                    StoreError::Engine("the writes made during the backup were not all captured (the store restarted, or another run took the capture over)".into())
                })?;
            Ok(overlay_of(&captured))
        })
    })
    .await
    .map_err(|e| format!("backup task failed: {e}"));
    // Whatever happened, this run's capture ends here (a no-op when it already ended).
    let _ = end_store
        .call(|r| StoreMsg::EndCapture(id, r), CALL_TIMEOUT)
        .await;
    let created = created?.map_err(|e| e.to_string())?;
    Ok(BackupRun {
        created,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// One table's figures in the health report.
#[derive(Debug, Clone)]
pub struct TableHealth {
    pub table: &'static str,
    pub record_count: u64,
    /// Logical bytes (keys and values) of the table's live records: the engine keeps one
    /// file for the whole store, so no per-table file size exists.
    pub logical_bytes: u64,
}

/// `GET /api/admin/storage-health` (and its seed name, `dets-health`).
#[derive(Debug, Clone)]
pub struct StorageHealth {
    pub health_status: &'static str,
    pub stale_backup: bool,
    pub high_fragmentation: bool,
    pub last_backup_at: Option<Millis>,
    pub next_backup_at: Millis,
    pub last_run: Option<LastRun>,
    pub tables: Vec<TableHealth>,
    pub engine: &'static str,
    pub size_on_disk: u64,
    pub live_bytes: u64,
    pub fragmentation_ratio: f64,
    pub fragmentation_floor: u64,
    pub was_recovered: bool,
    pub compactions: CompactionStats,
    /// Records in the `quarantine` table: moved aside at start-up, unreadable.
    pub quarantined_records: u64,
}
