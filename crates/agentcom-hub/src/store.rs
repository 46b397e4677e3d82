//! The store actor: the only writer to the engine, with group commit at both steps.
//!
//! - **Apply.** Every write waiting in the mailbox is applied in one engine batch (one sled
//!   transaction): a write is held until the messages sent before it have been read, then
//!   applied (visible to readers) with them. A sled transaction writes its log buffer to
//!   disk twice whatever its size, so one per write made that the main cost of a write.
//! - **Flush.** A write is answered only after a flush that started after it was applied.
//!   Writes that arrive while a flush is running wait for the next one, so one fsync
//!   covers many writes: the committer task drains every waiting acknowledgement before
//!   each flush.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
    /// Apply the writes held so far (sent by the actor to itself after the first of them,
    /// so that it follows every message already waiting).
    ApplyHeld,
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

pub struct StoreArgs {
    pub engine: Arc<dyn Engine>,
    pub durability: Durability,
}

/// The most writes applied in one engine batch.
const MOST_WRITES_PER_APPLY: usize = 1024;

pub struct StoreState {
    engine: Arc<dyn Engine>,
    /// Writes taken but not yet applied, in the order received.
    held: Vec<(Vec<WriteOp>, RpcReplyPort<WriteResult>)>,
    capture: Option<(u64, Vec<Vec<WriteOp>>)>,
    durability: Durability,
    committer: mpsc::UnboundedSender<RpcReplyPort<WriteResult>>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(committer(args.engine.clone(), rx));
        Ok(StoreState {
            engine: args.engine,
            held: Vec::new(),
            capture: None,
            durability: args.durability,
            committer: tx,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
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
                if state.held.is_empty() {
                    // Should the send fail (the instance is draining), `post_stop` applies
                    // what is held.
                    let _ = myself.send_message(StoreMsg::ApplyHeld);
                }
                state.held.push((batch, reply));
                if state.held.len() >= MOST_WRITES_PER_APPLY {
                    state.apply_held().await;
                }
            }
            StoreMsg::ApplyHeld => state.apply_held().await,
            // Every other message follows the writes sent before it: those are applied first.
            StoreMsg::Barrier(reply) => {
                state.apply_held().await;
                let _ = reply.send(());
            }
            StoreMsg::StartCapture(run, reply) => {
                state.apply_held().await;
                state.capture = Some((run, Vec::new()));
                let _ = reply.send(());
            }
            StoreMsg::EndCapture(run, reply) => {
                state.apply_held().await;
                let ours = state.capture.as_ref().is_some_and(|(r, _)| *r == run);
                let captured = if ours {
                    state.capture.take().map(|(_, c)| c)
                } else {
                    None
                };
                let _ = reply.send(captured);
            }
            StoreMsg::TakeCapture(run, reply) => {
                state.apply_held().await;
                let captured = match state.capture.as_mut() {
                    Some((r, captured)) if *r == run => Some(std::mem::take(captured)),
                    _ => None,
                };
                let _ = reply.send(captured);
            }
            StoreMsg::Switch(run, target, reply) => {
                state.apply_held().await;
                let paused = Instant::now();
                let ours = state.capture.as_ref().is_some_and(|(r, _)| *r == run);
                let result = match state.capture.take().filter(|_| ours) {
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
        // Writes still held are applied and answered; pending acknowledgements are flushed
        // by the committer, which ends when the last sender (this state) is dropped.
        state.apply_held().await;
        let _ = flush(state.engine.clone()).await;
        Ok(())
    }
}

impl StoreState {
    /// Apply every held write, as few engine batches as possible, and hand each applied
    /// write's answer on to be made durable. Should a combined batch fail, its writes are
    /// applied one by one, so that one write's failure is its own.
    async fn apply_held(&mut self) {
        while !self.held.is_empty() {
            let take = self.held.len().min(MOST_WRITES_PER_APPLY);
            let writes: Vec<_> = self.held.drain(..take).collect();
            if writes.len() > 1 && self.durability == Durability::GroupCommit {
                let combined: Vec<WriteOp> = writes
                    .iter()
                    .flat_map(|(batch, _)| batch.iter().cloned())
                    .collect();
                if self.engine.apply(&combined).is_ok() {
                    for (batch, reply) in writes {
                        self.applied(batch, reply).await;
                    }
                    continue;
                }
            }
            for (batch, reply) in writes {
                match self.engine.apply(&batch) {
                    Ok(()) => self.applied(batch, reply).await,
                    Err(e) => {
                        tracing::error!(actor = "store", error = %e, "write failed");
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// `batch` is applied: record it for a capture running, and answer once it is durable.
    async fn applied(&mut self, batch: Vec<WriteOp>, reply: RpcReplyPort<WriteResult>) {
        if let Some((_, capture)) = self.capture.as_mut() {
            capture.push(batch);
        }
        match self.durability {
            Durability::GroupCommit => {
                // The committer outlives this instance only while it has waiters.
                if let Err(mpsc::error::SendError(reply)) = self.committer.send(reply) {
                    let _ = reply.send(flush(self.engine.clone()).await);
                }
            }
            Durability::FlushEachWrite => {
                let _ = reply.send(flush(self.engine.clone()).await);
            }
        }
    }
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

async fn flush(engine: Arc<dyn Engine>) -> WriteResult {
    tokio::task::spawn_blocking(move || engine.flush())
        .await
        .unwrap_or_else(|e| Err(StoreError::Engine(format!("flush task failed: {e}"))))
}

/// Group commit: take every waiting acknowledgement, flush once, answer them all.
async fn committer(
    engine: Arc<dyn Engine>,
    mut waiting: mpsc::UnboundedReceiver<RpcReplyPort<WriteResult>>,
) {
    let mut batch = Vec::new();
    while let Some(first) = waiting.recv().await {
        batch.push(first);
        while let Ok(next) = waiting.try_recv() {
            batch.push(next);
        }
        let result = flush(engine.clone()).await;
        for reply in batch.drain(..) {
            let _ = reply.send(result.clone());
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
