//! The websocket endpoints: the upgrade handshake, and the two tasks of each connection
//! (reader → session actor, session's outbound queue → writer).

use std::sync::Arc;
use std::time::Duration;

use agentcom_hub::sessions::{
    CloseReason, Inbound, QueuedFrame, SessionArgs, SessionIo, SessionKind, SessionMsg,
    INBOUND_IN_FLIGHT, OUTBOUND_QUEUE,
};
use agentcom_hub::waiting::{WaitingRoom, TRY_AGAIN_LATER};
use agentcom_hub::{Hub, Principal};
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use ractor::ActorRef;
use serde_json::Value;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::api::{caller, ApiError, ApiResult, Request};
use crate::server::App;

/// Outbound text goes out in frames of at most this many bytes (a longer message is
/// fragmented), so that a connection's write buffer never needs more than one of them.
const FRAGMENT_BYTES: usize = 16 << 10;

/// The most a connection's write buffer holds: one fragment, plus room for the pongs and
/// the close frame tungstenite queues itself (at most 129 bytes each). A client that
/// pings without reading fills it, and then its pongs wait instead of piling up.
const MAX_WRITE_BUFFER: usize = FRAGMENT_BYTES + (4 << 10);

/// The timers of one connection.
#[derive(Debug, Clone, Copy)]
struct Timers {
    /// No inbound frame for this long closes the socket (1000).
    idle: Duration,
    /// After this long without an inbound frame the hub pings the client: its pong (which
    /// websocket libraries send by themselves) keeps a quiet but live client connected, and
    /// counts as a sign of life for the reaper. A peer that is gone does not answer.
    ping_after: Duration,
    /// Deadline of every write, of the pongs owed and of the close handshake.
    send: Duration,
}

/// `GET /ws`: agents authenticate later, with `identify`.
pub async fn upgrade_agent(app: &App, req: Request) -> ApiResult {
    upgrade(app, req, SessionKind::Agent, None)
}

/// `GET /ws/dashboard`: needs an admin or viewer token on the upgrade request.
pub async fn upgrade_dashboard(app: &App, req: Request) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    if !who.role.may_view_dashboard() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden")
            .with("message", "the dashboard needs an admin or viewer token"));
    }
    upgrade(app, req, SessionKind::Dashboard, Some(who))
}

