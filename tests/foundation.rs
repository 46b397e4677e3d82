//! Black-box tests of the foundation: health, routing, bodies, config and token routes,
//! websocket endpoints, shutdown and the offline token CLI.

mod common;

use std::time::Duration;

use common::{TestHub, ADMIN};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_has_the_reference_shape() {
    let hub = TestHub::start().await;
    let r = hub.get("/health", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.json,
        json!({"status": "ok", "service": "agent_com", "agents_connected": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods_are_not_found() {
    let hub = TestHub::start().await;
    for (method, path) in [
        ("GET", "/nope"),
        ("POST", "/health"),
        ("HEAD", "/health"),
        ("DELETE", "/api/config/default-repo"),
    ] {
        let r = hub.request(method, path, None, None).await;
        assert_eq!(r.status, 404, "{method} {path}");
        if method != "HEAD" {
            assert_eq!(r.json, json!({"error": "not_found"}), "{method} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_have_defaults_and_need_the_right_token() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker-1", "agent").await;

    // Reads: any token, as a Bearer header or a `token` parameter; none → 401.
    let r = hub.get("/api/config/heartbeat-interval", None).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (401, json!({"error": "unauthorized"}))
    );
    let r = hub
        .get("/api/config/heartbeat-interval", Some(&agent))
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"heartbeat_interval_ms": 900000}))
    );
    let r = hub
        .get(
            &format!("/api/config/mailbox-retention?token={agent}"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"mailbox_ttl_ms": 604800000}))
    );
    let r = hub
        .get("/api/config/mailbox-retention?token=bogus", None)
        .await;
    assert_eq!(r.status, 401);

    // Writes: admin only.
    let r = hub
        .send_json(
            "PUT",
            "/api/config/heartbeat-interval",
            Some(&agent),
            json!({"heartbeat_interval_ms": 5}),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (403, json!("admin_only"))
    );
    let r = hub
        .send_json(
            "PUT",
            "/api/config/heartbeat-interval",
            None,
            json!({"heartbeat_interval_ms": 5}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["hint"], "provide Authorization: Bearer <token>");

    for bad in [
        json!({}),
        json!({"heartbeat_interval_ms": 0}),
        json!({"heartbeat_interval_ms": -3}),
        json!({"heartbeat_interval_ms": "60"}),
        json!({"heartbeat_interval_ms": 1.5}),
    ] {
        let r = hub
            .send_json(
                "PUT",
                "/api/config/heartbeat-interval",
                Some(ADMIN),
                bad.clone(),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(
            r.json["error"],
            "missing or invalid field: heartbeat_interval_ms (positive integer)"
        );
    }
    let r = hub
        .send_json(
            "PUT",
            "/api/config/heartbeat-interval",
            Some(ADMIN),
            json!({"heartbeat_interval_ms": 30000}),
        )
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (
            200,
            json!({"heartbeat_interval_ms": 30000, "status": "updated"})
        )
    );
    let r = hub
        .send_json(
            "PUT",
            "/api/config/mailbox-retention",
            Some(ADMIN),
            json!({"mailbox_ttl_ms": 1000}),
        )
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"mailbox_ttl_ms": 1000, "status": "updated"}))
    );
    let r = hub
        .send_json(
            "PUT",
            "/api/config/mailbox-retention",
            Some(ADMIN),
            json!({"ttl": 1000}),
        )
        .await;
    assert_eq!(
        r.json["error"],
        "missing or invalid field: mailbox_ttl_ms (positive integer)"
    );
    assert_eq!(
        hub.get("/api/config/heartbeat-interval", Some(&agent))
            .await
            .json["heartbeat_interval_ms"],
        30000
    );

    // default-repo: open read, admin write, non-empty string.
    let r = hub.get("/api/config/default-repo", None).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"default_repo": null, "configured": false}))
    );
    for bad in [json!({}), json!({"url": ""}), json!({"url": 42})] {
        let r = hub
            .send_json("PUT", "/api/config/default-repo", Some(ADMIN), bad)
            .await;
        assert_eq!(
            (r.status, r.json["error"].clone()),
            (400, json!("missing or invalid field: url"))
        );
    }
    let r = hub
        .send_json(
            "PUT",
            "/api/config/default-repo",
            Some(&agent),
            json!({"url": "x"}),
        )
        .await;
    assert_eq!(r.status, 403);
    let url = "https://git.example/team/repo.git";
    let r = hub
        .send_json(
            "PUT",
            "/api/config/default-repo",
            Some(ADMIN),
            json!({"url": url}),
        )
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "ok", "default_repo": url}))
    );
    let r = hub.get("/api/config/default-repo", None).await;
    assert_eq!(r.json, json!({"default_repo": url, "configured": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_structured_errors_and_change_nothing() {
    let hub = TestHub::start_with(&["--max-body-bytes", "1KiB"]).await;
    let path = "/api/config/heartbeat-interval";
    let r = hub
        .request(
            "PUT",
            path,
            Some(ADMIN),
            Some(("text/plain", b"heartbeat_interval_ms=5".to_vec())),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (415, json!("unsupported_media_type"))
    );
    let r = hub
        .request(
            "PUT",
            path,
            Some(ADMIN),
            Some(("application/json", b"{\"heartbeat_interval_ms\":".to_vec())),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (400, json!("invalid_json"))
    );
    let r = hub
        .request(
            "PUT",
            path,
            Some(ADMIN),
            Some(("application/json", b"[1,2]".to_vec())),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (400, json!("invalid_body"))
    );
    let big = json!({"heartbeat_interval_ms": 7, "pad": "x".repeat(2048)})
        .to_string()
        .into_bytes();
    let r = hub
        .request("PUT", path, Some(ADMIN), Some(("application/json", big)))
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (413, json!("payload_too_large"))
    );
    // Nothing above was written.
    assert_eq!(
        hub.get(path, Some(ADMIN)).await.json["heartbeat_interval_ms"],
        900000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_have_roles_and_are_never_listed_in_full() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker-1", "agent").await;
    let viewer = hub.token("ops-screen", "viewer").await;
    assert_eq!(agent.len(), 64);

    let r = hub
        .send_json("POST", "/admin/tokens", Some(ADMIN), json!({}))
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (400, json!("missing required field: agent_id"))
    );
    let r = hub
        .send_json(
            "POST",
            "/admin/tokens",
            Some(ADMIN),
            json!({"agent_id": "x", "role": "root"}),
        )
        .await;
    assert_eq!((r.status, r.json["field"].clone()), (400, json!("role")));
    let r = hub
        .send_json(
            "POST",
            "/admin/tokens",
            Some(&agent),
            json!({"agent_id": "evil"}),
        )
        .await;
    assert_eq!(r.status, 403, "an agent cannot mint tokens (S1/S2)");
    let r = hub.get("/admin/tokens", Some(&viewer)).await;
    assert_eq!(r.status, 403);

    let r = hub.get("/admin/tokens", Some(ADMIN)).await;
    assert_eq!(r.status, 200);
    let listed = r.json["tokens"].as_array().unwrap().clone();
    let mine = listed.iter().find(|t| t["agent_id"] == "worker-1").unwrap();
    assert_eq!(mine["token_prefix"], format!("{}...", &agent[..8]));
    assert_eq!(mine["role"], "agent");
    assert!(
        !r.body.windows(64).any(|w| w == agent.as_bytes()),
        "raw token listed"
    );

    // An agent may revoke its own tokens, not another's.
    let r = hub
        .request("DELETE", "/admin/tokens/ops-screen", Some(&agent), None)
        .await;
    assert_eq!(r.status, 403);
    let r = hub
        .request("DELETE", "/admin/tokens/worker-1", Some(&agent), None)
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "revoked", "agent_id": "worker-1"}))
    );
    assert_eq!(
        hub.get("/api/config/heartbeat-interval", Some(&agent))
            .await
            .status,
        401
    );
    let r = hub
        .request("DELETE", "/admin/tokens/nobody", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_stored_hashed() {
    let mut hub = TestHub::start().await;
    let agent = hub.token("worker-1", "agent").await;
    hub.terminate().await;
    for entry in walk(hub.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        for raw in [agent.as_bytes(), ADMIN.as_bytes()] {
            assert!(
                !bytes.windows(64).any(|w| w == raw),
                "raw token found in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_gets_on_websocket_paths_are_426() {
    let hub = TestHub::start().await;
    let viewer = hub.token("screen", "viewer").await;
    let r = hub.get("/ws", None).await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (426, json!("upgrade_required"))
    );
    let r = hub.get("/ws/dashboard", Some(&viewer)).await;
    assert_eq!(r.status, 426);
    let r = hub.get("/ws/dashboard", None).await;
    assert_eq!(r.status, 401, "no token, no dashboard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_socket_answers_before_identify_and_rejects_bad_frames() {
    let hub = TestHub::start_with(&["--max-ws-message-bytes", "4KiB"]).await;
    let mut ws = hub.ws("/ws", None).await.unwrap();
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "error", "error": "not_identified"})
    );
    ws.send_text("{not json").await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "error", "error": "invalid_json"})
    );
    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(
        ws.next_json().await["type"],
        "error",
        "a binary frame is an error, not a crash (C5)"
    );
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        ws.next_json().await["error"],
        "not_identified",
        "still served after bad frames"
    );
    ws.send_text(&"x".repeat(8192)).await;
    assert_eq!(ws.closed(Duration::from_secs(5)).await, Some(1009));
    // The hub is unaffected.
    assert_eq!(hub.get("/health", None).await.status, 200);
}

