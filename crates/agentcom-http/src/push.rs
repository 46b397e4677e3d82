//! The dashboard's Web Push routes (reference §2.2 routes 45–47).

use agentcom_hub::notifier::NotifierMsg;
use agentcom_hub::webpush::Subscription;
use agentcom_hub::CALL_TIMEOUT;
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::api::{caller, forbidden, ok, read_object, ApiError, ApiResult, Request, Response};
use crate::server::App;

/// The service worker the dashboard registers (reference §2.3).
const SERVICE_WORKER: &str = r#"// AgentCom dashboard service worker: shows pushed alerts.
self.addEventListener('push', function (event) {
  var data = {};
  try { data = event.data ? event.data.json() : {}; } catch (e) { data = {}; }
  var title = data.title || 'AgentCom';
  event.waitUntil(self.registration.showNotification(title, {
    body: data.body || 'New notification',
    icon: data.icon || '/favicon.ico',
    badge: data.badge,
    tag: 'agentcom-alert',
    renotify: true
  }));
});
self.addEventListener('notificationclick', function (event) {
  event.notification.close();
  event.waitUntil(clients.matchAll({ type: 'window' }).then(function (list) {
    for (var i = 0; i < list.length; i++) {
      if (list[i].url.indexOf('/dashboard') !== -1 && 'focus' in list[i]) { return list[i].focus(); }
    }
    return clients.openWindow('/dashboard');
  }));
});
"#;

/// Route 45.
pub fn service_worker() -> Response {
    let mut res = hyper::Response::new(Full::new(Bytes::from_static(SERVICE_WORKER.as_bytes())));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    h.insert("service-worker-allowed", HeaderValue::from_static("/"));
    res
}

/// Route 46: the VAPID public key (public by nature; open as in the original).
pub async fn vapid_key(app: &App) -> ApiResult {
    let key = app
        .hub
        .notifier
        .call(NotifierMsg::PublicKey, CALL_TIMEOUT)
        .await
        .map_err(agentcom_hub::HubError::from)?;
    Ok(ok(json!({ "vapid_public_key": key })))
}

/// Largest subscription document kept.
const MAX_SUBSCRIPTION_BYTES: usize = 4096;

/// Route 47: keep a browser's push subscription. Needs an admin or viewer token (the
/// original took anything from anyone into an unbounded set, S3) and a usable
/// subscription: an `https` endpoint and the browser's keys (400 `invalid_subscription`).
pub async fn subscribe(app: &App, req: Request) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    if !who.role.may_view_dashboard() {
        return Err(forbidden(
            "push subscriptions need an admin or viewer token",
        ));
    }
    let body = Value::Object(read_object(req, MAX_SUBSCRIPTION_BYTES).await?);
    // Plain-http loopback endpoints only for tests (a stand-in push service).
    let subscription =
        Subscription::from_json(&body, app.hub.settings().test_hooks).map_err(|message| {
            ApiError::bad_request("invalid_subscription").with("message", message)
        })?;
    app.hub
        .notifier
        .call(|r| NotifierMsg::Subscribe(subscription, r), CALL_TIMEOUT)
        .await
        .map_err(agentcom_hub::HubError::from)??;
    Ok(ok(json!({"status": "subscribed"})))
}

/// Route 44: the dashboard snapshot (admin or viewer token; the original left it open, S3).
pub async fn dashboard_state(app: &App, req: Request) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    if !who.role.may_view_dashboard() {
        return Err(forbidden("the dashboard needs an admin or viewer token"));
    }
    let snapshot = app.hub.dashboard_snapshot().await?;
    Ok(crate::api::json_text(
        hyper::StatusCode::OK,
        snapshot.rendered(crate::wire::snapshot),
    ))
}

/// The dashboard page, embedded in the binary (`web/dashboard.html`).
const DASHBOARD_PAGE: &str = include_str!("../../../web/dashboard.html");

/// Route 34: the dashboard page. It holds no data itself: it signs in with a token once
/// (`POST /api/dashboard/login`) and then reads everything over the dashboard websocket.
pub fn dashboard_page() -> Response {
    let mut res = hyper::Response::new(Full::new(Bytes::from_static(DASHBOARD_PAGE.as_bytes())));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:"));
    res
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site
/// sends it), and `Secure` when the hub is published over https.
fn set_session_cookie(app: &App, value: &str, max_age: u64) -> HeaderValue {
    let secure = app
        .settings
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        crate::api::SESSION_COOKIE,
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).expect("a hex secret is a valid cookie value")
}

/// Sign the dashboard in with a token (admin or viewer): the hub opens a session and
/// the browser gets its random secret in an HttpOnly cookie. The token itself is in no
/// URL, no script-readable place and no cookie; the session ends at sign-out, after 7
/// days, or when the token is revoked.
pub async fn login(app: &App, req: Request) -> ApiResult {
    let body = read_object(req, 4096).await?;
    let token = body
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    let who = app
        .hub
        .authenticate(&token)?
        .ok_or_else(crate::api::ApiError::unauthorized)?;
    if !who.role.may_view_dashboard() {
        return Err(forbidden("the dashboard needs an admin or viewer token"));
    }
    let secret = app.hub.dashboard_sign_in(&token).await?;
    let mut res =
        ok(json!({"status": "signed_in", "agent_id": who.agent_id, "role": who.role.as_str()}));
    let max_age = app.hub.settings().dashboard_session_ttl.as_secs();
    res.headers_mut().insert(
        header::SET_COOKIE,
        set_session_cookie(app, &secret, max_age),
    );
    Ok(res)
}

/// Who the dashboard is signed in as. A request with no credential at all (a signed-out
/// browser loading the page) is answered `{"signed_in":false}`, so that the page's first
/// question logs no error; a credential that does not hold is 401.
pub async fn whoami(app: &App, req: Request) -> ApiResult {
    let headers = req.headers();
    if crate::api::session_cookie(headers).is_none() && !headers.contains_key(header::AUTHORIZATION)
    {
        return Ok(ok(json!({"signed_in": false})));
    }
    let who = caller(&app.hub, headers)?;
    Ok(ok(
        json!({"signed_in": true, "agent_id": who.agent_id, "role": who.role.as_str()}),
    ))
}

/// Sign the dashboard out: the session ends in the hub (a copy of the cookie is worth
/// nothing afterwards) and the cookie is cleared.
pub async fn logout(app: &App, req: Request) -> ApiResult {
    if let Some(secret) = crate::api::session_cookie(req.headers()) {
        app.hub.dashboard_sign_out(secret).await?;
    }
    let mut res = ok(json!({"status": "signed_out"}));
    res.headers_mut()
        .insert(header::SET_COOKIE, set_session_cookie(app, "", 0));
    Ok(res)
}