/// A `Sec-WebSocket-Key` is the base64 form of 16 bytes (RFC 6455 §4.1): 24 characters
/// ending in `==`.
fn valid_key(key: &HeaderValue) -> bool {
    let k = key.as_bytes();
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn header_has(req: &Request, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn upgrade(
    app: &App,
    mut req: Request,
    kind: SessionKind,
    principal: Option<Principal>,
) -> ApiResult {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade = header_has(&req, header::CONNECTION, "upgrade")
        && header_has(&req, header::UPGRADE, "websocket");
    let Some(key) = key.filter(|_| is_upgrade) else {
        let mut res = ApiError::new(StatusCode::UPGRADE_REQUIRED, "upgrade_required")
            .with("message", "this path only accepts websocket upgrades")
            .into_response();
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Ok(res);
    };
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(ApiError::bad_request("unsupported_websocket_version"));
    }
    if !valid_key(&key) {
        return Err(ApiError::bad_request("invalid_websocket_key")
            .with("message", "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let hub = app.hub.clone();
    let limit = app.settings.max_ws_message_bytes;
    let idle = app.settings.ws_idle_timeout;
    let timers = Timers {
        idle,
        ping_after: idle.min(app.hub.settings().presence_ttl) / 3,
        send: app.settings.ws_send_timeout,
    };
    let identify_within = (kind == SessionKind::Agent).then_some(app.settings.ws_identify_timeout);
    let waiting_room = (kind == SessionKind::Agent).then(|| app.waiting_room.clone());
    tokio::spawn(async move {
        // The set-up runs in its own short-lived (boxed) future, so that the task, which
        // lives as long as the connection, holds only what the read side needs.
        let setup = OpenArgs {
            kind,
            principal,
            limit,
            timers,
            identify_within,
            waiting_room,
        };
        let opened = Box::pin(open_socket(on_upgrade, hub, setup)).await;
        if let Some(socket) = opened {
            run_socket(socket, timers).await;
        }
    });
    let mut res = hyper::Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    Ok(res)
}

/// A connection whose session is open and whose writer task runs: what its reader needs.
struct OpenSocket<S> {
    source: SplitStream<WebSocketStream<S>>,
    session: ActorRef<SessionMsg>,
    writer: JoinHandle<WriterEnd>,
    kind: SessionKind,
    /// Tells the writer that a ping arrived, so the pong it owes must get out in time.
    pinged: Arc<Notify>,
    /// Tells the writer to ping the client (it has been quiet for `ping_after`).
    probe: Arc<Notify>,
}

/// What a new connection is opened with.
struct OpenArgs {
    kind: SessionKind,
    principal: Option<Principal>,
    limit: usize,
    timers: Timers,
    identify_within: Option<Duration>,
    waiting_room: Option<Arc<WaitingRoom>>,
}

/// Complete the upgrade, open the session and start the writer.
async fn open_socket(
    on_upgrade: OnUpgrade,
    hub: Hub,
    setup: OpenArgs,
) -> Option<OpenSocket<TokioIo<Upgraded>>> {
    let OpenArgs {
        kind,
        principal,
        limit,
        timers,
        identify_within,
        waiting_room,
    } = setup;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return None;
        }
    };
    let config = WebSocketConfig::default()
        // Small: an idle connection keeps its read buffer (docs/BENCHMARKS.md); larger
        // messages still arrive, in more reads.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let stream =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    // futures' channel holds `buffer` frames plus one per sender (the session is the one).
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE - 1);
    let (close_tx, close_rx) = watch::channel(None);
    let args = SessionArgs {
        kind,
        principal,
        io: SessionIo {
            outbound: out_tx,
            close: close_tx,
        },
        identify_within,
        waiting_room,
    };
    let (mut sink, source) = stream.split();
    let session = match hub.open_session(args).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not open a session");
            let _ = timeout(timers.send, sink.send(close(1011, "hub unavailable"))).await;
            return None;
        }
    };
    let pinged = Arc::new(Notify::new());
    let probe = Arc::new(Notify::new());
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        close_rx,
        [pinged.clone(), probe.clone()],
        timers.send,
    ));
    Some(OpenSocket {
        source,
        session,
        writer,
        kind,
        pinged,
        probe,
    })
}

