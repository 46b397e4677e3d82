//! Black-box tests of the agent websocket `/ws`: the identify ladder, every non-task
//! message type and its reply, the unsolicited pushes, validation of field types,
//! connection replacement (F5), re-identify, presence, the reaper (F4), disconnect
//! clean-up, and delivery under load (200 agents).
//!
//! The contract is the reference description of the original hub (§3, §6.2, §6.3, §6.7,
//! §6.8) as amended by `docs/COMPATIBILITY.md`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestHub, Ws};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Frame types the hub sends unsolicited (§3.4). Everything else is a direct reply.
const PUSH_TYPES: &[&str] = &[
    "message",
    "channel_message",
    "channel_agent_joined",
    "agent_joined",
    "agent_left",
    "status_changed",
    "task_assign",
];

fn is_push(v: &Value) -> bool {
    v["type"].as_str().is_some_and(|t| PUSH_TYPES.contains(&t))
}

fn of_type<'a>(ty: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| v["type"] == ty
}

fn with_id<'a>(ty: &'a str, id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| v["type"] == ty && v["id"] == id
}

const WAIT: Duration = Duration::from_secs(10);
/// How long to keep listening to be sure that something does *not* arrive.
const QUIET: Duration = Duration::from_millis(300);

enum Got {
    Json(Value),
    Closed(Option<u16>, String),
    Timeout,
}

async fn read(ws: &mut Ws, deadline: Instant) -> Got {
    loop {
        match tokio::time::timeout_at(deadline, ws.inner.next()).await {
            Err(_) => return Got::Timeout,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Got::Json(serde_json::from_str(t.as_str()).expect("a JSON text frame"))
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return match frame {
                    Some(f) => Got::Closed(Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => Got::Closed(None, String::new()),
                }
            }
            Ok(Some(Ok(Message::Binary(_)))) => panic!("the hub sent a binary frame"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Got::Closed(None, String::new()),
        }
    }
}

/// An agent websocket with a buffer, so replies and pushes can be awaited in any order
/// without losing frames.
struct Client {
    id: String,
    ws: Ws,
    buf: Vec<Value>,
    closed: Option<(Option<u16>, String)>,
}

impl Client {
    async fn open(hub: &TestHub) -> Client {
        Client {
            id: "(unidentified)".to_string(),
            ws: hub.ws("/ws", None).await.expect("websocket upgrade"),
            buf: Vec::new(),
            closed: None,
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send_json(v).await
    }

    /// Read one frame into the buffer; false on timeout or close.
    async fn pull(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match read(&mut self.ws, deadline).await {
            Got::Json(v) => {
                self.buf.push(v);
                true
            }
            Got::Closed(code, reason) => {
                self.closed = Some((code, reason));
                false
            }
            Got::Timeout => false,
        }
    }

    /// The first frame (buffered or new) matching `pred`, removed from the buffer.
    async fn find(&mut self, pred: impl Fn(&Value) -> bool, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self.buf.iter().position(&pred) {
                return Some(self.buf.remove(pos));
            }
            if Instant::now() >= deadline || self.closed.is_some() {
                return None;
            }
            self.pull(deadline).await;
        }
    }

    async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self.find(pred, WAIT).await {
            Some(v) => v,
            None => panic!(
                "{}: no {what} arrived; buffered {:?}; closed {:?}",
                self.id, self.buf, self.closed
            ),
        }
    }

    /// The next direct reply (pushes are kept in the buffer).
    async fn reply(&mut self) -> Value {
        self.expect("reply", |v| !is_push(v)).await
    }

    async fn call(&mut self, v: Value) -> Value {
        self.send(v).await;
        self.reply().await
    }

    /// Keep reading for `quiet` so that late frames (duplicates) land in the buffer.
    async fn settle(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while self.pull(deadline).await {}
    }

    fn buffered(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.buf.iter().filter(|v| pred(v)).cloned().collect()
    }

    /// Wait for the close frame: (code, reason).
    async fn close_frame(&mut self, within: Duration) -> (Option<u16>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = &self.closed {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: not closed within {within:?}; buffered {:?}",
                self.id,
                self.buf
            );
            self.pull(deadline).await;
        }
    }

    fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    /// Close from the client side (close handshake).
    async fn close(mut self) {
        let _ = self.ws.inner.close(None).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.pull(deadline).await {}
    }

    async fn ping_ok(&mut self) {
        let r = self.call(json!({"type": "ping"})).await;
        assert_pong(&r);
    }
}

async fn identify(hub: &TestHub, id: &str, token: &str) -> Client {
    identify_with(hub, id, token, json!({})).await
}

async fn identify_with(hub: &TestHub, id: &str, token: &str, extra: Value) -> Client {
    let mut c = Client::open(hub).await;
    c.id = id.to_string();
    let mut msg = json!({"type": "identify", "agent_id": id, "token": token});
    for (k, v) in extra.as_object().expect("extra fields object") {
        msg[k] = v.clone();
    }
    let r = c.call(msg).await;
    assert_eq!(
        r,
        json!({"type": "identified", "agent_id": id}),
        "identify {id}"
    );
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An integer epoch-millisecond timestamp close to now.
fn assert_ms(v: &Value) -> i64 {
    let t = v
        .as_i64()
        .unwrap_or_else(|| panic!("timestamp is not an integer: {v}"));
    let now = now_ms();
    assert!(
        t > now - 120_000 && t < now + 5_000,
        "timestamp {t} is not epoch ms near {now}"
    );
    t
}

fn assert_hex16(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("id is not a string: {v}"));
    assert!(
        s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "id {s:?} is not 16 lowercase hex characters"
    );
    s.to_string()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn assert_pong(v: &Value) {
    assert_eq!(keys(v), ["timestamp", "type"], "{v}");
    assert_eq!(v["type"], "pong", "{v}");
    assert_ms(&v["timestamp"]);
}

/// `{"type":"error","error":code}` plus `"field"` when given; COMPATIBILITY.md allows an
/// explanatory `"message"` string and nothing else.
fn assert_error(v: &Value, code: &str, field: Option<&str>) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("error is not an object: {v}"));
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], code, "{v}");
    match field {
        Some(f) => assert_eq!(v["field"], f, "{v}"),
        None => assert!(!obj.contains_key("field"), "{v}"),
    }
    for k in obj.keys() {
        assert!(
            ["type", "error", "field", "message"].contains(&k.as_str()),
            "unexpected key {k:?} in {v}"
        );
    }
    if let Some(m) = obj.get("message") {
        assert!(m.is_string(), "{v}");
    }
}

