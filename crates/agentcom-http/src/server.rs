//! Accepting connections and serving them until shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentcom_hub::waiting::WaitingRoom;
use agentcom_hub::Hub;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{BodyTimeout, Request, Response};
use crate::connections::{refuse, Admission, Connections, SlottedStream, OVER_CAP_BODY};
use crate::rate::{PeerAddr, PeerLimits, MAX_PEERS};
use crate::routes::{dispatch, Router};
use crate::HttpSettings;

/// Shared by every request.
pub struct App {
    pub hub: Hub,
    pub settings: HttpSettings,
    pub router: Router,
    /// Agent websockets that have not identified yet (at most `max_unidentified`).
    pub waiting_room: Arc<WaitingRoom>,
    /// Unauthenticated requests that cost something, per peer address.
    pub peer_limits: PeerLimits,
}

/// Serve HTTP and websockets on an already-bound listener until `shutdown` completes;
/// then stop accepting, let requests in flight finish (up to 10 s) and return. The caller
/// shuts the hub down afterwards (which closes websockets with 1001).
///
/// A connection must send a request's headers within `header_read_timeout` of opening or
/// of its previous answer (hyper's header timer also runs while a keep-alive connection
/// waits), and at most `max_connections` are open at once (see [`Connections`]).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    settings: HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Connections::new(settings.max_connections));
    let app_header_read_timeout = settings.header_read_timeout;
    let app = Arc::new(App {
        hub,
        waiting_room: WaitingRoom::new(settings.max_unidentified),
        peer_limits: PeerLimits::new(settings.anonymous_rate_limit, MAX_PEERS),
        settings,
        router: Router::new(),
    });
    // Connections watch `stopping`; each holds a clone of `alive`, so `all_done` ends
    // once every connection has finished.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let connections = connections.clone();
                let mut stopping = stopping.clone();
                let alive = alive.clone();
                tokio::spawn(async move {
                    let slot = match connections.admit().await {
                        Admission::Slot(slot) => slot,
                        Admission::OverCap(over_cap) => {
                            serve_over_cap(app, stream, peer.ip()).await;
                            drop(over_cap);
                            drop(alive);
                            return;
                        }
                        Admission::Refused => {
                            tracing::debug!("far over the connection cap: refused");
                            refuse(stream).await;
                            drop(alive);
                            return;
                        }
                    };
                    let (tracked, _tracked_guard) = connections.track();
                    let in_service = tracked.clone();
                    let service = service_fn(move |req| {
                        let request = connections.request(&in_service);
                        let app = app.clone();
                        async move {
                            let response = handle(app, req, peer.ip()).await;
                            drop(request);
                            response
                        }
                    });
                    let may_linger = Arc::new(AtomicBool::new(true));
                    let stream = SlottedStream::new(stream, slot, may_linger.clone());
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(app_header_read_timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    // Close when the server stops, or when shed to make room at the cap;
                    // either way a request in flight is finished first.
                    let close = async {
                        tokio::select! {
                            _ = stopping.wait_for(|s| *s) => {}
                            _ = tracked.shed.notified() => {}
                        }
                    };
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        _ = close => {
                            may_linger.store(false, Ordering::Release);
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(alive);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(alive);
    if tokio::time::timeout(Duration::from_secs(10), all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish within 10 s");
    }
}

/// One request on a connection over the cap: `/health` is answered, anything else gets
/// 503 `too_many_connections`; then the connection closes.
async fn serve_over_cap(app: Arc<App>, stream: TcpStream, peer: IpAddr) {
    let header_read_timeout = app.settings.header_read_timeout.min(Duration::from_secs(5));
    let service = service_fn(move |req: Request| {
        let app = app.clone();
        async move {
            if req.uri().path() == "/health" && req.method() == http::Method::GET {
                return handle(app, req, peer).await;
            }
            let mut res =
                hyper::Response::new(Full::new(Bytes::from_static(OVER_CAP_BODY.as_bytes())));
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            let headers = res.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json; charset=utf-8"),
            );
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            Ok::<_, Infallible>(res)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection over the cap ended with an error");
    }
}

async fn handle(app: Arc<App>, mut req: Request, peer: IpAddr) -> Result<Response, Infallible> {
    req.extensions_mut()
        .insert(BodyTimeout(app.settings.body_timeout));
    req.extensions_mut().insert(PeerAddr(peer));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut response = match dispatch(&app, req).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    };
    if response.status() == http::StatusCode::REQUEST_TIMEOUT {
        // The rest of a stalled body is not waited for: the connection ends here.
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    Ok(response)
}