/// Read until the connection ends or the writer gives up, end the session, and drop the
/// connection once the close handshake is done or its deadline has passed.
async fn run_socket<S>(socket: OpenSocket<S>, timers: Timers)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let OpenSocket {
        mut source,
        session,
        mut writer,
        kind,
        pinged,
        probe,
    } = socket;
    let reading = read_loop(&mut source, &session, timers, kind, [&pinged, &probe]);
    tokio::pin!(reading);
    tokio::select! {
        end = &mut reading => {
            match end {
                // The session closes the socket itself, after the frames it already queued.
                Some(reason) => {
                    if session.send_message(SessionMsg::Close(reason)).is_err() {
                        session.stop(None);
                    }
                }
                None => session.stop(Some("connection closed".into())),
            }
            // The writer sends the close frame, each write within its deadline; a session
            // too busy to answer does not hold the connection either.
            if timeout(timers.send * 2, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        ended = &mut writer => {
            session.stop(Some("connection closed".into()));
            if let Ok(WriterEnd::CloseSent) = ended {
                // The close handshake: the client's close (or its end of the connection)
                // within the deadline.
                let _ = timeout(timers.send, &mut reading).await;
            }
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

/// Read frames until the client goes away (`None`), the connection idles out or a frame
/// breaks a limit (the close to send); each understood frame goes to the session actor.
/// A client quiet for `ping_after` is pinged; the pong that answers it is a sign of life
/// (unasked-for pongs only count as frames, so they cannot flood the session).
///
/// Backpressure: at most [`INBOUND_IN_FLIGHT`] frames are with the session at once. While
/// they all are, the socket is not read (nor the idle timer run), so a client that sends
/// faster than its session handles frames fills its TCP window and waits.
async fn read_loop<S>(
    source: &mut SplitStream<WebSocketStream<S>>,
    session: &ActorRef<SessionMsg>,
    timers: Timers,
    kind: SessionKind,
    [pinged, probe]: [&Notify; 2],
) -> Option<CloseReason>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let in_flight = Arc::new(Semaphore::new(INBOUND_IN_FLIGHT));
    let mut probing = false;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return None;
        };
        let quiet_since = Instant::now();
        let next = match tokio::time::timeout(timers.ping_after, source.next()).await {
            Ok(next) => next,
            Err(_) => {
                probe.notify_one();
                probing = true;
                let left = timers.idle.saturating_sub(quiet_since.elapsed());
                match tokio::time::timeout(left, source.next()).await {
                    Err(_) => return Some(CloseReason::new(1000, "idle timeout")),
                    Ok(next) => next,
                }
            }
        };
        let frame = next?;
        let inbound = match frame {
            Ok(Message::Text(text)) => parse(text.as_str(), kind),
            Ok(Message::Binary(_)) => Inbound::Malformed("binary_frames_not_supported"),
            Ok(Message::Close(_)) => return None,
            Ok(Message::Ping(_)) => {
                pinged.notify_one();
                continue;
            }
            Ok(Message::Pong(_)) => {
                if std::mem::take(&mut probing) {
                    let _ = session.send_message(SessionMsg::Alive);
                }
                continue;
            }
            Ok(_) => continue,
            Err(WsError::Capacity(_)) => return Some(CloseReason::new(1009, "message too big")),
            Err(WsError::Protocol(e)) => {
                // The detail goes to the log: a close reason must fit in 123 bytes.
                tracing::debug!(error = %e, "websocket protocol error");
                return Some(CloseReason::new(1002, "protocol error"));
            }
            Err(WsError::Utf8(_)) => return Some(CloseReason::new(1007, "invalid UTF-8 text")),
            Err(_) => return None,
        };
        if session
            .send_message(SessionMsg::Received(inbound, permit))
            .is_err()
        {
            return None;
        }
    }
}

fn parse(text: &str, kind: SessionKind) -> Inbound {
    if !agentcom_core::json::client_depth_ok(text.as_bytes()) {
        return Inbound::Malformed("invalid_json");
    }
    match (serde_json::from_str::<Value>(text), kind) {
        (Err(_), _) => Inbound::Malformed("invalid_json"),
        (Ok(v), SessionKind::Agent) => Inbound::Agent(crate::frames::parse_agent(v)),
        (Ok(v), SessionKind::Dashboard) => Inbound::Dashboard(crate::frames::parse_dashboard(v)),
    }
}

/// How the writer ended.
enum WriterEnd {
    /// The close frame went out: the client may still answer it.
    CloseSent,
    /// The close frame went out to a connection shed to make room (1013): its answer is
    /// not waited for, so that its slot is free at once.
    Shed,
    /// A write failed or missed its deadline: the connection is to be dropped now.
    Broken,
}

/// The client did not take a write within its deadline, or the connection failed.
struct Stalled;

/// Send one message, waiting at most until `deadline`. A write buffer full of pongs
/// (a client that pings without reading) is flushed first, within the same deadline.
async fn send_by<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    mut message: Message,
    deadline: Instant,
) -> Result<(), Stalled>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match timeout_at(deadline, sink.send(message)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(WsError::WriteBufferFull(back))) => {
                message = *back;
                if !matches!(timeout_at(deadline, sink.flush()).await, Ok(Ok(()))) {
                    return Err(Stalled);
                }
            }
            Ok(Err(_)) | Err(_) => return Err(Stalled),
        }
    }
}

