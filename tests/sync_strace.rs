//! An acknowledgement means the write is on stable storage: the real binary runs under
//! `strace`, and every acknowledged write must be answered only after an `fsync` or
//! `fdatasync` of the store's log that began after the request arrived (sled's own flush,
//! `sync_file_range`, does not count: it neither flushes the disk cache nor the metadata).
//!
//! Needs `strace` (the test command installs it); without it the test fails.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestHub, ADMIN};
use serde_json::json;

const WRITES: usize = 20;

/// A sync of the store's log seen in the trace: the lines where it began and ended.
struct Sync {
    began: usize,
    ended: usize,
}

/// Read the trace: the syncs of the store's log (`…/db/db`), completed successfully.
fn log_syncs(lines: &[&str]) -> Vec<Sync> {
    let mut pending: HashMap<&str, usize> = HashMap::new();
    let mut syncs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((pid, call)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let call = call.trim_start();
        let is_sync = call.starts_with("fsync(") || call.starts_with("fdatasync(");
        if is_sync && call.contains("/db/db>") {
            if call.ends_with("<unfinished ...>") {
                pending.insert(pid, i);
            } else if call.ends_with("= 0") {
                syncs.push(Sync { began: i, ended: i });
            }
        } else if call.starts_with("<... fsync resumed>")
            || call.starts_with("<... fdatasync resumed>")
        {
            if let Some(began) = pending.remove(pid) {
                if call.ends_with("= 0") {
                    syncs.push(Sync { began, ended: i });
                }
            }
        }
    }
    syncs
}

/// The socket a traced call reads or writes, as strace's `-y` prints it (`socket:[…]`).
fn socket_of(line: &str) -> Option<&str> {
    let start = line.find("<socket:[")?;
    let end = line[start..].find("]>")? + start;
    Some(&line[start..=end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_answered_after_a_real_sync() {
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("trace");
    let trace_arg = trace.display().to_string();
    let strace = [
        "strace",
        "-f",
        "-y",
        "-s",
        "400",
        "-e",
        "trace=fsync,fdatasync,read,recvfrom,write,writev,sendto,sendmsg",
        "-o",
        &trace_arg,
    ];
    let mut hub = TestHub::start_wrapped(&strace, &[]).await;

    for i in 0..WRITES {
        let r = hub
            .send_json(
                "PUT",
                "/api/config/default-repo",
                Some(ADMIN),
                json!({ "url": format!("https://example.com/acked-{i:03}.git") }),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    // Killing strace would leave the hub running, detached: kill the hub itself.
    let text = std::fs::read_to_string(&trace).unwrap();
    let hub_pid = text.split_whitespace().next().expect("trace has lines");
    std::process::Command::new("kill")
        .args(["-KILL", hub_pid])
        .status()
        .unwrap();
    hub.kill9().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let syncs = log_syncs(&lines);

    for i in 0..WRITES {
        let marker = format!("acked-{i:03}.git");
        let request = lines
            .iter()
            .position(|l| l.contains(&marker) && l.contains("PUT /api/config/default-repo"))
            .unwrap_or_else(|| panic!("request {i} not in the trace"));
        let socket = socket_of(lines[request]).expect("request read from a socket");
        let answer = (request + 1..lines.len())
            .find(|&j| socket_of(lines[j]) == Some(socket) && lines[j].contains("HTTP/1.1 200"))
            .unwrap_or_else(|| panic!("answer to request {i} not in the trace"));
        assert!(
            syncs.iter().any(|s| s.began > request && s.ended < answer),
            "write {i} was acknowledged (trace line {}) without an fsync/fdatasync of the \
             store's log between its request (line {}) and its answer",
            answer + 1,
            request + 1,
        );
    }
}
