//! The store actor: the only writer to the engine, with group commit.
//!
//! The actor checks each write and hands it to its writer thread, which works in rounds:
//! it takes every write waiting, applies them in one engine batch (one sled transaction:
//! sled writes its log buffer to disk twice per transaction whatever its size, so one per
//! write was the main cost of a write), then flushes once and answers them all. A write is
//! therefore visible to readers from the start of the round after it arrives, and answered
//! only after a flush that began after it was applied; writes that arrive during a round
//! share the next one. The thread blocks on the disk, never an async worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_store::{Compaction, Engine, Retired, StoreError, WriteOp};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::service::{Service, DEFAULT_WAIT};

/// How long a write may wait for its acknowledgement.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The answer to a write: `Ok` once it is durable.
pub type WriteResult = Result<(), StoreError>;

pub enum StoreMsg {
    /// Apply a batch atomically and answer once it is durable.
    Write(Vec<WriteOp>, RpcReplyPort<WriteResult>),
    /// Answer once every write sent before this message is applied (visible to readers).
    Barrier(RpcReplyPort<()>),
    /// Start recording every batch applied from now on (for a consistent backup), for the
    /// run with this id (a later start takes the capture over).
    StartCapture(u64, RpcReplyPort<()>),
    /// Stop recording and hand over the batches recorded, in the order applied; `None` if
    /// this run's capture is not the one running (the store restarted, or another run
    /// took it over).
    EndCapture(u64, RpcReplyPort<Option<Vec<Vec<WriteOp>>>>),
    /// Hand over the batches recorded so far and keep recording (a compaction replays them
    /// while writes go on); `None` as for [`StoreMsg::EndCapture`].
    TakeCapture(u64, RpcReplyPort<Option<Vec<Vec<WriteOp>>>>),
    /// End this run's capture, replay what it holds into the compaction's copy and switch
    /// to the copy, with no write applied meanwhile (they wait in the mailbox).
    Switch(
        u64,
        Box<dyn Compaction>,
        RpcReplyPort<Result<Switched, StoreError>>,
    ),
}

/// A fresh id for a capture (backup and compaction runs), so that a run only ever ends its
/// own capture.
pub fn capture_id() -> u64 {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A compaction's switch, done.
pub struct Switched {
    pub retired: Retired,
    /// How long writes waited: the replay of the last captured batches, the copy's flush
    /// and the switch.
    pub pause: Duration,
    pub replayed: usize,
}

/// How acknowledgements are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Many writes share one flush (the default).
    GroupCommit,
    /// Every write is flushed on its own before the next is applied (for comparison).
    FlushEachWrite,
}

#[derive(Clone)]
pub struct StoreArgs {
    pub engine: Arc<dyn Engine>,
    pub durability: Durability,
    /// Held by the writer thread while it runs: a restarted store's thread starts only
    /// once its predecessor's has answered every write it took (shared across restarts).
    pub writer_turn: Arc<Mutex<()>>,
}

impl StoreArgs {
    pub fn new(engine: Arc<dyn Engine>, durability: Durability) -> StoreArgs {
        StoreArgs {
            engine,
            durability,
            writer_turn: Arc::default(),
        }
    }
}

/// The most writes applied in one engine batch.
const MOST_WRITES_PER_ROUND: usize = 1024;

/// The batches a running capture has recorded, with the run's id.
type Capture = Arc<Mutex<Option<(u64, Vec<Vec<WriteOp>>)>>>;

/// What the actor hands its writer thread.
enum Job {
    Write(Vec<WriteOp>, RpcReplyPort<WriteResult>),
    /// Answer once every write handed over before is applied.
    Applied(RpcReplyPort<()>),
}

