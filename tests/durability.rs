//! Black-box tests of durability and supervision: acknowledged writes survive `kill -9`,
//! an actor restarted under load loses nothing, and a crash loop backs off while the rest
//! of the hub keeps answering.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{try_request, TestHub, ADMIN};
use serde_json::{json, Value};

const KEYS: [(&str, &str); 2] = [
    ("/api/config/heartbeat-interval", "heartbeat_interval_ms"),
    ("/api/config/mailbox-retention", "mailbox_ttl_ms"),
];

async fn put(addr: &str, path: &str, body: Value) -> Result<u16, String> {
    try_request(
        addr,
        "PUT",
        path,
        Some(ADMIN),
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
    .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut hub = TestHub::start().await;
    for round in 0..4u64 {
        let addr = hub.addr.clone();
        let acks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let kill_now = Arc::new(tokio::sync::Notify::new());
        let kill_after = 150 + 50 * round as usize;
        // Acknowledged state: the last value acked per config key, every acked token.
        let last_acked: Arc<Mutex<HashMap<&str, u64>>> = Arc::default();
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut tasks = Vec::new();

        // One sequential writer per key, so "the last acknowledged value" is well defined.
        for (path, field) in KEYS {
            let (addr, acks, stop, kill_now, last) = (
                addr.clone(),
                acks.clone(),
                stop.clone(),
                kill_now.clone(),
                last_acked.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut v = (round + 1) * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    v += 1;
                    match put(&addr, path, json!({ field: v })).await {
                        Ok(200) => {
                            last.lock().unwrap().insert(field, v);
                            if acks.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                kill_now.notify_one();
                            }
                        }
                        Ok(other) => panic!("unexpected status {other}"),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Many concurrent token mints (each one a durable write of its own).
        for w in 0..16 {
            let (addr, acks, stop, kill_now, tokens) = (
                addr.clone(),
                acks.clone(),
                stop.clone(),
                kill_now.clone(),
                tokens.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let body = json!({"agent_id": format!("r{round}-w{w}-{i}")})
                        .to_string()
                        .into_bytes();
                    match try_request(
                        &addr,
                        "POST",
                        "/admin/tokens",
                        Some(ADMIN),
                        Some(("application/json", body)),
                    )
                    .await
                    {
                        Ok(r) if r.status == 201 => {
                            tokens
                                .lock()
                                .unwrap()
                                .push(r.json["token"].as_str().unwrap().to_string());
                            if acks.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                kill_now.notify_one();
                            }
                        }
                        Ok(r) => panic!("unexpected answer {r:?}"),
                        Err(_) => break,
                    }
                }
            }));
        }

        tokio::time::timeout(Duration::from_secs(60), kill_now.notified())
            .await
            .expect("enough acknowledgements");
        hub.kill9_now();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        hub.restart().await;

        let last = last_acked.lock().unwrap().clone();
        for (path, field) in KEYS {
            let stored = hub.get(path, Some(ADMIN)).await.json[field]
                .as_u64()
                .unwrap();
            let acked = last[field];
            // A write sent after the last acknowledgement may or may not have landed.
            assert!(
                stored >= acked,
                "round {round}: {field} is {stored}, but {acked} was acknowledged"
            );
        }
        let tokens = tokens.lock().unwrap().clone();
        assert!(!tokens.is_empty());
        for token in &tokens {
            let r = hub.get("/api/config/heartbeat-interval", Some(token)).await;
            assert_eq!(
                r.status, 200,
                "round {round}: an acknowledged token was lost"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_config_actor_under_load_loses_nothing() {
    let mut hub = TestHub::start().await;
    let addr = hub.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (path, field) in KEYS {
        let (addr, stop) = (addr.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut last = 0u64;
            let mut v = 0u64;
            while !stop.load(Ordering::SeqCst) {
                v += 1;
                let status = tokio::time::timeout(
                    Duration::from_secs(15),
                    put(&addr, path, json!({ field: v })),
                )
                .await
                .expect("no write hangs across a restart")
                .expect("hub reachable");
                assert_eq!(status, 200, "write {v} of {field}");
                last = v;
            }
            (field, last)
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (addr, stop) = (addr.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = tokio::time::timeout(
                    Duration::from_secs(15),
                    try_request(&addr, "GET", "/api/config/default-repo", None, None),
                )
                .await
                .expect("no read hangs across a restart")
                .expect("hub reachable");
                assert_eq!(r.status, 200, "{r:?}");
                n += 1;
            }
            n
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = hub
            .request(
                "POST",
                "/api/admin/actors/config/restart",
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["actor"]["status"], "running");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let mut last = HashMap::new();
    for w in writers {
        let (field, v) = w.await.unwrap();
        assert!(v > 0);
        last.insert(field, v);
    }
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }

    let actors = hub.get("/api/admin/actors", Some(ADMIN)).await.json;
    let config = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "config")
        .unwrap()
        .clone();
    assert_eq!(config["restarts"], 5, "{config}");
    assert_eq!(config["crashes"], 0, "{config}");
    assert!(config["last_restart_at"].as_u64().is_some());

    // Every acknowledged write is there, in memory and after a kill -9.
    for pass in ["live", "after kill -9"] {
        for (path, field) in KEYS {
            let stored = hub.get(path, Some(ADMIN)).await.json[field]
                .as_u64()
                .unwrap();
            assert_eq!(stored, last[field], "{pass}: {field}");
        }
        hub.restart().await;
    }
}

async fn config_record(hub: &TestHub) -> Value {
    let actors = hub.get("/api/admin/actors", Some(ADMIN)).await.json;
    actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "config")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_actor_backs_off_while_the_hub_keeps_answering() {
    let hub = TestHub::start().await;
    let mut ws = hub.ws("/ws/dashboard", Some(ADMIN)).await.unwrap();
    let mut backoffs = Vec::new();
    for crash in 1..=5u64 {
        assert!(
            common::eventually(Duration::from_secs(10), || async {
                config_record(&hub).await["status"] == "running"
            })
            .await,
            "config comes back before crash {crash}"
        );
        let sent = Instant::now();
        let r = hub
            .request("POST", "/api/admin/actors/config/crash", Some(ADMIN), None)
            .await;
        assert_eq!(r.status, 202, "{r:?}");

        // While config is down, the rest of the hub answers at once.
        let t = Instant::now();
        assert_eq!(hub.get("/health", None).await.status, 200);
        assert!(t.elapsed() < Duration::from_millis(500));

        // The dashboard sees the crash, then the restart after the backoff.
        let mut crashed_backoff = None;
        let mut restarted = false;
        while !restarted {
            let frame = ws.next_json().await;
            if frame["type"] != "events" {
                continue;
            }
            for event in frame["data"].as_array().unwrap() {
                if event["actor"] != "config" {
                    continue;
                }
                match event["type"].as_str().unwrap() {
                    "actor_crashed" => {
                        assert!(
                            event["last_error"]
                                .as_str()
                                .unwrap()
                                .contains("injected crash"),
                            "{event}"
                        );
                        crashed_backoff = event["last_backoff_ms"].as_u64();
                    }
                    "actor_restarted" => restarted = true,
                    other => panic!("unexpected event {other}"),
                }
            }
        }
        let backoff = crashed_backoff.expect("crash event before restart event");
        assert!(
            sent.elapsed() >= Duration::from_millis(backoff),
            "restarted before its backoff of {backoff} ms"
        );
        backoffs.push(backoff);
        // A config read made after the restart is served by the new instance.
        assert_eq!(hub.get("/api/config/default-repo", None).await.status, 200);
    }
    assert!(
        backoffs.windows(2).all(|w| w[1] == 2 * w[0]),
        "backoff doubles: {backoffs:?}"
    );
    let record = config_record(&hub).await;
    assert_eq!(record["crashes"], 5, "{record}");
    assert_eq!(record["crash_streak"], 5, "{record}");
    assert_eq!(record["restarts"], 5, "{record}");

    // Without --test-hooks there is no crash route.
    let plain = TestHub::start_with(&["--test-hooks", "false"]).await;
    let r = plain
        .request("POST", "/api/admin/actors/config/crash", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_the_supervision_tree_and_only_admins_restart() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker-1", "agent").await;
    assert_eq!(hub.get("/api/admin/actors", Some(&agent)).await.status, 403);
    assert_eq!(
        hub.request(
            "POST",
            "/api/admin/actors/config/restart",
            Some(&agent),
            None
        )
        .await
        .status,
        403
    );
    let r = hub.get("/api/admin/actors", Some(ADMIN)).await;
    let names: Vec<&str> = r.json["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for expected in ["store", "pubsub", "auth", "config", "sessions"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for a in r.json["actors"].as_array().unwrap() {
        for field in [
            "name",
            "kind",
            "status",
            "started_at",
            "restarts",
            "last_restart_at",
            "last_error",
        ] {
            assert!(a.get(field).is_some(), "{field} missing in {a}");
        }
    }
    let r = hub
        .request("POST", "/api/admin/actors/nope/restart", Some(ADMIN), None)
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (404, json!("actor_not_found"))
    );
    let r = hub
        .request(
            "POST",
            "/api/admin/actors/sessions/restart",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (409, json!("actor_not_restartable"))
    );
    // Restarting the store and the pubsub keeps the hub working.
    for name in ["store", "pubsub", "auth"] {
        let r = hub
            .request(
                "POST",
                &format!("/api/admin/actors/{name}/restart"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
    }
    let r = hub
        .send_json(
            "PUT",
            "/api/config/default-repo",
            Some(ADMIN),
            json!({"url": "https://after/restarts"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(hub.token("worker-2", "agent").await.len(), 64);
}
