//! Online compaction against the real binary (issue 12): a compaction under load keeps every
//! acknowledged write and every session, and reclaims space; a hub killed at any moment of
//! a compaction restarts on a complete store.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Rng, TestHub, Ws, ADMIN};
use serde_json::{json, Value};

/// Acknowledged writes, with the time each acknowledgement took.
#[derive(Default)]
struct Acked {
    tasks: Vec<String>,
    messages: Vec<String>,
    publishes: Vec<u64>,
    /// (when the request was sent, how long its answer took)
    latencies: Vec<(Instant, Duration)>,
}

/// The hub's flags here: no rate limit, and histories that keep little, so that the
/// filler messages of [`fragment`] leave garbage rather than live copies.
const FLAGS: &[&str] = &[
    "--rate-limit-per-sec",
    "0",
    "--history-max-bytes",
    "256KiB",
    "--thread-index-max-bytes",
    "256KiB",
];

/// Fill the store with garbage: messages to an offline agent, acknowledged (deleted), whose
/// copies in the message history and thread index are trimmed away.
async fn fragment(hub: &TestHub, bob: &str) {
    let filler = "x".repeat(8 * 1024);
    for _ in 0..300 {
        let r = hub
            .send_json(
                "POST",
                "/api/message",
                Some(ADMIN),
                json!({"to": "bob", "payload": {"filler": filler}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let mailbox = hub.get("/api/mailbox/bob", Some(bob)).await;
    let last = mailbox.json["last_seq"].as_u64().expect("last_seq");
    let r = hub
        .send_json(
            "POST",
            "/api/mailbox/bob/ack",
            Some(bob),
            json!({"seq": last}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// An agent that accepts and completes every task it is given, until its socket closes.
async fn worker(mut ws: Ws, completed: Arc<Mutex<Vec<String>>>) {
    loop {
        let Some(common::Frame::Json(frame)) = ws
            .next_by(tokio::time::Instant::now() + Duration::from_secs(3600))
            .await
        else {
            return;
        };
        if frame["type"] == "task_assign" {
            let id = frame["task_id"].clone();
            let generation = frame["generation"].clone();
            ws.send_json(json!({"type": "task_accepted", "task_id": id}))
                .await;
            ws.send_json(json!({"type": "task_complete", "task_id": id, "generation": generation, "result": {}}))
                .await;
            completed
                .lock()
                .unwrap()
                .push(id.as_str().unwrap_or_default().to_string());
        }
    }
}

/// Tasks, messages to an offline agent and channel publishes, one after another, until
/// `stop`; every acknowledged one is recorded with its latency.
async fn writer(addr: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (path, body) = match n % 3 {
            0 => ("/api/tasks", json!({"description": format!("t{n}")})),
            1 => ("/api/message", json!({"to": "carol", "payload": {"n": n}})),
            _ => ("/api/channels/ops/publish", json!({"payload": {"n": n}})),
        };
        let sent = Instant::now();
        let body = Some(("application/json", body.to_string().into_bytes()));
        // A failed request (the hub was killed) was never acknowledged.
        let Ok(r) = common::try_request(&addr, "POST", path, Some(ADMIN), body).await else {
            return;
        };
        let took = sent.elapsed();
        let mut a = acked.lock().unwrap();
        a.latencies.push((sent, took));
        match (path, r.status) {
            ("/api/tasks", 201) => a.tasks.push(r.json["task_id"].as_str().unwrap().into()),
            ("/api/message", 200) => a.messages.push(r.json["id"].as_str().unwrap().into()),
            (_, 200) => a.publishes.push(r.json["seq"].as_u64().unwrap()),
            // A 5xx from a hub being killed was never acknowledged either.
            (_, 500..) if stop.load(Ordering::Relaxed) => return,
            _ => panic!("{path} answered {r:?}"),
        }
    }
}

fn store_figures(health: &Value) -> (u64, f64) {
    let store = &health["store"];
    (
        store["size_on_disk"].as_u64().expect("size_on_disk"),
        store["fragmentation_ratio"]
            .as_f64()
            .expect("fragmentation_ratio"),
    )
}

/// Every acknowledged write is readable from `hub`.
async fn assert_all_present(hub: &TestHub, carol: &str, acked: &Acked) {
    for id in &acked.tasks {
        let r = hub.get(&format!("/api/tasks/{id}"), Some(ADMIN)).await;
        assert_eq!(r.status, 200, "acknowledged task {id} is missing: {r:?}");
    }
    let mailbox = hub.get("/api/mailbox/carol", Some(carol)).await;
    let ids: Vec<&str> = mailbox.json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    // The newest 90 (a mailbox keeps its newest 100; concurrent writers' acknowledgements
    // may come a little out of order).
    for id in acked.messages.iter().rev().take(90) {
        assert!(
            ids.contains(&id.as_str()),
            "acknowledged message {id} is missing"
        );
    }
    let history = hub
        .get("/api/channels/ops/history?limit=200", Some(ADMIN))
        .await;
    let seqs: Vec<u64> = history.json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    // The route answers the newest 200 at most (writes in flight at a kill may have landed
    // too): every acknowledged publish from the oldest it answered on.
    let oldest = if seqs.len() >= 200 {
        seqs.iter().min().copied().unwrap_or(0)
    } else {
        0
    };
    for seq in acked.publishes.iter().filter(|s| **s >= oldest) {
        assert!(seqs.contains(seq), "acknowledged publish {seq} is missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_under_load_keeps_every_acknowledged_write_and_every_session() {
    let mut hub = TestHub::start_with(FLAGS).await;
    let bob = hub.token("bob", "agent").await;
    let carol = hub.token("carol", "agent").await;
    let r = hub
        .send_json("POST", "/api/channels", Some(ADMIN), json!({"name": "ops"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    fragment(&hub, &bob).await;

    let completed = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for name in ["w1", "w2"] {
        let token = hub.token(name, "agent").await;
        let ws = hub.identify(name, &token, json!({})).await;
        workers.push(tokio::spawn(worker(ws, completed.clone())));
    }
    let before = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
    let (size_before, ratio_before) = store_figures(&before);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let writers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(writer(hub.addr.clone(), stop.clone(), acked.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let r = hub
        .send_json("POST", "/api/admin/compact", Some(ADMIN), json!({}))
        .await;
    let compaction = (started, started.elapsed());
    assert_eq!(r.status, 200, "{r:?}");
    let run = r.json;
    assert_eq!(run["status"], "compacted", "{run}");
    assert!(run["records_copied"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(run["old_removed"], true, "{run}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let during: Vec<Duration> = acked
        .latencies
        .iter()
        .filter(|(sent, took)| {
            *sent + *took >= compaction.0 && *sent <= compaction.0 + compaction.1
        })
        .map(|(_, took)| *took)
        .collect();
    let longest = during.iter().max().copied().unwrap_or_default();
    println!(
        "compaction: {run}\n{} writes acknowledged in all, {} during the compaction ({:?}), \
         the longest of those {longest:?}",
        acked.latencies.len(),
        during.len(),
        compaction.1
    );
    assert!(!during.is_empty(), "writes went on during the compaction");
    assert!(run["writes_replayed"].as_u64().unwrap() > 0, "{run}");

    // Less space, less waste.
    let after = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
    let (size_after, ratio_after) = store_figures(&after);
    println!("store: {size_before} bytes ({ratio_before}) -> {size_after} bytes ({ratio_after})");
    assert!(size_after < size_before, "{size_before} -> {size_after}");
    assert!(
        ratio_after < ratio_before,
        "{ratio_before} -> {ratio_after}"
    );
    assert_eq!(after["compaction"]["completed"], 1, "{after}");

    assert_all_present(&hub, &carol, &acked).await;
    // The sessions stayed connected and kept working: every task is completed.
    let health = hub.get("/health", None).await.json;
    assert_eq!(health["agents_connected"], 2, "{health}");
    assert!(
        common::eventually(Duration::from_secs(20), || {
            let (done, acked) = (completed.clone(), acked.tasks.clone());
            async move {
                let done = done.lock().unwrap();
                acked.iter().all(|t| done.contains(t))
            }
        })
        .await,
        "every task submitted is completed by the agents connected before the compaction"
    );
    let metrics = hub.get("/metrics", Some(ADMIN)).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("agentcom_compactions_total{result=\"ok\"} 1"),
        "{metrics}"
    );

    // The new database is the one a restart opens.
    hub.restart().await;
    assert_all_present(&hub, &carol, &acked).await;
    let names: Vec<String> = std::fs::read_dir(hub.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("db"))
        .collect();
    assert_eq!(
        names,
        vec!["db.1".to_string()],
        "only the live database remains"
    );
    for w in workers {
        w.abort();
    }

    // A lost `CURRENT` is refused, not replaced with an empty store (which would then
    // remove db.1 as stale); written back, it opens the store again.
    hub.terminate().await;
    let current = hub.data_dir().join("CURRENT");
    std::fs::remove_file(&current).unwrap();
    let (code, stderr) = match common::serve(hub.data_dir()).await {
        common::Started::Refused { code, stderr } => (code, stderr),
        common::Started::Serving(served) => {
            served.kill9().await;
            panic!("the hub started without CURRENT instead of refusing");
        }
    };
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("no CURRENT and no db, but there is db.1"),
        "{stderr}"
    );
    assert!(hub.data_dir().join("db.1").is_dir(), "db.1 is kept");
    std::fs::write(&current, "db.1\n").unwrap();
    hub.restart().await;
    assert_all_present(&hub, &carol, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_is_refused_while_another_runs_and_events_tell_the_dashboard() {
    let hub = TestHub::start_with(FLAGS).await;
    let bob = hub.token("bob", "agent").await;
    fragment(&hub, &bob).await;
    let mut dash = hub
        .ws("/ws/dashboard", Some(ADMIN))
        .await
        .expect("dashboard socket");
    // Subscribed once the snapshot comes.
    assert_eq!(dash.next_json().await["type"], "snapshot");
    let (first, second) = tokio::join!(
        hub.send_json("POST", "/api/admin/compact", Some(ADMIN), json!({})),
        async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            hub.send_json("POST", "/api/admin/compact", Some(ADMIN), json!({}))
                .await
        }
    );
    let statuses = [first.status, second.status];
    assert!(statuses.contains(&200), "{first:?} {second:?}");
    if statuses.contains(&409) {
        let refused = if first.status == 409 { &first } else { &second };
        assert_eq!(
            refused.json["error"], "compaction_in_progress",
            "{refused:?}"
        );
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&"compaction_complete".to_string()) {
        let Some(common::Frame::Json(frame)) = dash.next_by(deadline).await else {
            panic!("no compaction_complete event; saw {seen:?}");
        };
        let events = frame["data"].as_array().cloned().unwrap_or_default();
        for e in events.iter().chain(std::iter::once(&frame)) {
            if let Some(t) = e["type"].as_str().filter(|t| t.starts_with("compaction")) {
                seen.push(t.to_string());
                if t == "compaction_complete" {
                    assert!(e["longest_write_pause_ms"].as_f64().is_some(), "{e}");
                }
            }
        }
    }
    assert_eq!(seen[0], "compaction_started", "{seen:?}");
    // Viewers and agents may not compact.
    let viewer = hub.token("v", "viewer").await;
    let r = hub
        .send_json("POST", "/api/admin/compact", Some(&viewer), json!({}))
        .await;
    assert_eq!(r.status, 403, "{r:?}");
}

/// Kill the hub (`kill -9`) at a random moment of each of ten compactions, with writes going
/// on; each restart opens a complete store holding every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_at_any_moment_of_a_compaction_restarts_on_a_complete_store() {
    let rounds = common::env_u64("COMPACTION_CRASH_ROUNDS", 10);
    let seed = common::seed_from_env("COMPACTION_CRASH_SEED");
    let mut rng = Rng::new(seed);
    let mut hub = TestHub::start_with(FLAGS).await;
    let bob = hub.token("bob", "agent").await;
    let carol = hub.token("carol", "agent").await;
    let r = hub
        .send_json("POST", "/api/channels", Some(ADMIN), json!({"name": "ops"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    fragment(&hub, &bob).await;
    // How long one compaction takes here, with writes going on (the longest of three), to
    // spread the kills over it.
    let mut span = 20;
    for _ in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let w = tokio::spawn(writer(hub.addr.clone(), stop.clone(), acked));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let r = hub
            .send_json("POST", "/api/admin/compact", Some(ADMIN), json!({}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        span = span.max(started.elapsed().as_millis() as u64);
        stop.store(true, Ordering::Relaxed);
        w.await.unwrap();
    }
    println!("seed {seed}; one compaction takes up to {span} ms here");

    let mut all = Acked::default();
    let mut switched = std::collections::BTreeSet::new();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let writers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(writer(hub.addr.clone(), stop.clone(), acked.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Spread over the whole compaction (and a little past it), with some jitter.
        let at = span * 2 * (2 * round + 1) / (2 * rounds);
        let delay = Duration::from_millis(at + rng.below(span / 10 + 1));
        let addr = hub.addr.clone();
        let compact = tokio::spawn(async move {
            common::try_request(&addr, "POST", "/api/admin/compact", Some(ADMIN), None).await
        });
        tokio::time::sleep(delay).await;
        hub.kill9_now();
        stop.store(true, Ordering::Relaxed);
        let _ = compact.await;
        for w in writers {
            let _ = w.await;
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        println!(
            "round {round}: killed {delay:?} into a compaction, {} writes acknowledged",
            acked.latencies.len()
        );
        all.tasks.extend(acked.tasks);
        all.messages.extend(acked.messages);
        all.publishes.extend(acked.publishes);
        hub.restart().await;
        let live = std::fs::read_to_string(hub.data_dir().join("CURRENT")).unwrap_or("db".into());
        println!("  restarted on {}", live.trim());
        switched.insert(live);
        assert_all_present(&hub, &carol, &all).await;
    }
    // The kills fell both before and after switches.
    assert!(switched.len() >= 2, "{switched:?}");
}

/// `compact_when_fragmented`: a scheduled backup that finds the store highly fragmented is
/// followed by a compaction, without anyone asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_store_is_compacted_after_a_scheduled_backup_when_asked_to() {
    let mut flags = FLAGS.to_vec();
    flags.extend([
        "--compact-when-fragmented",
        "--fragmentation-floor",
        "1KiB",
        "--backup-interval",
        "2s",
    ]);
    let hub = TestHub::start_with(&flags).await;
    let bob = hub.token("bob", "agent").await;
    fragment(&hub, &bob).await;
    let health = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
    assert_eq!(health["high_fragmentation"], true, "{health}");
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            let h = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
            h["compaction"]["completed"].as_u64().unwrap_or(0) >= 1
        })
        .await,
        "no compaction followed the scheduled backup"
    );
    let health = hub.get("/api/admin/storage-health", Some(ADMIN)).await.json;
    assert!(health["last_backup_at"].as_u64().is_some(), "{health}");
    assert_eq!(health["compaction"]["failed"], 0, "{health}");
}
