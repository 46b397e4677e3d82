//! Compaction benchmark (issue 12): an online compaction of a store holding at least 1 GiB
//! of live data plus the garbage of rewrites, while writers keep writing: its duration,
//! the bytes on disk before and after, the longest write pause (the switch), and the
//! longest write acknowledgement during the compaction against the longest before it.
//!
//! `cargo bench -p agentcom-hub --bench compaction` (COMPACTION_BENCH_MIB sets the live
//! size; default 1024). Without `--bench` (e.g. under `cargo test --benches`) it runs a
//! 16 MiB smoke.

mod support;

use std::sync::Arc;
use std::time::Instant;

use agentcom_hub::compaction::run;
use agentcom_store::live_bytes;
use agentcom_store::{Engine, SledEngine};
use support::{delete_most, dir_size, fill, store_actor, Writers};

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
    let live = live_bytes(engine.as_ref());
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
        let engine_dyn: Arc<dyn Engine> = engine.clone();
        let (store, service) = store_actor(engine_dyn.clone()).await;
        // Writers: acknowledged writes all along; the longest ack before and during.
        let writers = Writers::start(&store);
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        writers.measure();
        let result = run(engine_dyn.clone(), service).await.expect("compaction");
        let (before, worst_during, acked, worst_at) = writers.stop().await;
        let live_after = live_bytes(engine_dyn.as_ref());
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
            "| longest write ack during the compaction | {:.1} ms (sent {:.2} s in) |",
            worst_during.as_secs_f64() * 1000.0,
            worst_at.as_secs_f64()
        );
        println!(
            "| switch / removal of the old database | {:.2} s in / {} ms |",
            result.switched_after_ms as f64 / 1000.0,
            result.removal_ms
        );
    });
}