pub struct StoreState {
    capture: Capture,
    /// `None` once the instance is stopping.
    writer: Option<std_mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct StoreActor;

impl Actor for StoreActor {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = StoreArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: StoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tx, rx) = std_mpsc::channel();
        let capture = Capture::default();
        let thread = {
            let capture = capture.clone();
            std::thread::Builder::new()
                .name("agentcom-store".into())
                .spawn(move || writer(args, capture, rx))?
        };
        Ok(StoreState {
            capture,
            writer: Some(tx),
            thread: Some(thread),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreMsg::Write(batch, reply) => {
                if let Err(e) = check_batch(&batch) {
                    tracing::warn!(actor = "store", error = %e, "write refused");
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                state.hand_over(Job::Write(batch, reply))?;
            }
            StoreMsg::Barrier(reply) => state.hand_over(Job::Applied(reply))?,
            // The captures follow the writes sent before them: those are applied first.
            StoreMsg::StartCapture(run, reply) => {
                state.all_applied().await?;
                *state.capture() = Some((run, Vec::new()));
                let _ = reply.send(());
            }
            StoreMsg::EndCapture(run, reply) => {
                state.all_applied().await?;
                let mut capture = state.capture();
                let ours = capture.as_ref().is_some_and(|(r, _)| *r == run);
                let _ = reply.send(if ours {
                    capture.take().map(|(_, c)| c)
                } else {
                    None
                });
            }
            StoreMsg::TakeCapture(run, reply) => {
                state.all_applied().await?;
                let captured = match state.capture().as_mut() {
                    Some((r, captured)) if *r == run => Some(std::mem::take(captured)),
                    _ => None,
                };
                let _ = reply.send(captured);
            }
            StoreMsg::Switch(run, target, reply) => {
                state.all_applied().await?;
                let paused = Instant::now();
                let taken = state.capture().take();
                let result = match taken.filter(|(r, _)| *r == run) {
                    None => Err(StoreError::Engine(
                        "the writes made during the compaction were not all captured (the \
                         store restarted, or a backup took the capture over)"
                            .into(),
                    )),
                    Some((_, captured)) => switch(target, captured).await,
                };
                let _ = reply.send(result.map(|(retired, replayed)| Switched {
                    retired,
                    pause: paused.elapsed(),
                    replayed,
                }));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The writer applies, flushes and answers every write it took, then ends.
        state.writer = None;
        if let Some(thread) = state.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            let _ = tokio::time::timeout(WRITE_TIMEOUT, joined).await;
        }
        Ok(())
    }
}

impl StoreState {
    fn hand_over(&self, job: Job) -> Result<(), ActorProcessingErr> {
        let writer = self.writer.as_ref().ok_or("the store is stopping")?;
        writer
            .send(job)
            .map_err(|_| "the store's writer thread ended".into())
    }

    /// Wait until every write handed over so far is applied (the writer thread is at most
    /// one flush away from it).
    async fn all_applied(&self) -> Result<(), ActorProcessingErr> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.hand_over(Job::Applied(tx.into()))?;
        tokio::time::timeout(WRITE_TIMEOUT, rx)
            .await
            .map_err(|_| "the store's writer did not catch up in time")?
            .map_err(|_| "the store's writer thread ended")?;
        Ok(())
    }

    fn capture(&self) -> std::sync::MutexGuard<'_, Option<(u64, Vec<Vec<WriteOp>>)>> {
        self.capture.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer thread: rounds of apply, flush, answer, until the actor lets go of it.
fn writer(args: StoreArgs, capture: Capture, jobs: std_mpsc::Receiver<Job>) {
    let _turn = args.writer_turn.lock().unwrap_or_else(|p| p.into_inner());
    let engine = args.engine;
    let mut round = Vec::new();
    while let Ok(first) = jobs.recv() {
        round.push(first);
        while round.len() < MOST_WRITES_PER_ROUND {
            match jobs.try_recv() {
                Ok(job) => round.push(job),
                Err(_) => break,
            }
        }
        match args.durability {
            Durability::GroupCommit => {
                let applied = apply_round(engine.as_ref(), &capture, round.drain(..));
                if !applied.is_empty() {
                    let result = engine.flush();
                    for reply in applied {
                        let _ = reply.send(result.clone());
                    }
                }
            }
            Durability::FlushEachWrite => {
                for job in round.drain(..) {
                    for reply in apply_round(engine.as_ref(), &capture, std::iter::once(job)) {
                        let _ = reply.send(engine.flush());
                    }
                }
            }
        }
    }
}

/// A write taken by the writer thread, with its reply.
type Taken = (Vec<WriteOp>, RpcReplyPort<WriteResult>);

/// Writes applied: their batches (for a capture) and their replies, in order.
type Applied = (Vec<Vec<WriteOp>>, Vec<RpcReplyPort<WriteResult>>);

/// Apply the writes of a round in one engine batch (one by one should that fail, so that a
/// write's failure is its own), record them for a running capture, answer the barriers
/// among them; answers the writes applied, still to be made durable.
fn apply_round(
    engine: &dyn Engine,
    capture: &Capture,
    round: impl Iterator<Item = Job>,
) -> Vec<RpcReplyPort<WriteResult>> {
    let mut writes = Vec::new();
    let mut barriers = Vec::new();
    for job in round {
        match job {
            Job::Write(batch, reply) => writes.push((batch, reply)),
            Job::Applied(reply) => barriers.push(reply),
        }
    }
    let (batches, applied) = match apply_together(engine, writes) {
        Ok(together) => together,
        Err(writes) => apply_each(engine, writes),
    };
    let mut captured = capture.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, recorded)) = captured.as_mut() {
        recorded.extend(batches);
    }
    drop(captured);
    for reply in barriers {
        let _ = reply.send(());
    }
    applied
}

