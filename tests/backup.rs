//! Black-box tests of backups, verify, restore and storage health (SPEC §3–§4, the seed
//! plan `10-02-PLAN.md`, reference §7). Every test starts its own hub(s) on loopback with
//! a temporary data directory and talks to it over HTTP, the dashboard websocket and the
//! offline CLI (`agentcom backup …`, `agentcom restore …`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{now_ms, request_json, Frame, TestHub, Ws, ADMIN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Every table, in the order the health report and the backup response list them: the
/// original nine first, in the reference's order, then the four new ones.
const TABLES: [&str; 13] = [
    "task_queue",
    "task_dead_letter",
    "agent_mailbox",
    "message_history",
    "agent_channels",
    "channel_history",
    "agentcom_config",
    "thread_messages",
    "thread_replies",
    "auth_tokens",
    "hub_meta",
    "quarantine",
    "mailbox_bodies",
];

const HOUR_MS: u64 = 3_600_000;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Start a hub (through the harness) with a 1 h schedule and backups in `dir`.
async fn hub_with_backups(dir: &Path, extra: &[&str]) -> TestHub {
    let dir = s(dir);
    let mut args = vec!["--backup-interval", "1h", "--backup-dir", dir.as_str()];
    args.extend_from_slice(extra);
    TestHub::start_with(&args).await
}

async fn get_ok(addr: &str, path: &str, token: Option<&str>) -> Value {
    let r = common::request(addr, "GET", path, token, None).await;
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.json
}

/// `POST /api/admin/backup` as admin; 200 and the body.
async fn backup_now(addr: &str) -> Value {
    let r = common::request(addr, "POST", "/api/admin/backup", Some(ADMIN), None).await;
    assert_eq!(r.status, 200, "POST /api/admin/backup: {r:?}");
    r.json
}

async fn health(addr: &str) -> Value {
    get_ok(addr, "/api/admin/dets-health", Some(ADMIN)).await
}

/// Complete backups in `dir` (directories not starting with a dot), sorted by name.
fn backup_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn manifest(dir: &Path) -> Value {
    let text = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&text).expect("manifest is JSON")
}

