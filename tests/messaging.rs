//! Black-box tests of messaging: `POST /api/message`, the mailbox, channels, message history,
//! threads, analytics, presence, onboarding and the admin reset, against the reference's
//! shapes and the fixes listed in `docs/COMPATIBILITY.md` (S1, S2, S4, S6, C2, C4, F6, F7,
//! F15, F16, F17, F19, F25).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::{now_ms, Frame, Reply, TestHub, Ws, ADMIN};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// How long to wait for something that should happen promptly.
const WAIT: Duration = Duration::from_secs(5);

/// The keys of MessageJSON.
const MESSAGE_KEYS: &[&str] = &[
    "id",
    "from",
    "to",
    "type",
    "payload",
    "reply_to",
    "timestamp",
];

/// The keys of a `message` push on `/ws` (no `to`, `message_type` instead of `type`).
const PUSH_KEYS: &[&str] = &[
    "type",
    "id",
    "from",
    "message_type",
    "payload",
    "reply_to",
    "timestamp",
];

const HINT: &str = "provide Authorization: Bearer <token>";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .cloned()
        .collect()
}

fn key_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn message_keys_with_seq() -> BTreeSet<String> {
    let mut k = key_set(MESSAGE_KEYS);
    k.insert("seq".into());
    k
}

fn is_hex16(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
}

/// The `id`s of a list of messages, in order.
fn ids(list: &Value) -> Vec<String> {
    arr(list)
        .iter()
        .map(|m| m["id"].as_str().expect("message id").to_string())
        .collect()
}

/// The `seq`s of a list of entries, in order.
fn seqs(list: &Value) -> Vec<u64> {
    arr(list)
        .iter()
        .map(|m| m["seq"].as_u64().expect("integer seq"))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An error answer: the status, the error code, the field (or none), and nothing but the
/// documented optional keys beside them.
#[track_caller]
fn assert_error(r: &Reply, status: u16, error: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json["error"], error, "{r:?}");
    assert_eq!(
        r.json.get("field").and_then(Value::as_str),
        field,
        "field of {r:?}"
    );
    for k in keys(&r.json) {
        assert!(
            ["error", "message", "field", "hint"].contains(&k.as_str()),
            "unexpected key {k:?} in {r:?}"
        );
    }
}

/// 401 on a Bearer-only route (reference auth mode A1).
#[track_caller]
fn assert_unauthorized_bearer(r: &Reply) {
    assert_error(r, 401, "unauthorized", None);
    assert_eq!(r.json["hint"], HINT, "{r:?}");
}

async fn get_ok(hub: &TestHub, path: &str, token: Option<&str>) -> Value {
    let r = hub.get(path, token).await;
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.json
}

async fn post(hub: &TestHub, path: &str, token: Option<&str>, body: Value) -> Reply {
    hub.send_json("POST", path, token, body).await
}

/// `POST /api/message`; returns the new message id.
async fn send(hub: &TestHub, token: &str, body: Value) -> String {
    let r = post(hub, "/api/message", Some(token), body).await;
    assert_eq!(r.status, 200, "POST /api/message: {r:?}");
    assert_eq!(r.json["status"], "sent", "{r:?}");
    r.json["id"].as_str().expect("message id").to_string()
}

/// `GET /api/mailbox/<agent>` with `token`.
async fn mailbox(hub: &TestHub, agent: &str, token: &str) -> Value {
    get_ok(hub, &format!("/api/mailbox/{agent}"), Some(token)).await
}

async fn mailbox_count(hub: &TestHub, agent: &str, token: &str) -> u64 {
    mailbox(hub, agent, token).await["count"]
        .as_u64()
        .expect("count")
}

async fn ack(hub: &TestHub, agent: &str, token: &str, body: Value) -> Reply {
    post(hub, &format!("/api/mailbox/{agent}/ack"), Some(token), body).await
}

/// `GET /api/messages<query>` with `token`.
async fn history(hub: &TestHub, query: &str, token: &str) -> Value {
    get_ok(hub, &format!("/api/messages{query}"), Some(token)).await
}

async fn create_channel(hub: &TestHub, token: &str, name: &str) {
    let r = post(hub, "/api/channels", Some(token), json!({ "name": name })).await;
    assert_eq!(r.status, 201, "create {name}: {r:?}");
}

/// Subscribe over HTTP; `channel` is a path segment (already percent-encoded).
async fn subscribe(hub: &TestHub, token: &str, channel: &str) {
    let r = post(
        hub,
        &format!("/api/channels/{channel}/subscribe"),
        Some(token),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "subscribe {channel}: {r:?}");
}

/// Publish over HTTP; returns the channel seq.
async fn publish(hub: &TestHub, token: &str, channel: &str, body: Value) -> u64 {
    let r = post(
        hub,
        &format!("/api/channels/{channel}/publish"),
        Some(token),
        body,
    )
    .await;
    assert_eq!(r.status, 200, "publish {channel}: {r:?}");
    assert_eq!(r.json["status"], "published", "{r:?}");
    r.json["seq"].as_u64().expect("integer seq")
}

async fn channel_history(hub: &TestHub, channel: &str, query: &str) -> Value {
    get_ok(
        hub,
        &format!("/api/channels/{channel}/history{query}"),
        None,
    )
    .await
}

/// Poll until `check` holds; fail the test with `what` otherwise.
async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(common::eventually(WAIT, check).await, "timed out: {what}");
}

/// The next frame within `within`, or `None`.
async fn frame_within(ws: &mut Ws, within: Duration) -> Option<Frame> {
    tokio::time::timeout(within, ws.next(Duration::from_secs(600)))
        .await
        .ok()
}

/// Assert that no frame of type `ty` arrives within `within` (other frames are skipped).
async fn assert_no_frame_of_type(ws: &mut Ws, ty: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match frame_within(ws, left).await {
            None => return,
            Some(Frame::Json(v)) if v["type"] == ty => panic!("unexpected {ty:?} frame: {v}"),
            Some(Frame::Json(_)) => continue,
            Some(Frame::Closed(code)) => panic!("socket closed ({code:?})"),
        }
    }
}

/// Connect to `/ws` and identify with `frame` (which must carry `agent_id` and `token`).
async fn identify_with(hub: &TestHub, mut frame: Value) -> Ws {
    frame["type"] = json!("identify");
    let agent_id = frame["agent_id"].clone();
    let mut ws = hub.ws("/ws", None).await.expect("connect /ws");
    ws.send_json(frame).await;
    let reply = ws.next_of_type("identified").await;
    assert_eq!(reply, json!({"type": "identified", "agent_id": agent_id}));
    ws
}

async fn identify(hub: &TestHub, agent_id: &str, token: &str) -> Ws {
    hub.identify(agent_id, token, json!({})).await
}

/// One POST with a chosen `Host` header (the harness always sends the socket address).
async fn post_with_host(
    addr: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    let req = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        headers,
        body,
        json,
    }
}

/// How many tokens `/admin/tokens` lists for `agent_id`.
async fn token_count(hub: &TestHub, agent_id: &str) -> usize {
    let listed = get_ok(hub, "/admin/tokens", Some(ADMIN)).await;
    arr(&listed["tokens"])
        .iter()
        .filter(|t| t["agent_id"] == agent_id)
        .count()
}

/// The AgentStats entry of `agent_id` in `/api/analytics/agents`, if listed.
async fn agent_stats(hub: &TestHub, agent_id: &str) -> Option<Value> {
    let all = get_ok(hub, "/api/analytics/agents", None).await;
    arr(&all["agents"])
        .iter()
        .find(|a| a["agent_id"] == agent_id)
        .cloned()
}

