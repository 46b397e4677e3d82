//! The cap on open connections, and how a new connection finds room at the cap.
//!
//! Every open connection, websockets included, holds a slot ([`Slot`], carried by its socket
//! so that it lives on in an upgraded websocket). At the cap a new connection sheds the
//! connection that has been idle the longest (waiting for a request, never one with a
//! request in flight) and takes its slot: idle sockets cannot lock out `/health` or anyone
//! else. When nothing is idle (every slot has a request in flight or is a websocket), the
//! new connection waits a moment for a slot; then it is served one request over the cap,
//! where only `/health` is answered and everything else gets 503. At most a sixteenth of
//! the cap is served over it, or waits; beyond that a connection gets 503 at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a connection at the cap waits for a slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// The open connections of one server.
pub struct Connections {
    slots: Arc<Semaphore>,
    /// Connections waiting for a slot; at most `max_waiting`, the rest are refused at once.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Connections served over HTTP/1 (not upgraded), by id: those that may be shed.
    served: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

/// A connection's place under the cap.
pub type Slot = OwnedSemaphorePermit;

/// How a new connection is let in.
pub enum Admission {
    /// Under the cap: served as usual.
    Slot(Slot),
    /// Over the cap: one request, `/health` only.
    OverCap(OverCap),
    /// Answered 503 and closed.
    Refused,
}

/// A connection served over the cap; counted until dropped.
pub struct OverCap {
    connections: Arc<Connections>,
}

impl Drop for OverCap {
    fn drop(&mut self) {
        self.connections.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the cap needs to know of a connection being served.
pub struct Tracked {
    /// Requests in flight.
    busy: AtomicU32,
    /// When it last became idle, in milliseconds since the server started.
    idle_since_ms: AtomicU64,
    /// Told to close when idle (shed to make room).
    pub shed: Notify,
}

impl Connections {
    pub fn new(max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        Connections {
            slots: Arc::new(Semaphore::new(max_connections)),
            waiting: AtomicUsize::new(0),
            max_waiting: max_connections / 16 + 1,
            served: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Admit a new connection: with a free slot, or the slot of the connection idle the
    /// longest (which is told to close), or one freed within [`SLOT_WAIT`]; else over the
    /// cap, or not at all.
    pub async fn admit(self: &Arc<Self>) -> Admission {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Admission::Slot(slot);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Admission::Refused;
        }
        let over_cap = OverCap {
            connections: self.clone(),
        };
        self.shed_oldest_idle();
        match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Admission::Slot(slot),
            _ => Admission::OverCap(over_cap),
        }
    }

    /// Register a connection being served; it is forgotten when the guard is dropped.
    pub fn track(self: &Arc<Self>) -> (Arc<Tracked>, TrackedGuard) {
        let tracked = Arc::new(Tracked {
            busy: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            shed: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.served
            .lock()
            .expect("connections lock")
            .insert(id, tracked.clone());
        let guard = TrackedGuard {
            connections: self.clone(),
            id,
        };
        (tracked, guard)
    }

    /// Mark a request in flight on `tracked` until the returned guard is dropped.
    pub fn request(self: &Arc<Self>, tracked: &Arc<Tracked>) -> RequestGuard {
        tracked.busy.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            connections: self.clone(),
            tracked: tracked.clone(),
        }
    }

    fn shed_oldest_idle(&self) {
        let mut served = self.served.lock().expect("connections lock");
        let oldest = served
            .iter()
            .filter(|(_, t)| t.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, t)| t.idle_since_ms.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        if let Some(tracked) = oldest.and_then(|id| served.remove(&id)) {
            tracing::debug!("at the connection cap: closing the connection idle the longest");
            tracked.shed.notify_one();
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Forgets a served connection when dropped.
pub struct TrackedGuard {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for TrackedGuard {
    fn drop(&mut self) {
        if let Ok(mut served) = self.connections.served.lock() {
            served.remove(&self.id);
        }
    }
}

/// A request in flight; when dropped the connection is idle again (if it was the last).
pub struct RequestGuard {
    connections: Arc<Connections>,
    tracked: Arc<Tracked>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.tracked
            .idle_since_ms
            .store(self.connections.now_ms(), Ordering::Release);
        self.tracked.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to a request over the cap.
pub const OVER_CAP_BODY: &str = r#"{"error":"too_many_connections","message":"the hub is at its connection limit; retry shortly"}"#;

/// Answer a connection refused at the cap with 503, and close it.
pub async fn refuse(mut stream: TcpStream) {
    let body = OVER_CAP_BODY;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// After its write side is shut down, a connection reads off its unread input while it
/// keeps coming (a pause of `LINGER_PAUSE` ends it), for at most `LINGER_MAX` and
/// `LINGER_BYTES`. A connection shed at the cap, or closed because the server stops, does
/// not linger: its slot is wanted now.
const LINGER_PAUSE: Duration = Duration::from_millis(100);
const LINGER_MAX: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// A connection's socket with its slot: the slot is given back when the socket is closed,
/// also when the connection became a websocket.
///
/// Closing a socket whose client is still sending (an answer given before the request's
/// body was read: a `GET` with a body, a 401 or 413 before the body) makes the kernel
/// reset the connection, and a reset can destroy the answer before the client has read
/// it. So shutting down half-closes first, then reads off what still arrives, within the
/// linger bounds, before the socket is closed (RFC 9112 §9.6).
pub struct SlottedStream {
    stream: TcpStream,
    _slot: Slot,
    linger: Option<Linger>,
    /// Cleared when the connection is shed or the server stops: close without lingering.
    may_linger: Arc<AtomicBool>,
}

/// Reading off a half-closed connection's input.
struct Linger {
    pause: Pin<Box<tokio::time::Sleep>>,
    until: tokio::time::Instant,
    left: usize,
}

impl SlottedStream {
    pub fn new(stream: TcpStream, slot: Slot, may_linger: Arc<AtomicBool>) -> Self {
        SlottedStream {
            stream,
            _slot: slot,
            linger: None,
            may_linger,
        }
    }

    /// Read off input until the client's end, a pause, or a linger bound.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(linger) = self.linger.as_mut() else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 16 << 10];
        loop {
            if linger.pause.as_mut().poll(cx).is_ready() || linger.left == 0 {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    linger.left = linger.left.saturating_sub(buf.filled().len());
                    let next = (tokio::time::Instant::now() + LINGER_PAUSE).min(linger.until);
                    linger.pause.as_mut().reset(next);
                }
                // The client's end, or a failed connection: nothing more to read.
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for SlottedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlottedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            if !this.may_linger.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
            let now = tokio::time::Instant::now();
            this.linger = Some(Linger {
                pause: Box::pin(tokio::time::sleep_until(now + LINGER_PAUSE)),
                until: now + LINGER_MAX,
                left: LINGER_BYTES,
            });
        }
        this.poll_linger(cx).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_the_longest_makes_room() {
        let connections = Arc::new(Connections::new(2));
        let Admission::Slot(first_slot) = connections.admit().await else {
            panic!("a free slot");
        };
        let (first, _first_guard) = connections.track();
        let Admission::Slot(second_slot) = connections.admit().await else {
            panic!("a free slot");
        };
        let (second, _second_guard) = connections.track();
        // The first answers a request (busy), then both are idle; the second has been
        // idle the longest once the first's request ends.
        let request = connections.request(&first);
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(request);
        let first_shed = first.shed.notified();
        let second_shed = second.shed.notified();
        tokio::pin!(first_shed, second_shed);
        let admitted = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        second_shed.as_mut().await;
        drop(second_slot);
        assert!(matches!(admitted.await.unwrap(), Admission::Slot(_)));
        assert!(
            futures_util::poll!(first_shed.as_mut()).is_pending(),
            "the busier connection is kept"
        );
        drop(first_slot);
    }

    #[tokio::test]
    async fn a_connection_with_a_request_in_flight_is_never_shed() {
        let connections = Arc::new(Connections::new(1));
        let Admission::Slot(_slot) = connections.admit().await else {
            panic!("a free slot");
        };
        let (busy, _guard) = connections.track();
        let _request = connections.request(&busy);
        assert!(matches!(connections.admit().await, Admission::OverCap(_)));
        let shed = busy.shed.notified();
        tokio::pin!(shed);
        assert!(futures_util::poll!(shed.as_mut()).is_pending());
    }
}