/// The manifest's table entries by table name.
fn manifest_tables(m: &Value) -> BTreeMap<String, Value> {
    m["tables"]
        .as_array()
        .expect("manifest tables")
        .iter()
        .map(|t| (t["table"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// What an offline CLI command did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Run `agentcom <args>` to completion (bounded).
async fn agentcom(args: &[&str]) -> Out {
    let child = tokio::process::Command::new(common::binary())
        .args(args)
        .env("AGENTCOM_LOG", "warn")
        .env_remove("AGENTCOM_DATA_DIR")
        .env_remove("AGENTCOM_BACKUP_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run agentcom");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("agentcom {args:?} finishes within 120 s"))
        .expect("output");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A hub this file starts itself, on a data directory it chooses (the harness always
/// makes a fresh one).
struct Served {
    addr: String,
    child: tokio::process::Child,
}

impl Served {
    async fn start(data: &Path, extra: &[&str]) -> Served {
        let mut child = tokio::process::Command::new(common::binary())
            .arg("serve")
            .args([
                "--bind",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN,
                "--test-hooks",
            ])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("AGENTCOM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start agentcom");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("stdout") {
                if let Some(rest) = line.strip_prefix("AgentCom listening on http://") {
                    return rest.trim().to_string();
                }
            }
            panic!("agentcom exited before listening");
        })
        .await
        .expect("agentcom starts within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Served { addr, child }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// An agent identified on `/ws`.
async fn identify(hub: &TestHub, id: &str, caps: Value) -> Ws {
    let token = hub.token(id, "agent").await;
    hub.identify(id, &token, json!({"capabilities": caps}))
        .await
}

/// A direct message as `token`'s agent; the message id.
async fn dm(addr: &str, token: &str, to: &str, payload: Value, reply_to: Option<&str>) -> String {
    let mut body = json!({"to": to, "payload": payload});
    if let Some(r) = reply_to {
        body["reply_to"] = r.into();
    }
    let r = request_json(addr, "POST", "/api/message", Some(token), body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["id"].as_str().unwrap().to_string()
}

async fn publish(addr: &str, token: &str, channel: &str, payload: Value) -> u64 {
    let r = request_json(
        addr,
        "POST",
        &format!("/api/channels/{channel}/publish"),
        Some(token),
        json!({ "payload": payload }),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["seq"].as_u64().unwrap()
}

async fn create_channel(addr: &str, token: &str, name: &str) {
    let r = request_json(
        addr,
        "POST",
        "/api/channels",
        Some(token),
        json!({ "name": name }),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{r:?}");
}

/// Fill the store with `n` direct messages of `kb` KiB each to an offline agent, so that a
/// backup takes a noticeable time (message_history, and the capped agent_mailbox).
async fn bulk(addr: &str, token: &str, n: usize, kb: usize) {
    let blob = "x".repeat(kb * 1024);
    for i in 0..n {
        dm(
            addr,
            token,
            "bulk-sink",
            json!({"i": i, "blob": blob}),
            None,
        )
        .await;
    }
}

/// Every entry of a channel's history, paging with since/limit.
async fn channel_history_all(addr: &str, channel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut since = 0u64;
    loop {
        let page = get_ok(
            addr,
            &format!("/api/channels/{channel}/history?since={since}&limit=200"),
            None,
        )
        .await;
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            return out;
        }
        since = msgs.last().unwrap()["seq"].as_u64().unwrap();
        out.extend(msgs);
    }
}

// ---------------------------------------------------------------------------------------
// 1. The seed plan's own tests
// ---------------------------------------------------------------------------------------

fn assert_health_shape(h: &Value) {
    for key in [
        "health_status",
        "stale_backup",
        "high_fragmentation",
        "last_backup_at",
        "next_backup_at",
        "last_backup_result",
        "tables",
        "store",
    ] {
        assert!(h.get(key).is_some(), "health lacks {key}: {h}");
    }
    assert!(h["stale_backup"].is_boolean(), "{h}");
    assert!(h["high_fragmentation"].is_boolean(), "{h}");
    assert!(h["next_backup_at"].is_u64(), "{h}");
    let tables = h["tables"].as_array().expect("tables");
    let names: Vec<&str> = tables
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        names, TABLES,
        "every table, the original nine first in order"
    );
    for t in tables {
        for key in [
            "table",
            "record_count",
            "file_size_bytes",
            "fragmentation_ratio",
            "status",
        ] {
            assert!(t.get(key).is_some(), "table metric lacks {key}: {t}");
        }
        assert!(t["record_count"].is_u64(), "{t}");
        assert!(t["file_size_bytes"].is_u64(), "{t}");
        assert_eq!(t["status"], "ok", "{t}");
        // Per-table fragmentation may be unmeasurable (null, and said so) but never the
        // original's bogus ~1.0 for a small table.
        let f = &t["fragmentation_ratio"];
        assert!(
            f.is_null() || f.as_f64().is_some_and(|x| (0.0..=0.5).contains(&x)),
            "{t}"
        );
    }
    let store = &h["store"];
    assert_eq!(store["engine"], "sled", "{store}");
    assert!(store["size_on_disk"].is_u64(), "{store}");
    assert!(store["size_on_disk"].as_u64().unwrap() > 0, "{store}");
    assert!(store["live_bytes"].is_u64(), "{store}");
    let ratio = store["fragmentation_ratio"].as_f64().expect("store ratio");
    assert!((0.0..=1.0).contains(&ratio), "{store}");
    assert!(store["was_recovered"].is_boolean(), "{store}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_health_metrics_report_every_table_with_its_fields() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &[]).await;

    // A fresh hub: never backed up, a small store.
    let h = health(&hub.addr).await;
    assert_health_shape(&h);
    assert_eq!(h["stale_backup"], true, "{h}");
    assert_eq!(h["high_fragmentation"], false, "a small fresh store: {h}");
    assert_eq!(h["health_status"], "warning", "{h}");
    assert_eq!(h["last_backup_at"], Value::Null, "{h}");
    assert_eq!(h["last_backup_result"], Value::Null, "{h}");
    let next = h["next_backup_at"].as_u64().unwrap();
    let now = now_ms();
    assert!(
        next > now + HOUR_MS - 120_000 && next <= now + HOUR_MS,
        "no backup yet: next is one interval after start ({next} vs now {now})"
    );
    // The alias answers the same report.
    let alias = get_ok(&hub.addr, "/api/admin/storage-health", Some(ADMIN)).await;
    assert_health_shape(&alias);
    assert_eq!(alias["health_status"], h["health_status"]);

    // Record counts follow the data.
    let alpha = hub.token("alpha", "agent").await;
    for i in 0..3 {
        dm(&hub.addr, &alpha, "offline-one", json!({ "i": i }), None).await;
    }
    let h = health(&hub.addr).await;
    let count = |h: &Value, t: &str| {
        h["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["record_count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count(&h, "agent_mailbox"), 3, "{h}");
    assert_eq!(count(&h, "message_history"), 3, "{h}");
    assert!(count(&h, "auth_tokens") >= 2, "admin and alpha: {h}");

    // After one backup: fresh, so healthy.
    let b = backup_now(&hub.addr).await;
    let created_at = b["created_at"].as_u64().unwrap();
    let h = health(&hub.addr).await;
    assert_health_shape(&h);
    assert_eq!(h["stale_backup"], false, "{h}");
    assert_eq!(h["high_fragmentation"], false, "{h}");
    assert_eq!(h["health_status"], "healthy", "{h}");
    assert_eq!(h["last_backup_at"], created_at, "{h}");
    assert_eq!(
        h["next_backup_at"],
        created_at + HOUR_MS,
        "fixed rate from the newest backup: {h}"
    );
    let last = &h["last_backup_result"];
    assert!(last.is_object(), "{h}");
    assert_eq!(last["backup_id"], b["backup_id"], "{h}");
    assert_eq!(last["verified"], true, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_a_backup_creates_one_file_per_table_and_an_honest_manifest() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &[]).await;
    let alpha = hub.token("alpha", "agent").await;
    for i in 0..7 {
        dm(&hub.addr, &alpha, "offline-one", json!({ "i": i }), None).await;
    }
    create_channel(&hub.addr, &alpha, "c1").await;
    for i in 0..5 {
        publish(&hub.addr, &alpha, "c1", json!({ "i": i })).await;
    }
    // Threads are indexed in the background (after the acknowledgement): wait until all
    // twelve messages are, so that the hub is idle when it is backed up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = health(&hub.addr).await;
        let threaded = h["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == "thread_messages")
            .unwrap()["record_count"]
            .clone();
        if threaded == 12 {
            break h;
        }
        assert!(Instant::now() < deadline, "messages are threaded: {h}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let b = backup_now(&hub.addr).await;
    let id = b["backup_id"].as_str().unwrap();
    assert_eq!(backup_ids(bdir.path()), vec![id.to_string()]);
    let dir = bdir.path().join(id);

    // Exactly one file per table, plus the manifest; nothing else (no temp leftovers).
    let mut expected: Vec<String> = TABLES.iter().map(|t| format!("{t}.rec")).collect();
    expected.push("manifest.json".into());
    expected.sort();
    assert_eq!(dir_listing(&dir), expected);
    assert_eq!(
        dir_listing(bdir.path()),
        vec![id.to_string()],
        "no temporary directory left behind"
    );

    let m = manifest(&dir);
    assert_eq!(m["engine"], "sled", "{m}");
    assert!(m["format_version"].is_u64(), "{m}");
    assert!(m["hub_version"].is_string(), "{m}");
    assert_eq!(m["created_at"], b["created_at"], "{m}");
    let tables = manifest_tables(&m);
    assert_eq!(tables.len(), 13, "{m}");
    for t in TABLES {
        let e = &tables[t];
        let size = std::fs::metadata(dir.join(format!("{t}.rec")))
            .unwrap()
            .len();
        assert_eq!(e["bytes"], size, "manifest bytes equal the file size: {e}");
        assert!(e["checksum"].as_str().is_some_and(|c| !c.is_empty()), "{e}");
        // The hub was idle: the backup holds what health reported just before.
        let reported = h["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["record_count"]
            .clone();
        assert_eq!(e["record_count"], reported, "{t}: {e} vs health {reported}");
    }
    assert_eq!(tables["agent_mailbox"]["record_count"], 7);
    assert_eq!(tables["message_history"]["record_count"], 7);
    assert_eq!(tables["channel_history"]["record_count"], 5);
    assert_eq!(tables["task_queue"]["record_count"], 0);

    // The listing shows it with its manifest.
    let list = get_ok(&hub.addr, "/api/admin/backups", Some(ADMIN)).await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["backups"][0]["backup_id"], id, "{list}");
    assert_eq!(list["backups"][0]["manifest"], m, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_after_four_backups_only_the_newest_three_remain() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &["--backup-keep", "3"]).await;
    let alpha = hub.token("alpha", "agent").await;
    let mut made = Vec::new();
    for i in 0..4 {
        // Something changes between backups; no sleeps (the original needed 1.1 s).
        dm(&hub.addr, &alpha, "offline-one", json!({ "i": i }), None).await;
        let b = backup_now(&hub.addr).await;
        made.push((
            b["backup_id"].as_str().unwrap().to_string(),
            b["created_at"].as_u64().unwrap(),
        ));
    }
    let ids: Vec<String> = made.iter().map(|(id, _)| id.clone()).collect();
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "names never collide: {ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "names sort in time order");
    assert!(
        made.windows(2).all(|w| w[0].1 < w[1].1),
        "created_at increases: {made:?}"
    );
    assert_eq!(
        backup_ids(bdir.path()),
        ids[1..].to_vec(),
        "the newest three remain"
    );
    let list = get_ok(&hub.addr, "/api/admin/backups", Some(ADMIN)).await;
    let listed: Vec<&str> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![&ids[3], &ids[2], &ids[1]],
        "newest first: {list}"
    );
    // Each remaining backup still holds its own state of the mailbox.
    for (i, id) in ids.iter().enumerate().skip(1) {
        let m = manifest(&bdir.path().join(id));
        assert_eq!(
            manifest_tables(&m)["agent_mailbox"]["record_count"],
            i as u64 + 1,
            "{id}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Response shape and authorisation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_backup_answers_the_seed_shape_plus_id_time_and_verification() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &[]).await;
    let before = now_ms();
    let b = backup_now(&hub.addr).await;
    let after = now_ms();
    assert_eq!(b["status"], "complete", "{b}");
    assert_eq!(b["tables_total"], 13, "{b}");
    assert_eq!(b["tables_success"], 13, "{b}");
    assert_eq!(b["verified"], true, "{b}");
    let id = b["backup_id"].as_str().expect("backup_id");
    let created_at = b["created_at"].as_u64().expect("created_at");
    assert!(before <= created_at && created_at <= after, "{b}");
    assert!(b["duration_ms"].is_u64(), "{b}");
    assert!(b["duration_ms"].as_u64().unwrap() <= after - before, "{b}");
    // The id is a UTC timestamp with milliseconds (filesystem-safe), e.g.
    // 2026-11-29T01-34-53.790Z.
    assert_eq!(id.len(), 24, "{id}");
    assert!(id.ends_with('Z') && id.as_bytes()[10] == b'T', "{id}");
    assert!(!id.contains(':') && !id.contains('/'), "{id}");
    let results = b["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["table"].as_str().unwrap())
        .collect();
    assert_eq!(names, TABLES, "results in table order");
    let dir = bdir.path().join(id);
    for r in results {
        assert_eq!(r["status"], "ok", "{r}");
        let path = PathBuf::from(r["path"].as_str().unwrap());
        assert!(path.starts_with(&dir), "{r}");
        assert_eq!(
            std::fs::metadata(&path).expect("file exists").len(),
            r["size"].as_u64().unwrap(),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_health_routes_are_admin_only() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &[]).await;
    let id = backup_now(&hub.addr).await["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let agent = hub.token("alpha", "agent").await;
    let viewer = hub.token("screen", "viewer").await;
    let verify = format!("/api/admin/backups/{id}/verify");
    let routes: [(&str, &str); 5] = [
        ("POST", "/api/admin/backup"),
        ("GET", "/api/admin/backups"),
        ("POST", verify.as_str()),
        ("GET", "/api/admin/dets-health"),
        ("GET", "/api/admin/storage-health"),
    ];
    let bogus = "0".repeat(64);
    for (method, path) in routes {
        for token in [&agent, &viewer] {
            let r = hub.request(method, path, Some(token), None).await;
            assert_eq!(r.status, 403, "{method} {path}: {r:?}");
            assert!(r.json["error"].is_string(), "{r:?}");
        }
        let r = hub.request(method, path, None, None).await;
        assert_eq!(r.status, 401, "{method} {path} without a token: {r:?}");
        let r = hub.request(method, path, Some(&bogus), None).await;
        assert_eq!(
            r.status, 401,
            "{method} {path} with an unknown token: {r:?}"
        );
        let r = hub.request(method, path, Some(ADMIN), None).await;
        assert_eq!(r.status, 200, "{method} {path} as admin: {r:?}");
    }
    // The refused POSTs made no backup (the admin one made one more: keep is 3).
    assert_eq!(backup_ids(bdir.path()).len(), 2);
    // An unknown backup id is a 404.
    let r = hub
        .request("POST", "/api/admin/backups/nope/verify", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 404, "{r:?}");
}

// ---------------------------------------------------------------------------------------
// 3. Concurrent requests share one run
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backup_requests_share_one_run() {
    let bdir = tempfile::tempdir().unwrap();
    // Every run waits a second before it writes, so that all the concurrent requests below
    // arrive during one run however loaded the machine is (seen once in a loaded run: a
    // request that came after a quick run had ended started a second one).
    let hub = hub_with_backups(
        bdir.path(),
        &["--backup-keep", "10", "--test-backup-pause", "1s"],
    )
    .await;
    let alpha = hub.token("alpha", "agent").await;
    bulk(&hub.addr, &alpha, 120, 100).await;
    let first = backup_now(&hub.addr).await;
    let before = backup_ids(bdir.path());
    assert_eq!(before.len(), 1);

    let addr = hub.addr.clone();
    let replies =
        futures_util::future::join_all(
            (0..5).map(|_| {
                let addr = addr.clone();
                async move {
                    common::request(&addr, "POST", "/api/admin/backup", Some(ADMIN), None).await
                }
            }),
        )
        .await;
    let mut ids = Vec::new();
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["status"], "complete", "{r:?}");
        assert_eq!(r.json["verified"], true, "{r:?}");
        ids.push(r.json["backup_id"].as_str().unwrap().to_string());
    }
    println!(
        "one run of the bulk store took {} ms",
        replies[0].json["duration_ms"]
    );
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "every concurrent request gets the same run: {ids:?}"
    );
    assert_ne!(ids[0], first["backup_id"].as_str().unwrap());
    let after = backup_ids(bdir.path());
    assert_eq!(after.len(), 2, "one new backup directory: {after:?}");
    assert_eq!(after[1], ids[0]);
}

// ---------------------------------------------------------------------------------------
// 4. Consistency: one backup is one point in time across all tables
// ---------------------------------------------------------------------------------------

/// A single writer alternates between two tables, waiting for each acknowledgement:
/// step i publishes `{"n": i}` on channel "seq" (channel_history, one atomic write) and then
/// sends `{"n": i}` to the offline agent "sink" (agent_mailbox; the mailbox entry and the
/// hub_meta mailbox sequence counter are one batch). At every instant, therefore, the
/// channel's last n is c and the mailbox's last n is c or c − 1 — and the channel history
/// is gap-free. The API offers no single operation that writes two tables atomically in a
/// way a client can check (a DM writes history and mailbox through two actors), so the
/// cross-table invariant used here is causal: a point-in-time backup must never hold
/// channel step i+1 without mailbox step i. The backup scans agent_mailbox before
/// message_history and channel_history, and message_history is made large first, so a
/// fuzzy scan without its redo log would see the channel far ahead of the mailbox.
///
/// Each backup is restored with the CLI into a fresh data directory and served by a fresh
/// hub, and checked there through the API. The restored hub must also hand out mailbox
/// sequence numbers above every restored entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_taken_under_writes_are_points_in_time() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &["--backup-keep", "10"]).await;
    let alpha = hub.token("alpha", "agent").await;
    create_channel(&hub.addr, &alpha, "seq").await;
    bulk(&hub.addr, &alpha, 100, 100).await;

    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicU64::new(0));
    let writer = {
        let (addr, alpha, stop, steps) =
            (hub.addr.clone(), alpha.clone(), stop.clone(), steps.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let seq = publish(&addr, &alpha, "seq", json!({ "n": i })).await;
                assert_eq!(seq, i, "channel seq follows the steps");
                worst = worst.max(t.elapsed());
                let t = Instant::now();
                dm(&addr, &alpha, "sink", json!({ "n": i }), None).await;
                worst = worst.max(t.elapsed());
                steps.store(i, Ordering::SeqCst);
            }
            worst
        })
    };
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            steps.load(Ordering::SeqCst) >= 20
        })
        .await,
        "the writer makes progress"
    );
    let mut backups = Vec::new();
    for _ in 0..4 {
        let b = backup_now(&hub.addr).await;
        assert_eq!(b["verified"], true, "{b}");
        backups.push((
            b["backup_id"].as_str().unwrap().to_string(),
            b["duration_ms"].as_u64().unwrap(),
            steps.load(Ordering::SeqCst),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let worst = writer.await.expect("writer");
    let total = steps.load(Ordering::SeqCst);
    println!("writer: {total} steps, slowest write {worst:?}; backups {backups:?}");
    drop(hub);

    let mut seen = Vec::new();
    for (id, _, steps_after) in &backups {
        let data = tempfile::tempdir().unwrap();
        let from = bdir.path().join(id);
        let out = agentcom(&[
            "restore",
            "--from",
            &s(&from),
            "--data-dir",
            &s(data.path()),
        ])
        .await;
        assert!(out.ok(), "restore {id}: {out:?}");
        let restored = Served::start(data.path(), &["--backup-interval", "1h"]).await;
        let addr = restored.addr.clone();

        // Channel history: gap-free, n = seq, ending at c (the hub keeps the newest 200).
        let history = channel_history_all(&addr, "seq").await;
        let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        for e in &history {
            assert_eq!(e["message"]["payload"]["n"], e["seq"], "{id}: {e}");
        }
        let c = seqs.last().copied().unwrap_or(0);
        assert!(c >= 20, "{id}: the backup was taken while writing ({c})");
        assert!(
            c <= total && c <= *steps_after + 1,
            "{id}: c {c}, steps {steps_after}"
        );
        let expect: Vec<u64> = (c.saturating_sub(199).max(1)..=c).collect();
        assert_eq!(seqs, expect, "{id}: channel history is gap-free");

        // Mailbox of "sink": consecutive n, ending at c or c − 1.
        let mb = get_ok(&addr, "/api/mailbox/sink", Some(ADMIN)).await;
        let entries = mb["messages"].as_array().unwrap();
        let ns: Vec<u64> = entries
            .iter()
            .map(|e| e["payload"]["n"].as_u64().unwrap())
            .collect();
        let mseqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let m = ns.last().copied().unwrap_or(0);
        assert!(
            m == c || m + 1 == c,
            "{id}: point in time across tables: channel at {c}, mailbox at {m}"
        );
        assert!(
            ns.windows(2).all(|w| w[1] == w[0] + 1),
            "{id}: mailbox entries are consecutive: {ns:?}"
        );
        assert!(mseqs.windows(2).all(|w| w[0] < w[1]), "{id}: {mseqs:?}");
        assert_eq!(ns.len() as u64, m.min(100), "{id}: the newest 100 are kept");

        // The restored hub's mailbox counter is ahead of every restored entry.
        let max_seq = mseqs.iter().copied().max().unwrap_or(0);
        dm(&addr, &alpha, "sink", json!({ "n": "after" }), None).await;
        let mb = get_ok(&addr, "/api/mailbox/sink", Some(ADMIN)).await;
        let new = mb["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["payload"]["n"] == "after")
            .cloned()
            .expect("the new message is in the mailbox");
        assert!(
            new["seq"].as_u64().unwrap() > max_seq,
            "{id}: a new message gets a larger seq ({}) than every restored one ({max_seq})",
            new["seq"]
        );
        restored.stop().await;
        seen.push((c, m));
    }
    println!("restored (channel, mailbox) positions: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "later backups hold later states: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Round trip
// ---------------------------------------------------------------------------------------

/// Everything the API shows of the data, for comparison before and after a round trip.
async fn observable(
    addr: &str,
    task_ids: &[String],
    thread: &(String, String),
) -> BTreeMap<String, Value> {
    let mut paths: Vec<(String, Option<&str>)> = vec![
        ("/api/tasks".into(), Some(ADMIN)),
        ("/api/tasks/dead-letter".into(), Some(ADMIN)),
        ("/api/tasks/stats".into(), Some(ADMIN)),
        ("/api/mailbox/beta".into(), Some(ADMIN)),
        ("/api/mailbox/alpha".into(), Some(ADMIN)),
        ("/api/messages?limit=200".into(), Some(ADMIN)),
        ("/api/channels".into(), None),
        ("/api/channels/ops".into(), None),
        ("/api/channels/ops/history".into(), None),
        ("/api/agents/beta/subscriptions".into(), None),
        ("/api/config/heartbeat-interval".into(), Some(ADMIN)),
        ("/api/config/mailbox-retention".into(), Some(ADMIN)),
        ("/api/config/default-repo".into(), None),
        (format!("/api/threads/{}", thread.0), Some(ADMIN)),
        (format!("/api/threads/{}/replies", thread.0), Some(ADMIN)),
        (format!("/api/threads/{}/root", thread.1), Some(ADMIN)),
        ("/admin/tokens".into(), Some(ADMIN)),
    ];
    for id in task_ids {
        paths.push((format!("/api/tasks/{id}"), Some(ADMIN)));
    }
    let mut out = BTreeMap::new();
    for (path, token) in paths {
        out.insert(path.clone(), get_ok(addr, &path, token).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_backup_wipe_restore_yields_identical_tables() {
    let bdir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_backups(bdir.path(), &[]).await;
    let addr = hub.addr.clone();

    // Tokens.
    let alpha = hub.token("alpha", "agent").await;
    let beta = hub.token("beta", "agent").await;
    hub.token("screen", "viewer").await;
    // Config.
    for (path, body) in [
        (
            "/api/config/heartbeat-interval",
            json!({"heartbeat_interval_ms": 123_456}),
        ),
        (
            "/api/config/mailbox-retention",
            json!({"mailbox_ttl_ms": 987_654_321}),
        ),
        (
            "/api/config/default-repo",
            json!({"url": "https://example.com/repo.git"}),
        ),
    ] {
        let r = request_json(&addr, "PUT", path, Some(ADMIN), body).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    // Tasks: one dead-lettered over a websocket agent, one completed, one queued.
    let mut worker = identify(&hub, "worker", json!(["dl"])).await;
    let mut task_ids = Vec::new();
    for (desc, fail) in [("doomed", true), ("done", false)] {
        let r = request_json(
            &addr,
            "POST",
            "/api/tasks",
            Some(ADMIN),
            json!({"description": desc, "needed_capabilities": ["dl"], "max_retries": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        let id = r.json["task_id"].as_str().unwrap().to_string();
        let assign = worker.next_of_type("task_assign").await;
        assert_eq!(assign["task_id"], id.as_str());
        let generation = assign["generation"].clone();
        worker
            .send_json(json!({"type": "task_accepted", "task_id": id}))
            .await;
        worker.next_of_type("task_ack").await;
        if fail {
            worker
                .send_json(json!({"type": "task_failed", "task_id": id, "generation": generation, "error": "boom"}))
                .await;
            assert_eq!(
                worker.next_of_type("task_ack").await["status"],
                "dead_letter"
            );
        } else {
            worker
                .send_json(json!({"type": "task_complete", "task_id": id, "generation": generation, "result": {"ok": true}}))
                .await;
            assert_eq!(worker.next_of_type("task_ack").await["status"], "complete");
        }
        task_ids.push(id);
    }
    let _ = futures_util::SinkExt::close(&mut worker.inner).await;
    drop(worker);
    let r = request_json(
        &addr,
        "POST",
        "/api/tasks",
        Some(&alpha),
        json!({"description": "waits", "needed_capabilities": ["nobody-has-this"], "priority": "low"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    task_ids.push(r.json["task_id"].as_str().unwrap().to_string());
    // Mailbox, history and a thread (reply_to).
    let m1 = dm(&addr, &alpha, "beta", json!({"text": "hello"}), None).await;
    let m2 = dm(&addr, &beta, "alpha", json!({"text": "hi back"}), Some(&m1)).await;
    // Channels, a subscription and channel history (with a mailbox copy for beta).
    create_channel(&addr, &alpha, "ops").await;
    let r = request_json(
        &addr,
        "POST",
        "/api/channels/ops/subscribe",
        Some(&beta),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    publish(&addr, &alpha, "ops", json!({"text": "deploying"})).await;
    publish(&addr, &alpha, "ops", json!({"text": "done"})).await;
    // Threads are indexed in the background: wait until they show.
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            let r = get_ok(&addr, &format!("/api/threads/{m1}/replies"), Some(ADMIN)).await;
            r.to_string().contains(&m2)
        })
        .await,
        "the reply is threaded"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let thread = (m1.clone(), m2.clone());
    let before = observable(&addr, &task_ids, &thread).await;
    assert_eq!(
        before["/api/tasks/dead-letter"]["count"], 1,
        "{}",
        before["/api/tasks/dead-letter"]
    );

    // Back up; every table holds something.
    let b1 = backup_now(&addr).await;
    let id1 = b1["backup_id"].as_str().unwrap().to_string();
    let m1_manifest = manifest(&bdir.path().join(&id1));
    let t1 = manifest_tables(&m1_manifest);
    for t in TABLES.into_iter().filter(|t| *t != "quarantine") {
        assert!(
            t1[t]["record_count"].as_u64().unwrap() > 0,
            "the round trip fills every table but quarantine; {t} is empty"
        );
    }

    // Stop, wipe, restore.
    let status = hub.terminate().await;
    assert!(status.success(), "clean stop: {status:?}");
    let data = hub.data_dir().to_path_buf();
    std::fs::remove_dir_all(data.join("db")).unwrap();
    let out = agentcom(&[
        "restore",
        "--from",
        &id1,
        "--data-dir",
        &s(&data),
        "--backup-dir",
        &s(bdir.path()),
    ])
    .await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains(&id1),
        "restore reports what it restored: {out:?}"
    );
    for t in TABLES {
        assert!(out.stdout.contains(t), "restore reports {t}: {out:?}");
    }

    // Byte-identical tables: an offline backup of the restored store equals the first.
    let bdir2 = tempfile::tempdir().unwrap();
    let out = agentcom(&[
        "backup",
        "create",
        "--data-dir",
        &s(&data),
        "--backup-dir",
        &s(bdir2.path()),
    ])
    .await;
    assert!(out.ok(), "{out:?}");
    let ids2 = backup_ids(bdir2.path());
    assert_eq!(ids2.len(), 1, "{out:?}");
    let dir2 = bdir2.path().join(&ids2[0]);
    let t2 = manifest_tables(&manifest(&dir2));
    for t in TABLES {
        assert_eq!(t1[t]["record_count"], t2[t]["record_count"], "{t}");
        assert_eq!(t1[t]["checksum"], t2[t]["checksum"], "{t}");
        assert_eq!(t1[t]["bytes"], t2[t]["bytes"], "{t}");
        let a = std::fs::read(bdir.path().join(&id1).join(format!("{t}.rec"))).unwrap();
        let b = std::fs::read(dir2.join(format!("{t}.rec"))).unwrap();
        assert!(a == b, "{t}: table files differ");
    }
    let listed = agentcom(&[
        "backup",
        "list",
        "--data-dir",
        &s(&data),
        "--backup-dir",
        &s(bdir2.path()),
    ])
    .await;
    assert!(
        listed.ok() && listed.stdout.contains(&ids2[0]),
        "{listed:?}"
    );

    // The restored hub serves the same data.
    hub.restart().await;
    let after = observable(&hub.addr, &task_ids, &thread).await;
    for (path, v) in &before {
        assert_eq!(&after[path], v, "GET {path} after the round trip");
    }
}

// ---------------------------------------------------------------------------------------
// 6. Verify catches damage
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_damaged_table_and_restore_refuses_damaged_backups() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &["--backup-keep", "10"]).await;
    let alpha = hub.token("alpha", "agent").await;
    for i in 0..5 {
        dm(&hub.addr, &alpha, "beta", json!({ "i": i }), None).await;
    }
    let r = request_json(
        &hub.addr,
        "PUT",
        "/api/config/heartbeat-interval",
        Some(ADMIN),
        json!({"heartbeat_interval_ms": 5000}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request_json(
        &hub.addr,
        "POST",
        "/api/tasks",
        Some(&alpha),
        json!({"description": "t"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let good = backup_now(&hub.addr).await["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let good_dir = bdir.path().join(&good);

    // Four damaged copies, each in the backup directory under a backup name of its own
    // (only directories named like backups are backups).
    let cases: [(&str, &str, &str); 4] = [
        ("damaged-flip", "task_queue", "2001-01-01T00-00-01.000Z"),
        (
            "damaged-truncated",
            "agent_mailbox",
            "2001-01-01T00-00-02.000Z",
        ),
        (
            "damaged-missing",
            "message_history",
            "2001-01-01T00-00-03.000Z",
        ),
        (
            "damaged-manifest",
            "agentcom_config",
            "2001-01-01T00-00-04.000Z",
        ),
    ];
    for (kind, table, name) in cases {
        let dir = bdir.path().join(name);
        copy_dir(&good_dir, &dir);
        let file = dir.join(format!("{table}.rec"));
        match kind {
            "damaged-flip" => {
                let mut bytes = std::fs::read(&file).unwrap();
                let mid = bytes.len() - 3;
                bytes[mid] ^= 0x5a;
                std::fs::write(&file, bytes).unwrap();
            }
            "damaged-truncated" => {
                let bytes = std::fs::read(&file).unwrap();
                std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
            }
            "damaged-missing" => std::fs::remove_file(&file).unwrap(),
            _ => {
                let mut m = manifest(&dir);
                for t in m["tables"].as_array_mut().unwrap() {
                    if t["table"] == table {
                        let n = t["record_count"].as_u64().unwrap();
                        t["record_count"] = (n + 1).into();
                    }
                }
                std::fs::write(
                    dir.join("manifest.json"),
                    serde_json::to_vec_pretty(&m).unwrap(),
                )
                .unwrap();
            }
        }
    }

    // A data directory with a store of its own, to prove a refused restore leaves it be.
    let target = tempfile::tempdir().unwrap();
    let out = agentcom(&[
        "token",
        "create",
        "--agent-id",
        "keeper",
        "--data-dir",
        &s(target.path()),
    ])
    .await;
    assert!(out.ok(), "{out:?}");
    let listing = dir_listing(target.path());

    // The good backup verifies everywhere.
    let r = hub
        .request(
            "POST",
            &format!("/api/admin/backups/{good}/verify"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["verified"], true, "{r:?}");
    assert_eq!(r.json["problems"], json!([]), "{r:?}");
    let out = agentcom(&["backup", "verify", &s(&good_dir)]).await;
    assert!(out.ok(), "{out:?}");

    for (_, table, name) in cases {
        let r = hub
            .request(
                "POST",
                &format!("/api/admin/backups/{name}/verify"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_eq!(r.json["verified"], false, "{name}: {r:?}");
        let named: Vec<&str> = r.json["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["table"].as_str())
            .collect();
        assert_eq!(named, vec![table], "{name}: {r:?}");

        let out = agentcom(&["backup", "verify", name, "--backup-dir", &s(bdir.path())]).await;
        assert!(!out.ok(), "{name}: verify must fail: {out:?}");
        assert!(out.text().contains(table), "{name}: names {table}: {out:?}");

        let out = agentcom(&[
            "restore",
            "--from",
            &s(&bdir.path().join(name)),
            "--data-dir",
            &s(target.path()),
        ])
        .await;
        assert!(!out.ok(), "{name}: restore must refuse: {out:?}");
        assert!(out.text().contains(table), "{name}: says why: {out:?}");
        assert_eq!(
            dir_listing(target.path()),
            listing,
            "{name}: data dir untouched"
        );
    }
    let out = agentcom(&["token", "list", "--data-dir", &s(target.path())]).await;
    assert!(
        out.ok() && out.stdout.contains("keeper"),
        "the store is intact: {out:?}"
    );
    // The damaged copies did not disturb the good backup.
    let r = hub
        .request(
            "POST",
            &format!("/api/admin/backups/{good}/verify"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.json["verified"], true, "{r:?}");
}

// ---------------------------------------------------------------------------------------
// 7. The schedule survives restarts (F2)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_and_next_backup_survive_a_restart() {
    let bdir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_backups(bdir.path(), &[]).await;
    let b = backup_now(&hub.addr).await;
    let created_at = b["created_at"].as_u64().unwrap();
    hub.restart().await;
    let h = health(&hub.addr).await;
    assert_eq!(h["last_backup_at"], created_at, "{h}");
    assert_eq!(h["next_backup_at"], created_at + HOUR_MS, "{h}");
    assert_eq!(h["stale_backup"], false, "{h}");
    assert_eq!(h["health_status"], "healthy", "{h}");
    let last = &h["last_backup_result"];
    assert_eq!(
        last["backup_id"], b["backup_id"],
        "the last run is remembered: {h}"
    );
    assert_eq!(
        (last["status"].clone(), last["verified"].clone()),
        (json!("ok"), json!(true)),
        "{h}"
    );
    // A clean stop and start too.
    hub.terminate().await;
    hub.restart().await;
    let h = health(&hub.addr).await;
    assert_eq!(h["last_backup_at"], created_at, "{h}");
    assert_eq!(h["next_backup_at"], created_at + HOUR_MS, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_backup_runs_promptly_after_start() {
    // The brief's case: an offline backup older than the 2 s interval.
    let data = tempfile::tempdir().unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let out = agentcom(&[
        "backup",
        "create",
        "--data-dir",
        &s(data.path()),
        "--backup-dir",
        &s(bdir.path()),
    ])
    .await;
    assert!(out.ok(), "{out:?}");
    let old = backup_ids(bdir.path());
    assert_eq!(old.len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let hub = Served::start(
        data.path(),
        &[
            "--backup-interval",
            "2s",
            "--backup-keep",
            "10",
            "--backup-dir",
            &s(bdir.path()),
        ],
    )
    .await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            backup_ids(bdir.path()).len() >= 2
        })
        .await,
        "a new backup within 5 s of start"
    );
    println!(
        "overdue backup appeared {:?} after start",
        started.elapsed()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_counts_from_the_newest_backup_not_from_start() {
    // A backup that says it was made an hour ago, and a 10-minute interval: the next run
    // is 50 minutes overdue, so it must happen at once, not 10 minutes after start.
    let data = tempfile::tempdir().unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let out = agentcom(&[
        "backup",
        "create",
        "--data-dir",
        &s(data.path()),
        "--backup-dir",
        &s(bdir.path()),
    ])
    .await;
    assert!(out.ok(), "{out:?}");
    let old = backup_ids(bdir.path());
    let dir = bdir.path().join(&old[0]);
    let mut m = manifest(&dir);
    let an_hour_ago = now_ms() - HOUR_MS;
    m["created_at"] = an_hour_ago.into();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();

    let started = Instant::now();
    let hub = Served::start(
        data.path(),
        &[
            "--backup-interval",
            "10m",
            "--backup-keep",
            "10",
            "--backup-dir",
            &s(bdir.path()),
        ],
    )
    .await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            backup_ids(bdir.path()).len() >= 2
        })
        .await,
        "the overdue backup runs within 5 s of start"
    );
    println!(
        "overdue backup appeared {:?} after start",
        started.elapsed()
    );
    // Then the next one is due an interval after it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let h = loop {
        let h = health(&hub.addr).await;
        if h["last_backup_at"]
            .as_u64()
            .is_some_and(|t| t > an_hour_ago)
        {
            break h;
        }
        assert!(Instant::now() < deadline, "health sees the new backup: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = h["last_backup_at"].as_u64().unwrap();
    assert_eq!(h["next_backup_at"], last + 600_000, "{h}");
    assert_eq!(backup_ids(bdir.path()).len(), 2, "exactly one catch-up run");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------
// 8. Restore: refuses while a hub holds the directory, keeps the replaced db
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_held_directory_and_keeps_the_replaced_db_aside() {
    let bdir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_backups(bdir.path(), &[]).await;
    let put = |v: u64| {
        let addr = hub.addr.clone();
        async move {
            let r = request_json(
                &addr,
                "PUT",
                "/api/config/heartbeat-interval",
                Some(ADMIN),
                json!({ "heartbeat_interval_ms": v }),
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    };
    put(111_111).await;
    let b = backup_now(&hub.addr).await;
    let id = b["backup_id"].as_str().unwrap().to_string();
    put(222_222).await; // after the backup: the restore must undo it
    let data = hub.data_dir().to_path_buf();
    let restore_args = |id: &str| {
        vec![
            "restore".to_string(),
            "--from".into(),
            id.to_string(),
            "--data-dir".into(),
            s(&data),
            "--backup-dir".into(),
            s(bdir.path()),
        ]
    };
    let args = restore_args(&id);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();

    let listing = dir_listing(&data);
    let out = agentcom(&argv).await;
    assert!(!out.ok(), "restore must refuse while the hub runs: {out:?}");
    assert!(
        out.stderr.contains("in use"),
        "says the directory is in use: {out:?}"
    );
    assert_eq!(dir_listing(&data), listing, "nothing moved");
    let v = get_ok(&hub.addr, "/api/config/heartbeat-interval", Some(ADMIN)).await;
    assert_eq!(
        v["heartbeat_interval_ms"], 222_222,
        "the running hub is unharmed"
    );

    hub.terminate().await;
    let out = agentcom(&argv).await;
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");
    let m = manifest_tables(&manifest(&bdir.path().join(&id)));
    for t in TABLES {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_else(|| panic!("restore reports {t}: {out:?}"));
        assert!(
            line.contains(&m[t]["record_count"].to_string()),
            "{t}: {line} vs manifest {}",
            m[t]
        );
    }
    let aside: Vec<String> = dir_listing(&data)
        .into_iter()
        .filter(|n| n.starts_with("db.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", dir_listing(&data));
    assert!(
        out.stdout.contains(&aside[0]),
        "says where the old db went: {out:?}"
    );
    assert!(
        std::fs::read_dir(data.join(&aside[0])).unwrap().count() > 0,
        "the replaced db is kept, not emptied"
    );
    assert!(data.join("db").is_dir());

    hub.restart().await;
    let v = get_ok(&hub.addr, "/api/config/heartbeat-interval", Some(ADMIN)).await;
    assert_eq!(
        v["heartbeat_interval_ms"], 111_111,
        "the backup's state is back"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Start-up integrity
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_serve_with_the_exact_restore_command() {
    let bdir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_backups(bdir.path(), &[]).await;
    let r = request_json(
        &hub.addr,
        "PUT",
        "/api/config/default-repo",
        Some(ADMIN),
        json!({"url": "https://example.com/kept.git"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    backup_now(&hub.addr).await;
    let newest = backup_now(&hub.addr).await["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    hub.terminate().await;
    let data = hub.data_dir().to_path_buf();

    // Damage the store so that it no longer opens.
    let garbage: Vec<u8> = (0..256u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(data.join("db").join("conf"), garbage).unwrap();

    let child = tokio::process::Command::new(common::binary())
        .args(["serve", "--bind", "127.0.0.1:0", "--admin-token", ADMIN])
        .arg("--data-dir")
        .arg(&data)
        .arg("--backup-dir")
        .arg(bdir.path())
        .env("AGENTCOM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("serve exits instead of serving a damaged store")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "serve fails: {stderr}");
    assert!(
        stderr.contains(&newest),
        "names the newest verified backup: {stderr}"
    );
    let command = format!(
        "agentcom restore --from {} --data-dir {}",
        bdir.path().join(&newest).display(),
        data.display()
    );
    assert!(stderr.contains(&command), "gives `{command}`: {stderr}");

    // Running that command lets the hub start, with the data back.
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("agentcom restore"))
        .unwrap();
    let argv: Vec<&str> = line.split_whitespace().skip(1).collect();
    let out = agentcom(&argv).await;
    assert!(out.ok(), "{out:?}");
    hub.restart().await;
    let v = get_ok(&hub.addr, "/api/config/default-repo", None).await;
    assert_eq!(v["default_repo"], "https://example.com/kept.git", "{v}");
}

// ---------------------------------------------------------------------------------------
// 10. Dashboard events
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_receives_backup_started_and_backup_complete() {
    let bdir = tempfile::tempdir().unwrap();
    let hub = hub_with_backups(bdir.path(), &[]).await;
    let mut ws = hub
        .ws("/ws/dashboard", Some(ADMIN))
        .await
        .expect("dashboard");
    // The session is subscribed once the hub counts it.
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            hub.get("/api/admin/actors", Some(ADMIN)).await.json["sessions"]["dashboard"] == 1
        })
        .await
    );

    let b = backup_now(&hub.addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &Value| e["type"] == "backup_complete")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "backup events arrive in time; got {events:?}"
        );
        match ws.next(left).await {
            Frame::Json(v) if v["type"] == "events" => {
                events.extend(v["data"].as_array().expect("events data").iter().cloned())
            }
            Frame::Json(_) => {}
            Frame::Closed(code) => panic!("dashboard closed ({code:?}) after a backup"),
        }
    }
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let started = types.iter().position(|t| *t == "backup_started");
    let complete = types.iter().position(|t| *t == "backup_complete").unwrap();
    assert!(
        started.is_some_and(|s| s < complete),
        "backup_started comes before backup_complete: {types:?}"
    );
    let c = &events[complete];
    assert_eq!(c["backup_id"], b["backup_id"], "{c}");
    assert_eq!(c["verified"], true, "{c}");
    assert!(c["duration_ms"].is_u64(), "{c}");
    assert!(c["timestamp"].is_u64(), "{c}");
    let tables: Vec<&str> = c["tables_backed_up"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tables, TABLES, "{c}");
    assert!(events[started.unwrap()]["timestamp"].is_u64());
}
