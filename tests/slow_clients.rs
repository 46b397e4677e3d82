//! Black-box tests of what slow HTTP clients may cost the hub (issue 9): a body dripped a
//! byte at a time is read into one bounded buffer, and cut off after `body_timeout`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{connect, read_to_close, TestHub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dripped_a_byte_at_a_time_costs_no_more_than_its_bytes() {
    // All 32 clients must get to drip: the per-address limit on sign-ins (20 at once)
    // would answer some of them 429 before their bodies are read.
    let hub = TestHub::start_with(&["--anonymous-rate-limit-per-sec", "0"]).await;
    let (addr, pid) = (hub.addr.clone(), hub.pid());
    // The login body is limited to 4 KiB; 32 unauthenticated clients each drip 4,000 bytes,
    // half as 1-byte chunks, half under a Content-Length, one byte per write.
    const CLIENTS: usize = 32;
    const BYTES: usize = 4000;
    let (before, after) = tokio::task::spawn_blocking(move || {
        let mut socks: Vec<std::net::TcpStream> = (0..CLIENTS).map(|_| connect(&addr)).collect();
        for (i, s) in socks.iter_mut().enumerate() {
            let framing = if i % 2 == 0 {
                "transfer-encoding: chunked\r\n".to_string()
            } else {
                format!("content-length: {}\r\n", BYTES + 10)
            };
            write!(
                s,
                "POST /api/dashboard/login HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\n{framing}\r\n"
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let before = common::rss_bytes(pid) >> 10;
        for _ in 0..BYTES {
            for (i, s) in socks.iter_mut().enumerate() {
                let piece: &[u8] = if i % 2 == 0 { b"1\r\n \r\n" } else { b" " };
                // A hub that cut the body off (body_timeout on a slow machine) may have closed.
                let _ = s.write_all(piece);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = common::rss_bytes(pid) >> 10;
        drop(socks);
        (before, after)
    })
    .await
    .unwrap();
    let grown = after.saturating_sub(before);
    eprintln!("{CLIENTS} dripping clients: the hub grew by {grown} KiB ({before} → {after})");
    // Before the fix every byte kept its own frame (and the read buffer behind it): about
    // 1.7 KiB per byte, over 200 MiB here. One bounded buffer per request is 4 KiB each.
    assert!(
        grown < 24 * 1024,
        "{CLIENTS} clients dripping {BYTES} bytes each grew the hub by {grown} KiB ({before} → {after})"
    );
    // The hub still serves.
    assert_eq!(hub.get("/health", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_after_the_body_timeout() {
    let hub = TestHub::start_with(&["--body-timeout", "1s"]).await;
    let addr = hub.addr.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = connect(&addr);
        write!(
            s,
            "POST /api/dashboard/login HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"tok"
        )
        .unwrap();
        read_to_close(&mut s)
    })
    .await
    .unwrap()
    .expect("the hub answers and closes a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    assert_eq!(hub.get("/health", None).await.status, 200);
}

/// A long answer given without reading the request's body (a GET with a body, a refusal
/// before the body) arrives whole: the hub half-closes and reads off what the client
/// still sends before it closes, instead of closing over unread bytes, which makes the
/// kernel reset the connection and can destroy the answer in flight (RFC 9112 §9.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_before_the_body_is_read_arrives_whole() {
    let hub = TestHub::start().await;
    let page = hub.get("/dashboard", None).await;
    assert_eq!(page.status, 200);
    for _ in 0..30 {
        let r = common::send_raw(&hub.addr, "GET", "/dashboard", &[], vec![b'x'; 16 << 20])
            .await
            .expect("a complete answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), page.body.len(), "the page arrived whole");
    }
}
