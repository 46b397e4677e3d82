//! Black-box tests of the dashboard's Web Push alerts (reference §6.13, SPEC §7).
//!
//! A stand-in push service listens on loopback (plain HTTP, which the hub accepts for
//! loopback endpoints only with test hooks on) and records what the hub sends. The test
//! plays the browser: it makes a P-256 key pair and an auth secret, subscribes, and
//! decrypts every push (RFC 8291) and checks its VAPID signature (RFC 8292) itself, so a
//! push that a real browser could not read fails the test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use common::{TestHub, ADMIN};
use hkdf::Hkdf;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

/// What the stand-in push service received.
#[derive(Debug)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A push service on loopback: answers 201, or 410 for paths under `/gone/`.
struct PushService {
    base: String,
    received: mpsc::UnboundedReceiver<Received>,
}

impl PushService {
    async fn start() -> PushService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req.headers().clone();
                                let body = req.into_body().collect().await?.to_bytes();
                                let status = if path.starts_with("/gone/") { 410 } else { 201 };
                                let _ = tx.send(Received {
                                    path,
                                    headers,
                                    body,
                                });
                                let mut res = hyper::Response::new(Full::new(Bytes::new()));
                                *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, hyper::Error>(res)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        PushService { base, received }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a push within 10 s")
            .expect("push service running")
    }

    /// Nothing arrives within `within`.
    async fn quiet(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

/// The browser's side of a subscription.
struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Browser {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).unwrap();
        let mut auth = [0u8; 16];
        getrandom::fill(&mut auth).unwrap();
        Browser {
            secret: SecretKey::from_slice(&bytes).unwrap(),
            auth,
        }
    }

    fn subscription(&self, endpoint: &str) -> Value {
        let public = self.secret.public_key().to_encoded_point(false);
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }

    /// RFC 8291 decryption of an `aes128gcm` body with one record.
    fn decrypt(&self, body: &[u8]) -> Value {
        assert!(body.len() > 86, "body too short: {} bytes", body.len());
        let (salt, rest) = body.split_at(16);
        let record_size = u32::from_be_bytes(rest[..4].try_into().unwrap());
        assert_eq!(record_size, 4096);
        let id_len = rest[4] as usize;
        assert_eq!(id_len, 65, "the key id is the sender's public key");
        let sender = PublicKey::from_sec1_bytes(&rest[5..5 + id_len]).unwrap();
        let sealed = &rest[5 + id_len..];

        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), sender.as_affine());
        let mut key_info = b"WebPush: info\0".to_vec();
        key_info.extend_from_slice(self.secret.public_key().to_encoded_point(false).as_bytes());
        key_info.extend_from_slice(sender.to_encoded_point(false).as_bytes());
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&key_info, &mut ikm)
            .unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .unwrap();
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(Nonce::from_slice(&nonce), sealed)
            .expect("the push decrypts with the browser's keys");
        assert_eq!(plain.pop(), Some(2), "last-record padding delimiter");
        serde_json::from_slice(&plain).expect("JSON payload")
    }
}

/// Check the request's headers and VAPID token; return the JWT claims.
fn check_vapid(push: &Received, vapid_public: &str, audience: &str) -> Value {
    let h = |name: &str| {
        push.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", push.headers))
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(h("content-encoding"), "aes128gcm");
    assert!(h("ttl").parse::<u64>().unwrap() > 0);
    let authorization = h("authorization");
    let (token, key) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .unwrap_or_else(|| panic!("not a VAPID authorization: {authorization}"));
    assert_eq!(key, vapid_public, "k is the hub's published VAPID key");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let verifying = VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(key).unwrap()).unwrap();
    let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    verifying
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the JWT is signed with the VAPID key");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["aud"], audience);
    let exp = claims["exp"].as_u64().unwrap();
    let now = common::now_ms() / 1000;
    assert!(
        exp > now && exp <= now + 24 * 3600,
        "exp {exp} vs now {now}"
    );
    assert!(claims["sub"].as_str().unwrap().starts_with("mailto:"));
    claims
}

async fn vapid_key(hub: &TestHub) -> String {
    hub.get("/api/dashboard/vapid-key", None).await.json["vapid_public_key"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn subscribe(hub: &TestHub, token: &str, sub: Value) {
    let r = hub
        .send_json("POST", "/api/dashboard/push-subscribe", Some(token), sub)
        .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "subscribed"}))
    );
}

async fn subscriptions_gauge(hub: &TestHub) -> String {
    let r = hub.get("/metrics", Some(ADMIN)).await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find(|l| l.starts_with("agentcom_push_subscriptions "))
        .expect("push subscriptions gauge")
        .to_string()
}

