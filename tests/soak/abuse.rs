//! The abuse patterns of the adversarial soak, one function each, named for the finding
//! of issue 9 it repeats; and what they count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, client_frame, try_raw_upgrade, try_request, Frame, TestHub, Ws};

/// New agents the registration flood creates (then it repeats existing ids: 409).
const REGISTRATIONS: u64 = 1500;
/// Payload of each broadcast, sent every `BROADCAST_EVERY` to every registered agent.
const BROADCAST_BYTES: usize = 64 << 10;
const BROADCAST_EVERY: Duration = Duration::from_secs(3);
/// Payload of each frame of the publish flood (under the 1 MiB frame limit).
const PUBLISH_BYTES: usize = 190 << 10;
/// The write-heavy patterns (broadcasts, the publish flood) pause while the data directory
/// is larger than this, to spare the machine's disk; the summary says if it happened.
const STORE_BUDGET: u64 = 2 << 30;

/// What the abusers and the normal agent saw.
#[derive(Default)]
pub struct Tally {
    pub counts: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Answers that must not happen: 5xx, an abuse that succeeded, a normal step that
    /// failed. The first few are kept.
    pub anomalies: Mutex<Vec<String>>,
    pub anomaly_count: AtomicU64,
    pub store_budget_hit: AtomicU64,
}

impl Tally {
    pub fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }

    pub fn anomaly(&self, what: String) {
        self.anomaly_count.fetch_add(1, Ordering::Relaxed);
        let mut list = self.anomalies.lock().unwrap();
        if list.len() < 20 {
            list.push(common::abbreviate(&what, 400));
        }
    }

    /// Check an abuser's answer: `expected` statuses are fine, 429 (rate limited) and 503
    /// `too_many_connections` are fine too, a 5xx or anything else is an anomaly.
    pub fn expect(&self, what: &'static str, r: &Result<common::Reply, String>, expected: &[u16]) {
        self.count(what);
        match r {
            Ok(r) if expected.contains(&r.status) || r.status == 429 => {}
            Ok(r) if r.status == 503 && r.json["error"] == "too_many_connections" => {}
            Ok(r) => self.anomaly(format!(
                "{what}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
            )),
            // The hub may shed or cut off an abuser's connection; that is not an answer.
            Err(_) => self.count("abuser connection dropped"),
        }
    }
}

/// Everything a pattern needs.
#[derive(Clone)]
pub struct Soak {
    pub addr: String,
    pub end: Instant,
    pub tally: Arc<Tally>,
    pub store_bytes: Arc<AtomicU64>,
}