/// Send a text message in fragments of at most [`FRAGMENT_BYTES`] (cut at character
/// boundaries), each within `limit`.
async fn send_text<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    text: Utf8Bytes,
    limit: Duration,
) -> Result<(), Stalled>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if text.len() <= FRAGMENT_BYTES {
        return send_by(sink, Message::Text(text), Instant::now() + limit).await;
    }
    let bytes = Bytes::from(text);
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + FRAGMENT_BYTES).min(bytes.len());
        // Back up to a character boundary: continuation bytes are 0b10xx_xxxx.
        while end < bytes.len() && bytes[end] & 0xc0 == 0x80 {
            end -= 1;
        }
        let opcode = if start == 0 {
            OpCode::Data(OpData::Text)
        } else {
            OpCode::Data(OpData::Continue)
        };
        let frame = Frame::message(bytes.slice(start..end), opcode, end == bytes.len());
        send_by(sink, Message::Frame(frame), Instant::now() + limit).await?;
        start = end;
    }
    Ok(())
}

/// Send the close frame and flush (which also sends a close reply tungstenite owes the
/// client), within `limit`.
async fn send_close<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    reason: &CloseReason,
    limit: Duration,
) -> WriterEnd
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = Instant::now() + limit;
    let sent = send_by(sink, close(reason.code, &reason.reason), deadline).await;
    let flushed = timeout_at(deadline, sink.flush()).await;
    match (sent, flushed) {
        (Ok(()), Ok(Ok(()))) if reason.code == TRY_AGAIN_LATER => WriterEnd::Shed,
        (Ok(()), Ok(Ok(()))) => WriterEnd::CloseSent,
        _ => WriterEnd::Broken,
    }
}

/// Encode and send what the session queues; send the close frame it asks for; get the
/// pongs owed to the client's pings out. Every write has the deadline `limit`: a client
/// that does not read within it is cut off.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut outbound: mpsc::Receiver<QueuedFrame>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    [pinged, probe]: [Arc<Notify>; 2],
    limit: Duration,
) -> WriterEnd
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ended = || CloseReason::new(1011, "session ended");
    loop {
        tokio::select! {
            biased;
            changed = close_rx.changed() => {
                // A close was asked for, or the session ended (its sender is gone).
                let reason = close_rx.borrow().clone();
                match (changed, reason) {
                    (_, Some(reason)) => return send_close(&mut sink, &reason, limit).await,
                    (Err(_), None) => return send_close(&mut sink, &ended(), limit).await,
                    (Ok(()), None) => {}
                }
            }
            () = pinged.notified() => {
                if !matches!(timeout(limit, sink.flush()).await, Ok(Ok(()))) {
                    tracing::debug!("websocket client does not read its pongs; dropping it");
                    return WriterEnd::Broken;
                }
            }
            () = probe.notified() => {
                let ping = Message::Ping(Bytes::new());
                if send_by(&mut sink, ping, Instant::now() + limit).await.is_err() {
                    tracing::debug!("websocket client does not read; dropping it");
                    return WriterEnd::Broken;
                }
            }
            frame = outbound.next() => match frame {
                Some(frame) => {
                    let text = crate::frames::encode_shared(&frame);
                    drop(frame);
                    if send_text(&mut sink, text, limit).await.is_err() {
                        tracing::debug!("websocket client does not read; dropping it");
                        return WriterEnd::Broken;
                    }
                }
                None => {
                    // The session ended without asking for a close: a crash or a stop.
                    let reason = close_rx.borrow().clone().unwrap_or_else(ended);
                    return send_close(&mut sink, &reason, limit).await;
                }
            },
        }
    }
}
