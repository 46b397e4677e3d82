//! Black-box test harness: starts the real `agentcom` binary on a free loopback port with
//! a temporary data directory and short timers, and talks to it over HTTP and websockets.
//! Every hub started here is killed when its handle is dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The admin token every test hub is started with.
pub const ADMIN: &str = "adadadadadadadadadadadadadadadadadadadadadadadadadadadadadadadad";

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentcom"))
}

/// A running hub process.
pub struct TestHub {
    pub addr: String,
    child: Option<Child>,
    /// The data directory, removed with the hub when it is a temporary one.
    data: Option<tempfile::TempDir>,
    data_path: PathBuf,
    extra_args: Vec<String>,
    /// A program the hub runs under (`strace …`), empty for none.
    wrapper: Vec<String>,
}

impl TestHub {
    /// Start a hub with test hooks on and short timers.
    pub async fn start() -> TestHub {
        TestHub::start_with(&[]).await
    }

    /// Start a hub with extra `serve` flags.
    pub async fn start_with(extra: &[&str]) -> TestHub {
        TestHub::start_wrapped(&[], extra).await
    }

    /// Start a hub under another program: `wrapper` followed by the hub's command line.
    pub async fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> TestHub {
        let data = tempfile::tempdir().expect("temp dir");
        let extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let wrapper: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn(&wrapper, data.path(), &extra_args).await;
        TestHub {
            addr,
            child: Some(child),
            data_path: data.path().to_path_buf(),
            data: Some(data),
            extra_args,
            wrapper,
        }
    }

    /// Start a hub on the data directory `data_dir` (created by the hub if absent, kept
    /// when the hub is dropped), with extra `serve` flags.
    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> TestHub {
        let extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn(&[], data_dir, &extra_args).await;
        TestHub {
            addr,
            child: Some(child),
            data: None,
            data_path: data_dir.to_path_buf(),
            extra_args,
            wrapper: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_path
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("hub running")
    }

    /// Send SIGKILL now, without waiting (for killing straight after an acknowledgement).
    pub fn kill9_now(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.start_kill().expect("kill");
        }
    }

    /// `kill -9` the hub and wait until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill");
            let _ = child.wait().await;
        }
    }

    /// Send SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("hub running");
        let pid = child.id().expect("pid") as i32;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("hub exits after SIGTERM")
            .expect("exit status")
    }

    /// Start the hub again on the same data directory (a new port).
    pub async fn restart(&mut self) {
        self.kill9().await;
        let (child, addr) = spawn(&self.wrapper, &self.data_path, &self.extra_args).await;
        self.child = Some(child);
        self.addr = addr;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// One HTTP request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        request(&self.addr, method, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request("GET", path, token, None).await
    }

    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Reply {
        request_json(&self.addr, method, path, token, body).await
    }

    /// Mint a token through the admin API.
    pub async fn token(&self, agent_id: &str, role: &str) -> String {
        let r = self
            .send_json(
                "POST",
                "/admin/tokens",
                Some(ADMIN),
                serde_json::json!({"agent_id": agent_id, "role": role}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json["token"].as_str().expect("token").to_string()
    }

    /// Open a websocket on `path`, with a Bearer token if given.
    pub async fn ws(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}{}", self.addr, path).into_client_request()?;
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        let stream = TcpStream::connect(&self.addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(req, stream).await?;
        Ok(Ws { inner: ws })
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

async fn spawn(wrapper: &[String], data: &Path, extra: &[String]) -> (Child, String) {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(binary());
            cmd
        }
        None => Command::new(binary()),
    };
    cmd.arg("serve")
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data)
        .arg("--admin-token")
        .arg(ADMIN)
        .args(extra)
        .env("AGENTCOM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if !extra.iter().any(|a| a == "--test-hooks") {
        cmd.arg("--test-hooks");
    }
    let mut child = cmd.spawn().expect("start agentcom");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.strip_prefix("AgentCom listening on http://") {
                return rest.trim().to_string();
            }
        }
        panic!("agentcom exited before listening");
    })
    .await
    .expect("agentcom starts within 30 s");
    // Keep draining stdout so the hub never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The body parsed as JSON (Null when it is not JSON).
    pub json: Value,
}

pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    try_request(addr, method, path, token, body)
        .await
        .expect("request completes")
}

/// As [`request`], but a connection failure (say, the hub was killed) is an `Err`.
pub async fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Reply, String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    try_request_with(addr, method, path, &headers, body).await
}

/// A request with the given extra headers (e.g. a cookie).
pub async fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    try_request_with(addr, method, path, headers, body)
        .await
        .expect("request completes")
}

