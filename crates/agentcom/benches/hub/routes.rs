//! HTTP routes: requests per second over 32 keep-alive connections (each sends its next
//! request once the previous answer is in) for `GET /health`, `GET /api/dashboard/state`
//! (after 100 agents have completed 10,000 tasks; the agents stay connected) and
//! `POST /api/tasks` (the agents gone, so tasks only queue). Baseline, measured in turn
//! with the hub with the same load generator: the bare hyper server of `bare.rs`
//! answering that route's status and body, byte for byte as the hub answered it once.
//! Each route runs in rounds, bare server then hub, and the figures are the medians of the
//! rounds: the machine's other load comes and goes within seconds, and one burst of it
//! during one side's only window moved the ratio by 20–40 %.
//!
//! ROUTES_CONNS (default 32), ROUTES_SECS (seconds per round and server, default 2),
//! ROUTES_ROUNDS (3), ROUTES_AGENTS (100), ROUTES_TASKS (10,000).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::agent::Crew;
use crate::bare::{Answers, BareServer};
use crate::client::{closed_loop, mint_tokens, submit_task, Client};
use crate::support::start_hub;
use crate::{cpu_seconds, quantile, round2, Mode};

/// A route, its body, and its target: a ratio to the bare server or req/s.
struct Route {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    target: Target,
}

enum Target {
    OfBare(f64),
    PerSec(f64),
}

const HEALTH: Route = Route {
    method: "GET",
    path: "/health",
    body: None,
    target: Target::OfBare(0.95),
};
const DASHBOARD_STATE: Route = Route {
    method: "GET",
    path: "/api/dashboard/state",
    body: None,
    target: Target::PerSec(25_000.0),
};
const POST_TASKS: Route = Route {
    method: "POST",
    path: "/api/tasks",
    body: Some(r#"{"description":"route","priority":"normal"}"#),
    target: Target::PerSec(15_000.0),
};

pub async fn run(mode: Mode) -> Value {
    let conns = mode.size("ROUTES_CONNS", 32, 8);
    let run_for = mode.secs("ROUTES_SECS", 2.0, 0.5);
    let rounds = mode.size("ROUTES_ROUNDS", 3, 1);
    let agents = mode.size("ROUTES_AGENTS", 100, 10);
    let tasks = mode.size("ROUTES_TASKS", 10_000, 200);
    let data = tempfile::tempdir().expect("temp dir");
    let (hub, addr) = start_hub(data.path()).await;
    let hub_pid = hub.id();

    // The store the issue names: 100 agents that have completed 10,000 tasks.
    let crew = Crew::start(&addr, &mint_tokens(&addr, "route", agents).await).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mut feeding = Vec::new();
    for _ in 0..8 {
        let (addr, next) = (addr.clone(), next.clone());
        feeding.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                submit_task(&mut client, "routes").await;
            }
        }));
    }
    for f in feeding {
        f.await.expect("submitter");
    }
    crew.completions
        .wait_for(tasks, Duration::from_secs(600))
        .await;

    let mut results = Vec::new();
    let mut crew = Some(crew);
    for route in [HEALTH, DASHBOARD_STATE, POST_TASKS] {
        if route.method == "POST" {
            if let Some(crew) = crew.take() {
                crew.stop().await;
            }
        }
        results.push(measure(&addr, hub_pid, &route, conns, run_for, rounds).await);
    }
    let met = results.iter().all(|r| r["met"] == true);
    json!({
        "scenario": "routes",
        "connections": conns,
        "seconds_per_run": run_for.as_secs_f64(),
        "rounds": rounds,
        "agents": agents,
        "tasks_completed_before": tasks,
        "routes": results,
        "met": met,
    })
}

/// One route in `rounds` rounds, each against the bare server, then against the hub.
async fn measure(
    addr: &str,
    hub_pid: Option<u32>,
    route: &Route,
    conns: usize,
    run_for: Duration,
    rounds: usize,
) -> Value {
    let body = route.body.map(|b| Bytes::from_static(b.as_bytes()));
    let mut sample = Client::connect(addr).await;
    let (status, answer) = sample
        .request(route.method, route.path, body.clone())
        .await
        .expect("sample answer");
    assert!(
        (200..300).contains(&status),
        "{} {}: {status}",
        route.method,
        route.path
    );
    let answer_bytes = answer.len();
    let answers = Answers::from([(route.path.to_string(), (status, answer))]);
    let (mut bare_rates, mut hub_rates) = (Vec::new(), Vec::new());
    let (mut answered, mut failed, mut cpu) = (0, 0, (0.0, 0.0));
    for _ in 0..rounds {
        let bare = BareServer::start(answers.clone());
        let baseline = closed_loop(
            &bare.addr,
            conns,
            run_for,
            route.method,
            route.path,
            body.clone(),
        )
        .await;
        drop(bare);
        bare_rates.push(baseline.per_s);
        let before = (cpu_seconds(hub_pid), cpu_seconds(None));
        let hub = closed_loop(addr, conns, run_for, route.method, route.path, body.clone()).await;
        cpu.0 += cpu_seconds(hub_pid) - before.0;
        cpu.1 += cpu_seconds(None) - before.1;
        hub_rates.push(hub.per_s);
        answered += hub.ok;
        failed += hub.failed;
    }
    let rounded = |rates: &[f64]| rates.iter().map(|r| r.round()).collect::<Vec<_>>();
    let (bare_each, hub_each) = (rounded(&bare_rates), rounded(&hub_rates));
    let baseline = quantile(&mut bare_rates, 0.5);
    let per_s = quantile(&mut hub_rates, 0.5);
    let of_bare = per_s / baseline;
    let (target, met) = match route.target {
        Target::OfBare(r) => (json!({"of_bare": r}), of_bare >= r),
        Target::PerSec(n) => (
            json!({"req_per_s": n, "ratio": round2(per_s / n)}),
            per_s >= n,
        ),
    };
    json!({
        "route": format!("{} {}", route.method, route.path),
        "answer_bytes": answer_bytes,
        "req_per_s": per_s.round(),
        "req_per_s_each_round": hub_each,
        "answered": answered,
        "failed": failed,
        "cpu_seconds": {"hub": round2(cpu.0), "load_generator": round2(cpu.1)},
        "baseline": {
            "what": "bare hyper server, same answer, median of the rounds",
            "req_per_s": baseline.round(),
            "req_per_s_each_round": bare_each,
        },
        "ratio": round2(of_bare),
        "target": target,
        "met": met && failed == 0,
    })
}
