// AgentCom's change to ractor 0.16.5 (see vendor/README.md).
//
//! The unbounded MPSC channel behind every actor's message and supervision ports.
//!
//! tokio's unbounded channel allocates its slots in blocks of 32 and allocates the first
//! block when the channel is made; after a burst it keeps up to three spare blocks for the
//! channel's life. An actor has two such channels, so an idle actor held 3.4 KB of empty
//! slots from its birth, and more after a burst of messages. This channel (futures'
//! unbounded MPSC queue) allocates one node per message in flight and frees it when the
//! message is received: an idle actor's ports hold no slot at all. The API is the subset
//! of tokio's that ractor uses, with tokio's error types.

use futures::StreamExt;
use futures::channel::mpsc::TryRecvError as Missing;
pub(super) use tokio::sync::mpsc::error::{SendError, TryRecvError};

/// The sending half: cheap to clone, never blocks.
pub struct UnboundedSender<T>(futures::channel::mpsc::UnboundedSender<T>);

impl<T> Clone for UnboundedSender<T> {
    fn clone(&self) -> Self {
        UnboundedSender(self.0.clone())
    }
}

impl<T> std::fmt::Debug for UnboundedSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnboundedSender").finish_non_exhaustive()
    }
}

impl<T> UnboundedSender<T> {
    /// Queue `message`; it comes back in the error if the receiver is closed or gone.
    pub fn send(&self, message: T) -> Result<(), SendError<T>> {
        self.0
            .unbounded_send(message)
            .map_err(|e| SendError(e.into_inner()))
    }

    /// Whether the receiver is closed or gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// The receiving half.
pub struct UnboundedReceiver<T>(futures::channel::mpsc::UnboundedReceiver<T>);

impl<T> std::fmt::Debug for UnboundedReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnboundedReceiver").finish_non_exhaustive()
    }
}

impl<T> UnboundedReceiver<T> {
    /// The next message, or `None` once the channel is closed and empty. Cancel safe: a
    /// message is taken only when this resolves.
    pub async fn recv(&mut self) -> Option<T> {
        self.0.next().await
    }

    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            Missing::Empty => TryRecvError::Empty,
            Missing::Closed => TryRecvError::Disconnected,
        })
    }

    /// Refuse further messages; those already queued can still be received.
    pub fn close(&mut self) {
        self.0.close()
    }
}

/// A new unbounded channel.
pub(super) fn unbounded_channel<T>() -> (UnboundedSender<T>, UnboundedReceiver<T>) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    (UnboundedSender(tx), UnboundedReceiver(rx))
}