/// Health pushes are kept out of the way unless a test wants them.
const NO_HEALTH_PUSH: [&str; 2] = ["--push-health-interval", "1h"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_leaving_is_pushed_to_every_subscriber_readably() {
    let mut service = PushService::start().await;
    let hub = TestHub::start_with(&NO_HEALTH_PUSH).await;
    let viewer = hub.token("wall-screen", "viewer").await;
    let (alice, bob) = (Browser::new(), Browser::new());
    subscribe(
        &hub,
        &viewer,
        alice.subscription(&format!("{}/push/alice", service.base)),
    )
    .await;
    subscribe(
        &hub,
        ADMIN,
        bob.subscription(&format!("{}/push/bob", service.base)),
    )
    .await;
    assert_eq!(
        subscriptions_gauge(&hub).await,
        "agentcom_push_subscriptions 2"
    );

    let token = hub.token("worker-7", "agent").await;
    let ws = hub.identify("worker-7", &token, json!({})).await;
    assert!(
        service.quiet(Duration::from_millis(300)).await.is_none(),
        "nothing is pushed when an agent joins"
    );
    drop(ws);

    let vapid = vapid_key(&hub).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let push = service.next().await;
        check_vapid(&push, &vapid, &service.base);
        let browser = match push.path.as_str() {
            "/push/alice" => &alice,
            "/push/bob" => &bob,
            other => panic!("push to an unknown path {other}"),
        };
        assert_eq!(
            browser.decrypt(&push.body),
            json!({"title": "AgentCom Alert", "body": "Agent offline: worker-7", "icon": "/favicon.ico"})
        );
        seen.push(push.path);
    }
    seen.sort();
    assert_eq!(seen, ["/push/alice", "/push/bob"]);
    assert!(service.quiet(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_restarts_and_gone_ones_are_dropped() {
    let mut service = PushService::start().await;
    let mut hub = TestHub::start_with(&NO_HEALTH_PUSH).await;
    let browser = Browser::new();
    let kept = format!("{}/push/kept", service.base);
    let gone = format!("{}/gone/1", service.base);
    subscribe(&hub, ADMIN, browser.subscription(&kept)).await;
    subscribe(&hub, ADMIN, browser.subscription(&gone)).await;
    // Subscribing again with the same endpoint replaces, it does not add.
    subscribe(&hub, ADMIN, browser.subscription(&kept)).await;
    assert_eq!(
        subscriptions_gauge(&hub).await,
        "agentcom_push_subscriptions 2"
    );
    let vapid = vapid_key(&hub).await;
    hub.restart().await;
    assert_eq!(vapid_key(&hub).await, vapid);
    assert_eq!(
        subscriptions_gauge(&hub).await,
        "agentcom_push_subscriptions 2",
        "subscriptions are durable"
    );

    let token = hub.token("w1", "agent").await;
    drop(hub.identify("w1", &token, json!({})).await);
    let mut paths = vec![service.next().await.path, service.next().await.path];
    paths.sort();
    assert_eq!(paths, ["/gone/1", "/push/kept"]);
    // The push service answered 410 for the gone one: it is dropped, durably.
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            subscriptions_gauge(&hub).await == "agentcom_push_subscriptions 1"
        })
        .await,
        "a 410 drops the subscription"
    );
    // The drop is written at once but the restart below is a kill -9: wait until it is
    // durable. The notifier writes in order, so an acknowledged (durable) subscribe made
    // after the drop covers it.
    subscribe(&hub, ADMIN, browser.subscription(&kept)).await;
    hub.restart().await;
    let token = hub.token("w2", "agent").await;
    drop(hub.identify("w2", &token, json!({})).await);
    let push = service.next().await;
    assert_eq!(push.path, "/push/kept");
    assert_eq!(browser.decrypt(&push.body)["body"], "Agent offline: w2");
    check_vapid(&push, &vapid, &service.base);
    assert!(service.quiet(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_getting_worse_is_pushed_once() {
    let mut service = PushService::start().await;
    // A fresh hub that never backed up reads "warning" (stale backup) until its first
    // backup; a long backup interval keeps it there for the test.
    let hub = TestHub::start_with(&[
        "--push-health-interval",
        "200ms",
        "--backup-interval",
        "24h",
    ])
    .await;
    let browser = Browser::new();
    subscribe(
        &hub,
        ADMIN,
        browser.subscription(&format!("{}/push/ops", service.base)),
    )
    .await;
    let snapshot = hub.get("/api/dashboard/state", Some(ADMIN)).await.json;
    let push = service.next().await;
    let payload = browser.decrypt(&push.body);
    let body = payload["body"].as_str().unwrap();
    let status = snapshot["health"]["status"].as_str().unwrap();
    assert_ne!(status, "ok", "{snapshot}");
    assert!(
        body.starts_with(&format!("Health {status}: ")),
        "{body} vs {snapshot}"
    );
    for condition in snapshot["health"]["conditions"].as_array().unwrap() {
        assert!(body.contains(condition.as_str().unwrap()), "{body}");
    }
    // The status stays the same over many checks: no more pushes.
    assert!(
        service.quiet(Duration::from_millis(1200)).await.is_none(),
        "a health status that does not change is pushed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_subscriptions_are_refused_with_the_reason() {
    let hub = TestHub::start_with(&NO_HEALTH_PUSH).await;
    let plain = TestHub::start_with(&["--test-hooks", "false"]).await;
    let browser = Browser::new();
    let good = browser.subscription("https://push.example.net/abc");
    let cases = [
        (json!({}), "endpoint"),
        (json!({"endpoint": 5, "keys": good["keys"]}), "endpoint"),
        (
            json!({"endpoint": "ftp://push.example.net/x", "keys": good["keys"]}),
            "https",
        ),
        (
            json!({"endpoint": "http://push.example.net/x", "keys": good["keys"]}),
            "https",
        ),
        (
            json!({"endpoint": "https://push.example.net/x"}),
            "keys.p256dh",
        ),
        (
            json!({"endpoint": "https://push.example.net/x", "keys": {"p256dh": "AAAA", "auth": good["keys"]["auth"]}}),
            "P-256",
        ),
        (
            json!({"endpoint": "https://push.example.net/x", "keys": {"p256dh": good["keys"]["p256dh"], "auth": "AAAA"}}),
            "16 bytes",
        ),
    ];
    for (body, reason) in cases {
        let r = hub
            .send_json(
                "POST",
                "/api/dashboard/push-subscribe",
                Some(ADMIN),
                body.clone(),
            )
            .await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.json["error"], "invalid_subscription", "{body}");
        assert!(
            r.json["message"].as_str().unwrap().contains(reason),
            "{body}: {}",
            r.json
        );
    }
    assert_eq!(
        subscriptions_gauge(&hub).await,
        "agentcom_push_subscriptions 0"
    );
    // Without test hooks, plain http is refused even on loopback.
    let r = plain
        .send_json(
            "POST",
            "/api/dashboard/push-subscribe",
            Some(ADMIN),
            browser.subscription("http://127.0.0.1:9/push"),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].clone()),
        (400, json!("invalid_subscription"))
    );
    subscribe(&plain, ADMIN, good).await;
}

/// A push service that never answers holds up neither the hub nor other subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_push_service_does_not_hold_up_others() {
    let mut service = PushService::start().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_base = format!("http://{}", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = silent.accept().await {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let hub = TestHub::start_with(&NO_HEALTH_PUSH).await;
    let browser = Browser::new();
    subscribe(
        &hub,
        ADMIN,
        browser.subscription(&format!("{silent_base}/push/silent")),
    )
    .await;
    subscribe(
        &hub,
        ADMIN,
        browser.subscription(&format!("{}/push/ok", service.base)),
    )
    .await;
    for i in 0..3 {
        let id = format!("a{i}");
        let token = hub.token(&id, "agent").await;
        drop(hub.identify(&id, &token, json!({})).await);
        let push = service.next().await;
        assert_eq!(
            browser.decrypt(&push.body)["body"],
            format!("Agent offline: {id}")
        );
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the silent service was tried"
    );
    let r = hub.get("/health", None).await;
    assert_eq!(r.status, 200);
}

/// A hub shutting down closes every agent's connection itself: that is not an alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_shutting_down_sends_no_agent_offline_alerts() {
    let mut service = PushService::start().await;
    let mut hub = TestHub::start_with(&NO_HEALTH_PUSH).await;
    let browser = Browser::new();
    subscribe(
        &hub,
        ADMIN,
        browser.subscription(&format!("{}/push/ops", service.base)),
    )
    .await;
    let mut agents = Vec::new();
    for i in 0..3 {
        let id = format!("s{i}");
        let token = hub.token(&id, "agent").await;
        agents.push(hub.identify(&id, &token, json!({})).await);
    }
    // One agent leaving while the hub runs is an alert (so pushes do work here).
    drop(agents.pop());
    assert_eq!(
        browser.decrypt(&service.next().await.body)["body"],
        "Agent offline: s2"
    );
    assert!(hub.terminate().await.success());
    assert!(
        service.quiet(Duration::from_millis(1000)).await.is_none(),
        "no alerts for the agents a shutdown disconnects"
    );
}