async fn try_request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let bytes = match body {
        Some((content_type, bytes)) => {
            builder = builder.header("content-type", content_type);
            bytes
        }
        None => Vec::new(),
    };
    let req = builder
        .body(Full::new(Bytes::from(bytes)))
        .expect("request");
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        content_type,
        headers,
        body,
        json,
    })
}

/// A websocket client.
pub struct Ws {
    pub inner: WebSocketStream<TcpStream>,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn send_json(&mut self, v: Value) {
        self.inner
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.inner
            .send(Message::Text(s.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.inner
            .send(Message::Binary(b.into()))
            .await
            .expect("send");
    }

    /// The next JSON frame or close, within `within`.
    pub async fn next(&mut self, within: Duration) -> Frame {
        self.next_by(tokio::time::Instant::now() + within)
            .await
            .expect("a frame arrives in time")
    }

    /// The next JSON frame or close before `deadline`; `None` if nothing came by then.
    pub async fn next_by(&mut self, deadline: tokio::time::Instant) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inner.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(Frame::Json(
                        serde_json::from_str(t.as_str()).expect("json frame"),
                    ))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Frame::Closed(frame.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Frame::Closed(None)),
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next(Duration::from_secs(10)).await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Wait for the close frame and return its code.
    pub async fn closed(&mut self, within: Duration) -> Option<u16> {
        loop {
            match self.next(within).await {
                Frame::Closed(code) => return code,
                Frame::Json(_) => continue,
            }
        }
    }
}

/// Pushes an agent may get at any time, as opposed to replies.
pub const PUSHES: &[&str] = &[
    "agent_joined",
    "agent_left",
    "status_changed",
    "message",
    "channel_message",
    "channel_agent_joined",
    "task_assign",
];

/// Current time as Unix epoch milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

impl TestHub {
    /// Connect to `/ws` and identify as `agent_id` with `token` (and any `extra` identify
    /// fields, e.g. capabilities); panics unless the hub answers `identified`.
    pub async fn identify(&self, agent_id: &str, token: &str, extra: Value) -> Ws {
        let mut frame =
            serde_json::json!({"type": "identify", "agent_id": agent_id, "token": token});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            frame[k] = v;
        }
        let mut ws = self.ws("/ws", None).await.expect("connect /ws");
        ws.send_json(frame).await;
        let reply = ws.next_of_type("identified").await;
        assert_eq!(
            reply,
            serde_json::json!({"type": "identified", "agent_id": agent_id})
        );
        ws
    }
}

impl Ws {
    /// The next frame of type `ty` within 10 s, skipping other pushes; panics on an error
    /// frame (unless waiting for one) or a close.
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout(left, self.next(Duration::from_secs(600))).await;
            match frame {
                Err(_) => panic!("no {ty:?} frame within 10 s; skipped {skipped:?}"),
                Ok(Frame::Json(v)) if v["type"] == ty => return v,
                Ok(Frame::Json(v)) if v["type"] == "error" => {
                    panic!("error frame while waiting for {ty:?}: {v}")
                }
                Ok(Frame::Json(v)) => skipped.push(v),
                Ok(Frame::Closed(code)) => {
                    panic!("socket closed ({code:?}) while waiting for {ty:?}; skipped {skipped:?}")
                }
            }
        }
    }
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The lossyfs daemon (crates/lossyfs), built beside the hub by the workspace test run.
pub fn lossyfs_binary() -> PathBuf {
    binary().with_file_name("lossyfs")
}

/// A lossyfs mount: a FUSE file system over `backing` whose daemon keeps written data in
/// memory until the file is fsynced. Killing the daemon is a power cut. Dropping the
/// handle cuts the power too (and detaches the mount).
pub struct LossyMount {
    pub mountpoint: PathBuf,
    daemon: Option<std::process::Child>,
    mounted: bool,
}

