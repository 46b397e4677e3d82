//! Agent FSMs (reference §5.5): one actor per identified agent under the `agents`
//! supervisor, each the only writer of its row in the shared [`AgentTable`] (which the
//! scheduler and the HTTP layer read without waiting).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentcom_core::fsm::{AgentFsm, AgentState};
use agentcom_core::scheduler::{capability_names, Candidate};
use agentcom_core::task::{Task, TaskStatus};
use agentcom_core::Millis;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use serde_json::Value;

use crate::presence::PresenceTable;
use crate::protocol::AgentPush;
use crate::scheduler::SchedulerMsg;
use crate::service::{Service, DEFAULT_WAIT};
use crate::sessions::SessionMsg;
use crate::task_queue::{TaskFilter, TaskMsg};
use crate::{now_ms, CALL_TIMEOUT};

/// What the hub knows of an agent's FSM.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub agent_id: String,
    pub name: String,
    pub fsm: AgentFsm,
    /// As sent at identify.
    pub capabilities: Value,
    pub connected_at: Millis,
}

struct Row {
    view: AgentView,
    actor: ActorRef<FsmMsg>,
}

#[derive(Default)]
pub struct AgentTable {
    rows: RwLock<HashMap<String, Row>>,
}

impl AgentTable {
    /// The agent's FSM, if it is alive.
    pub fn fsm_of(&self, agent_id: &str) -> Option<ActorRef<FsmMsg>> {
        let rows = self.rows.read().expect("agents lock");
        rows.get(agent_id)
            .map(|r| r.actor.clone())
            .filter(|a| a.get_status() != ActorStatus::Stopped)
    }

    fn remove_if(&self, agent_id: &str, actor: &ActorId) {
        let mut rows = self.rows.write().expect("agents lock");
        if rows
            .get(agent_id)
            .is_some_and(|r| r.actor.get_id() == *actor)
        {
            rows.remove(agent_id);
        }
    }

    pub fn get(&self, agent_id: &str) -> Option<AgentView> {
        self.rows
            .read()
            .expect("agents lock")
            .get(agent_id)
            .map(|r| r.view.clone())
    }

    pub fn list(&self) -> Vec<AgentView> {
        let mut list: Vec<AgentView> = self
            .rows
            .read()
            .expect("agents lock")
            .values()
            .map(|r| r.view.clone())
            .collect();
        list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        list
    }

    /// Agents the scheduler may offer a task to now, the one idle the longest first (its
    /// FSM's last change), so that work spreads over equally able agents instead of going
    /// to the first by id every time.
    pub fn available(&self) -> Vec<Candidate> {
        let rows = self.rows.read().expect("agents lock");
        let mut out: Vec<Candidate> = rows
            .values()
            .filter(|r| r.view.fsm.is_available())
            .map(|r| Candidate {
                agent_id: r.view.agent_id.clone(),
                capabilities: capability_names(&r.view.capabilities).into_iter().collect(),
                idle_since: r.view.fsm.last_state_change,
            })
            .collect();
        out.sort_by(|a, b| (a.idle_since, &a.agent_id).cmp(&(b.idle_since, &b.agent_id)));
        out
    }

    /// Is the agent connected and working on (has accepted) this task? (F8)
    pub fn is_working_on(&self, agent_id: &str, task_id: &str) -> bool {
        self.rows
            .read()
            .expect("agents lock")
            .get(agent_id)
            .is_some_and(|r| {
                matches!(r.view.fsm.state, AgentState::Working | AgentState::Blocked)
                    && r.view.fsm.current_task.as_deref() == Some(task_id)
            })
    }

    pub fn is_unresponsive(&self, agent_id: &str) -> bool {
        self.rows
            .read()
            .expect("agents lock")
            .get(agent_id)
            .is_some_and(|r| r.view.fsm.unresponsive)
    }
}

