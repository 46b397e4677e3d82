//! Black-box tests of rights (issue 9, SPEC §6): a token acts only within its role, and a
//! connection lasts only as long as the credential that opened it.

mod common;

use common::{TestHub, ADMIN};
use serde_json::{json, Value};

fn error_of(r: &common::Reply) -> (u16, Value) {
    (r.status, r.json["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_does_not_act_as_its_agent() {
    let hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await;
    let bob_viewer = hub.token("bob", "viewer").await;
    let r = hub
        .send_json(
            "POST",
            "/api/message",
            Some(&alice),
            json!({"to": "bob", "payload": {"text": "hi"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let message_id = r.json["id"].as_str().unwrap().to_string();

    // Reading and acking (deleting) bob's mailbox needs bob's agent token (or admin).
    let r = hub.get("/api/mailbox/bob", Some(&bob_viewer)).await;
    assert_eq!(error_of(&r), (403, json!("forbidden")), "{r:?}");
    let r = hub
        .get(&format!("/api/mailbox/bob?token={bob_viewer}"), None)
        .await;
    assert_eq!(error_of(&r), (403, json!("forbidden")), "{r:?}");
    let r = hub
        .send_json(
            "POST",
            "/api/mailbox/bob/ack",
            Some(&bob_viewer),
            json!({"seq": 1_000_000}),
        )
        .await;
    assert_eq!(error_of(&r), (403, json!("forbidden")), "{r:?}");
    let r = hub.get("/api/mailbox/bob", Some(&bob)).await;
    assert_eq!(
        (r.status, r.json["count"].clone()),
        (200, json!(1)),
        "{r:?}"
    );

    // Nor does a viewer read bob's threads.
    let r = hub
        .get(&format!("/api/threads/{message_id}"), Some(&bob_viewer))
        .await;
    assert_eq!(error_of(&r), (403, json!("forbidden")), "{r:?}");

    // A viewer named `admin` cannot revoke the admin's tokens; a viewer cannot revoke its
    // own agent's either.
    let admin_viewer = hub.token("admin", "viewer").await;
    let r = hub
        .request("DELETE", "/admin/tokens/admin", Some(&admin_viewer), None)
        .await;
    assert_eq!(error_of(&r), (403, json!("admin_only")), "{r:?}");
    let r = hub
        .request("DELETE", "/admin/tokens/bob", Some(&bob_viewer), None)
        .await;
    assert_eq!(error_of(&r), (403, json!("admin_only")), "{r:?}");
    let r = hub.get("/api/mailbox/bob", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "the admin token still works: {r:?}");
    let r = hub.get("/api/mailbox/bob", Some(&bob)).await;
    assert_eq!(r.status, 200, "bob's token still works: {r:?}");

    // A viewer token does not identify on /ws as its agent.
    let mut ws = hub.ws("/ws", None).await.unwrap();
    ws.send_json(json!({"type": "identify", "agent_id": "bob", "token": bob_viewer}))
        .await;
    assert_eq!(ws.next_json().await["error"], "invalid_token");

    // An agent still revokes its own tokens (the original's remove-agent).
    let r = hub
        .request("DELETE", "/admin/tokens/bob", Some(&bob), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = hub.get("/api/mailbox/bob", Some(&bob)).await;
    assert_eq!(r.status, 401, "{r:?}");
}
