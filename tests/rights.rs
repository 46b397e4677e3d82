//! Black-box tests of rights (issue 9, SPEC §6): a token acts only within its role, and a
//! connection lasts only as long as the credential that opened it.

mod common;

use std::time::Duration;

use common::{request_with, Frame, TestHub, Ws, ADMIN};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The close code of a connection whose token was revoked or whose session ended.
const REVOKED: u16 = 4003;

/// Generous: the close comes before the revoking request returns, but the machine is loaded.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_revoking_its_own_tokens_revokes_only_its_agent_tokens() {
    let hub = TestHub::start().await;
    // An agent token minted with the admin's agent id does not take the admin's tokens.
    let namesake = hub.token("admin", "agent").await;
    let r = hub
        .request("DELETE", "/admin/tokens/admin", Some(&namesake), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(hub.get("/admin/tokens", Some(ADMIN)).await.status, 200);
    assert_eq!(
        hub.get("/api/mailbox/admin", Some(&namesake)).await.status,
        401
    );

    // Nor an agent's the viewer tokens minted with its id; an admin revokes them all.
    let agent = hub.token("eve", "agent").await;
    let viewer = hub.token("eve", "viewer").await;
    let r = hub
        .request("DELETE", "/admin/tokens/eve", Some(&agent), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(hub.get("/api/mailbox/eve", Some(&agent)).await.status, 401);
    let r = hub.get("/api/dashboard/whoami", Some(&viewer)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = hub
        .request("DELETE", "/admin/tokens/eve", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = hub.get("/api/dashboard/whoami", Some(&viewer)).await;
    assert_eq!(r.status, 401, "{r:?}");
}

/// Every frame up to the close, and the close code.
async fn frames_until_close(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match ws.next(CLOSE_WITHIN).await {
            Frame::Json(v) => frames.push(v),
            Frame::Closed(code) => return (frames, code),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agents_tokens_closes_its_socket_at_once() {
    let hub = TestHub::start().await;
    let carol_token = hub.token("carol", "agent").await;
    let dave_token = hub.token("dave", "agent").await;
    let mut carol = hub
        .identify("carol", &carol_token, json!({"capabilities": ["code"]}))
        .await;
    let _dave = hub.identify("dave", &dave_token, json!({})).await;

    let r = hub
        .request("DELETE", "/admin/tokens/carol", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Whatever carol sends now is not acted on (the send itself may fail: closed).
    let _ = carol
        .inner
        .send(Message::Text(
            json!({"type": "message", "to": "dave", "payload": {"text": "still here"}})
                .to_string()
                .into(),
        ))
        .await;
    // A task only carol could take is not given to her.
    let r = hub
        .send_json(
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": "for carol", "needed_capabilities": ["code"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let task_id = r.json["task_id"].as_str().unwrap().to_string();

    let (frames, code) = frames_until_close(&mut carol).await;
    assert_eq!(code, Some(REVOKED), "frames before the close: {frames:?}");
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "task_assign" && f["type"] != "message_sent"),
        "{frames:?}"
    );
    let r = hub.get("/api/messages?from=carol", Some(ADMIN)).await;
    assert_eq!(r.json["count"], 0, "{r:?}");
    let task = hub.get(&format!("/api/tasks/{task_id}"), Some(ADMIN)).await;
    assert_eq!(
        (
            task.json["status"].clone(),
            task.json["assigned_to"].clone()
        ),
        (json!("queued"), Value::Null),
        "{task:?}"
    );
    let agents = hub.get("/api/agents", None).await.json;
    assert!(
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["agent_id"] != "carol"),
        "carol is no longer present: {agents}"
    );

    // The revoked token cannot identify again.
    let mut ws = hub.ws("/ws", None).await.unwrap();
    ws.send_json(json!({"type": "identify", "agent_id": "carol", "token": carol_token}))
        .await;
    assert_eq!(ws.next_json().await["error"], "invalid_token");
}

/// Open the dashboard socket with these headers and read its first frame (the snapshot).
async fn dashboard(hub: &TestHub, header: (&'static str, &str)) -> Ws {
    let mut req = format!("ws://{}/ws/dashboard", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(header.0, header.1.parse().unwrap());
    let stream = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let (inner, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("dashboard upgrade");
    let mut ws = Ws { inner };
    assert_eq!(ws.next_json().await["type"], "snapshot");
    ws
}

async fn sign_in(hub: &TestHub, token: &str) -> String {
    let r = hub
        .send_json(
            "POST",
            "/api/dashboard/login",
            None,
            json!({"token": token}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let set_cookie = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_socket_closes_at_sign_out_and_at_revocation() {
    let hub = TestHub::start().await;
    let mut admin_ws = dashboard(&hub, ("authorization", &format!("Bearer {ADMIN}"))).await;

    // Signing out ends the sockets opened with that session.
    let viewer = hub.token("watcher", "viewer").await;
    let cookie = sign_in(&hub, &viewer).await;
    let mut by_cookie = dashboard(&hub, ("cookie", &cookie)).await;
    let r = request_with(
        &hub.addr,
        "POST",
        "/api/dashboard/logout",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(by_cookie.closed(CLOSE_WITHIN).await, Some(REVOKED));

    // Revoking a token ends the sockets opened with it, and with its sessions.
    let other = hub.token("monitor", "viewer").await;
    let mut by_token = dashboard(&hub, ("authorization", &format!("Bearer {other}"))).await;
    let cookie = sign_in(&hub, &other).await;
    let mut by_session = dashboard(&hub, ("cookie", &cookie)).await;
    let r = hub
        .request("DELETE", "/admin/tokens/monitor", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(by_token.closed(CLOSE_WITHIN).await, Some(REVOKED));
    assert_eq!(by_session.closed(CLOSE_WITHIN).await, Some(REVOKED));

    // Other dashboards keep streaming.
    admin_ws
        .send_json(json!({"type": "request_snapshot"}))
        .await;
    loop {
        let frame = admin_ws.next_json().await;
        if frame["type"] == "snapshot" {
            break;
        }
    }
    let _ = admin_ws.inner.close(None).await;
    while let Some(Ok(_)) = admin_ws.inner.next().await {}
}
