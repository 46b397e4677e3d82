//! The scheduler (reference §5.4): matches queued tasks to available agents. One pass at
//! a time (kicks that arrive during a pass coalesce into one more pass); each assignment
//! moves the agent's FSM out of `idle` before the queue records it, so no later pass can
//! see the agent idle (F11). Also the stuck sweep, which never takes a task from a
//! connected agent that accepted it (F8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::agents::{hand_over, AgentTable};
use crate::events::{HubEvent, TaskEventKind, Topic};
use crate::pubsub::{Subscribed, Subscriptions};
use crate::service::Service;
use crate::task_queue::TaskMsg;
use crate::{now_ms, CALL_TIMEOUT};

pub enum SchedulerMsg {
    /// Something changed: run a pass soon.
    Kick,
    Pass,
    StuckSweep,
    /// The agent rejected the task: do not offer it to that agent again for a while.
    Rejected(String, String),
}

pub struct SchedulerArgs {
    pub agents: Arc<AgentTable>,
    pub task_queue: Service<TaskMsg>,
    pub subscriptions: Arc<Subscriptions>,
    pub sweep_interval: Duration,
    pub stuck_after: Duration,
    /// How long a rejection keeps a task from the rejecting agent.
    pub rejection_ttl: Duration,
    /// Test hook (zero unless `--test-hooks`): pause between the FSM's yes and the
    /// queue's record of an assignment.
    pub test_assign_pause: Duration,
}

pub struct SchedulerState {
    args: SchedulerArgs,
    pass_pending: bool,
    rejections: HashMap<(String, String), Instant>,
    /// Kept for its subscriptions, which end when the state is dropped.
    _subscribed: Subscribed<SchedulerMsg>,
}

pub struct Scheduler;

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut subscribed = Subscribed::new(args.subscriptions.clone(), myself.clone(), |event| {
            let wake = match event.as_ref() {
                HubEvent::Task { kind, .. } => {
                    !matches!(kind, TaskEventKind::Assigned | TaskEventKind::DeadLetter)
                }
                HubEvent::AgentJoined(_) => true,
                _ => false,
            };
            wake.then_some(SchedulerMsg::Kick)
        });
        subscribed.add(Topic::Tasks);
        subscribed.add(Topic::Presence);
        myself.send_interval(args.sweep_interval, || SchedulerMsg::StuckSweep);
        let _ = myself.send_message(SchedulerMsg::Kick);
        Ok(SchedulerState {
            args,
            pass_pending: false,
            rejections: HashMap::new(),
            _subscribed: subscribed,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Kick => {
                if !state.pass_pending {
                    state.pass_pending = true;
                    let _ = myself.send_message(SchedulerMsg::Pass);
                }
            }
            SchedulerMsg::Pass => {
                state.pass_pending = false;
                state.pass().await;
            }
            SchedulerMsg::StuckSweep => state.stuck_sweep().await,
            SchedulerMsg::Rejected(task_id, agent_id) => {
                state.rejections.insert(
                    (task_id, agent_id),
                    Instant::now() + state.args.rejection_ttl,
                );
            }
        }
        Ok(())
    }
}

/// One assignment: the FSM leaves idle first (F11), then the queue records it durably,
/// then the FSM confirms and the agent is told (`hand_over`).
async fn assign(args: &SchedulerArgs, task_id: String, agent_id: String) {
    if !args.agents.assign(&agent_id, &task_id) {
        return;
    }
    if !args.test_assign_pause.is_zero() {
        tokio::time::sleep(args.test_assign_pause).await;
    }
    let (t, a) = (task_id.clone(), agent_id.clone());
    match args
        .task_queue
        .call(|r| TaskMsg::Assign(t, a, r), CALL_TIMEOUT)
        .await
    {
        Ok(Ok(task)) => hand_over(&args.agents, &agent_id, task, &args.task_queue).await,
        _ => args.agents.released(&agent_id, &task_id),
    }
}

impl SchedulerState {
    async fn pass(&mut self) {
        let agents = self.args.agents.available();
        if agents.is_empty() {
            return;
        }
        let now = Instant::now();
        self.rejections.retain(|_, until| *until > now);
        let excluded = self.rejections.keys().cloned().collect();
        let Ok(pairs) = self
            .args
            .task_queue
            .call(
                |reply| TaskMsg::Plan {
                    agents,
                    excluded,
                    reply,
                },
                CALL_TIMEOUT,
            )
            .await
        else {
            return;
        };
        // The pairs share no task and no agent, so they are made concurrently: their
        // durable writes share flushes (group commit) instead of waiting one by one.
        let args = &self.args;
        futures_util::future::join_all(
            pairs
                .into_iter()
                .map(|(task_id, agent_id)| assign(args, task_id, agent_id)),
        )
        .await;
    }

    async fn stuck_sweep(&mut self) {
        let Ok(assigned) = self
            .args
            .task_queue
            .call(TaskMsg::Assigned, CALL_TIMEOUT)
            .await
        else {
            return;
        };
        let cutoff = now_ms().saturating_sub(self.args.stuck_after.as_millis() as u64);
        for task in assigned.into_iter().filter(|t| t.updated_at < cutoff) {
            let agent_id = task.assigned_to.clone().unwrap_or_default();
            if self.args.agents.is_working_on(&agent_id, &task.id) {
                continue;
            }
            tracing::warn!(%agent_id, task_id = %task.id, "reclaiming a stuck task");
            let msg = TaskMsg::Reclaim {
                task_id: task.id,
                from: Some(agent_id),
                reason: "stuck".into(),
                reply: None,
            };
            let _ = self
                .args
                .task_queue
                .send(msg, crate::service::DEFAULT_WAIT)
                .await;
        }
    }
}