impl Soak {
    pub fn running(&self) -> bool {
        Instant::now() < self.end
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<common::Reply, String> {
        let bytes = body.to_string().into_bytes();
        let future = try_request(
            &self.addr,
            "POST",
            path,
            token,
            Some(("application/json", bytes)),
        );
        timeout(Duration::from_secs(30), future)
            .await
            .unwrap_or_else(|_| Err("no answer within 30 s".into()))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<common::Reply, String> {
        timeout(
            Duration::from_secs(30),
            try_request(&self.addr, "GET", path, token, None),
        )
        .await
        .unwrap_or_else(|_| Err("no answer within 30 s".into()))
    }

    /// Wait while the store is over its budget (write-heavy patterns only).
    pub async fn within_store_budget(&self) {
        while self.running() && self.store_bytes.load(Ordering::Relaxed) > STORE_BUDGET {
            self.tally.store_budget_hit.store(1, Ordering::Relaxed);
            sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Bytes under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Finding 9 and the amplification's fuel: open registration of new agents, then of
/// existing ones (409); and sign-ins with made-up tokens.
pub async fn registration_and_login_flood(soak: Soak, lane: u64) {
    let mut n = lane;
    while soak.running() {
        let id = format!("reg-{}", n % REGISTRATIONS);
        let r = soak
            .post("/api/onboard/register", None, json!({"agent_id": id}))
            .await;
        soak.tally.expect("registration", &r, &[201, 409]);
        let token = format!("{:064x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let r = soak
            .post("/api/dashboard/login", None, json!({"token": token}))
            .await;
        soak.tally.expect("login with a made-up token", &r, &[401]);
        n += 2;
    }
}

/// Finding 1: a large broadcast to every registered agent, again and again.
pub async fn broadcasts(soak: Soak, token: String) {
    let blob = "b".repeat(BROADCAST_BYTES);
    while soak.running() {
        soak.within_store_budget().await;
        let r = soak
            .post(
                "/api/message",
                Some(&token),
                json!({"payload": {"blob": blob}}),
            )
            .await;
        soak.tally.expect("broadcast", &r, &[200]);
        sleep(BROADCAST_EVERY).await;
    }
}

/// Finding 2: an unidentified socket that sends pings as fast as it can and never reads;
/// when the hub cuts it off, another takes its place.
pub async fn pong_flood(soak: Soak) {
    let batch: Vec<u8> = (0..1000)
        .flat_map(|_| client_frame(0x89, &[b'p'; 125]))
        .collect();
    while soak.running() {
        match try_raw_upgrade(&soak.addr, "/ws").await {
            Ok(mut stream) => {
                soak.tally.count("pong flood socket");
                while soak.running() {
                    match timeout_at(soak.end, stream.write_all(&batch)).await {
                        Ok(Ok(())) => continue,
                        _ => break,
                    }
                }
            }
            Err(_) => soak.tally.count("abuser connection dropped"),
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Finding 3: a body dripped a byte at a time (by Content-Length, or as 1-byte chunks),
/// to the sign-in and to registration; when the hub answers 408, again.
pub async fn slow_drip(soak: Soak, lane: u64) {
    let (path, chunked) = match lane % 4 {
        0 => ("/api/dashboard/login", false),
        1 => ("/api/dashboard/login", true),
        2 => ("/api/onboard/register", false),
        _ => ("/api/onboard/register", true),
    };
    while soak.running() {
        let Ok(mut s) = TcpStream::connect(&soak.addr).await else {
            sleep(Duration::from_millis(500)).await;
            continue;
        };
        // Under the sign-in's 4 KiB limit: the body is read, not refused at once.
        let framing = if chunked {
            "transfer-encoding: chunked\r\n"
        } else {
            "content-length: 4000\r\n"
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\n{framing}\r\n"
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        soak.tally.count("dripping request");
        let piece: &[u8] = if chunked { b"1\r\n \r\n" } else { b" " };
        while soak.running() && s.write_all(piece).await.is_ok() {
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Finding 4: an agent that publishes large frames back to back without waiting for the
/// replies (which a second task reads).
pub async fn publish_flood(soak: Soak, hub_ws: Ws) {
    let frame = json!({"type": "channel_publish", "channel": "flood", "payload": {"text": "p".repeat(PUBLISH_BYTES)}})
        .to_string();
    let (mut sink, mut stream) = hub_ws.inner.split();
    let tally = soak.tally.clone();
    let end = soak.end;
    let reader = tokio::spawn(async move {
        while let Ok(Some(Ok(msg))) = timeout_at(end, stream.next()).await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("channel_published") => tally.count("flood publish answered"),
                    Some("error") if v["error"] == "rate_limited" => {
                        tally.count("flood publish rate limited")
                    }
                    Some("error") => tally.anomaly(format!("publish flood: {v}")),
                    _ => {}
                }
            }
        }
    });
    while soak.running() {
        soak.within_store_budget().await;
        match timeout_at(soak.end, sink.send(Message::Text(frame.clone().into()))).await {
            Ok(Ok(())) => soak.tally.count("flood publish sent"),
            _ => break,
        }
    }
    let _ = reader.await;
}

/// Findings 5 and 10: ids of a megabyte, over-long channel names, and ids with a NUL that
/// would forge the normal agent's mailbox keys — over HTTP and on a websocket.
pub async fn hostile_ids(soak: Soak, token: String, mut ws: Ws) {
    let huge = "h".repeat(1_000_000);
    let long = "c".repeat(200);
    while soak.running() {
        let r = soak
            .post(
                "/api/message",
                Some(&token),
                json!({"to": huge, "payload": {}}),
            )
            .await;
        soak.tally.expect("message to a 1 MB id", &r, &[400, 413]);
        let r = soak
            .post("/api/channels", Some(&token), json!({"name": long}))
            .await;
        soak.tally
            .expect("channel with a 200-byte name", &r, &[400]);
        let r = soak
            .post(
                "/api/message",
                Some(&token),
                json!({"to": "normal-worker\u{0}1", "payload": {"injected": true}}),
            )
            .await;
        soak.tally.expect("message to an id with a NUL", &r, &[400]);
        let r = soak
            .get("/api/mailbox/normal-worker%001", Some(&token))
            .await;
        soak.tally
            .expect("mailbox of an id with a NUL", &r, &[400, 403]);
        if !soak.running() {
            break;
        }
        ws.send_json(
            json!({"type": "message", "to": "normal-worker\u{0}2", "payload": {"injected": true}}),
        )
        .await;
        match next_reply(&mut ws).await {
            Some(Frame::Json(v)) if v["type"] == "error" => {
                soak.tally.count("frame to an id with a NUL")
            }
            other => soak
                .tally
                .anomaly(format!("a message frame to an id with a NUL: {other:?}")),
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// The next frame that is not a push (within 30 s), or the close.
async fn next_reply(ws: &mut Ws) -> Option<Frame> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ws.next_by(deadline).await? {
            Frame::Json(v) if common::PUSHES.contains(&v["type"].as_str().unwrap_or("")) => {
                continue
            }
            other => return Some(other),
        }
    }
}

/// Finding 6: connections that never send a byte, more than the cap; each one the hub
/// closes (idle timeout, or shed at the cap) is opened again a second later.
pub async fn idle_socket(soak: Soak) {
    while soak.running() {
        match timeout_at(soak.end, TcpStream::connect(&soak.addr)).await {
            Ok(Ok(mut s)) => {
                soak.tally.count("idle connection");
                let mut buf = [0u8; 64];
                // Until the hub closes it (or the soak ends).
                while let Ok(Ok(n)) = timeout_at(soak.end, s.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                }
            }
            Ok(Err(_)) => soak.tally.count("idle connection refused"),
            Err(_) => break,
        }
        sleep(Duration::from_secs(1)).await;
    }
}

/// Finding 7: identified agents subscribed to the flooded channel that never read; the
/// hub must cut them off. Every 15 s they come back.
pub async fn stalled_reader(soak: Soak, hub: Arc<TestHub>, n: usize, token: String) {
    let agent = format!("stalled-{n}");
    while soak.running() {
        let Some(mut ws) = try_identify(&hub, &agent, &token).await else {
            soak.tally.count("abuser connection dropped");
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        ws.send_json(json!({"type": "channel_subscribe", "channel": "flood"}))
            .await;
        soak.tally.count("stalled reader");
        let _ = timeout_at(soak.end, sleep(Duration::from_secs(15))).await;
        drop(ws);
    }
}

/// A socket identified as `agent`, unless the hub refused the connection (at the cap).
async fn try_identify(hub: &TestHub, agent: &str, token: &str) -> Option<Ws> {
    let mut ws = hub.ws("/ws", None).await.ok()?;
    ws.send_json(json!({"type": "identify", "agent_id": agent, "token": token}))
        .await;
    match ws.next_by(Instant::now() + Duration::from_secs(30)).await {
        Some(Frame::Json(v)) if v["type"] == "identified" => Some(ws),
        _ => None,
    }
}

/// Finding 8: identify with 50,000 capabilities (refused), then with the most the hub
/// accepts (64 of 128 bytes), and tasks that need 64 capabilities nobody has.
pub async fn capability_abuse(soak: Soak, hub: Arc<TestHub>, token: String) {
    let many: Vec<String> = (0..50_000).map(|i| format!("c{i}")).collect();
    let most: Vec<String> = (0..64).map(|i| format!("{i:0>128}")).collect();
    let needed: Vec<String> = (0..64).map(|i| format!("n{i:0>127}")).collect();
    let mut kept = None;
    while soak.running() {
        let Ok(mut ws) = hub.ws("/ws", None).await else {
            soak.tally.count("abuser connection dropped");
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        ws.send_json(
            json!({"type": "identify", "agent_id": "capper", "token": token, "capabilities": many}),
        )
        .await;
        match next_reply(&mut ws).await {
            Some(Frame::Json(v)) if v["error"] == "invalid_capabilities" => {
                soak.tally.count("50,000 capabilities refused")
            }
            other => soak
                .tally
                .anomaly(format!("identify with 50,000 capabilities: {other:?}")),
        }
        ws.send_json(
            json!({"type": "identify", "agent_id": "capper", "token": token, "capabilities": most}),
        )
        .await;
        match next_reply(&mut ws).await {
            Some(Frame::Json(v)) if v["type"] == "identified" => kept = Some(ws),
            other => soak
                .tally
                .anomaly(format!("identify with 64 capabilities: {other:?}")),
        }
        let r = soak
            .post(
                "/api/tasks",
                Some(&token),
                json!({"description": "nobody can", "needed_capabilities": needed}),
            )
            .await;
        soak.tally
            .expect("task needing 64 capabilities", &r, &[201]);
        sleep(Duration::from_secs(1)).await;
    }
    drop(kept);
}

/// Finding 11: viewer tokens minted for the normal agent's id and for `admin` try its
/// mailbox and admin actions.
pub async fn viewer_overreach(soak: Soak, as_worker: String, as_admin: String) {
    while soak.running() {
        let r = soak
            .get("/api/mailbox/normal-worker", Some(&as_worker))
            .await;
        soak.tally
            .expect("viewer reads an agent's mailbox", &r, &[401, 403]);
        let r = soak
            .post(
                "/api/mailbox/normal-worker/ack",
                Some(&as_worker),
                json!({"seq": 1}),
            )
            .await;
        soak.tally
            .expect("viewer acks an agent's mailbox", &r, &[401, 403]);
        let r = timeout(
            Duration::from_secs(30),
            try_request(
                &soak.addr,
                "DELETE",
                "/admin/tokens/admin",
                Some(&as_admin),
                None,
            ),
        )
        .await
        .unwrap_or_else(|_| Err("no answer".into()));
        soak.tally
            .expect("viewer revokes the admin's tokens", &r, &[401, 403]);
        let r = soak
            .post("/api/admin/reset", Some(&as_admin), json!({}))
            .await;
        soak.tally.expect("viewer resets the hub", &r, &[401, 403]);
        sleep(Duration::from_millis(300)).await;
    }
}
