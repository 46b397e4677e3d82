//! Issue 9, finding 8: one agent identifying with a huge capability list stalled every
//! other agent's assignment (matching was O(needed × capabilities) per pair, per pass).
//! Capability lists are bounded (count and name length) at identify and at submit.

mod common;

use std::time::{Duration, Instant};

use common::{TestHub, ADMIN};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_capability_list_is_refused_and_stalls_no_one() {
    let hub = TestHub::start().await;
    let hog_token = hub.token("hog", "agent").await;
    let mut hog = hub.ws("/ws", None).await.unwrap();
    let caps: Vec<String> = (0..90_000).map(|i| format!("{i:x}")).collect();
    hog.send_json(
        json!({"type": "identify", "agent_id": "hog", "token": hog_token, "capabilities": caps}),
    )
    .await;
    let reply = hog.next_json().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["error"], "invalid_capabilities", "{reply}");
    let long = "x".repeat(129);
    hog.send_json(
        json!({"type": "identify", "agent_id": "hog", "token": hog_token, "capabilities": [long]}),
    )
    .await;
    assert_eq!(hog.next_json().await["error"], "invalid_capabilities");
    // Within the bounds, identify works.
    let caps64: Vec<String> = (0..64).map(|i| format!("c{i}")).collect();
    hog.send_json(
        json!({"type": "identify", "agent_id": "hog", "token": hog_token, "capabilities": caps64}),
    )
    .await;
    hog.next_of_type("identified").await;

    // A task needing too many capabilities is refused too.
    let needed: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
    let r = hub
        .send_json(
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": "x", "needed_capabilities": needed}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json["field"], "needed_capabilities", "{r:?}");

    // Another agent is still served promptly.
    let worker_token = hub.token("worker", "agent").await;
    let mut worker = hub
        .identify("worker", &worker_token, json!({"capabilities": ["w"]}))
        .await;
    let started = Instant::now();
    let r = hub
        .send_json(
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": "t", "needed_capabilities": ["w"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let assign = worker.next_of_type("task_assign").await;
    assert_eq!(assign["task_id"], r.json["task_id"]);
    assert!(started.elapsed() < Duration::from_secs(10));
}
