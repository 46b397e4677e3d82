//! Websocket sessions: one actor per connection under a session supervisor.
//!
//! A session never writes to its socket itself. It pushes typed [`Outbound`] values into a
//! bounded queue that the HTTP layer's writer task drains and encodes; a consumer that lets
//! the queue fill up is disconnected instead of growing memory without limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentcom_store::Table;

use futures_channel::mpsc;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::agent_session::AgentSession;
use crate::events::{HubEvent, Topic};
use crate::protocol::{AgentPush, AgentRequest, DashboardRequest, Outbound};
use crate::pubsub::Subscribed;
use crate::services::Services;
use crate::tokens::DashboardSession;
use crate::waiting::{Waiting, WaitingRoom};
use crate::{Principal, Proof};

/// Outbound queue capacity of one connection.
pub const OUTBOUND_QUEUE: usize = 128;

/// Inbound frames of one connection in flight at once: read from the socket but not yet
/// handled by its session. The reader takes a permit before it forwards a frame and the
/// session returns it once the frame is handled, so a client that sends faster than its
/// session works is held back by TCP flow control instead of queueing frames in the
/// session's (unbounded) mailbox.
pub const INBOUND_IN_FLIGHT: usize = 16;

/// A dashboard batch with more events than this is replaced by a fresh snapshot.
pub const MOST_EVENTS_PER_FRAME: usize = 1000;

/// How long a revocation waits for one session to check its credential (a session busy
/// for longer still checks it, when it gets to the message).
pub const RECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One queued frame. Boxed: the queue allocates its slots in blocks of 32 and keeps up to
/// four blocks after a burst (such as a join storm) for the life of the connection, so
/// each slot is one pointer, not a whole [`Outbound`] (docs/BENCHMARKS.md).
pub type QueuedFrame = Box<Outbound>;

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
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    /// A newer connection identified as the same agent (F5).
    pub const REPLACED: u16 = 4001;
    /// The reaper found the connection silent for longer than `presence_ttl` (F4).
    pub const STALE: u16 = 4002;
    /// The token the connection was opened or identified with was revoked, or the
    /// dashboard session it was opened with ended (sign-out, expiry).
    pub const REVOKED: u16 = 4003;
}

/// The connection side of a session, owned by the HTTP layer's socket tasks.
pub struct SessionIo {
    pub outbound: mpsc::Sender<QueuedFrame>,
    pub close: watch::Sender<Option<CloseReason>>,
}

