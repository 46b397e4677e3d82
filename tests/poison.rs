//! Every record written can be read back: documents nested too deep for the store's
//! decoder are refused at every door (they used to be accepted, and then made mailboxes,
//! histories and the task queue unreadable, and the hub unable to restart); a store that
//! already holds an unreadable record starts, serves the rest and reports it.

mod common;

use std::time::Duration;

use agentcom_store::{encode, mailbox_key, Engine, SledEngine, Table, WriteOp};
use common::{Frame, TestHub, Ws, ADMIN};
use serde_json::{json, Value};

/// `[[[…]]]`, `levels` deep.
fn nested(levels: usize) -> Value {
    let mut v = json!([]);
    for _ in 1..levels {
        v = json!([v]);
    }
    v
}

async fn post(hub: &TestHub, path: &str, token: &str, body: Value) -> common::Reply {
    hub.send_json("POST", path, Some(token), body).await
}

/// The next frame must be the error answer to a refused frame (skipping pushes).
async fn refused(ws: &mut Ws, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Frame::Json(v) if v["type"] == "error" => {
                assert_eq!(v["error"], "invalid_json", "{what}: {v}");
                return;
            }
            Frame::Json(v) if v["type"] == "task_ack" || v["type"] == "message_sent" => {
                panic!("{what} was accepted: {v}")
            }
            Frame::Json(_) => continue,
            Frame::Closed(code) => panic!("{what}: socket closed ({code:?})"),
        }
    }
}

async fn status(hub: &TestHub, method: &str, path: &str) -> u16 {
    hub.request(method, path, Some(ADMIN), None).await.status
}

