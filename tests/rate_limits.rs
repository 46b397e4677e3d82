//! Black-box tests of the rate limits (issue 9, "Rate limits"): one token bucket per caller
//! for its HTTP requests and websocket frames together, one per peer address for
//! unauthenticated sign-ins and registrations. A refused request is answered
//! `429 {"error":"rate_limited","retry_after_ms"}` with `Retry-After` (a websocket frame:
//! an `error` frame of the same shape) and has no effect.
//!
//! The limits here are small and slow (one token every two seconds) so that a burst sent
//! as fast as the test can is refused whatever the machine's load; assertions on how many
//! got through allow for the tokens that came back while the burst was being sent.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Frame, Reply, TestHub, Ws, ADMIN};
use serde_json::{json, Value};

/// One token every two seconds, `burst` at once, for callers.
fn caller_limit(burst: u32) -> Vec<String> {
    vec![
        "--rate-limit-per-sec".into(),
        "0.5".into(),
        "--rate-limit-burst".into(),
        burst.to_string(),
    ]
}

/// The most requests that can have got through since `started` under `caller_limit`:
/// the burst, and one token per 2 s since (one more for a token partly refilled).
fn most_through(burst: usize, started: Instant) -> usize {
    burst + (started.elapsed().as_millis() / 2000) as usize + 1
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A 429 with the body and header of a refused request; its `retry_after_ms`.
fn assert_rate_limited(r: &Reply) -> u64 {
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json["error"], "rate_limited", "{r:?}");
    let ms = r.json["retry_after_ms"].as_u64().expect("retry_after_ms");
    // One token every 2 s: the next is at most 2 s away.
    assert!((1..=2000).contains(&ms), "{r:?}");
    let header = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .expect("Retry-After");
    assert_eq!(header, ms.div_ceil(1000).to_string(), "{r:?}");
    ms
}

/// A websocket `rate_limited` error frame; its `retry_after_ms`.
fn assert_rate_limited_frame(v: &Value) -> u64 {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "rate_limited", "{v}");
    let ms = v["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=2000).contains(&ms), "{v}");
    ms
}

