//! Backup benchmark: the duration of a live backup of a store holding at least 1 GiB of
//! live data, against `cp -r` of the same data directory (measured in the same run), and
//! the longest write stall while the backup runs (against the longest ack before it).
//!
//! `cargo bench -p agentcom-hub --bench backup` (BACKUP_BENCH_MIB sets the size; default
//! 1024). Without `--bench` (e.g. under `cargo test --benches`) it runs a 16 MiB smoke.

mod support;

use std::sync::Arc;
use std::time::Instant;

use agentcom_hub::backup::run;
use agentcom_store::live_bytes;
use agentcom_store::{Engine, SledEngine};
use support::{dir_size, fill, store_actor, Writers};

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
    let live = live_bytes(engine.as_ref());
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
        let engine_dyn: Arc<dyn Engine> = engine.clone();
        let (store, service) = store_actor(engine_dyn.clone()).await;
        // Writers: acknowledged writes all along; the longest ack before and during.
        let writers = Writers::start(&store);
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        writers.measure();
        let backups = work.path().join("backups");
        let t = Instant::now();
        let result = run(engine_dyn, service, backups.clone())
            .await
            .expect("backup");
        let backup = t.elapsed();
        let (before, worst_during, acked, _) = writers.stop().await;
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
