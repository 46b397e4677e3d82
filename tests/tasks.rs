//! Black-box tests of the task queue, scheduler and agent FSMs.

mod common;

use std::time::Duration;

use common::{TestHub, Ws, ADMIN};
use serde_json::{json, Value};

async fn identify(hub: &TestHub, id: &str, caps: Value) -> Ws {
    let token = hub.token(id, "agent").await;
    let mut ws = hub.ws("/ws", None).await.unwrap();
    ws.send_json(json!({"type": "identify", "agent_id": id, "token": token, "capabilities": caps}))
        .await;
    next_of_type(&mut ws, "identified").await;
    ws
}

async fn next_of_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = ws.next_json().await;
        if v["type"] == ty {
            return v;
        }
        assert!(
            ty == "error" || v["type"] != "error",
            "error while waiting for {ty}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_on_the_wire() {
    let hub = TestHub::start().await;
    let mut agent = identify(&hub, "coder", json!(["code"])).await;
    let r = hub
        .send_json(
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": "t1", "priority": "high", "needed_capabilities": ["code"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["status"], "queued");
    assert_eq!(r.json["priority"], 1);
    let task_id = r.json["task_id"].as_str().unwrap().to_string();
    assert!(task_id.starts_with("task-") && task_id.len() == 21);

    let assign = next_of_type(&mut agent, "task_assign").await;
    assert_eq!(assign["task_id"], task_id.as_str());
    assert_eq!(assign["description"], "t1");
    assert_eq!(assign["metadata"], json!({}));
    assert_eq!(assign["generation"], 1);
    assert!(assign["assigned_at"].as_u64().is_some());

    agent
        .send_json(json!({"type": "task_accepted", "task_id": task_id}))
        .await;
    assert_eq!(
        next_of_type(&mut agent, "task_ack").await,
        json!({"type": "task_ack", "task_id": task_id, "status": "accepted"})
    );
    let state = hub.get("/api/agents/coder/state", Some(ADMIN)).await.json;
    assert_eq!(
        (state["fsm_state"].clone(), state["current_task_id"].clone()),
        (json!("working"), json!(task_id))
    );

    agent
        .send_json(json!({"type": "task_complete", "task_id": task_id, "generation": 1, "result": {"ok": true, "tokens_used": 77}}))
        .await;
    assert_eq!(
        next_of_type(&mut agent, "task_ack").await["status"],
        "complete"
    );
    let task = hub
        .get(&format!("/api/tasks/{task_id}"), Some(ADMIN))
        .await
        .json;
    assert_eq!(task["status"], "completed");
    assert_eq!(task["tokens_used"], 77);
    assert_eq!(task["result"], json!({"ok": true, "tokens_used": 77}));
    let events: Vec<&str> = task["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["completed", "assigned", "queued"]);

    agent
        .send_json(json!({"type": "task_complete", "task_id": task_id, "generation": 1}))
        .await;
    assert_eq!(
        next_of_type(&mut agent, "error").await["error"],
        "task_complete_failed: invalid_state"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            hub.get("/api/agents/coder/state", Some(ADMIN)).await.json["fsm_state"] == "idle"
        })
        .await
    );
}