/// A socket that sends nothing and does not answer the hub's ping (a peer that is gone) is
/// closed at the idle timeout; one whose client answers pings (as websocket libraries do by
/// themselves) stays open however quiet it is: the original's `connect.js` listens for
/// minutes without sending a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_agent_sockets_are_closed_unless_they_answer_pings() {
    let hub = TestHub::start_with(&["--ws-idle-timeout", "600ms"]).await;
    let mut answering = hub.ws("/ws", None).await.unwrap();
    let mut gone = common::raw_upgrade(&hub, "/ws").await;
    let started = std::time::Instant::now();
    // The answering client is read (which sends its pongs) meanwhile, for two idle timeouts.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    let ((code, before), quiet) = tokio::join!(
        common::raw_close_code(&mut gone, Duration::from_secs(5)),
        answering.next_by(deadline)
    );
    assert_eq!(code, Some(1000));
    assert_eq!(before, vec![0x9], "one ping first");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after {waited:?}"
    );
    assert!(quiet.is_none(), "the answering socket got {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_socket_needs_admin_or_viewer_and_streams_actor_events() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker-1", "agent").await;
    let viewer = hub.token("screen", "viewer").await;
    assert!(hub.ws("/ws/dashboard", None).await.is_err());
    assert!(hub.ws("/ws/dashboard", Some(&agent)).await.is_err());
    let mut ws = hub.ws("/ws/dashboard", Some(&viewer)).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            hub.get("/api/admin/actors", Some(ADMIN)).await.json["sessions"]["dashboard"] == 1
        })
        .await
    );
    let r = hub
        .request(
            "POST",
            "/api/admin/actors/config/restart",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let snapshot = ws.next_json().await;
    assert_eq!(snapshot["type"], "snapshot", "the snapshot comes first");
    assert!(snapshot["data"]["health"]["status"].is_string());
    let restarted = loop {
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "events", "{frame}");
        let found = frame["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "actor_restarted")
            .cloned();
        if let Some(e) = found {
            break e;
        }
    };
    assert_eq!(restarted["actor"], "config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1001_and_keeps_data() {
    let mut hub = TestHub::start().await;
    let r = hub
        .send_json(
            "PUT",
            "/api/config/default-repo",
            Some(ADMIN),
            json!({"url": "https://x/y"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut agent_ws = hub.ws("/ws", None).await.unwrap();
    let mut dash_ws = hub.ws("/ws/dashboard", Some(ADMIN)).await.unwrap();
    // Make sure both sessions are open before the signal.
    agent_ws.send_json(json!({"type": "ping"})).await;
    agent_ws.next_json().await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            hub.get("/api/admin/actors", Some(ADMIN)).await.json["sessions"]["dashboard"] == 1
        })
        .await
    );
    let status = hub.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(agent_ws.closed(Duration::from_secs(5)).await, Some(1001));
    assert_eq!(dash_ws.closed(Duration::from_secs(5)).await, Some(1001));
    hub.restart().await;
    assert_eq!(
        hub.get("/api/config/default-repo", None).await.json["default_repo"],
        "https://x/y"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_token_cli_mints_lists_and_revokes() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::binary())
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, token, _) = run(&["token", "create", "--agent-id", "ops", "--role", "admin"]);
    assert!(ok);
    let token = token.trim().to_string();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    let (ok, listing, _) = run(&["token", "list"]);
    assert!(ok && listing.contains("ops\tadmin") && !listing.contains(&token));
    let (ok, _, err) = run(&["token", "create", "--agent-id", "a b"]);
    assert!(!ok && err.contains("agent id"), "{err}");

    // A hub on the same directory accepts the token; the CLI refuses to touch a live store.
    let mut child = tokio::process::Command::new(common::binary())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut addr = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        assert!(
            !line.contains("admin token"),
            "no new admin token when one exists"
        );
        if let Some(rest) = line.strip_prefix("AgentCom listening on http://") {
            addr = rest.to_string();
            break;
        }
    }
    let r = common::request(&addr, "GET", "/api/admin/actors", Some(&token), None).await;
    assert_eq!(r.status, 200);
    let (ok, _, err) = run(&["token", "list"]);
    assert!(!ok && err.contains("in use"), "{err}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let (ok, out, _) = run(&["token", "revoke", "--agent-id", "ops"]);
    assert!(ok && out.contains("revoked 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_without_an_admin_token_prints_one() {
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(common::binary())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env_remove("AGENTCOM_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let (mut token, mut addr, mut data_line) = (String::new(), String::new(), String::new());
    let mut dashboard = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(t) = line.strip_prefix("admin token (shown once, keep it): ") {
            token = t.to_string();
        } else if let Some(d) = line.strip_prefix("dashboard: ") {
            dashboard = d.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data_line = d.to_string();
            break;
        } else if let Some(a) = line.strip_prefix("AgentCom listening on http://") {
            addr = a.to_string();
        }
    }
    assert_eq!(token.len(), 64);
    assert!(data_line.ends_with("/db"), "{data_line}");
    // The dashboard's address is printed beside the token.
    assert!(
        dashboard.starts_with(&format!("http://{addr}/dashboard")),
        "{dashboard}"
    );
    let r = common::request(&addr, "GET", "/admin/tokens", Some(&token), None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_the_hub_with_the_restore_command() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("conf"), b"this is not a sled configuration file").unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agentcom restore"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_for_admins_only() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker-1", "agent").await;
    assert_eq!(hub.get("/metrics", Some(&agent)).await.status, 403);
    assert_eq!(hub.get("/metrics", None).await.status, 401);
    let r = hub
        .send_json(
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": "measure me", "priority": "urgent"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = hub.get("/metrics", Some(ADMIN)).await;
    assert_eq!(r.status, 200);
    assert!(r
        .content_type
        .as_deref()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8_lossy(&r.body);
    for line in [
        "agentcom_tasks{status=\"queued\"} 1",
        "agentcom_queue_depth{priority=\"0\"} 1",
        "agentcom_websocket_connections{kind=\"agent\"} 0",
        "agentcom_actor_restarts_total{actor=\"config\"} 0",
        "agentcom_table_records{table=\"task_queue\"} 1",
        "# TYPE agentcom_task_run_seconds histogram",
        "agentcom_task_wait_seconds_bucket{le=\"+Inf\"} 0",
        "agentcom_store_size_bytes ",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