/// A frame received from the client, already parsed by the HTTP layer.
#[derive(Debug, Clone)]
pub enum Inbound {
    Agent(AgentRequest),
    Dashboard(DashboardRequest),
    /// A frame that could not be understood; answered with this error code.
    Malformed(&'static str),
}

pub enum SessionMsg {
    /// A frame the session gives itself (the dashboard's snapshot request).
    Inbound(Inbound),
    /// A frame read from the socket; the permit goes back once the frame is handled
    /// ([`INBOUND_IN_FLIGHT`]).
    Received(Inbound, OwnedSemaphorePermit),
    Deliver(Arc<HubEvent>),
    /// A push addressed to this connection alone (direct messages).
    Push(AgentPush),
    /// Attach to a channel's topic (after a subscription made elsewhere, e.g. over HTTP);
    /// answers once attached, so a publish that follows reaches this connection.
    Attach(String, RpcReplyPort<()>),
    /// Detach from a channel's topic (after an unsubscription made elsewhere); answers
    /// once detached.
    Detach(String, RpcReplyPort<()>),
    Close(CloseReason),
    /// Check that the credential this connection was opened or identified with still
    /// holds; if not, release what the connection held and close it (4003). Answers
    /// whether it closed.
    Recheck(RpcReplyPort<bool>),
    /// The identify deadline passed: an agent connection that has not identified yet is
    /// closed (pings and other frames do not keep it open).
    IdentifyDeadline,
    /// The client answered the hub's ping: a sign of life, as any frame is.
    Alive,
}

pub struct SessionArgs {
    pub kind: SessionKind,
    pub principal: Option<Principal>,
    pub io: SessionIo,
    /// An agent connection must identify within this long (`None`: no deadline).
    pub identify_within: Option<std::time::Duration>,
    /// Where an agent connection waits until it identifies (`None`: no cap).
    pub waiting_room: Option<Arc<WaitingRoom>>,
}

pub struct SessionState {
    pub(crate) kind: SessionKind,
    io: SessionIo,
    pub(crate) services: Arc<Services>,
    subscribed: Subscribed<SessionMsg>,
    pub(crate) agent: AgentSession,
    /// Who opened the connection (dashboards) or identified on it (agents).
    pub(crate) principal: Option<Principal>,
    /// An agent connection's place among those not identified yet; dropped at identify.
    pub(crate) waiting: Option<Waiting>,
}

/// One websocket connection.
pub struct Session;

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = (SessionArgs, Arc<Services>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (args, services): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let subscriptions = services.subscriptions.clone();
        let wrap = match args.kind {
            SessionKind::Agent => deliver_to_agent,
            SessionKind::Dashboard => deliver,
        };
        let mut state = SessionState {
            kind: args.kind,
            io: args.io,
            services,
            subscribed: Subscribed::new(subscriptions, myself.clone(), wrap),
            agent: AgentSession::default(),
            principal: args.principal,
            waiting: None,
        };
        // A credential that lapsed between the upgrade and now (a revocation that listed
        // the open sessions before this one) closes the connection before any snapshot.
        let lapsed = state
            .principal
            .as_ref()
            .and_then(|p| state.services.lapsed(p));
        if let Some(reason) = lapsed {
            let reason = CloseReason::new(close_code::REVOKED, reason);
            let _ = myself.send_message(SessionMsg::Close(reason));
            return Ok(state);
        }
        // A dashboard opened with a sign-in closes when the sign-in expires, as at sign-out.
        if let Some(Proof::DashboardSession(key)) = state.principal.as_ref().map(|p| &p.proof) {
            let session = state
                .services
                .reader
                .get_record::<DashboardSession>(Table::HubMeta, key);
            if let Ok(Some(session)) = session {
                let left = session.expires_at.saturating_sub(crate::now_ms());
                myself.send_after(Duration::from_millis(left), || {
                    let (tx, _) = ractor::concurrency::oneshot();
                    SessionMsg::Recheck(tx.into())
                });
            }
        }
        if let (SessionKind::Agent, Some(within)) = (args.kind, args.identify_within) {
            myself.send_after(within, || SessionMsg::IdentifyDeadline);
        }
        if let (SessionKind::Agent, Some(room)) = (args.kind, &args.waiting_room) {
            state.waiting = Some(room.enter(myself.clone()));
        }
        if args.kind == SessionKind::Dashboard {
            // The snapshot comes first, then the events (reference §4.1): asked for before
            // the feed is followed, so that no batch is ahead of it in the mailbox.
            let _ = myself.send_message(SessionMsg::Inbound(Inbound::Dashboard(
                DashboardRequest::RequestSnapshot,
            )));
            state.subscribe(Topic::DashboardFeed);
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
            SessionMsg::Inbound(inbound) => handle_inbound(&myself, state, inbound).await,
            SessionMsg::Received(inbound, permit) => {
                match state.rate_check() {
                    Ok(()) => handle_inbound(&myself, state, inbound).await,
                    // Over the limit: answered, not acted on (not even as a sign of life).
                    Err(limited) => state.push(
                        &myself,
                        Outbound::RateLimited {
                            retry_after_ms: limited.retry_after_ms(),
                        },
                    ),
                }
                drop(permit);
            }
            SessionMsg::Deliver(event) => match state.kind {
                SessionKind::Dashboard => {
                    let HubEvent::DashboardBatch(batch) = event.as_ref() else {
                        return Ok(());
                    };
                    // A batch this large is sent as a fresh snapshot instead (SPEC §2).
                    if batch.len() > MOST_EVENTS_PER_FRAME {
                        let _ = myself.send_message(SessionMsg::Inbound(Inbound::Dashboard(
                            DashboardRequest::RequestSnapshot,
                        )));
                    } else {
                        state.push(&myself, Outbound::Events(batch.clone()));
                    }
                }
                SessionKind::Agent => {
                    if let Some(push) = crate::agent_session::push_for(state, &event) {
                        state.push(&myself, Outbound::Push(push));
                    }
                }
            },
            SessionMsg::Push(push) => state.push(&myself, Outbound::Push(push)),
            SessionMsg::Attach(channel, reply) => {
                state.subscribe(Topic::Channel(channel));
                let _ = reply.send(());
            }
            SessionMsg::Detach(channel, reply) => {
                state.unsubscribe(&Topic::Channel(channel));
                let _ = reply.send(());
            }
            SessionMsg::Close(reason) => {
                state.io.close.send_replace(Some(reason));
                myself.stop(Some("closed".into()));
            }
            SessionMsg::Recheck(reply) => {
                let lapsed = state
                    .principal
                    .as_ref()
                    .and_then(|p| state.services.lapsed(p));
                if let Some(reason) = lapsed {
                    // Released before the answer: once the revocation returns, the agent
                    // is neither present nor given tasks, and its own are reclaimed.
                    Box::pin(crate::agent_session::leave(&myself, state)).await;
                    let reason = CloseReason::new(close_code::REVOKED, reason);
                    state.io.close.send_replace(Some(reason));
                    myself.stop(Some("credential lapsed".into()));
                }
                let _ = reply.send(lapsed.is_some());
            }
            SessionMsg::Alive => {
                if state.kind == SessionKind::Agent {
                    crate::agent_session::showed_life(&myself, state);
                }
            }
            SessionMsg::IdentifyDeadline => {
                if state.kind == SessionKind::Agent && state.agent.agent_id.is_none() {
                    let reason = CloseReason::new(close_code::POLICY, "identify timeout");
                    state.io.close.send_replace(Some(reason));
                    myself.stop(Some("identify timeout".into()));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(crate::agent_session::leave(&myself, state)).await;
        state.unsubscribe_all();
        Ok(())
    }
}

fn deliver(event: &Arc<HubEvent>) -> Option<SessionMsg> {
    Some(SessionMsg::Deliver(event.clone()))
}

/// FSM states on the `presence` topic are for dashboards and never become an agent's
/// push, so they do not enter an agent session's mailbox: in a join storm that is one
/// message fewer per identify for every connected agent (memory per agent, SPEC §2).
fn deliver_to_agent(event: &Arc<HubEvent>) -> Option<SessionMsg> {
    match event.as_ref() {
        HubEvent::AgentState { .. } => None,
        _ => deliver(event),
    }
}

impl SessionState {
    /// Subscribe this session to a topic (once: repeated calls change nothing).
    pub(crate) fn subscribe(&mut self, topic: Topic) {
        self.subscribed.add(topic);
    }

    pub(crate) fn is_subscribed(&self, topic: &Topic) -> bool {
        self.subscribed.contains(topic)
    }

    pub(crate) fn unsubscribe(&mut self, topic: &Topic) {
        self.subscribed.remove(topic);
    }

    pub(crate) fn unsubscribe_all(&mut self) {
        self.subscribed.clear();
    }

    /// Take a token from the caller's bucket for one frame read from the socket. Frames of
    /// a connection that has not identified yet are not counted: it has no caller yet,
    /// and it is closed at the identify deadline.
    fn rate_check(&self) -> Result<(), agentcom_core::rate::Limited> {
        match &self.principal {
            Some(who) => self.services.rate_limits.check(who),
            None => Ok(()),
        }
    }

    /// Queue a frame; a full queue means the client is not keeping up, so it is cut off.
    pub(crate) fn push(&mut self, myself: &ActorRef<SessionMsg>, frame: Outbound) {
        let sent = self.io.outbound.try_send(Box::new(frame));
        if sent.is_err_and(|e| e.is_full()) {
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

/// One frame from the client (or, for a dashboard's snapshot, from the session itself).
async fn handle_inbound(myself: &ActorRef<SessionMsg>, state: &mut SessionState, inbound: Inbound) {
    match inbound {
        Inbound::Malformed(code) => {
            crate::agent_session::showed_life(myself, state);
            state.push(myself, Outbound::error(code));
        }
        Inbound::Agent(request) => {
            if state.kind == SessionKind::Agent {
                // Boxed: the handler's large state machine lives only while it runs, not
                // in every idle connection's task (memory per connection, SPEC §2).
                Box::pin(crate::agent_session::handle(myself, state, request)).await;
            }
        }
        Inbound::Dashboard(request) => {
            if state.kind == SessionKind::Dashboard {
                Box::pin(dashboard_request(myself, state, request)).await;
            }
        }
    }
}

/// A dashboard's request: a snapshot, or retrying a dead-letter task (admin only).
async fn dashboard_request(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    request: DashboardRequest,
) {
    match request {
        DashboardRequest::RequestSnapshot => match state.services.dashboard_snapshot().await {
            Ok(snapshot) => state.push(myself, Outbound::Snapshot(snapshot)),
            Err(e) => state.push(
                myself,
                Outbound::Error {
                    code: "snapshot_unavailable".into(),
                    field: None,
                    message: Some(e.to_string()),
                },
            ),
        },
        DashboardRequest::RetryTask(task_id) => {
            if !state.principal.as_ref().is_some_and(|p| p.role.is_admin()) {
                state.push(myself, Outbound::error("admin_only"));
                return;
            }
            let status = match state.services.retry_task(&task_id).await {
                Ok(_) => "requeued",
                Err(_) => "not_found",
            };
            state.push(myself, Outbound::RetryResult { task_id, status });
        }
        DashboardRequest::Other => {}
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
    /// Every open session.
    List(RpcReplyPort<Vec<ActorRef<SessionMsg>>>),
}

/// The session supervisor: parent of every session actor. Sessions are never restarted:
/// a session that ends is a connection that closed.
pub struct Sessions;

pub struct SessionsState {
    /// Shared with every session (a clone is a pointer, not the whole set of handles).
    services: Arc<Services>,
    open: HashMap<ActorId, (SessionKind, ActorRef<SessionMsg>)>,
}

impl Actor for Sessions {
    type Msg = SessionsMsg;
    type State = SessionsState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        services: Arc<Services>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionsState {
            services,
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
                let result = Actor::spawn_linked(
                    None,
                    Session,
                    (args, state.services.clone()),
                    myself.get_cell(),
                )
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
            SessionsMsg::List(reply) => {
                let _ = reply.send(state.open.values().map(|(_, s)| s.clone()).collect());
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
        _: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.open.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                // A crashed session skipped its clean-up: drop the presence it held.
                tracing::error!(error = %err, "session crashed");
                state.open.remove(&cell.get_id());
                // …and the agent's FSM was never told, so its tasks are reclaimed here.
                let id = cell.get_id();
                let services = state.services.clone();
                tokio::spawn(async move {
                    let unregister = |r| crate::presence::PresenceMsg::UnregisterSession(id, r);
                    let agents = services
                        .presence
                        .call(unregister, crate::CALL_TIMEOUT)
                        .await
                        .unwrap_or_default();
                    for agent_id in agents {
                        let disconnect = |reply| crate::agents::AgentsMsg::Disconnect {
                            agent_id,
                            session: id,
                            reply,
                        };
                        let _ = services.agents.call(disconnect, crate::CALL_TIMEOUT).await;
                    }
                });
            }
            _ => {}
        }
        Ok(())
    }
}
