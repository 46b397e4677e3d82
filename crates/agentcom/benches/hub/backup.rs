//! Live backup against `cp -r`, through the real binary: the store is filled over HTTP
//! with direct messages to an offline agent (each 64 KiB of payload, kept in its mailbox
//! and the history; the hub runs without a mailbox quota and with a large history), the idle
//! data directory is copied with `cp -r` (the baseline), then eight writers keep
//! acknowledged config writes going (`PUT /api/config/default-repo`, each waiting for its
//! answer) while `POST /api/admin/backup` makes and verifies a backup. Figures: the
//! backup's duration over `cp -r`'s (target ≤ 1.0x) and the longest write
//! acknowledgement during it (target ≤ 50 ms), beside the longest one in the two seconds
//! before.
//!
//! BACKUP_MIB (payload sent, default 64; the issue asks for ≥ 1 GiB of live data, about
//! BACKUP_MIB=512), BACKUP_PAYLOAD_KIB (per message, default 64). sled keeps a page
//! larger than about 128 KiB in a blob file of its own, so many of these do.
//!
//! A second baseline is reported beside `cp -r`: `cp -r` and then an fsync of every file
//! of the copy, since the backup syncs what it writes and `cp -r` does not.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::client::Client;
use crate::support::start_hub_with;
use crate::{quantile, round2, Mode};

const TARGET_OF_CP: f64 = 1.0;
const TARGET_STALL_MS: f64 = 50.0;

pub async fn run(mode: Mode) -> Value {
    let mib = mode.size("BACKUP_MIB", 64, 8);
    let payload = mode.size("BACKUP_PAYLOAD_KIB", 64, 64) * 1024;
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let (_hub, addr) = start_hub_with(
        &data,
        &["--mailbox-quota", "0", "--history-max-bytes", "64GiB"],
    )
    .await;

    let t = Instant::now();
    fill(&addr, mib * 1024 * 1024 / payload, payload).await;
    let fill_s = t.elapsed().as_secs_f64();

    // Baseline: `cp -r` of the data directory while the hub is idle. sled goes on
    // collecting segments and blob files for a while after the fill: wait until the
    // directory stops changing, and copy again should a file vanish under `cp`.
    settle(&data).await;
    let store_mib = dir_size(&data) >> 20;
    let copy = work.path().join("copy");
    let mut cp_attempts = 0;
    let t = loop {
        cp_attempts += 1;
        let t = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(&data)
            .arg(&copy)
            .status()
            .expect("cp");
        if status.success() {
            break t;
        }
        assert!(cp_attempts < 5, "cp -r failed {cp_attempts} times");
        std::fs::remove_dir_all(&copy).ok();
    };
    let cp = t.elapsed().as_secs_f64();
    // A backup syncs what it writes; `cp -r` leaves its copy in the page cache.
    let t = Instant::now();
    sync_tree(&copy);
    let cp_synced = cp + t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&copy).expect("remove the copy");

    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicBool::new(false));
    // Every acknowledgement's time (ms), before and during the backup.
    let acks: Arc<Mutex<(Vec<f64>, Vec<f64>)>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (addr, stop, during, acks) = (addr.clone(), stop.clone(), during.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = format!("{{\"url\":\"https://git.example/{w}/{i}\"}}");
                let t = Instant::now();
                let (status, _) = client
                    .request("PUT", "/api/config/default-repo", Some(Bytes::from(body)))
                    .await
                    .expect("config write");
                assert_eq!(status, 200, "config write");
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let mut acks = acks.lock().unwrap();
                if during.load(Ordering::Relaxed) {
                    acks.1.push(ms);
                } else {
                    acks.0.push(ms);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    during.store(true, Ordering::Relaxed);
    let mut admin = Client::connect(&addr).await;
    let t = Instant::now();
    let (status, run) = admin.send("POST", "/api/admin/backup", None).await;
    let backup = t.elapsed().as_secs_f64();
    during.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(status, 200, "backup: {run}");
    let (mut before, mut during) = std::mem::take(&mut *acks.lock().unwrap());
    let stall_ms = quantile(&mut during, 1.0);
    let backup_mib = dir_size(&data.join("backups")) >> 20;
    json!({
        "scenario": "backup",
        "payload_mib": mib,
        "message_kib": payload / 1024,
        "fill_seconds": round2(fill_s),
        "store_on_disk_mib": store_mib,
        "backup_mib": backup_mib,
        "backup_seconds": round2(backup),
        "backup_verified": run["verified"],
        "baseline": {"what": "cp -r of the idle data directory", "seconds": round2(cp), "attempts": cp_attempts},
        "ratio": round2(backup / cp),
        "cp_then_fsync": {"what": "cp -r, then fsync of every file and directory of the copy", "seconds": round2(cp_synced), "ratio": round2(backup / cp_synced)},
        "writes_during_backup": during.len(),
        "write_ms_before": {"p50": round2(quantile(&mut before, 0.5)), "p99": round2(quantile(&mut before, 0.99)), "max": round2(quantile(&mut before, 1.0))},
        "write_ms_during": {"p50": round2(quantile(&mut during, 0.5)), "p99": round2(quantile(&mut during, 0.99)), "max": round2(stall_ms)},
        "blob_files": std::fs::read_dir(data.join("db").join("blobs")).map_or(0, |d| d.count()),
        "target": {"of_cp": TARGET_OF_CP, "longest_write_ms": TARGET_STALL_MS},
        "met": backup / cp <= TARGET_OF_CP && stall_ms <= TARGET_STALL_MS,
    })
}

/// Send `messages` direct messages of `payload` bytes to an offline agent, over 4
/// connections.
async fn fill(addr: &str, messages: usize, payload: usize) {
    let body = Bytes::from(json!({"to": "sink-0", "payload": "m".repeat(payload)}).to_string());
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (addr, next) = (addr.to_string(), next.clone());
        let body = body.clone();
        senders.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let (status, answer) = client
                    .request("POST", "/api/message", Some(body.clone()))
                    .await
                    .expect("message");
                assert_eq!(status, 200, "message: {}", String::from_utf8_lossy(&answer));
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
}

/// fsync every file and directory under `path`.
fn sync_tree(path: &std::path::Path) {
    for entry in std::fs::read_dir(path).expect("read the copy") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_dir() {
            sync_tree(&entry.path());
        } else {
            std::fs::File::open(entry.path())
                .and_then(|f| f.sync_all())
                .expect("fsync a copied file");
        }
    }
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .expect("fsync a copied directory");
}

/// Wait (at most 30 s) until the size and number of files under `path` stay the same
/// for a second.
async fn settle(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (dir_size(path), file_count(path));
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (dir_size(path), file_count(path));
        if now == last {
            return;
        }
        last = now;
    }
}

fn file_count(path: &std::path::Path) -> usize {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => file_count(&e.path()),
                _ => 1,
            })
            .sum()
    })
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
