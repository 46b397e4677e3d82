//! Registration: N agents register with `POST /api/onboard/register`, without a token
//! (the hub runs with `--open-registration` and `--anonymous-rate-limit-per-sec 0`), over
//! a few keep-alive connections; the seconds for all of them. Baselines: the issue's
//! target (5,000 in ≤ 2 s), and, in the same run against the same hub, as many admin
//! token mints (`POST /admin/tokens`, the same durable write without onboarding).
//!
//! REGISTRATION_AGENTS (default 5,000), REGISTRATION_CONNS (default 8).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::client::Client;
use crate::support::{start_hub_with, ADMIN};
use crate::{round2, Mode};

const TARGET_SECS: f64 = 2.0;

pub async fn run(mode: Mode) -> Value {
    let n = mode.size("REGISTRATION_AGENTS", 5_000, 200);
    let conns = mode.size("REGISTRATION_CONNS", 8, 4);
    let data = tempfile::tempdir().expect("temp dir");
    let (_hub, addr) = start_hub_with(
        data.path(),
        &[
            "--open-registration",
            "true",
            "--anonymous-rate-limit-per-sec",
            "0",
        ],
    )
    .await;

    let register = flood(&addr, n, conns, None, "/api/onboard/register", "reg").await;
    let mint = flood(&addr, n, conns, Some(ADMIN), "/admin/tokens", "mint").await;
    let secs = register.as_secs_f64();
    json!({
        "scenario": "registration",
        "agents": n,
        "connections": conns,
        "seconds": round2(secs),
        "per_s": (n as f64 / secs).round(),
        "baseline": {"what": "issue 11 target", "seconds": TARGET_SECS},
        "ratio": round2(secs / TARGET_SECS),
        "admin_mint": {
            "what": "same count of POST /admin/tokens, same hub and connections",
            "seconds": round2(mint.as_secs_f64()),
            "ratio": round2(secs / mint.as_secs_f64()),
        },
        "met": secs <= TARGET_SECS,
    })
}

/// `n` posts of `{"agent_id": "{prefix}-i"}` to `path` over `conns` connections; each
/// must answer 201.
async fn flood(
    addr: &str,
    n: usize,
    conns: usize,
    bearer: Option<&str>,
    path: &'static str,
    prefix: &'static str,
) -> Duration {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(Client::connect_as(addr, bearer).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut posting = Vec::with_capacity(conns);
    for mut client in clients {
        let next = next.clone();
        posting.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let body = Bytes::from(format!("{{\"agent_id\":\"{prefix}-{i}\"}}"));
                let (status, answer) = client
                    .request("POST", path, Some(body))
                    .await
                    .expect("answer");
                assert_eq!(status, 201, "{path}: {}", String::from_utf8_lossy(&answer));
            }
        }));
    }
    for p in posting {
        p.await.expect("poster");
    }
    start.elapsed()
}
