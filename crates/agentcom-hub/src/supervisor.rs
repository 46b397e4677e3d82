//! A one-for-one supervisor written on ractor's linking primitives.
//!
//! ractor has no restart strategies of its own (its default handler stops the parent when
//! a child exits). This supervisor restarts a crashed child after a backoff that doubles
//! with every crash of a streak ([`agentcom_core::supervision`]), restarts one child by name
//! on request, and keeps a [`ChildRecord`] per child for the operator.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_core::supervision::{CrashStreak, RestartPolicy};
use agentcom_core::Millis;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use crate::events::{ActorEvent, ActorEventKind, HubEvent, Topic};
use crate::now_ms;
use crate::pubsub::Publisher;
use crate::service::Slot;

type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;
type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;
type CrashFn = Arc<dyn Fn(&ActorCell) + Send + Sync>;

/// How long a child gets to finish its queued messages when it is stopped on purpose.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start (and restart) one child.
pub struct ChildSpec {
    name: &'static str,
    kind: &'static str,
    restartable: bool,
    start: StartFn,
    /// Empty the child's slot; `true` when it crashed (callers fail fast until it is back).
    /// Empty the slot: `None` for a restart about to happen, `Some(backoff)` for a crash.
    vacate: Arc<dyn Fn(Option<Duration>) + Send + Sync>,
    crash: Option<CrashFn>,
}

impl ChildSpec {
    /// A child actor `A` whose current instance is published in `slot`. `make` builds the
    /// actor and its arguments afresh for every start.
    pub fn new<A, F>(
        name: &'static str,
        kind: &'static str,
        slot: Arc<Slot<A::Msg>>,
        make: F,
    ) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let fill = slot.clone();
        let start: StartFn = Arc::new(move |supervisor: ActorCell| {
            let make = make.clone();
            let slot = fill.clone();
            Box::pin(async move {
                let (actor, args) = make();
                let (actor_ref, _) = Actor::spawn_linked(None, actor, args, supervisor).await?;
                slot.fill(actor_ref.clone());
                Ok(actor_ref.get_cell())
            })
        });
        ChildSpec {
            name,
            kind,
            restartable: true,
            start,
            vacate: Arc::new(move |down| match down {
                Some(backoff) => slot.vacate_down(backoff),
                None => slot.vacate(),
            }),
            crash: None,
        }
    }

    /// A child that operators may not restart (it holds live connections).
    pub fn permanent(mut self) -> Self {
        self.restartable = false;
        self
    }

    /// Give the child a test hook that makes it crash (used only with `--test-hooks`).
    pub fn with_crash_hook<M: ractor::Message>(mut self, crash: fn() -> M) -> Self {
        self.crash = Some(Arc::new(move |cell: &ActorCell| {
            let _ = cell.send_message(crash());
        }));
        self
    }
}

/// What a supervised child is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    Running,
    /// Crashed; a restart is scheduled after the backoff.
    Restarting,
    Stopped,
}

impl ChildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildStatus::Running => "running",
            ChildStatus::Restarting => "restarting",
            ChildStatus::Stopped => "stopped",
        }
    }
}

/// The operator's view of one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRecord {
    pub name: &'static str,
    pub kind: &'static str,
    pub status: ChildStatus,
    pub restartable: bool,
    pub started_at: Millis,
    /// Restarts since the hub started, after crashes and on request.
    pub restarts: u32,
    pub crashes: u32,
    pub last_restart_at: Option<Millis>,
    pub last_error: Option<String>,
    /// The delay applied before the latest crash restart.
    pub last_backoff_ms: Option<u64>,
    /// Consecutive crashes without settling.
    pub crash_streak: u32,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started: Instant,
    streak: CrashStreak,
    /// Bumped on every stop or crash, so that a stale scheduled restart is ignored.
    incarnation: u64,
    record: ChildRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("no actor named `{0}`")]
    UnknownActor(String),
    #[error("actor `{0}` cannot be restarted by an operator")]
    NotRestartable(String),
    #[error("actor `{0}` has no crash hook")]
    NoCrashHook(String),
    #[error("actor `{name}` failed to start: {reason}")]
    StartFailed { name: String, reason: String },
}

pub enum SupervisorMsg {
    List(RpcReplyPort<Vec<ChildRecord>>),
    Restart(String, RpcReplyPort<Result<ChildRecord, SupervisorError>>),
    /// Test hook: make the named child crash.
    Crash(String, RpcReplyPort<Result<(), SupervisorError>>),
    RestartDue {
        name: &'static str,
        incarnation: u64,
    },
    /// Stop every child, last started first, letting each finish its queued messages.
    StopAll(RpcReplyPort<()>),
}

pub struct SupervisorArgs {
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    pub publisher: Publisher,
}

