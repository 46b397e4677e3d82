//! Finding and calling a restartable actor.
//!
//! A [`Slot`] holds the current instance of a supervised actor; the supervisor fills it on
//! every (re)start and empties it before stopping one. A [`Service`] reads the slot, so a
//! caller always reaches the newest instance: a message refused by an instance that is
//! draining for a restart is resent to its successor, never silently dropped.
//!
//! A slot emptied because its actor crashed is marked *down* (the supervisor restarts it
//! only after a backoff that grows with each crash): a caller then waits at most
//! [`DOWN_WAIT`] for it and fails with [`ServiceError::Unavailable`], instead of holding
//! its request for the whole call timeout. A slot emptied for a restart on request waits
//! as before: that restart is quick.

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
    tx: watch::Sender<Occupant<M>>,
}

/// What a slot holds.
enum Occupant<M: Message> {
    Running(ActorRef<M>),
    /// Being (re)started, or stopped for a restart on request: worth waiting for.
    Vacant,
    /// Crashed, waiting out its restart backoff until the instant given: callers wait
    /// only if it is due back soon.
    Down(Instant),
}

impl<M: Message> Clone for Occupant<M> {
    fn clone(&self) -> Self {
        match self {
            Occupant::Running(a) => Occupant::Running(a.clone()),
            Occupant::Vacant => Occupant::Vacant,
            Occupant::Down(at) => Occupant::Down(*at),
        }
    }
}

impl<M: Message> Slot<M> {
    pub fn new() -> Self {
        Slot {
            tx: watch::Sender::new(Occupant::Vacant),
        }
    }

    pub fn fill(&self, actor: ActorRef<M>) {
        self.tx.send_replace(Occupant::Running(actor));
    }

    /// Empty the slot for a restart that is about to happen.
    pub fn vacate(&self) {
        self.tx.send_replace(Occupant::Vacant);
    }

    /// Empty the slot of an actor that crashed and waits out `backoff`.
    pub fn vacate_down(&self, backoff: Duration) {
        self.tx
            .send_replace(Occupant::Down(Instant::now() + backoff));
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
    rx: watch::Receiver<Occupant<M>>,
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

/// How long a caller waits for an actor that is down (crashed, in its restart backoff):
/// an actor due back within this is waited for (until [`RESTART_GRACE`] after it is due),
/// one due back later fails the call after this long.
pub const DOWN_WAIT: Duration = Duration::from_secs(1);

/// How long after its backoff a crashed actor due back soon is waited for (its restart).
pub const RESTART_GRACE: Duration = Duration::from_secs(5);

impl<M: Message> Service<M> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current instance, if one is running now.
    pub fn current(&self) -> Option<ActorRef<M>> {
        match &*self.rx.borrow() {
            Occupant::Running(a) => Some(a.clone()),
            _ => None,
        }
    }

    /// Wait for a running instance, as a call would (at most [`DOWN_WAIT`] if the actor
    /// is down, `wait` if it is restarting); an error if there is none. Used to check that
    /// every actor a request needs is there before the request writes anything.
    pub async fn ready(&self, wait: Duration) -> Result<(), ServiceError> {
        self.instance(None, Instant::now() + wait).await.map(|_| ())
    }

    /// Wait (until `deadline`, or [`DOWN_WAIT`] while the actor is down) for an instance
    /// other than `not`.
    async fn instance(
        &self,
        not: Option<&ActorRef<M>>,
        deadline: Instant,
    ) -> Result<ActorRef<M>, ServiceError> {
        let mut rx = self.rx.clone();
        let not_id = not.map(|a| a.get_id());
        let down_deadline = deadline.min(Instant::now() + DOWN_WAIT);
        loop {
            let until = match &*rx.borrow_and_update() {
                Occupant::Running(a) if Some(a.get_id()) != not_id => return Ok(a.clone()),
                Occupant::Down(back_at) if *back_at <= Instant::now() + DOWN_WAIT => {
                    deadline.min(*back_at + RESTART_GRACE)
                }
                Occupant::Down(_) => down_deadline,
                _ => deadline,
            };
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(ServiceError::Unavailable(self.name)),
            }
        }
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
