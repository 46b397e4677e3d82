//! Issue 9 #13: a request answered with an error has no effect, and a call to an actor
//! that is down (crashed, in its restart backoff) fails fast instead of after 30 s.

mod common;

use std::time::{Duration, Instant};

use common::{TestHub, ADMIN};
use serde_json::{json, Value};

async fn mailbox_record(hub: &TestHub) -> Value {
    let actors = hub.get("/api/admin/actors", Some(ADMIN)).await.json;
    actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "mailbox")
        .unwrap()
        .clone()
}

/// Crash the mailbox actor until its restart backoff is 50 ms * 2^7 = 6.4 s, and return
/// once it is down.
async fn crash_loop_mailbox(hub: &TestHub) {
    for crash in 1..=8u64 {
        assert!(
            common::eventually(Duration::from_secs(30), || async {
                let r = mailbox_record(hub).await;
                r["status"] == "running" && r["crashes"] == crash - 1
            })
            .await,
            "mailbox comes back before crash {crash}"
        );
        let r = hub
            .request("POST", "/api/admin/actors/mailbox/crash", Some(ADMIN), None)
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            let r = mailbox_record(hub).await;
            r["status"] == "restarting" && r["last_backoff_ms"].as_u64() >= Some(6400)
        })
        .await,
        "mailbox is down: {}",
        mailbox_record(hub).await
    );
}

async fn history_with(hub: &TestHub, marker: &str) -> usize {
    let r = hub.get("/api/messages?limit=200", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["payload"]["marker"] == marker)
        .count()
}

async fn mailbox_with(hub: &TestHub, agent: &str, token: &str, marker: &str) -> usize {
    let r = hub
        .get(&format!("/api/mailbox/{agent}?since=0"), Some(token))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["payload"]["marker"] == marker)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_answered_with_an_error_was_not_sent() {
    let hub = TestHub::start().await;
    let alice = hub.token("alice", "agent").await;
    let bob = hub.token("bob", "agent").await;
    let carol = hub.token("carol", "agent").await;

    crash_loop_mailbox(&hub).await;

    // Both need a mailbox copy (bob and carol are offline); sent together, while the
    // mailbox waits out its 6.4 s backoff.
    let started = Instant::now();
    let broadcast = json!({"payload": {"marker": "b"}});
    let direct = json!({"to": "bob", "payload": {"marker": "d"}});
    let (b, d) = tokio::join!(
        hub.send_json("POST", "/api/message", Some(&alice), broadcast.clone()),
        hub.send_json("POST", "/api/message", Some(&alice), direct.clone()),
    );
    let waited = started.elapsed();
    for r in [&b, &d] {
        assert_eq!(r.status, 503, "an error while the mailbox is down: {r:?}");
        assert_eq!(r.json["error"], "actor_unavailable", "{r:?}");
    }
    // The old code held the request for the 30 s call timeout; a generous bound.
    assert!(
        waited < Duration::from_secs(10),
        "failed fast, not in {waited:?}"
    );

    // Once the mailbox is back, neither message is anywhere.
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            mailbox_record(&hub).await["status"] == "running"
        })
        .await,
        "mailbox comes back"
    );
    for marker in ["b", "d"] {
        assert_eq!(
            history_with(&hub, marker).await,
            0,
            "{marker} not in history"
        );
        assert_eq!(mailbox_with(&hub, "bob", &bob, marker).await, 0, "{marker}");
        assert_eq!(
            mailbox_with(&hub, "carol", &carol, marker).await,
            0,
            "{marker}"
        );
    }

    // A retry succeeds, exactly once.
    for body in [broadcast, direct] {
        let r = hub
            .send_json("POST", "/api/message", Some(&alice), body)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(history_with(&hub, "b").await, 1);
    assert_eq!(history_with(&hub, "d").await, 1);
    assert_eq!(mailbox_with(&hub, "bob", &bob, "b").await, 1);
    assert_eq!(mailbox_with(&hub, "bob", &bob, "d").await, 1);
    assert_eq!(mailbox_with(&hub, "carol", &carol, "b").await, 1);
    assert_eq!(mailbox_with(&hub, "carol", &carol, "d").await, 0);
}
