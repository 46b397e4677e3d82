//! Black-box tests of the dashboard's sign-in (SPEC §6: the page authenticates in a
//! browser-friendly way that keeps tokens out of URLs). The cookie holds a session secret,
//! never the token; the session ends at sign-out (server-side, so a copied cookie is worth
//! nothing afterwards), when its token is revoked, or after 7 days.

mod common;

use common::{request_with, TestHub, ADMIN};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

struct SignedIn {
    /// `agentcom_session=<secret>`, as the browser sends it back.
    cookie: String,
    set_cookie: String,
}

async fn login(hub: &TestHub, token: &str) -> (u16, Value, Option<SignedIn>) {
    let r = hub
        .send_json(
            "POST",
            "/api/dashboard/login",
            None,
            json!({"token": token}),
        )
        .await;
    let signed_in = r
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .map(|set_cookie| SignedIn {
            cookie: set_cookie.split(';').next().unwrap().to_string(),
            set_cookie,
        });
    (r.status, r.json, signed_in)
}

/// Open `/ws/dashboard` with a session cookie on the upgrade.
async fn dashboard_ws(hub: &TestHub, cookie: &str) -> common::WsStream {
    let mut req = format!("ws://{}/ws/dashboard", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let stream = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("upgrade with the session cookie");
    ws
}

async fn with_cookie(hub: &TestHub, method: &str, path: &str, cookie: &str) -> common::Reply {
    request_with(&hub.addr, method, path, &[("cookie", cookie)], None).await
}

/// Every file under `dir`, read whole.
fn all_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_holds_a_session_secret_that_works_like_the_token() {
    let hub = TestHub::start().await;
    let viewer = hub.token("screen", "viewer").await;
    let (status, body, signed_in) = login(&hub, &viewer).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "signed_in", "agent_id": "screen", "role": "viewer"})
        )
    );
    let SignedIn { cookie, set_cookie } = signed_in.expect("a session cookie");
    let secret = cookie.strip_prefix("agentcom_session=").expect(&set_cookie);
    assert!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{set_cookie}"
    );
    assert_ne!(secret, viewer, "the cookie never holds the token");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=604800"] {
        assert!(
            set_cookie.split("; ").any(|a| a == attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain-http hub: {set_cookie}"
    );

    let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &cookie).await;
    assert_eq!(
        (r.status, r.json),
        (
            200,
            json!({"signed_in": true, "agent_id": "screen", "role": "viewer"})
        )
    );
    let r = with_cookie(&hub, "GET", "/api/dashboard/state", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    // A viewer's session is not an admin's.
    let r = with_cookie(&hub, "GET", "/api/admin/actors", &cookie).await;
    assert_eq!(r.status, 403, "{r:?}");

    // The dashboard websocket accepts the cookie on the upgrade.
    let mut ws = dashboard_ws(&hub, &cookie).await;
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("a frame")
        .expect("open")
        .unwrap();
    let Message::Text(text) = first else {
        panic!("{first:?}")
    };
    let frame: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(frame["type"], "snapshot");

    // A cookie carrying a token (or anything that is not a live session) is refused.
    for fake in [
        format!("agentcom_session={viewer}"),
        format!("agentcom_session={ADMIN}"),
    ] {
        let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &fake).await;
        assert_eq!(r.status, 401, "{fake}: {r:?}");
    }
    // Another cookie, or an empty one, is no credential at all: not signed in.
    for fake in [
        format!("agentcom_token={viewer}"),
        "agentcom_session=".into(),
    ] {
        let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &fake).await;
        assert_eq!(
            (r.status, r.json),
            (200, json!({"signed_in": false})),
            "{fake}"
        );
    }

    // Neither the token nor the session secret is in any file of the data directory.
    for (path, bytes) in all_files(hub.data_dir()) {
        for needle in [secret, viewer.as_str()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds a raw secret",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_session_for_every_copy_of_the_cookie() {
    let hub = TestHub::start().await;
    let (_, _, signed_in) = login(&hub, ADMIN).await;
    let cookie = signed_in.unwrap().cookie;
    // A second sign-in is a separate session.
    let (_, _, other) = login(&hub, ADMIN).await;
    let other = other.unwrap().cookie;
    assert_ne!(cookie, other);

    let r = with_cookie(&hub, "POST", "/api/dashboard/logout", &cookie).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (200, json!({"status": "signed_out"}))
    );
    let cleared = r.headers["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("agentcom_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // Replaying the old cookie (say, copied before the sign-out) no longer works.
    let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &cookie).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &other).await;
    assert_eq!(r.status, 200, "the other session is untouched: {r:?}");
    // Signing out without a session is harmless.
    let r = hub
        .send_json("POST", "/api/dashboard/logout", None, json!({}))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_token_ends_its_sessions_and_sessions_survive_restarts() {
    let mut hub = TestHub::start().await;
    let viewer = hub.token("screen", "viewer").await;
    let (_, _, signed_in) = login(&hub, &viewer).await;
    let screen = signed_in.unwrap().cookie;
    let (_, _, signed_in) = login(&hub, ADMIN).await;
    let admin = signed_in.unwrap().cookie;

    hub.restart().await;
    for cookie in [&screen, &admin] {
        let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", cookie).await;
        assert_eq!(r.status, 200, "a session outlives a restart: {r:?}");
    }

    let r = hub
        .request("DELETE", "/admin/tokens/screen", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &screen).await;
    assert_eq!(r.status, 401, "the revoked token's session ends: {r:?}");
    let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &admin).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_and_viewer_tokens_sign_in() {
    let hub = TestHub::start().await;
    let agent = hub.token("worker", "agent").await;
    let (status, body, cookie) = login(&hub, &agent).await;
    assert_eq!((status, &body["error"]), (403, &json!("forbidden")));
    assert!(cookie.is_none());
    let (status, _, cookie) = login(&hub, &"0".repeat(64)).await;
    assert_eq!(status, 401);
    assert!(cookie.is_none());
    let r = hub
        .send_json("POST", "/api/dashboard/login", None, json!({"token": 5}))
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    // No credential at all (a signed-out page load): answered, not an error.
    let r = hub.get("/api/dashboard/whoami", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json, json!({"signed_in": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_when_the_hub_is_published_over_https() {
    let hub = TestHub::start_with(&["--public-url", "https://hub.example.org"]).await;
    let (_, _, signed_in) = login(&hub, ADMIN).await;
    let set_cookie = signed_in.unwrap().set_cookie;
    assert!(
        set_cookie.split("; ").any(|a| a == "Secure"),
        "{set_cookie}"
    );
}

/// A dashboard socket opened with a sign-in closes (4003) when the sign-in expires, as at
/// sign-out, instead of streaming on with a credential that no longer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_dashboard_closes_when_its_sign_in_expires() {
    let hub = TestHub::start_with(&["--dashboard-session-ttl", "2s"]).await;
    let viewer = hub.token("screen", "viewer").await;
    let (status, _, signed_in) = login(&hub, &viewer).await;
    assert_eq!(status, 200);
    let cookie = signed_in.expect("a session cookie").cookie;
    let mut ws = dashboard_ws(&hub, &cookie).await;
    let opened = std::time::Instant::now();
    let code = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s");
        match frame {
            Some(Ok(Message::Close(Some(c)))) => break u16::from(c.code),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 4003);
    assert!(opened.elapsed() < std::time::Duration::from_secs(5));
    let r = with_cookie(&hub, "GET", "/api/dashboard/whoami", &cookie).await;
    assert_eq!(r.status, 401, "{r:?}");
}
