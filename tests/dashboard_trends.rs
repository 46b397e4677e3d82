//! The dashboard snapshot's `trends`: the series the page charts from the moment it loads
//! (completions per minute and queue depth over the last hour, the store after each
//! backup and compaction), kept by the hub from its own events.

mod common;

use std::time::Duration;

use common::{eventually, now_ms, TestHub, ADMIN};
use serde_json::{json, Value};

async fn trends(hub: &TestHub) -> Value {
    let r = hub.get("/api/dashboard/state", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["trends"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_carries_completions_queue_depth_and_store_points() {
    let hub = TestHub::start_with(&["--queue-sample-interval", "200ms"]).await;
    let t = trends(&hub).await;
    let per_minute = &t["completed_per_minute"];
    assert_eq!(per_minute["minute_ms"], 60_000);
    assert_eq!(per_minute["counts"].as_array().unwrap().len(), 60);
    assert!(per_minute["counts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c == 0));
    let start = per_minute["start"].as_u64().unwrap();
    let now = now_ms();
    assert_eq!(start % 60_000, 0);
    assert!(
        start + 59 * 60_000 <= now && now < start + 60 * 60_000 + 5_000,
        "{start} {now}"
    );
    assert_eq!(t["store"], json!([]));

    // Two queued tasks nobody can take, then one an agent completes.
    for _ in 0..2 {
        let r = hub
            .send_json(
                "POST",
                "/api/tasks",
                Some(ADMIN),
                json!({"description": "wait", "needed_capabilities": ["gpu"]}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let token = hub.token("coder", "agent").await;
    let mut agent = hub
        .identify("coder", &token, json!({"capabilities": ["code"]}))
        .await;
    hub.send_json(
        "POST",
        "/api/tasks",
        Some(ADMIN),
        json!({"description": "do", "needed_capabilities": ["code"]}),
    )
    .await;
    let assign = agent.next_of_type("task_assign").await;
    agent
        .send_json(json!({"type": "task_complete", "task_id": assign["task_id"], "generation": assign["generation"]}))
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let t = trends(&hub).await;
            let counts: Vec<u64> = t["completed_per_minute"]["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
            let depth = t["queue_depth"].as_array().unwrap();
            counts.iter().sum::<u64>() == 1
                && counts[58..].iter().sum::<u64>() == 1
                && depth.last().is_some_and(|s| s["queued"] == 2)
        })
        .await,
        "{}",
        trends(&hub).await
    );
    let depth = trends(&hub).await["queue_depth"].clone();
    let ats: Vec<u64> = depth
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["at"].as_u64().unwrap())
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {ats:?}"
    );

    // A backup and a compaction each add a point with the store's figures.
    let r = hub
        .send_json("POST", "/api/admin/backup", Some(ADMIN), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = hub
        .send_json("POST", "/api/admin/compact", Some(ADMIN), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let bytes_after = r.json["bytes_after"].as_u64().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            trends(&hub).await["store"].as_array().unwrap().len() == 2
        })
        .await,
        "{}",
        trends(&hub).await
    );
    let store = trends(&hub).await["store"].clone();
    assert_eq!(store[0]["event"], "backup");
    assert_eq!(store[1]["event"], "compaction");
    for p in store.as_array().unwrap() {
        let (size, live) = (
            p["size_on_disk"].as_u64().unwrap(),
            p["live_bytes"].as_u64().unwrap(),
        );
        assert!(size > 0 && live > 0, "{p}");
        let ratio = p["fragmentation_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{p}");
    }
    assert!(store[0]["at"].as_u64() <= store[1]["at"].as_u64());
    // Measured just after the switch: the new database, give or take the writes since.
    let measured = store[1]["size_on_disk"].as_u64().unwrap();
    assert!(
        measured.abs_diff(bytes_after) < 64 * 1024,
        "{measured} vs {bytes_after}"
    );
}

/// Snapshots are built once for every request waiting, and a request that arrives while
/// one is being built waits for the next: so under a steady stream of requests each
/// answer still shows every task acknowledged before its request was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_snapshots_are_never_older_than_their_request() {
    let hub = TestHub::start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = Vec::new();
    for _ in 0..6 {
        let (addr, stop) = (hub.addr.clone(), stop.clone());
        background.push(tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r =
                    common::request(&addr, "GET", "/api/dashboard/state", Some(ADMIN), None).await;
                assert_eq!(r.status, 200, "{r:?}");
                answered += 1;
            }
            answered
        }));
    }
    for submitted in 1..=30u64 {
        let r = hub
            .send_json(
                "POST",
                "/api/tasks",
                Some(ADMIN),
                json!({"description": format!("fresh {submitted}")}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let reads = (0..4).map(|_| hub.get("/api/dashboard/state", Some(ADMIN)));
        for r in futures_util::future::join_all(reads).await {
            assert_eq!(r.status, 200, "{r:?}");
            let queued = r.json["queue"]["by_status"]["queued"].as_u64().unwrap();
            assert_eq!(
                queued, submitted,
                "a snapshot answered after task {submitted} was acknowledged shows {queued}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in background {
        assert!(b.await.unwrap() > 0, "the background readers were answered");
    }
}
