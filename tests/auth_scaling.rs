//! Black-box test of issue 9 #9: registering an agent and signing the dashboard in cost the
//! same whether the hub holds a hundred tokens and sessions or many thousands. They used
//! to scan every token (registration) or every session (sign-in) inside the auth actor:
//! 20,000 of each made them 10× slower.
//!
//! The cost is compared within one run, against a baseline measured on the same hub while
//! it was nearly empty, and each relative to a control call measured alongside (minting a
//! token, which never scanned), so the bound holds on a slow or busy machine.

mod common;

use std::time::{Duration, Instant};

use common::{TestHub, ADMIN};
use futures_util::{stream, StreamExt};
use serde_json::json;

/// Tokens and sessions added between the two measurements.
const GROWTH: usize = 6_000;
/// Requests in flight while growing (group commit shares their flushes).
const IN_FLIGHT: usize = 32;
/// Sequential requests per measurement.
const SAMPLES: usize = 60;

async fn register(hub: &TestHub, agent_id: &str) -> u16 {
    hub.send_json(
        "POST",
        "/api/onboard/register",
        Some(ADMIN),
        json!({ "agent_id": agent_id }),
    )
    .await
    .status
}

async fn mint(hub: &TestHub, agent_id: &str) -> u16 {
    hub.send_json(
        "POST",
        "/admin/tokens",
        Some(ADMIN),
        json!({ "agent_id": agent_id, "role": "viewer" }),
    )
    .await
    .status
}

async fn sign_in(hub: &TestHub) -> u16 {
    hub.send_json(
        "POST",
        "/api/dashboard/login",
        None,
        json!({ "token": ADMIN }),
    )
    .await
    .status
}

/// Median times of one call, measured on the hub's current size.
struct Costs {
    register: Duration,
    sign_in: Duration,
    /// Minting a token by the admin API: a durable write through the same actor that
    /// never read other tokens. Measured between the others, it tells how busy the
    /// machine was.
    control: Duration,
}

impl Costs {
    /// Registration and sign-in relative to the control.
    fn relative(&self) -> (f64, f64) {
        let control = self.control.as_secs_f64();
        (
            self.register.as_secs_f64() / control,
            self.sign_in.as_secs_f64() / control,
        )
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn timed<Fut: std::future::Future<Output = u16>>(expect: u16, call: Fut) -> Duration {
    let start = Instant::now();
    assert_eq!(call.await, expect);
    start.elapsed()
}

/// `SAMPLES` calls of each kind, interleaved so that a busy moment costs all alike.
async fn costs(hub: &TestHub, round: &str) -> Costs {
    let (mut register_t, mut sign_in_t, mut control_t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        control_t.push(timed(201, mint(hub, &format!("{round}-minted-{i}"))).await);
        register_t.push(timed(201, register(hub, &format!("{round}-{i}"))).await);
        sign_in_t.push(timed(200, sign_in(hub)).await);
    }
    Costs {
        register: median(register_t),
        sign_in: median(sign_in_t),
        control: median(control_t),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_sign_in_do_not_slow_down_with_many_tokens_and_sessions() {
    let hub = TestHub::start_with(&["--anonymous-rate-limit-per-sec", "0"]).await;
    // Warm up (connections, allocator, page cache), then the baseline.
    costs(&hub, "warm").await;
    let small = costs(&hub, "small").await;

    let hub = &hub;
    let started = Instant::now();
    let registered = stream::iter(0..GROWTH)
        .map(|i| async move { register(hub, &format!("grown-{i}")).await })
        .buffer_unordered(IN_FLIGHT)
        .filter(|status| std::future::ready(*status == 201))
        .count()
        .await;
    assert_eq!(registered, GROWTH);
    let signed_in = stream::iter(0..GROWTH)
        .map(|_| sign_in(hub))
        .buffer_unordered(IN_FLIGHT)
        .filter(|status| std::future::ready(*status == 200))
        .count()
        .await;
    assert_eq!(signed_in, GROWTH);
    eprintln!(
        "grew by {GROWTH} tokens and {GROWTH} sessions in {:?}",
        started.elapsed()
    );

    let large = costs(hub, "large").await;
    for (what, costs) in [("small", &small), ("large", &large)] {
        eprintln!(
            "{what}: registration {:?}, sign-in {:?}, minting (control) {:?}",
            costs.register, costs.sign_in, costs.control
        );
    }
    let ((register_small, sign_in_small), (register_large, sign_in_large)) =
        (small.relative(), large.relative());
    // Generous: the scans made them 20-30× slower at this size (in a debug build).
    assert!(
        register_large < register_small * 3.0,
        "registration slowed from {register_small:.2} to {register_large:.2} control calls"
    );
    assert!(
        sign_in_large < sign_in_small * 3.0,
        "sign-in slowed from {sign_in_small:.2} to {sign_in_large:.2} control calls"
    );

    // Still one registration per id, whatever the table's size.
    assert_eq!(register(hub, "grown-17").await, 409);
    assert_eq!(register(hub, "small-3").await, 409);
}

/// Registration reads the store without waiting for the writes in flight of other agents'
/// registrations, but never past one of its own agent: of many concurrent registrations of
/// one id exactly one mints, and right after a revoke the id registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_agent_mint_once_and_a_revoke_frees_the_id() {
    let hub = TestHub::start().await;
    let hub = &hub;
    for round in 0..5 {
        let ids: Vec<String> = (0..64)
            .map(|i| format!("other-{round}-{i}"))
            .chain((0..64).map(|_| "contested".to_string()))
            .collect();
        let statuses: Vec<u16> =
            futures_util::future::join_all(ids.iter().map(|id| register(hub, id))).await;
        let (others, same) = statuses.split_at(64);
        assert!(others.iter().all(|s| *s == 201), "{others:?}");
        let minted = same.iter().filter(|s| **s == 201).count();
        assert_eq!(minted, 1, "round {round}: {same:?}");
        assert!(same.iter().all(|s| *s == 201 || *s == 409), "{same:?}");
        let revoked = hub
            .request("DELETE", "/admin/tokens/contested", Some(ADMIN), None)
            .await;
        assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    }
}
