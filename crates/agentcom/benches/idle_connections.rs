//! Memory per idle agent connection: the real hub binary, N identified agents that then
//! stay silent; the hub's resident memory before and after, per connection.
//!
//! `cargo bench -p agentcom --bench idle_connections` (IDLE_BENCH_AGENTS sets N, default
//! 10,000; the process limit on open files must allow N + a few hundred, on both sides).
//! Without `--bench` it runs a 200-agent smoke.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "abababababababababababababababababababababababababababababababab";

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
        let mut hub = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentcom"))
            .args(["serve", "--bind", "127.0.0.1:0", "--admin-token", ADMIN, "--ws-idle-timeout", "1h", "--presence-ttl", "1h", "--backup-interval", "24h"])
            .arg("--data-dir")
            .arg(data.path())
            .env("AGENTCOM_LOG", "error")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the hub");
        let pid = hub.id().expect("pid");
        let mut lines = BufReader::new(hub.stdout.take().unwrap()).lines();
        let mut addr = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("AgentCom listening on http://") {
                addr = a.to_string();
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

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
        let mut sinks = Vec::with_capacity(n);
        for chunk in tokens.chunks(100) {
            let batch: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|(i, token)| {
                    let addr = addr.clone();
                    tokio::spawn(async move {
                        let stream = TcpStream::connect(&addr).await.expect("connect");
                        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await.expect("upgrade");
                        if !identify_agents {
                            let (sink, mut stream) = ws.split();
                            tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
                            return sink;
                        }
                        let identify = format!("{{\"type\":\"identify\",\"agent_id\":\"idle-{i}\",\"token\":\"{token}\"}}");
                        ws.send(Message::Text(identify.into())).await.expect("send");
                        loop {
                            match ws.next().await {
                                Some(Ok(Message::Text(t))) if t.as_str().contains("\"identified\"") => break,
                                Some(Ok(_)) => continue,
                                other => panic!("identify failed: {other:?}"),
                            }
                        }
                        // An idle agent still reads what the hub pushes (as a real client does).
                        let (sink, mut stream) = ws.split();
                        tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
                        sink
                    })
                })
                .collect();
            for b in batch {
                sinks.push(b.await.unwrap());
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
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        println!();
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| {} | {n} |", if identify_agents { "identified idle agents" } else { "idle connections (not identified)" });
        println!("| connect + identify all | {connect_s:.1} s |");
        println!("| hub RSS before the connections | {:.1} MiB |", before as f64 / 1024.0);
        println!("| hub RSS with every agent idle | {:.1} MiB |", after as f64 / 1024.0);
        println!("| **memory per idle connection** | **{:.1} KiB** (target ≤ 20 KB = 19.5 KiB; {:.2}x of it) |", per / 1024.0, per / 20_000.0);
        drop(sinks);
        let _ = hub.start_kill();
    });
}
