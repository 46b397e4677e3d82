//! Acknowledged writes per second through the store actor: group commit against flushing
//! every write on its own, measured in the same run on fresh sled stores.
//!
//! Run with `cargo bench -p agentcom-hub --bench ack_writes`. Each of `W` writer tasks
//! sends one small put at a time and waits for its acknowledgement (the write is durable)
//! before sending the next; only successful acknowledgements count. Both modes run with one
//! writer and with `W` writers, so the table shows that group commit pays off only when
//! writes overlap.
//!
//! Environment: `ACK_BENCH_SECS` (seconds per run, default 5), `ACK_BENCH_WRITERS`
//! (concurrent writers, default 64). Without `--bench` (as under `cargo test --benches`)
//! every run is a short smoke run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_hub::store::{Durability, StoreActor, StoreArgs, StoreMsg};
use agentcom_store::{Engine, SledEngine, Table, WriteOp};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};

/// Size of every written value, about that of a small config or mailbox record.
const VALUE_BYTES: usize = 100;
/// A write not acknowledged within this time counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

struct Settings {
    run_for: Duration,
    writers: usize,
}

impl Settings {
    fn from_env() -> Settings {
        if !std::env::args().any(|a| a == "--bench") {
            return Settings {
                run_for: Duration::from_millis(200),
                writers: 4,
            };
        }
        let secs: f64 = env_or("ACK_BENCH_SECS", 5.0);
        let writers: usize = env_or("ACK_BENCH_WRITERS", 64);
        assert!(
            secs.is_finite() && secs > 0.0,
            "ACK_BENCH_SECS must be a positive number of seconds"
        );
        assert!(writers > 0, "ACK_BENCH_WRITERS must be at least 1");
        Settings {
            run_for: Duration::from_secs_f64(secs),
            writers,
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} is not a valid number")),
        Err(_) => default,
    }
}

/// What one run (one mode, one concurrency) measured.
struct RunReport {
    durability: Durability,
    writers: usize,
    acked: u64,
    failed: u64,
    elapsed: Duration,
    /// Latency of every acknowledged write, sorted.
    latencies: Vec<Duration>,
}

impl RunReport {
    fn writes_per_sec(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies.len() as f64 * p).ceil() as usize).max(1);
        self.latencies[rank.min(self.latencies.len()) - 1].as_secs_f64() * 1e3
    }
}

fn main() {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut concurrencies = vec![1];
    if settings.writers > 1 {
        concurrencies.push(settings.writers);
    }
    println!(
        "ack_writes: {:.1} s per run, {VALUE_BYTES}-byte values, {} cores",
        settings.run_for.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut reports = Vec::new();
    for &writers in &concurrencies {
        for durability in [Durability::GroupCommit, Durability::FlushEachWrite] {
            reports.push(runtime.block_on(run(durability, writers, settings.run_for)));
        }
    }
    print_table(&reports);
}

/// One run on a fresh store: `writers` tasks write and await acknowledgements until the
/// time is up; writes in flight at the deadline still count (elapsed time includes them).
async fn run(durability: Durability, writers: usize, run_for: Duration) -> RunReport {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).expect("open sled"));
    let args = StoreArgs::new(engine.clone(), durability);
    let (store, handle) = Actor::spawn(None, StoreActor, args)
        .await
        .expect("spawn store actor");
    // The first flush creates the files; keep it out of the measurement.
    assert!(
        write(&store, u32::MAX, 0).await.is_some(),
        "warm-up write was not acknowledged"
    );

    let start = Instant::now();
    let deadline = start + run_for;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0u64);
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    match write(&store, writer as u32, seq).await {
                        Some(latency) => latencies.push(latency),
                        None => failed += 1,
                    }
                    seq += 1;
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await.expect("writer task panicked");
        latencies.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed();

    store.stop(None);
    handle.await.expect("store actor stopped cleanly");
    // The committer task lets go of the engine once the actor is gone; close the store
    // before its directory is removed.
    while Arc::strong_count(&engine) > 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(engine);
    latencies.sort_unstable();
    RunReport {
        durability,
        writers,
        acked: latencies.len() as u64,
        failed,
        elapsed,
        latencies,
    }
}

/// Write one distinct record and wait for its acknowledgement; `None` if it failed.
async fn write(store: &ActorRef<StoreMsg>, writer: u32, seq: u64) -> Option<Duration> {
    let key = format!("bench/{writer:08x}/{seq:016x}").into_bytes();
    // An encoded record of VALUE_BYTES bytes: 5 bytes of header, a quoted string.
    let text: String = (0..VALUE_BYTES - 7)
        .map(|i| char::from(b'a' + ((seq as usize + i) % 26) as u8))
        .collect();
    let value = agentcom_store::encode(&text);
    let op = WriteOp::Put {
        table: Table::AgentcomConfig,
        key,
        value,
    };
    let sent = Instant::now();
    match store
        .call(|port| StoreMsg::Write(vec![op], port), Some(ACK_TIMEOUT))
        .await
    {
        Ok(CallResult::Success(Ok(()))) => Some(sent.elapsed()),
        _ => None,
    }
}

fn mode_name(durability: Durability) -> &'static str {
    match durability {
        Durability::GroupCommit => "group commit",
        Durability::FlushEachWrite => "flush each write",
    }
}

/// A Markdown table, ready to paste into docs/BENCHMARKS.md. The ratio compares each row
/// with flush-each-write at the same concurrency.
fn print_table(reports: &[RunReport]) {
    println!();
    println!("| mode | writers | acked writes | writes/s | p50 ack (ms) | p99 ack (ms) | vs flush each |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let baseline = reports
            .iter()
            .find(|b| b.writers == r.writers && b.durability == Durability::FlushEachWrite)
            .map(RunReport::writes_per_sec);
        let ratio = match baseline {
            Some(b) if b > 0.0 => format!("{:.2}x", r.writes_per_sec() / b),
            _ => "n/a".to_string(),
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            mode_name(r.durability),
            r.writers,
            r.acked,
            r.writes_per_sec(),
            r.percentile_ms(0.50),
            r.percentile_ms(0.99),
            ratio,
        );
    }
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    if failed > 0 {
        println!("\n{failed} writes failed or timed out and were not counted.");
    }
}
