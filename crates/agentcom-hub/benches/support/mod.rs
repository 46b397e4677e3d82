//! What the store benchmarks share: filling a store, measuring a directory, and a store
//! actor with writers that record the longest acknowledgement before and during the
//! operation measured. (Each benchmark uses a part of it.)
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_hub::service::{Service, Slot};
use agentcom_hub::store::{Durability, StoreActor, StoreArgs, StoreMsg};
use agentcom_store::{Engine, SledEngine, Table, WriteOp};
use ractor::Actor;
use tokio::task::JoinHandle;

pub const VALUE: usize = 1024;

fn table_of(i: u64) -> Table {
    if i.is_multiple_of(2) {
        Table::MessageHistory
    } else {
        Table::AgentMailbox
    }
}

/// Write `mib` MiB of records of [`VALUE`] bytes (encoded records: backups read every
/// record back), keys `0..`, in batches of 1,000.
pub fn fill(engine: &SledEngine, mib: u64) {
    let records = mib * 1024 * 1024 / VALUE as u64;
    let value = agentcom_store::encode(&"Z".repeat(VALUE - 7));
    apply_all(
        engine,
        (0..records).map(|i| WriteOp::Put {
            table: table_of(i),
            key: i.to_be_bytes().to_vec(),
            value: value.clone(),
        }),
    );
}

/// Delete three records in four of what [`fill`] wrote for `mib`.
pub fn delete_most(engine: &SledEngine, mib: u64) {
    let records = mib * 1024 * 1024 / VALUE as u64;
    apply_all(
        engine,
        (0..records)
            .filter(|i| !i.is_multiple_of(4))
            .map(|i| WriteOp::Delete {
                table: table_of(i),
                key: i.to_be_bytes().to_vec(),
            }),
    );
}

fn apply_all(engine: &SledEngine, ops: impl Iterator<Item = WriteOp>) {
    let mut batch = Vec::with_capacity(1000);
    for op in ops {
        batch.push(op);
        if batch.len() == 1000 {
            engine.apply(&std::mem::take(&mut batch)).expect("write");
        }
    }
    engine.apply(&batch).expect("write");
    engine.flush().expect("flush");
}

pub fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    if e.path().is_dir() {
                        dir_size(&e.path())
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A store actor over `engine` (group commit), as the hub runs it.
pub async fn store_actor(
    engine: Arc<dyn Engine>,
) -> (ractor::ActorRef<StoreMsg>, Service<StoreMsg>) {
    let slot = Arc::new(Slot::<StoreMsg>::new());
    let (store, _) = Actor::spawn(
        None,
        StoreActor,
        StoreArgs::new(engine, Durability::GroupCommit),
    )
    .await
    .expect("spawn");
    slot.fill(store.clone());
    (store, slot.service("store"))
}

/// Eight writers making acknowledged writes all along.
pub struct Writers {
    stop: Arc<AtomicBool>,
    during: Arc<AtomicBool>,
    /// (longest ack before, longest ack during, acks during, when the longest during began
    /// after `measure`)
    worst: Arc<Mutex<(Duration, Duration, u64, Duration)>>,
    measured: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    pub fn start(store: &ractor::ActorRef<StoreMsg>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let during = Arc::new(AtomicBool::new(false));
        let worst: Arc<Mutex<(Duration, Duration, u64, Duration)>> = Arc::default();
        let measured: Arc<Mutex<Option<Instant>>> = Arc::default();
        let tasks = (0..8u64)
            .map(|w| {
                let (store, stop, during, worst, measured) = (
                    store.clone(),
                    stop.clone(),
                    during.clone(),
                    worst.clone(),
                    measured.clone(),
                );
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let op = WriteOp::Put {
                            table: Table::ThreadMessages,
                            key: format!("w{w}-{i}").into_bytes(),
                            value: agentcom_store::encode(&"x".repeat(193)),
                        };
                        let t = Instant::now();
                        let r = store
                            .call(
                                |p| StoreMsg::Write(vec![op], p),
                                Some(Duration::from_secs(60)),
                            )
                            .await;
                        assert!(
                            matches!(r, Ok(ractor::rpc::CallResult::Success(Ok(())))),
                            "write failed"
                        );
                        let took = t.elapsed();
                        let mut g = worst.lock().unwrap();
                        if during.load(Ordering::Relaxed) {
                            if took > g.1 {
                                g.1 = took;
                                let from = measured.lock().unwrap().unwrap_or(t);
                                g.3 = t.saturating_duration_since(from);
                            }
                            g.2 += 1;
                        } else {
                            g.0 = g.0.max(took);
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            during,
            worst,
            measured,
            tasks,
        }
    }

    /// From now on, acknowledgements count as "during".
    pub fn measure(&self) {
        *self.measured.lock().unwrap() = Some(Instant::now());
        self.during.store(true, Ordering::Relaxed);
    }

    /// Stop; the longest ack before, the longest during, the acks during, and when the
    /// longest during was sent (after `measure`).
    pub async fn stop(self) -> (Duration, Duration, u64, Duration) {
        self.during.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let worst = *self.worst.lock().unwrap();
        worst
    }
}
