//! Black-box crash drill. Each trial runs mixed load against one hub — HTTP task submits,
//! websocket agents accepting and completing their tasks, direct messages to offline
//! agents, channel creates, subscribes and publishes (over HTTP and the websocket), config
//! writes and token mints — then `kill -9`s the hub at a random moment, restarts it on the
//! same data directory and checks:
//!
//! - every acknowledged write is there: submitted tasks, completed tasks (completed),
//!   direct messages in the offline agent's mailbox, publishes in the channel history and
//!   in the offline subscriber's mailbox, channels and subscriptions, the last acknowledged
//!   config value (or the one in flight), tokens that still authenticate as their agent;
//! - nothing appears that was never sent, and nothing twice: no task completed twice (its
//!   history's `completed` events, and the `task_ack complete`s the agents received), no
//!   task, message or publish listed twice;
//! - the agents reconnect (recovering the task they held with `task_recovering`), an
//!   urgent task submitted after the restart is assigned and completed, and the whole
//!   backlog drains, every task completed exactly once.
//!
//! One data directory serves `TRIALS_PER_HUB` trials in a row, so every trial also
//! re-checks what earlier trials on that directory acknowledged.
//!
//! `CRASH_DRILL_TRIALS` sets the number of trials (default 20; `just soak` runs 200),
//! `CRASH_DRILL_SEED` the seed of the kill moments and of the agents' work times (printed
//! at the start). A lost acknowledged write or a duplicate completion panics with a
//! precise message; the hub's data directory is then copied aside, and the panic names it,
//! the seed, the trial and the kill moment.
//!
//! `the_drill_catches_lost_writes_and_duplicate_completions` checks the checks: it rolls a
//! hub's data directory back behind its back and expects the drill to report the loss.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{recv, send, try_request, In, Reply, Rng, TestHub, WsStream, ADMIN};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Trials run one after the other on one data directory before a fresh hub takes over.
const TRIALS_PER_HUB: usize = 10;
/// Websocket agents that work through the task queue.
const WORKERS: usize = 3;
/// The hub's timers: an adopted task nobody knows about is back in the queue after 2 s.
const HUB_FLAGS: &[&str] = &["--accept-timeout", "2s", "--task-sweep-interval", "1s"];
/// The kill lands this long after the load starts, plus up to `KILL_SPREAD_MS`.
const KILL_MIN_MS: u64 = 150;
const KILL_SPREAD_MS: u64 = 1200;
/// How long to wait for something the hub should do (generous: a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(60);
/// How long an agent waits for the hub's answer to one of its frames.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The config keys written under load: path, field, a value for write `i` of trial `t`.
const CONFIG: [(&str, &str); 3] = [
    ("/api/config/heartbeat-interval", "heartbeat_interval_ms"),
    ("/api/config/mailbox-retention", "mailbox_ttl_ms"),
    ("/api/config/default-repo", "default_repo"),
];

fn config_value(field: &str, t: usize, i: usize) -> Value {
    let n = (t as u64 + 1) * 1_000_000 + i as u64;
    match field {
        "heartbeat_interval_ms" => json!(n),
        // At least a week, so the mailbox eviction never touches the drill's messages.
        "mailbox_ttl_ms" => json!(604_800_000 + n),
        _ => json!(format!("https://drill.example/t{t}/{i}.git")),
    }
}

fn config_body(field: &str, value: &Value) -> Value {
    match field {
        "default_repo" => json!({ "url": value }),
        _ => json!({ field: value }),
    }
}

// ---------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------

/// Connect to `/ws` and identify; `task_assign` pushes that come early go to `stash`.
/// Only agents with the `drill` capability (the workers) are offered the drill's tasks.
async fn identify(
    addr: &str,
    id: &str,
    token: &str,
    capabilities: Value,
    stash: &mut VecDeque<Value>,
) -> Result<WsStream, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .map_err(|e| e.to_string())?;
    let frame =
        json!({"type": "identify", "agent_id": id, "token": token, "capabilities": capabilities});
    if !send(&mut ws, frame).await {
        return Err("identify not sent".into());
    }
    loop {
        match recv(&mut ws, ANSWER_WITHIN).await {
            In::Json(v) if v["type"] == "identified" => return Ok(ws),
            In::Json(v) if v["type"] == "task_assign" => stash.push_back(v),
            In::Json(v) if v["type"] == "error" => return Err(format!("identify: {v}")),
            In::Json(_) => {}
            In::Timeout => return Err(format!("no identified within {ANSWER_WITHIN:?}")),
            In::Closed => return Err("closed during identify".into()),
        }
    }
}

async fn identify_retrying(
    addr: &str,
    id: &str,
    token: &str,
    capabilities: Value,
    stash: &mut VecDeque<Value>,
) -> WsStream {
    let mut last = String::new();
    for _ in 0..100 {
        match identify(addr, id, token, capabilities.clone(), stash).await {
            Ok(ws) => return ws,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id}: cannot identify: {last}");
}

/// One request with a JSON body (or none); a connection failure panics (the hub is up).
async fn call(addr: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
    try_request(
        addr,
        method,
        path,
        Some(token),
        body.map(|b| ("application/json", b.to_string().into_bytes())),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn get_json(addr: &str, path: &str, token: &str) -> Value {
    let r = call(addr, "GET", path, token, None).await;
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.json
}

async fn mint(addr: &str, agent_id: &str) -> String {
    let r = call(
        addr,
        "POST",
        "/admin/tokens",
        ADMIN,
        Some(json!({"agent_id": agent_id, "role": "agent"})),
    )
    .await;
    assert_eq!(r.status, 201, "mint a token for {agent_id}: {r:?}");
    r.json["token"].as_str().expect("token").to_string()
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
        "{} {:?} status={} gen={} assigned_to={} history={}",
        task["id"],
        task["description"],
        task["status"],
        task["generation"],
        task["assigned_to"],
        task["history"]
    )
}

/// Every task in the active table and in the dead-letter table.
async fn all_tasks(addr: &str) -> (Vec<Value>, Vec<Value>) {
    let active = get_json(addr, "/api/tasks", ADMIN).await;
    let dead = get_json(addr, "/api/tasks/dead-letter", ADMIN).await;
    (
        active["tasks"].as_array().expect("tasks").clone(),
        dead["tasks"].as_array().expect("tasks").clone(),
    )
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .clone()
}

// ---------------------------------------------------------------------------------------
// Acknowledgements, by kind
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Task,
    Completion,
    Direct,
    WsPublish,
    HttpPublish,
    ChannelCreate,
    Subscribe,
    Config,
    Token,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Task,
        Kind::Completion,
        Kind::Direct,
        Kind::WsPublish,
        Kind::HttpPublish,
        Kind::ChannelCreate,
        Kind::Subscribe,
        Kind::Config,
        Kind::Token,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Task => "task submits",
            Kind::Completion => "task completions",
            Kind::Direct => "direct messages",
            Kind::WsPublish => "ws publishes",
            Kind::HttpPublish => "http publishes",
            Kind::ChannelCreate => "channel creates",
            Kind::Subscribe => "subscribes",
            Kind::Config => "config writes",
            Kind::Token => "tokens",
        }
    }
}

/// Acknowledgements seen during the load, per kind (the kill waits for one of each).
struct Acks([AtomicUsize; 9]);

impl Acks {
    fn new() -> Arc<Acks> {
        Arc::new(Acks(std::array::from_fn(|_| AtomicUsize::new(0))))
    }

