//! Black-box tests of the websocket layer against hostile clients (issue 9): a client that
//! floods pings without reading, a client that stops reading, an unidentified socket kept
//! alive by pings, protocol errors and bad upgrade requests.
//!
//! Whether the hub still holds a connection is read from the kernel (`/proc/net/tcp` and
//! the hub's `/proc/<pid>/fd`), so a client that never reads can still tell that the hub
//! let go of its socket.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client_frame, eventually, raw_upgrade, request_with, TestHub, ADMIN};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The code of the close frame the hub sends next on a raw socket (`None` if it ends
/// without one).
async fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Server frames are unmasked; skip any that are not a close.
        while buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            assert!(len <= 125, "unexpected long frame from the hub");
            if buf.len() < 2 + len {
                break;
            }
            if buf[0] & 0x0f == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[2], buf[3]]));
            }
            buf.drain(..2 + len);
        }
        let mut chunk = [0u8; 512];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!("no close frame within 20 s"),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The socket inodes of the hub's side of the connection from the client's `client_port`.
fn hub_side_inodes(hub: &TestHub, client_port: u16) -> Vec<String> {
    let hub_port: u16 = hub.addr.rsplit(':').next().unwrap().parse().unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && port_of(cols[1]) == hub_port && port_of(cols[2]) == client_port {
                inodes.push(cols[9].to_string());
            }
        }
    }
    inodes
}

/// Whether the hub process still has a descriptor for the connection from `client_port`.
fn hub_holds(hub: &TestHub, client_port: u16) -> bool {
    let inodes = hub_side_inodes(hub, client_port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", hub.pid())) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy().into_owned();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
    })
}

async fn health_ok(hub: &TestHub) {
    let r = tokio::time::timeout(Duration::from_secs(10), hub.get("/health", None))
        .await
        .expect("/health answers within 10 s");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Finding 2: two unidentified sockets send 125-byte pings as fast as they can and never
/// read. The hub's memory stays bounded (the pongs it cannot send are not queued without
/// limit) and it drops both sockets once their backlog cannot be written within
/// `ws_send_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_without_reading_is_bounded_and_cut_off() {
    const BOUND: u64 = 100 << 20;
    let hub = TestHub::start_with(&["--ws-send-timeout", "2s"]).await;
    health_ok(&hub).await;
    let base = hub.rss_bytes();
    let batch: Vec<u8> = (0..1000)
        .flat_map(|_| client_frame(0x89, &[b'p'; 125]))
        .collect();
    let batch = Arc::new(batch);
    let mut ports = Vec::new();
    let mut flooders = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..2 {
        let mut stream = raw_upgrade(&hub, "/ws").await;
        ports.push(stream.local_addr().unwrap().port());
        let (batch, stop) = (batch.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&batch).await.is_err() {
                    return;
                }
            }
            // Keep the socket (unread) until the test ends.
            std::future::pending::<()>().await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0;
    loop {
        let grown = hub.rss_bytes().saturating_sub(base);
        peak = peak.max(grown);
        assert!(
            grown < BOUND,
            "the hub grew by {} MiB under a ping flood (bound {} MiB)",
            grown >> 20,
            BOUND >> 20
        );
        if ports.iter().all(|p| !hub_holds(&hub, *p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub still holds a flooding socket after 60 s (grew {} MiB)",
            peak >> 20
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    health_ok(&hub).await;
    for f in flooders {
        f.abort();
    }
}

/// Finding 2, the other side of the bounded write buffer: a message far longer than one
/// fragment (and full of multi-byte characters) still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_arrives_whole_in_fragments() {
    let hub = TestHub::start().await;
    let mut alpha = hub
        .identify("alpha", &hub.token("alpha", "agent").await, json!({}))
        .await;
    let mut beta = hub
        .identify("beta", &hub.token("beta", "agent").await, json!({}))
        .await;
    let text = "é€x".repeat(50_000);
    alpha
        .send_json(json!({"type": "message", "to": "beta", "payload": {"text": text}}))
        .await;
    alpha.next_of_type("message_sent").await;
    let got = beta.next_of_type("message").await;
    assert_eq!(got["payload"]["text"], text);
}

/// Finding 7: an agent asks for large replies and never reads them, so its session is
/// closed (outbound queue full, 1008) while the writer cannot send. The hub gives the
/// writes and the close handshake `ws_send_timeout`, then drops the TCP connection and
/// its descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_client_stops_reading_releases_its_socket() {
    let hub = TestHub::start_with(&["--ws-send-timeout", "2s"]).await;
    let token = hub.token("slowpoke", "agent").await;
    let r = hub
        .send_json("POST", "/api/channels", Some(ADMIN), json!({"name": "big"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let mut writer = hub
        .identify("writer", &hub.token("writer", "agent").await, json!({}))
        .await;
    writer
        .send_json(json!({"type": "channel_subscribe", "channel": "big"}))
        .await;
    writer.next_of_type("channel_subscribed").await;
    writer
        .send_json(json!({
            "type": "channel_publish", "channel": "big",
            "payload": {"text": "x".repeat(200 << 10)}
        }))
        .await;
    writer.next_of_type("channel_published").await;

    // A client with a small receive buffer that identifies, then stops reading.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let stream = socket.connect(hub.addr.parse().unwrap()).await.unwrap();
    let port = stream.local_addr().unwrap().port();
    let req = format!("ws://{}/ws", hub.addr)
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "identify", "agent_id": "slowpoke", "token": token})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("identified") => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no identified frame: {other:?}"),
        }
    }
    let history = Message::Text(
        json!({"type": "channel_history", "channel": "big", "limit": 1})
            .to_string()
            .into(),
    );
    for _ in 0..400 {
        if ws.feed(history.clone()).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), ws.flush()).await;
    assert!(
        eventually(Duration::from_secs(30), || async { !hub_holds(&hub, port) }).await,
        "the hub still holds the connection of a client that stopped reading"
    );
    health_ok(&hub).await;
    drop(ws);
}

