//! Backup benchmark: the duration of a live backup of a store holding at least 1 GiB of
//! live data, against `cp -r` of the same data directory (measured in the same run), and
//! the longest write stall while the backup runs (against the longest ack before it).
//!
//! `cargo bench -p agentcom-hub --bench backup` (BACKUP_BENCH_MIB sets the size; default
//! 1024). Without `--bench` (e.g. under `cargo test --benches`) it runs a 16 MiB smoke.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_hub::backup::run;
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
    let mib: u64 = std::env::var("BACKUP_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1024 } else { 16 });
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let engine = Arc::new(SledEngine::open(&data).expect("open"));
    let t = Instant::now();
    fill(&engine, mib);
    let live: u64 = Table::ALL
        .iter()
        .map(|t| engine.stats(*t).logical_bytes)
        .sum();
    println!(
        "filled {} MiB of live data in {:.1} s; store on disk: {} MiB",
        live >> 20,
        t.elapsed().as_secs_f64(),
        dir_size(&data) >> 20
    );

    // Baseline: cp -r of the same directory (the store is idle and flushed; cp -r of a
    // live sled directory would not be a consistent copy).
    let t = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&data)
        .arg(work.path().join("copy"))
        .status()
        .expect("cp");
    assert!(status.success());
    let cp = t.elapsed();
    std::fs::remove_dir_all(work.path().join("copy")).ok();

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

        // Writers: acknowledged writes all along; record the longest ack before and
        // during the backup.
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
        let backups = work.path().join("backups");
        let t = Instant::now();
        let result = run(engine_dyn, service, backups.clone())
            .await
            .expect("backup");
        let backup = t.elapsed();
        during.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let (before, worst_during, acked) = *worst.lock().unwrap();
        assert!(result.created.verified, "the backup verifies");
        println!();
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| live data | {} MiB |", live >> 20);
        println!(
            "| `cp -r` of the data directory (idle store) | {:.2} s |",
            cp.as_secs_f64()
        );
        println!(
            "| live backup (scan, capture, write, fsync, verify) | {:.2} s |",
            backup.as_secs_f64()
        );
        println!(
            "| backup / cp -r | {:.2}x |",
            backup.as_secs_f64() / cp.as_secs_f64()
        );
        println!("| backup size | {} MiB |", dir_size(&backups) >> 20);
        println!("| writes acknowledged during the backup | {acked} |");
        println!(
            "| longest write ack before the backup | {:.1} ms |",
            before.as_secs_f64() * 1000.0
        );
        println!(
            "| longest write ack during the backup | {:.1} ms |",
            worst_during.as_secs_f64() * 1000.0
        );
    });
}
