//! Issue 10: what the original's own clients found. The close handshake is answered
//! (1000 back for a client's 1000), `--priority critical` is `urgent`, channel history
//! answers the newest `limit` entries, and a `limit` above the cap is clamped.

mod common;

use std::time::Duration;

use common::{TestHub, ADMIN};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The sidecar's shutdown: it sends close 1000 "shutdown" and reads the hub's answer. The
/// hub must answer with a close frame (RFC 6455 §5.5.1) before it drops TCP, so that the
/// client sees 1000, not 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_with_a_close() {
    let hub = TestHub::start().await;
    let token = hub.token("sidecar", "agent").await;
    for identified in [false, true] {
        let stream = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", hub.addr), stream)
            .await
            .expect("upgrade");
        if identified {
            let frame = json!({"type": "identify", "agent_id": "sidecar", "token": token});
            ws.send(Message::text(frame.to_string())).await.unwrap();
        }
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "shutdown".into(),
        })))
        .await
        .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return Some(frame),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("the hub answers within 5 s");
        let frame = answer.expect("a close frame, not a dropped connection (1006)");
        assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
    }
}

/// `agentcom-submit.js --priority critical`: accepted as `urgent`. The body is the one
/// that script sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_critical_is_urgent() {
    let hub = TestHub::start().await;
    let r = hub
        .send_json(
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": "fix prod", "priority": "critical", "metadata": {},
                   "needed_capabilities": []}),
        )
        .await;
    assert_eq!(
        (r.status, r.json["priority"].clone()),
        (201, json!(0)),
        "{r:?}"
    );
}

async fn channel_seqs(hub: &TestHub, query: &str) -> Vec<u64> {
    let r = hub
        .get(&format!("/api/channels/news/history{query}"), Some(ADMIN))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Channel history answers the newest `limit` entries after `since`, ascending, over HTTP
/// and over the websocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_history_answers_the_newest_entries() {
    let hub = TestHub::start().await;
    let r = hub
        .send_json(
            "POST",
            "/api/channels",
            Some(ADMIN),
            json!({"name": "news"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    for i in 0..5 {
        let r = hub
            .send_json(
                "POST",
                "/api/channels/news/publish",
                Some(ADMIN),
                json!({"payload": {"i": i}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(channel_seqs(&hub, "?limit=2").await, vec![4, 5]);
    assert_eq!(channel_seqs(&hub, "?limit=2&since=3").await, vec![4, 5]);
    assert_eq!(channel_seqs(&hub, "?since=3").await, vec![4, 5]);
    assert_eq!(channel_seqs(&hub, "").await, vec![1, 2, 3, 4, 5]);
    // Above the cap: clamped.
    assert_eq!(channel_seqs(&hub, "?limit=500").await, vec![1, 2, 3, 4, 5]);

    let token = hub.token("reader", "agent").await;
    let mut ws = hub.identify("reader", &token, json!({})).await;
    ws.send_json(json!({"type": "channel_history", "channel": "news", "limit": 2}))
        .await;
    let v = ws.next_of_type("channel_history").await;
    let seqs: Vec<Value> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(4), json!(5)], "{v}");
    ws.send_json(json!({"type": "channel_history", "channel": "news", "limit": 500}))
        .await;
    let v = ws.next_of_type("channel_history").await;
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(5), "{v}");
}

/// `GET /api/messages?limit=500` answers 200 with at most 200 messages, as the original
/// did; a limit that is not a positive integer is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_the_cap_is_clamped() {
    let hub = TestHub::start_with(&["--rate-limit-per-sec", "0"]).await;
    let alice = hub.token("alice", "agent").await;
    for i in 0..205 {
        let r = hub
            .send_json(
                "POST",
                "/api/message",
                Some(&alice),
                json!({"to": "bob", "payload": {"i": i}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    for limit in ["500", "201", "99999999999999999999999"] {
        let r = hub
            .get(&format!("/api/messages?limit={limit}"), Some(ADMIN))
            .await;
        assert_eq!(r.status, 200, "limit={limit}: {r:?}");
        assert_eq!(r.json["messages"].as_array().map(Vec::len), Some(200));
    }
    for limit in ["0", "-1", "abc", "2.5"] {
        let r = hub
            .get(&format!("/api/messages?limit={limit}"), Some(ADMIN))
            .await;
        assert_eq!(r.status, 400, "limit={limit}: {r:?}");
        assert_eq!(r.json["field"], "limit");
    }
}
