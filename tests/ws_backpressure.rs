//! Black-box test of inbound websocket backpressure (issue 9, finding #4): an agent that
//! sends large `channel_publish` frames as fast as it can, without waiting for the
//! replies, must not make the hub queue them in memory. The hub reads a connection's
//! socket only while its session keeps up (a few frames in flight), so the client's
//! writes wait on TCP flow control instead.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{rss_bytes, TestHub};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Frames sent, and the size of each one's payload text (under the 1 MiB frame limit).
const FRAMES: usize = 2_000;
const PAYLOAD_BYTES: usize = 190 << 10;

/// The most the hub's resident memory may grow during the flood. Storing the 2,000
/// messages itself takes about 430 MiB (the store and its index; see the report of
/// issue 9 #4), so this bound is loose: the check that fails without backpressure is
/// how far the replies lag behind the writes.
const MAX_GROWTH: u64 = 1 << 30;

/// Frames the hub has in flight per connection (`INBOUND_IN_FLIGHT`).
const IN_FLIGHT: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_is_held_back_not_queued_in_memory() {
    let hub = TestHub::start().await;
    let token = hub.token("flooder", "agent").await;
    let r = hub
        .send_json(
            "POST",
            "/api/channels",
            Some(&token),
            json!({"name": "flood"}),
        )
        .await;
    assert_eq!(r.status, 201, "create the channel: {r:?}");
    let ws = hub.identify("flooder", &token, json!({})).await;
    let pid = hub.pid();
    let before = rss_bytes(pid);

    let frame = json!({
        "type": "channel_publish",
        "channel": "flood",
        "payload": {"text": "x".repeat(PAYLOAD_BYTES)},
    })
    .to_string();
    let frame_len = frame.len();
    let (mut sink, mut stream) = ws.inner.split();
    let replies = Arc::new(AtomicUsize::new(0));
    // The sender writes every frame back to back; it never waits for a reply. After each
    // write it notes how far the replies lag behind the frames written.
    let seen = replies.clone();
    let sender = tokio::spawn(async move {
        let mut most_behind = 0;
        for written in 1..=FRAMES {
            if sink
                .send(Message::Text(frame.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            most_behind = most_behind.max(written - seen.load(Ordering::SeqCst).min(written));
        }
        most_behind
    });
    // The replies are read as they come (so that the hub's writes never block), counted.
    let counted = replies.clone();
    let receiver = tokio::spawn(async move {
        while counted.load(Ordering::SeqCst) < FRAMES {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json reply");
                    assert_eq!(v["type"], "channel_published", "{v}");
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
    });

    // Meanwhile: the hub's memory, and /health.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut peak = before;
    let mut health_checks = 0;
    while !receiver.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the flood was not handled within 10 minutes"
        );
        peak = peak.max(rss_bytes(pid));
        if health_checks < 20 {
            let health = tokio::time::timeout(
                Duration::from_secs(30),
                hub.request("GET", "/health", None, None),
            )
            .await
            .expect("/health answers during the flood");
            assert_eq!(health.status, 200, "{health:?}");
            health_checks += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(rss_bytes(pid));
    receiver.await.expect("receiver");
    let most_behind = sender.await.expect("sender");
    let answered = replies.load(Ordering::SeqCst);
    eprintln!("{answered} replies; the replies lagged the writes by at most {most_behind} frames");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "hub VmRSS {} MiB before, peak {} MiB (+{} MiB)",
        before >> 20,
        peak >> 20,
        growth >> 20
    );
    assert_eq!(answered, FRAMES, "every publish is answered");
    // What may legitimately lie between the client's writes and the hub's replies: the
    // kernel's socket buffers (the client's send buffer and the hub's receive buffer, at
    // their largest), the few frames the hub has in flight, and a wide margin for replies
    // still on their way back. Without backpressure the hub read (and queued) nearly the
    // whole flood at once: the replies lagged by over 1,800 frames.
    let buffers =
        max_buffer("/proc/sys/net/ipv4/tcp_rmem") + max_buffer("/proc/sys/net/ipv4/tcp_wmem");
    let slack = buffers / frame_len + IN_FLIGHT + 100;
    assert!(
        most_behind <= slack,
        "the replies lagged the client's writes by {most_behind} frames (at most {slack} \
         expected): the hub read frames far ahead of handling them instead of holding back \
         the socket"
    );
    // The memory itself: the stored messages take most of it, so the bound only catches
    // a queue of the whole flood (about 371 MiB of frames) on top.
    assert!(
        growth < MAX_GROWTH,
        "the hub's memory grew by {} MiB during the flood (bound {} MiB)",
        growth >> 20,
        MAX_GROWTH >> 20
    );
}

/// The largest size (bytes) the kernel lets a TCP buffer grow to (the third field).
fn max_buffer(path: &str) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|n| n.parse().ok()))
        .unwrap_or(8 << 20)
}
