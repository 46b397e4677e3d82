//! Black-box tests of identifier and value validation (issue 9, findings 5, 10 and 14): ids
//! that become store keys (`to`, `reply_to`, channel names, mailbox routes) are bounded and
//! can never make a key that reads as another owner's; totals saturate; config values are
//! bounded. A refused request leaves no mailbox, analytics or channel entry behind.

mod common;

use std::time::Duration;

use common::{eventually, TestHub, Ws, ADMIN};
use serde_json::{json, Value};

/// Pushes an agent may receive at any time; skipped when waiting for a reply.
const PUSHES: &[&str] = &[
    "agent_joined",
    "agent_left",
    "status_changed",
    "message",
    "channel_message",
    "channel_agent_joined",
];

/// The direct answer to the last request: the next frame that is not a push.
async fn reply(ws: &mut Ws) -> Value {
    loop {
        let v = ws.next_json().await;
        if !PUSHES.contains(&v["type"].as_str().unwrap_or("")) {
            return v;
        }
    }
}

fn assert_invalid_http(r: &common::Reply, field: &str) {
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json["error"], "invalid_field", "{r:?}");
    assert_eq!(r.json["field"], field, "{r:?}");
}

fn assert_invalid_frame(v: &Value, field: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "invalid_field", "{v}");
    assert_eq!(v["field"], field, "{v}");
}