/// Every read the poison used to break answers.
async fn everything_reads(hub: &TestHub, bob: &str) {
    assert_eq!(status(hub, "GET", "/api/messages").await, 200);
    let r = hub.get("/api/mailbox/bob", Some(bob)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(status(hub, "GET", "/api/channels/ops/history").await, 200);
    assert_eq!(status(hub, "GET", "/api/tasks").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_too_deep_to_read_back_are_refused_at_every_door() {
    let mut hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await; // bob stays offline: messages go to his mailbox
    let mut ws = hub.identify("alice", &alice, json!({})).await;
    assert_eq!(
        post(&hub, "/api/channels", &alice, json!({"name": "ops"}))
            .await
            .status,
        201
    );
    ws.send_json(json!({"type": "channel_subscribe", "channel": "ops"}))
        .await;
    ws.next_of_type("channel_subscribed").await;

    // The requests, each of which used to be accepted.
    let r = post(
        &hub,
        "/api/message",
        &alice,
        json!({"to": "bob", "payload": nested(126)}),
    )
    .await;
    assert_eq!(r.status, 400, "direct message: {r:?}");
    assert_eq!(r.json["error"], "invalid_json");
    let r = post(
        &hub,
        "/api/message",
        &alice,
        json!({"payload": nested(126)}),
    )
    .await;
    assert_eq!(r.status, 400, "broadcast: {r:?}");
    let r = post(
        &hub,
        "/api/channels/ops/publish",
        &alice,
        json!({"payload": {"x": nested(124)}}),
    )
    .await;
    assert_eq!(r.status, 400, "HTTP channel publish: {r:?}");
    ws.send_json(json!({"type": "message", "to": "bob", "payload": nested(126)}))
        .await;
    refused(&mut ws, "websocket message").await;
    ws.send_json(json!({"type": "message", "payload": nested(126)}))
        .await;
    refused(&mut ws, "websocket broadcast").await;
    ws.send_json(
        json!({"type": "channel_publish", "channel": "ops", "payload": {"x": nested(124)}}),
    )
    .await;
    refused(&mut ws, "websocket channel publish").await;

    // A task completed, then one failed, with a result or error nested past the limit.
    for (i, frame) in ["task_complete", "task_failed"].into_iter().enumerate() {
        let r = post(
            &hub,
            "/api/tasks",
            ADMIN,
            json!({"description": format!("t{i}")}),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        let task_id = r.json["task_id"].as_str().unwrap().to_string();
        let assign = ws.next_of_type("task_assign").await;
        assert_eq!(assign["task_id"], task_id.as_str());
        ws.send_json(json!({"type": "task_accepted", "task_id": task_id}))
            .await;
        ws.next_of_type("task_ack").await;
        let field = if frame == "task_failed" {
            "error"
        } else {
            "result"
        };
        let mut poison = json!({"type": frame, "task_id": task_id, "generation": 1});
        poison[field] = nested(125);
        ws.send_json(poison).await;
        refused(&mut ws, frame).await;
        // The same with a document of ordinary depth goes through.
        let mut fine = json!({"type": frame, "task_id": task_id, "generation": 1});
        fine[field] = nested(20);
        ws.send_json(fine).await;
        ws.next_of_type("task_ack").await;
        let task = hub.get(&format!("/api/tasks/{task_id}"), Some(ADMIN)).await;
        assert_eq!(task.status, 200, "{task:?}");
    }

    // Ordinary nesting is stored and read back intact.
    let r = post(
        &hub,
        "/api/message",
        &alice,
        json!({"to": "bob", "payload": nested(60)}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mailbox = hub.get("/api/mailbox/bob", Some(&bob)).await;
    assert_eq!(mailbox.json["messages"][0]["payload"], nested(60));

    everything_reads(&hub, &bob).await;
    assert_eq!(status(&hub, "POST", "/api/mailbox/evict").await, 200);
    // And the hub restarts on its store.
    drop(ws);
    hub.restart().await;
    everything_reads(&hub, &bob).await;
    let r = post(&hub, "/api/tasks", ADMIN, json!({"description": "after"})).await;
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_holding_an_unreadable_record_starts_and_reports_it() {
    let mut hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await;
    for n in 0..2 {
        let r = post(
            &hub,
            "/api/message",
            &alice,
            json!({"to": "bob", "payload": {"n": n}}),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = post(&hub, "/api/tasks", ADMIN, json!({"description": "kept"})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(hub.terminate().await.success());

    // Written through the engine, as an older build (or a bug) could have: a mailbox
    // entry nested past the decoder's limit and a task of a shape no build reads.
    {
        let engine = SledEngine::open(hub.data_dir()).unwrap();
        let deep = json!({"seq": 999, "agent_id": "bob", "message": nested(130)});
        engine
            .apply(&[
                WriteOp::Put {
                    table: Table::AgentMailbox,
                    key: mailbox_key("bob", 999),
                    value: encode(&deep),
                },
                WriteOp::Put {
                    table: Table::TaskQueue,
                    key: b"task-garbled".to_vec(),
                    value: encode(&json!({"not": "a task"})),
                },
            ])
            .unwrap();
        engine.flush().unwrap();
    }

    hub.restart().await;
    let mailbox = hub.get("/api/mailbox/bob", Some(&bob)).await;
    assert_eq!(mailbox.status, 200, "{mailbox:?}");
    assert_eq!(mailbox.json["count"], 2, "{mailbox:?}");
    let tasks = hub.get("/api/tasks", Some(ADMIN)).await;
    assert_eq!(tasks.status, 200, "{tasks:?}");
    assert_eq!(
        tasks.json["tasks"].as_array().unwrap().len(),
        1,
        "{tasks:?}"
    );
    let r = post(&hub, "/api/tasks", ADMIN, json!({"description": "new"})).await;
    assert_eq!(r.status, 201, "the task queue runs: {r:?}");

    let health = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
    assert_eq!(health["store"]["quarantined_records"], 2, "{health}");
    assert_eq!(health["health_status"], "warning", "{health}");
    let table = health["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "quarantine")
        .cloned();
    assert_eq!(table.unwrap()["record_count"], 2, "{health}");
    let metrics = hub.get("/metrics", Some(ADMIN)).await;
    assert!(
        String::from_utf8_lossy(&metrics.body).contains("\nagentcom_quarantined_records 2\n"),
        "{}",
        String::from_utf8_lossy(&metrics.body)
    );
    let state = hub.get("/api/dashboard/state", Some(ADMIN)).await.json;
    let conditions = state["health"]["conditions"].to_string();
    assert!(conditions.contains("Quarantined records: 2"), "{state}");

    // Moved once: the next start finds the same two, no more.
    hub.restart().await;
    let health = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
    assert_eq!(health["store"]["quarantined_records"], 2, "{health}");
}
