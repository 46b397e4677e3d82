//! Accepting connections and serving them until shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentcom_hub::Hub;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::api::{BodyTimeout, Request, Response};
use crate::routes::{dispatch, Router};
use crate::HttpSettings;

/// Shared by every request.
pub struct App {
    pub hub: Hub,
    pub settings: HttpSettings,
    pub router: Router,
}

/// Serve HTTP and websockets on an already-bound listener until `shutdown` completes;
/// then stop accepting, let requests in flight finish (up to 10 s) and return. The caller
/// shuts the hub down afterwards (which closes websockets with 1001).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    settings: HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let app = Arc::new(App {
        hub,
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
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |req| handle(app.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let mut stopping = stopping.clone();
                let alive = alive.clone();
                tokio::spawn(async move {
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
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

async fn handle(app: Arc<App>, mut req: Request) -> Result<Response, Infallible> {
    req.extensions_mut()
        .insert(BodyTimeout(app.settings.body_timeout));
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
