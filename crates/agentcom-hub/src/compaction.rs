//! Online compaction: copy the live records into a fresh database while writes go on, then
//! switch to it with writes held only for the last moment.
//!
//! 1. The store actor starts capturing every batch it applies (as for a backup).
//! 2. Every table is copied into the new database (a fuzzy copy, off the async workers).
//! 3. The batches captured meanwhile are replayed into it, a few rounds while writes go on,
//!    until what is left is small.
//! 4. The store actor replays the rest and switches ([`StoreMsg::Switch`]): the one pause
//!    of writes. Acknowledgements waiting for a flush are answered by the next flush, of
//!    the new database, which holds their writes.
//! 5. The old database is deleted once its last reader is done.
//!
//! Any failure before the switch leaves the live database as it was and deletes the copy.
//! The switch itself is one atomic rename (see `agentcom_store::live_dir`).

use std::sync::Arc;
use std::time::Instant;

use agentcom_store::compact::{copy_all, RETIRE_WITHIN};
use agentcom_store::{Compaction, Engine, StoreError, WriteOp};

use crate::service::Service;
use crate::store::{capture_id, StoreMsg};
use crate::CALL_TIMEOUT;

/// Catch-up rounds stop once fewer batches than this were captured during the last one.
const FEW_BATCHES: usize = 64;
/// ... or after this many rounds (under a write rate the copy cannot outpace).
const MAX_ROUNDS: usize = 8;
/// The longest the switch may take (it is normally milliseconds).
const SWITCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What one compaction did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompactionRun {
    pub duration_ms: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub reclaimed_bytes: u64,
    pub records_copied: u64,
    /// Writes made during the copy, replayed into the new database.
    pub writes_replayed: usize,
    /// How long writes waited for the switch.
    pub longest_write_pause_ms: f64,
    /// Whether the old database is already deleted (else the next start deletes it).
    pub old_removed: bool,
    /// When the switch came (from the start), and how long deleting the old database took.
    pub switched_after_ms: u64,
    pub removal_ms: u64,
}

/// Compact the live database while the hub runs. Never run two at once, nor one during a
/// backup (both use the store's capture): the backup actor serialises them.
pub async fn run(
    engine: Arc<dyn Engine>,
    store: Service<StoreMsg>,
) -> Result<CompactionRun, String> {
    let started = Instant::now();
    let bytes_before = engine.size_on_disk().map_err(|e| e.to_string())?;
    let id = capture_id();
    store
        .call(|r| StoreMsg::StartCapture(id, r), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let result = copy_and_switch(engine.clone(), &store, id).await;
    // On failure, this run's capture ends here (a no-op once the switch ended it).
    let _ = store
        .call(|r| StoreMsg::EndCapture(id, r), CALL_TIMEOUT)
        .await;
    let (switched, records_copied, writes_replayed) = result?;
    let switched_after_ms = started.elapsed().as_millis() as u64;
    let retired = switched.retired;
    let old_removed = blocking(move || {
        retired
            .remove(RETIRE_WITHIN)
            .map_err(|e| StoreError::Engine(e.to_string()))
    })
    .await
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "compacted, but the old database is not removed yet");
        false
    });
    let removal_ms = started.elapsed().as_millis() as u64 - switched_after_ms;
    let bytes_after = engine.size_on_disk().map_err(|e| e.to_string())?;
    Ok(CompactionRun {
        duration_ms: started.elapsed().as_millis() as u64,
        bytes_before,
        bytes_after,
        reclaimed_bytes: bytes_before.saturating_sub(bytes_after),
        records_copied,
        writes_replayed: writes_replayed + switched.replayed,
        longest_write_pause_ms: switched.pause.as_secs_f64() * 1000.0,
        old_removed,
        switched_after_ms,
        removal_ms,
    })
}

async fn copy_and_switch(
    engine: Arc<dyn Engine>,
    store: &Service<StoreMsg>,
    id: u64,
) -> Result<(crate::store::Switched, u64, usize), String> {
    let (mut target, records) = blocking(move || {
        let mut target = engine.start_compaction()?;
        let copied = copy_all(engine.as_ref(), target.as_mut())?;
        Ok((target, copied))
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut replayed = 0;
    for _ in 0..MAX_ROUNDS {
        let captured = take_capture(store, id).await?;
        let n = captured.len();
        target = replay(target, captured).await?;
        replayed += n;
        if n < FEW_BATCHES {
            break;
        }
    }
    // Make the copy durable now, so that the switch only flushes the last few writes.
    let target = blocking(move || {
        let mut target = target;
        target.flush()?;
        Ok(target)
    })
    .await
    .map_err(|e| e.to_string())?;
    let switched = store
        .call(|r| StoreMsg::Switch(id, target, r), SWITCH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((switched, records, replayed))
}

async fn take_capture(store: &Service<StoreMsg>, id: u64) -> Result<Vec<Vec<WriteOp>>, String> {
    store
        .call(|r| StoreMsg::TakeCapture(id, r), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            "the writes made during the compaction were not all captured (the store \
             restarted); nothing changed"
                .to_string()
        })
}

async fn replay(
    target: Box<dyn Compaction>,
    captured: Vec<Vec<WriteOp>>,
) -> Result<Box<dyn Compaction>, String> {
    blocking(move || {
        let mut target = target;
        agentcom_store::compact::replay(target.as_mut(), &captured)?;
        Ok(target)
    })
    .await
    .map_err(|e| e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Engine(format!("compaction task failed: {e}"))))
}
