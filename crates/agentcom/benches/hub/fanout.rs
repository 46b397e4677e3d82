//! Dashboard fan-out: N dashboards on `/ws/dashboard` (admin bearer token) while tasks are
//! submitted at a steady 100 a second; for every task and every dashboard, the time from
//! the submission to the `events` frame carrying its `task_submitted` event. No agent is
//! connected, so a task's only event is its submission. Baseline: the target,
//! p99 ≤ the flush interval + 5 ms; one hub per N.
//!
//! FANOUT_DASHBOARDS (comma-separated counts, default 100,1000), FANOUT_SECS (default 5),
//! FANOUT_RATE (tasks/s, default 100), FANOUT_FLUSH_MS (the hub's
//! `--dashboard-flush-interval`, default 100).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{submit_task, Client};
use crate::support::{start_hub_with, ADMIN};
use crate::{cpu_seconds, quantile, round2, Mode};

/// What every dashboard saw: (task id, when its event arrived).
type Sightings = Arc<Mutex<Vec<Vec<(String, Instant)>>>>;

pub async fn run(mode: Mode) -> Value {
    let counts: Vec<usize> = std::env::var("FANOUT_DASHBOARDS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("a count"))
                .collect()
        })
        .unwrap_or(if mode.full { vec![100, 1000] } else { vec![20] });
    let run_for = mode.secs("FANOUT_SECS", 5.0, 1.0);
    let rate = mode.size("FANOUT_RATE", 100, 100);
    let flush_ms = mode.size("FANOUT_FLUSH_MS", 100, 100);
    let mut runs = Vec::new();
    for n in counts {
        runs.push(one(n, run_for, rate, flush_ms).await);
    }
    let met = runs.iter().all(|r| r["met"] == true);
    json!({
        "scenario": "fanout",
        "rate_per_s": rate,
        "flush_ms": flush_ms,
        "runs": runs,
        "met": met,
    })
}

async fn one(dashboards: usize, run_for: Duration, rate: usize, flush_ms: usize) -> Value {
    let data = tempfile::tempdir().expect("temp dir");
    let flush = format!("{flush_ms}ms");
    let (hub, addr) = start_hub_with(data.path(), &["--dashboard-flush-interval", &flush]).await;

    let sightings: Sightings = Arc::new(Mutex::new(vec![Vec::new(); dashboards]));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let mut watching = Vec::with_capacity(dashboards);
    for chunk in (0..dashboards).collect::<Vec<_>>().chunks(100) {
        let opening: Vec<_> = chunk
            .iter()
            .map(|&d| tokio::spawn(open(addr.clone(), d, sightings.clone(), snapshots.clone())))
            .collect();
        for o in opening {
            watching.push(o.await.expect("dashboard opens"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshots.load(Ordering::Relaxed) < dashboards {
        assert!(Instant::now() < deadline, "dashboards got no snapshot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let tasks = (rate as f64 * run_for.as_secs_f64()) as usize;
    let mut client = Client::connect(&addr).await;
    let cpu = (cpu_seconds(hub.id()), cpu_seconds(None));
    let started = Instant::now();
    let mut submitted = HashMap::with_capacity(tasks);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for _ in 0..tasks {
        tick.tick().await;
        let at = Instant::now();
        submitted.insert(submit_task(&mut client, "fanout").await, at);
    }
    // The last events are at most a flush (plus delivery) away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sightings.lock().unwrap().iter().any(|s| s.len() < tasks) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = (cpu_seconds(hub.id()) - cpu.0, cpu_seconds(None) - cpu.1);
    let cpu_window = started.elapsed().as_secs_f64();
    for w in watching {
        w.abort();
    }

    let seen = sightings.lock().unwrap();
    let mut ms = Vec::with_capacity(tasks * dashboards);
    let mut missed = 0;
    for dashboard in seen.iter() {
        let firsts: HashMap<&str, Instant> = dashboard
            .iter()
            .rev()
            .map(|(id, at)| (id.as_str(), *at))
            .collect();
        for (id, at) in &submitted {
            match firsts.get(id.as_str()) {
                Some(seen_at) => ms.push(seen_at.duration_since(*at).as_secs_f64() * 1000.0),
                None => missed += 1,
            }
        }
    }
    let target = flush_ms as f64 + 5.0;
    let p50 = quantile(&mut ms, 0.5);
    let p99 = quantile(&mut ms, 0.99);
    let max = quantile(&mut ms, 1.0);
    json!({
        "dashboards": dashboards,
        "tasks": tasks,
        "events_missed": missed,
        "cpu_seconds": {"hub": round2(cpu.0), "harness": round2(cpu.1), "over_seconds": round2(cpu_window)},
        "p50_ms": round2(p50),
        "p99_ms": round2(p99),
        "max_ms": round2(max),
        "baseline": {"what": "issue 11 target: flush interval + 5 ms", "p99_ms": target},
        "ratio": round2(p99 / target),
        "met": p99 <= target && missed == 0,
    })
}

/// Open dashboard `d` and spawn its reader, which notes every task event's arrival.
async fn open(
    addr: String,
    d: usize,
    sightings: Sightings,
    snapshots: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let mut req = format!("ws://{addr}/ws/dashboard")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("dashboard upgrades");
    tokio::spawn(async move {
        const NEEDLE: &str = "\"task_id\":\"";
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let at = Instant::now();
            let text = text.as_str();
            // Either key order: a snapshot (the first frame, or a catch-up) is not an event.
            if text.starts_with("{\"type\":\"snapshot\"")
                || text.ends_with("\"type\":\"snapshot\"}")
            {
                snapshots.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let ids: Vec<(String, Instant)> = text
                .match_indices(NEEDLE)
                .filter_map(|(i, _)| {
                    let rest = &text[i + NEEDLE.len()..];
                    rest.find('"').map(|end| (rest[..end].to_string(), at))
                })
                .collect();
            if !ids.is_empty() {
                sightings.lock().unwrap()[d].extend(ids);
            }
        }
    })
}
