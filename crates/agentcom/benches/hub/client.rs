//! HTTP/1.1 keep-alive clients: one request at a time per connection, and a closed-loop
//! load of many such connections for a while.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::support::ADMIN;

/// One keep-alive connection that sends a bearer token (the admin's unless told).
pub struct Client {
    addr: String,
    bearer: Option<String>,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    /// A connection that authenticates as the admin.
    pub async fn connect(addr: &str) -> Client {
        Client::connect_as(addr, Some(ADMIN)).await
    }

    /// A connection with `bearer` as its token, or none.
    pub async fn connect_as(addr: &str, bearer: Option<&str>) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client {
            addr: addr.to_string(),
            bearer: bearer.map(str::to_string),
            sender,
        }
    }

    /// One request; `Err` when the connection fails (the status is the caller's to judge).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr);
        if let Some(token) = &self.bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .expect("request");
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A JSON request that must get through; answers the status and the JSON body (null
    /// when the body is not JSON).
    pub async fn send(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, bytes) = self
            .request(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Submit a task as the admin; answers its id.
pub async fn submit_task(client: &mut Client, description: &str) -> String {
    let (status, body) = client
        .send(
            "POST",
            "/api/tasks",
            Some(json!({"description": description, "priority": "normal"})),
        )
        .await;
    assert_eq!(status, 201, "submit: {body}");
    body["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task_id in {body}"))
        .to_string()
}

/// Mint agent tokens `{prefix}-0..n` over `clients` connections; answers (id, token).
pub async fn mint_tokens(addr: &str, prefix: &str, n: usize) -> Vec<(String, String)> {
    let clients = 8.min(n.max(1));
    let mut minting = Vec::new();
    for c in 0..clients {
        let (addr, prefix) = (addr.to_string(), prefix.to_string());
        minting.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            let mut out = Vec::new();
            for i in (c..n).step_by(clients) {
                let id = format!("{prefix}-{i}");
                let (status, body) = client
                    .send(
                        "POST",
                        "/admin/tokens",
                        Some(json!({"agent_id": id, "role": "agent"})),
                    )
                    .await;
                assert_eq!(status, 201, "mint a token: {body}");
                out.push((i, id, body["token"].as_str().expect("token").to_string()));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for m in minting {
        all.extend(m.await.expect("minting"));
    }
    all.sort_by_key(|(i, _, _)| *i);
    all.into_iter().map(|(_, id, token)| (id, token)).collect()
}

/// What a closed-loop load did.
pub struct Load {
    pub ok: u64,
    pub failed: u64,
    pub per_s: f64,
}

/// `conns` keep-alive connections, each sending `method path` (with `body`) as soon as
/// its previous answer is in, for `run_for`; a 2xx counts as ok, anything else as failed.
pub async fn closed_loop(
    addr: &str,
    conns: usize,
    run_for: Duration,
    method: &'static str,
    path: &'static str,
    body: Option<Bytes>,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(Client::connect(addr).await);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for mut client in clients {
        let (stop, ok, failed, body) = (stop.clone(), ok.clone(), failed.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.request(method, path, body.clone()).await {
                    Ok((status, _)) if (200..300).contains(&status) => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => failed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
            }
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load connection");
    }
    let ok = ok.load(Ordering::Relaxed);
    Load {
        ok,
        failed: failed.load(Ordering::Relaxed),
        per_s: ok as f64 / start.elapsed().as_secs_f64(),
    }
}
