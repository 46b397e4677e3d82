//! Black-box tests of issue 9 #5 (threads): the thread index is bounded, and a reply costs
//! the same to index however many replies its parent already has. Each reply used to
//! rewrite its parent's whole children list (12,000 replies to one parent: 340 MiB on
//! disk), and `thread_messages` was never pruned.

mod common;

use common::{TestHub, ADMIN};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

/// Bytes the process has written through `write`/`pwrite` (store log and sockets alike).
fn bytes_written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar")
}

/// Send a broadcast (no mailbox copies: the sender is the only agent), replying to
/// `reply_to` if given; its id.
async fn send(hub: &TestHub, token: &str, reply_to: Option<&str>) -> String {
    let mut body = json!({"type": "chat", "payload": {"text": "a reply of ordinary size"}});
    if let Some(parent) = reply_to {
        body["reply_to"] = json!(parent);
    }
    let r = hub
        .send_json("POST", "/api/message", Some(token), body)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["id"].as_str().expect("id").to_string()
}

async fn replies(hub: &TestHub, token: &str, parent: &str) -> Value {
    let r = hub
        .get(&format!("/api/threads/{parent}/replies"), Some(token))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json
}

/// `record_count` of a table, from the storage health report.
async fn records(hub: &TestHub, table: &str) -> u64 {
    let health = hub.get("/api/admin/storage-health", Some(ADMIN)).await;
    assert_eq!(health.status, 200, "{health:?}");
    health.json["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == table)
        .and_then(|t| t["record_count"].as_u64())
        .expect("record_count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_costs_the_same_to_store_however_many_replies_came_before() {
    let hub = TestHub::start_with(&["--rate-limit-per-sec", "0"]).await;
    let alice = hub.token("alice", "agent").await;
    // The store's trees first grow to a steady shape (a small tree is cheaper to write).
    let (hub_ref, alice_ref) = (&hub, alice.as_str());
    stream::iter(0..2_000)
        .for_each_concurrent(16, |_| async move {
            send(hub_ref, alice_ref, None).await;
        })
        .await;
    let parent = send(&hub, &alice, None).await;

    // Bytes written per reply, over the first 400 replies and over replies 1,600 to 2,000.
    // Long windows: the store's log cleaning writes in bursts.
    let mut per_reply = Vec::new();
    let mut sent = 0;
    for (from, to) in [(0, 400), (1_600, 2_000)] {
        while sent < from {
            send(&hub, &alice, Some(&parent)).await;
            sent += 1;
        }
        let before = bytes_written(hub.pid());
        while sent < to {
            send(&hub, &alice, Some(&parent)).await;
            sent += 1;
        }
        per_reply.push((bytes_written(hub.pid()) - before) / (to - from));
    }
    let (early, late) = (per_reply[0], per_reply[1]);
    eprintln!("bytes written per reply: {early} early, {late} late");
    // Rewriting the children list made the late ones about 5 times dearer.
    assert!(
        late < early * 2,
        "a reply cost {early} bytes written early on but {late} after 1,600 replies"
    );

    // At most `thread_max_replies` (1,000 by default) are listed: the first ones.
    let listed = replies(&hub, &alice, &parent).await;
    assert_eq!(listed["count"], 1_000);
    let first = listed["replies"][0]["id"].clone();
    send(&hub, &alice, Some(&parent)).await;
    let listed = replies(&hub, &alice, &parent).await;
    assert_eq!(listed["count"], 1_000);
    assert_eq!(listed["replies"][0]["id"], first);
    // A reply past the cap still belongs to the thread: its root is the parent.
    let late_reply = send(&hub, &alice, Some(&parent)).await;
    let root = hub
        .get(&format!("/api/threads/{late_reply}/root"), Some(&alice))
        .await;
    assert_eq!(root.json["root"], json!(parent), "{root:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thread_index_keeps_the_newest_messages_only() {
    let hub = TestHub::start_with(&["--rate-limit-per-sec", "0"]).await;
    let alice = hub.token("alice", "agent").await;
    let parent = send(&hub, &alice, None).await;
    // `thread_index_keep` is 10,000 by default.
    let (hub, alice_ref, parent_ref) = (&hub, alice.as_str(), parent.as_str());
    let sent = stream::iter(0..10_300)
        .map(|i| async move {
            let reply_to = (i % 2 == 0).then_some(parent_ref);
            send(hub, alice_ref, reply_to).await
        })
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(sent, 10_300);
    assert_eq!(records(hub, "thread_messages").await, 10_000);
    assert!(records(hub, "thread_replies").await <= 1_000);
    // The parent left the index, so did its oldest replies; the thread still answers.
    let listed = replies(hub, alice_ref, parent_ref).await;
    assert!(listed["count"].as_u64().unwrap() <= 1_000, "{listed}");
    let thread = hub
        .get(&format!("/api/threads/{parent}"), Some(alice_ref))
        .await;
    assert_eq!(thread.status, 200, "{thread:?}");
    assert_eq!(thread.json["root"], json!(parent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thread_limits_are_settings() {
    let hub = TestHub::start_with(&[
        "--thread-index-keep",
        "50",
        "--thread-max-replies",
        "10",
        "--rate-limit-per-sec",
        "0",
    ])
    .await;
    let alice = hub.token("alice", "agent").await;
    let parent = send(&hub, &alice, None).await;
    for _ in 0..30 {
        send(&hub, &alice, Some(&parent)).await;
    }
    assert_eq!(replies(&hub, &alice, &parent).await["count"], 10);
    for _ in 0..30 {
        send(&hub, &alice, None).await;
    }
    assert_eq!(records(&hub, "thread_messages").await, 50);
}
