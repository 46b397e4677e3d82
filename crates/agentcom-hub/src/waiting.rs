//! The cap on agent websockets that have not identified yet (issue 9 #6).
//!
//! Until it identifies, an agent connection costs the hub a slot under `max_connections`
//! and proves nothing about its client. At most `max` such connections are open at once:
//! one more makes the one waiting the longest close (1013, "try again later"). A real
//! agent identifies within milliseconds of connecting, so a flood of sockets that never
//! identify can only shed each other; the connection that identifies leaves the room.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ractor::ActorRef;

use crate::sessions::{CloseReason, SessionMsg};

/// Close code of a connection shed from the waiting room (RFC 6455 §7.4.1, "Try Again
/// Later").
pub const TRY_AGAIN_LATER: u16 = 1013;

/// The agent connections that have not identified yet.
pub struct WaitingRoom {
    max: usize,
    inner: Mutex<Room>,
}

#[derive(Default)]
struct Room {
    next: u64,
    /// By arrival: the first is the one waiting the longest.
    waiting: BTreeMap<u64, ActorRef<SessionMsg>>,
}

/// A connection's place in the room; it leaves when this is dropped (identified, or closed).
pub struct Waiting {
    room: Arc<WaitingRoom>,
    id: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.room.lock().waiting.remove(&self.id);
    }
}

impl WaitingRoom {
    pub fn new(max: usize) -> Arc<WaitingRoom> {
        Arc::new(WaitingRoom {
            max: max.max(1),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Room> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let a new connection in; over the cap, the connection waiting the longest is told
    /// to close.
    pub fn enter(self: &Arc<Self>, session: ActorRef<SessionMsg>) -> Waiting {
        let shed = {
            let mut room = self.lock();
            let id = room.next;
            room.next += 1;
            room.waiting.insert(id, session);
            let shed = if room.waiting.len() > self.max {
                room.waiting.pop_first().map(|(_, s)| s)
            } else {
                None
            };
            (id, shed)
        };
        if let Some(oldest) = shed.1 {
            let reason =
                CloseReason::new(TRY_AGAIN_LATER, "too many connections waiting to identify");
            let _ = oldest.send_message(SessionMsg::Close(reason));
        }
        Waiting {
            room: self.clone(),
            id: shed.0,
        }
    }
}
