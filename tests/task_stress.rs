//! Black-box stress and durability tests of the task queue and scheduler: many agents
//! working through thousands of tasks while failing and dropping their connections, and
//! acknowledged submissions surviving `kill -9`.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{recv, send, try_request, In, Reply, Rng, TestHub, WsStream, ADMIN};
use serde_json::{json, Value};
use tokio::net::TcpStream;

async fn get(addr: &str, path: &str) -> Reply {
    try_request(addr, "GET", path, Some(ADMIN), None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Every task in the active table (any status) and in the dead-letter table.
async fn all_tasks(addr: &str) -> (Vec<Value>, Vec<Value>) {
    let active = get(addr, "/api/tasks").await;
    assert_eq!(active.status, 200, "GET /api/tasks: {:?}", active.status);
    let dead = get(addr, "/api/tasks/dead-letter").await;
    assert_eq!(dead.status, 200, "GET /api/tasks/dead-letter");
    (
        active.json["tasks"].as_array().expect("tasks").clone(),
        dead.json["tasks"].as_array().expect("tasks").clone(),
    )
}

fn history_events(task: &Value) -> Vec<String> {
    task["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| e["event"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn count_event(task: &Value, event: &str) -> usize {
    history_events(task).iter().filter(|e| *e == event).count()
}

/// A short description of a task for failure messages.
fn brief(task: &Value) -> String {
    format!(
        "{} status={} gen={} retry_count={}/{} assigned_to={} history={}",
        task["id"],
        task["status"],
        task["generation"],
        task["retry_count"],
        task["max_retries"],
        task["assigned_to"],
        task["history"]
    )
}

// ---------------------------------------------------------------------------------------
// Stress: 50 agents, 5,000 tasks
// ---------------------------------------------------------------------------------------

/// What every agent records, shared by all of them.
#[derive(Default)]
struct Shared {
    /// Every `task_assign` generation per task, in the order the agents received them.
    gens: Mutex<HashMap<String, Vec<u64>>>,
    /// `task_ack complete` per task.
    complete_acks: Mutex<HashMap<String, u32>>,
    /// `task_ack dead_letter` per task.
    dead_acks: Mutex<HashMap<String, u32>>,
    /// Anything unexpected the agents saw.
    problems: Mutex<Vec<String>>,
    /// Per agent, what it did (ms since the agents started), for failure reports.
    logs: Mutex<HashMap<String, Vec<String>>>,
    assigns: AtomicUsize,
    completed: AtomicUsize,
    retried: AtomicUsize,
    dead: AtomicUsize,
    disconnects: AtomicUsize,
    continues: AtomicUsize,
    reassigns: AtomicUsize,
    overlaps: AtomicUsize,
}

impl Shared {
    fn problem(&self, p: String) {
        if let Some((agent, _)) = p.split_once(':') {
            self.logs
                .lock()
                .unwrap()
                .entry(agent.to_string())
                .or_default()
                .push(format!("PROBLEM {p}"));
        }
        let mut list = self.problems.lock().unwrap();
        if list.len() < 200 {
            list.push(p);
        }
    }
}

struct Agent {
    addr: String,
    id: String,
    token: String,
    rng: Rng,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// `task_assign` pushes received while waiting for something else.
    pending: VecDeque<Value>,
    /// (task, generation) pairs this agent learnt from `task_continue` rather than from a
    /// `task_assign`: the push of the same assignment may still follow.
    continued: HashSet<(String, u64)>,
    t0: Instant,
}

impl Agent {
    fn note(&self, what: String) {
        let line = format!("{:>6} ms {what}", self.t0.elapsed().as_millis());
        self.shared
            .logs
            .lock()
            .unwrap()
            .entry(self.id.clone())
            .or_default()
            .push(line);
    }

    async fn try_connect(&mut self) -> Result<WsStream, String> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", self.addr), stream)
            .await
            .map_err(|e| e.to_string())?;
        let identify = json!({"type": "identify", "agent_id": self.id, "token": self.token, "capabilities": ["stress"]});
        if !send(&mut ws, identify).await {
            return Err("identify not sent".into());
        }
        loop {
            match recv(&mut ws, Duration::from_secs(10)).await {
                In::Json(v) if v["type"] == "identified" => {
                    self.note("identified".into());
                    return Ok(ws);
                }
                In::Json(v) if v["type"] == "task_assign" => self.pending.push_back(v),
                In::Json(v) if v["type"] == "error" => return Err(format!("identify: {v}")),
                In::Json(_) => {}
                In::Timeout => return Err("no identified within 10 s".into()),
                In::Closed => return Err("closed during identify".into()),
            }
        }
    }

    async fn connect(&mut self) -> WsStream {
        let mut last = String::new();
        for _ in 0..50 {
            match self.try_connect().await {
                Ok(ws) => return ws,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{}: cannot connect: {last}", self.id);
    }

    /// Drop the connection (gracefully or abruptly) and identify again.
    async fn reconnect(&mut self, mut ws: WsStream) -> WsStream {
        self.shared.disconnects.fetch_add(1, Ordering::Relaxed);
        let graceful = self.rng.below(2) == 0;
        if graceful {
            let _ = ws.close(None).await;
        }
        drop(ws);
        let delay = if self.rng.below(2) == 0 {
            self.rng.below(100)
        } else {
            0
        };
        self.note(format!(
            "disconnect (graceful {graceful}), reconnect after {delay} ms"
        ));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.connect().await
    }

    /// Wait for the answer about `task_id` (one of `types`, or an `error`). A `task_assign`
    /// arriving meanwhile is kept for later; while `holding` a task it is an overlap (F11).
    async fn answer(
        &mut self,
        ws: &mut WsStream,
        task_id: &str,
        types: &[&str],
        holding: bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match recv(ws, left).await {
                In::Json(v) => {
                    let ty = v["type"].as_str().unwrap_or("");
                    if ty == "task_assign" {
                        // The push of an assignment learnt from task_continue is not new work.
                        let continued = v["task_id"] == task_id
                            && v["generation"].as_u64().is_some_and(|g| {
                                self.continued.contains(&(task_id.to_string(), g))
                            });
                        if holding && !continued {
                            self.shared.overlaps.fetch_add(1, Ordering::Relaxed);
                            self.shared.problem(format!(
                                "{} got task_assign {} (gen {}) while holding {task_id}",
                                self.id, v["task_id"], v["generation"]
                            ));
                        }
                        self.pending.push_back(v);
                    } else if types.contains(&ty) && v["task_id"] == task_id {
                        return Ok(v);
                    } else if ty == "error" {
                        return Err(v.to_string());
                    }
                }
                In::Timeout => return Err(format!("no answer within 20 s (want {types:?})")),
                In::Closed => return Err("connection closed".into()),
            }
        }
    }

    /// Complete (most of the time) or fail the task.
    async fn finish(&mut self, mut ws: WsStream, task_id: &str, generation: u64) -> WsStream {
        let fail = self.rng.below(100) < 15;
        let msg = if fail {
            json!({"type": "task_failed", "task_id": task_id, "generation": generation, "error": "stress failure"})
        } else {
            json!({"type": "task_complete", "task_id": task_id, "generation": generation, "result": {"by": self.id}})
        };
        if !send(&mut ws, msg).await {
            self.shared
                .problem(format!("{}: send failed for {task_id}", self.id));
            return ws;
        }
        let answer = self.answer(&mut ws, task_id, &["task_ack"], true).await;
        self.note(format!(
            "{} {task_id} gen {generation}: {answer:?}",
            if fail { "task_failed" } else { "task_complete" }
        ));
        match answer {
            Ok(v) => match (fail, v["status"].as_str().unwrap_or("")) {
                (false, "complete") => {
                    self.shared.completed.fetch_add(1, Ordering::Relaxed);
                    *self
                        .shared
                        .complete_acks
                        .lock()
                        .unwrap()
                        .entry(task_id.to_string())
                        .or_default() += 1;
                }
                (true, "retried") => {
                    self.shared.retried.fetch_add(1, Ordering::Relaxed);
                }
                (true, "dead_letter") => {
                    self.shared.dead.fetch_add(1, Ordering::Relaxed);
                    *self
                        .shared
                        .dead_acks
                        .lock()
                        .unwrap()
                        .entry(task_id.to_string())
                        .or_default() += 1;
                }
                _ => self.shared.problem(format!(
                    "{}: unexpected ack for {task_id} gen {generation} (fail={fail}): {v}",
                    self.id
                )),
            },
            Err(e) => self.shared.problem(format!(
                "{}: {} of {task_id} gen {generation}: {e}",
                self.id,
                if fail { "task_failed" } else { "task_complete" }
            )),
        }
        ws
    }

    fn record_generation(&self, task_id: &str, generation: u64) {
        self.shared
            .gens
            .lock()
            .unwrap()
            .entry(task_id.to_string())
            .or_default()
            .push(generation);
    }

    /// After a reconnect: ask whether the task is still ours; go on with it if so.
    async fn recover(&mut self, mut ws: WsStream, task_id: &str, generation: u64) -> WsStream {
        if !send(
            &mut ws,
            json!({"type": "task_recovering", "task_id": task_id}),
        )
        .await
        {
            self.shared
                .problem(format!("{}: send failed for {task_id}", self.id));
            return ws;
        }
        match self
            .answer(&mut ws, task_id, &["task_continue", "task_reassign"], false)
            .await
        {
            Ok(v) if v["type"] == "task_continue" => {
                self.shared.continues.fetch_add(1, Ordering::Relaxed);
                let g = v["generation"].as_u64().unwrap_or(0);
                self.note(format!("task_continue {task_id} gen {g}"));
                if g < generation {
                    self.shared.problem(format!(
                        "{}: task_continue for {task_id} with gen {g}, assigned with gen {generation}",
                        self.id
                    ));
                } else if g > generation {
                    // Our disconnect returned the task to the queue and the scheduler gave
                    // it back to this agent's new connection: the same task, a newer
                    // assignment (its task_assign push comes too, and is not new work).
                    self.record_generation(task_id, g);
                    self.continued.insert((task_id.to_string(), g));
                }
                self.finish(ws, task_id, g).await
            }
            Ok(_) => {
                self.shared.reassigns.fetch_add(1, Ordering::Relaxed);
                self.note(format!("task_reassign {task_id}"));
                ws
            }
            Err(e) => {
                self.shared
                    .problem(format!("{}: task_recovering {task_id}: {e}", self.id));
                ws
            }
        }
    }

    async fn handle(&mut self, mut ws: WsStream, assign: Value) -> WsStream {
        let task_id = assign["task_id"].as_str().unwrap_or("").to_string();
        let Some(generation) = assign["generation"].as_u64() else {
            self.shared.problem(format!(
                "{}: task_assign without generation: {assign}",
                self.id
            ));
            return ws;
        };
        if self.continued.remove(&(task_id.clone(), generation)) {
            self.note(format!(
                "task_assign {task_id} gen {generation}: already continued"
            ));
            return ws;
        }
        self.shared.assigns.fetch_add(1, Ordering::Relaxed);
        self.record_generation(&task_id, generation);
        let roll = self.rng.below(1000);
        self.note(format!(
            "task_assign {task_id} gen {generation} (roll {roll})"
        ));
        if roll < 5 {
            // 0.5 %: the connection drops before the task is accepted.
            let ws = self.reconnect(ws).await;
            return self.recover(ws, &task_id, generation).await;
        }
        if !send(
            &mut ws,
            json!({"type": "task_accepted", "task_id": task_id}),
        )
        .await
        {
            self.shared
                .problem(format!("{}: send failed for {task_id}", self.id));
            return ws;
        }
        match self.answer(&mut ws, &task_id, &["task_ack"], true).await {
            Ok(v) if v["status"] == "accepted" => {}
            other => {
                self.shared.problem(format!(
                    "{}: task_accepted {task_id} gen {generation}: {other:?}",
                    self.id
                ));
                return ws;
            }
        }
        if roll < 10 {
            // 0.5 %: the connection drops while working on the task.
            let ws = self.reconnect(ws).await;
            return self.recover(ws, &task_id, generation).await;
        }
        self.finish(ws, &task_id, generation).await
    }

    async fn run(mut self) {
        let mut ws = self.connect().await;
        while !self.stop.load(Ordering::SeqCst) {
            let assign = match self.pending.pop_front() {
                Some(v) => v,
                None => match recv(&mut ws, Duration::from_millis(200)).await {
                    In::Json(v) if v["type"] == "task_assign" => v,
                    In::Json(v) if v["type"] == "error" => {
                        self.shared
                            .problem(format!("{}: unsolicited error {v}", self.id));
                        continue;
                    }
                    In::Json(_) | In::Timeout => continue,
                    In::Closed => {
                        self.shared
                            .problem(format!("{}: the hub closed the connection", self.id));
                        ws = self.connect().await;
                        continue;
                    }
                },
            };
            ws = self.handle(ws, assign).await;
        }
        let _ = ws.close(None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_50_agents_5000_tasks_with_failures_and_disconnects() {
    const AGENTS: usize = 50;
    const TASKS: usize = 5000;
    const IN_FLIGHT: usize = 32;
    let test_start = Instant::now();
    let deadline = test_start + Duration::from_secs(80);

    let hub = TestHub::start_with(&["--accept-timeout", "5s", "--task-sweep-interval", "1s"]).await;
    let addr = hub.addr.clone();
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Agents first, so work starts as soon as the first task lands.
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let id = format!("stress-{i:02}");
        let token = hub.token(&id, "agent").await;
        let agent = Agent {
            addr: addr.clone(),
            id,
            token,
            rng: Rng::new(0x5EED_0000 + i as u64),
            shared: shared.clone(),
            stop: stop.clone(),
            pending: VecDeque::new(),
            continued: HashSet::new(),
            t0: test_start,
        };
        agents.push(tokio::spawn(agent.run()));
    }
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            get(&addr, "/api/agents/states").await.json["agents"]
                .as_array()
                .map_or(0, |a| a.len())
                == AGENTS
        })
        .await,
        "all {AGENTS} agents identified"
    );

    // Submit with bounded concurrency.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let submitted: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (addr, next, submitted) = (addr.clone(), next.clone(), submitted.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TASKS {
                    return;
                }
                let max_retries = 2 + (i as u64 % 2);
                let body =
                    json!({"description": format!("stress task {i}"), "max_retries": max_retries});
                let r = try_request(
                    &addr,
                    "POST",
                    "/api/tasks",
                    Some(ADMIN),
                    Some(("application/json", body.to_string().into_bytes())),
                )
                .await
                .expect("submission completes");
                assert_eq!(r.status, 201, "submission {i}: {r:?}");
                let id = r.json["task_id"].as_str().expect("task_id").to_string();
                submitted.lock().unwrap().push((id, max_retries));
            }
        }));
    }
    for w in writers {
        w.await.expect("submitter");
    }
    let submit_secs = started.elapsed().as_secs_f64();
    let submitted = submitted.lock().unwrap().clone();
    assert_eq!(submitted.len(), TASKS);
    let ids: HashSet<&str> = submitted.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), TASKS, "task ids are unique");
    let max_retries_of: HashMap<&str, u64> =
        submitted.iter().map(|(id, m)| (id.as_str(), *m)).collect();

    // Wait until every task is completed or dead-lettered.
    let mut last_stats = Value::Null;
    let mut finished = false;
    while Instant::now() < deadline {
        let stats = get(&addr, "/api/tasks/stats").await.json;
        let completed = stats["by_status"]["completed"].as_u64().unwrap_or(0);
        let dead = stats["dead_letter"].as_u64().unwrap_or(0);
        last_stats = stats;
        if completed + dead >= TASKS as u64 {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let work_secs = started.elapsed().as_secs_f64();

    let counters = format!(
        "assignments={} completed_acks={} retried_acks={} dead_letter_acks={} disconnects={} task_continue={} task_reassign={} overlaps={}",
        shared.assigns.load(Ordering::Relaxed),
        shared.completed.load(Ordering::Relaxed),
        shared.retried.load(Ordering::Relaxed),
        shared.dead.load(Ordering::Relaxed),
        shared.disconnects.load(Ordering::Relaxed),
        shared.continues.load(Ordering::Relaxed),
        shared.reassigns.load(Ordering::Relaxed),
        shared.overlaps.load(Ordering::Relaxed),
    );
    println!(
        "stress: {TASKS} tasks submitted in {submit_secs:.2} s ({:.0} submissions/s); all settled after {work_secs:.2} s ({:.0} tasks/s); {counters}",
        TASKS as f64 / submit_secs,
        TASKS as f64 / work_secs
    );

    // The FSMs of all agents exist and are idle once the work is done.
    let all_idle = common::eventually(Duration::from_secs(5), || async {
        let states = get(&addr, "/api/agents/states").await.json;
        states["agents"].as_array().is_some_and(|a| {
            a.len() == AGENTS
                && a.iter()
                    .all(|s| s["fsm_state"] == "idle" && s["current_task_id"].is_null())
        })
    })
    .await;
    let states_now = get(&addr, "/api/agents/states").await.json;
    let presence_now = get(&addr, "/api/agents").await.json;

    stop.store(true, Ordering::SeqCst);
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(25), a).await;
    }

    let (active, dead) = all_tasks(&addr).await;
    let problems = shared.problems.lock().unwrap().clone();
    if !finished {
        let stuck: Vec<String> = active
            .iter()
            .filter(|t| t["status"] != "completed")
            .take(20)
            .map(brief)
            .collect();
        panic!(
            "not every task settled within 80 s: last stats {last_stats}; {counters}\nunsettled (first 20):\n{}\nagent states: {states_now}\nagent problems: {problems:#?}",
            stuck.join("\n")
        );
    }

    // Every submitted task is in exactly one place, and nothing else is there.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in active.iter().chain(dead.iter()) {
        *seen
            .entry(t["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "tasks listed more than once: {twice:?}");
    let missing: Vec<&&str> = ids.iter().filter(|id| !seen.contains_key(**id)).collect();
    assert!(missing.is_empty(), "lost tasks: {missing:?}");
    let extra: Vec<&String> = seen
        .keys()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(extra.is_empty(), "tasks nobody submitted: {extra:?}");
    assert_eq!(active.len() + dead.len(), TASKS);

    let not_done: Vec<String> = active
        .iter()
        .filter(|t| t["status"] != "completed")
        .map(brief)
        .collect();
    assert!(
        not_done.is_empty(),
        "active tasks not completed: {not_done:#?}"
    );
    let bad_dead: Vec<String> = dead
        .iter()
        .filter(|t| t["status"] != "dead_letter")
        .map(brief)
        .collect();
    assert!(bad_dead.is_empty(), "dead-letter table: {bad_dead:#?}");

    let gens = shared.gens.lock().unwrap().clone();
    let complete_acks = shared.complete_acks.lock().unwrap().clone();
    let dead_acks = shared.dead_acks.lock().unwrap().clone();
    let mut violations = Vec::new();
    for t in &active {
        let id = t["id"].as_str().unwrap();
        let n = count_event(t, "completed");
        if n != 1 {
            violations.push(format!("{n} `completed` history entries: {}", brief(t)));
        }
        if count_event(t, "dead_letter") != 0 {
            violations.push(format!(
                "completed task with a dead_letter entry: {}",
                brief(t)
            ));
        }
        let acks = complete_acks.get(id).copied().unwrap_or(0);
        if acks != 1 {
            violations.push(format!("{acks} complete acks on the wire: {}", brief(t)));
        }
        if dead_acks.contains_key(id) {
            violations.push(format!(
                "completed task was acked dead_letter: {}",
                brief(t)
            ));
        }
        let last = gens.get(id).and_then(|g| g.last().copied());
        if last != t["generation"].as_u64() {
            violations.push(format!(
                "completed at generation {} but last assigned with {last:?}: {}",
                t["generation"],
                brief(t)
            ));
        }
    }
    for t in &dead {
        let id = t["id"].as_str().unwrap();
        let max = max_retries_of[id];
        if t["retry_count"].as_u64() != Some(max) || t["max_retries"].as_u64() != Some(max) {
            violations.push(format!(
                "dead-lettered with retry_count != max_retries {max}: {}",
                brief(t)
            ));
        }
        if count_event(t, "dead_letter") != 1 || count_event(t, "completed") != 0 {
            violations.push(format!("dead-letter history: {}", brief(t)));
        }
        if dead_acks.get(id).copied() != Some(1) || complete_acks.contains_key(id) {
            violations.push(format!(
                "dead-letter acks {:?}, complete acks {:?}: {}",
                dead_acks.get(id),
                complete_acks.get(id),
                brief(t)
            ));
        }
        let last = gens.get(id).and_then(|g| g.last().copied()).unwrap_or(0);
        if t["generation"].as_u64().unwrap_or(0) < last {
            violations.push(format!("generation went back below {last}: {}", brief(t)));
        }
    }
    // Generations seen by the agents only grow.
    for (id, g) in &gens {
        if !g.windows(2).all(|w| w[0] < w[1]) {
            violations.push(format!("{id}: task_assign generations {g:?}"));
        }
    }
    let never_assigned = ids.iter().filter(|id| !gens.contains_key(**id)).count();
    if never_assigned > 0 {
        violations.push(format!(
            "{never_assigned} tasks were never seen in a task_assign"
        ));
    }
    assert!(
        violations.is_empty(),
        "{} violations (first 30): {:#?}",
        violations.len(),
        &violations[..violations.len().min(30)]
    );

    // Spot-check single reads against the listings.
    for t in dead.iter().chain(active.iter().step_by(50)) {
        let id = t["id"].as_str().unwrap();
        let r = get(&addr, &format!("/api/tasks/{id}")).await;
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(r.json["status"], t["status"], "{id}");
        assert_eq!(r.json["generation"], t["generation"], "{id}");
    }
    let stats = get(&addr, "/api/tasks/stats").await.json;
    assert_eq!(
        stats["by_status"],
        json!({"completed": active.len()}),
        "{stats}"
    );
    assert_eq!(stats["dead_letter"], dead.len(), "{stats}");

    // The agents themselves saw nothing odd, and every agent is still schedulable.
    let overlaps = shared.overlaps.load(Ordering::Relaxed);
    if !all_idle || overlaps > 0 || !problems.is_empty() {
        let listed: HashMap<&str, &Value> = states_now["agents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| (s["agent_id"].as_str().unwrap_or(""), s))
                    .collect()
            })
            .unwrap_or_default();
        let mut report = String::new();
        let logs = shared.logs.lock().unwrap().clone();
        let mut suspects: Vec<String> = Vec::new();
        for i in 0..AGENTS {
            let id = format!("stress-{i:02}");
            match listed.get(id.as_str()) {
                None => {
                    let presence = presence_now["agents"]
                        .as_array()
                        .and_then(|a| a.iter().find(|p| p["agent_id"] == id.as_str()))
                        .cloned()
                        .unwrap_or(Value::Null);
                    report.push_str(&format!(
                        "{id}: connected, but has no FSM in /api/agents/states (presence entry: {presence})\n"
                    ))
                }
                Some(s) if s["fsm_state"] != "idle" || !s["current_task_id"].is_null() => {
                    report.push_str(&format!("{id}: not idle after the run: {s}\n"))
                }
                Some(_) => {
                    if !problems.iter().any(|p| p.starts_with(&format!("{id}:"))) {
                        continue;
                    }
                }
            }
            suspects.push(id);
        }
        let mut task_ids: Vec<String> = Vec::new();
        for id in &suspects {
            report.push_str(&format!("--- log of {id} ---\n"));
            let lines = logs.get(id).cloned().unwrap_or_default();
            for (n, line) in lines.iter().enumerate() {
                report.push_str(&format!("  {line}\n"));
                // The histories of the tasks it handled last.
                if n + 6 < lines.len() {
                    continue;
                }
                for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                    if word.starts_with("task-")
                        && word.len() == 21
                        && !task_ids.iter().any(|t| t == word)
                    {
                        task_ids.push(word.to_string());
                    }
                }
            }
        }
        for p in &problems {
            for word in p.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                if word.starts_with("task-")
                    && word.len() == 21
                    && !task_ids.iter().any(|t| t == word)
                {
                    task_ids.push(word.to_string());
                }
            }
        }
        report.push_str("--- tasks involved ---\n");
        for id in task_ids.iter().take(40) {
            let r = get(&addr, &format!("/api/tasks/{id}")).await;
            report.push_str(&format!("  {}\n", brief(&r.json)));
        }
        panic!(
            "overlaps={overlaps}, all agents listed and idle={all_idle}\nagent problems: {problems:#?}\n{report}"
        );
    }
    println!(
        "stress: {} completed, {} dead-lettered; test took {:.1} s",
        active.len(),
        dead.len(),
        test_start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// Durability: acknowledged submissions survive kill -9
// ---------------------------------------------------------------------------------------

async fn identify(addr: &str, id: &str, token: &str) -> WsStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("websocket");
    assert!(
        send(
            &mut ws,
            json!({"type": "identify", "agent_id": id, "token": token, "capabilities": []})
        )
        .await
    );
    next_of_type(&mut ws, "identified").await;
    ws
}

