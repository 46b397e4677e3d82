//! Corruption drill (black-box, the real binary): write data, take a verified backup, write
//! more, stop the hub, damage the store's files, start `agentcom serve` again.
//!
//! Every case must end in one of two ways, and never in a hub that serves fewer or altered
//! records:
//! - **refused**: `serve` exits non-zero, naming the newest verified backup and the exact
//!   `agentcom restore …` command; running that command and starting the hub again serves
//!   the backed-up data;
//! - **intact** (only for damage documented as safe in docs/OPERATIONS.md, which sled
//!   repairs on its own): the hub starts and serves every acknowledged record.
//!
//! Each case is its own test so that they run in parallel. sled 0.34.7 alone opens the
//! tail-damage cases (a flipped byte or truncation in the log written since its last
//! start, a damaged segment header, a damaged or missing blob file) without the lost
//! writes, and panics on others; the store's integrity checks turn these into refusals.
//!
//! Where the last writes are depends on how the hub stopped: a clean stop checkpoints the
//! store, so sled's log holds them (the cases damaging the log stop it so); after a
//! `kill -9` they are in the store's journal, which the cases damaging the journal use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{request_json, serve, Served, Started, ADMIN};
use serde_json::json;

/// sled 0.34.7's log segment size (its default, which the store keeps).
const SEGMENT: usize = 512 * 1024;
/// Messages published before the backup (phase A) and after it (phase B).
const PHASE_LEN: usize = 20;
/// The phase-B message large enough for sled to keep its page in a blob file.
const BIG_AT: usize = 10;

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// The text that identifies a published message, found verbatim in sled's log.
fn marker(phase: char, i: usize) -> String {
    format!("drill-{phase}-{i:04}-")
}

fn payload_text(phase: char, i: usize) -> String {
    if phase == 'B' && i == BIG_AT {
        format!("{}{}", marker(phase, i), "B".repeat(300 * 1024))
    } else {
        format!("{}{}", marker(phase, i), "p".repeat(200))
    }
}

// ---------------------------------------------------------------------------------------
// Starting the hub, or watching it refuse
// ---------------------------------------------------------------------------------------

async fn must_serve(data: &Path) -> Served {
    match serve(data).await {
        Started::Serving(s) => s,
        Started::Refused { code, stderr } => {
            panic!("the hub refused to start ({code:?}):\n{stderr}")
        }
    }
}

async fn publish(addr: &str, token: &str, phase: char, i: usize) {
    let r = request_json(
        addr,
        "POST",
        "/api/channels/drill/publish",
        Some(token),
        json!({"payload": {"text": payload_text(phase, i)}}),
    )
    .await;
    assert_eq!(r.status, 200, "publish {phase}{i}: {r:?}");
}

/// The payload texts of the channel's whole history, in order.
async fn history(addr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut since = 0u64;
    loop {
        let path = format!("/api/channels/drill/history?since={since}&limit=200");
        let r = common::request(addr, "GET", &path, Some(ADMIN), None).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        let msgs = r.json["messages"].as_array().expect("messages").clone();
        let Some(last) = msgs.last() else {
            return out;
        };
        since = last["seq"].as_u64().expect("seq");
        out.extend(msgs.iter().map(|m| {
            m["message"]["payload"]["text"]
                .as_str()
                .expect("payload text")
                .to_string()
        }));
    }
}

fn expected(phases: &[char]) -> Vec<String> {
    phases
        .iter()
        .flat_map(|&p| (0..PHASE_LEN).map(move |i| payload_text(p, i)))
        .collect()
}

/// Compare without printing 300 KiB payloads.
fn assert_history(got: &[String], want: &[String], what: &str) {
    let short = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|t| format!("{}…({} bytes)", &t[..t.len().min(14)], t.len()))
            .collect()
    };
    assert!(
        got == want,
        "{what}:\n got  {:?}\n want {:?}",
        short(got),
        short(want)
    );
}

// ---------------------------------------------------------------------------------------
// The drill
// ---------------------------------------------------------------------------------------

/// A data directory holding phase A (backed up) and phase B (acknowledged after the
/// backup, in a second run of the hub, so that it lies in the log after sled's snapshot).
struct Prepared {
    data: tempfile::TempDir,
    backup_id: String,
}

