//! Finding and calling a restartable actor.
//!
//! A [`Slot`] holds the current instance of a supervised actor; the supervisor fills it on
//! every (re)start and empties it before stopping one. A [`Service`] reads the slot, so a
//! caller always reaches the newest instance: a message refused by an instance that is
//! draining for a restart is resent to its successor, never silently dropped.

use std::time::Duration;

use ractor::concurrency::{oneshot, OneshotReceiver};
use ractor::{ActorRef, Message, MessagingErr, RpcReplyPort};
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a call to an actor did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("actor `{0}` is not running (restarting or stopped)")]
    Unavailable(&'static str),
    #[error("actor `{0}` did not answer in time")]
    Timeout(&'static str),
    #[error("actor `{0}` stopped before answering (it crashed or was killed)")]
    Interrupted(&'static str),
}

/// The current instance of a supervised actor, shared between the supervisor (writer) and
/// every [`Service`] handle (readers).
pub struct Slot<M: Message> {
    tx: watch::Sender<Option<ActorRef<M>>>,
}

impl<M: Message> Slot<M> {
    pub fn new() -> Self {
        Slot {
            tx: watch::Sender::new(None),
        }
    }

    pub fn fill(&self, actor: ActorRef<M>) {
        self.tx.send_replace(Some(actor));
    }

    pub fn vacate(&self) {
        self.tx.send_replace(None);
    }

    pub fn service(&self, name: &'static str) -> Service<M> {
        Service {
            name,
            rx: self.tx.subscribe(),
        }
    }
}

impl<M: Message> Default for Slot<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// A handle that reaches the current instance of one supervised actor.
pub struct Service<M: Message> {
    name: &'static str,
    rx: watch::Receiver<Option<ActorRef<M>>>,
}

impl<M: Message> Clone for Service<M> {
    fn clone(&self) -> Self {
        Service {
            name: self.name,
            rx: self.rx.clone(),
        }
    }
}

/// How long a caller waits for a restarting actor to come back before giving up.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

impl<M: Message> Service<M> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current instance, if one is running now.
    pub fn current(&self) -> Option<ActorRef<M>> {
        self.rx.borrow().clone()
    }

    /// Wait (until `deadline`) for an instance other than `not`.
    async fn instance(
        &self,
        not: Option<&ActorRef<M>>,
        deadline: Instant,
    ) -> Result<ActorRef<M>, ServiceError> {
        let mut rx = self.rx.clone();
        let not_id = not.map(|a| a.get_id());
        let wanted = |v: &Option<ActorRef<M>>| match v {
            Some(a) => Some(a.get_id()) != not_id,
            None => false,
        };
        let found = match tokio::time::timeout_at(deadline, rx.wait_for(wanted)).await {
            Ok(Ok(actor)) => actor.clone(),
            _ => None,
        };
        found.ok_or(ServiceError::Unavailable(self.name))
    }

    /// Deliver a message to the current instance, waiting for one if the actor is
    /// restarting, and resending if the instance reached refuses it because it is draining.
    pub async fn send(&self, mut msg: M, wait: Duration) -> Result<(), ServiceError> {
        let deadline = Instant::now() + wait;
        let mut refused_by: Option<ActorRef<M>> = None;
        loop {
            let actor = self.instance(refused_by.as_ref(), deadline).await?;
            match actor.send_message(msg) {
                Ok(()) => return Ok(()),
                Err(MessagingErr::SendErr(back)) => {
                    msg = back;
                    refused_by = Some(actor);
                }
                Err(_) => return Err(ServiceError::Unavailable(self.name)),
            }
        }
    }

    /// Deliver a request and return the receiver of its answer without waiting for it, so
    /// that the caller can keep the order of its sends and await the answers elsewhere.
    pub async fn request<R: Send + 'static>(
        &self,
        make: impl FnOnce(RpcReplyPort<R>) -> M,
        wait: Duration,
    ) -> Result<Reply<R>, ServiceError> {
        let (tx, rx) = oneshot();
        self.send(make(tx.into()), wait).await?;
        Ok(Reply {
            name: self.name,
            rx,
        })
    }

    /// Request and wait for the answer, within `timeout` in all.
    pub async fn call<R: Send + 'static>(
        &self,
        make: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<R, ServiceError> {
        let deadline = Instant::now() + timeout;
        let reply = self.request(make, timeout).await?;
        reply.wait_until(deadline).await
    }
}

/// The pending answer of a [`Service::request`].
pub struct Reply<R> {
    name: &'static str,
    rx: OneshotReceiver<R>,
}

impl<R> Reply<R> {
    pub async fn wait_until(self, deadline: Instant) -> Result<R, ServiceError> {
        match tokio::time::timeout_at(deadline, self.rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ServiceError::Interrupted(self.name)),
            Err(_) => Err(ServiceError::Timeout(self.name)),
        }
    }

    pub async fn wait(self, timeout: Duration) -> Result<R, ServiceError> {
        self.wait_until(Instant::now() + timeout).await
    }
}