impl LossyMount {
    /// Mount lossyfs over `backing` on `mountpoint` (both existing directories). Fails
    /// (never skips) without /dev/fuse or the lossyfs binary.
    pub fn mount(backing: &Path, mountpoint: &Path) -> LossyMount {
        use std::io::BufRead;
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the power-loss drill needs FUSE (and root) to mount lossyfs"
        );
        let bin = lossyfs_binary();
        assert!(
            bin.exists(),
            "{} is missing: `cargo build -p lossyfs` (the workspace test run builds it)",
            bin.display()
        );
        let mut daemon = std::process::Command::new(&bin)
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lossyfs");
        let mut line = String::new();
        let _ = std::io::BufReader::new(daemon.stdout.take().expect("stdout")).read_line(&mut line);
        assert!(
            line.starts_with("lossyfs: mounted"),
            "lossyfs did not mount {} (it needs /dev/fuse and root; see its error above)",
            mountpoint.display()
        );
        LossyMount {
            mountpoint: mountpoint.to_path_buf(),
            daemon: Some(daemon),
            mounted: true,
        }
    }

    /// From now on the daemon answers fsync without writing anything back, like a disk
    /// that lies about its flushes (SIGUSR1).
    pub fn ignore_fsync_from_now(&self) {
        let pid = self.daemon.as_ref().expect("daemon running").id() as i32;
        // SAFETY: signals our own child, which handles SIGUSR1.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    }

    /// The power cut: SIGKILL the daemon and wait until it is gone. Every write not yet
    /// fsynced is lost with its memory; the mount answers ENOTCONN from now on.
    pub fn kill_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }

    /// Kill the daemon if need be and detach the (dead) mount, as `umount -l` does.
    pub fn power_cut(&mut self) {
        self.kill_daemon();
        if let Err(e) = self.detach() {
            panic!("umount -l {}: {e}", self.mountpoint.display());
        }
    }

    fn detach(&mut self) -> std::io::Result<()> {
        if !std::mem::take(&mut self.mounted) {
            return Ok(());
        }
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .expect("no NUL in a path");
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // Not root: the setuid helper from Debian's fuse3 may detach a FUSE mount.
        if err.raw_os_error() == Some(libc::EPERM) {
            let helper = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mountpoint)
                .status();
            if helper.is_ok_and(|s| s.success()) {
                return Ok(());
            }
        }
        Err(err)
    }
}

impl Drop for LossyMount {
    fn drop(&mut self) {
        self.kill_daemon();
        let _ = self.detach();
    }
}

/// The resident memory (VmRSS) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB");
    kib << 10
}

/// The number of file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

impl TestHub {
    /// The hub's resident memory, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// The hub's open file descriptors.
    pub fn open_fds(&self) -> usize {
        open_fds(self.pid())
    }

    /// Whether the hub process is still running: it has not exited (a dead child stays a
    /// zombie until it is waited for, so the state letter is read, not just the entry).
    pub fn alive(&self) -> bool {
        let Some(pid) = self.child.as_ref().and_then(|c| c.id()) else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let after = stat.rsplit_once(')')?.1;
                after
                    .split_whitespace()
                    .next()
                    .map(|s| s != "Z" && s != "X")
            })
            .unwrap_or(false)
    }
}

/// A blocking TCP connection to `addr`, for clients that misbehave byte by byte.
pub fn connect(addr: &str) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Read until the peer closes (or 60 s pass); what was read.
pub fn read_to_close(s: &mut std::net::TcpStream) -> Result<String, String> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Err(e) => Err(format!(
            "not closed within 60 s ({e}); read so far: {:?}",
            String::from_utf8_lossy(&out)
        )),
    }
}

/// xorshift64: a tiny deterministic RNG, for seeded test schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds so neighbouring streams do not start correlated.
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..8 {
            r.next();
        }
        r
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One HTTP/1.1 request exactly as given — any method, path, header bytes and body (no
/// content type unless a header gives one) — on a fresh connection, written the way curl
/// does: the answer is read while the body is still being sent, so an answer the hub gives
/// before reading the body (401, 413) is seen even if the hub then closes the connection.
/// `Err` when the connection fails or closes without a complete answer.
pub async fn send_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Vec<u8>,
) -> Result<Reply, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut rx, mut tx) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The hub may answer and close before taking it all: that is its right.
        if tx.write_all(&head).await.is_ok() {
            let _ = tx.write_all(&body).await;
        }
        tx
    });
    let mut raw = Vec::new();
    let parsed = loop {
        let mut chunk = [0u8; 16 << 10];
        let n = rx.read(&mut chunk).await.unwrap_or(0);
        raw.extend_from_slice(&chunk[..n]);
        if let Some(reply) = parse_response(&raw, method == "HEAD", n == 0)? {
            break reply;
        }
        if n == 0 {
            return Err(format!(
                "the connection closed after {} bytes of an answer: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ));
        }
    };
    writer.abort();
    Ok(parsed)
}

/// A complete HTTP/1.1 response in `raw`, `None` if more is needed. Without a
/// content-length the body runs to the end of the connection (`at_end`).
fn parse_response(raw: &[u8], head_only: bool, at_end: bool) -> Result<Option<Reply>, String> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: {line:?}"))?;
        let name =
            http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_str(value.trim()).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    let rest = &raw[split + 4..];
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let body = match length {
        _ if head_only || status == 101 || status == 204 || status == 304 => &rest[..0],
        Some(n) if rest.len() >= n => &rest[..n],
        Some(_) => return Ok(None),
        None if at_end => rest,
        None => return Ok(None),
    };
    let body = Bytes::copy_from_slice(body);
    Ok(Some(Reply {
        status,
        content_type: headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string()),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
        body,
    }))
}

