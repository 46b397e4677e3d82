//! A websocket agent that accepts and completes every task it is given, and the log of
//! what all such agents completed (to count tasks lost or done twice, and latencies).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Every completion acknowledged to any agent, with when it arrived.
#[derive(Default)]
pub struct Completions {
    pub done: AtomicUsize,
    pub assigned: AtomicUsize,
    log: Mutex<Vec<Completion>>,
}

pub struct Completion {
    pub task_id: String,
    pub agent: usize,
    pub at: Instant,
}

impl Completions {
    /// Wait until `n` completions are in; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.done.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} tasks completed",
                self.done.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn take_log(&self) -> Vec<Completion> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

/// Working agents, stopped together.
pub struct Crew {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    pub completions: Arc<Completions>,
}

impl Crew {
    /// Connect one agent per (id, token) and wait until each has identified.
    pub async fn start(addr: &str, agents: &[(String, String)]) -> Crew {
        let stop = Arc::new(AtomicBool::new(false));
        let completions = Arc::new(Completions::default());
        let identified = Arc::new(AtomicUsize::new(0));
        let tasks = agents
            .iter()
            .enumerate()
            .map(|(index, (id, token))| {
                tokio::spawn(work(
                    addr.to_string(),
                    index,
                    id.clone(),
                    token.clone(),
                    identified.clone(),
                    completions.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while identified.load(Ordering::Relaxed) < agents.len() {
            assert!(Instant::now() < deadline, "agents did not identify");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Crew {
            stop,
            tasks,
            completions,
        }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn work(
    addr: String,
    index: usize,
    id: String,
    token: String,
    identified: Arc<AtomicUsize>,
    completions: Arc<Completions>,
    stop: Arc<AtomicBool>,
) {
    let stream = TcpStream::connect(&addr).await.expect("agent connects");
    stream.set_nodelay(true).expect("nodelay");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("agent upgrades");
    let identify = json!({"type": "identify", "agent_id": id, "token": token, "capabilities": []});
    ws.send(Message::Text(identify.to_string().into()))
        .await
        .expect("identify");
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return,
        };
        let v: Value = serde_json::from_str(&frame).expect("JSON frame");
        match v["type"].as_str() {
            Some("identified") => {
                identified.fetch_add(1, Ordering::Relaxed);
            }
            Some("task_assign") => {
                completions.assigned.fetch_add(1, Ordering::Relaxed);
                let accept = json!({"type": "task_accepted", "task_id": v["task_id"]});
                let complete = json!({"type": "task_complete", "task_id": v["task_id"], "generation": v["generation"], "result": {"ok": true}});
                ws.feed(Message::Text(accept.to_string().into()))
                    .await
                    .expect("accept");
                ws.send(Message::Text(complete.to_string().into()))
                    .await
                    .expect("complete");
            }
            Some("task_ack") if v["status"] == "complete" => {
                let at = Instant::now();
                let task_id = v["task_id"].as_str().expect("task_id").to_string();
                completions.log.lock().unwrap().push(Completion {
                    task_id,
                    agent: index,
                    at,
                });
                completions.done.fetch_add(1, Ordering::Relaxed);
            }
            Some("error") => panic!("agent {id} got an error: {v}"),
            _ => {}
        }
    }
}
