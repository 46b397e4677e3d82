//! Compaction benchmark (issue 12): an online compaction of a store holding at least 1 GiB
//! of live data plus the garbage of rewrites, while writers keep writing: its duration,
//! the bytes on disk before and after, the longest write pause (the switch), and the
//! longest write acknowledgement during the compaction against the longest before it.
//!
//! `cargo bench -p agentcom-hub --bench compaction` (COMPACTION_BENCH_MIB sets the live
//! size; default 1024). Without `--bench` (e.g. under `cargo test --benches`) it runs a
//! 16 MiB smoke.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_hub::compaction::run;
use agentcom_hub::service::Slot;
use agentcom_hub::store::{Durability, StoreActor, StoreArgs, StoreMsg};
use agentcom_store::{Engine, SledEngine, Table, WriteOp};
use ractor::Actor;

const VALUE: usize = 1024;

fn fill(engine: &SledEngine, mib: u64) {
    let records = mib * 1024 * 1024 / VALUE as u64;
    // An encoded record of VALUE bytes (5 bytes of header, a quoted string): backups
    // read every record back.
    let value = agentcom_store::encode(&"Z".repeat(VALUE - 7));
    let mut batch = Vec::with_capacity(1000);
    for i in 0..records {
        let table = if i % 2 == 0 {
            Table::MessageHistory
        } else {
            Table::AgentMailbox
        };
        batch.push(WriteOp::Put {
            table,
            key: i.to_be_bytes().to_vec(),
            value: value.clone(),
        });
        if batch.len() == 1000 {
            engine.apply(&std::mem::take(&mut batch)).expect("fill");
        }
    }
    engine.apply(&batch).expect("fill");
    engine.flush().expect("flush");
}

/// Delete three records in four of what [`fill`] wrote for `mib`.
fn delete_most(engine: &SledEngine, mib: u64) {
    let records = mib * 1024 * 1024 / VALUE as u64;
    let mut batch = Vec::with_capacity(1000);
    for i in (0..records).filter(|i| i % 4 != 0) {
        let table = if i % 2 == 0 {
            Table::MessageHistory
        } else {
            Table::AgentMailbox
        };
        batch.push(WriteOp::Delete {
            table,
            key: i.to_be_bytes().to_vec(),
        });
        if batch.len() == 1000 {
            engine.apply(&std::mem::take(&mut batch)).expect("delete");
        }
    }
    engine.apply(&batch).expect("delete");
    engine.flush().expect("flush");
}

fn dir_size(path: &std::path::Path) -> u64 {
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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mib: u64 = std::env::var("COMPACTION_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1024 } else { 16 });
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let engine = Arc::new(SledEngine::open(&data).expect("open"));
    let t = Instant::now();
    // Churn: four times the live data written, then three records in four deleted (as
    // completed tasks, read mailboxes and trimmed histories go).
    fill(&engine, mib * 4);
    delete_most(&engine, mib * 4);
    let live: u64 = Table::ALL
        .iter()
        .map(|t| engine.stats(*t).logical_bytes)
        .sum();
    println!(
        "filled {} MiB of live data (four times as much written, three quarters deleted) in {:.1} s; store on disk: {} MiB",
        live >> 20,
        t.elapsed().as_secs_f64(),
        dir_size(&data) >> 20
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let slot = Arc::new(Slot::<StoreMsg>::new());
        let engine_dyn: Arc<dyn Engine> = engine.clone();
        let (store, _) = Actor::spawn(
            None,
            StoreActor,
            StoreArgs {
                engine: engine_dyn.clone(),
                durability: Durability::GroupCommit,
            },
        )
        .await
        .expect("spawn");
        slot.fill(store.clone());
        let service = slot.service("store");

        // Writers: acknowledged writes all along; the longest ack before and during.
        let stop = Arc::new(AtomicBool::new(false));
        let during = Arc::new(AtomicBool::new(false));
        let worst: Arc<Mutex<(Duration, Duration, u64)>> = Arc::default();
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let (store, stop, during, worst) =
                (store.clone(), stop.clone(), during.clone(), worst.clone());
            writers.push(tokio::spawn(async move {
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
                        g.1 = g.1.max(took);
                        g.2 += 1;
                    } else {
                        g.0 = g.0.max(took);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        during.store(true, Ordering::Relaxed);
        let result = run(engine_dyn.clone(), service).await.expect("compaction");
        during.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let (before, worst_during, acked) = *worst.lock().unwrap();
        let live_after: u64 = Table::ALL
            .iter()
            .map(|t| engine_dyn.stats(*t).logical_bytes)
            .sum();
        assert!(live_after >= live, "live data kept");
        println!();
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| live data | {} MiB |", live >> 20);
        println!(
            "| compaction | {:.2} s |",
            result.duration_ms as f64 / 1000.0
        );
        println!(
            "| store on disk before / after | {} MiB / {} MiB |",
            result.bytes_before >> 20,
            result.bytes_after >> 20
        );
        println!("| reclaimed | {} MiB |", result.reclaimed_bytes >> 20);
        println!(
            "| records copied / writes replayed | {} / {} |",
            result.records_copied, result.writes_replayed
        );
        println!(
            "| longest write pause (the switch) | {:.1} ms |",
            result.longest_write_pause_ms
        );
        println!("| writes acknowledged during the compaction | {acked} |");
        println!(
            "| longest write ack before the compaction | {:.1} ms |",
            before.as_secs_f64() * 1000.0
        );
        println!(
            "| longest write ack during the compaction | {:.1} ms |",
            worst_during.as_secs_f64() * 1000.0
        );
    });
}