/// Apply several writes as one engine batch, moving (not copying) their operations into it
/// and back out: `Ok` with the batches and replies once applied; `Err` hands the writes
/// back, unapplied, if the engine refused the whole (or there is only one).
fn apply_together(engine: &dyn Engine, writes: Vec<Taken>) -> Result<Applied, Vec<Taken>> {
    if writes.len() < 2 {
        return Err(writes);
    }
    let lens: Vec<usize> = writes.iter().map(|(batch, _)| batch.len()).collect();
    let (batches, replies): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
    let all: Vec<WriteOp> = batches.into_iter().flatten().collect();
    let applied = engine.apply(&all).is_ok();
    let mut ops = all.into_iter();
    let batches: Vec<Vec<WriteOp>> = lens
        .iter()
        .map(|&n| ops.by_ref().take(n).collect())
        .collect();
    if applied {
        Ok((batches, replies))
    } else {
        Err(batches.into_iter().zip(replies).collect())
    }
}

/// Apply writes one by one, each failure answered as its own: the batches and replies of
/// those applied.
fn apply_each(engine: &dyn Engine, writes: Vec<Taken>) -> Applied {
    let mut applied = (
        Vec::with_capacity(writes.len()),
        Vec::with_capacity(writes.len()),
    );
    for (batch, reply) in writes {
        match engine.apply(&batch) {
            Ok(()) => {
                applied.0.push(batch);
                applied.1.push(reply);
            }
            Err(e) => {
                tracing::error!(actor = "store", error = %e, "write failed");
                let _ = reply.send(Err(e));
            }
        }
    }
    applied
}

/// Replay `captured` into the copy and switch to it, off the async workers (while the
/// store actor waits for it, so no write is applied meanwhile).
async fn switch(
    mut target: Box<dyn Compaction>,
    captured: Vec<Vec<WriteOp>>,
) -> Result<(Retired, usize), StoreError> {
    tokio::task::spawn_blocking(move || {
        agentcom_store::compact::replay(target.as_mut(), &captured)?;
        Ok((target.switch()?, captured.len()))
    })
    .await
    .unwrap_or_else(|e| Err(StoreError::Engine(format!("switch task failed: {e}"))))
}

/// Refuse a batch holding a record that could not be read back: nothing of it is applied.
fn check_batch(batch: &[WriteOp]) -> Result<(), StoreError> {
    batch.iter().try_for_each(|op| match op {
        WriteOp::Put { table, value, .. } => agentcom_store::check_writable(*table, value),
        WriteOp::Delete { .. } => Ok(()),
    })
}

/// An actor's writes in flight (sent, not yet known to be applied), counted by a key of the
/// actor's choosing: a read that depends only on keys with nothing in flight can skip the
/// wait for the actor's earlier writes to be applied (a [`StoreMsg::Barrier`], which may
/// wait for a round of the writer).
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<std::collections::HashMap<String, usize>>>);

/// One write in flight under a key, until dropped: keep it in the write's continuation,
/// which runs once the write is durable and is dropped if the write fails.
pub struct Flying(InFlight, String);

impl InFlight {
    pub fn start(&self, key: &str) -> Flying {
        *self.lock().entry(key.to_string()).or_default() += 1;
        Flying(self.clone(), key.to_string())
    }

    pub fn touches(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Flying {
    fn drop(&mut self) {
        let mut flying = self.0.lock();
        if let Some(n) = flying.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                flying.remove(&self.1);
            }
        }
    }
}

/// Runs the continuations of one actor's writes in the order the writes were sent, so
/// that answers and events follow the order of the actor's decisions even when several
/// writes become durable in the same flush.
#[derive(Clone)]
pub struct InOrder {
    tx: mpsc::UnboundedSender<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl InOrder {
    /// Start the runner (one per actor instance; it ends when the last handle is dropped).
    pub fn new() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pin<Box<dyn Future<Output = ()> + Send>>>();
        tokio::spawn(async move {
            while let Some(next) = rx.recv().await {
                next.await;
            }
        });
        InOrder { tx }
    }

    /// Run `work` after everything queued before it.
    pub fn then(&self, work: impl Future<Output = ()> + Send + 'static) {
        if let Err(mpsc::error::SendError(work)) = self.tx.send(Box::pin(work)) {
            tokio::spawn(work);
        }
    }
}

impl Default for InOrder {
    fn default() -> Self {
        Self::new()
    }
}

/// Send `ops` to the store now (keeping this actor's write order) and answer `reply` with
/// `done()` once they are durable, without holding up the actor meanwhile; answers go out
/// in the order of the writes (`order`).
pub async fn write_then<T: Send + 'static>(
    store: &Service<StoreMsg>,
    order: &InOrder,
    ops: Vec<WriteOp>,
    reply: RpcReplyPort<Result<T, crate::HubError>>,
    done: impl FnOnce() -> T + Send + 'static,
) {
    if ops.is_empty() {
        order.then(async move {
            let _ = reply.send(Ok(done()));
        });
        return;
    }
    let pending = store
        .request(|port| StoreMsg::Write(ops, port), DEFAULT_WAIT)
        .await;
    order.then(async move {
        let result = match pending {
            Err(e) => Err(e.into()),
            Ok(pending) => match pending.wait(WRITE_TIMEOUT).await {
                Ok(Ok(())) => Ok(done()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            },
        };
        let _ = reply.send(result);
    });
}
