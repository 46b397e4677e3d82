//! The dashboard's Web Push routes (reference §2.2 routes 45–47).

use agentcom_hub::notifier::NotifierMsg;
use agentcom_hub::CALL_TIMEOUT;
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::api::{caller, forbidden, ok, read_object, ApiResult, Request, Response};
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
/// original took anything from anyone into an unbounded set, S3) and a JSON object.
pub async fn subscribe(app: &App, req: Request) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    if !who.role.may_view_dashboard() {
        return Err(forbidden(
            "push subscriptions need an admin or viewer token",
        ));
    }
    let body = read_object(req, MAX_SUBSCRIPTION_BYTES).await?;
    let text = Value::Object(body).to_string();
    app.hub
        .notifier
        .call(|r| NotifierMsg::Subscribe(text, r), CALL_TIMEOUT)
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
    Ok(ok(crate::wire::snapshot(&snapshot)))
}
