//! The store actor over sled: acknowledgements follow a flush, concurrent writers share
//! flushes and engine batches (group commit: rounds of apply, flush, answer), and
//! `Barrier` waits for earlier writes to be applied only.
//!
//! The engine is wrapped so that a test can count flushes and applies, hold a flush or an
//! apply open (a closed gate) and make the next flush fail: the interleavings are then
//! decided by the test.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use agentcom_hub::service::{Reply, Service, ServiceError, Slot};
use agentcom_hub::store::{Durability, StoreActor, StoreArgs, StoreMsg, WriteResult};
use agentcom_store::{
    Engine, Record, SledEngine, StoreError, StoreReader, Table, TableStats, WriteOp,
};
use common::{eventually, within, WAIT};
use ractor::Actor;

/// The engine's record visitor (`agentcom_store`'s `Visitor`, which it does not export).
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

#[derive(Clone, Copy, PartialEq)]
enum Gate {
    Open,
    Closed { let_through: usize },
}

/// Sled, with flushes that the test can count, hold and fail.
struct GatedEngine {
    sled: SledEngine,
    flushes_started: AtomicUsize,
    flushes_done: AtomicUsize,
    fail_next_flush: AtomicBool,
    /// Open, or closed with this many flushes still let through.
    open: Mutex<Gate>,
    opened: Condvar,
    /// Engine batches applied, and the gate that holds the next one.
    applies: AtomicUsize,
    apply_open: Mutex<bool>,
    apply_opened: Condvar,
}

impl GatedEngine {
    fn open(dir: &std::path::Path) -> Arc<GatedEngine> {
        Arc::new(GatedEngine {
            sled: SledEngine::open(dir).expect("sled opens"),
            flushes_started: AtomicUsize::new(0),
            flushes_done: AtomicUsize::new(0),
            fail_next_flush: AtomicBool::new(false),
            open: Mutex::new(Gate::Open),
            opened: Condvar::new(),
            applies: AtomicUsize::new(0),
            apply_open: Mutex::new(true),
            apply_opened: Condvar::new(),
        })
    }

    /// Applies that start from now on block until [`GatedEngine::release_apply`].
    fn hold_apply(&self) {
        *self.apply_open.lock().unwrap() = false;
    }

    fn release_apply(&self) {
        *self.apply_open.lock().unwrap() = true;
        self.apply_opened.notify_all();
    }

    /// Flushes that start from now on block until [`GatedEngine::release`].
    fn hold(&self) {
        *self.open.lock().unwrap() = Gate::Closed { let_through: 0 };
    }

    /// Let one more held flush through, and hold the ones after it.
    fn let_one_through(&self) {
        let mut gate = self.open.lock().unwrap();
        if let Gate::Closed { let_through } = &mut *gate {
            *let_through += 1;
        }
        self.opened.notify_all();
    }

    fn release(&self) {
        *self.open.lock().unwrap() = Gate::Open;
        self.opened.notify_all();
    }

    fn started(&self) -> usize {
        self.flushes_started.load(Ordering::SeqCst)
    }
}

impl Engine for GatedEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.sled.get(table, key)
    }
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.sled.scan_prefix(table, prefix)
    }
    fn range(&self, t: Table, from: &[u8], to: &[u8], n: usize) -> Result<Vec<Record>, StoreError> {
        self.sled.range(t, from, to, n)
    }
    fn last_with_prefix(&self, t: Table, prefix: &[u8]) -> Result<Option<Record>, StoreError> {
        self.sled.last_with_prefix(t, prefix)
    }
    fn for_each(&self, table: Table, f: &mut Visit<'_>) -> Result<(), StoreError> {
        self.sled.for_each(table, f)
    }
    fn apply(&self, batch: &[WriteOp]) -> Result<(), StoreError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        let open = self.apply_open.lock().unwrap();
        let (_open, waited) = self
            .apply_opened
            .wait_timeout_while(open, WAIT * 2, |open| !*open)
            .unwrap();
        assert!(!waited.timed_out(), "a held apply was never released");
        self.sled.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.flushes_started.fetch_add(1, Ordering::SeqCst);
        let gate = self.open.lock().unwrap();
        // Bounded, so that a broken test cannot hang forever.
        let (mut gate, waited) = self
            .opened
            .wait_timeout_while(gate, WAIT * 2, |g| *g == Gate::Closed { let_through: 0 })
            .unwrap();
        assert!(!waited.timed_out(), "a held flush was never released");
        if let Gate::Closed { let_through } = &mut *gate {
            *let_through -= 1;
        }
        drop(gate);
        let result = if self.fail_next_flush.swap(false, Ordering::SeqCst) {
            Err(StoreError::Engine("injected flush failure (test)".into()))
        } else {
            self.sled.flush()
        };
        self.flushes_done.fetch_add(1, Ordering::SeqCst);
        result
    }
    fn stats(&self, table: Table) -> TableStats {
        self.sled.stats(table)
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.sled.size_on_disk()
    }
    fn was_recovered(&self) -> bool {
        self.sled.was_recovered()
    }
    fn name(&self) -> &'static str {
        "gated-sled"
    }
}