async fn next_of_type(ws: &mut WsStream, ty: &str) -> Value {
    loop {
        match recv(ws, Duration::from_secs(10)).await {
            In::Json(v) if v["type"] == ty => return v,
            In::Json(v) => assert!(v["type"] != "error", "error while waiting for {ty}: {v}"),
            In::Timeout => panic!("no {ty} within 10 s"),
            In::Closed => panic!("closed while waiting for {ty}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_submissions_survive_kill_9() {
    const WRITERS: usize = 16;
    let test_start = Instant::now();
    let mut hub =
        TestHub::start_with(&["--accept-timeout", "3s", "--task-sweep-interval", "1s"]).await;
    let token = hub.token("resumer", "agent").await;
    let mut acked_all: Vec<String> = Vec::new();
    let mut completed_by_us: HashSet<String> = HashSet::new();
    let mut known_total = 0usize;

    for round in 0..3usize {
        let addr = hub.addr.clone();
        let acks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let kill_now = Arc::new(tokio::sync::Notify::new());
        let kill_after = 150 + 75 * round;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (addr, acks, stop, kill_now) =
                (addr.clone(), acks.clone(), stop.clone(), kill_now.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let body =
                        json!({"description": format!("r{round}-w{w}-{i}"), "max_retries": 2})
                            .to_string()
                            .into_bytes();
                    match try_request(
                        &addr,
                        "POST",
                        "/api/tasks",
                        Some(ADMIN),
                        Some(("application/json", body)),
                    )
                    .await
                    {
                        Ok(r) if r.status == 201 => {
                            acked.push(r.json["task_id"].as_str().unwrap().to_string());
                            if acks.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                kill_now.notify_one();
                            }
                        }
                        Ok(r) => return Err(format!("unexpected answer {r:?}")),
                        Err(_) => break,
                    }
                }
                Ok(acked)
            }));
        }
        tokio::time::timeout(Duration::from_secs(30), kill_now.notified())
            .await
            .expect("enough acknowledgements");
        hub.kill9_now();
        stop.store(true, Ordering::SeqCst);
        let mut acked_round = Vec::new();
        for w in writers {
            acked_round.extend(w.await.unwrap().expect("writer"));
        }
        assert!(acked_round.len() >= kill_after);
        hub.restart().await;
        let addr = hub.addr.clone();
        acked_all.extend(acked_round.iter().cloned());

        // Every acknowledged task is there, exactly once.
        let (active, dead) = all_tasks(&addr).await;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for t in active.iter().chain(dead.iter()) {
            *seen.entry(t["id"].as_str().unwrap()).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "round {round}: listed twice: {twice:?}");
        let lost: Vec<&String> = acked_all
            .iter()
            .filter(|id| !seen.contains_key(id.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged tasks lost after kill -9: {lost:?}",
            lost.len()
        );
        let total = active.len() + dead.len();
        assert!(
            total >= known_total + acked_round.len()
                && total <= known_total + acked_round.len() + WRITERS,
            "round {round}: {total} tasks listed; {known_total} before the round, {} acknowledged in it, at most {WRITERS} in flight",
            acked_round.len()
        );
        let by_id: HashMap<&str, &Value> = active
            .iter()
            .map(|t| (t["id"].as_str().unwrap(), t))
            .collect();
        let fresh: HashSet<&str> = acked_round.iter().map(String::as_str).collect();
        for id in &acked_all {
            let r = get(&addr, &format!("/api/tasks/{id}")).await;
            assert_eq!(r.status, 200, "round {round}: GET {id}: {r:?}");
            if completed_by_us.contains(id) {
                assert_eq!(
                    r.json["status"],
                    "completed",
                    "round {round}: {}",
                    brief(&r.json)
                );
                assert_eq!(count_event(&r.json, "completed"), 1, "{}", brief(&r.json));
            } else {
                assert_eq!(
                    r.json["status"],
                    "queued",
                    "round {round}: {}",
                    brief(&r.json)
                );
                let events = history_events(&r.json);
                assert_eq!(
                    events.last().map(String::as_str),
                    Some("queued"),
                    "{}",
                    brief(&r.json)
                );
                assert_eq!(count_event(&r.json, "queued"), 1, "{}", brief(&r.json));
                assert_eq!(count_event(&r.json, "completed"), 0, "{}", brief(&r.json));
                if fresh.contains(id.as_str()) {
                    // Acknowledged in this round, before any agent was connected.
                    assert_eq!(events, vec!["queued"], "round {round}: {}", brief(&r.json));
                    assert_eq!(r.json["generation"], 0, "round {round}: {}", brief(&r.json));
                }
            }
        }
        known_total = total;

        // Scheduling resumes: one agent receives queued tasks and completes a few.
        let mut ws = identify(&addr, "resumer", &token).await;
        for k in 0..5 {
            let assign = next_of_type(&mut ws, "task_assign").await;
            let task_id = assign["task_id"].as_str().unwrap().to_string();
            let generation = assign["generation"].as_u64().unwrap();
            let before = by_id.get(task_id.as_str()).unwrap_or_else(|| {
                panic!("round {round}: assigned {task_id}, not listed after restart")
            });
            assert_eq!(
                before["status"],
                "queued",
                "round {round}: {}",
                brief(before)
            );
            assert_eq!(generation, before["generation"].as_u64().unwrap() + 1);
            assert!(
                send(
                    &mut ws,
                    json!({"type": "task_accepted", "task_id": task_id})
                )
                .await
            );
            assert_eq!(
                next_of_type(&mut ws, "task_ack").await["status"],
                "accepted"
            );
            assert!(
                send(
                    &mut ws,
                    json!({"type": "task_complete", "task_id": task_id, "generation": generation, "result": {"round": round, "k": k}})
                )
                .await
            );
            let ack = next_of_type(&mut ws, "task_ack").await;
            assert_eq!(
                (ack["task_id"].as_str(), ack["status"].as_str()),
                (Some(task_id.as_str()), Some("complete")),
                "round {round}: {ack}"
            );
            completed_by_us.insert(task_id);
        }
        // Leave; the task the scheduler handed us meanwhile goes back to the queue.
        let _ = ws.close(None).await;
        drop(ws);
        assert!(
            common::eventually(Duration::from_secs(10), || async {
                let stats = get(&addr, "/api/tasks/stats").await.json;
                stats["by_status"].get("assigned").is_none()
            })
            .await,
            "round {round}: the agent's task is reclaimed on disconnect"
        );
        println!(
            "kill -9 round {round}: {} acknowledged ({} in total), {total} tasks listed after restart",
            acked_round.len(),
            acked_all.len()
        );
    }
    // One more crash: completions acknowledged on the wire survive too.
    hub.restart().await;
    for id in &completed_by_us {
        let r = get(&hub.addr, &format!("/api/tasks/{id}")).await;
        assert_eq!(r.json["status"], "completed", "{}", brief(&r.json));
        assert_eq!(count_event(&r.json, "completed"), 1, "{}", brief(&r.json));
    }
    println!(
        "kill -9 test took {:.1} s",
        test_start.elapsed().as_secs_f64()
    );
}