pub enum FsmMsg {
    /// The scheduler offers a task: answers whether the agent took it (idle → assigned).
    Assign(String, RpcReplyPort<bool>),
    /// The queue recorded the assignment: answers the connection to push it to, if the
    /// FSM still holds the task (`None`: the agent left meanwhile; the caller reclaims).
    Confirm(String, RpcReplyPort<Option<ActorRef<SessionMsg>>>),
    /// The agent accepted its task; answers once the FSM moved (so the ack implies it).
    Accepted(String, RpcReplyPort<()>),
    /// The task left the agent (completed, failed, reclaimed, rejected, refused).
    Released(String),
    /// `task_continue`: the agent resumes a task assigned to it.
    Resume(String, RpcReplyPort<()>),
    ShowedLife,
    AcceptTimeout(String, u64),
    /// A newer connection identified as this agent.
    Rebind {
        session: ActorRef<SessionMsg>,
        name: String,
        capabilities: Value,
    },
    /// A connection of this agent closed: if it is the FSM's connection, reclaim the
    /// agent's tasks (durably), stop, and answer `true`.
    SessionDown(ActorId, RpcReplyPort<bool>),
}

pub struct FsmArgs {
    pub agent_id: String,
    pub name: String,
    pub capabilities: Value,
    pub session: ActorRef<SessionMsg>,
    /// A task the queue already has assigned to this agent (adopted at start).
    pub adopt: Option<String>,
    pub services: FsmServices,
}

#[derive(Clone)]
pub struct FsmServices {
    pub table: Arc<AgentTable>,
    pub publisher: crate::pubsub::Publisher,
    pub presence: Arc<PresenceTable>,
    pub task_queue: Service<TaskMsg>,
    pub scheduler: Service<SchedulerMsg>,
    pub accept_timeout: Duration,
}

pub struct FsmState {
    agent_id: String,
    fsm: AgentFsm,
    session: ActorRef<SessionMsg>,
    services: FsmServices,
    /// Numbers each assignment, so that a stale acceptance timer is ignored.
    assignment: u64,
}

pub struct AgentFsmActor;

impl Actor for AgentFsmActor {
    type Msg = FsmMsg;
    type State = FsmState;
    type Arguments = FsmArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: FsmArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = now_ms();
        let mut state = FsmState {
            agent_id: args.agent_id.clone(),
            fsm: AgentFsm::new(now),
            session: args.session.clone(),
            services: args.services,
            assignment: 0,
        };
        let view = AgentView {
            agent_id: args.agent_id.clone(),
            name: args.name,
            fsm: state.fsm.clone(),
            capabilities: args.capabilities,
            connected_at: now,
        };
        state
            .services
            .table
            .rows
            .write()
            .expect("agents lock")
            .insert(
                args.agent_id,
                Row {
                    view,
                    actor: myself.clone(),
                },
            );
        if let Some(task_id) = args.adopt {
            state.fsm.assign(&task_id, now);
            state.start_timer(&myself, &task_id);
        }
        state.publish();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the handler's state machine lives only while it runs, not in every
        // connected agent's FSM task (memory per agent).
        Box::pin(handle_fsm(myself, msg, state)).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state
            .services
            .table
            .remove_if(&state.agent_id, &myself.get_id());
        Ok(())
    }
}

