//! Agent FSMs (reference §5.5) as rows of the shared [`AgentTable`]: one row per
//! identified agent, moved by whoever sees the event (the scheduler, the task queue, the
//! agent's session, its acceptance timer) under the table's lock, and read by the
//! scheduler and the HTTP layer without waiting. The `agents` actor serialises each
//! agent's connects and disconnects. An FSM is not an actor of its own: an actor per
//! agent cost about 5.5 KB of every connection (docs/BENCHMARKS.md, "Memory per idle
//! agent connection") and an actor hop per transition.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockWriteGuard, Weak};
use std::time::Duration;

use agentcom_core::fsm::{AgentFsm, AgentState};
use agentcom_core::scheduler::{capability_names, Candidate};
use agentcom_core::task::{Task, TaskStatus};
use agentcom_core::Millis;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use tokio::task::AbortHandle;

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
    /// The connection the agent's pushes go to (its newest, F5).
    session: ActorRef<SessionMsg>,
    /// Numbers each assignment, so that a stale acceptance timer is ignored.
    assignment: u64,
    /// The current assignment's acceptance timer, stopped once it is moot.
    timer: Option<AbortHandle>,
}

impl Row {
    fn stop_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

/// What an FSM's transitions reach beyond its row.
#[derive(Clone)]
pub struct FsmServices {
    pub publisher: crate::pubsub::Publisher,
    pub presence: Arc<PresenceTable>,
    pub task_queue: Service<TaskMsg>,
    pub scheduler: Service<SchedulerMsg>,
    pub accept_timeout: Duration,
}

/// Every identified agent's FSM. Each transition happens under the write lock and
/// publishes the new state before the lock is released, so that observers see an agent's
/// states in the order they were taken.
pub struct AgentTable {
    rows: RwLock<HashMap<String, Row>>,
    services: FsmServices,
}

impl AgentTable {
    pub fn new(services: FsmServices) -> Self {
        AgentTable {
            rows: RwLock::default(),
            services,
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Row>> {
        self.rows.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Row>> {
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Is the agent connected (identified, its FSM running)?
    pub fn contains(&self, agent_id: &str) -> bool {
        self.read().contains_key(agent_id)
    }

    pub fn get(&self, agent_id: &str) -> Option<AgentView> {
        self.read().get(agent_id).map(|r| r.view.clone())
    }

    pub fn list(&self) -> Vec<AgentView> {
        let mut list: Vec<AgentView> = self.read().values().map(|r| r.view.clone()).collect();
        list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        list
    }

    /// Agents the scheduler may offer a task to now, the one idle the longest first (its
    /// FSM's last change), so that work spreads over equally able agents instead of going
    /// to the first by id every time.
    pub fn available(&self) -> Vec<Candidate> {
        let rows = self.read();
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
        self.read().get(agent_id).is_some_and(|r| {
            matches!(r.view.fsm.state, AgentState::Working | AgentState::Blocked)
                && r.view.fsm.current_task.as_deref() == Some(task_id)
        })
    }

    pub fn is_unresponsive(&self, agent_id: &str) -> bool {
        self.read()
            .get(agent_id)
            .is_some_and(|r| r.view.fsm.unresponsive)
    }

    /// The scheduler (or an admin push) offers a task: idle → assigned, with an
    /// acceptance timer. Answers whether the agent took it.
    pub fn assign(self: &Arc<Self>, agent_id: &str, task_id: &str) -> bool {
        let mut rows = self.write();
        let Some(row) = rows.get_mut(agent_id) else {
            return false;
        };
        if !row.view.fsm.assign(task_id, now_ms()) {
            return false;
        }
        self.start_timer(row, task_id);
        self.publish(row);
        true
    }

    /// The queue recorded the assignment: the connection to push it to, if the FSM still
    /// holds the task (`None`: the agent left meanwhile; the caller reclaims).
    pub fn confirm(&self, agent_id: &str, task_id: &str) -> Option<ActorRef<SessionMsg>> {
        self.read()
            .get(agent_id)
            .filter(|r| r.view.fsm.current_task.as_deref() == Some(task_id))
            .map(|r| r.session.clone())
    }

    /// The agent accepted its task: assigned → working.
    pub fn accepted(&self, agent_id: &str, task_id: &str) {
        self.transition(agent_id, |fsm, now| fsm.accepted(task_id, now));
    }

    /// The task left the agent (completed, failed, reclaimed, rejected, refused).
    pub fn released(&self, agent_id: &str, task_id: &str) {
        self.transition(agent_id, |fsm, now| fsm.released(task_id, now));
    }

    /// `task_continue`: the agent resumes a task assigned to it (F12).
    pub fn resume(&self, agent_id: &str, task_id: &str) {
        self.transition(agent_id, |fsm, now| {
            fsm.resume(task_id, now);
            true
        });
    }

    /// Any frame from the agent clears `unresponsive` (F10).
    pub fn showed_life(&self, agent_id: &str) {
        if self.is_unresponsive(agent_id) {
            self.transition(agent_id, |fsm, _| {
                let was = fsm.unresponsive;
                fsm.showed_life();
                was
            });
        }
    }

    /// Apply `step` to the agent's FSM; when it changed the FSM, the new state is
    /// published, and the acceptance timer stopped unless a task still awaits acceptance.
    fn transition(&self, agent_id: &str, step: impl FnOnce(&mut AgentFsm, Millis) -> bool) {
        let mut rows = self.write();
        let Some(row) = rows.get_mut(agent_id) else {
            return;
        };
        if step(&mut row.view.fsm, now_ms()) {
            if row.view.fsm.state != AgentState::Assigned {
                row.stop_timer();
            }
            self.publish(row);
        }
    }

    fn start_timer(self: &Arc<Self>, row: &mut Row, task_id: &str) {
        row.stop_timer();
        row.assignment += 1;
        let (table, timeout) = (Arc::downgrade(self), self.services.accept_timeout);
        let (agent_id, task_id, assignment) = (
            row.view.agent_id.clone(),
            task_id.to_string(),
            row.assignment,
        );
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            accept_timed_out(table, agent_id, task_id, assignment).await;
        });
        row.timer = Some(timer.abort_handle());
    }

    /// Mirror the FSM into presence and the event stream; wake the scheduler when the
    /// agent became available. Called with the row locked.
    fn publish(&self, row: &Row) {
        let (agent_id, fsm) = (&row.view.agent_id, &row.view.fsm);
        self.services
            .presence
            .set_fsm_state(agent_id, fsm.state.as_str());
        self.services.publisher.publish(
            crate::events::Topic::Presence,
            crate::events::HubEvent::AgentState {
                agent_id: agent_id.clone(),
                fsm_state: fsm.state.as_str(),
                current_task_id: fsm.current_task.clone(),
                unresponsive: fsm.unresponsive,
                last_state_change: fsm.last_state_change,
            },
        );
        if fsm.is_available() {
            if let Some(s) = self.services.scheduler.current() {
                let _ = s.send_message(SchedulerMsg::Kick);
            }
        }
    }

    /// A first connection of the agent: its FSM starts, holding `adopt` (a task the
    /// queue already has assigned to it) if any.
    fn bind(
        self: &Arc<Self>,
        agent_id: String,
        name: String,
        capabilities: Value,
        session: ActorRef<SessionMsg>,
        adopt: Option<String>,
    ) {
        let now = now_ms();
        let mut row = Row {
            view: AgentView {
                agent_id: agent_id.clone(),
                name,
                fsm: AgentFsm::new(now),
                capabilities,
                connected_at: now,
            },
            session,
            assignment: 0,
            timer: None,
        };
        if let Some(task_id) = adopt {
            row.view.fsm.assign(&task_id, now);
            self.start_timer(&mut row, &task_id);
        }
        let mut rows = self.write();
        self.publish(&row);
        if let Some(mut old) = rows.insert(agent_id, row) {
            old.stop_timer();
        }
    }

    /// A newer connection identified as a connected agent (F5).
    fn rebind(
        &self,
        agent_id: &str,
        name: String,
        capabilities: Value,
        session: ActorRef<SessionMsg>,
    ) {
        let mut rows = self.write();
        if let Some(row) = rows.get_mut(agent_id) {
            row.session = session;
            row.view.name = name;
            row.view.capabilities = capabilities;
            self.publish(row);
        }
    }

    /// A connection of the agent closed: if it is the one its FSM is bound to, the FSM
    /// ends (true).
    fn unbind(&self, agent_id: &str, session: ActorId) -> bool {
        let mut rows = self.write();
        match rows.get_mut(agent_id) {
            Some(row) if row.session.get_id() == session => row.stop_timer(),
            _ => return false,
        }
        rows.remove(agent_id);
        true
    }

    /// Reclaim and wait until the reclaim is durable (so that a reconnecting agent sees it).
    async fn reclaim_now(&self, agent_id: &str, task_id: &str, reason: &str) {
        let (t, a, r) = (
            task_id.to_string(),
            agent_id.to_string(),
            reason.to_string(),
        );
        let msg = |reply| TaskMsg::Reclaim {
            task_id: t,
            from: Some(a),
            reason: r,
            reply: Some(reply),
        };
        if let Err(e) = self.services.task_queue.call(msg, CALL_TIMEOUT).await {
            tracing::error!(agent_id, task_id, error = %e, "reclaim failed");
        }
    }

    /// The tasks the queue has assigned to the agent.
    async fn assigned_to(&self, agent_id: &str) -> Vec<Task> {
        let filter = TaskFilter {
            status: Some(TaskStatus::Assigned),
            assigned_to: Some(agent_id.to_string()),
            ..TaskFilter::default()
        };
        self.services
            .task_queue
            .call(|r| TaskMsg::List(filter, r), CALL_TIMEOUT)
            .await
            .unwrap_or_default()
    }
}

/// An assignment's acceptance timer fired: if the agent still has not accepted that
/// task, it goes idle and unresponsive, and the task goes back to the queue.
async fn accept_timed_out(table: Weak<AgentTable>, agent_id: String, task_id: String, n: u64) {
    let Some(table) = table.upgrade() else {
        return;
    };
    let timed_out = {
        let mut rows = table.write();
        match rows.get_mut(&agent_id) {
            Some(row) if row.assignment == n => {
                // This task is the timer: dropped, not aborted, so that it goes on.
                row.timer = None;
                let timed_out = row.view.fsm.accept_timed_out(&task_id, now_ms());
                if timed_out {
                    table.publish(row);
                }
                timed_out
            }
            _ => false,
        }
    };
    if !timed_out {
        return;
    }
    tracing::warn!(%agent_id, %task_id, "task not accepted in time; reclaiming it");
    let msg = TaskMsg::Reclaim {
        task_id: task_id.clone(),
        from: Some(agent_id.clone()),
        reason: "accept_timeout".into(),
        reply: None,
    };
    if let Err(e) = table.services.task_queue.send(msg, DEFAULT_WAIT).await {
        tracing::error!(%agent_id, %task_id, error = %e, "reclaim not delivered");
    }
}

/// Push a task the queue has just recorded as assigned to `agent_id`. The agent may have
/// left between its FSM taking the task and the queue's record (its disconnect then found
/// nothing to reclaim), so the FSM confirms first, under the table's lock: strictly before
/// or after the disconnect ends it. Without a confirmation the task goes back to the
/// queue at once instead of waiting for the stuck sweep.
pub async fn hand_over(
    agents: &AgentTable,
    agent_id: &str,
    task: Task,
    task_queue: &Service<TaskMsg>,
) {
    if let Some(session) = agents.confirm(agent_id, &task.id) {
        let _ = session.send_message(SessionMsg::Push(AgentPush::TaskAssign(Arc::new(task))));
        return;
    }
    tracing::info!(task_id = %task.id, agent_id, "agent left while being assigned; reclaiming");
    let reclaim = |reply| TaskMsg::Reclaim {
        task_id: task.id,
        from: Some(agent_id.to_string()),
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

/// The `agents` actor: starts, rebinds and ends agents' FSMs (rows of the shared
/// [`AgentTable`], which outlives a restart of this actor).
pub struct Agents;

impl Actor for Agents {
    type Msg = AgentsMsg;
    type State = Arc<AgentTable>;
    type Arguments = Arc<AgentTable>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        table: Arc<AgentTable>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(table)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        table: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentsMsg::Connect {
                agent_id,
                name,
                capabilities,
                session,
                reply,
            } => {
                // Rows come and go only here, so the row found is the one rebound.
                if table.contains(&agent_id) {
                    table.rebind(&agent_id, name, capabilities, session);
                } else {
                    let adopt = table
                        .assigned_to(&agent_id)
                        .await
                        .into_iter()
                        .next()
                        .map(|t| t.id);
                    table.bind(agent_id, name, capabilities, session, adopt);
                }
                let _ = reply.send(());
            }
            AgentsMsg::Disconnect {
                agent_id,
                session,
                reply,
            } => {
                // The FSM ends first, so that no new assignment reaches it; then every task
                // the queue has assigned to the agent is reclaimed, durably, before a
                // reconnect of the agent (queued behind this) starts a fresh FSM.
                if table.unbind(&agent_id, session) {
                    for task in table.assigned_to(&agent_id).await {
                        table
                            .reclaim_now(&agent_id, &task.id, "agent_disconnect")
                            .await;
                    }
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
