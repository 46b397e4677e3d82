//! Memory per idle agent connection: the real hub binary, N identified agents that then
//! stay silent; the hub's resident memory before and after, per connection.
//!
//! `cargo bench -p agentcom --bench idle_connections` (IDLE_BENCH_AGENTS sets N, default
//! 10,000; the process limit on open files must allow N + a few hundred, on both sides).
//! Without `--bench` it runs a 200-agent smoke.
//!
//! Every identify is pushed to every identified agent, N²/2 pushes in all (50 million at
//! N = 10,000). So that the clients on the same machine keep up, they speak just enough
//! websocket to upgrade and identify, then read and discard raw bytes; and agents identify
//! in batches of [`BATCH`], each once the hub has sent everything the previous one caused,
//! so a session never has more than a batch of pushes waiting (its outbound queue holds
//! 128 frames; a client that falls further behind is cut off, and the run fails).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

use support::{start_hub, ADMIN};

/// Agents that identify together; below the outbound queue's 128 frames.
const BATCH: usize = 100;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn post(addr: &str, path: &str, body: String) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut out)
        .await
        .expect("read");
    out
}

/// A client text frame; masked (as clients must) with the all-zero key.
fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match text.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Read until `needle` has arrived (it may span reads).
async fn read_until(stream: &mut TcpStream, needle: &[u8], what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed during {what}");
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// Open `/ws` and, given an identify frame, identify; then read and discard whatever the
/// hub sends (counted in `received`) until it closes the connection (counted in `closed`).
async fn agent(
    addr: String,
    identify: Option<String>,
    received: Arc<AtomicU64>,
    closed: Arc<AtomicUsize>,
) {
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let upgrade = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    stream
        .write_all(upgrade.as_bytes())
        .await
        .expect("upgrade request");
    let head = read_until(&mut stream, b"\r\n\r\n", "the upgrade").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head)
    );
    if let Some(identify) = identify {
        stream
            .write_all(&text_frame(&identify))
            .await
            .expect("identify");
        read_until(&mut stream, b"\"type\":\"identified\"", "identify").await;
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.fetch_add(n as u64, Ordering::Relaxed),
            };
        }
        closed.fetch_add(1, Ordering::Relaxed);
    });
}

/// Wait until nothing has arrived for `quiet`.
async fn until_quiet(received: &AtomicU64, quiet: Duration) {
    let mut last = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(quiet).await;
        let now = received.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // IDLE_BENCH_IDENTIFY=0 measures bare connections (no identify, no presence storm).
    let identify_agents = std::env::var("IDLE_BENCH_IDENTIFY").map_or(true, |v| v != "0");
    let n: usize = std::env::var("IDLE_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 10_000 } else { 200 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let data = tempfile::tempdir().expect("temp dir");
        let (mut hub, addr) = start_hub(data.path()).await;
        let pid = hub.id().expect("pid");

        // Tokens first (they are stored, not part of what a connection costs).
        let t = Instant::now();
        let mut tokens = Vec::with_capacity(n);
        let ids: Vec<usize> = (0..n).collect();
        for chunk in ids.chunks(64) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let addr = addr.clone();
                    tokio::spawn(async move { post(&addr, "/admin/tokens", format!("{{\"agent_id\":\"idle-{i}\"}}")).await })
                })
                .collect();
            for (i, b) in chunk.iter().zip(batch) {
                let reply = b.await.unwrap();
                let token = reply.split("\"token\":\"").nth(1).and_then(|r| r.get(..64)).expect("token").to_string();
                tokens.push((*i, token));
            }
        }
        println!("minted {n} tokens in {:.1} s", t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(pid);

        let t = Instant::now();
        let (received, closed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
        for chunk in tokens.chunks(BATCH) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|(i, token)| {
                    let identify = identify_agents
                        .then(|| format!("{{\"type\":\"identify\",\"agent_id\":\"idle-{i}\",\"token\":\"{token}\"}}"));
                    tokio::spawn(agent(addr.clone(), identify, received.clone(), closed.clone()))
                })
                .collect();
            for b in batch {
                b.await.unwrap();
            }
            if identify_agents {
                until_quiet(&received, Duration::from_millis(100)).await;
            }
        }
        let connect_s = t.elapsed().as_secs_f64();
        // Let the join storm settle (every identify is pushed to every connected agent).
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = rss_kib(pid);
            let cpu_quiet = now.abs_diff(last) < 256;
            last = now;
            if cpu_quiet {
                break;
            }
        }
        // The hub hands freed memory back to the system every 10 s: measure after that.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let after = rss_kib(pid);
        let cut_off = closed.load(Ordering::Relaxed);
        assert_eq!(cut_off, 0, "the hub closed {cut_off} connections (slow consumers?)");
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        println!();
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| {} | {n} |", if identify_agents { "identified idle agents" } else { "idle connections (not identified)" });
        println!("| connect + identify all | {connect_s:.1} s |");
        println!("| pushes received, all agents | {:.0} MiB |", received.load(Ordering::Relaxed) as f64 / (1 << 20) as f64);
        println!("| hub RSS before the connections | {:.1} MiB |", before as f64 / 1024.0);
        println!("| hub RSS with every agent idle | {:.1} MiB |", after as f64 / 1024.0);
        println!("| **memory per idle connection** | **{:.1} KiB** (target ≤ 20 KB = 19.5 KiB; {:.2}x of it) |", per / 1024.0, per / 20_000.0);
        let _ = hub.start_kill();
    });
}