async fn handle_fsm(
    myself: ActorRef<FsmMsg>,
    msg: FsmMsg,
    state: &mut FsmState,
) -> Result<(), ActorProcessingErr> {
    let now = now_ms();
    match msg {
        FsmMsg::Assign(task_id, reply) => {
            let took = state.fsm.assign(&task_id, now);
            if took {
                state.start_timer(&myself, &task_id);
                state.publish();
            }
            let _ = reply.send(took);
        }
        FsmMsg::Confirm(task_id, reply) => {
            let holds = state.fsm.current_task.as_deref() == Some(task_id.as_str());
            let _ = reply.send(holds.then(|| state.session.clone()));
        }
        FsmMsg::Accepted(task_id, reply) => {
            if state.fsm.accepted(&task_id, now) {
                state.publish();
            }
            let _ = reply.send(());
        }
        FsmMsg::Released(task_id) => {
            if state.fsm.released(&task_id, now) {
                state.publish();
            }
        }
        FsmMsg::Resume(task_id, reply) => {
            state.fsm.resume(&task_id, now);
            state.publish();
            let _ = reply.send(());
        }
        FsmMsg::ShowedLife => {
            if state.fsm.unresponsive {
                state.fsm.showed_life();
                state.publish();
            }
        }
        FsmMsg::AcceptTimeout(task_id, assignment) => {
            if assignment == state.assignment && state.fsm.accept_timed_out(&task_id, now) {
                tracing::warn!(agent_id = %state.agent_id, %task_id, "task not accepted in time; reclaiming it");
                state.reclaim(&task_id, "accept_timeout").await;
                state.publish();
            }
        }
        FsmMsg::Rebind {
            session,
            name,
            capabilities,
        } => {
            state.session = session;
            if let Some(row) = state
                .services
                .table
                .rows
                .write()
                .expect("agents lock")
                .get_mut(&state.agent_id)
            {
                row.view.name = name;
                row.view.capabilities = capabilities;
            }
            state.publish();
        }
        FsmMsg::SessionDown(session, reply) => {
            let ours = session == state.session.get_id();
            if ours {
                // Reclaim every task the queue has assigned to this agent.
                let filter = TaskFilter {
                    status: Some(TaskStatus::Assigned),
                    assigned_to: Some(state.agent_id.clone()),
                    ..TaskFilter::default()
                };
                let listed = state
                    .services
                    .task_queue
                    .call(|r| TaskMsg::List(filter, r), CALL_TIMEOUT)
                    .await;
                for task in listed.unwrap_or_default() {
                    state.reclaim_now(&task.id, "agent_disconnect").await;
                }
                myself.stop(Some("agent disconnected".into()));
            }
            let _ = reply.send(ours);
        }
    }
    Ok(())
}

impl FsmState {
    fn start_timer(&mut self, myself: &ActorRef<FsmMsg>, task_id: &str) {
        self.assignment += 1;
        let (task_id, assignment) = (task_id.to_string(), self.assignment);
        myself.send_after(self.services.accept_timeout, move || {
            FsmMsg::AcceptTimeout(task_id, assignment)
        });
    }

    /// Reclaim and wait until the reclaim is durable (so that a reconnecting agent sees it).
    async fn reclaim_now(&self, task_id: &str, reason: &str) {
        let (t, a, r) = (
            task_id.to_string(),
            self.agent_id.clone(),
            reason.to_string(),
        );
        let msg = |reply| TaskMsg::Reclaim {
            task_id: t,
            from: Some(a),
            reason: r,
            reply: Some(reply),
        };
        if let Err(e) = self.services.task_queue.call(msg, CALL_TIMEOUT).await {
            tracing::error!(agent_id = %self.agent_id, task_id, error = %e, "reclaim failed");
        }
    }

    async fn reclaim(&self, task_id: &str, reason: &str) {
        let msg = TaskMsg::Reclaim {
            task_id: task_id.to_string(),
            from: Some(self.agent_id.clone()),
            reason: reason.to_string(),
            reply: None,
        };
        if let Err(e) = self.services.task_queue.send(msg, DEFAULT_WAIT).await {
            tracing::error!(agent_id = %self.agent_id, task_id, error = %e, "reclaim not delivered");
        }
    }

    /// Mirror the FSM into the shared table and presence; wake the scheduler when the agent
    /// becomes available.
    fn publish(&self) {
        if let Some(row) = self
            .services
            .table
            .rows
            .write()
            .expect("agents lock")
            .get_mut(&self.agent_id)
        {
            row.view.fsm = self.fsm.clone();
        }
        self.services
            .presence
            .set_fsm_state(&self.agent_id, self.fsm.state.as_str());
        self.services.publisher.publish(
            crate::events::Topic::Presence,
            crate::events::HubEvent::AgentState {
                agent_id: self.agent_id.clone(),
                fsm_state: self.fsm.state.as_str(),
                current_task_id: self.fsm.current_task.clone(),
                unresponsive: self.fsm.unresponsive,
                last_state_change: self.fsm.last_state_change,
            },
        );
        if self.fsm.is_available() {
            if let Some(s) = self.services.scheduler.current() {
                let _ = s.send_message(SchedulerMsg::Kick);
            }
        }
    }
}

