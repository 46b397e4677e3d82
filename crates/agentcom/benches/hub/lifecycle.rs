//! Lifecycle: websocket agents accept and complete every task that HTTP submitters keep
//! feeding; tasks per second from the first submission to the last completion, and
//! exactly once (every submitted task completed once, none lost, none twice).
//! Baseline: the issue's target, 5,000 tasks/s. Beside it, measured on the same hub right
//! after: acknowledged config writes per second over as many connections as there are
//! submitters (one durable write per request, the cheapest acknowledged write the API
//! has), against the lifecycle's durable transitions per second (4 a task: queued,
//! assigned, accepted, completed).
//!
//! LIFECYCLE_TASKS (default 10,000), LIFECYCLE_AGENTS (50), LIFECYCLE_SUBMITTERS (8),
//! LIFECYCLE_BASELINE_SECS (3).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::agent::Crew;
use crate::client::{closed_loop, mint_tokens, submit_task, Client};
use crate::support::start_hub;
use crate::{cpu_seconds, round2, Mode};

const TARGET_TASKS_PER_S: f64 = 5_000.0;
/// Durable transitions of a completed task, each acknowledged only once it is durable.
const TRANSITIONS_PER_TASK: f64 = 4.0;

pub async fn run(mode: Mode) -> Value {
    let tasks = mode.size("LIFECYCLE_TASKS", 10_000, 300);
    let agents = mode.size("LIFECYCLE_AGENTS", 50, 8);
    let submitters = mode.size("LIFECYCLE_SUBMITTERS", 8, 4);
    let data = tempfile::tempdir().expect("temp dir");
    let (hub, addr) = start_hub(data.path()).await;
    let hub_pid = hub.id();
    let crew = Crew::start(&addr, &mint_tokens(&addr, "life", agents).await).await;

    let cpu = (cpu_seconds(hub_pid), cpu_seconds(None));
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut feeding = Vec::new();
    for _ in 0..submitters {
        let (addr, next) = (addr.clone(), next.clone());
        feeding.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            let mut ids = Vec::new();
            let mut round_trips = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                let sent = Instant::now();
                ids.push(submit_task(&mut client, "lifecycle").await);
                round_trips.push(sent.elapsed());
            }
            (ids, round_trips)
        }));
    }
    let mut submitted = Vec::with_capacity(tasks);
    let mut round_trips = Vec::with_capacity(tasks);
    for f in feeding {
        let (ids, times) = f.await.expect("submitter");
        submitted.extend(ids);
        round_trips.extend(times);
    }
    round_trips.sort();
    let submit_ms = |q: f64| {
        let i = ((round_trips.len() as f64 * q) as usize).min(round_trips.len() - 1);
        round2(round_trips[i].as_secs_f64() * 1000.0)
    };
    let submitted_in = start.elapsed();
    crew.completions
        .wait_for(tasks, Duration::from_secs(600))
        .await;
    let elapsed = start.elapsed();
    let cpu = (cpu_seconds(hub_pid) - cpu.0, cpu_seconds(None) - cpu.1);
    // Anything assigned or completed after the last expected completion is a duplicate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let completions = crew.completions.clone();
    crew.stop().await;

    // The same-run baseline: acknowledged config writes, on the same hub, its agents gone.
    let writes = closed_loop(
        &addr,
        submitters,
        mode.secs("LIFECYCLE_BASELINE_SECS", 3.0, 0.5),
        "PUT",
        "/api/config/default-repo",
        Some(bytes::Bytes::from_static(
            br#"{"url":"https://git.example/lifecycle-baseline"}"#,
        )),
    )
    .await;
    drop(hub);

    let log = completions.take_log();
    let mut times: HashMap<&str, usize> = HashMap::new();
    let mut per_agent = vec![0usize; agents];
    for c in &log {
        *times.entry(c.task_id.as_str()).or_default() += 1;
        per_agent[c.agent] += 1;
    }
    let lost = submitted
        .iter()
        .filter(|id| !times.contains_key(id.as_str()))
        .count();
    let duplicated: usize = times.values().map(|n| n - 1).sum();
    let unknown = times.len() + lost - submitted.len();
    let tasks_per_s = tasks as f64 / elapsed.as_secs_f64();
    let transitions_per_s = tasks_per_s * TRANSITIONS_PER_TASK;
    json!({
        "scenario": "lifecycle",
        "tasks": tasks,
        "agents": agents,
        "submitters": submitters,
        "seconds": round2(elapsed.as_secs_f64()),
        "submissions_seconds": round2(submitted_in.as_secs_f64()),
        // Each submitter waits for its answer before the next: the submit round trip bounds
        // the run when the agents keep up.
        "submit_ms": {"p50": submit_ms(0.5), "p99": submit_ms(0.99)},
        "cpu_seconds": {"hub": round2(cpu.0), "harness": round2(cpu.1)},
        "tasks_per_s": tasks_per_s.round(),
        "baseline": {"what": "issue 11 target", "tasks_per_s": TARGET_TASKS_PER_S},
        "ratio": round2(tasks_per_s / TARGET_TASKS_PER_S),
        "config_writes": {
            "what": "acknowledged PUT /api/config/default-repo per second, same hub, one connection per submitter",
            "per_s": writes.per_s.round(),
            "failed": writes.failed,
            "transitions_per_s": transitions_per_s.round(),
            "ratio": round2(transitions_per_s / writes.per_s.max(1.0)),
        },
        "lost": lost,
        "duplicated": duplicated,
        "completed_unknown_tasks": unknown,
        "assignments": completions.assigned.load(Ordering::Relaxed),
        "per_agent_min": per_agent.iter().min(),
        "per_agent_max": per_agent.iter().max(),
        "met": tasks_per_s >= TARGET_TASKS_PER_S && lost == 0 && duplicated == 0 && unknown == 0,
    })
}