struct Store {
    engine: Arc<GatedEngine>,
    reader: StoreReader,
    service: Service<StoreMsg>,
    actor: ractor::ActorRef<StoreMsg>,
    _dir: tempfile::TempDir,
}

async fn store(durability: Durability) -> Store {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = GatedEngine::open(dir.path());
    let args = StoreArgs::new(engine.clone(), durability);
    let (actor, _) = Actor::spawn(None, StoreActor, args)
        .await
        .expect("store starts");
    let slot = Slot::new();
    slot.fill(actor.clone());
    Store {
        reader: StoreReader::new(engine.clone()),
        service: slot.service("store"),
        engine,
        actor,
        _dir: dir,
    }
}

impl Drop for Store {
    /// A failing test must not leave a flush held (it would hold up the runtime's end).
    fn drop(&mut self) {
        self.engine.release();
        self.engine.release_apply();
    }
}

fn assert_acked(answer: Result<WriteResult, ServiceError>) {
    assert!(matches!(answer, Ok(Ok(()))), "not acknowledged: {answer:?}");
}

fn key(n: usize) -> Vec<u8> {
    format!("key-{n:04}").into_bytes()
}

fn put(n: usize) -> Vec<WriteOp> {
    vec![WriteOp::Put {
        table: Table::HubMeta,
        key: key(n),
        value: agentcom_store::encode(&format!("value-{n}")),
    }]
}

impl Store {
    /// Send a write; the answer comes once it is durable.
    async fn write(&self, n: usize) -> Reply<WriteResult> {
        self.service
            .request(|r| StoreMsg::Write(put(n), r), WAIT)
            .await
            .expect("the store takes the write")
    }

