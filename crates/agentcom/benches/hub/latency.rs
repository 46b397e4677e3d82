//! Latency at a fixed rate: tasks submitted at a steady 100 a second (an open loop: each
//! on its tick, whatever the answers before it), completed by websocket agents; submit →
//! completion acknowledged to the agent, p50 and p99. Baseline: the target,
//! p99 ≤ 5 ms.
//!
//! LATENCY_RATE (tasks/s, default 100), LATENCY_SECS (default 10), LATENCY_AGENTS (10).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use crate::agent::Crew;
use crate::client::{mint_tokens, submit_task, Client};
use crate::support::start_hub;
use crate::{quantile, round2, Mode};

const TARGET_P99_MS: f64 = 5.0;

/// Connections the submissions are spread over, so a slow answer does not hold the next
/// tick back.
const SUBMITTERS: usize = 4;

pub async fn run(mode: Mode) -> Value {
    let rate = mode.size("LATENCY_RATE", 100, 100);
    let run_for = mode.secs("LATENCY_SECS", 10.0, 2.0);
    let agents = mode.size("LATENCY_AGENTS", 10, 4);
    let tasks = (rate as f64 * run_for.as_secs_f64()) as usize;
    let data = tempfile::tempdir().expect("temp dir");
    let (_hub, addr) = start_hub(data.path()).await;
    let crew = Crew::start(&addr, &mint_tokens(&addr, "lat", agents).await).await;

    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut feeding = Vec::new();
    let period = Duration::from_secs_f64(SUBMITTERS as f64 / rate as f64);
    let start = tokio::time::Instant::now();
    for s in 0..SUBMITTERS {
        let (addr, submitted) = (addr.clone(), submitted.clone());
        let first = start + period.mul_f64(s as f64 / SUBMITTERS as f64);
        feeding.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for _ in (s..tasks).step_by(SUBMITTERS) {
                tick.tick().await;
                let at = Instant::now();
                let id = submit_task(&mut client, "latency").await;
                submitted.lock().unwrap().insert(id, at);
            }
        }));
    }
    for f in feeding {
        f.await.expect("submitter");
    }
    crew.completions
        .wait_for(tasks, Duration::from_secs(120))
        .await;
    let completions = crew.completions.clone();
    crew.stop().await;

    let submitted = submitted.lock().unwrap();
    let mut ms: Vec<f64> = completions
        .take_log()
        .iter()
        .filter_map(|c| {
            let at = submitted.get(&c.task_id)?;
            Some(c.at.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(ms.len(), tasks, "every completion matches a submission");
    let p50 = quantile(&mut ms, 0.5);
    let p99 = quantile(&mut ms, 0.99);
    let max = quantile(&mut ms, 1.0);
    json!({
        "scenario": "latency",
        "rate_per_s": rate,
        "tasks": tasks,
        "agents": agents,
        "p50_ms": round2(p50),
        "p99_ms": round2(p99),
        "max_ms": round2(max),
        "baseline": {"what": "issue 11 target", "p99_ms": TARGET_P99_MS},
        "ratio": round2(p99 / TARGET_P99_MS),
        "met": p99 <= TARGET_P99_MS,
    })
}
