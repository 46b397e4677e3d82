//! The baseline for HTTP routes: a bare hyper server (HTTP/1.1, keep-alive) that reads
//! each request's body and answers a fixed status and body per path, and nothing else.
//! It runs on a runtime of its own with as many worker threads as the hub's (one per
//! core), so the same load generator measures the cost of HTTP and of the same bytes,
//! without the hub's routing, authentication, JSON or actors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The answer for each path: status and body (always `application/json`).
pub type Answers = HashMap<String, (u16, Bytes)>;

pub struct BareServer {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareServer {
    pub fn start(answers: Answers) -> BareServer {
        let answers = Arc::new(answers);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
                .enable_all()
                .build()
                .expect("bare server runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("address").to_string())
                    .expect("hand over the address");
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => accepted.expect("accept").0,
                        _ = &mut stopped => return,
                    };
                    stream.set_nodelay(true).expect("nodelay");
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let answers = answers.clone();
                                async move {
                                    let path = req.uri().path().to_string();
                                    let _ = req.into_body().collect().await;
                                    let (status, body) =
                                        answers.get(&path).cloned().unwrap_or((404, Bytes::new()));
                                    Ok::<_, Infallible>(
                                        hyper::Response::builder()
                                            .status(status)
                                            .header("content-type", "application/json")
                                            .body(Full::new(body))
                                            .expect("response"),
                                    )
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        BareServer {
            addr: addr_rx.recv().expect("the bare server's address"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
