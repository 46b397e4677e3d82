//! An acknowledgement means the write is on stable storage: the real binary runs under
//! `strace`, and every acknowledged write must be answered only after an `fsync` or
//! `fdatasync` of the store's journal (where every write is appended before sled's trees
//! take it) that began after the request arrived (sled's own flush, `sync_file_range`,
//! does not count: it neither flushes the disk cache nor the metadata).
//!
//! Needs `strace` (the test command installs it); without it the test fails.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestHub, ADMIN};
use serde_json::json;

const WRITES: usize = 20;

/// One system call in the trace: the lines where it began and ended (the same line unless
/// strace split it into `<unfinished ...>` and `<... resumed>`), and its whole text.
struct Call {
    began: usize,
    ended: usize,
    text: String,
}

/// Join the trace's lines into calls, in the order they ended.
fn calls(lines: &[&str]) -> Vec<Call> {
    let mut pending: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((pid, call)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let call = call.trim_start();
        if let Some(head) = call.strip_suffix("<unfinished ...>") {
            pending.insert(pid, (i, head));
        } else if call.starts_with("<... ") {
            let rest = call.split_once("resumed>").map_or("", |(_, r)| r);
            if let Some((began, head)) = pending.remove(pid) {
                out.push(Call {
                    began,
                    ended: i,
                    text: format!("{head}{rest}"),
                });
            }
        } else {
            out.push(Call {
                began: i,
                ended: i,
                text: call.to_string(),
            });
        }
    }
    out
}

/// A successful `fsync`/`fdatasync` of the store's journal (`…/db/journal`).
fn is_log_sync(call: &Call) -> bool {
    (call.text.starts_with("fsync(") || call.text.starts_with("fdatasync("))
        && call.text.contains("/db/journal>")
        && call.text.ends_with("= 0")
}

/// The socket a traced call reads or writes, as strace's `-y` prints it (`socket:[…]`).
fn socket_of(text: &str) -> Option<&str> {
    let start = text.find("<socket:[")?;
    let end = text[start..].find("]>")? + start;
    Some(&text[start..=end])
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
    let calls = calls(&lines);

    for i in 0..WRITES {
        let marker = format!("acked-{i:03}.git");
        let request = calls
            .iter()
            .find(|c| c.text.contains(&marker) && c.text.contains("PUT /api/config/default-repo"))
            .unwrap_or_else(|| panic!("request {i} not in the trace"));
        let socket = socket_of(&request.text).expect("request read from a socket");
        let answer = calls
            .iter()
            .find(|c| {
                c.began > request.ended
                    && socket_of(&c.text) == Some(socket)
                    && c.text.contains("HTTP/1.1 200")
            })
            .unwrap_or_else(|| panic!("answer to request {i} not in the trace"));
        assert!(
            calls
                .iter()
                .any(|s| is_log_sync(s) && s.began > request.ended && s.ended < answer.began),
            "write {i} was acknowledged (trace line {}) without an fsync/fdatasync of the \
             store's journal between its request (line {}) and its answer",
            answer.began + 1,
            request.ended + 1,
        );
    }
}