    fn bump(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self, kind: Kind) -> usize {
        self.0[kind as usize].load(Ordering::SeqCst)
    }
}

/// Per kind: writes acknowledged (and later verified), and writes that landed without an
/// acknowledgement (in flight at the kill).
#[derive(Default)]
struct Tally {
    acked: [usize; 9],
    landed_unacked: std::collections::BTreeMap<&'static str, usize>,
}

impl Tally {
    fn add(&mut self, kind: Kind, n: usize) {
        self.acked[kind as usize] += n;
    }

    fn line(&self) -> String {
        Kind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.acked[*k as usize]))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn landed_line(&self) -> String {
        let parts: Vec<String> = self
            .landed_unacked
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP writers
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Req {
    kind: Kind,
    method: &'static str,
    path: String,
    token: String,
    body: Value,
    expect: u16,
}

#[derive(Default)]
struct WriterOut {
    acked: Vec<(Req, Reply)>,
    /// Sent, but the connection failed before an answer: it may or may not have landed.
    in_flight: Option<Req>,
}

/// Send `reqs` one after the other, request `i` not before `start + i * interval`, until
/// the list ends, the hub goes away or `stop` is set.
async fn http_writer(
    addr: String,
    reqs: Vec<Req>,
    start: tokio::time::Instant,
    interval: Duration,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) -> WriterOut {
    let mut out = WriterOut::default();
    for (i, req) in reqs.into_iter().enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let body = Some(("application/json", req.body.to_string().into_bytes()));
        match try_request(&addr, req.method, &req.path, Some(&req.token), body).await {
            Ok(r) if r.status == req.expect => {
                acks.bump(req.kind);
                out.acked.push((req, r));
            }
            Ok(r) => panic!(
                "{} {} {} answered {} (expected {}): {:?}",
                req.method, req.path, req.body, r.status, req.expect, r
            ),
            Err(_) => {
                out.in_flight = Some(req);
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Websocket agents
// ---------------------------------------------------------------------------------------

enum Answer {
    Got(Value),
    Refused(String),
    Closed,
}

enum Outcome {
    Done,
    Closed,
}

/// A websocket agent that accepts and completes every task it is assigned, and after a
/// reconnect recovers the tasks it held (`task_recovering`, as the reference sidecar).
struct Worker {
    id: String,
    token: String,
    /// Tasks handed to this agent and not yet seen through: (task id, generation).
    held: Vec<(String, u64)>,
    /// `task_assign` pushes that arrived while waiting for something else.
    pending: VecDeque<Value>,
    /// Tasks whose `task_ack complete` arrived, since the last harvest.
    completed: Vec<String>,
    /// Frames the hub refused (say, a completion after an accept timeout): not violations.
    refused: Vec<String>,
    continued: usize,
    reassigned: usize,
    /// How long each task takes (0–29 ms), so that kills also land mid-task.
    rng: Rng,
}

impl Worker {
    fn new(id: String, token: String, seed: u64) -> Worker {
        Worker {
            id,
            token,
            rng: Rng::new(seed),
            held: Vec::new(),
            pending: VecDeque::new(),
            completed: Vec::new(),
            refused: Vec::new(),
            continued: 0,
            reassigned: 0,
        }
    }

    async fn connect(&mut self, addr: &str) -> WsStream {
        let (id, token) = (self.id.clone(), self.token.clone());
        identify_retrying(addr, &id, &token, json!(["drill"]), &mut self.pending).await
    }

    fn drop_held(&mut self, task_id: &str) {
        self.held.retain(|(t, _)| t != task_id);
    }

    /// The hub's answer about `task_id`: a frame of one of `types`, or an error.
    async fn answer(&mut self, ws: &mut WsStream, task_id: &str, types: &[&str]) -> Answer {
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match recv(ws, left).await {
                In::Json(v) => {
                    let ty = v["type"].as_str().unwrap_or("");
                    if ty == "task_assign" {
                        self.pending.push_back(v);
                    } else if types.contains(&ty) && v["task_id"] == task_id {
                        return Answer::Got(v);
                    } else if ty == "error" {
                        return Answer::Refused(v.to_string());
                    }
                }
                In::Timeout => panic!(
                    "{}: no answer {types:?} about {task_id} within {ANSWER_WITHIN:?} (the hub is up)",
                    self.id
                ),
                In::Closed => return Answer::Closed,
            }
        }
    }

    async fn complete(
        &mut self,
        ws: &mut WsStream,
        task_id: &str,
        generation: u64,
        acks: &Acks,
    ) -> Outcome {
        let frame = json!({"type": "task_complete", "task_id": task_id, "generation": generation, "result": {"by": self.id}});
        if !send(ws, frame).await {
            return Outcome::Closed;
        }
        match self.answer(ws, task_id, &["task_ack"]).await {
            Answer::Got(v) if v["status"] == "complete" => {
                acks.bump(Kind::Completion);
                self.completed.push(task_id.to_string());
            }
            Answer::Got(v) => self
                .refused
                .push(format!("task_complete {task_id} gen {generation}: {v}")),
            Answer::Refused(e) => self
                .refused
                .push(format!("task_complete {task_id} gen {generation}: {e}")),
            Answer::Closed => return Outcome::Closed,
        }
        self.drop_held(task_id);
        Outcome::Done
    }

    async fn work(
        &mut self,
        ws: &mut WsStream,
        task_id: &str,
        generation: u64,
        acks: &Acks,
    ) -> Outcome {
        if !send(ws, json!({"type": "task_accepted", "task_id": task_id})).await {
            return Outcome::Closed;
        }
        match self.answer(ws, task_id, &["task_ack"]).await {
            Answer::Got(v) if v["status"] == "accepted" => {}
            Answer::Got(v) => {
                self.refused.push(format!("task_accepted {task_id}: {v}"));
                self.drop_held(task_id);
                return Outcome::Done;
            }
            Answer::Refused(e) => {
                self.refused.push(format!("task_accepted {task_id}: {e}"));
                self.drop_held(task_id);
                return Outcome::Done;
            }
            Answer::Closed => return Outcome::Closed,
        }
        tokio::time::sleep(Duration::from_millis(self.rng.below(30))).await;
        self.complete(ws, task_id, generation, acks).await
    }

    /// After a reconnect: is the task still ours? Complete it if so.
    async fn recover(
        &mut self,
        ws: &mut WsStream,
        task_id: &str,
        generation: u64,
        acks: &Acks,
    ) -> Outcome {
        if !send(ws, json!({"type": "task_recovering", "task_id": task_id})).await {
            return Outcome::Closed;
        }
        match self
            .answer(ws, task_id, &["task_continue", "task_reassign"])
            .await
        {
            Answer::Got(v) if v["type"] == "task_continue" => {
                self.continued += 1;
                let g = v["generation"].as_u64().unwrap_or(generation);
                self.complete(ws, task_id, g, acks).await
            }
            Answer::Got(_) => {
                self.reassigned += 1;
                self.drop_held(task_id);
                Outcome::Done
            }
            Answer::Refused(e) => {
                self.refused.push(format!("task_recovering {task_id}: {e}"));
                self.drop_held(task_id);
                Outcome::Done
            }
            Answer::Closed => Outcome::Closed,
        }
    }

    /// Assignments this agent knows of but has not started: it holds them too.
    fn park(&mut self) {
        while let Some(v) = self.pending.pop_front() {
            if let (Some(t), Some(g)) = (v["task_id"].as_str(), v["generation"].as_u64()) {
                if !self.held.iter().any(|(h, _)| h == t) {
                    self.held.push((t.to_string(), g));
                }
            }
        }
    }

    /// Recover what it held, then work until `stop` is set or the connection ends.
    async fn run(mut self, mut ws: WsStream, stop: Arc<AtomicBool>, acks: Arc<Acks>) -> Worker {
        for (task_id, generation) in self.held.clone() {
            if let Outcome::Closed = self.recover(&mut ws, &task_id, generation, &acks).await {
                self.park();
                return self;
            }
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = ws.close(None).await;
                break;
            }
            let assign = match self.pending.pop_front() {
                Some(v) => v,
                None => match recv(&mut ws, Duration::from_millis(300)).await {
                    In::Json(v) if v["type"] == "task_assign" => v,
                    In::Json(_) => continue,
                    In::Timeout => {
                        // Show life, so an agent flagged unresponsive is offered work again.
                        if !send(&mut ws, json!({"type": "ping"})).await {
                            break;
                        }
                        continue;
                    }
                    In::Closed => break,
                },
            };
            let (Some(task_id), Some(generation)) =
                (assign["task_id"].as_str(), assign["generation"].as_u64())
            else {
                panic!(
                    "{}: task_assign without task_id or generation: {assign}",
                    self.id
                );
            };
            let task_id = task_id.to_string();
            self.held.push((task_id.clone(), generation));
            if let Outcome::Closed = self.work(&mut ws, &task_id, generation, &acks).await {
                break;
            }
        }
        self.park();
        self
    }
}

/// What the websocket publisher got acknowledged.
#[derive(Default)]
struct WsPubOut {
    /// (seq, id, payload) per `channel_published`.
    acked: Vec<(u64, String, Value)>,
    in_flight: Option<Value>,
}

/// Publish `quota` messages on `channel` over the agent's websocket, one at a time, each
/// waiting for its `channel_published`.
#[allow(clippy::too_many_arguments)]
async fn ws_publisher(
    mut ws: WsStream,
    channel: String,
    t: usize,
    quota: usize,
    start: tokio::time::Instant,
    interval: Duration,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) -> WsPubOut {
    let mut out = WsPubOut::default();
    'publishes: for i in 0..quota {
        tokio::time::sleep_until(start + interval * i as u32).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let payload = json!({"trial": t, "via": "ws", "n": i});
        let frame = json!({"type": "channel_publish", "channel": channel, "payload": payload});
        if !send(&mut ws, frame).await {
            out.in_flight = Some(payload);
            break;
        }
        loop {
            match recv(&mut ws, ANSWER_WITHIN).await {
                In::Json(v) if v["type"] == "channel_published" => {
                    let seq = v["seq"].as_u64().expect("seq");
                    let id = v["id"].as_str().expect("id").to_string();
                    acks.bump(Kind::WsPublish);
                    out.acked.push((seq, id, payload));
                    break;
                }
                In::Json(v) if v["type"] == "error" => {
                    panic!("channel_publish on {channel} refused: {v}")
                }
                In::Json(_) => {}
                In::Timeout => {
                    panic!("no channel_published within {ANSWER_WITHIN:?} (the hub is up)")
                }
                In::Closed => {
                    out.in_flight = Some(payload);
                    break 'publishes;
                }
            }
        }
    }
    let _ = ws.close(None).await;
    out
}

// ---------------------------------------------------------------------------------------
// The ledger: every acknowledged write on the current data directory
// ---------------------------------------------------------------------------------------

struct Dm {
    to: String,
    id: String,
    payload: Value,
}

struct Publish {
    seq: u64,
    /// Known for websocket publishes (`channel_published` carries it); HTTP gives the seq.
    id: Option<String>,
    payload: Value,
}

struct Channel {
    name: String,
    /// Agents whose subscription was acknowledged.
    subscribers: Vec<String>,
    /// An offline subscriber: its mailbox holds a copy of every publish.
    offline_sub: String,
    publishes: Vec<Publish>,
    /// Payloads of publishes in flight at a kill.
    maybe: Vec<Value>,
}

struct ConfigState {
    path: &'static str,
    field: &'static str,
    /// The value read back after the previous restart (or at start).
    current: Value,
    /// This trial's last acknowledged value and the one in flight at the kill.
    acked: Option<Value>,
    in_flight: Option<Value>,
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged submissions: id → description.
    tasks: HashMap<String, String>,
    /// Descriptions of submissions in flight at a kill.
    tasks_maybe: HashSet<String>,
    /// `task_ack complete` received per task, over every connection of every agent.
    complete_acks: HashMap<String, u32>,
    /// Offline agents (they have tokens but never connect) that direct messages go to.
    offline: Vec<String>,
    dms: Vec<Dm>,
    /// (recipient, payload) of messages in flight at a kill.
    dms_maybe: Vec<(String, Value)>,
    channels: Vec<Channel>,
    /// Channels created under load: (name, whether the offline subscriber's subscribe was
    /// acknowledged, that subscriber).
    extra_channels: Vec<(String, bool, String)>,
    config: Vec<ConfigState>,
    /// (agent id, token) of every acknowledged mint.
    tokens: Vec<(String, String)>,
    /// Writes found to have landed without an acknowledgement, so each is counted once.
    landed_seen: HashSet<String>,
}

/// Failures found by one check, each a precise sentence.
#[derive(Default)]
struct Findings {
    lost: Vec<String>,
    duplicate: Vec<String>,
    other: Vec<String>,
}

impl Findings {
    fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.duplicate.is_empty() && self.other.is_empty()
    }

    fn report(&self) -> String {
        let mut s = String::new();
        for (label, list) in [
            ("LOST acknowledged write", &self.lost),
            ("DUPLICATE", &self.duplicate),
            ("OTHER", &self.other),
        ] {
            for item in list.iter().take(40) {
                s.push_str(&format!("  {label}: {item}\n"));
            }
            if list.len() > 40 {
                s.push_str(&format!("  … and {} more {label}\n", list.len() - 40));
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// One hub, several trials
// ---------------------------------------------------------------------------------------

struct Drill {
    hub: TestHub,
    number: usize,
    seed: u64,
    submitter: String,
    dm_sender: String,
    http_pub: String,
    chan_owner: String,
    workers: Vec<Worker>,
    ledger: Ledger,
    /// Tasks the agents held (assigned, not seen through) when the hub was last killed.
    held_at_kill: usize,
}

/// Which kill a check follows, for failure messages.
struct Moment {
    trial: usize,
    /// When the kill came, e.g. "kill -9 812 ms after the load started".
    kill: String,
}

impl Drill {
    async fn start(number: usize, seed: u64) -> Drill {
        let hub = TestHub::start_with(HUB_FLAGS).await;
        let addr = hub.addr.clone();
        let mut ledger = Ledger::default();
        let mut minted = |agent: &str, token: &str| {
            ledger.tokens.push((agent.to_string(), token.to_string()));
            token.to_string()
        };
        let submitter = minted("submitter", &mint(&addr, "submitter").await);
        let dm_sender = minted("dm-sender", &mint(&addr, "dm-sender").await);
        let http_pub = minted("http-pub", &mint(&addr, "http-pub").await);
        let chan_owner = minted("chan-owner", &mint(&addr, "chan-owner").await);
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let id = format!("worker-{w}");
            let token = minted(&id, &mint(&addr, &id).await);
            workers.push(Worker::new(
                id,
                token,
                seed ^ ((number as u64) << 16) ^ (w as u64 + 1),
            ));
        }
        for (path, field) in CONFIG {
            let current = get_json(&addr, path, ADMIN).await[field].clone();
            ledger.config.push(ConfigState {
                path,
                field,
                current,
                acked: None,
                in_flight: None,
            });
        }
        Drill {
            hub,
            number,
            seed,
            submitter,
            dm_sender,
            http_pub,
            chan_owner,
            workers,
            ledger,
            held_at_kill: 0,
        }
    }

    /// Copy the data directory aside and panic with everything needed to look into it.
    async fn fail(&mut self, at: &Moment, what: &str, findings: &Findings) {
        // Stop the hub first: a live sled directory is not safe to copy.
        self.hub.kill9().await;
        let keep = std::env::temp_dir().join(format!(
            "crash-drill-seed{}-trial{}-{}",
            self.seed,
            at.trial,
            std::process::id()
        ));
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(self.hub.data_dir())
            .arg(&keep)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        panic!(
            "crash drill FAILED {what}: seed {} (replay with CRASH_DRILL_SEED={}), trial {}, hub #{} \
             ({}); data directory {}\n{}",
            self.seed,
            self.seed,
            at.trial,
            self.number,
            at.kill,
            if copied {
                format!("copied to {}", keep.display())
            } else {
                "could not be copied".to_string()
            },
            findings.report()
        );
    }

    /// One trial: load, kill -9, restart, check, reconnect, drain, check.
    async fn trial(&mut self, t: usize, rng: &mut Rng, tally: &mut Tally) {
        let trial_start = Instant::now();
        let (at, acked) = self.load_and_kill(t, rng, tally).await;
        self.hub.restart().await;
        let restarted = Instant::now();
        self.check_after_restart(&at, tally).await;
        let (findings, recovery) = self.resume(t, true, tally).await;
        if !findings.is_empty() {
            self.fail(&at, "once the agents reconnected", &findings)
                .await;
        }
        println!(
            "trial {t} (hub #{}): {}; acknowledged {}; {recovery}; \
             restart to drained {:.1} s, trial {:.1} s",
            self.number,
            at.kill,
            Kind::ALL
                .iter()
                .map(|k| format!("{} {}", k.name(), acked[*k as usize]))
                .collect::<Vec<_>>()
                .join(", "),
            restarted.elapsed().as_secs_f64(),
            trial_start.elapsed().as_secs_f64(),
        );
    }

    /// After a restart: every acknowledged write is there, nothing twice, nothing unsent.
    async fn check_after_restart(&mut self, at: &Moment, tally: &mut Tally) {
        let addr = self.hub.addr.clone();
        let mut findings = Findings::default();
        let landed = self.check_durable(&addr, &mut findings).await;
        if !findings.is_empty() {
            self.fail(at, "after the restart", &findings).await;
        }
        for (what, n) in landed {
            *tally.landed_unacked.entry(what).or_default() += n;
        }
    }

    /// Set up trial `t`, run the mixed load, `kill -9` the hub at a random moment (left
    /// dead: the caller restarts it) and record every acknowledged write in the ledger.
    /// Returns the moment of the kill and the acknowledgements per kind.
    async fn load_and_kill(
        &mut self,
        t: usize,
        rng: &mut Rng,
        tally: &mut Tally,
    ) -> (Moment, [usize; 9]) {
        let addr = self.hub.addr.clone();

        // --- Set-up (acknowledged writes too, checked like the rest) ---------------------
        let mut offline = Vec::new();
        for k in ["a", "b"] {
            let agent = format!("off-t{t}-{k}");
            let token = mint(&addr, &agent).await;
            self.ledger.tokens.push((agent.clone(), token.clone()));
            self.ledger.offline.push(agent.clone());
            offline.push(agent);
        }
        let chsub = format!("chsub-t{t}");
        let chsub_token = mint(&addr, &chsub).await;
        let wspub = format!("wspub-t{t}");
        let wspub_token = mint(&addr, &wspub).await;
        self.ledger
            .tokens
            .push((chsub.clone(), chsub_token.clone()));
        self.ledger
            .tokens
            .push((wspub.clone(), wspub_token.clone()));
        let channel = format!("drill-t{t}");
        let r = call(
            &addr,
            "POST",
            "/api/channels",
            &self.chan_owner,
            Some(json!({"name": channel, "description": "crash drill"})),
        )
        .await;
        assert_eq!(r.status, 201, "create {channel}: {r:?}");
        let r = call(
            &addr,
            "POST",
            &format!("/api/channels/{channel}/subscribe"),
            &chsub_token,
            Some(json!({})),
        )
        .await;
        assert_eq!(r.status, 200, "subscribe {chsub} to {channel}: {r:?}");
        tally.add(Kind::Token, 4);
        tally.add(Kind::ChannelCreate, 1);
        tally.add(Kind::Subscribe, 1);
        let mut stash = VecDeque::new();
        let mut pub_ws =
            identify_retrying(&addr, &wspub, &wspub_token, json!([]), &mut stash).await;
        assert!(
            send(
                &mut pub_ws,
                json!({"type": "channel_subscribe", "channel": channel})
            )
            .await
        );
        loop {
            match recv(&mut pub_ws, ANSWER_WITHIN).await {
                In::Json(v) if v["type"] == "channel_subscribed" => break,
                In::Json(v) if v["type"] == "error" => panic!("channel_subscribe: {v}"),
                In::Json(_) => {}
                In::Timeout | In::Closed => panic!("{wspub}: no channel_subscribed"),
            }
        }
        tally.add(Kind::Subscribe, 1);
        self.ledger.channels.push(Channel {
            name: channel.clone(),
            subscribers: vec![chsub.clone(), wspub.clone()],
            offline_sub: chsub.clone(),
            publishes: Vec::new(),
            maybe: Vec::new(),
        });
        let mut conns = Vec::new();
        for mut w in std::mem::take(&mut self.workers) {
            let ws = w.connect(&addr).await;
            conns.push((w, ws));
        }
        for c in &mut self.ledger.config {
            c.acked = None;
            c.in_flight = None;
        }

        // --- Load --------------------------------------------------------------------------
        let acks = Acks::new();
        let stop = Arc::new(AtomicBool::new(false));
        let start = tokio::time::Instant::now() + Duration::from_millis(20);
        let ms = Duration::from_millis;
        let writer = |reqs: Vec<Req>, interval: Duration| -> JoinHandle<WriterOut> {
            tokio::spawn(http_writer(
                addr.clone(),
                reqs,
                start,
                interval,
                acks.clone(),
                stop.clone(),
            ))
        };
        let mut writers: Vec<JoinHandle<WriterOut>> = Vec::new();
        // Task submits: two writers, up to 2 × 50.
        for s in 0..2 {
            let reqs = (0..50)
                .map(|i| Req {
                    kind: Kind::Task,
                    method: "POST",
                    path: "/api/tasks".into(),
                    token: self.submitter.clone(),
                    body: json!({
                        "description": format!("t{t}-s{s}-{i}"),
                        "metadata": {"trial": t},
                        "needed_capabilities": ["drill"],
                    }),
                    expect: 201,
                })
                .collect();
            writers.push(writer(reqs, ms(50)));
        }
        // Direct messages to the two offline agents: up to 48 each (a mailbox keeps 100).
        let reqs = (0..96)
            .map(|i| Req {
                kind: Kind::Direct,
                method: "POST",
                path: "/api/message".into(),
                token: self.dm_sender.clone(),
                body: json!({"to": offline[i % 2], "type": "drill", "payload": {"trial": t, "n": i}}),
                expect: 200,
            })
            .collect();
        writers.push(writer(reqs, ms(25)));
        // HTTP publishes: up to 45 (with the websocket's 45 the subscriber's copies stay
        // under the mailbox's 100).
        let reqs = (0..45)
            .map(|i| Req {
                kind: Kind::HttpPublish,
                method: "POST",
                path: format!("/api/channels/{channel}/publish"),
                token: self.http_pub.clone(),
                body: json!({"payload": {"trial": t, "via": "http", "n": i}}),
                expect: 200,
            })
            .collect();
        writers.push(writer(reqs, ms(50)));
        // Channels created and subscribed to under load.
        let reqs = (0..12)
            .flat_map(|i| {
                let name = format!("drill-t{t}-x{i}");
                [
                    Req {
                        kind: Kind::ChannelCreate,
                        method: "POST",
                        path: "/api/channels".into(),
                        token: self.chan_owner.clone(),
                        body: json!({"name": name}),
                        expect: 201,
                    },
                    Req {
                        kind: Kind::Subscribe,
                        method: "POST",
                        path: format!("/api/channels/{name}/subscribe"),
                        token: chsub_token.clone(),
                        body: json!({}),
                        expect: 200,
                    },
                ]
            })
            .collect();
        writers.push(writer(reqs, ms(100)));
        // Config: one sequential writer per key, so "the last acknowledged" is defined.
        let config_writers: Vec<JoinHandle<WriterOut>> = CONFIG
            .iter()
            .map(|(path, field)| {
                let reqs = (0..100)
                    .map(|i| Req {
                        kind: Kind::Config,
                        method: "PUT",
                        path: path.to_string(),
                        token: ADMIN.to_string(),
                        body: config_body(field, &config_value(field, t, i)),
                        expect: 200,
                    })
                    .collect();
                writer(reqs, ms(25))
            })
            .collect();
        // Token mints: two writers, up to 2 × 30.
        for w in 0..2 {
            let reqs = (0..30)
                .map(|i| Req {
                    kind: Kind::Token,
                    method: "POST",
                    path: "/admin/tokens".into(),
                    token: ADMIN.to_string(),
                    body: json!({"agent_id": format!("tok-t{t}-w{w}-{i}"), "role": "agent"}),
                    expect: 201,
                })
                .collect();
            writers.push(writer(reqs, ms(80)));
        }
        let publisher = tokio::spawn(ws_publisher(
            pub_ws,
            channel.clone(),
            t,
            45,
            start,
            ms(50),
            acks.clone(),
            stop.clone(),
        ));
        let agents: Vec<JoinHandle<Worker>> = conns
            .into_iter()
            .map(|(w, ws)| tokio::spawn(w.run(ws, stop.clone(), acks.clone())))
            .collect();

        // --- kill -9 at a random moment, once every kind has had an acknowledgement -------
        let kill_after = Duration::from_millis(KILL_MIN_MS + rng.below(KILL_SPREAD_MS));
        tokio::time::sleep_until(start + kill_after).await;
        let every_kind = common::eventually(PATIENCE, || async {
            Kind::ALL.iter().all(|k| acks.get(*k) > 0)
        })
        .await;
        assert!(
            every_kind,
            "trial {t}: not every kind of write was acknowledged within {PATIENCE:?}: {:?}",
            Kind::ALL.map(|k| (k.name(), acks.get(k)))
        );
        let at = Moment {
            trial: t,
            kill: format!(
                "kill -9 {} ms after the load started",
                start.elapsed().as_millis()
            ),
        };
        self.hub.kill9_now();
        stop.store(true, Ordering::SeqCst);

        let mut outs = Vec::new();
        for w in writers {
            outs.push(w.await.expect("writer"));
        }
        let mut config_outs = Vec::new();
        for w in config_writers {
            config_outs.push(w.await.expect("config writer"));
        }
        let published = publisher.await.expect("ws publisher");
        for a in agents {
            self.workers.push(a.await.expect("agent"));
        }
        self.held_at_kill = self.workers.iter().map(|w| w.held.len()).sum();

        // --- Record what was acknowledged ----------------------------------------------------
        let mut trial_acks = [0usize; 9];
        let chan = self
            .ledger
            .channels
            .last_mut()
            .expect("this trial's channel");
        for out in outs.iter().chain(config_outs.iter()) {
            for (req, reply) in &out.acked {
                trial_acks[req.kind as usize] += 1;
                match req.kind {
                    Kind::Task => {
                        let id = reply.json["task_id"].as_str().expect("task_id").to_string();
                        let desc = req.body["description"].as_str().unwrap().to_string();
                        self.ledger.tasks.insert(id, desc);
                    }
                    Kind::Direct => self.ledger.dms.push(Dm {
                        to: req.body["to"].as_str().unwrap().to_string(),
                        id: reply.json["id"].as_str().expect("message id").to_string(),
                        payload: req.body["payload"].clone(),
                    }),
                    Kind::HttpPublish => chan.publishes.push(Publish {
                        seq: reply.json["seq"].as_u64().expect("seq"),
                        id: None,
                        payload: req.body["payload"].clone(),
                    }),
                    Kind::ChannelCreate => self.ledger.extra_channels.push((
                        req.body["name"].as_str().unwrap().to_string(),
                        false,
                        chsub.clone(),
                    )),
                    Kind::Subscribe => {
                        let name = req.path.split('/').nth(3).unwrap();
                        let entry = self
                            .ledger
                            .extra_channels
                            .iter_mut()
                            .find(|(n, _, _)| n == name)
                            .expect("subscribed to a channel whose creation was acknowledged");
                        entry.1 = true;
                    }
                    Kind::Config => {}
                    Kind::Token => self.ledger.tokens.push((
                        req.body["agent_id"].as_str().unwrap().to_string(),
                        reply.json["token"].as_str().expect("token").to_string(),
                    )),
                    Kind::Completion | Kind::WsPublish => unreachable!(),
                }
            }
            if let Some(req) = &out.in_flight {
                match req.kind {
                    Kind::Task => {
                        let desc = req.body["description"].as_str().unwrap().to_string();
                        self.ledger.tasks_maybe.insert(desc);
                    }
                    Kind::Direct => self.ledger.dms_maybe.push((
                        req.body["to"].as_str().unwrap().to_string(),
                        req.body["payload"].clone(),
                    )),
                    Kind::HttpPublish => chan.maybe.push(req.body["payload"].clone()),
                    _ => {}
                }
            }
        }
        for (c, out) in self.ledger.config.iter_mut().zip(&config_outs) {
            c.acked = out
                .acked
                .last()
                .map(|(req, _)| config_field(&req.body, c.field));
            c.in_flight = out
                .in_flight
                .as_ref()
                .map(|req| config_field(&req.body, c.field));
        }
        for (seq, id, payload) in &published.acked {
            chan.publishes.push(Publish {
                seq: *seq,
                id: Some(id.clone()),
                payload: payload.clone(),
            });
        }
        trial_acks[Kind::WsPublish as usize] += published.acked.len();
        if let Some(p) = &published.in_flight {
            chan.maybe.push(p.clone());
        }
        for w in &mut self.workers {
            for task in w.completed.drain(..) {
                *self.ledger.complete_acks.entry(task).or_default() += 1;
                trial_acks[Kind::Completion as usize] += 1;
            }
        }
        for k in Kind::ALL {
            tally.add(k, trial_acks[k as usize]);
        }

        (at, trial_acks)
    }

    /// Reconnect the agents (they recover what they held), submit an urgent task, publish
    /// once more on trial `t`'s channel if `publish`, wait for the backlog to drain and
    /// check it. Returns the findings and a line about the agents' recovery.
    async fn resume(&mut self, t: usize, publish: bool, tally: &mut Tally) -> (Findings, String) {
        let addr = self.hub.addr.clone();
        let channel = format!("drill-t{t}");
        let mut findings = Findings::default();
        // --- Agents reconnect, scheduling resumes, the backlog drains ------------------------
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Acks::new();
        let mut agents = Vec::new();
        for mut w in std::mem::take(&mut self.workers) {
            let ws = w.connect(&addr).await;
            agents.push(tokio::spawn(w.run(ws, stop.clone(), acks.clone())));
        }
        let canary_desc = format!("canary-t{t}");
        let r = call(
            &addr,
            "POST",
            "/api/tasks",
            &self.submitter,
            Some(json!({
                "description": canary_desc,
                "priority": "urgent",
                "needed_capabilities": ["drill"],
            })),
        )
        .await;
        assert_eq!(r.status, 201, "canary: {r:?}");
        let canary = r.json["task_id"].as_str().expect("task_id").to_string();
        self.ledger.tasks.insert(canary.clone(), canary_desc);
        tally.add(Kind::Task, 1);
        // A publish after the restart continues the channel's numbering.
        if publish {
            let max_seq = channel_max_seq(&addr, &channel).await;
            let payload = json!({"trial": t, "via": "after-restart"});
            let r = call(
                &addr,
                "POST",
                &format!("/api/channels/{channel}/publish"),
                &self.http_pub,
                Some(json!({ "payload": payload })),
            )
            .await;
            assert_eq!(r.status, 200, "publish after the restart: {r:?}");
            let seq = r.json["seq"].as_u64().expect("seq");
            if seq <= max_seq {
                findings.other.push(format!(
                "{channel}: a publish after the restart got seq {seq}, the history already holds seq {max_seq}"
            ));
            }
            self.ledger
                .channels
                .last_mut()
                .unwrap()
                .publishes
                .push(Publish {
                    seq,
                    id: None,
                    payload,
                });
            tally.add(Kind::HttpPublish, 1);
        }

        let drained = common::eventually(PATIENCE, || async {
            let stats = get_json(&addr, "/api/tasks/stats", ADMIN).await;
            let by_status = stats["by_status"].as_object().cloned().unwrap_or_default();
            by_status.keys().all(|s| s == "completed") && stats["dead_letter"] == 0
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        for a in agents {
            self.workers.push(a.await.expect("agent"));
        }
        let (mut continued, mut reassigned, mut refused) = (0, 0, 0);
        for w in &mut self.workers {
            for task in w.completed.drain(..) {
                *self.ledger.complete_acks.entry(task).or_default() += 1;
                tally.add(Kind::Completion, 1);
            }
            continued += w.continued;
            reassigned += w.reassigned;
            refused += w.refused.len();
            w.continued = 0;
            w.reassigned = 0;
            w.refused.clear();
            w.held.clear();
        }
        if !drained {
            let (active, _) = all_tasks(&addr).await;
            for task in active.iter().filter(|t| t["status"] != "completed") {
                findings.other.push(format!(
                    "scheduling did not resume: not completed {PATIENCE:?} after the restart: {}",
                    brief(task)
                ));
            }
        }
        let reclaims = self.check_drained(&addr, t, &canary, &mut findings).await;
        let recovery = format!(
            "tasks held by agents at the kill {}, recovered: continued {continued}, reassigned {reassigned}, refused {refused}; reclaimed {reclaims:?}",
            self.held_at_kill
        );
        (findings, recovery)
    }

    /// Everything the ledger holds is there after the restart, once; nothing is there that
    /// was never sent. Returns, per kind, the writes that landed without an acknowledgement
    /// (each counted once, the first time a check finds it).
    async fn check_durable(&mut self, addr: &str, f: &mut Findings) -> Vec<(&'static str, usize)> {
        // (kind, key) of every write found that landed without an acknowledgement.
        let mut landed: Vec<(&'static str, String)> = Vec::new();
        let l = &self.ledger;

        // Tasks.
        let (active, dead) = all_tasks(addr).await;
        let mut by_id: HashMap<&str, &Value> = HashMap::new();
        for task in active.iter().chain(dead.iter()) {
            let id = task["id"].as_str().expect("task id");
            if by_id.insert(id, task).is_some() {
                f.duplicate
                    .push(format!("task listed twice: {}", brief(task)));
            }
        }
        for (id, desc) in &l.tasks {
            match by_id.get(id.as_str()) {
                None => f.lost.push(format!(
                    "task {id} ({desc:?}): submission acknowledged (201), not listed after kill -9"
                )),
                Some(task) if task["description"] != desc.as_str() => f.other.push(format!(
                    "task {id} was submitted as {desc:?}: {}",
                    brief(task)
                )),
                Some(_) => {}
            }
        }
        for (id, n) in &l.complete_acks {
            if *n > 1 {
                f.duplicate.push(format!(
                    "task {id}: {n} `task_ack complete` frames received"
                ));
            }
            match by_id.get(id.as_str()) {
                Some(task) if task["status"] == "completed" => {}
                Some(task) => f.lost.push(format!(
                    "task {id}: completion acknowledged (task_ack complete), now {}",
                    brief(task)
                )),
                None => f.lost.push(format!(
                    "task {id}: completion acknowledged (task_ack complete), task not listed"
                )),
            }
        }
        let mut unacked_descs: HashMap<&str, usize> = HashMap::new();
        for task in active.iter().chain(dead.iter()) {
            let completions = count_event(task, "completed");
            if completions > 1 {
                f.duplicate.push(format!(
                    "task completed {completions} times: {}",
                    brief(task)
                ));
            }
            let id = task["id"].as_str().unwrap();
            if l.tasks.contains_key(id) {
                continue;
            }
            let desc = task["description"].as_str().unwrap_or("");
            if l.tasks_maybe.contains(desc) {
                *unacked_descs.entry(desc).or_default() += 1;
                landed.push(("task submits", id.to_string()));
            } else {
                f.other
                    .push(format!("a task nobody submitted: {}", brief(task)));
            }
        }
        for (desc, n) in &unacked_descs {
            if *n > 1 {
                f.duplicate.push(format!(
                    "submission {desc:?} (in flight at a kill) landed {n} times"
                ));
            }
        }

        // Direct messages, in the offline agents' mailboxes (read with the admin token, so
        // that this check does not depend on the agents' tokens, checked below).
        for agent in &l.offline {
            let m = get_json(addr, &format!("/api/mailbox/{agent}"), ADMIN).await;
            let entries = list(&m["messages"]);
            let mut by_id: HashMap<&str, &Value> = HashMap::new();
            for e in &entries {
                let id = e["id"].as_str().unwrap_or("");
                if by_id.insert(id, e).is_some() {
                    f.duplicate
                        .push(format!("mailbox of {agent} holds message {id} twice"));
                }
            }
            let mut acked_ids = HashSet::new();
            for dm in l.dms.iter().filter(|d| &d.to == agent) {
                acked_ids.insert(dm.id.as_str());
                match by_id.get(dm.id.as_str()) {
                    None => f.lost.push(format!(
                        "direct message {} to {agent} (payload {}): acknowledged (200 sent), not in its mailbox ({} entries)",
                        dm.id,
                        dm.payload,
                        entries.len()
                    )),
                    Some(e) if e["payload"] != dm.payload || e["from"] != "dm-sender" => {
                        f.other.push(format!(
                            "direct message {} to {agent}: sent {} from dm-sender, mailbox has {e}",
                            dm.id, dm.payload
                        ))
                    }
                    Some(_) => {}
                }
            }
            for e in &entries {
                if acked_ids.contains(e["id"].as_str().unwrap_or("")) {
                    continue;
                }
                if l.dms_maybe
                    .iter()
                    .any(|(to, p)| to == agent && *p == e["payload"])
                {
                    landed.push(("direct messages", e["id"].to_string()));
                } else {
                    f.other.push(format!(
                        "mailbox of {agent} holds a message nobody sent: {e}"
                    ));
                }
            }
        }

        // Channels: subscribers, history, and the offline subscriber's copies.
        for c in &l.channels {
            let info = call(
                addr,
                "GET",
                &format!("/api/channels/{}", c.name),
                ADMIN,
                None,
            )
            .await;
            if info.status != 200 {
                f.lost.push(format!(
                    "channel {}: creation acknowledged (201), now {} {}",
                    c.name,
                    info.status,
                    String::from_utf8_lossy(&info.body)
                ));
            }
            let subs = info.json["subscribers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for s in c.subscribers.iter().filter(|_| info.status == 200) {
                if !subs.iter().any(|v| v == s.as_str()) {
                    f.lost.push(format!(
                        "{s}'s subscription to {}: acknowledged, subscribers now {subs:?}",
                        c.name
                    ));
                }
            }
            let h = get_json(
                addr,
                &format!("/api/channels/{}/history?limit=200", c.name),
                ADMIN,
            )
            .await;
            let entries = list(&h["messages"]);
            let mut by_seq: HashMap<u64, &Value> = HashMap::new();
            let mut ids: HashSet<&str> = HashSet::new();
            for e in &entries {
                let seq = e["seq"].as_u64().unwrap_or(0);
                if by_seq.insert(seq, e).is_some() {
                    f.duplicate
                        .push(format!("{}: history holds seq {seq} twice", c.name));
                }
                if !ids.insert(e["message"]["id"].as_str().unwrap_or("")) {
                    f.duplicate.push(format!(
                        "{}: history holds message {} twice",
                        c.name, e["message"]["id"]
                    ));
                }
            }
            // The id of every acknowledged publish, from the history for HTTP ones.
            let mut acked_ids: HashMap<String, &Value> = HashMap::new();
            let mut acked_seqs = HashSet::new();
            for p in &c.publishes {
                acked_seqs.insert(p.seq);
                match by_seq.get(&p.seq) {
                    None => f.lost.push(format!(
                        "{} publish seq {} (payload {}): acknowledged, not in the history ({} entries)",
                        c.name,
                        p.seq,
                        p.payload,
                        entries.len()
                    )),
                    Some(e) => {
                        let id = e["message"]["id"].as_str().unwrap_or("");
                        if e["message"]["payload"] != p.payload
                            || p.id.as_deref().is_some_and(|want| want != id)
                        {
                            f.lost.push(format!(
                                "{} publish seq {} (id {:?}, payload {}): acknowledged, the history has {e} at that seq",
                                c.name, p.seq, p.id, p.payload
                            ));
                        } else {
                            acked_ids.insert(id.to_string(), &p.payload);
                        }
                    }
                }
            }
            for e in &entries {
                let seq = e["seq"].as_u64().unwrap_or(0);
                if acked_seqs.contains(&seq) {
                    continue;
                }
                if c.maybe.contains(&e["message"]["payload"]) {
                    landed.push(("publishes", format!("{} {seq}", c.name)));
                } else {
                    f.other.push(format!(
                        "{}: the history holds a publish nobody sent: {e}",
                        c.name
                    ));
                }
            }
            let sub = &c.offline_sub;
            let m = get_json(addr, &format!("/api/mailbox/{sub}"), ADMIN).await;
            let copies = list(&m["messages"]);
            let mut copy_ids: HashMap<&str, &Value> = HashMap::new();
            for e in &copies {
                let id = e["id"].as_str().unwrap_or("");
                if copy_ids.insert(id, e).is_some() {
                    f.duplicate
                        .push(format!("mailbox of {sub} holds message {id} twice"));
                }
                if !ids.contains(id) {
                    f.other.push(format!(
                        "mailbox of {sub} holds a copy of {id}, which is not in {}'s history: {e}",
                        c.name
                    ));
                }
            }
            for (id, payload) in &acked_ids {
                let mut want = (*payload).clone();
                want["channel"] = json!(c.name);
                match copy_ids.get(id.as_str()) {
                    None => f.lost.push(format!(
                        "{} publish {id} (payload {payload}): acknowledged, no copy in the offline subscriber {sub}'s mailbox ({} entries)",
                        c.name,
                        copies.len()
                    )),
                    Some(e) if e["payload"] != want => f.other.push(format!(
                        "{sub}'s copy of {id}: payload {}, expected {want}",
                        e["payload"]
                    )),
                    Some(_) => {}
                }
            }
        }
        for (name, subscribed, sub) in &l.extra_channels {
            let r = call(addr, "GET", &format!("/api/channels/{name}"), ADMIN, None).await;
            if r.status != 200 {
                f.lost.push(format!(
                    "channel {name}: creation acknowledged (201), now {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            } else if *subscribed
                && !list(&r.json["subscribers"])
                    .iter()
                    .any(|v| v == sub.as_str())
            {
                f.lost.push(format!(
                    "{sub}'s subscription to {name}: acknowledged, subscribers now {}",
                    r.json["subscribers"]
                ));
            }
        }

        // Config: the last acknowledged value, or the one in flight at the kill.
        for c in &mut self.ledger.config {
            let stored = get_json(addr, c.path, ADMIN).await[c.field].clone();
            let base = c.acked.clone().unwrap_or_else(|| c.current.clone());
            let ok = stored == base || c.in_flight.as_ref() == Some(&stored);
            if !ok {
                let what = if c.acked.is_some() {
                    "last acknowledged"
                } else {
                    "read after the previous restart (nothing acknowledged since)"
                };
                f.lost.push(format!(
                    "config {}: {stored} after kill -9; {what}: {base}, in flight: {:?}",
                    c.field, c.in_flight
                ));
            } else if stored != base {
                landed.push(("config writes", format!("{} {stored}", c.field)));
            }
            c.current = stored;
            c.acked = None;
            c.in_flight = None;
        }

        // Tokens: each authenticates as its own agent (its mailbox is open to it).
        let checks = futures_util::stream::iter(self.ledger.tokens.iter().map(
            |(agent, token)| async move {
                let r = try_request(
                    addr,
                    "GET",
                    &format!("/api/mailbox/{agent}"),
                    Some(token),
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("GET /api/mailbox/{agent}: {e}"));
                (agent, r.status)
            },
        ))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        for (agent, status) in checks {
            if status != 200 {
                f.lost.push(format!(
                    "token of {agent}: minted (201), now GET /api/mailbox/{agent} with it answers {status}"
                ));
            }
        }
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for (kind, key) in landed {
            if self.ledger.landed_seen.insert(format!("{kind} {key}")) {
                match counts.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((kind, 1)),
                }
            }
        }
        counts
    }

    /// After the agents worked through the backlog: every task completed exactly once, the
    /// canary by a reconnected agent.
    /// Returns how trial `t`'s tasks were reclaimed (reason → count), for the trial's line.
    async fn check_drained(
        &self,
        addr: &str,
        t: usize,
        canary: &str,
        f: &mut Findings,
    ) -> std::collections::BTreeMap<String, usize> {
        let l = &self.ledger;
        let (active, dead) = all_tasks(addr).await;
        let mut ids = HashSet::new();
        let mut reclaims = std::collections::BTreeMap::new();
        let prefix = format!("t{t}-");
        for task in active.iter().chain(dead.iter()) {
            let id = task["id"].as_str().unwrap();
            ids.insert(id);
            let desc = task["description"].as_str().unwrap_or("");
            if desc.starts_with(&prefix) || desc == format!("canary-t{t}") {
                for e in task["history"].as_array().into_iter().flatten() {
                    if e["event"] == "reclaimed" {
                        let reason = e["details"].as_str().unwrap_or("?").to_string();
                        *reclaims.entry(reason).or_default() += 1;
                    }
                }
            }
            let completions = count_event(task, "completed");
            if completions > 1 {
                f.duplicate.push(format!(
                    "task completed {completions} times: {}",
                    brief(task)
                ));
            } else if task["status"] != "completed" || completions != 1 {
                f.other
                    .push(format!("not completed after the drain: {}", brief(task)));
            }
        }
        for id in l.tasks.keys() {
            if !ids.contains(id.as_str()) {
                f.lost.push(format!(
                    "task {id}: submission acknowledged, gone after the drain"
                ));
            }
        }
        for (id, n) in &l.complete_acks {
            if *n > 1 {
                f.duplicate.push(format!(
                    "task {id}: {n} `task_ack complete` frames received"
                ));
            }
        }
        if l.complete_acks.get(canary) != Some(&1) {
            f.other.push(format!(
                "the task submitted after the restart ({canary}) was not completed by a reconnected agent: {} task_ack complete",
                l.complete_acks.get(canary).copied().unwrap_or(0)
            ));
        }
        reclaims
    }
}

fn config_field(body: &Value, field: &str) -> Value {
    match field {
        "default_repo" => body["url"].clone(),
        _ => body[field].clone(),
    }
}

async fn channel_max_seq(addr: &str, channel: &str) -> u64 {
    let h = get_json(
        addr,
        &format!("/api/channels/{channel}/history?limit=200"),
        ADMIN,
    )
    .await;
    list(&h["messages"])
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_under_mixed_load() {
    let trials: usize = std::env::var("CRASH_DRILL_TRIALS")
        .ok()
        .map(|v| v.parse().expect("CRASH_DRILL_TRIALS is a number"))
        .unwrap_or(20);
    let seed: u64 = std::env::var("CRASH_DRILL_SEED")
        .ok()
        .map(|v| v.parse().expect("CRASH_DRILL_SEED is a number"))
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) | 1
        });
    println!("crash drill: {trials} trials, seed {seed} (replay with CRASH_DRILL_SEED={seed})");
    let test_start = Instant::now();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut t = 0;
    let mut hubs = 0;
    while t < trials {
        hubs += 1;
        let mut drill = Drill::start(hubs, seed).await;
        for _ in 0..TRIALS_PER_HUB.min(trials - t) {
            drill.trial(t, &mut rng, &mut tally).await;
            t += 1;
        }
        // One more kill -9, straight after the last drain: what the agents completed after
        // the last crash is checked after a crash too.
        drill.hub.restart().await;
        let at = Moment {
            trial: t - 1,
            kill: "kill -9 right after the last drain".to_string(),
        };
        drill.check_after_restart(&at, &mut Tally::default()).await;
    }
    // Any lost write or duplicate completion has panicked by now: both counts are zero.
    println!(
        "crash drill: {trials} trials on {hubs} data directories (seed {seed}), {:.1} s; \
         acknowledged writes verified after kill -9: {}; lost = 0, duplicate completions = 0; \
         landed without an acknowledgement (in flight at a kill): {}",
        test_start.elapsed().as_secs_f64(),
        tally.line(),
        tally.landed_line()
    );
}

/// Replace the contents of `dir` with those of `from` (both on disk, no hub running).
fn replace_dir_contents(dir: &std::path::Path, from: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("read data dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove");
        } else {
            std::fs::remove_file(&path).expect("remove");
        }
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(dir)
        .status()
        .expect("cp");
    assert!(status.success(), "cp -a {from:?}/. {dir:?}");
}

/// The drill's own checks must fail when a hub loses acknowledged writes or completes a
/// task twice. Stand-in for such a hub: the real one, whose data directory is rolled back
/// behind its back to a copy taken before a whole trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_catches_lost_writes_and_duplicate_completions() {
    let seed = 0x00D2_1115;
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut drill = Drill::start(1, seed).await;
    drill.trial(0, &mut rng, &mut tally).await;

    // Tasks queued while no agent is connected; then a copy of the data directory.
    let mut queued = Vec::new();
    for i in 0..4 {
        let desc = format!("rollback-{i}");
        let r = call(
            &drill.hub.addr,
            "POST",
            "/api/tasks",
            &drill.submitter,
            Some(json!({"description": desc, "needed_capabilities": ["drill"]})),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        let id = r.json["task_id"].as_str().unwrap().to_string();
        drill.ledger.tasks.insert(id.clone(), desc);
        queued.push(id);
    }
    drill.hub.kill9().await;
    let snapshot = tempfile::tempdir().expect("temp dir");
    replace_dir_contents(snapshot.path(), drill.hub.data_dir());
    drill.hub.restart().await;

    // A whole trial on top: every kind of write acknowledged, the queued tasks completed.
    drill.trial(1, &mut rng, &mut tally).await;
    for id in &queued {
        assert_eq!(drill.ledger.complete_acks.get(id), Some(&1), "{id}");
    }

    // Roll back and restart: what trial 1 acknowledged is gone, and the drill says so.
    drill.hub.kill9().await;
    replace_dir_contents(drill.hub.data_dir(), snapshot.path());
    drill.hub.restart().await;
    let addr = drill.hub.addr.clone();
    let mut f = Findings::default();
    drill.check_durable(&addr, &mut f).await;
    let report = f.report();
    for id in &queued {
        let want = format!("task {id}: completion acknowledged (task_ack complete), now ");
        assert!(
            f.lost.iter().any(|l| l.starts_with(&want)),
            "{want}\n{report}"
        );
    }
    for want in [
        "(\"t1-s",
        "direct message ",
        "drill-t1 publish seq ",
        "channel drill-t1: creation acknowledged",
        "channel drill-t1-x0: creation acknowledged",
        "config heartbeat_interval_ms: ",
        "token of tok-t1-w0-0: minted (201), now GET /api/mailbox/tok-t1-w0-0 with it answers 401",
    ] {
        assert!(
            f.lost.iter().any(|l| l.contains(want)),
            "no LOST finding containing {want:?}:\n{report}"
        );
    }
    assert!(f.duplicate.is_empty(), "{report}");

    // The agents are handed the rolled-back tasks again: each is completed twice on the
    // wire, which the drill reports as a duplicate completion.
    let (f, _) = drill.resume(2, false, &mut tally).await;
    let report = f.report();
    for id in &queued {
        let want = format!("task {id}: 2 `task_ack complete` frames received");
        assert!(f.duplicate.contains(&want), "{want}\n{report}");
    }
    println!(
        "self-test: the rolled-back hub gave {} LOST and {} DUPLICATE findings",
        f.lost.len(),
        f.duplicate.len()
    );
}