async fn prepare(stop_with_kill9: bool) -> Prepared {
    let data = tempfile::tempdir().unwrap();
    let hub = must_serve(data.path()).await;
    let r = request_json(
        &hub.addr,
        "POST",
        "/admin/tokens",
        Some(ADMIN),
        json!({"agent_id": "driller", "role": "agent"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let token = r.json["token"].as_str().unwrap().to_string();
    let r = request_json(
        &hub.addr,
        "POST",
        "/api/channels",
        Some(&token),
        json!({"name": "drill"}),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    for i in 0..PHASE_LEN {
        publish(&hub.addr, &token, 'A', i).await;
    }
    let r = common::request(&hub.addr, "POST", "/api/admin/backup", Some(ADMIN), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["verified"], true, "{r:?}");
    let backup_id = r.json["backup_id"].as_str().unwrap().to_string();
    hub.kill9().await;

    let hub = must_serve(data.path()).await;
    for i in 0..PHASE_LEN {
        publish(&hub.addr, &token, 'B', i).await;
    }
    assert_history(
        &history(&hub.addr).await,
        &expected(&['A', 'B']),
        "before the damage",
    );
    if stop_with_kill9 {
        hub.kill9().await;
    } else {
        hub.terminate().await;
    }
    Prepared { data, backup_id }
}

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Refused,
    Intact,
}

async fn drill(stop_with_kill9: bool, expect: Expect, damage: impl FnOnce(&Path)) {
    let prepared = prepare(stop_with_kill9).await;
    let data = prepared.data.path();
    let db = data.join("db");
    damage(&db);

    match serve(data).await {
        Started::Serving(hub) => {
            let served = history(&hub.addr).await;
            hub.kill9().await;
            assert_history(
                &served,
                &expected(&['A', 'B']),
                "the hub started on the damaged store: it must serve every acknowledged record",
            );
            assert_eq!(
                expect,
                Expect::Intact,
                "the hub started (with every record) where a refusal was expected"
            );
        }
        Started::Refused { code, stderr } => {
            assert_eq!(
                expect,
                Expect::Refused,
                "refused where sled repairs the damage: {stderr}"
            );
            assert_eq!(code, Some(1), "{stderr}");
            assert!(
                !stderr.contains("thread '") && !stderr.contains("RUST_BACKTRACE"),
                "no raw panic: {stderr}"
            );
            let backup = data.join("backups").join(&prepared.backup_id);
            assert!(
                stderr.contains(&format!(
                    "The newest verified backup is {}",
                    prepared.backup_id
                )),
                "names the newest verified backup: {stderr}"
            );
            let command = format!(
                "agentcom restore --from {} --data-dir {}",
                s(&backup),
                s(data)
            );
            let line = stderr
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("agentcom restore "))
                .unwrap_or_else(|| panic!("no restore command in: {stderr}"));
            assert_eq!(line, command, "{stderr}");

            // Follow the message to the letter.
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            let out = tokio::process::Command::new(common::binary())
                .args(&args)
                .env("AGENTCOM_LOG", "warn")
                .env_remove("AGENTCOM_DATA_DIR")
                .env_remove("AGENTCOM_BACKUP_DIR")
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run restore");
            assert!(
                out.status.success(),
                "restore: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let hub = must_serve(data).await;
            assert_history(
                &history(&hub.addr).await,
                &expected(&['A']),
                "after the restore the hub serves the backed-up data",
            );
            hub.terminate().await;
            // And keeps doing so across a restart.
            let hub = must_serve(data).await;
            assert_history(
                &history(&hub.addr).await,
                &expected(&['A']),
                "restored data after a restart",
            );
            hub.kill9().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Damage
// ---------------------------------------------------------------------------------------

fn offsets(file: &Path, needle: &str) -> Vec<usize> {
    let bytes = std::fs::read(file).unwrap();
    let needle = needle.as_bytes();
    let found: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!found.is_empty(), "{} holds {needle:?}", file.display());
    found
}

fn flip(file: &Path, at: &[usize]) {
    let mut bytes = std::fs::read(file).unwrap();
    for &i in at {
        bytes[i] ^= 0x55;
    }
    std::fs::write(file, bytes).unwrap();
}

fn truncate(file: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(len).unwrap();
}

fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    assert!(!found.is_empty(), "{} has {prefix}*", dir.display());
    found
}

fn snapshots(db: &Path) -> Vec<PathBuf> {
    entries(db, "snap.")
}

fn blobs(db: &Path) -> Vec<PathBuf> {
    entries(&db.join("blobs"), "")
}

fn replace_with_dir(path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir(path).unwrap();
}

/// The last acknowledged record, found in the log (every copy sled wrote of it).
fn last_record(db: &Path) -> Vec<usize> {
    offsets(&db.join("db"), &marker('B', PHASE_LEN - 1))
}

/// The store's journal, and the offsets of the last acknowledged record in it.
fn last_journaled(db: &Path) -> (PathBuf, Vec<usize>) {
    let journal = db.join("journal");
    let at = offsets(&journal, &marker('B', PHASE_LEN - 1));
    (journal, at)
}

// ---------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------

/// The log cut just before the last acknowledged write: sled alone opens without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_truncated_before_the_last_write_is_refused() {
    drill(false, Expect::Refused, |db| {
        let at = *last_record(db).iter().min().unwrap();
        truncate(&db.join("db"), at as u64);
    })
    .await;
}

/// The log cut half-way through what was written of it (older records included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_truncated_mid_way_is_refused() {
    drill(false, Expect::Refused, |db| {
        let end = *last_record(db).iter().max().unwrap();
        truncate(&db.join("db"), end as u64 / 2);
    })
    .await;
}

/// The log file is a whole segment, written from its start: what lies past the last
/// message is never read (sled fills it with a marker and stops there), so damage there,
/// or a cut there, changes nothing; the full scan at open confirms every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_past_the_written_log_changes_nothing() {
    drill(false, Expect::Intact, |db| {
        let log = db.join("db");
        let len = std::fs::metadata(&log).unwrap().len() as usize;
        let end = *last_record(db).iter().max().unwrap();
        assert!(end + 64 * 1024 < len - 4096, "the log has unwritten space");
        flip(&log, &(len - 4096..len - 4032).collect::<Vec<_>>());
        truncate(&log, (len - 1024) as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_truncated_to_its_first_segment_header_is_refused() {
    drill(true, Expect::Refused, |db| truncate(&db.join("db"), 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_log_is_refused() {
    drill(false, Expect::Refused, |db| truncate(&db.join("db"), 0)).await;
}

/// A flipped byte inside the value of the last acknowledged write: sled's CRC catches the
/// message, but its recovery takes it for a torn tail and drops it and all that follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_recent_value_is_refused() {
    drill(false, Expect::Refused, |db| {
        let at: Vec<usize> = last_record(db).iter().map(|i| i + 8).collect();
        flip(&db.join("db"), &at);
    })
    .await;
}

/// The same in the middle of the log's recent part (a record of phase B's middle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_middle_of_the_recent_log_is_refused() {
    drill(false, Expect::Refused, |db| {
        let log = db.join("db");
        let at: Vec<usize> = offsets(&log, &marker('B', PHASE_LEN / 2 + 1))
            .iter()
            .map(|i| i + 3)
            .collect();
        flip(&log, &at);
    })
    .await;
}

/// A flipped byte in a record written before sled's last start (covered by its snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_an_older_value_is_refused() {
    drill(true, Expect::Refused, |db| {
        let log = db.join("db");
        let at: Vec<usize> = offsets(&log, &marker('A', 3))
            .iter()
            .map(|i| i + 8)
            .collect();
        flip(&log, &at);
    })
    .await;
}

/// A flipped byte inside the last acknowledged write's journal record (after a `kill -9`,
/// the only copy): the record fails its checksum and reads as a torn tail, and the
/// watermark shows that an acknowledged write went with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_journal_is_refused() {
    drill(true, Expect::Refused, |db| {
        let (journal, at) = last_journaled(db);
        flip(&journal, &at.iter().map(|i| i + 8).collect::<Vec<_>>());
    })
    .await;
}

/// The journal cut just before the last acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_truncated_before_the_last_write_is_refused() {
    drill(true, Expect::Refused, |db| {
        let (journal, at) = last_journaled(db);
        truncate(&journal, *at.iter().min().unwrap() as u64);
    })
    .await;
}

/// Without its journal, the store lacks the writes made since its last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_journal_is_refused() {
    drill(true, Expect::Refused, |db| {
        std::fs::remove_file(db.join("journal")).unwrap();
    })
    .await;
}

/// sled metadata: the header of every log segment that holds the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_segment_header_is_refused() {
    drill(false, Expect::Refused, |db| {
        let mut heads: Vec<usize> = last_record(db)
            .iter()
            .map(|i| i / SEGMENT * SEGMENT + 6)
            .collect();
        heads.dedup();
        flip(&db.join("db"), &heads);
    })
    .await;
}

/// sled writes `conf` again with the parameters the store was created with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_conf_is_rewritten_with_every_record_intact() {
    drill(true, Expect::Intact, |db| {
        std::fs::remove_file(db.join("conf")).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_conf_is_rewritten_with_every_record_intact() {
    drill(false, Expect::Intact, |db| truncate(&db.join("conf"), 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_conf_is_refused() {
    drill(true, Expect::Refused, |db| {
        std::fs::write(
            db.join("conf"),
            b"segment_size: 8388608\nuse_compression: false\nversion: 0.34\n\0\0\0\0",
        )
        .unwrap()
    })
    .await;
}

/// sled rebuilds its snapshot from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_snapshot_is_rebuilt_with_every_record_intact() {
    drill(false, Expect::Intact, |db| {
        for snap in snapshots(db) {
            std::fs::remove_file(snap).unwrap();
        }
    })
    .await;
}

/// A crash while sled writes a snapshot (at start-up) leaves `snap.<lsn>.generating`,
/// half-written; sled 0.34.7 would read it and refuse the store. The store removes it
/// first: sled starts from the previous snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_snapshot_left_by_a_crash_is_discarded() {
    drill(true, Expect::Intact, |db| {
        let snap = snapshots(db).pop().unwrap();
        let bytes = std::fs::read(&snap).unwrap();
        std::fs::write(
            db.join("snap.7FFFFFFFFFFFFFFF.generating"),
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_snapshot_is_refused() {
    drill(true, Expect::Refused, |db| {
        for snap in snapshots(db) {
            truncate(&snap, 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_snapshot_is_refused() {
    drill(false, Expect::Refused, |db| {
        for snap in snapshots(db) {
            let len = std::fs::metadata(&snap).unwrap().len() as usize;
            flip(&snap, &[len / 2]);
        }
    })
    .await;
}

/// sled's recovery takes an unreadable blob for a torn tail, like a damaged log message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_blob_is_refused() {
    drill(true, Expect::Refused, |db| {
        for blob in blobs(db) {
            flip(&blob, &[1000]);
        }
    })
    .await;
}

/// sled skips a log message whose blob file is gone, dropping the page it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blob_is_refused() {
    drill(false, Expect::Refused, |db| {
        for blob in blobs(db) {
            std::fs::remove_file(blob).unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_blob_is_refused() {
    drill(true, Expect::Refused, |db| {
        for blob in blobs(db) {
            truncate(&blob, 0);
        }
    })
    .await;
}

/// Unreadable files. Tests run as root, for whom `chmod 000` does not stop reads: each
/// file is replaced by a directory, which every read of it fails on (EISDIR), as a file
/// on a failing disk would fail with EIO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_log_is_refused() {
    drill(false, Expect::Refused, |db| {
        replace_with_dir(&db.join("db"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_snapshot_is_refused() {
    drill(true, Expect::Refused, |db| {
        for snap in snapshots(db) {
            replace_with_dir(&snap);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_blob_is_refused() {
    drill(false, Expect::Refused, |db| {
        for blob in blobs(db) {
            replace_with_dir(&blob);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_conf_is_refused() {
    drill(true, Expect::Refused, |db| {
        replace_with_dir(&db.join("conf"))
    })
    .await;
}

/// The store's own commit watermark, damaged: the check cannot be made, so the hub refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_watermark_is_refused() {
    drill(false, Expect::Refused, |db| {
        flip(&db.join("agentcom.watermark"), &[7])
    })
    .await;
}

/// The offline commands take the same way: they refuse with the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_refuse_a_damaged_store_with_the_restore_command() {
    let prepared = prepare(false).await;
    let data = prepared.data.path();
    let db = data.join("db");
    let at: Vec<usize> = last_record(&db).iter().map(|i| i + 8).collect();
    flip(&db.join("db"), &at);
    let out = tokio::process::Command::new(common::binary())
        .args(["token", "list", "--data-dir", &s(data)])
        .env_remove("AGENTCOM_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run token list");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let backup = data.join("backups").join(&prepared.backup_id);
    assert!(
        stderr.contains(&format!(
            "agentcom restore --from {} --data-dir {}",
            s(&backup),
            s(data)
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("acknowledged writes are missing"),
        "{stderr}"
    );
}

/// An unreadable file is refused before sled opens the store (sled's recovery would take
/// an unreadable blob for the end of the log and discard everything after it): once the
/// file is readable again, the hub starts with every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_blob_made_readable_again_loses_nothing() {
    let prepared = prepare(true).await;
    let data = prepared.data.path();
    let db = data.join("db");
    let kept = data.join("kept-blobs");
    std::fs::create_dir(&kept).unwrap();
    let moved: Vec<(PathBuf, PathBuf)> = blobs(&db)
        .into_iter()
        .map(|blob| (blob.clone(), kept.join(blob.file_name().unwrap())))
        .collect();
    for (blob, aside) in &moved {
        std::fs::rename(blob, aside).unwrap();
        std::fs::create_dir(blob).unwrap();
    }
    match serve(data).await {
        Started::Serving(hub) => {
            hub.kill9().await;
            panic!("the hub started with unreadable blob files");
        }
        Started::Refused { code, stderr } => {
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stderr.contains("make it readable"), "{stderr}");
            assert!(stderr.contains("agentcom restore --from "), "{stderr}");
        }
    }
    for (blob, aside) in &moved {
        std::fs::remove_dir(blob).unwrap();
        std::fs::rename(aside, blob).unwrap();
    }
    let hub = must_serve(data).await;
    assert_history(
        &history(&hub.addr).await,
        &expected(&['A', 'B']),
        "every record, once the files are readable again",
    );
    hub.kill9().await;
}