/// Push a task the queue has just recorded as assigned to the agent of `fsm`. The agent
/// may have left between its FSM taking the task and the queue's record (its disconnect
/// then found nothing to reclaim), so the FSM confirms first: it handles its disconnect
/// strictly before or after the confirmation. Without a confirmation the task goes back
/// to the queue at once instead of waiting for the stuck sweep.
pub async fn hand_over(fsm: &ActorRef<FsmMsg>, task: Task, task_queue: &Service<TaskMsg>) {
    let t = task.id.clone();
    let confirmed = fsm
        .call(|r| FsmMsg::Confirm(t, r), Some(CALL_TIMEOUT))
        .await;
    if let Ok(ractor::rpc::CallResult::Success(Some(session))) = confirmed {
        let _ = session.send_message(SessionMsg::Push(AgentPush::TaskAssign(Arc::new(task))));
        return;
    }
    let agent_id = task.assigned_to.clone();
    tracing::info!(task_id = %task.id, ?agent_id, "agent left while being assigned; reclaiming");
    let reclaim = |reply| TaskMsg::Reclaim {
        task_id: task.id,
        from: agent_id,
        reason: "agent_disconnect".into(),
        reply: Some(reply),
    };
    if let Err(e) = task_queue.call(reclaim, CALL_TIMEOUT).await {
        tracing::error!(error = %e, "reclaim failed");
    }
}

/// Connects and disconnects of one agent are serialised here, so that a quick reconnect
/// either rebinds the running FSM (the old connection's disconnect is then ignored) or
/// finds the old FSM gone, its tasks already reclaimed, and starts a fresh one.
pub enum AgentsMsg {
    /// An agent identified on `session`: start its FSM, or rebind the running one (F5).
    Connect {
        agent_id: String,
        name: String,
        capabilities: Value,
        session: ActorRef<SessionMsg>,
        reply: RpcReplyPort<()>,
    },
    /// A connection of the agent closed.
    Disconnect {
        agent_id: String,
        session: ActorId,
        reply: RpcReplyPort<()>,
    },
}

/// The `agents` supervisor: parent of every FSM. FSMs are not restarted: an FSM that
/// ends is an agent that left.
pub struct Agents;

impl Actor for Agents {
    type Msg = AgentsMsg;
    type State = FsmServices;
    type Arguments = FsmServices;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        services: FsmServices,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(services)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        services: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (agent_id, name, capabilities, session, reply) = match msg {
            AgentsMsg::Connect {
                agent_id,
                name,
                capabilities,
                session,
                reply,
            } => (agent_id, name, capabilities, session, reply),
            AgentsMsg::Disconnect {
                agent_id,
                session,
                reply,
            } => {
                if let Some(fsm) = services.table.fsm_of(&agent_id) {
                    let stopped = fsm
                        .call(|r| FsmMsg::SessionDown(session, r), Some(CALL_TIMEOUT))
                        .await;
                    if matches!(stopped, Ok(ractor::rpc::CallResult::Success(true))) {
                        services.table.remove_if(&agent_id, &fsm.get_id());
                    }
                }
                let _ = reply.send(());
                return Ok(());
            }
        };
        if let Some(fsm) = services.table.fsm_of(&agent_id) {
            let _ = fsm.send_message(FsmMsg::Rebind {
                session,
                name,
                capabilities,
            });
        } else {
            let filter = TaskFilter {
                status: Some(TaskStatus::Assigned),
                assigned_to: Some(agent_id.clone()),
                ..TaskFilter::default()
            };
            let adopt = services
                .task_queue
                .call(|r| TaskMsg::List(filter, r), CALL_TIMEOUT)
                .await
                .ok()
                .and_then(|tasks| tasks.into_iter().next().map(|t| t.id));
            let args = FsmArgs {
                agent_id,
                name,
                capabilities,
                session,
                adopt,
                services: services.clone(),
            };
            Actor::spawn_linked(None, AgentFsmActor, args, myself.get_cell()).await?;
        }
        let _ = reply.send(());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = event {
            tracing::error!(error = %err, "agent FSM crashed");
        }
        Ok(())
    }
}