async fn mailbox_count(hub: &TestHub, agent: &str, token: &str) -> u64 {
    let r = hub.get(&format!("/api/mailbox/{agent}"), Some(token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["count"].as_u64().expect("count")
}

/// The agent ids analytics knows, and the size of the (unauthenticated) listing.
async fn analytics_agents(hub: &TestHub) -> (Vec<String>, usize) {
    let r = hub.get("/api/analytics/agents", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let ids = r.json["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| a["agent_id"].as_str().expect("agent_id").to_string())
        .collect();
    (ids, r.body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_with_nul_never_lands_in_another_agents_mailbox() {
    let hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await;

    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "bob\u{0}x", "payload": {"n": 1}}),
        )
        .await;
    assert_invalid_http(&r, "to");

    let mut ws = hub.identify("alice", &alice, json!({})).await;
    ws.send_json(json!({"type": "message", "to": "bob\u{0}y", "payload": {"n": 2}}))
        .await;
    assert_invalid_frame(&reply(&mut ws).await, "to");

    // Nothing reached bob's mailbox, and a real message still does, with a seq that
    // `last_seq` covers.
    assert_eq!(mailbox_count(&hub, "bob", &bob).await, 0);
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "bob", "payload": {"n": 3}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = hub.get("/api/mailbox/bob", Some(&bob)).await;
    assert_eq!(r.json["count"], 1, "{r:?}");
    assert_eq!(r.json["messages"][0]["payload"], json!({"n": 3}));
    assert_eq!(r.json["last_seq"], r.json["messages"][0]["seq"]);

    let (ids, _) = analytics_agents(&hub).await;
    assert!(ids.iter().all(|id| !id.contains('\0')), "{ids:?}");

    // A mailbox route with such an id is refused, even for an admin.
    let r = hub.get("/api/mailbox/bob%00x", Some(ADMIN)).await;
    assert_invalid_http(&r, "agent_id");
    let r = hub
        .send_json(
            "POST",
            "/api/mailbox/bob%00x/ack",
            Some(ADMIN),
            json!({"seq": 1}),
        )
        .await;
    assert_invalid_http(&r, "agent_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_to_is_refused_and_analytics_stays_small() {
    let hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let huge = "x".repeat(1_000_000);

    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": huge, "payload": {}}),
        )
        .await;
    assert_invalid_http(&r, "to");

    let mut ws = hub.identify("alice", &alice, json!({})).await;
    ws.send_json(json!({"type": "message", "to": huge, "payload": {}}))
        .await;
    assert_invalid_frame(&reply(&mut ws).await, "to");

    // A 129-byte id is one too long; 128 is fine.
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "y".repeat(129), "payload": {}}),
        )
        .await;
    assert_invalid_http(&r, "to");
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "z".repeat(128), "payload": {}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // `reply_to` becomes a key of the thread index: bounded the same way.
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "bob", "reply_to": huge, "payload": {}}),
        )
        .await;
    assert_invalid_http(&r, "reply_to");
    ws.send_json(
        json!({"type": "message", "to": "bob", "reply_to": "r".repeat(129), "payload": {}}),
    )
    .await;
    assert_invalid_frame(&reply(&mut ws).await, "reply_to");
    let r = hub.get("/api/mailbox/bob", Some(ADMIN)).await;
    assert_eq!(r.json["count"], 0, "{r:?}");

    // Analytics counts the 128-byte recipient once it is processed, and nothing else.
    let z = "z".repeat(128);
    assert!(
        eventually(Duration::from_secs(10), || async {
            analytics_agents(&hub).await.0.contains(&z)
        })
        .await
    );
    let (ids, size) = analytics_agents(&hub).await;
    assert!(
        ids.iter().all(|id| id.len() <= 128),
        "{:?}",
        ids.iter().map(String::len).collect::<Vec<_>>()
    );
    assert!(size < 4096, "GET /api/analytics/agents is {size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_channel_name_is_refused() {
    let hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let long = "c".repeat(200);

    let r = hub
        .send_json("POST", "/api/channels", Some(&alice), json!({"name": long}))
        .await;
    assert_invalid_http(&r, "name");
    let r = hub
        .send_json(
            "POST",
            &format!("/api/channels/{long}/subscribe"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_invalid_http(&r, "channel");
    let r = hub
        .send_json(
            "POST",
            &format!("/api/channels/{long}/publish"),
            Some(&alice),
            json!({"payload": {}}),
        )
        .await;
    assert_invalid_http(&r, "channel");

    let mut ws = hub.identify("alice", &alice, json!({})).await;
    ws.send_json(json!({"type": "channel_subscribe", "channel": long}))
        .await;
    assert_invalid_frame(&reply(&mut ws).await, "channel");
    ws.send_json(json!({"type": "channel_publish", "channel": long, "payload": {}}))
        .await;
    assert_invalid_frame(&reply(&mut ws).await, "channel");
    ws.send_json(json!({"type": "channel_history", "channel": long}))
        .await;
    assert_invalid_frame(&reply(&mut ws).await, "channel");

    // 128 bytes is a name; nothing longer was created.
    let ok = "d".repeat(128);
    let r = hub
        .send_json("POST", "/api/channels", Some(&alice), json!({"name": ok}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = hub.get("/api/channels", None).await;
    let names: Vec<&str> = r.json["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec![ok.as_str()]);
    let (ids, _) = analytics_agents(&hub).await;
    assert!(ids.iter().all(|id| id.len() <= 128));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_used_near_the_maximum_saturates_the_hourly_total() {
    let hub = TestHub::start().await;
    let token = hub.token("coder", "agent").await;
    let mut agent = hub
        .identify("coder", &token, json!({"capabilities": ["code"]}))
        .await;
    for tokens in [u64::MAX, 5] {
        let r = hub
            .send_json(
                "POST",
                "/api/tasks",
                Some(ADMIN),
                json!({"description": "t", "needed_capabilities": ["code"]}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let assign = agent.next_of_type("task_assign").await;
        let task_id = assign["task_id"].clone();
        agent
            .send_json(json!({"type": "task_accepted", "task_id": task_id}))
            .await;
        assert_eq!(agent.next_of_type("task_ack").await["status"], "accepted");
        agent
            .send_json(json!({"type": "task_complete", "task_id": task_id, "generation": assign["generation"], "result": {}, "tokens_used": tokens}))
            .await;
        assert_eq!(agent.next_of_type("task_ack").await["status"], "complete");
    }
    let throughput = || async {
        let r = hub.get("/api/dashboard/state", Some(ADMIN)).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json["throughput"].clone()
    };
    let counted = eventually(Duration::from_secs(10), || async {
        throughput().await["completed_last_hour"] == 2
    })
    .await;
    let t = throughput().await;
    assert!(counted, "both completions counted: {t}");
    assert_eq!(t["total_tokens_hour"].as_u64(), Some(u64::MAX), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_durations_are_bounded() {
    let hub = TestHub::start().await;
    const THIRTY_DAYS_MS: u64 = 30 * 24 * 3600 * 1000;
    for (path, field, default) in [
        (
            "/api/config/heartbeat-interval",
            "heartbeat_interval_ms",
            900_000u64,
        ),
        (
            "/api/config/mailbox-retention",
            "mailbox_ttl_ms",
            604_800_000,
        ),
    ] {
        for too_big in [u64::MAX, THIRTY_DAYS_MS + 1] {
            let r = hub
                .send_json("PUT", path, Some(ADMIN), json!({ field: too_big }))
                .await;
            assert_invalid_http(&r, field);
            let r = hub.get(path, Some(ADMIN)).await;
            assert_eq!(r.json[field], default, "{r:?}");
        }
        let r = hub
            .send_json("PUT", path, Some(ADMIN), json!({ field: THIRTY_DAYS_MS }))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = hub.get(path, Some(ADMIN)).await;
        assert_eq!(r.json[field], THIRTY_DAYS_MS, "{r:?}");
    }
}