pub struct SupervisorState {
    children: Vec<Child>,
    policy: RestartPolicy,
    publisher: Publisher,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = Vec::with_capacity(args.children.len());
        for spec in args.children {
            let cell = (spec.start)(myself.get_cell()).await.map_err(|e| {
                SupervisorError::StartFailed {
                    name: spec.name.into(),
                    reason: e.to_string(),
                }
            })?;
            let record = ChildRecord {
                name: spec.name,
                kind: spec.kind,
                status: ChildStatus::Running,
                restartable: spec.restartable,
                started_at: now_ms(),
                restarts: 0,
                crashes: 0,
                last_restart_at: None,
                last_error: None,
                last_backoff_ms: None,
                crash_streak: 0,
            };
            children.push(Child {
                spec,
                cell: Some(cell),
                started: Instant::now(),
                streak: CrashStreak::default(),
                incarnation: 0,
                record,
            });
        }
        Ok(SupervisorState {
            children,
            policy: args.policy,
            publisher: args.publisher,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::List(reply) => {
                let _ = reply.send(state.children.iter().map(|c| c.record.clone()).collect());
            }
            SupervisorMsg::Restart(name, reply) => {
                let _ = reply.send(state.restart_on_request(&myself, &name).await);
            }
            SupervisorMsg::Crash(name, reply) => {
                let _ = reply.send(state.inject_crash(&name));
            }
            SupervisorMsg::RestartDue { name, incarnation } => {
                state.restart_after_crash(&myself, name, incarnation).await;
            }
            SupervisorMsg::StopAll(reply) => {
                for child in state.children.iter_mut().rev() {
                    stop_child(child).await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, error) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.unwrap_or_else(|| "stopped unexpectedly".to_string()),
            ),
            _ => return Ok(()),
        };
        // Only the current instance of a child counts; a child stopped on purpose has
        // already been detached (its `cell` is None).
        if let Some(child) = state
            .children
            .iter_mut()
            .find(|c| c.cell.as_ref().map(|c| c.get_id()) == Some(cell.get_id()))
        {
            handle_crash(&myself, child, &state.policy, &state.publisher, error);
        }
        Ok(())
    }
}

impl SupervisorState {
    fn child(&mut self, name: &str) -> Result<&mut Child, SupervisorError> {
        self.children
            .iter_mut()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| SupervisorError::UnknownActor(name.to_string()))
    }

    async fn restart_on_request(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: &str,
    ) -> Result<ChildRecord, SupervisorError> {
        let child = self.child(name)?;
        if !child.spec.restartable {
            return Err(SupervisorError::NotRestartable(name.to_string()));
        }
        stop_child(child).await;
        child.record.restarts += 1;
        child.record.last_restart_at = Some(now_ms());
        let publisher = self.publisher.clone();
        let policy = self.policy;
        let child = self.child(name)?;
        match start_child(myself, child).await {
            Ok(()) => {
                publish(&publisher, ActorEventKind::Restarted, &child.record);
                Ok(child.record.clone())
            }
            Err(reason) => {
                handle_crash(myself, child, &policy, &publisher, reason.clone());
                Err(SupervisorError::StartFailed {
                    name: name.to_string(),
                    reason,
                })
            }
        }
    }

    async fn restart_after_crash(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: &'static str,
        incarnation: u64,
    ) {
        let publisher = self.publisher.clone();
        let policy = self.policy;
        let Ok(child) = self.child(name) else { return };
        if child.incarnation != incarnation || child.cell.is_some() {
            return;
        }
        child.record.restarts += 1;
        child.record.last_restart_at = Some(now_ms());
        match start_child(myself, child).await {
            Ok(()) => publish(&publisher, ActorEventKind::Restarted, &child.record),
            Err(reason) => handle_crash(myself, child, &policy, &publisher, reason),
        }
    }

    fn inject_crash(&mut self, name: &str) -> Result<(), SupervisorError> {
        let child = self.child(name)?;
        match (&child.spec.crash, &child.cell) {
            (Some(crash), Some(cell)) => {
                crash(cell);
                Ok(())
            }
            (Some(_), None) => Ok(()),
            (None, _) => Err(SupervisorError::NoCrashHook(name.to_string())),
        }
    }
}

async fn start_child(myself: &ActorRef<SupervisorMsg>, child: &mut Child) -> Result<(), String> {
    // A failed start counts as a crash with (almost) no uptime, so it keeps the streak.
    child.started = Instant::now();
    let cell = (child.spec.start)(myself.get_cell())
        .await
        .map_err(|e| e.to_string())?;
    child.cell = Some(cell);
    child.record.status = ChildStatus::Running;
    child.record.started_at = now_ms();
    Ok(())
}

/// Detach and stop a child, letting it process the messages already queued.
async fn stop_child(child: &mut Child) {
    child.incarnation += 1;
    (child.spec.vacate)(None);
    child.record.status = ChildStatus::Stopped;
    if let Some(cell) = child.cell.take() {
        if cell.drain_and_wait(Some(DRAIN_TIMEOUT)).await.is_err() {
            tracing::warn!(actor = child.spec.name, "did not drain in time; killing it");
            let _ = cell.kill_and_wait(Some(DRAIN_TIMEOUT)).await;
        }
    }
}

fn handle_crash(
    myself: &ActorRef<SupervisorMsg>,
    child: &mut Child,
    policy: &RestartPolicy,
    publisher: &Publisher,
    error: String,
) {
    let delay = child.streak.record_crash(policy, child.started.elapsed());
    (child.spec.vacate)(Some(delay));
    child.cell = None;
    child.incarnation += 1;
    tracing::error!(actor = child.spec.name, %error, backoff_ms = delay.as_millis() as u64, "actor crashed; restarting after backoff");
    child.record.status = ChildStatus::Restarting;
    child.record.crashes += 1;
    child.record.last_error = Some(error);
    child.record.last_backoff_ms = Some(delay.as_millis() as u64);
    child.record.crash_streak = child.streak.count;
    publish(publisher, ActorEventKind::Crashed, &child.record);
    let name = child.spec.name;
    let incarnation = child.incarnation;
    myself.send_after(delay, move || SupervisorMsg::RestartDue {
        name,
        incarnation,
    });
}

fn publish(publisher: &Publisher, kind: ActorEventKind, record: &ChildRecord) {
    publisher.publish(
        Topic::Actors,
        HubEvent::Actor(ActorEvent {
            kind,
            record: record.clone(),
        }),
    );
}
