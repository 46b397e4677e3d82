//! Durable task transitions per second through the real hub binary, end to end: HTTP
//! submitters keep the queue fed, websocket agents accept and complete every task they
//! are given, and every transition (queued, assigned, accepted, completed) is durable
//! before it is acknowledged.
//!
//! Baseline, measured in the same run against the same hub: acknowledged config writes per
//! second over HTTP with the same number of concurrent clients (one durable write per
//! request, the cheapest acknowledged write the API has). The task figure is reported as
//! a ratio to that, and to the 1,000 transitions/s design target.
//!
//! `cargo bench -p agentcom --bench task_throughput` (TASK_BENCH_TASKS, default 10,000;
//! TASK_BENCH_AGENTS, default 32; TASK_BENCH_SUBMITTERS, default 16). Without `--bench`
//! it runs a small smoke.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

mod support;

use support::{start_hub, ADMIN};

/// Transitions each completed task goes through, each one durable before its answer.
const TRANSITIONS_PER_TASK: usize = 4;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    addr: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client {
            addr: addr.to_string(),
            sender,
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let res = self.sender.send_request(req).await.expect("response");
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Acknowledged config writes per second with `clients` concurrent keep-alive clients.
async fn baseline(addr: &str, clients: usize, run_for: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for c in 0..clients {
        let (addr, stop, acked) = (addr.to_string(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = format!("https://git.example/{c}/{i}");
                let (status, _) = client
                    .send("PUT", "/api/config/default-repo", json!({ "url": url }))
                    .await;
                assert_eq!(status, 200);
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    acked.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// An agent that accepts and completes every task it is given; counts completions.
async fn agent(
    addr: String,
    id: String,
    token: String,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let stream = TcpStream::connect(&addr).await.expect("agent connects");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("agent upgrades");
    let identify = json!({"type": "identify", "agent_id": id, "token": token, "capabilities": []});
    ws.send(Message::Text(identify.to_string().into()))
        .await
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return,
        };
        let v: Value = serde_json::from_str(&frame).unwrap();
        match v["type"].as_str() {
            Some("task_assign") => {
                let accept = json!({"type": "task_accepted", "task_id": v["task_id"]});
                ws.send(Message::Text(accept.to_string().into()))
                    .await
                    .unwrap();
                let complete = json!({"type": "task_complete", "task_id": v["task_id"], "generation": v["generation"], "result": {"ok": true}});
                ws.send(Message::Text(complete.to_string().into()))
                    .await
                    .unwrap();
            }
            Some("task_ack") if v["status"] == "complete" => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Some("task_ack") if v["status"] == "accepted" => {}
            Some("error") => panic!("agent {id} got an error: {v}"),
            _ => {}
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let tasks = env_or("TASK_BENCH_TASKS", if full { 10_000 } else { 300 });
    let agents = env_or("TASK_BENCH_AGENTS", if full { 32 } else { 8 });
    let submitters = env_or("TASK_BENCH_SUBMITTERS", if full { 16 } else { 4 });
    let baseline_for = Duration::from_secs(if full { 5 } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let data = tempfile::tempdir().expect("temp dir");
        let (_hub, addr) = start_hub(data.path()).await;

        let writes_per_s = baseline(&addr, submitters, baseline_for).await;

        let mut admin = Client::connect(&addr).await;
        let mut agent_tasks = Vec::new();
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for a in 0..agents {
            let id = format!("bench-{a}");
            let (status, body) = admin
                .send("POST", "/admin/tokens", json!({"agent_id": id, "role": "agent"}))
                .await;
            assert_eq!(status, 201, "{body}");
            let token = body["token"].as_str().unwrap().to_string();
            agent_tasks.push(tokio::spawn(agent(addr.clone(), id, token, done.clone(), stop.clone())));
        }
        // Let every agent identify before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut submit_tasks = Vec::new();
        for _ in 0..submitters {
            let (addr, next) = (addr.clone(), next.clone());
            submit_tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(&addr).await;
                while next.fetch_add(1, Ordering::Relaxed) < tasks {
                    let (status, body) = client
                        .send("POST", "/api/tasks", json!({"description": "bench", "priority": "normal"}))
                        .await;
                    assert_eq!(status, 201, "{body}");
                }
            }));
        }
        for t in submit_tasks {
            t.await.unwrap();
        }
        let submitted_in = start.elapsed();
        let deadline = Instant::now() + Duration::from_secs(600);
        while done.load(Ordering::Relaxed) < tasks {
            assert!(Instant::now() < deadline, "only {} of {tasks} tasks completed", done.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in agent_tasks {
            let _ = t.await;
        }
        let (_, stats) = admin.send("GET", "/api/tasks/stats", json!({})).await;

        let tasks_per_s = tasks as f64 / elapsed.as_secs_f64();
        let transitions_per_s = tasks_per_s * TRANSITIONS_PER_TASK as f64;
        println!("task throughput: {tasks} tasks, {agents} agents, {submitters} submitters");
        println!("| measure | value | ratio |");
        println!("|---|---:|---:|");
        println!("| acknowledged config writes/s ({submitters} clients, baseline) | {writes_per_s:.0} | 1.00x |");
        println!(
            "| tasks completed/s (submit → complete, end to end) | {tasks_per_s:.0} | {:.2}x |",
            tasks_per_s / writes_per_s
        );
        println!(
            "| durable task transitions/s ({TRANSITIONS_PER_TASK} per task) | {transitions_per_s:.0} | {:.2}x (vs 1,000/s target: {:.2}x) |",
            transitions_per_s / writes_per_s,
            transitions_per_s / 1000.0
        );
        println!(
            "submissions took {:.2} s, all completions {:.2} s; stats after: {stats}",
            submitted_in.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    });
}