/// Finding 6: an unidentified `/ws` socket is closed at the identify deadline even though
/// it keeps pinging; an identified one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unidentified_socket_is_closed_at_the_identify_deadline_despite_pings() {
    let hub =
        TestHub::start_with(&["--ws-identify-timeout", "2s", "--ws-idle-timeout", "4s"]).await;
    let token = hub.token("alpha", "agent").await;
    let mut alpha = hub.identify("alpha", &token, json!({})).await;
    let mut stranger = hub.ws("/ws", None).await.expect("connect");
    let started = Instant::now();
    let code = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "an unidentified socket that pings is still open after 20 s"
        );
        stranger
            .inner
            .send(Message::Ping(b"alive".to_vec().into()))
            .await
            .expect("ping");
        alpha
            .inner
            .send(Message::Ping(b"alive".to_vec().into()))
            .await
            .expect("ping");
        match tokio::time::timeout(Duration::from_millis(500), stranger.inner.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    // The identified agent, pinging all along, is still served.
    alpha.send_json(json!({"type": "ping"})).await;
    alpha.next_of_type("pong").await;
}

/// Finding 14: a protocol error closes with 1002, invalid UTF-8 in a text frame with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_with_1002_and_invalid_utf8_with_1007() {
    let hub = TestHub::start().await;
    // RSV1 set without a negotiated extension.
    let mut stream = raw_upgrade(&hub, "/ws").await;
    stream
        .write_all(&client_frame(0x81 | 0x40, b"{}"))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut stream).await, Some(1002));
    // A text frame that is not UTF-8.
    let mut stream = raw_upgrade(&hub, "/ws").await;
    stream
        .write_all(&client_frame(0x81, &[b'"', 0xff, 0xfe, b'"']))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut stream).await, Some(1007));
}

/// Finding 14: an upgrade with an empty or malformed `Sec-WebSocket-Key` is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_a_valid_key_is_refused() {
    let hub = TestHub::start().await;
    for key in ["", "   ", "abc", "not base64 at all, no no no"] {
        let r = request_with(
            &hub.addr,
            "GET",
            "/ws",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", key),
            ],
            None,
        )
        .await;
        assert_eq!(r.status, 400, "key {key:?}: {r:?}");
        assert_eq!(r.json["error"], "invalid_websocket_key", "{r:?}");
    }
}