/// The five-field agent object of `agents`, `agent_joined` and `status_changed`.
fn assert_agent(v: &Value, id: &str, name: &str, status: &str, caps: Value) -> i64 {
    assert_eq!(
        keys(v),
        ["agent_id", "capabilities", "connected_at", "name", "status"],
        "{v}"
    );
    assert_eq!(v["agent_id"], id, "{v}");
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["capabilities"], caps, "{v}");
    assert_ms(&v["connected_at"])
}

/// The `message` push of §3.4, exactly (no `to`).
fn assert_message_push(
    v: &Value,
    id: &str,
    from: &str,
    message_type: &str,
    payload: Value,
    reply_to: Value,
) {
    let ts = assert_ms(&v["timestamp"]);
    assert_eq!(
        *v,
        json!({
            "type": "message", "id": id, "from": from, "message_type": message_type,
            "payload": payload, "reply_to": reply_to, "timestamp": ts
        })
    );
}

fn assert_message_sent(v: &Value) -> String {
    assert_eq!(keys(v), ["id", "type"], "{v}");
    assert_eq!(v["type"], "message_sent", "{v}");
    assert_hex16(&v["id"])
}

async fn create_channel(hub: &TestHub, token: &str, name: &str) {
    let r = hub
        .send_json("POST", "/api/channels", Some(token), json!({"name": name}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json, json!({"status": "created", "channel": name}));
}

async fn listed_agents(hub: &TestHub) -> Vec<Value> {
    let r = hub.get("/api/agents", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut agents = r.json["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("{r:?}"))
        .clone();
    agents.sort_by(|a, b| a["agent_id"].as_str().cmp(&b["agent_id"].as_str()));
    agents
}

async fn listed_ids(hub: &TestHub) -> Vec<String> {
    listed_agents(hub)
        .await
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn connected(hub: &TestHub) -> u64 {
    let r = hub.get("/health", None).await;
    assert_eq!(r.status, 200);
    r.json["agents_connected"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r:?}"))
}

async fn mailbox(hub: &TestHub, id: &str, token: &str) -> Value {
    let r = hub.get(&format!("/api/mailbox/{id}"), Some(token)).await;
    assert_eq!(r.status, 200, "mailbox of {id}: {r:?}");
    assert_eq!(r.json["agent_id"], id);
    r.json
}

fn mailbox_ids(mb: &Value) -> Vec<String> {
    mb["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{mb}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn eventually(within: Duration, check: impl AsyncFnMut() -> bool) -> bool {
    let mut check = check;
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Identify (§3.2)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_ladder_rejects_in_order_then_accepts_a_retry() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let bob = hub.token("bob", "agent").await;
    let viewer = hub.token("screen", "viewer").await;

    let mut c = Client::open(&hub).await;
    let not_identified = json!({"type": "error", "error": "not_identified"});
    // 1. Anything that is not an identify object with an agent_id.
    for frame in [
        json!({"type": "ping"}),
        json!({"type": "list_agents"}),
        json!({"type": "message", "to": "bob", "payload": {"x": 1}}),
        json!({"type": "identify", "token": alpha}),
        json!([1, 2]),
    ] {
        assert_eq!(c.call(frame.clone()).await, not_identified, "{frame}");
    }
    // 2. Missing or unknown token; a viewer token cannot identify.
    for frame in [
        json!({"type": "identify", "agent_id": "alpha"}),
        json!({"type": "identify", "agent_id": "alpha", "token": "0".repeat(64)}),
        json!({"type": "identify", "agent_id": "screen", "token": viewer}),
    ] {
        assert_error(&c.call(frame.clone()).await, "invalid_token", None);
    }
    // 3. Another agent's token.
    let r = c
        .call(json!({"type": "identify", "agent_id": "alpha", "token": bob}))
        .await;
    assert_error(&r, "token_agent_mismatch", None);

    // Nothing registered so far; the failed attempts left the socket usable.
    assert!(c.is_open());
    assert_eq!(connected(&hub).await, 0);
    assert!(listed_agents(&hub).await.is_empty());
    assert_eq!(
        c.call(json!({"type": "ping"})).await,
        not_identified,
        "still unidentified after failures"
    );

    // 4. A retry with the right token succeeds.
    let r = c
        .call(json!({"type": "identify", "agent_id": "alpha", "token": alpha}))
        .await;
    assert_eq!(r, json!({"type": "identified", "agent_id": "alpha"}));
    c.id = "alpha".into();

    // Defaults: name = agent_id, status "connected", capabilities [].
    let r = c.call(json!({"type": "list_agents"})).await;
    assert_eq!(keys(&r), ["agents", "type"], "{r}");
    assert_eq!(r["type"], "agents");
    let agents = r["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{r}");
    assert_agent(&agents[0], "alpha", "alpha", "connected", json!([]));
    assert_eq!(connected(&hub).await, 1);

    // The message sent before identify was not routed.
    let mb = mailbox(&hub, "bob", &bob).await;
    assert_eq!(mb["messages"], json!([]), "{mb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_fields_are_echoed_and_extra_fields_ignored() {
    let hub = TestHub::start().await;
    let gamma = hub.token("gamma", "agent").await;
    let caps = json!(["code", {"name": "review", "level": 2}]);
    let mut c = identify_with(
        &hub,
        "gamma",
        &gamma,
        json!({
            "name": "Gamma Bot", "status": "busy", "capabilities": caps,
            "protocol_version": 2, "client_type": "sidecar"
        }),
    )
    .await;
    let r = c.call(json!({"type": "list_agents"})).await;
    assert_eq!(r["type"], "agents");
    let agents = r["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{r}");
    let at = assert_agent(&agents[0], "gamma", "Gamma Bot", "busy", caps.clone());

    let listed = listed_agents(&hub).await;
    assert_eq!(
        listed,
        vec![json!({
            "agent_id": "gamma", "name": "Gamma Bot", "status": "busy",
            "capabilities": caps, "connected_at": at, "fsm_state": "idle"
        })]
    );
}

// ---------------------------------------------------------------------------------------
// 2. Inbound message types (§3.3) and 3. pushes (§3.4)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_broadcast_messages_reply_message_sent_and_push() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    let mut alpha = identify(&hub, "alpha", &ta).await;
    let mut beta = identify(&hub, "beta", &tb).await;

    // Direct, every field given.
    let r = alpha
        .call(json!({
            "type": "message", "to": "beta", "message_type": "note",
            "payload": {"text": "hi", "n": [1, 2]}, "reply_to": "0123456789abcdef"
        }))
        .await;
    let d1 = assert_message_sent(&r);
    let push = beta.expect("direct message", with_id("message", &d1)).await;
    assert_message_push(
        &push,
        &d1,
        "alpha",
        "note",
        json!({"text": "hi", "n": [1, 2]}),
        json!("0123456789abcdef"),
    );

    // Direct, defaults: message_type "chat", payload {}, reply_to null.
    let d2 = assert_message_sent(&alpha.call(json!({"type": "message", "to": "beta"})).await);
    let push = beta.expect("direct message", with_id("message", &d2)).await;
    assert_message_push(&push, &d2, "alpha", "chat", json!({}), Value::Null);

    // The other way round.
    let d3 = assert_message_sent(
        &beta
            .call(json!({"type": "message", "to": "alpha", "payload": {"back": true}}))
            .await,
    );
    let push = alpha
        .expect("direct message", with_id("message", &d3))
        .await;
    assert_message_push(
        &push,
        &d3,
        "beta",
        "chat",
        json!({"back": true}),
        Value::Null,
    );

    // Broadcasts: `to` absent, null, or "broadcast"; echoed to the sender.
    let mut broadcasts = Vec::new();
    for (n, to) in [None, Some(Value::Null), Some(json!("broadcast"))]
        .into_iter()
        .enumerate()
    {
        let mut msg = json!({"type": "message", "message_type": "ann", "payload": {"n": n}});
        if let Some(to) = to {
            msg["to"] = to;
        }
        let b = assert_message_sent(&alpha.call(msg).await);
        for c in [&mut alpha, &mut beta] {
            let push = c.expect("broadcast", with_id("message", &b)).await;
            assert_message_push(&push, &b, "alpha", "ann", json!({"n": n}), Value::Null);
        }
        broadcasts.push(b);
    }
    let all: Vec<&String> = [&d1, &d2, &d3].into_iter().chain(&broadcasts).collect();
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y, "message ids are unique");
        }
    }

    // Nothing else: direct messages are not echoed, nothing arrives twice.
    alpha.settle(QUIET).await;
    beta.settle(QUIET).await;
    assert!(
        alpha.buffered(of_type("message")).is_empty(),
        "{:?}",
        alpha.buf
    );
    assert!(
        beta.buffered(of_type("message")).is_empty(),
        "{:?}",
        beta.buf
    );

    // Online agents get no mailbox copies; the sender never does.
    assert_eq!(mailbox(&hub, "alpha", &ta).await["messages"], json!([]));
    assert_eq!(mailbox(&hub, "beta", &tb).await["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_updates_reply_and_push_status_changed_to_everyone() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    let mut alpha = identify_with(
        &hub,
        "alpha",
        &ta,
        json!({"capabilities": ["code", "review"]}),
    )
    .await;
    let mut beta = identify_with(&hub, "beta", &tb, json!({"name": "Beta"})).await;

    // list_agents: self included, capabilities as sent.
    let r = beta.call(json!({"type": "list_agents"})).await;
    assert_eq!(keys(&r), ["agents", "type"], "{r}");
    let mut agents = r["agents"].as_array().unwrap().clone();
    agents.sort_by(|a, b| a["agent_id"].as_str().cmp(&b["agent_id"].as_str()));
    assert_eq!(agents.len(), 2, "{r}");
    let alpha_at = assert_agent(
        &agents[0],
        "alpha",
        "alpha",
        "connected",
        json!(["code", "review"]),
    );
    assert_agent(&agents[1], "beta", "Beta", "connected", json!([]));

    let r = alpha
        .call(json!({"type": "status", "status": "deploying"}))
        .await;
    assert_eq!(r, json!({"type": "status_updated"}));
    let expected = json!({
        "type": "status_changed",
        "agent": {
            "agent_id": "alpha", "name": "alpha", "status": "deploying",
            "capabilities": ["code", "review"], "connected_at": alpha_at
        }
    });
    // Pushed to everyone, the agent itself included.
    assert_eq!(
        alpha
            .expect("status_changed", of_type("status_changed"))
            .await,
        expected
    );
    assert_eq!(
        beta.expect("status_changed", of_type("status_changed"))
            .await,
        expected
    );

    let listed = listed_agents(&hub).await;
    assert_eq!(listed[0]["agent_id"], "alpha");
    assert_eq!(listed[0]["status"], "deploying");

    let r = alpha.call(json!({"type": "list_agents"})).await;
    let me = r["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "alpha")
        .cloned()
        .unwrap();
    assert_eq!(me["status"], "deploying");

    // Exactly one status_changed each.
    alpha.settle(QUIET).await;
    beta.settle(QUIET).await;
    assert!(alpha.buffered(of_type("status_changed")).is_empty());
    assert!(beta.buffered(of_type("status_changed")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_operations_reply_and_push() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    create_channel(&hub, &ta, "dev").await;
    let r = hub
        .send_json(
            "POST",
            "/api/channels",
            Some(&ta),
            json!({"name": "ops", "description": "Operations"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let mut alpha = identify(&hub, "alpha", &ta).await;
    let mut beta = identify(&hub, "beta", &tb).await;

    // Subscribe; the reply carries the channel as sent.
    let r = alpha
        .call(json!({"type": "channel_subscribe", "channel": "dev"}))
        .await;
    assert_eq!(r, json!({"type": "channel_subscribed", "channel": "dev"}));
    let r = alpha
        .call(json!({"type": "channel_subscribe", "channel": "#Dev"}))
        .await;
    assert_eq!(
        r,
        json!({"type": "channel_subscribed", "channel": "#Dev", "note": "already_subscribed"})
    );
    let r = alpha
        .call(json!({"type": "channel_subscribe", "channel": "nope"}))
        .await;
    assert_error(&r, "channel_not_found", None);

    let r = beta
        .call(json!({"type": "channel_subscribe", "channel": "dev"}))
        .await;
    assert_eq!(r, json!({"type": "channel_subscribed", "channel": "dev"}));
    let joined = alpha
        .expect("channel_agent_joined", of_type("channel_agent_joined"))
        .await;
    assert_eq!(
        joined,
        json!({"type": "channel_agent_joined", "channel": "dev", "agent_id": "beta"})
    );

    // Publish: the reply carries the channel as sent; the push the normalised name.
    let r = alpha
        .call(json!({
            "type": "channel_publish", "channel": "#Dev", "message_type": "note",
            "payload": {"text": "one"}
        }))
        .await;
    assert_eq!(keys(&r), ["channel", "id", "seq", "type"], "{r}");
    assert_eq!(r["type"], "channel_published");
    assert_eq!(r["channel"], "#Dev");
    assert_eq!(r["seq"], 1);
    let id1 = assert_hex16(&r["id"]);
    let push = beta
        .expect("channel_message", with_id("channel_message", &id1))
        .await;
    let ts1 = assert_ms(&push["timestamp"]);
    assert_eq!(
        push,
        json!({
            "type": "channel_message", "channel": "dev", "id": id1, "from": "alpha",
            "message_type": "note", "payload": {"text": "one"}, "reply_to": null,
            "timestamp": ts1
        })
    );

    let r = beta
        .call(json!({
            "type": "channel_publish", "channel": "dev", "payload": {"text": "two"},
            "reply_to": id1
        }))
        .await;
    assert_eq!(r["type"], "channel_published", "{r}");
    assert_eq!(r["channel"], "dev");
    assert_eq!(r["seq"], 2);
    let id2 = assert_hex16(&r["id"]);
    let push = alpha
        .expect("channel_message", with_id("channel_message", &id2))
        .await;
    assert_eq!(push["channel"], "dev");
    assert_eq!(push["from"], "beta");
    assert_eq!(push["message_type"], "chat");
    assert_eq!(push["payload"], json!({"text": "two"}));
    assert_eq!(push["reply_to"], json!(id1));

    // History: ascending seq, the stored message without a `channel` key in the payload.
    let r = alpha
        .call(json!({"type": "channel_history", "channel": "dev"}))
        .await;
    assert_eq!(keys(&r), ["channel", "messages", "type"], "{r}");
    assert_eq!(r["type"], "channel_history");
    assert_eq!(r["channel"], "dev");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{r}");
    for (entry, (seq, id, from, ty, payload)) in msgs.iter().zip([
        (1, &id1, "alpha", "note", json!({"text": "one"})),
        (2, &id2, "beta", "chat", json!({"text": "two"})),
    ]) {
        assert_eq!(keys(entry), ["message", "seq", "stored_at"], "{entry}");
        assert_eq!(entry["seq"], seq);
        assert_ms(&entry["stored_at"]);
        let m = &entry["message"];
        for k in [
            "id",
            "from",
            "to",
            "type",
            "payload",
            "reply_to",
            "timestamp",
        ] {
            assert!(m.get(k).is_some(), "MessageJSON lacks {k}: {m}");
        }
        assert_eq!(m["id"], json!(id));
        assert_eq!(m["from"], from);
        assert_eq!(m["type"], ty);
        assert_eq!(m["payload"], payload);
    }
    // The newest `limit` after `since` (COMPATIBILITY.md, F16).
    let r = beta
        .call(json!({"type": "channel_history", "channel": "dev", "limit": 1}))
        .await;
    let seqs: Vec<&Value> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["seq"])
        .collect();
    assert_eq!(seqs, [&json!(2)], "{r}");
    let r = beta
        .call(json!({"type": "channel_history", "channel": "dev", "since": 1}))
        .await;
    let seqs: Vec<&Value> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["seq"])
        .collect();
    assert_eq!(seqs, [&json!(2)], "{r}");

    // list_channels.
    let r = alpha.call(json!({"type": "list_channels"})).await;
    assert_eq!(keys(&r), ["channels", "type"], "{r}");
    assert_eq!(r["type"], "channels");
    let mut chans = r["channels"].as_array().unwrap().clone();
    chans.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    assert_eq!(chans.len(), 2, "{r}");
    let (c0, c1) = (
        assert_ms(&chans[0]["created_at"]),
        assert_ms(&chans[1]["created_at"]),
    );
    assert_eq!(
        chans,
        vec![
            json!({"name": "dev", "description": "", "subscriber_count": 2, "created_at": c0}),
            json!({"name": "ops", "description": "Operations", "subscriber_count": 0, "created_at": c1}),
        ]
    );

    // Unsubscribe detaches: no further pushes.
    let r = beta
        .call(json!({"type": "channel_unsubscribe", "channel": "dev"}))
        .await;
    assert_eq!(r, json!({"type": "channel_unsubscribed", "channel": "dev"}));
    let r = beta
        .call(json!({"type": "channel_unsubscribe", "channel": "nope"}))
        .await;
    assert_error(&r, "channel_not_found", None);
    let r = alpha
        .call(json!({"type": "channel_publish", "channel": "dev", "payload": {"text": "three"}}))
        .await;
    assert_eq!(r["seq"], 3, "{r}");
    let id3 = assert_hex16(&r["id"]);
    let r = alpha
        .call(json!({"type": "channel_publish", "channel": "nope", "payload": {}}))
        .await;
    assert_error(&r, "channel_not_found", None);

    alpha.settle(QUIET).await;
    beta.settle(QUIET).await;
    // The publisher never gets its own channel_message; the unsubscribed agent gets no more;
    // nobody is told about its own subscription.
    assert!(
        alpha.buffered(of_type("channel_message")).is_empty(),
        "{:?}",
        alpha.buf
    );
    assert!(
        beta.buffered(of_type("channel_message")).is_empty(),
        "{:?}",
        beta.buf
    );
    assert!(
        alpha.buffered(of_type("channel_agent_joined")).is_empty(),
        "{:?}",
        alpha.buf
    );
    assert!(
        beta.buffered(of_type("channel_agent_joined")).is_empty(),
        "{:?}",
        beta.buf
    );
    let _ = id3;
    // Online subscribers get no mailbox copies (F15).
    assert_eq!(mailbox(&hub, "alpha", &ta).await["messages"], json!([]));
    assert_eq!(mailbox(&hub, "beta", &tb).await["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_unknown_types_and_missing_fields() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    create_channel(&hub, &ta, "dev").await;
    let mut alpha = identify(&hub, "alpha", &ta).await;

    alpha.ping_ok().await;

    for frame in [
        json!({"type": "bogus"}),
        json!({"type": "no_such_thing", "channel": "dev"}),
        json!({"type": "identified"}),
        json!({"foo": 1}),
        // Missing required fields fall through to unknown_message_type.
        json!({"type": "status"}),
        json!({"type": "channel_subscribe"}),
        json!({"type": "channel_unsubscribe"}),
        json!({"type": "channel_publish", "channel": "dev"}),
        json!({"type": "channel_publish", "payload": {"x": 1}}),
        json!({"type": "channel_history"}),
    ] {
        let r = alpha.call(frame.clone()).await;
        assert_error(&r, "unknown_message_type", None);
    }
    assert!(alpha.is_open());
    alpha.ping_ok().await;

    // The publish without a payload stored nothing; the status was not changed.
    let r = hub.get("/api/channels/dev/history", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["messages"], json!([]), "{r:?}");
    assert_eq!(listed_agents(&hub).await[0]["status"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_joined_goes_to_others_and_agent_left_on_disconnect() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    let mut alpha = identify(&hub, "alpha", &ta).await;
    let mut beta = identify_with(
        &hub,
        "beta",
        &tb,
        json!({"name": "Beta", "status": "ready", "capabilities": ["x"]}),
    )
    .await;

    let joined = alpha.expect("agent_joined", of_type("agent_joined")).await;
    assert_eq!(keys(&joined), ["agent", "type"], "{joined}");
    assert_agent(&joined["agent"], "beta", "Beta", "ready", json!(["x"]));

    // Never about oneself; alpha joined before beta, so beta hears of no join at all.
    alpha.settle(QUIET).await;
    beta.settle(QUIET).await;
    assert!(
        alpha.buffered(of_type("agent_joined")).is_empty(),
        "{:?}",
        alpha.buf
    );
    assert!(
        beta.buffered(of_type("agent_joined")).is_empty(),
        "{:?}",
        beta.buf
    );

    beta.close().await;
    let left = alpha.expect("agent_left", of_type("agent_left")).await;
    assert_eq!(left, json!({"type": "agent_left", "agent_id": "beta"}));
    alpha.settle(QUIET).await;
    assert!(
        alpha.buffered(of_type("agent_left")).is_empty(),
        "{:?}",
        alpha.buf
    );
}

// ---------------------------------------------------------------------------------------
// 4. Validation (C2, C3, C5)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_field_types_are_errors_and_the_socket_stays_usable() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    create_channel(&hub, &ta, "dev").await;
    let mut alpha = identify(&hub, "alpha", &ta).await;
    let mut beta = identify(&hub, "beta", &tb).await;
    for c in [&mut alpha, &mut beta] {
        let r = c
            .call(json!({"type": "channel_subscribe", "channel": "dev"}))
            .await;
        assert_eq!(r["type"], "channel_subscribed", "{r}");
    }

    // C2: a payload that is not an object.
    for payload in [json!("text"), json!([1, 2]), json!(42), json!(true)] {
        let r = alpha
            .call(json!({"type": "channel_publish", "channel": "dev", "payload": payload}))
            .await;
        assert_error(&r, "invalid_field", Some("payload"));
        alpha.ping_ok().await;
    }

    // C3: a channel that is not a string, in every channel operation.
    for frame in [
        json!({"type": "channel_subscribe", "channel": 5}),
        json!({"type": "channel_unsubscribe", "channel": ["dev"]}),
        json!({"type": "channel_publish", "channel": {"name": "dev"}, "payload": {}}),
        json!({"type": "channel_history", "channel": 7}),
    ] {
        let r = alpha.call(frame.clone()).await;
        assert_error(&r, "invalid_field", Some("channel"));
        alpha.ping_ok().await;
    }

    // C3: limit/since must be integers; limit at least 1 (above 200 it is clamped).
    for (frame, field) in [
        (
            json!({"type": "channel_history", "channel": "dev", "limit": "abc"}),
            "limit",
        ),
        (
            json!({"type": "channel_history", "channel": "dev", "limit": 1.5}),
            "limit",
        ),
        (
            json!({"type": "channel_history", "channel": "dev", "limit": 0}),
            "limit",
        ),
        (
            json!({"type": "channel_history", "channel": "dev", "since": "x"}),
            "since",
        ),
    ] {
        let r = alpha.call(frame.clone()).await;
        assert_error(&r, "invalid_field", Some(field));
        alpha.ping_ok().await;
    }

    // Frames that are not JSON, and binary frames (C5).
    alpha.send_text_frame("{not json").await;
    assert_eq!(
        alpha.reply().await,
        json!({"type": "error", "error": "invalid_json"})
    );
    alpha.ping_ok().await;
    alpha.ws.send_binary(vec![0, 1, 2, 255]).await;
    assert_error(&alpha.reply().await, "binary_frames_not_supported", None);
    alpha.ping_ok().await;

    // Still subscribed, still identified, nothing stored or pushed.
    assert!(alpha.is_open());
    let r = hub.get("/api/channels/dev/history", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json,
        json!({"channel": "dev", "messages": [], "count": 0})
    );
    beta.settle(QUIET).await;
    assert!(
        beta.buffered(of_type("channel_message")).is_empty(),
        "{:?}",
        beta.buf
    );
    assert_eq!(connected(&hub).await, 2);

    // And the channel works: the first real publish is seq 1.
    let r = alpha
        .call(json!({"type": "channel_publish", "channel": "dev", "payload": {"ok": true}}))
        .await;
    assert_eq!(r["type"], "channel_published", "{r}");
    assert_eq!(r["seq"], 1);
    let id = assert_hex16(&r["id"]);
    beta.expect("channel_message", with_id("channel_message", &id))
        .await;
}

impl Client {
    async fn send_text_frame(&mut self, s: &str) {
        self.ws.send_text(s).await
    }
}

// ---------------------------------------------------------------------------------------
// 5. A newer connection replaces the older one (F5)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_replaces_the_first() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tbob = hub.token("bob", "agent").await;

    let mut first = identify(&hub, "alpha", &ta).await;
    let mut second = identify(&hub, "alpha", &ta).await;
    assert_eq!(
        first.close_frame(Duration::from_secs(5)).await,
        (Some(4001), "replaced by a newer connection".to_string())
    );

    // Direct messages go to the newer connection.
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&tbob),
            json!({"to": "alpha", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = assert_hex16(&r.json["id"]);
    let push = second
        .expect("direct message", with_id("message", &id))
        .await;
    assert_message_push(&push, &id, "bob", "chat", json!({"n": 1}), Value::Null);

    // The older socket's clean-up removed nothing of the newer one's.
    second.settle(Duration::from_millis(500)).await;
    assert!(
        second.buffered(of_type("agent_left")).is_empty(),
        "the live connection was told it left: {:?}",
        second.buf
    );
    assert!(second.is_open());
    second.ping_ok().await;
    let listed = listed_agents(&hub).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["agent_id"], "alpha");
    assert_eq!(connected(&hub).await, 1);
    assert_eq!(mailbox(&hub, "alpha", &ta).await["messages"], json!([]));

    // A second message still goes to the live socket, not the mailbox.
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&tbob),
            json!({"to": "alpha", "payload": {"n": 2}}),
        )
        .await;
    let id2 = assert_hex16(&r.json["id"]);
    second
        .expect("direct message", with_id("message", &id2))
        .await;
    assert_eq!(mailbox(&hub, "alpha", &ta).await["messages"], json!([]));
}

// ---------------------------------------------------------------------------------------
// 6. Re-identify on the same socket
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_identify_on_the_same_socket_does_not_duplicate_pushes() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    create_channel(&hub, &ta, "dev").await;
    let mut alpha = identify(&hub, "alpha", &ta).await;
    let r = alpha
        .call(json!({"type": "channel_subscribe", "channel": "dev"}))
        .await;
    assert_eq!(r, json!({"type": "channel_subscribed", "channel": "dev"}));
    let r = alpha
        .call(json!({"type": "identify", "agent_id": "alpha", "token": ta}))
        .await;
    assert_eq!(r, json!({"type": "identified", "agent_id": "alpha"}));
    let mut beta = identify(&hub, "beta", &tb).await;

    let b = assert_message_sent(
        &beta
            .call(json!({"type": "message", "payload": {"all": 1}}))
            .await,
    );
    let d = assert_message_sent(
        &beta
            .call(json!({"type": "message", "to": "alpha", "payload": {"one": 1}}))
            .await,
    );
    let r = beta
        .call(json!({"type": "channel_publish", "channel": "dev", "payload": {"ch": 1}}))
        .await;
    assert_eq!(r["type"], "channel_published", "{r}");
    let c = assert_hex16(&r["id"]);

    alpha.expect("broadcast", with_id("message", &b)).await;
    alpha.expect("direct message", with_id("message", &d)).await;
    alpha
        .expect("channel_message", with_id("channel_message", &c))
        .await;
    beta.expect("broadcast echo", with_id("message", &b)).await;
    alpha.settle(QUIET).await;
    beta.settle(QUIET).await;
    assert!(
        alpha.buffered(of_type("message")).is_empty(),
        "duplicates: {:?}",
        alpha.buf
    );
    assert!(
        alpha.buffered(of_type("channel_message")).is_empty(),
        "duplicates: {:?}",
        alpha.buf
    );
    assert!(
        beta.buffered(of_type("message")).is_empty(),
        "duplicates: {:?}",
        beta.buf
    );

    assert_eq!(listed_ids(&hub).await, ["alpha", "beta"]);
    assert_eq!(connected(&hub).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_identify_as_another_agent_switches_the_socket() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tg = hub.token("gamma", "agent").await;
    let tb = hub.token("beta", "agent").await;
    let mut sock = identify(&hub, "alpha", &ta).await;
    let mut beta = identify(&hub, "beta", &tb).await;
    let r = sock
        .call(json!({"type": "identify", "agent_id": "gamma", "token": tg}))
        .await;
    assert_eq!(r, json!({"type": "identified", "agent_id": "gamma"}));
    sock.id = "gamma".into();

    assert!(
        eventually(Duration::from_secs(5), async || listed_ids(&hub).await
            == ["beta", "gamma"])
        .await,
        "presence after the switch: {:?}",
        listed_ids(&hub).await
    );
    assert_eq!(connected(&hub).await, 2);

    let to_gamma = assert_message_sent(
        &beta
            .call(json!({"type": "message", "to": "gamma", "payload": {}}))
            .await,
    );
    let to_alpha = assert_message_sent(
        &beta
            .call(json!({"type": "message", "to": "alpha", "payload": {}}))
            .await,
    );
    let push = sock
        .expect("direct message", with_id("message", &to_gamma))
        .await;
    assert_eq!(push["from"], "beta");
    sock.settle(QUIET).await;
    assert!(
        sock.buffered(with_id("message", &to_alpha)).is_empty(),
        "{:?}",
        sock.buf
    );
    assert_eq!(mailbox_ids(&mailbox(&hub, "alpha", &ta).await), [to_alpha]);
    assert_eq!(mailbox(&hub, "gamma", &tg).await["messages"], json!([]));
}

// ---------------------------------------------------------------------------------------
// 7. Presence (F6) and disconnect
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_shows_idle_right_away_and_forgets_disconnected_agents() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    assert_eq!(connected(&hub).await, 0);
    let alpha = identify(&hub, "alpha", &ta).await;
    let listed = listed_agents(&hub).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        keys(&listed[0]),
        [
            "agent_id",
            "capabilities",
            "connected_at",
            "fsm_state",
            "name",
            "status"
        ]
    );
    assert_eq!(listed[0]["fsm_state"], "idle", "F6: {listed:?}");
    assert_eq!(listed[0]["status"], "connected");
    assert_ms(&listed[0]["connected_at"]);
    assert_eq!(connected(&hub).await, 1);

    let beta = identify(&hub, "beta", &tb).await;
    assert_eq!(listed_ids(&hub).await, ["alpha", "beta"]);
    assert_eq!(connected(&hub).await, 2);

    // A clean close.
    alpha.close().await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            listed_ids(&hub).await == ["beta"] && connected(&hub).await == 1
        })
        .await,
        "alpha still present: {:?}",
        listed_ids(&hub).await
    );

    // A dropped TCP connection without a close handshake.
    drop(beta);
    assert!(
        eventually(Duration::from_secs(5), async || {
            listed_ids(&hub).await.is_empty() && connected(&hub).await == 0
        })
        .await,
        "beta still present: {:?}",
        listed_ids(&hub).await
    );
}

// ---------------------------------------------------------------------------------------
// 8. Reaper (F4)
// ---------------------------------------------------------------------------------------

/// An agent that sends nothing and answers no ping (a hung peer) is closed once silent for
/// the TTL; one that sends JSON pings, and one that only listens (its websocket library
/// answers the hub's pings, as the original's `connect.js` relies on), are spared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_closes_silent_agents_and_spares_pinging_ones() {
    let hub = TestHub::start_with(&[
        "--presence-ttl",
        "1s",
        "--reaper-interval",
        "200ms",
        "--ws-idle-timeout",
        "30s",
    ])
    .await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    let tg = hub.token("gamma", "agent").await;

    let mut silent = common::raw_upgrade(&hub, "/ws").await;
    let hello = json!({"type": "identify", "agent_id": "alpha", "token": ta}).to_string();
    tokio::io::AsyncWriteExt::write_all(&mut silent, &common::client_frame(0x81, hello.as_bytes()))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut pinger = identify(&hub, "beta", &tb).await;
    let mut listener = identify(&hub, "gamma", &tg).await;
    let t1 = Instant::now();

    let (closed, (), ()) = tokio::join!(
        async {
            let (code, _) = common::raw_close_code(&mut silent, Duration::from_secs(5)).await;
            (code, t0.elapsed())
        },
        async {
            while t1.elapsed() < Duration::from_secs(3) {
                pinger.ping_ok().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        },
        async {
            // Reads (and so answers pings), never sends.
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && listener.pull(end).await {}
        }
    );
    let (code, elapsed) = closed;
    assert_eq!(code, Some(4002), "stale connection, after {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_secs(3),
        "closed after {elapsed:?}, expected between the 1 s TTL and 3 s"
    );

    // The pinging agent and the listener survived well past the TTL.
    assert!(pinger.is_open(), "{:?}", pinger.closed);
    assert!(listener.is_open(), "{:?}", listener.closed);
    pinger.ping_ok().await;
    assert!(t1.elapsed() >= Duration::from_millis(2500));
    assert_eq!(listed_ids(&hub).await, ["beta", "gamma"]);
    assert_eq!(connected(&hub).await, 2);
    let left = pinger.expect("agent_left", of_type("agent_left")).await;
    assert_eq!(left, json!({"type": "agent_left", "agent_id": "alpha"}));
}

// ---------------------------------------------------------------------------------------
// 9. Disconnect clean-up (§3.5)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_disconnected_agent_go_to_its_mailbox() {
    let hub = TestHub::start().await;
    let ta = hub.token("alpha", "agent").await;
    let tb = hub.token("beta", "agent").await;
    let alpha = identify(&hub, "alpha", &ta).await;
    let mut beta = identify(&hub, "beta", &tb).await;

    alpha.close().await;
    let left = beta.expect("agent_left", of_type("agent_left")).await;
    assert_eq!(left, json!({"type": "agent_left", "agent_id": "alpha"}));
    assert!(
        eventually(Duration::from_secs(5), async || listed_ids(&hub).await
            == ["beta"])
        .await
    );

    let d = assert_message_sent(
        &beta
            .call(json!({
                "type": "message", "to": "alpha", "message_type": "note",
                "payload": {"n": 1}, "reply_to": "fedcba9876543210"
            }))
            .await,
    );
    let b = assert_message_sent(
        &beta
            .call(json!({"type": "message", "payload": {"n": 2}}))
            .await,
    );
    beta.expect("broadcast echo", with_id("message", &b)).await;

    let mb = mailbox(&hub, "alpha", &ta).await;
    assert_eq!(mailbox_ids(&mb), [d.clone(), b.clone()], "{mb}");
    assert_eq!(mb["count"], 2);
    let msgs = mb["messages"].as_array().unwrap();
    let direct = &msgs[0];
    assert_eq!(direct["from"], "beta");
    assert_eq!(direct["to"], "alpha");
    assert_eq!(direct["type"], "note");
    assert_eq!(direct["payload"], json!({"n": 1}));
    assert_eq!(direct["reply_to"], "fedcba9876543210");
    assert_ms(&direct["timestamp"]);
    assert_eq!(msgs[1]["from"], "beta");
    assert_eq!(msgs[1]["payload"], json!({"n": 2}));
    let (s0, s1) = (
        msgs[0]["seq"].as_i64().unwrap(),
        msgs[1]["seq"].as_i64().unwrap(),
    );
    assert!(s0 < s1, "{mb}");
    assert_eq!(mb["last_seq"], s1);

    // The sender, online, has no copy of its own broadcast.
    assert_eq!(mailbox(&hub, "beta", &tb).await["messages"], json!([]));
}

// ---------------------------------------------------------------------------------------
// 10. Delivery under load: 200 connected agents, 10 offline ones
// ---------------------------------------------------------------------------------------

const N: usize = 200;
const OFFLINE: usize = 10;
const PUBLISHERS: [usize; 5] = [0, 40, 80, 120, 160];

fn online_id(i: usize) -> String {
    format!("a{i:03}")
}

fn offline_id(k: usize) -> String {
    format!("off{k}")
}

fn is_subscriber(i: usize) -> bool {
    i.is_multiple_of(10)
}

fn is_broadcaster(i: usize) -> bool {
    i % 20 == 5
}

/// A connected agent whose incoming frames are all logged by a reader task.
struct Peer {
    id: String,
    sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    log: Arc<Mutex<Vec<Value>>>,
    scan: usize,
}

impl Peer {
    fn from_client(c: Client) -> Peer {
        let (sink, mut stream) = c.ws.inner.split();
        let log = Arc::new(Mutex::new(c.buf));
        let writer = log.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Text(t) => writer
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(t.as_str()).expect("json frame")),
                    Message::Close(f) => {
                        writer.lock().unwrap().push(
                            json!({"type": "__closed__", "code": f.map(|f| u16::from(f.code))}),
                        );
                        break;
                    }
                    _ => {}
                }
            }
        });
        Peer {
            id: c.id,
            sink,
            log,
            scan: 0,
        }
    }

    /// Send and wait for the next direct reply.
    async fn request(&mut self, v: Value) -> Value {
        self.sink
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let log = self.log.lock().unwrap();
                while self.scan < log.len() {
                    let v = &log[self.scan];
                    self.scan += 1;
                    if !is_push(v) {
                        return v.clone();
                    }
                }
            }
            assert!(Instant::now() < deadline, "{}: no reply to {v}", self.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Count of `message` and `channel_message` pushes by id.
    fn delivered(&self) -> HashMap<String, usize> {
        let mut got = HashMap::new();
        for v in self.log.lock().unwrap().iter() {
            if v["type"] == "message" || v["type"] == "channel_message" {
                *got.entry(v["id"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
        }
        got
    }
}

enum Sent {
    Direct(String),
    Broadcast,
    Channel,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_get_every_message_exactly_once() {
    let hub = TestHub::start().await;
    tokio::time::timeout(Duration::from_secs(60), load_scenario(&hub))
        .await
        .expect("the whole scenario finishes within 60 s");
}

async fn load_scenario(hub: &TestHub) {
    use futures_util::future::join_all;

    // Tokens, minted concurrently in batches.
    let ids: Vec<String> = (0..N)
        .map(online_id)
        .chain((0..OFFLINE).map(offline_id))
        .collect();
    let mut tokens: HashMap<String, String> = HashMap::new();
    for chunk in ids.chunks(30) {
        let minted = join_all(chunk.iter().map(|id| hub.token(id, "agent"))).await;
        for (id, t) in chunk.iter().zip(minted) {
            tokens.insert(id.clone(), t);
        }
    }
    create_channel(hub, &tokens["a000"], "load").await;

    // 200 connections, identified concurrently in batches.
    let mut peers: Vec<Peer> = Vec::with_capacity(N);
    for start in (0..N).step_by(25) {
        let batch = join_all((start..(start + 25).min(N)).map(|i| {
            let id = online_id(i);
            let token = tokens[&id].clone();
            async move { identify(hub, &id, &token).await }
        }))
        .await;
        peers.extend(batch.into_iter().map(Peer::from_client));
    }
    let mut n = 0;
    assert!(
        eventually(Duration::from_secs(10), async || {
            n = connected(hub).await;
            n == N as u64
        })
        .await,
        "agents_connected is {n}"
    );

    // 20 subscribers attach over the websocket.
    join_all(
        peers
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| is_subscriber(*i))
            .map(|(_, p)| async move {
                let r = p
                    .request(json!({"type": "channel_subscribe", "channel": "load"}))
                    .await;
                assert_eq!(
                    r,
                    json!({"type": "channel_subscribed", "channel": "load"}),
                    "{}",
                    p.id
                );
            }),
    )
    .await;

    // Everyone sends at once; each agent's own requests in sequence.
    let results: Vec<Vec<(Sent, Value)>> = join_all(peers.iter_mut().enumerate().map(|(i, p)| {
        let mut plan = Vec::new();
        let to = online_id((i * 7 + 3) % N);
        plan.push((
            Sent::Direct(to.clone()),
            json!({"type": "message", "to": to, "payload": {"k": format!("d{i}")}}),
        ));
        if i < 3 * OFFLINE {
            let to = offline_id(i % OFFLINE);
            plan.push((
                Sent::Direct(to.clone()),
                json!({"type": "message", "to": to, "payload": {"k": format!("o{i}")}}),
            ));
        }
        if is_broadcaster(i) {
            plan.push((
                Sent::Broadcast,
                json!({"type": "message", "payload": {"k": format!("b{i}")}}),
            ));
        }
        if PUBLISHERS.contains(&i) {
            plan.push((
                Sent::Channel,
                json!({"type": "channel_publish", "channel": "load", "payload": {"k": format!("c{i}")}}),
            ));
        }
        async move {
            let mut out = Vec::new();
            for (kind, req) in plan {
                let r = p.request(req).await;
                out.push((kind, r));
            }
            out
        }
    }))
    .await;

    // What every agent should receive: message id → 1.
    let mut expected: HashMap<String, HashMap<String, usize>> =
        ids.iter().map(|id| (id.clone(), HashMap::new())).collect();
    let mut from_of: HashMap<String, String> = HashMap::new();
    let mut seqs = Vec::new();
    let mut add = |to: &str, id: &str| {
        *expected
            .get_mut(to)
            .unwrap()
            .entry(id.to_string())
            .or_default() += 1;
    };
    for (i, out) in results.iter().enumerate() {
        for (kind, r) in out {
            let id = match kind {
                Sent::Direct(to) => {
                    let id = assert_message_sent(r);
                    add(to, &id);
                    id
                }
                Sent::Broadcast => {
                    let id = assert_message_sent(r);
                    for to in &ids {
                        add(to, &id);
                    }
                    id
                }
                Sent::Channel => {
                    assert_eq!(r["type"], "channel_published", "{r}");
                    assert_eq!(r["channel"], "load", "{r}");
                    seqs.push(r["seq"].as_i64().unwrap_or_else(|| panic!("{r}")));
                    let id = assert_hex16(&r["id"]);
                    for s in (0..N).filter(|s| is_subscriber(*s) && *s != i) {
                        add(&online_id(s), &id);
                    }
                    id
                }
            };
            assert!(
                from_of.insert(id.clone(), online_id(i)).is_none(),
                "duplicate id {id}"
            );
        }
    }
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);

    // Wait until every online agent has every expected push, then for stragglers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let missing: Vec<String> = peers
            .iter()
            .filter_map(|p| {
                let got = p.delivered();
                let lacking = expected[&p.id]
                    .keys()
                    .filter(|id| !got.contains_key(*id))
                    .count();
                (lacking > 0).then(|| format!("{} lacks {lacking}", p.id))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "undelivered after 20 s: {:?}",
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Exactly once, nothing extra, right sender and shape.
    let mut wrong = Vec::new();
    for p in &peers {
        let got = p.delivered();
        if got != expected[&p.id] {
            let extra: Vec<_> = got
                .iter()
                .filter(|(id, n)| expected[&p.id].get(*id) != Some(n))
                .collect();
            wrong.push(format!("{}: unexpected counts {extra:?}", p.id));
        }
        for v in p.log.lock().unwrap().iter() {
            if v["type"] == "__closed__" {
                wrong.push(format!("{} was closed: {v}", p.id));
            }
            if v["type"] == "message" || v["type"] == "channel_message" {
                let id = v["id"].as_str().unwrap_or("?");
                if from_of.get(id).map(String::as_str) != v["from"].as_str() {
                    wrong.push(format!("{}: wrong from in {v}", p.id));
                }
                if v["type"] == "message" && v.get("to").is_some() {
                    wrong.push(format!("{}: message push with `to`: {v}", p.id));
                }
                if v["type"] == "channel_message" && v["channel"] != "load" {
                    wrong.push(format!("{}: {v}", p.id));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} problems, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );

    // Offline agents: their direct messages and one copy of each broadcast, in the mailbox.
    for k in 0..OFFLINE {
        let id = offline_id(k);
        let mb = mailbox(hub, &id, &tokens[&id]).await;
        let mut got: HashMap<String, usize> = HashMap::new();
        for m in mailbox_ids(&mb) {
            *got.entry(m).or_default() += 1;
        }
        assert_eq!(got, expected[&id], "mailbox of {id}: {mb}");
        assert_eq!(expected[&id].len(), 3 + 10);
        assert_eq!(mb["count"], 13);
    }
    // Online agents (sender, broadcaster, subscriber, publisher) got no mailbox copies.
    for i in [0, 3, 5, 10] {
        let id = online_id(i);
        let mb = mailbox(hub, &id, &tokens[&id]).await;
        assert_eq!(mb["messages"], json!([]), "mailbox of online {id}");
    }
}