    fn visible(&self, n: usize) -> bool {
        let value = self.reader.get(Table::HubMeta, &key(n)).expect("read");
        value == Some(agentcom_store::encode(&format!("value-{n}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_flushed_and_readable() {
    let s = store(Durability::GroupCommit).await;
    for n in 0..10 {
        let before = s.engine.flushes_done.load(Ordering::SeqCst);
        let ack = s.write(n).await.wait(WAIT).await.expect("answered");
        assert!(ack.is_ok(), "{ack:?}");
        assert!(s.visible(n), "write {n} acknowledged but not readable");
        assert!(
            s.engine.flushes_done.load(Ordering::SeqCst) > before,
            "write {n} acknowledged without a flush after it"
        );
    }
    assert_eq!(s.reader.stats(Table::HubMeta).record_count, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_one_flush_and_none_is_acknowledged_before_it() {
    let s = Arc::new(store(Durability::GroupCommit).await);
    s.engine.hold();
    // The first write's flush starts and is held open.
    let first = s.write(0).await;
    eventually("the first flush starts", || s.engine.started() == 1).await;

    let writers = 50;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 1..=writers {
        let (s, acked) = (s.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let result = s.write(n).await.wait(WAIT).await;
            acked.fetch_add(1, Ordering::SeqCst);
            result
        }));
    }
    // None is acknowledged, or even applied, while the flush before it is held ...
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        acked.load(Ordering::SeqCst),
        0,
        "acknowledged before a flush"
    );
    assert!((1..=writers).all(|n| !s.visible(n)), "applied mid-round");
    assert_eq!(
        s.engine.started(),
        1,
        "a second flush started while one was held"
    );

    s.engine.release();
    assert_acked(first.wait(WAIT).await);
    for task in tasks {
        assert_acked(within("a writer finishes", task).await.unwrap());
    }
    assert!((0..=writers).all(|n| s.visible(n)));
    // One round for the first write; the fifty that waited behind it share the next (a
    // third only if the test's tasks were slower to send than the round to start).
    assert!(s.engine.started() <= 3, "{} flushes", s.engine.started());
    assert!(s.engine.applies.load(Ordering::SeqCst) <= 3);
    assert_eq!(
        s.reader.stats(Table::HubMeta).record_count,
        writers as u64 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_wait_while_one_is_applied_are_applied_together() {
    let s = store(Durability::GroupCommit).await;
    s.engine.hold_apply();
    let first = s.write(0).await;
    eventually("the first apply starts", || {
        s.engine.applies.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut pending = Vec::new();
    for n in 1..=30 {
        pending.push(s.write(n).await);
    }
    s.engine.release_apply();
    assert_acked(first.wait(WAIT).await);
    assert!(futures_results(pending).await.iter().all(Result::is_ok));
    assert!((0..=30).all(|n| s.visible(n)));
    // The held write, then one batch of the thirty that waited behind it (two only if the
    // actor was slower to hand them over than the first round to end).
    let applies = s.engine.applies.load(Ordering::SeqCst);
    assert!(applies <= 3, "{applies} engine batches for 31 writes");
    assert_eq!(s.reader.stats(Table::HubMeta).record_count, 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_waits_for_earlier_writes_to_be_applied_not_flushed() {
    let s = store(Durability::GroupCommit).await;
    s.engine.hold();
    let first = s.write(0).await;
    eventually("the first flush starts", || s.engine.started() == 1).await;
    let mut pending = Vec::new();
    for n in 1..=20 {
        pending.push(s.write(n).await);
    }
    let barrier = s.service.request(StoreMsg::Barrier, WAIT).await.unwrap();
    // `request` returns once the actor has the message, not once it has handed it to its
    // writer: a round that began before the barrier reached the writer would leave it to
    // the round after, whose flush this test holds. The actor hands 21 messages over in
    // microseconds; give it far more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first round ends; the next applies the twenty and answers the barrier, and its
    // flush is held.
    s.engine.let_one_through();
    assert_acked(first.wait(WAIT).await);
    within(
        "the barrier answers while the flush is held",
        barrier.wait(WAIT),
    )
    .await
    .expect("the barrier answers");
    // No polling: the barrier alone guarantees that everything sent before it is visible.
    for n in 0..=20 {
        assert!(
            s.visible(n),
            "write {n} sent before the barrier is not visible"
        );
    }
    eventually("the second round's flush starts", || {
        s.engine.started() == 2
    })
    .await;
    s.engine.release();
    for reply in pending {
        assert_acked(reply.wait(WAIT).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_fails_every_write_that_shared_it_but_they_stay_applied() {
    let s = store(Durability::GroupCommit).await;
    s.engine.hold();
    s.engine.fail_next_flush.store(true, Ordering::SeqCst);
    let mut pending = vec![s.write(0).await];
    eventually("the failing flush starts", || s.engine.started() == 1).await;
    // These wait for the next flush, which succeeds.
    for n in 1..=5 {
        pending.push(s.write(n).await);
    }
    s.engine.release();
    let results: Vec<_> = futures_results(pending).await;
    assert!(
        matches!(results[0], Err(StoreError::Engine(_))),
        "{:?}",
        results[0]
    );
    assert!(results[1..].iter().all(Result::is_ok), "{results:?}");
    // "An error does not always mean not written": the failed write is applied.
    assert!((0..=5).all(|n| s.visible(n)));
}

async fn futures_results(pending: Vec<Reply<WriteResult>>) -> Vec<WriteResult> {
    let mut out = Vec::new();
    for reply in pending {
        out.push(reply.wait(WAIT).await.expect("answered"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_each_write_gives_every_write_its_own_flush() {
    let s = store(Durability::FlushEachWrite).await;
    let mut pending = Vec::new();
    for n in 0..10 {
        pending.push(s.write(n).await);
    }
    assert!(futures_results(pending).await.iter().all(Result::is_ok));
    assert_eq!(s.engine.flushes_done.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_still_answers_every_write_it_took() {
    let s = store(Durability::GroupCommit).await;
    s.engine.hold();
    let mut pending = Vec::new();
    for n in 0..10 {
        pending.push(s.write(n).await);
    }
    eventually("a flush starts", || s.engine.started() >= 1).await;
    // Stop the instance (as a restart by name does) while its acknowledgements are held.
    let actor = s.actor.clone();
    let stopping =
        tokio::spawn(async move { actor.drain_and_wait(Some(Duration::from_secs(10))).await });
    s.engine.release();
    within("the store stops", stopping)
        .await
        .unwrap()
        .expect("drained");
    assert!(futures_results(pending).await.iter().all(Result::is_ok));
    assert!((0..10).all(|n| s.visible(n)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_could_not_be_read_back_is_refused_and_nothing_of_its_batch_applied() {
    let s = store(Durability::GroupCommit).await;
    let mut deep = serde_json::json!([]);
    for _ in 0..120 {
        deep = serde_json::json!([deep]);
    }
    let mut batch = put(1);
    batch.push(WriteOp::Put {
        table: Table::AgentMailbox,
        key: b"bob".to_vec(),
        value: agentcom_store::encode(&deep),
    });
    let answer = s
        .service
        .request(|r| StoreMsg::Write(batch, r), WAIT)
        .await
        .expect("the store takes the write")
        .wait(WAIT)
        .await
        .expect("answered");
    assert!(
        matches!(answer, Err(agentcom_store::StoreError::Refused(_))),
        "{answer:?}"
    );
    assert!(!s.visible(1), "nothing of a refused batch is applied");
    assert!(s.write(2).await.wait(WAIT).await.expect("answered").is_ok());
}