// ---------------------------------------------------------------------------------------
// POST /api/message and routing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_message_answers_sent_with_a_fresh_hex_id() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;

    let r = post(
        &hub,
        "/api/message",
        Some(&alpha),
        json!({"to": "beta", "payload": {"text": "hi"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(keys(&r.json), key_set(&["status", "id"]));
    assert_eq!(r.json["status"], "sent");
    assert!(is_hex16(&r.json["id"]), "{r:?}");
    let second = send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;
    assert_ne!(r.json["id"], second.as_str(), "ids are unique");

    let r = post(&hub, "/api/message", Some(&alpha), json!({"to": "beta"})).await;
    assert_error(&r, 400, "missing required field: payload", None);
    let r = post(&hub, "/api/message", None, json!({"payload": {}})).await;
    assert_unauthorized_bearer(&r);
    let r = post(
        &hub,
        "/api/message",
        Some(&"0".repeat(64)),
        json!({"payload": {}}),
    )
    .await;
    assert_unauthorized_bearer(&r);

    // Only the two accepted messages were stored.
    let all = history(&hub, "", ADMIN).await;
    assert_eq!(all["count"], 2, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_to_an_offline_agent_lands_in_its_mailbox_from_the_token_agent() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;

    let before = now_ms();
    let id = send(
        &hub,
        &alpha,
        json!({"to": "beta", "from": "mallory", "type": "note", "payload": {"n": 1}}),
    )
    .await;
    let plain = send(&hub, &alpha, json!({"to": "beta", "payload": {"n": 2}})).await;
    let after = now_ms();

    let m = mailbox(&hub, "beta", &beta).await;
    assert_eq!(
        keys(&m),
        key_set(&["agent_id", "messages", "last_seq", "count"])
    );
    assert_eq!(m["agent_id"], "beta");
    assert_eq!(m["count"], 2);
    let msgs = arr(&m["messages"]);
    let first = &msgs[0];
    assert_eq!(keys(first), message_keys_with_seq());
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["from"], "alpha", "the body's `from` is ignored");
    assert_eq!(first["to"], "beta");
    assert_eq!(first["type"], "note");
    assert_eq!(first["payload"], json!({"n": 1}));
    assert_eq!(first["reply_to"], Value::Null);
    let ts = first["timestamp"].as_u64().expect("integer timestamp");
    assert!(
        before <= ts && ts <= after,
        "{ts} not in [{before}, {after}]"
    );
    assert_eq!(msgs[1]["id"], plain.as_str());
    assert_eq!(msgs[1]["type"], "chat", "type defaults to chat");
    let s = seqs(&m["messages"]);
    assert!(s[0] >= 1 && s[0] < s[1], "{s:?}");
    assert_eq!(m["last_seq"], s[1]);

    assert_eq!(
        mailbox(&hub, "alpha", &alpha).await,
        json!({"agent_id": "alpha", "messages": [], "last_seq": 0, "count": 0}),
        "nothing in the sender's mailbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_to_an_unknown_agent_is_kept_in_that_mailbox() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let id = send(&hub, &alpha, json!({"to": "ghost", "payload": {}})).await;
    let m = mailbox(&hub, "ghost", ADMIN).await;
    assert_eq!(m["count"], 1, "{m}");
    assert_eq!(m["messages"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_to_an_online_agent_is_pushed_and_not_stored() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let mut ws = identify(&hub, "beta", &beta).await;

    let id = send(
        &hub,
        &alpha,
        json!({"to": "beta", "type": "note", "payload": {"x": 1}}),
    )
    .await;
    let push = ws.next_of_type("message").await;
    assert_eq!(keys(&push), key_set(PUSH_KEYS), "{push}");
    assert_eq!(push["id"], id.as_str());
    assert_eq!(push["from"], "alpha");
    assert_eq!(push["message_type"], "note");
    assert_eq!(push["payload"], json!({"x": 1}));
    assert_eq!(push["reply_to"], Value::Null);
    assert!(push["timestamp"].is_u64());

    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_broadcast_leaves_one_mailbox_copy_per_offline_agent_and_none_for_the_sender() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let _beta_again = hub.token("beta", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    let delta = hub.token("delta", "agent").await;
    let _screen = hub.token("screen", "viewer").await;
    let mut delta_ws = identify(&hub, "delta", &delta).await;

    // `to` absent, "broadcast" and null are all broadcasts.
    let sent = [
        send(&hub, &alpha, json!({"payload": {"n": 1}})).await,
        send(
            &hub,
            &alpha,
            json!({"to": "broadcast", "payload": {"n": 2}}),
        )
        .await,
        send(&hub, &alpha, json!({"to": null, "payload": {"n": 3}})).await,
    ];

    // The online agent gets every one as a push, and no mailbox copy.
    for id in &sent {
        let push = delta_ws.next_of_type("message").await;
        assert_eq!(push["id"], id.as_str());
        assert_eq!(push["from"], "alpha");
    }
    // One copy per offline agent id, even with two tokens (the original made one per token).
    for (agent, token) in [("beta", &beta), ("gamma", &gamma)] {
        let m = mailbox(&hub, agent, token).await;
        assert_eq!(ids(&m["messages"]), sent.to_vec(), "{agent}: {m}");
        assert_eq!(m["messages"][0]["from"], "alpha");
        assert_eq!(m["messages"][0]["payload"], json!({"n": 1}));
    }
    assert_eq!(mailbox_count(&hub, "alpha", &alpha).await, 0, "sender");
    assert_eq!(mailbox_count(&hub, "delta", &delta).await, 0, "online");
    assert_eq!(
        mailbox_count(&hub, "screen", ADMIN).await,
        0,
        "viewer-only ids get no copy"
    );
    assert_eq!(
        mailbox_count(&hub, "broadcast", ADMIN).await,
        0,
        "\"broadcast\" is not an agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_viewer_tokens_cannot_send_publish_subscribe_or_read_history() {
    let hub = TestHub::start().await;
    let viewer = hub.token("screen", "viewer").await;
    create_channel(&hub, ADMIN, "ops").await;

    let writes = [
        ("/api/message", json!({"to": "beta", "payload": {}})),
        ("/api/channels", json!({"name": "newchan"})),
        ("/api/channels/ops/subscribe", json!({})),
        ("/api/channels/ops/unsubscribe", json!({})),
        ("/api/channels/ops/publish", json!({"payload": {"x": 1}})),
        ("/api/mailbox/evict", json!({})),
    ];
    for (path, body) in writes {
        let r = post(&hub, path, Some(&viewer), body).await;
        assert_error(&r, 403, "forbidden", None);
    }
    let r = hub.get("/api/messages", Some(&viewer)).await;
    assert_error(&r, 403, "forbidden", None);

    // Nothing was written.
    assert_eq!(history(&hub, "", ADMIN).await["count"], 0);
    assert_eq!(channel_history(&hub, "ops", "").await["count"], 0);
    assert_eq!(
        get_ok(&hub, "/api/channels/ops", None).await["subscriber_count"],
        0
    );
    assert_eq!(hub.get("/api/channels/newchan", None).await.status, 404);
    assert_eq!(mailbox_count(&hub, "beta", ADMIN).await, 0);
}

// ---------------------------------------------------------------------------------------
// Mailbox
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_poll_returns_entries_after_since_and_deletes_nothing() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    for n in 0..3 {
        send(&hub, &alpha, json!({"to": "beta", "payload": {"n": n}})).await;
    }
    let m = mailbox(&hub, "beta", &beta).await;
    assert_eq!(m["count"], 3);
    let s = seqs(&m["messages"]);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "ascending: {s:?}");
    let ns: Vec<Value> = arr(&m["messages"])
        .iter()
        .map(|e| e["payload"]["n"].clone())
        .collect();
    assert_eq!(ns, vec![json!(0), json!(1), json!(2)]);
    assert_eq!(m["last_seq"], s[2]);

    let m = get_ok(
        &hub,
        &format!("/api/mailbox/beta?since={}", s[0]),
        Some(&beta),
    )
    .await;
    assert_eq!(seqs(&m["messages"]), vec![s[1], s[2]]);
    assert_eq!(
        (m["count"].clone(), m["last_seq"].clone()),
        (json!(2), json!(s[2]))
    );

    // Nothing newer: no messages, last_seq is the `since` given.
    let m = get_ok(
        &hub,
        &format!("/api/mailbox/beta?since={}", s[2]),
        Some(&beta),
    )
    .await;
    assert_eq!(
        m,
        json!({"agent_id": "beta", "messages": [], "last_seq": s[2], "count": 0})
    );
    let far = s[2] + 1000;
    let m = get_ok(&hub, &format!("/api/mailbox/beta?since={far}"), Some(&beta)).await;
    assert_eq!(m["last_seq"], far);

    // Polling deleted nothing; the token may also come as a parameter.
    let m = get_ok(
        &hub,
        &format!("/api/mailbox/beta?token={beta}&since={}", s[1]),
        None,
    )
    .await;
    assert_eq!(seqs(&m["messages"]), vec![s[2]]);
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 3);
    // An admin may read any mailbox.
    assert_eq!(mailbox_count(&hub, "beta", ADMIN).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_ack_deletes_entries_up_to_the_seq() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    for n in 0..3 {
        send(&hub, &alpha, json!({"to": "beta", "payload": {"n": n}})).await;
    }
    let s = seqs(&mailbox(&hub, "beta", &beta).await["messages"]);

    let r = ack(&hub, "beta", &beta, json!({"seq": 0})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "acked", "up_to": 0}))
    );
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 3);

    let r = ack(&hub, "beta", &beta, json!({"seq": s[1]})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "acked", "up_to": s[1]}))
    );
    assert_eq!(
        seqs(&mailbox(&hub, "beta", &beta).await["messages"]),
        vec![s[2]],
        "the ack is applied when answered"
    );

    let r = ack(&hub, "beta", &beta, json!({"seq": s[2] + 1000})).await;
    assert_eq!(r.status, 200);
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_mailbox_ack_with_a_non_integer_seq_is_rejected_and_deletes_nothing() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;
    send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;

    for bad in [
        json!("0"),
        json!(null),
        json!(-1),
        json!(1.5),
        json!(true),
        json!([1]),
        json!({"seq": 1}),
    ] {
        let r = ack(&hub, "beta", &beta, json!({ "seq": bad })).await;
        assert_error(&r, 400, "invalid_field", Some("seq"));
        assert_eq!(
            mailbox_count(&hub, "beta", &beta).await,
            2,
            "seq {bad} deleted entries"
        );
    }
    let r = ack(&hub, "beta", &beta, json!({})).await;
    assert_error(&r, 400, "missing required field: seq", None);
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_mailbox_since_must_be_an_integer_but_auth_is_checked_first() {
    let hub = TestHub::start().await;
    let beta = hub.token("beta", "agent").await;
    let r = hub.get("/api/mailbox/beta?since=abc", None).await;
    assert_error(&r, 401, "unauthorized", None);
    let r = hub
        .get(
            &format!("/api/mailbox/beta?since=abc&token={}", "0".repeat(64)),
            None,
        )
        .await;
    assert_error(&r, 401, "unauthorized", None);
    for bad in ["abc", "1.5", "1e3"] {
        let r = hub
            .get(&format!("/api/mailbox/beta?since={bad}"), Some(&beta))
            .await;
        assert_error(&r, 400, "invalid_field", Some("since"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_another_agents_token_is_forbidden_on_mailbox_routes() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;

    let r = hub.get("/api/mailbox/beta", Some(&alpha)).await;
    assert_error(&r, 403, "forbidden", None);
    let r = hub
        .get(&format!("/api/mailbox/beta?token={alpha}"), None)
        .await;
    assert_error(&r, 403, "forbidden", None);
    let r = ack(&hub, "beta", &alpha, json!({"seq": 1_000_000})).await;
    assert_error(&r, 403, "forbidden", None);

    // A missing or unknown token is still 401.
    let r = hub.get("/api/mailbox/beta", None).await;
    assert_error(&r, 401, "unauthorized", None);
    let r = hub.get("/api/mailbox/beta", Some(&"0".repeat(64))).await;
    assert_error(&r, 401, "unauthorized", None);
    let r = post(
        &hub,
        "/api/mailbox/beta/ack",
        None,
        json!({"seq": 1_000_000}),
    )
    .await;
    assert_error(&r, 401, "unauthorized", None);

    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 1, "nothing acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f17_mailbox_seq_stays_monotonic_across_a_restart_after_everything_was_acked() {
    let mut hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    for _ in 0..3 {
        send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;
    }
    let last = mailbox(&hub, "beta", &beta).await["last_seq"]
        .as_u64()
        .expect("last_seq");
    let r = ack(&hub, "beta", &beta, json!({ "seq": last })).await;
    assert_eq!(r.status, 200);
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 0);

    hub.restart().await;
    let id = send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;
    // A client polling with its cursor still sees the new message.
    let m = get_ok(
        &hub,
        &format!("/api/mailbox/beta?since={last}"),
        Some(&beta),
    )
    .await;
    assert_eq!(ids(&m["messages"]), vec![id], "{m}");
    let seq = m["messages"][0]["seq"].as_u64().unwrap();
    assert!(seq > last, "new seq {seq} must exceed the acked {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_keeps_the_newest_100_entries_per_agent() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    send(&hub, &alpha, json!({"to": "gamma", "payload": {"n": -1}})).await;
    for n in 0..105 {
        send(&hub, &alpha, json!({"to": "beta", "payload": {"n": n}})).await;
    }
    let m = mailbox(&hub, "beta", &beta).await;
    assert_eq!(m["count"], 100);
    let ns: Vec<i64> = arr(&m["messages"])
        .iter()
        .map(|e| e["payload"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (5..105).collect::<Vec<i64>>(), "the oldest are trimmed");
    assert_eq!(mailbox_count(&hub, "gamma", &gamma).await, 1, "per agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_evict_drops_entries_older_than_the_retention() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;

    let r = post(&hub, "/api/mailbox/evict", None, json!({})).await;
    assert_unauthorized_bearer(&r);
    // The default retention is 7 days: nothing goes.
    let r = post(&hub, "/api/mailbox/evict", Some(&alpha), json!({})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "eviction_triggered"}))
    );
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 1);

    let r = hub
        .send_json(
            "PUT",
            "/api/config/mailbox-retention",
            Some(ADMIN),
            json!({"mailbox_ttl_ms": 1}),
        )
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = post(&hub, "/api/mailbox/evict", Some(&alpha), json!({})).await;
    assert_eq!(r.status, 200);
    wait_for("the expired entry is evicted", || async {
        mailbox_count(&hub, "beta", &beta).await == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_create_normalises_names_and_refuses_duplicates() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;

    let r = post(
        &hub,
        "/api/channels",
        Some(&alpha),
        json!({"name": "#Dev Team!", "description": "the devs"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (201, json!({"status": "created", "channel": "#Dev Team!"}))
    );
    for dup in ["#Dev Team!", "DEVTEAM", "devteam"] {
        let r = post(&hub, "/api/channels", Some(&alpha), json!({ "name": dup })).await;
        assert_error(&r, 409, "channel_exists", None);
    }
    let r = post(&hub, "/api/channels", Some(&alpha), json!({"name": "#Dev"})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (201, json!({"status": "created", "channel": "#Dev"}))
    );
    let r = post(&hub, "/api/channels", Some(&alpha), json!({"name": "dev"})).await;
    assert_error(&r, 409, "channel_exists", None);
    for body in [json!({}), json!({"description": "x"})] {
        let r = post(&hub, "/api/channels", Some(&alpha), body).await;
        assert_error(&r, 400, "missing required field: name", None);
    }
    let r = post(&hub, "/api/channels", None, json!({"name": "x"})).await;
    assert_unauthorized_bearer(&r);

    // List and info are open and show normalised names.
    let list = get_ok(&hub, "/api/channels", None).await;
    assert_eq!(keys(&list), key_set(&["channels"]));
    let channels = arr(&list["channels"]);
    let names: Vec<String> = channels
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sorted(names), strings(&["dev", "devteam"]));
    for c in channels {
        assert_eq!(
            keys(c),
            key_set(&["name", "description", "subscriber_count", "created_at"])
        );
        assert_eq!(c["subscriber_count"], 0);
        assert!(c["created_at"].is_u64());
    }
    let info = get_ok(&hub, "/api/channels/devteam", None).await;
    assert_eq!(
        keys(&info),
        key_set(&[
            "name",
            "description",
            "subscribers",
            "subscriber_count",
            "created_at",
            "created_by"
        ])
    );
    assert_eq!(info["name"], "devteam");
    assert_eq!(info["description"], "the devs");
    assert_eq!(info["subscribers"], json!([]));
    assert_eq!(info["subscriber_count"], 0);
    assert_eq!(info["created_by"], "alpha");
    assert_eq!(
        get_ok(&hub, "/api/channels/dev", None).await["description"],
        "",
        "description defaults to empty"
    );
    // The path segment is decoded and normalised.
    assert_eq!(
        get_ok(&hub, "/api/channels/%23Dev%20Team%21", None).await["name"],
        "devteam"
    );
    let r = hub.get("/api/channels/nope", None).await;
    assert_error(&r, 404, "channel_not_found", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_channel_names_that_normalise_to_nothing_are_refused() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    for name in [
        json!("!!!"),
        json!("#"),
        json!("## ?"),
        json!(""),
        json!(42),
    ] {
        let r = post(&hub, "/api/channels", Some(&alpha), json!({ "name": name })).await;
        assert_error(&r, 400, "invalid_field", Some("name"));
    }
    assert_eq!(
        get_ok(&hub, "/api/channels", None).await,
        json!({"channels": []})
    );
    let r = hub.get("/api/channels/%21%21", None).await;
    assert_error(&r, 404, "channel_not_found", None);
    let r = post(
        &hub,
        "/api/channels/%21%21/subscribe",
        Some(&alpha),
        json!({}),
    )
    .await;
    assert_error(&r, 404, "channel_not_found", None);
    let r = post(
        &hub,
        "/api/channels/%21%21/publish",
        Some(&alpha),
        json!({"payload": {}}),
    )
    .await;
    assert_error(&r, 404, "channel_not_found", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_subscribe_and_unsubscribe_answer_with_the_reference_shapes() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    create_channel(&hub, &alpha, "#Dev Team!").await;
    create_channel(&hub, &alpha, "ops").await;

    let path = |c: &str, op: &str| format!("/api/channels/{c}/{op}");
    let r = post(
        &hub,
        &path("Dev%20Team", "subscribe"),
        Some(&beta),
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "subscribed", "channel": "Dev Team"}))
    );
    let r = post(&hub, &path("devteam", "subscribe"), Some(&beta), json!({})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "already_subscribed"}))
    );
    let r = post(
        &hub,
        &path("%23devteam", "subscribe"),
        Some(&alpha),
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "subscribed", "channel": "#devteam"}))
    );
    subscribe(&hub, &beta, "ops").await;

    let info = get_ok(&hub, "/api/channels/devteam", None).await;
    let subs: Vec<String> = arr(&info["subscribers"])
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sorted(subs), strings(&["alpha", "beta"]));
    assert_eq!(info["subscriber_count"], 2);
    let list = get_ok(&hub, "/api/channels", None).await;
    let devteam = arr(&list["channels"])
        .iter()
        .find(|c| c["name"] == "devteam")
        .expect("listed")
        .clone();
    assert_eq!(devteam["subscriber_count"], 2);

    let subs = get_ok(&hub, "/api/agents/beta/subscriptions", None).await;
    assert_eq!(keys(&subs), key_set(&["agent_id", "channels"]));
    assert_eq!(subs["agent_id"], "beta");
    let names: Vec<String> = arr(&subs["channels"])
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sorted(names), strings(&["devteam", "ops"]));

    for _ in 0..2 {
        // Also when no longer subscribed.
        let r = post(
            &hub,
            &path("devteam", "unsubscribe"),
            Some(&beta),
            json!({}),
        )
        .await;
        assert_eq!(
            (r.status, r.json.clone()),
            (200, json!({"status": "unsubscribed", "channel": "devteam"}))
        );
    }
    assert_eq!(
        get_ok(&hub, "/api/agents/beta/subscriptions", None).await,
        json!({"agent_id": "beta", "channels": ["ops"]})
    );
    assert_eq!(
        get_ok(&hub, "/api/channels/devteam", None).await["subscribers"],
        json!(["alpha"])
    );
    assert_eq!(
        get_ok(&hub, "/api/agents/nobody/subscriptions", None).await,
        json!({"agent_id": "nobody", "channels": []})
    );

    for op in ["subscribe", "unsubscribe"] {
        let r = post(&hub, &path("nope", op), Some(&beta), json!({})).await;
        assert_error(&r, 404, "channel_not_found", None);
        let r = post(&hub, &path("ops", op), None, json!({})).await;
        assert_unauthorized_bearer(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_publish_numbers_seq_per_channel_and_keeps_history() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    create_channel(&hub, &alpha, "ops").await;

    let r = post(
        &hub,
        "/api/channels/dev/publish",
        Some(&alpha),
        json!({"payload": {"n": 1}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "published", "seq": 1}))
    );
    assert_eq!(
        publish(
            &hub,
            &alpha,
            "dev",
            json!({"payload": {"n": 2}, "type": "alert"})
        )
        .await,
        2
    );
    assert_eq!(
        publish(&hub, &alpha, "ops", json!({"payload": {"n": 1}})).await,
        1,
        "seq is per channel"
    );

    let r = post(&hub, "/api/channels/dev/publish", Some(&alpha), json!({})).await;
    assert_error(&r, 400, "missing required field: payload", None);
    let r = post(
        &hub,
        "/api/channels/nope/publish",
        Some(&alpha),
        json!({"payload": {}}),
    )
    .await;
    assert_error(&r, 404, "channel_not_found", None);
    let r = post(
        &hub,
        "/api/channels/dev/publish",
        None,
        json!({"payload": {}}),
    )
    .await;
    assert_unauthorized_bearer(&r);

    let h = channel_history(&hub, "dev", "").await;
    assert_eq!(keys(&h), key_set(&["channel", "messages", "count"]));
    assert_eq!(h["channel"], "dev");
    assert_eq!(h["count"], 2);
    assert_eq!(seqs(&h["messages"]), vec![1, 2]);
    for (i, entry) in arr(&h["messages"]).iter().enumerate() {
        assert_eq!(keys(entry), key_set(&["seq", "message", "stored_at"]));
        assert!(entry["stored_at"].is_u64());
        let msg = &entry["message"];
        assert_eq!(keys(msg), key_set(MESSAGE_KEYS), "{msg}");
        assert!(is_hex16(&msg["id"]), "{msg}");
        assert_eq!(msg["from"], "alpha");
        assert_eq!(
            msg["payload"],
            json!({"n": i + 1}),
            "stored without a channel key"
        );
        assert_eq!(msg["reply_to"], Value::Null);
    }
    assert_eq!(h["messages"][0]["message"]["type"], "chat");
    assert_eq!(h["messages"][1]["message"]["type"], "alert");

    // The `channel` echoes the path value; the lookup is normalised.
    let h = channel_history(&hub, "%23DEV", "").await;
    assert_eq!(
        (h["channel"].clone(), h["count"].clone()),
        (json!("#DEV"), json!(2))
    );
    assert_eq!(
        channel_history(&hub, "nope", "").await,
        json!({"channel": "nope", "messages": [], "count": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_channel_publish_with_a_non_object_payload_is_rejected_and_not_stored() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    subscribe(&hub, &gamma, "dev").await;
    assert_eq!(
        publish(&hub, &alpha, "dev", json!({"payload": {"n": 1}})).await,
        1
    );

    for bad in [json!("text"), json!([1, 2]), json!(42), json!(true)] {
        let r = post(
            &hub,
            "/api/channels/dev/publish",
            Some(&alpha),
            json!({ "payload": bad }),
        )
        .await;
        assert_error(&r, 400, "invalid_field", Some("payload"));
    }
    assert_eq!(channel_history(&hub, "dev", "").await["count"], 1);
    assert_eq!(
        publish(&hub, &alpha, "dev", json!({"payload": {"n": 2}})).await,
        2,
        "rejected publishes use no seq"
    );
    assert_eq!(
        seqs(&channel_history(&hub, "dev", "").await["messages"]),
        vec![1, 2]
    );
    wait_for(
        "the valid publishes reach the offline subscriber",
        || async { mailbox_count(&hub, "gamma", &gamma).await >= 2 },
    )
    .await;
    assert_eq!(mailbox_count(&hub, "gamma", &gamma).await, 2);
    // The hub is unaffected.
    assert_eq!(hub.get("/health", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_channel_history_returns_the_newest_limit_entries_after_since() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    for n in 1..=6 {
        publish(&hub, &alpha, "dev", json!({"payload": {"n": n}})).await;
    }
    let h = channel_history(&hub, "dev", "?since=1&limit=2").await;
    assert_eq!(seqs(&h["messages"]), vec![5, 6], "as the original gave");
    assert_eq!(h["count"], 2);
    assert_eq!(
        seqs(&channel_history(&hub, "dev", "?limit=3").await["messages"]),
        vec![4, 5, 6]
    );
    assert_eq!(
        seqs(&channel_history(&hub, "dev", "?since=4").await["messages"]),
        vec![5, 6]
    );
    assert_eq!(channel_history(&hub, "dev", "?since=6").await["count"], 0);
    assert_eq!(channel_history(&hub, "dev", "?limit=200").await["count"], 6);
    assert_eq!(channel_history(&hub, "dev", "?limit=1").await["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_c4_channel_history_limit_must_be_positive_and_since_an_integer() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    publish(&hub, &alpha, "dev", json!({"payload": {}})).await;
    for bad in ["0", "-1", "-5", "abc", "1.5"] {
        let r = hub
            .get(&format!("/api/channels/dev/history?limit={bad}"), None)
            .await;
        assert_error(&r, 400, "invalid_field", Some("limit"));
    }
    // Above the cap: clamped, as the original did.
    let r = hub.get("/api/channels/dev/history?limit=201", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    for bad in ["abc", "1.5"] {
        let r = hub
            .get(&format!("/api/channels/dev/history?since={bad}"), None)
            .await;
        assert_error(&r, 400, "invalid_field", Some("since"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_publish_leaves_a_mailbox_copy_for_offline_subscribers_but_not_the_publisher() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    let delta = hub.token("delta", "agent").await;
    create_channel(&hub, &alpha, "#Dev Team!").await;
    for token in [&alpha, &beta, &gamma] {
        subscribe(&hub, token, "devteam").await;
    }
    publish(
        &hub,
        &alpha,
        "Dev%20Team",
        json!({"payload": {"text": "hi"}, "type": "note"}),
    )
    .await;
    let stored = channel_history(&hub, "devteam", "").await["messages"][0]["message"].clone();
    assert_eq!(stored["payload"], json!({"text": "hi"}));

    for (agent, token) in [("beta", &beta), ("gamma", &gamma)] {
        wait_for("the copy reaches the offline subscriber", || async {
            mailbox_count(&hub, agent, token).await >= 1
        })
        .await;
        let m = mailbox(&hub, agent, token).await;
        assert_eq!(m["count"], 1, "{agent}: {m}");
        let copy = &m["messages"][0];
        assert_eq!(keys(copy), message_keys_with_seq());
        assert_eq!(copy["id"], stored["id"]);
        assert_eq!(copy["from"], "alpha");
        assert_eq!(copy["type"], "note");
        assert_eq!(
            copy["payload"],
            json!({"text": "hi", "channel": "devteam"}),
            "the copy's payload names the normalised channel"
        );
    }
    assert_eq!(mailbox_count(&hub, "alpha", &alpha).await, 0, "publisher");
    assert_eq!(
        mailbox_count(&hub, "delta", &delta).await,
        0,
        "not subscribed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_online_channel_subscriber_gets_a_push_and_no_mailbox_copy() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    create_channel(&hub, &alpha, "#Dev").await;
    subscribe(&hub, &beta, "dev").await;
    subscribe(&hub, &gamma, "dev").await;
    // Subscribed while offline, then connected.
    let mut beta_ws = identify(&hub, "beta", &beta).await;

    publish(&hub, &alpha, "Dev", json!({"payload": {"k": "v"}})).await;
    let push = beta_ws.next_of_type("channel_message").await;
    assert_eq!(
        keys(&push),
        key_set(&[
            "type",
            "channel",
            "id",
            "from",
            "message_type",
            "payload",
            "reply_to",
            "timestamp"
        ])
    );
    assert_eq!(push["channel"], "dev");
    assert_eq!(push["from"], "alpha");
    assert_eq!(push["message_type"], "chat");
    assert_eq!(
        push["payload"],
        json!({"k": "v"}),
        "no channel key in a push"
    );
    assert_eq!(push["reply_to"], Value::Null);
    let stored = channel_history(&hub, "dev", "").await;
    assert_eq!(push["id"], stored["messages"][0]["message"]["id"]);

    wait_for("the offline subscriber's copy", || async {
        mailbox_count(&hub, "gamma", &gamma).await == 1
    })
    .await;
    assert_eq!(
        mailbox_count(&hub, "beta", &beta).await,
        0,
        "an online subscriber is not double-delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_http_subscribe_attaches_an_online_agents_connection() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    subscribe(&hub, &gamma, "dev").await;
    let mut beta_ws = identify(&hub, "beta", &beta).await;
    subscribe(&hub, &beta, "dev").await;

    publish(&hub, &alpha, "dev", json!({"payload": {"n": 1}})).await;
    let push = beta_ws.next_of_type("channel_message").await;
    assert_eq!(push["payload"], json!({"n": 1}));
    wait_for("the offline subscriber's copy", || async {
        mailbox_count(&hub, "gamma", &gamma).await == 1
    })
    .await;
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 0);

    // After an HTTP unsubscribe, no more pushes.
    let r = post(
        &hub,
        "/api/channels/dev/unsubscribe",
        Some(&beta),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200);
    publish(&hub, &alpha, "dev", json!({"payload": {"n": 2}})).await;
    wait_for("the offline subscriber's second copy", || async {
        mailbox_count(&hub, "gamma", &gamma).await == 2
    })
    .await;
    assert_no_frame_of_type(&mut beta_ws, "channel_message", Duration::from_millis(300)).await;
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 0);
}

// ---------------------------------------------------------------------------------------
// Message history (GET /api/messages)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_history_has_the_reference_shape() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;

    let r = hub.get("/api/messages", None).await;
    assert_error(&r, 401, "unauthorized", None);
    let r = hub
        .get(&format!("/api/messages?token={}", "0".repeat(64)), None)
        .await;
    assert_error(&r, 401, "unauthorized", None);
    assert_eq!(
        history(&hub, "", &alpha).await,
        json!({"messages": [], "cursor": 0, "count": 0})
    );

    let id = send(
        &hub,
        &alpha,
        json!({"to": "beta", "type": "note", "payload": {"n": 1}}),
    )
    .await;
    // The token may also come as a parameter.
    let h = get_ok(&hub, &format!("/api/messages?token={alpha}"), None).await;
    assert_eq!(keys(&h), key_set(&["messages", "cursor", "count"]));
    assert_eq!(h["count"], 1);
    let msg = &h["messages"][0];
    assert_eq!(keys(msg), message_keys_with_seq());
    assert_eq!(msg["id"], id.as_str());
    assert_eq!(msg["from"], "alpha");
    assert_eq!(msg["to"], "beta");
    assert_eq!(msg["type"], "note");
    assert_eq!(msg["payload"], json!({"n": 1}));
    assert_eq!(msg["reply_to"], Value::Null);
    assert!(msg["timestamp"].is_u64());
    assert!(msg["seq"].as_u64().unwrap() >= 1);
    assert_eq!(h["cursor"], msg["seq"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_history_filters_by_sender_recipient_channel_and_time() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gap = || tokio::time::sleep(Duration::from_millis(5));
    let m1 = send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;
    gap().await;
    let m2 = send(
        &hub,
        &beta,
        json!({"to": "alpha", "payload": {"channel": "dev"}}),
    )
    .await;
    gap().await;
    let m3 = send(&hub, &alpha, json!({"to": "gamma", "payload": {}})).await;
    gap().await;
    let m4 = send(&hub, &alpha, json!({"payload": {}})).await;

    let all = history(&hub, "", ADMIN).await;
    assert_eq!(
        ids(&all["messages"]),
        vec![m1.clone(), m2.clone(), m3.clone(), m4.clone()]
    );
    let ts: Vec<u64> = arr(&all["messages"])
        .iter()
        .map(|m| m["timestamp"].as_u64().unwrap())
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "distinct timestamps: {ts:?}"
    );

    let hub_ref = &hub;
    let q = |query: String| async move { ids(&history(hub_ref, &query, ADMIN).await["messages"]) };
    assert_eq!(
        q("?from=alpha".into()).await,
        vec![m1.clone(), m3.clone(), m4.clone()]
    );
    assert_eq!(q("?to=alpha".into()).await, vec![m2.clone()]);
    assert_eq!(q("?from=alpha&to=gamma".into()).await, vec![m3.clone()]);
    assert_eq!(q("?channel=dev".into()).await, vec![m2.clone()]);
    assert_eq!(
        q(format!("?start_time={}", ts[1])).await,
        vec![m2.clone(), m3.clone(), m4.clone()],
        "start_time is inclusive"
    );
    assert_eq!(
        q(format!("?end_time={}", ts[1])).await,
        vec![m1.clone(), m2.clone()],
        "end_time is inclusive"
    );
    assert_eq!(
        q(format!("?start_time={}&end_time={}", ts[1], ts[2])).await,
        vec![m2.clone(), m3.clone()]
    );
    assert!(q("?from=nobody".into()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_history_pages_with_cursor_and_limit() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    for n in 0..55 {
        send(&hub, &alpha, json!({"payload": {"n": n}})).await;
    }
    let ns = |page: &Value| -> Vec<i64> {
        arr(&page["messages"])
            .iter()
            .map(|m| m["payload"]["n"].as_i64().unwrap())
            .collect()
    };
    let first = history(&hub, "", ADMIN).await;
    assert_eq!(
        ns(&first),
        (0..50).collect::<Vec<i64>>(),
        "default limit 50"
    );
    assert_eq!(first["count"], 50);
    let s = seqs(&first["messages"]);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "ascending: {s:?}");
    assert_eq!(first["cursor"], s[49]);

    let second = history(&hub, &format!("?cursor={}&limit=3", s[49]), ADMIN).await;
    assert_eq!(ns(&second), vec![50, 51, 52]);
    let c2 = second["cursor"].as_u64().unwrap();
    assert_eq!(c2, *seqs(&second["messages"]).last().unwrap());

    let third = history(&hub, &format!("?cursor={c2}&limit=200"), ADMIN).await;
    assert_eq!(ns(&third), vec![53, 54]);
    let c3 = third["cursor"].as_u64().unwrap();
    let done = history(&hub, &format!("?cursor={c3}"), ADMIN).await;
    assert_eq!(done, json!({"messages": [], "cursor": c3, "count": 0}));

    assert_eq!(history(&hub, "?limit=200", ADMIN).await["count"], 55);
    assert_eq!(ns(&history(&hub, "?limit=1", ADMIN).await), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_f16_message_history_rejects_bad_numeric_parameters_after_auth() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let r = hub.get("/api/messages?limit=abc", None).await;
    assert_error(&r, 401, "unauthorized", None);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=1.5", "cursor"),
        ("start_time=abc", "start_time"),
        ("end_time=soon", "end_time"),
    ] {
        let r = hub
            .get(&format!("/api/messages?{query}"), Some(&alpha))
            .await;
        assert_error(&r, 400, "invalid_field", Some(field));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_messages_are_private_to_their_sender_and_recipient() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gamma = hub.token("gamma", "agent").await;
    let a_to_c = send(
        &hub,
        &alpha,
        json!({"to": "gamma", "payload": {"secret": 1}}),
    )
    .await;
    let bcast = send(&hub, &alpha, json!({"payload": {}})).await;
    let b_to_a = send(&hub, &beta, json!({"to": "alpha", "payload": {}})).await;
    let c_to_b = send(&hub, &gamma, json!({"to": "beta", "payload": {}})).await;
    let a_to_b = send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;

    let seen = |token: String, query: &'static str| {
        let hub = &hub;
        async move { ids(&history(hub, query, &token).await["messages"]) }
    };
    assert_eq!(
        seen(beta.clone(), "").await,
        vec![
            bcast.clone(),
            b_to_a.clone(),
            c_to_b.clone(),
            a_to_b.clone()
        ],
        "beta must not see alpha → gamma"
    );
    assert_eq!(
        seen(beta.clone(), "?from=alpha").await,
        vec![bcast.clone(), a_to_b.clone()]
    );
    assert!(seen(beta.clone(), "?to=gamma").await.is_empty());
    assert_eq!(
        seen(gamma.clone(), "").await,
        vec![a_to_c.clone(), bcast.clone(), c_to_b.clone()]
    );
    assert_eq!(
        seen(ADMIN.to_string(), "").await,
        vec![a_to_c, bcast, b_to_a, c_to_b, a_to_b],
        "an admin sees everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_publishes_are_not_in_message_history() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    subscribe(&hub, &alpha, "dev").await;
    publish(&hub, &alpha, "dev", json!({"payload": {"x": 1}})).await;
    let id = send(&hub, &alpha, json!({"payload": {}})).await;
    let h = history(&hub, "", ADMIN).await;
    assert_eq!(ids(&h["messages"]), vec![id]);
}

// ---------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_reply_chains_sent_over_http_form_threads() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let gap = || tokio::time::sleep(Duration::from_millis(5));
    let m1 = send(&hub, &alpha, json!({"payload": {"q": "?"}})).await;
    gap().await;
    let m2 = send(&hub, &beta, json!({"payload": {"a": 1}, "reply_to": m1})).await;
    gap().await;
    let m3 = send(&hub, &alpha, json!({"payload": {"a": 2}, "reply_to": m2})).await;
    gap().await;
    let m4 = send(&hub, &beta, json!({"payload": {"a": 3}, "reply_to": m1})).await;
    gap().await;
    let other = send(&hub, &alpha, json!({"payload": {}})).await;

    let thread = |id: String| {
        let (hub, alpha) = (&hub, &alpha);
        async move { get_ok(hub, &format!("/api/threads/{id}"), Some(alpha)).await }
    };
    wait_for("the thread is indexed", || async {
        thread(m1.clone()).await["count"] == 4
    })
    .await;
    let t = thread(m1.clone()).await;
    assert_eq!(keys(&t), key_set(&["root", "messages", "count"]));
    assert_eq!(t["root"], m1.as_str());
    assert_eq!(
        ids(&t["messages"]),
        vec![m1.clone(), m2.clone(), m3.clone(), m4.clone()],
        "by timestamp"
    );
    for msg in arr(&t["messages"]) {
        assert_eq!(keys(msg), key_set(MESSAGE_KEYS), "{msg}");
    }
    assert_eq!(t["messages"][1]["reply_to"], m1.as_str());
    assert_eq!(t["messages"][1]["from"], "beta");

    let t3 = thread(m3.clone()).await;
    assert_eq!(
        (t3["root"].clone(), t3["count"].clone()),
        (json!(m1), json!(4))
    );

    let r = get_ok(&hub, &format!("/api/threads/{m1}/replies"), Some(&alpha)).await;
    assert_eq!(keys(&r), key_set(&["parent", "replies", "count"]));
    assert_eq!(r["parent"], m1.as_str());
    assert_eq!(ids(&r["replies"]), vec![m2.clone(), m4.clone()]);
    assert_eq!(r["count"], 2);
    let r = get_ok(&hub, &format!("/api/threads/{m2}/replies"), Some(&alpha)).await;
    assert_eq!(ids(&r["replies"]), vec![m3.clone()]);

    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{m3}/root"), Some(&alpha)).await,
        json!({"message_id": m3, "root": m1})
    );
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{m1}/root"), Some(&alpha)).await,
        json!({"message_id": m1, "root": m1})
    );
    let t = thread(other.clone()).await;
    assert_eq!(
        (t["root"].clone(), ids(&t["messages"])),
        (json!(other), vec![other.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_messages_sent_over_the_websocket_are_threaded() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let m1 = send(&hub, &alpha, json!({"payload": {"q": "?"}})).await;
    let mut ws = identify(&hub, "beta", &beta).await;
    ws.send_json(json!({
        "type": "message",
        "to": "alpha",
        "message_type": "answer",
        "payload": {"a": 1},
        "reply_to": m1,
    }))
    .await;
    let sent = ws.next_of_type("message_sent").await;
    assert!(is_hex16(&sent["id"]), "{sent}");
    let m2 = sent["id"].as_str().unwrap().to_string();

    let replies =
        || async { get_ok(&hub, &format!("/api/threads/{m1}/replies"), Some(&alpha)).await };
    wait_for("the websocket message is indexed", || async {
        replies().await["count"] == 1
    })
    .await;
    let r = replies().await;
    let reply = &r["replies"][0];
    assert_eq!(reply["id"], m2.as_str());
    assert_eq!(reply["from"], "beta");
    assert_eq!(reply["to"], "alpha");
    assert_eq!(reply["type"], "answer");
    assert_eq!(reply["reply_to"], m1.as_str());
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{m2}/root"), Some(&alpha)).await,
        json!({"message_id": m2, "root": m1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_queries_on_an_unknown_id_are_empty_and_need_a_token() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let x = "0123456789abcdef";
    for suffix in ["", "/replies", "/root"] {
        let r = hub.get(&format!("/api/threads/{x}{suffix}"), None).await;
        assert_error(&r, 401, "unauthorized", None);
    }
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{x}?token={alpha}"), None).await,
        json!({"root": x, "messages": [], "count": 0})
    );
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{x}/replies"), Some(&alpha)).await,
        json!({"parent": x, "replies": [], "count": 0})
    );
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{x}/root"), Some(&alpha)).await,
        json!({"message_id": x, "root": x})
    );
}

/// The root walk follows `reply_to` until an id that is not stored or has no `reply_to`
/// (reference §6.6), so a reply to an unknown id is rooted at that unknown id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_of_a_reply_to_an_unknown_id_holds_just_that_reply() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let unknown = "feedfacefeedface";
    let m = send(&hub, &alpha, json!({"payload": {}, "reply_to": unknown})).await;
    let thread = || async { get_ok(&hub, &format!("/api/threads/{m}"), Some(&alpha)).await };
    wait_for("the reply is indexed", || async {
        thread().await["count"] == 1
    })
    .await;
    let t = thread().await;
    assert_eq!(ids(&t["messages"]), vec![m.clone()]);
    assert_eq!(t["root"], unknown);
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{m}/root"), Some(&alpha)).await,
        json!({"message_id": m, "root": unknown})
    );
    assert_eq!(
        ids(&get_ok(
            &hub,
            &format!("/api/threads/{unknown}/replies"),
            Some(&alpha)
        )
        .await["replies"]),
        vec![m.clone()]
    );
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{m}/replies"), Some(&alpha)).await["count"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_channel_publishes_are_threaded_and_counted() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    create_channel(&hub, &alpha, "dev").await;
    let m1 = send(&hub, &alpha, json!({"payload": {}})).await;
    publish(
        &hub,
        &alpha,
        "dev",
        json!({"payload": {"x": 1}, "reply_to": m1}),
    )
    .await;
    let p = channel_history(&hub, "dev", "").await["messages"][0]["message"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let replies =
        || async { get_ok(&hub, &format!("/api/threads/{m1}/replies"), Some(&alpha)).await };
    wait_for("the publish is indexed", || async {
        replies().await["count"] == 1
    })
    .await;
    assert_eq!(ids(&replies().await["replies"]), vec![p.clone()]);
    assert_eq!(
        get_ok(&hub, &format!("/api/threads/{p}/root"), Some(&alpha)).await,
        json!({"message_id": p, "root": m1})
    );
    wait_for("both messages are counted for the sender", || async {
        agent_stats(&hub, "alpha")
            .await
            .is_some_and(|s| s["messages_sent_24h"] == 2)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Analytics
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_messages_are_counted_in_analytics() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let mut alpha_ws = identify(&hub, "alpha", &alpha).await;
    let mut beta_ws = identify(&hub, "beta", &beta).await;

    send(&hub, &alpha, json!({"to": "beta", "payload": {}})).await;
    send(&hub, &alpha, json!({"payload": {}})).await;
    beta_ws
        .send_json(json!({"type": "message", "to": "alpha", "payload": {}}))
        .await;
    beta_ws.next_of_type("message_sent").await;
    alpha_ws.next_of_type("message").await;

    let counts = |s: &Value| {
        (
            s["messages_sent_24h"].clone(),
            s["messages_received_24h"].clone(),
        )
    };
    wait_for("the counters are fed", || async {
        let a = agent_stats(&hub, "alpha").await;
        let b = agent_stats(&hub, "beta").await;
        a.is_some_and(|a| counts(&a) == (json!(2), json!(1)))
            && b.is_some_and(|b| counts(&b) == (json!(1), json!(1)))
    })
    .await;

    let all = get_ok(&hub, "/api/analytics/agents", None).await;
    assert_eq!(keys(&all), key_set(&["agents"]));
    let listed: Vec<String> = arr(&all["agents"])
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, strings(&["alpha", "beta"]), "sorted by agent_id");
    let a = agent_stats(&hub, "alpha").await.unwrap();
    assert_eq!(
        keys(&a),
        key_set(&[
            "agent_id",
            "connected",
            "idle_ms",
            "status",
            "messages_sent_24h",
            "messages_received_24h",
            "messages_sent_this_hour",
            "connection_time_24h_ms",
            "last_active",
            "last_seen",
            "total_connections"
        ])
    );
    assert_eq!(a["connected"], true);
    assert_eq!(a["status"], "active");
    assert_eq!(a["messages_sent_this_hour"], 2);
    assert_eq!(a["total_connections"], 1);
    assert!(a["idle_ms"].is_u64() && a["last_active"].is_u64(), "{a}");

    let summary = get_ok(&hub, "/api/analytics/summary", None).await;
    let ts = summary["timestamp"].clone();
    assert!(ts.is_u64());
    assert_eq!(
        summary,
        json!({
            "total_agents": 2,
            "agents_connected": 2,
            "agents_active": 2,
            "agents_idle": 0,
            "agents_offline": 0,
            "total_messages_24h": 3,
            "timestamp": ts,
        })
    );

    let hourly = get_ok(&hub, "/api/analytics/agents/alpha/hourly", None).await;
    let now = &arr(&hourly["hourly"])[23];
    assert_eq!(
        (now["sent"].clone(), now["received"].clone()),
        (json!(2), json!(1))
    );
    let hourly = get_ok(&hub, "/api/analytics/agents/beta/hourly", None).await;
    let now = &arr(&hourly["hourly"])[23];
    assert_eq!(
        (now["sent"].clone(), now["received"].clone()),
        (json!(1), json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_summary_agents_and_hourly_have_the_reference_shapes() {
    let hub = TestHub::start().await;
    let before = now_ms();
    let summary = get_ok(&hub, "/api/analytics/summary", None).await;
    let after = now_ms();
    let ts = summary["timestamp"].as_u64().expect("timestamp");
    assert!(before <= ts && ts <= after, "{summary}");
    assert_eq!(
        summary,
        json!({
            "total_agents": 0,
            "agents_connected": 0,
            "agents_active": 0,
            "agents_idle": 0,
            "agents_offline": 0,
            "total_messages_24h": 0,
            "timestamp": ts,
        })
    );
    assert_eq!(
        get_ok(&hub, "/api/analytics/agents", None).await,
        json!({"agents": []})
    );

    const HOUR: u64 = 3_600_000;
    let before = now_ms() / HOUR * HOUR;
    let h = get_ok(&hub, "/api/analytics/agents/nobody/hourly", None).await;
    let after = now_ms() / HOUR * HOUR;
    assert_eq!(keys(&h), key_set(&["agent_id", "hourly"]));
    assert_eq!(h["agent_id"], "nobody");
    let buckets = arr(&h["hourly"]);
    assert_eq!(buckets.len(), 24);
    let last = buckets[23]["bucket"].as_u64().expect("bucket");
    assert!(last == before || last == after, "current bucket {last}");
    for (i, b) in buckets.iter().enumerate() {
        assert_eq!(keys(b), key_set(&["bucket", "hour", "sent", "received"]));
        let bucket = last - (23 - i as u64) * HOUR;
        assert_eq!(b["bucket"], bucket, "oldest first");
        assert_eq!(
            b["hour"],
            format!("{:02}:00", bucket / HOUR % 24),
            "UTC HH:MM"
        );
        assert_eq!(
            (b["sent"].clone(), b["received"].clone()),
            (json!(0), json!(0))
        );
    }
}

// ---------------------------------------------------------------------------------------
// Presence and agent state
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_agent_list_is_open_and_reads_idle_right_after_identify() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    assert_eq!(
        get_ok(&hub, "/api/agents", None).await,
        json!({"agents": []})
    );

    let caps = json!(["code", {"name": "review", "level": 2}]);
    let before = now_ms();
    let _a = identify_with(
        &hub,
        json!({"agent_id": "alpha", "token": alpha, "name": "Alpha Bot", "capabilities": caps}),
    )
    .await;
    let listed = get_ok(&hub, "/api/agents", None).await;
    assert_eq!(keys(&listed), key_set(&["agents"]));
    let agents = arr(&listed["agents"]);
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(
        keys(a),
        key_set(&[
            "agent_id",
            "name",
            "status",
            "capabilities",
            "connected_at",
            "fsm_state"
        ])
    );
    assert_eq!(a["agent_id"], "alpha");
    assert_eq!(a["name"], "Alpha Bot");
    assert_eq!(a["status"], "connected");
    assert_eq!(a["capabilities"], caps, "echoed as sent");
    assert!(a["connected_at"].as_u64().unwrap() >= before);
    assert_eq!(a["fsm_state"], "idle", "the original said \"unknown\" here");

    let _b = identify(&hub, "beta", &beta).await;
    let listed = get_ok(&hub, "/api/agents", None).await;
    let b = arr(&listed["agents"])
        .iter()
        .find(|a| a["agent_id"] == "beta")
        .expect("beta listed")
        .clone();
    assert_eq!(b["name"], "beta", "name defaults to the agent id");
    assert_eq!(b["capabilities"], json!([]));
    assert_eq!(b["fsm_state"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_routes_have_the_reference_shapes() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let _ws = identify_with(
        &hub,
        json!({"agent_id": "alpha", "token": alpha,
               "capabilities": ["code", {"name": "review", "level": 2}]}),
    )
    .await;

    let r = hub.get("/api/agents/states", None).await;
    assert_unauthorized_bearer(&r);
    let r = hub.get("/api/agents/alpha/state", None).await;
    assert_unauthorized_bearer(&r);

    let fsm_keys = [
        "agent_id",
        "fsm_state",
        "current_task_id",
        "capabilities",
        "flags",
        "connected_at",
        "name",
    ];
    let all = get_ok(&hub, "/api/agents/states", Some(&alpha)).await;
    assert_eq!(keys(&all), key_set(&["agents"]));
    let a = arr(&all["agents"])
        .iter()
        .find(|a| a["agent_id"] == "alpha")
        .expect("alpha listed")
        .clone();
    assert_eq!(keys(&a), key_set(&fsm_keys));
    assert_eq!(a["fsm_state"], "idle");
    assert_eq!(a["current_task_id"], Value::Null);
    assert_eq!(
        a["capabilities"],
        json!([{"name": "code"}, {"name": "review", "level": 2}]),
        "normalised capabilities"
    );
    assert_eq!(a["flags"], json!([]));
    assert_eq!(a["name"], "alpha");
    assert!(a["connected_at"].is_u64());

    let one = get_ok(&hub, "/api/agents/alpha/state", Some(&alpha)).await;
    let mut with_change = key_set(&fsm_keys);
    with_change.insert("last_state_change".into());
    assert_eq!(keys(&one), with_change);
    assert_eq!(one["fsm_state"], "idle");
    assert!(one["last_state_change"].is_u64());

    let r = hub.get("/api/agents/ghost/state", Some(&alpha)).await;
    assert_error(&r, 404, "agent_not_found", None);
}

// ---------------------------------------------------------------------------------------
// Onboarding
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_registration_needs_an_admin_token() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker", "agent").await;
    let viewer = hub.token("screen", "viewer").await;
    let body = json!({"agent_id": "newbie"});

    let r = post(&hub, "/api/onboard/register", None, body.clone()).await;
    assert_error(&r, 401, "unauthorized", None);
    for token in [&agent, &viewer] {
        let r = post(&hub, "/api/onboard/register", Some(token), body.clone()).await;
        assert_eq!(r.status, 403, "{r:?}");
        let code = r.json["error"].as_str().unwrap_or_default();
        assert!(["admin_only", "forbidden"].contains(&code), "{r:?}");
    }
    assert_eq!(token_count(&hub, "newbie").await, 0, "nothing minted");

    let r = post(&hub, "/api/onboard/register", Some(ADMIN), body).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(token_count(&hub, "newbie").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_returns_a_token_that_identifies_and_the_default_repo() {
    let hub = TestHub::start().await;
    let r = post(
        &hub,
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "newbie"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        keys(&r.json),
        key_set(&[
            "agent_id",
            "token",
            "hub_ws_url",
            "hub_api_url",
            "default_repo"
        ])
    );
    assert_eq!(r.json["agent_id"], "newbie");
    assert_eq!(r.json["hub_ws_url"], format!("ws://{}/ws", hub.addr));
    assert_eq!(r.json["hub_api_url"], format!("http://{}", hub.addr));
    assert_eq!(r.json["default_repo"], Value::Null);
    let token = r.json["token"].as_str().unwrap().to_string();
    assert!(
        token.len() == 64
            && token
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );

    // The token is an agent token for that id.
    let _ws = identify(&hub, "newbie", &token).await;
    send(&hub, &token, json!({"to": "someone", "payload": {}})).await;

    let url = "https://git.example/team/repo.git";
    let r = hub
        .send_json(
            "PUT",
            "/api/config/default-repo",
            Some(ADMIN),
            json!({"url": url}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = post(
        &hub,
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "second"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json["default_repo"].clone()),
        (201, json!(url))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_refuses_taken_and_invalid_agent_ids() {
    let hub = TestHub::start().await;
    let taken = hub.token("taken", "agent").await;
    let r = post(
        &hub,
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "taken"}),
    )
    .await;
    assert_error(&r, 409, "agent_id already registered", None);
    let r = post(
        &hub,
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "newbie"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = post(
        &hub,
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "newbie"}),
    )
    .await;
    assert_error(&r, 409, "agent_id already registered", None);

    for body in [
        json!({}),
        json!({"agent_id": ""}),
        json!({"agent_id": "a b"}),
        json!({"agent_id": "a/b"}),
        json!({"agent_id": 42}),
        json!({"agent_id": null}),
    ] {
        let r = post(&hub, "/api/onboard/register", Some(ADMIN), body.clone()).await;
        assert_error(&r, 400, "missing or invalid field: agent_id", None);
    }
    assert_eq!(token_count(&hub, "taken").await, 1);
    assert_eq!(token_count(&hub, "newbie").await, 1);
    // The existing token still works.
    send(&hub, &taken, json!({"payload": {}})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_needs_no_token_but_never_mints_for_an_existing_id() {
    let hub = TestHub::start_with(&["--open-registration"]).await;
    let _taken = hub.token("taken", "agent").await;
    let r = post(
        &hub,
        "/api/onboard/register",
        None,
        json!({"agent_id": "newbie"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["agent_id"], "newbie");
    for id in ["newbie", "taken"] {
        let r = post(
            &hub,
            "/api/onboard/register",
            None,
            json!({ "agent_id": id }),
        )
        .await;
        assert_error(&r, 409, "agent_id already registered", None);
    }
    let r = post(
        &hub,
        "/api/onboard/register",
        None,
        json!({"agent_id": "a b"}),
    )
    .await;
    assert_error(&r, 400, "missing or invalid field: agent_id", None);
    assert_eq!(token_count(&hub, "newbie").await, 1);
    assert_eq!(token_count(&hub, "taken").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f19_onboarding_urls_follow_the_host_header_without_inventing_port_80() {
    let hub = TestHub::start().await;
    let r = post_with_host(
        &hub.addr,
        "hub.example",
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "one"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["hub_ws_url"], "ws://hub.example/ws");
    assert_eq!(r.json["hub_api_url"], "http://hub.example");

    let r = post_with_host(
        &hub.addr,
        "hub.example:8080",
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "two"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["hub_ws_url"], "ws://hub.example:8080/ws");
    assert_eq!(r.json["hub_api_url"], "http://hub.example:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f19_onboarding_urls_follow_the_public_url() {
    let hub = TestHub::start_with(&["--public-url", "https://hub.example"]).await;
    let r = post(
        &hub,
        "/api/onboard/register",
        Some(ADMIN),
        json!({"agent_id": "one"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["hub_ws_url"], "wss://hub.example/ws");
    assert_eq!(r.json["hub_api_url"], "https://hub.example");
}

// ---------------------------------------------------------------------------------------
// Admin reset
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reset_is_for_admins_only() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker", "agent").await;
    let viewer = hub.token("screen", "viewer").await;
    let ops = hub.token("ops", "admin").await;

    let r = post(&hub, "/api/admin/reset", None, json!({})).await;
    assert_unauthorized_bearer(&r);
    for token in [&agent, &viewer] {
        let r = post(&hub, "/api/admin/reset", Some(token), json!({})).await;
        assert_error(&r, 403, "admin_only", None);
    }
    let r = post(&hub, "/api/admin/reset", Some(&ops), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["status"], "reset_scheduled");
    assert_eq!(r.json["triggered_by"], "ops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f25_a_connected_agent_still_receives_messages_after_an_admin_reset() {
    let hub = TestHub::start().await;
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    let mut ws = identify(&hub, "beta", &beta).await;

    let r = post(&hub, "/api/admin/reset", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Let the reset run: wait until the messaging actors report a restart, or at most 5 s.
    let restarted = common::eventually(WAIT, || async {
        let actors = get_ok(&hub, "/api/admin/actors", Some(ADMIN)).await;
        let relevant: Vec<&Value> = actors["actors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|a| {
                        ["pubsub", "presence", "mailbox", "channels"]
                            .contains(&a["name"].as_str().unwrap_or(""))
                    })
                    .collect()
            })
            .unwrap_or_default();
        !relevant.is_empty()
            && relevant
                .iter()
                .all(|a| a["restarts"].as_u64().unwrap_or(0) >= 1)
    })
    .await;
    if !restarted {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let direct = send(&hub, &alpha, json!({"to": "beta", "payload": {"n": 1}})).await;
    let push = ws.next_of_type("message").await;
    assert_eq!(push["id"], direct.as_str(), "direct message after reset");
    let bcast = send(&hub, &alpha, json!({"payload": {"n": 2}})).await;
    let push = ws.next_of_type("message").await;
    assert_eq!(push["id"], bcast.as_str(), "broadcast after reset");
    assert_eq!(mailbox_count(&hub, "beta", &beta).await, 0, "still online");
}

// ---------------------------------------------------------------------------------------
// Web push (routes 45–47)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_worker_is_served_with_its_scope_header() {
    let hub = TestHub::start().await;
    let r = hub.get("/sw.js", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(r.headers.get("service-worker-allowed").unwrap(), "/");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("addEventListener('push'") && body.contains("notificationclick"),
        "{body}"
    );
}

fn decode_base64url(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = alphabet
            .iter()
            .position(|a| *a == c)
            .expect("base64url character") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vapid_key_is_an_uncompressed_p256_point_that_survives_restarts() {
    let mut hub = TestHub::start().await;
    let r = hub.get("/api/dashboard/vapid-key", None).await;
    assert_eq!(r.status, 200);
    let key = r.json["vapid_public_key"].as_str().unwrap().to_string();
    assert!(
        !key.contains('=') && !key.contains('+') && !key.contains('/'),
        "unpadded base64url: {key}"
    );
    let point = decode_base64url(&key);
    assert_eq!((point.len(), point[0]), (65, 4));
    hub.restart().await;
    let again = hub.get("/api/dashboard/vapid-key", None).await.json["vapid_public_key"].clone();
    assert_eq!(
        again,
        json!(key),
        "the original regenerated its keys at every boot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_push_subscriptions_need_a_dashboard_token_and_an_object() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker", "agent").await;
    let viewer = hub.token("screen", "viewer").await;
    // A usable subscription (the keys of RFC 8291's example); tests/push.rs covers the rest.
    let sub = json!({"endpoint": "https://push.example/abc", "keys": {
        "p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        "auth": "BTBZMqHH6r4Tts7J_aSIgg"}});
    let r = hub
        .send_json("POST", "/api/dashboard/push-subscribe", None, sub.clone())
        .await;
    assert_eq!(r.status, 401);
    let r = hub
        .send_json(
            "POST",
            "/api/dashboard/push-subscribe",
            Some(&agent),
            sub.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = hub
        .send_json(
            "POST",
            "/api/dashboard/push-subscribe",
            Some(&viewer),
            json!([1, 2]),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (400, json!("invalid_body"))
    );
    let big = json!({"endpoint": "x".repeat(5000)});
    let r = hub
        .send_json("POST", "/api/dashboard/push-subscribe", Some(&viewer), big)
        .await;
    assert_eq!(r.status, 413);
    let r = hub
        .send_json("POST", "/api/dashboard/push-subscribe", Some(&viewer), sub)
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "subscribed"}))
    );
}