/// One request with a JSON body, on a fresh connection.
pub async fn request_json(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    request(
        addr,
        method,
        path,
        token,
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
}

/// A bare client websocket, for tests that drive many agents frame by frame.
pub type WsStream = WebSocketStream<TcpStream>;

/// What a bare websocket gave next.
pub enum In {
    Json(Value),
    Timeout,
    Closed,
}

/// The next text frame as JSON (within `within`), skipping other frames.
pub async fn recv(ws: &mut WsStream, within: Duration) -> In {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return In::Timeout,
            Ok(Some(Ok(Message::Text(t)))) => {
                return In::Json(serde_json::from_str(t.as_str()).unwrap_or(Value::Null))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return In::Closed,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Send `v` as a text frame; false if the socket is gone.
pub async fn send(ws: &mut WsStream, v: Value) -> bool {
    ws.send(Message::Text(v.to_string().into())).await.is_ok()
}

/// A number from the environment variable `name` (a test's size or duration knob), else
/// `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        Err(_) => default,
    }
}

/// A seed from the environment variable `name`, else a fresh one from the clock.
pub fn seed_from_env(name: &str) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
        }
    }
}

/// A client frame (masked with the all-zero key, so the payload is sent as is).
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// Read a raw websocket's frames from the hub, never answering (pings included), until its
/// close frame: the close code (`None` at the end of the connection or after `within`).
/// Also returns the opcodes of the frames before it.
pub async fn raw_close_code(stream: &mut TcpStream, within: Duration) -> (Option<u16>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut opcodes = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await.ok()?;
            let mut len = (head[1] & 0x7f) as usize;
            if len == 126 {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext).await.ok()?;
                len = u16::from_be_bytes(ext) as usize;
            } else if len == 127 {
                let mut ext = [0u8; 8];
                stream.read_exact(&mut ext).await.ok()?;
                len = u64::from_be_bytes(ext) as usize;
            }
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.ok()?;
            let opcode = head[0] & 0x0f;
            if opcode == 8 {
                return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
            opcodes.push(opcode);
        }
    };
    let code = tokio::time::timeout(within, read).await.ok().flatten();
    (code, opcodes)
}

/// Open a TCP connection to the hub and complete a websocket upgrade by hand.
pub async fn raw_upgrade(hub: &TestHub, path: &str) -> TcpStream {
    try_raw_upgrade(&hub.addr, path)
        .await
        .unwrap_or_else(|e| panic!("websocket upgrade of {path}: {e}"))
}

/// As [`raw_upgrade`], to any address, with the failure (no 101 within 10 s) as an `Err`.
pub async fn try_raw_upgrade(addr: &str, path: &str) -> Result<TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .map_err(|_| "no upgrade answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the upgrade".into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("not upgraded: {head}"));
    }
    Ok(stream)
}

/// `s` cut to something printable: runs of one character collapse to `c×n`, and the whole
/// is at most `max` characters.
pub fn abbreviate(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let mut run = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            run += 1;
        }
        if run > 8 {
            out.push_str(&format!("{c}×{run}"));
        } else {
            out.extend(std::iter::repeat_n(c, run));
        }
        if out.chars().count() > max {
            return out.chars().take(max).collect::<String>() + "…";
        }
    }
    out
}

/// Raise this process's open-file soft limit to its hard limit (for tests that open
/// thousands of sockets); the new soft limit.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A hub started by [`serve`].
pub struct Served {
    pub addr: String,
    pub child: tokio::process::Child,
}

impl Served {
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM: a clean shutdown.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the hub exits after SIGTERM")
            .expect("exit status");
        assert!(exit.success(), "clean shutdown: {exit:?}");
    }
}

/// What `agentcom serve` did with the data directory.
pub enum Started {
    Serving(Served),
    Refused { code: Option<i32>, stderr: String },
}

/// Run `agentcom serve` on `data` until it listens or exits (a refusal, with its stderr).
pub async fn serve(data: &Path) -> Started {
    let mut child = Command::new(binary())
        .arg("serve")
        .args(["--bind", "127.0.0.1:0", "--admin-token", ADMIN])
        .args(["--backup-interval", "1h"])
        .arg("--data-dir")
        .arg(data)
        .env("AGENTCOM_LOG", "warn")
        .env_remove("AGENTCOM_BACKUP_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start agentcom");
    let mut stderr = child.stderr.take().unwrap();
    let stderr_text = tokio::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        eprint!("{all}");
        all
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(rest) = line.strip_prefix("AgentCom listening on http://") {
                return Some(rest.trim().to_string());
            }
        }
        None
    })
    .await
    .expect("agentcom starts or exits within 60 s");
    match listening {
        Some(addr) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Started::Serving(Served { addr, child })
        }
        None => {
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .expect("exits")
                .expect("exit status");
            Started::Refused {
                code: status.code(),
                stderr: stderr_text.await.unwrap(),
            }
        }
    }
}
