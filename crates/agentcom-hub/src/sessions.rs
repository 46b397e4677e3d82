//! Websocket sessions: one actor per connection under a session supervisor.
//!
//! A session never writes to its socket itself. It pushes typed [`Outbound`] values into a
//! bounded queue that the HTTP layer's writer task drains and encodes; a consumer that lets
//! the queue fill up is disconnected instead of growing memory without limit.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{mpsc, watch};

use crate::events::{HubEvent, Topic};
use crate::pubsub::{SubscriptionId, Subscriptions};
use crate::Principal;

/// Outbound queue capacity of one connection.
pub const OUTBOUND_QUEUE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    Agent,
    Dashboard,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Agent => "agent",
            SessionKind::Dashboard => "dashboard",
        }
    }
}

/// What a session asks its connection to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// `{"type":"error","error":code}`.
    Error(&'static str),
    /// A pubsub event the session is subscribed to.
    Event(Arc<HubEvent>),
}

/// A websocket close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: &str) -> Self {
        CloseReason {
            code,
            reason: reason.to_string(),
        }
    }
}

/// Close codes used by sessions.
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
}

/// The connection side of a session, owned by the HTTP layer's socket tasks.
pub struct SessionIo {
    pub outbound: mpsc::Sender<Outbound>,
    pub close: watch::Sender<Option<CloseReason>>,
}

/// A frame received from the client, already parsed by the HTTP layer.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A JSON object with this `type` (or none).
    Message { kind: Option<String> },
    /// A frame that could not be understood; answered with this error code.
    Malformed(&'static str),
}

pub enum SessionMsg {
    Inbound(Inbound),
    Deliver(Arc<HubEvent>),
    Close(CloseReason),
}

pub struct SessionArgs {
    pub kind: SessionKind,
    pub principal: Option<Principal>,
    pub io: SessionIo,
    pub subscriptions: Arc<Subscriptions>,
}

pub struct SessionState {
    kind: SessionKind,
    io: SessionIo,
    subscriptions: Arc<Subscriptions>,
    subscribed: Vec<(Topic, SubscriptionId)>,
}

/// One websocket connection.
pub struct Session;

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SessionState {
            kind: args.kind,
            io: args.io,
            subscriptions: args.subscriptions,
            subscribed: Vec::new(),
        };
        if args.kind == SessionKind::Dashboard {
            state.subscribe(&myself, Topic::Actors);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Inbound(Inbound::Malformed(code)) => {
                state.push(&myself, Outbound::Error(code))
            }
            SessionMsg::Inbound(Inbound::Message { .. }) => {
                // Until it identifies, an agent connection answers everything this way
                // (reference §3.2, check 1). Dashboards send nothing that needs an answer yet.
                if state.kind == SessionKind::Agent {
                    state.push(&myself, Outbound::Error("not_identified"));
                }
            }
            SessionMsg::Deliver(event) => state.push(&myself, Outbound::Event(event)),
            SessionMsg::Close(reason) => {
                state.io.close.send_replace(Some(reason));
                myself.stop(Some("closed".into()));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (topic, id) in state.subscribed.drain(..) {
            state.subscriptions.unsubscribe(&topic, id);
        }
        Ok(())
    }
}

impl SessionState {
    fn subscribe(&mut self, myself: &ActorRef<SessionMsg>, topic: Topic) {
        let me = myself.clone();
        let id = self.subscriptions.subscribe(
            topic.clone(),
            Arc::new(move |event| me.send_message(SessionMsg::Deliver(event.clone())).is_ok()),
        );
        self.subscribed.push((topic, id));
    }

    /// Queue a frame; a full queue means the client is not keeping up, so it is cut off.
    fn push(&mut self, myself: &ActorRef<SessionMsg>, frame: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.io.outbound.try_send(frame) {
            tracing::warn!(
                session = self.kind.as_str(),
                "outbound queue full; disconnecting"
            );
            self.io.close.send_replace(Some(CloseReason::new(
                close_code::POLICY,
                "outbound queue full (client too slow)",
            )));
            myself.stop(Some("slow consumer".into()));
        }
    }
}

/// Open sessions, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub agent: usize,
    pub dashboard: usize,
}

pub enum SessionsMsg {
    Open(
        SessionArgs,
        RpcReplyPort<Result<ActorRef<SessionMsg>, String>>,
    ),
    CloseAll(CloseReason, RpcReplyPort<()>),
    Count(RpcReplyPort<SessionCounts>),
}

/// The session supervisor: parent of every session actor. Sessions are never restarted:
/// a session that ends is a connection that closed.
pub struct Sessions;

pub struct SessionsState {
    open: HashMap<ActorId, (SessionKind, ActorRef<SessionMsg>)>,
}

impl Actor for Sessions {
    type Msg = SessionsMsg;
    type State = SessionsState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionsState {
            open: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionsMsg::Open(args, reply) => {
                let kind = args.kind;
                let result = Actor::spawn_linked(None, Session, args, myself.get_cell())
                    .await
                    .map(|(session, _)| {
                        state.open.insert(session.get_id(), (kind, session.clone()));
                        session
                    })
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            SessionsMsg::CloseAll(reason, reply) => {
                for (_, session) in state.open.values() {
                    let _ = session.send_message(SessionMsg::Close(reason.clone()));
                }
                let _ = reply.send(());
            }
            SessionsMsg::Count(reply) => {
                let mut counts = SessionCounts::default();
                for (kind, _) in state.open.values() {
                    match kind {
                        SessionKind::Agent => counts.agent += 1,
                        SessionKind::Dashboard => counts.dashboard += 1,
                    }
                }
                let _ = reply.send(counts);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.open.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(error = %err, "session crashed");
                state.open.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