async fn wait_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The ids of the messages in `agent`'s mailbox (read with the owner's token).
async fn mailbox_ids(hub: &TestHub, agent: &str, token: &str) -> BTreeSet<String> {
    let r = hub.get(&format!("/api/mailbox/{agent}"), Some(token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

async fn token_count(hub: &TestHub, agent_id: &str) -> usize {
    let r = hub.get("/admin/tokens", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter(|t| t["agent_id"] == agent_id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flooding_http_gets_429_and_its_refused_requests_have_no_effect() {
    let hub = TestHub::start_with(&args(&caller_limit(5))).await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await;

    let mut sent = BTreeSet::new();
    let mut refused = Vec::new();
    let started = Instant::now();
    for n in 0..10 {
        let r = hub
            .send_json(
                "POST",
                "/api/message",
                Some(&alice),
                json!({"to": "bob", "payload": {"n": n}}),
            )
            .await;
        match r.status {
            200 => assert!(sent.insert(r.json["id"].as_str().expect("id").to_string())),
            _ => refused.push(assert_rate_limited(&r)),
        }
    }
    // The burst of five goes through; the rest (but for tokens that came back while the
    // burst was sent) is refused.
    assert!(
        (5..=most_through(5, started)).contains(&sent.len()),
        "sent {sent:?}"
    );
    assert!(!refused.is_empty());
    // Only what was answered 200 was delivered; bob's bucket is his own.
    assert_eq!(mailbox_ids(&hub, "bob", &bob).await, sent);

    // Any route counts, and a refused request is refused before its handler runs.
    let r = hub.get("/api/mailbox/alice", Some(&alice)).await;
    let retry = assert_rate_limited(&r);

    // After retry_after_ms the caller is served again.
    wait_ms(retry).await;
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "bob", "payload": {"n": "late"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(mailbox_ids(&hub, "bob", &bob).await.len(), sent.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_flood_gets_rate_limited_frames_and_refused_frames_have_no_effect() {
    let hub = TestHub::start_with(&args(&caller_limit(5))).await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await;
    // Identifying is not counted: the connection has no caller until it has identified.
    let mut ws = hub.identify("alice", &alice, json!({})).await;

    let started = Instant::now();
    for n in 0..10 {
        ws.send_json(json!({"type": "message", "to": "bob", "payload": {"n": n}}))
            .await;
    }
    let mut sent = BTreeSet::new();
    let mut refused = Vec::new();
    while sent.len() + refused.len() < 10 {
        let v = ws.next_json().await;
        match v["type"].as_str() {
            Some("message_sent") => assert!(sent.insert(v["id"].as_str().unwrap().to_string())),
            Some("error") => refused.push(assert_rate_limited_frame(&v)),
            _ => {}
        }
    }
    assert!(
        (5..=most_through(5, started)).contains(&sent.len()),
        "sent {sent:?}"
    );
    assert!(!refused.is_empty());
    // Refused messages were neither delivered nor stored: bob's mailbox holds exactly the
    // ones answered message_sent.
    assert_eq!(mailbox_ids(&hub, "bob", &bob).await, sent);

    // The socket's frames and the caller's HTTP requests draw on one bucket.
    let r = hub.get("/api/mailbox/alice", Some(&alice)).await;
    let retry = assert_rate_limited(&r);

    // The connection stays open, and is served again after retry_after_ms.
    wait_ms(retry).await;
    ws.send_json(json!({"type": "message", "to": "bob", "payload": {"n": "late"}}))
        .await;
    let v = ws.next_of_type("message_sent").await;
    let mut expected = sent.clone();
    expected.insert(v["id"].as_str().unwrap().to_string());
    assert_eq!(mailbox_ids(&hub, "bob", &bob).await, expected);
}

/// The next answer to a `request_snapshot` on a dashboard socket: a snapshot, or an error.
async fn snapshot_answer(ws: &mut Ws) -> Value {
    loop {
        match ws.next(Duration::from_secs(10)).await {
            Frame::Json(v) if v["type"] == "snapshot" || v["type"] == "error" => return v,
            Frame::Json(_) => {}
            Frame::Closed(code) => panic!("dashboard socket closed: {code:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sockets_of_one_caller_share_its_bucket() {
    let hub = TestHub::start_with(&args(&caller_limit(6))).await;
    let viewer = hub.token("screen", "viewer").await;
    let started = Instant::now();
    // Each upgrade request is one of the caller's HTTP requests (2 of 6); each socket
    // gets the snapshot it opens with without asking.
    let mut a = hub.ws("/ws/dashboard", Some(&viewer)).await.expect("ws");
    let mut b = hub.ws("/ws/dashboard", Some(&viewer)).await.expect("ws");
    assert_eq!(snapshot_answer(&mut a).await["type"], "snapshot");
    assert_eq!(snapshot_answer(&mut b).await["type"], "snapshot");

    let mut answers = Vec::new();
    for _ in 0..4 {
        for ws in [&mut a, &mut b] {
            ws.send_json(json!({"type": "request_snapshot"})).await;
            answers.push(snapshot_answer(ws).await);
        }
    }
    let snapshots = answers.iter().filter(|v| v["type"] == "snapshot").count();
    for v in answers.iter().filter(|v| v["type"] == "error") {
        assert_rate_limited_frame(v);
    }
    // Four tokens left for eight requests over two sockets.
    assert!(
        (4..=most_through(4, started)).contains(&snapshots),
        "{answers:?}"
    );
    assert!(snapshots < 8, "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_not_limited_unless_rate_limit_admin_is_on() {
    let hub = TestHub::start_with(&args(&caller_limit(2))).await;
    for _ in 0..30 {
        let r = hub.get("/api/tasks", Some(ADMIN)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let mut ws = hub.ws("/ws/dashboard", Some(ADMIN)).await.expect("ws");
    assert_eq!(snapshot_answer(&mut ws).await["type"], "snapshot");
    for _ in 0..5 {
        ws.send_json(json!({"type": "request_snapshot"})).await;
        assert_eq!(snapshot_answer(&mut ws).await["type"], "snapshot");
    }
    drop(hub);

    let mut flags = caller_limit(2);
    flags.push("--rate-limit-admin".into());
    let hub = TestHub::start_with(&args(&flags)).await;
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..6 {
            out.push(hub.get("/api/tasks", Some(ADMIN)).await.status);
        }
        out
    };
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let r = hub.get("/api/tasks", Some(ADMIN)).await;
    assert_rate_limited(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_sign_in_from_one_address_are_limited() {
    let hub = TestHub::start_with(&[
        "--open-registration",
        "--anonymous-rate-limit-per-sec",
        "0.5",
        "--anonymous-rate-limit-burst",
        "3",
    ])
    .await;
    let mut registered = Vec::new();
    let mut refused = Vec::new();
    let started = Instant::now();
    for i in 0..8 {
        let id = format!("newbie-{i}");
        let r = hub
            .send_json(
                "POST",
                "/api/onboard/register",
                None,
                json!({"agent_id": id}),
            )
            .await;
        match r.status {
            201 => registered.push(id),
            _ => {
                assert_rate_limited(&r);
                refused.push(id);
            }
        }
    }
    assert!(
        (3..=most_through(3, started)).contains(&registered.len()),
        "{registered:?}"
    );
    assert!(!refused.is_empty());
    assert_eq!(&registered[..3], &["newbie-0", "newbie-1", "newbie-2"]);
    // A refused registration minted nothing.
    for id in &refused {
        assert_eq!(token_count(&hub, id).await, 0, "{id}");
    }
    // Sign-in attempts from the same address draw on the same bucket.
    let r = hub
        .send_json(
            "POST",
            "/api/dashboard/login",
            None,
            json!({"token": "f".repeat(64)}),
        )
        .await;
    let retry = assert_rate_limited(&r);
    // A caller with a credential is limited as that caller, not by its address: the
    // admin registers at once.
    let r = hub
        .send_json(
            "POST",
            "/api/onboard/register",
            Some(ADMIN),
            json!({"agent_id": "by-admin"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    // After retry_after_ms the address is served again.
    wait_ms(retry).await;
    let r = hub
        .send_json(
            "POST",
            "/api/onboard/register",
            None,
            json!({"agent_id": "patient"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_never_limited() {
    let mut flags = caller_limit(1);
    flags.extend(
        [
            "--rate-limit-admin",
            "--anonymous-rate-limit-per-sec",
            "0.5",
            "--anonymous-rate-limit-burst",
            "1",
        ]
        .map(String::from),
    );
    let hub = TestHub::start_with(&args(&flags)).await;
    // The admin's one token goes on a request that is then refused.
    assert_eq!(hub.get("/api/tasks", Some(ADMIN)).await.status, 200);
    assert_rate_limited(&hub.get("/api/tasks", Some(ADMIN)).await);
    for _ in 0..50 {
        assert_eq!(hub.get("/health", None).await.status, 200);
        assert_eq!(hub.get("/health", Some(ADMIN)).await.status, 200);
    }
    for _ in 0..5 {
        let r = hub.get("/metrics", Some(ADMIN)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            text.contains("agentcom_rate_limited_total{limit=\"caller\"} 1"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_agent_is_not_limited_at_the_default_limits() {
    let hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let mut ws = hub.identify("alice", &alice, json!({})).await;
    // 800 frames as fast as the hub answers them, in pipelined batches of 100 (the
    // outbound queue of a client that does not read holds 128), and HTTP requests between
    // them: far over what any agent of the reference sends (a ping every 30 s, a few
    // frames a task), and within the default burst (1,000).
    for _ in 0..8 {
        for _ in 0..100 {
            ws.send_json(json!({"type": "ping"})).await;
        }
        assert_eq!(
            hub.get("/api/mailbox/alice", Some(&alice)).await.status,
            200
        );
        let mut pongs = 0;
        while pongs < 100 {
            let v = ws.next_json().await;
            assert_ne!(v["type"], "error", "{v}");
            if v["type"] == "pong" {
                pongs += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_turns_the_limits_off() {
    let hub = TestHub::start_with(&[
        "--open-registration",
        "--rate-limit-per-sec",
        "0",
        "--rate-limit-burst",
        "1",
        "--anonymous-rate-limit-per-sec",
        "0",
        "--anonymous-rate-limit-burst",
        "1",
    ])
    .await;
    let alice = hub.token("alice", "agent").await;
    for i in 0..30 {
        let r = hub.get("/api/mailbox/alice", Some(&alice)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = hub
            .send_json(
                "POST",
                "/api/onboard/register",
                None,
                json!({"agent_id": format!("n-{i}")}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
}
