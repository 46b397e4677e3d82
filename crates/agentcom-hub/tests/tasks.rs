//! The task queue, the scheduler and the agent FSMs together, through `Services` and the
//! `agents` supervisor, with stand-in sessions that record what is pushed to them.

mod common;

use agentcom_core::fsm::{AgentFsm, AgentState};
use agentcom_core::task::{Task, TaskError, TaskStatus};
use agentcom_hub::events::{HubEvent, TaskEventKind, Topic};
use agentcom_hub::task_queue::TaskMsg;
use agentcom_hub::{Hub, HubError};
use agentcom_store::Table;
use common::{eventually, new_task, start_hub, Agent, EventLog, WAIT};
use serde_json::json;
use std::time::Duration;

fn fsm(hub: &Hub, agent_id: &str) -> Option<AgentFsm> {
    hub.agent_table.get(agent_id).map(|v| v.fsm)
}

/// The agent's FSM is in `state`, holding `task` (bounded wait).
async fn fsm_is(hub: &Hub, agent_id: &str, state: AgentState, task: Option<&str>) {
    let what = format!("{agent_id}'s FSM is {} with {task:?}", state.as_str());
    eventually(&what, || {
        fsm(hub, agent_id).is_some_and(|f| f.state == state && f.current_task.as_deref() == task)
    })
    .await;
}

/// What the agent's session does on `task_accepted`.
async fn accept(hub: &Hub, agent_id: &str, task_id: &str) {
    let (t, a) = (task_id.to_string(), agent_id.to_string());
    hub.task_queue
        .call(|r| TaskMsg::Touch(t, a, r), WAIT)
        .await
        .expect("task_queue answers")
        .expect("the assignee may touch its task");
    assert!(hub.agent_table.contains(agent_id), "the agent has an FSM");
    hub.agent_table.accepted(agent_id, task_id);
}

/// The reason of the next reclaim of `task_id` on the `tasks` topic.
async fn reclaim_of(events: &mut EventLog, task_id: &str) -> serde_json::Value {
    let reclaimed = events
        .next_where("the task's reclaim", |e| match e {
            HubEvent::Task {
                kind: TaskEventKind::Reclaimed,
                task: t,
            } if t.id == task_id => Some(t.clone()),
            _ => None,
        })
        .await;
    reclaimed.history[0].details.clone()
}

async fn complete(
    hub: &Hub,
    agent_id: &str,
    task_id: &str,
    generation: u64,
) -> Result<Task, HubError> {
    let (task_id, agent_id) = (task_id.to_string(), agent_id.to_string());
    let msg = |reply| TaskMsg::Complete {
        task_id,
        agent_id,
        generation,
        result: json!({"ok": true}),
        tokens_used: Some(7),
        reply,
    };
    hub.task_queue
        .call(msg, WAIT)
        .await
        .expect("task_queue answers")
}

async fn reclaim(hub: &Hub, task_id: &str, from: Option<&str>) -> Result<Task, HubError> {
    let (task_id, from) = (task_id.to_string(), from.map(str::to_string));
    let msg = |reply| TaskMsg::Reclaim {
        task_id,
        from,
        reason: "test".into(),
        reply: Some(reply),
    };
    hub.task_queue
        .call(msg, WAIT)
        .await
        .expect("task_queue answers")
}

fn stored(hub: &Hub, task_id: &str) -> Task {
    hub.reader
        .get_record(Table::TaskQueue, task_id.as_bytes())
        .expect("read")
        .expect("the task is in the store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_to_an_idle_fsm_and_its_completion_frees_the_fsm_for_the_next() {
    let t = start_hub(|_| {}).await;
    let hub = &t.hub;
    let mut alpha = Agent::connect(hub, "alpha").await;
    fsm_is(hub, "alpha", AgentState::Idle, None).await;

    let first = hub
        .submit_task(new_task("first", 3))
        .await
        .expect("submitted");
    // Acknowledged, so stored (the scheduler may already have assigned it).
    assert_eq!(stored(hub, &first.id).description, "first");
    let pushed = alpha.next_task().await;
    assert_eq!(
        (pushed.id.as_str(), pushed.generation),
        (first.id.as_str(), 1)
    );
    assert_eq!(pushed.assigned_to.as_deref(), Some("alpha"));
    // The FSM took the task before the queue recorded it, and the push came after both.
    assert_eq!(
        fsm(hub, "alpha").map(|f| (f.state, f.current_task)),
        Some((AgentState::Assigned, Some(first.id.clone())))
    );
    assert_eq!(stored(hub, &first.id).status, TaskStatus::Assigned);

    // A busy agent is offered nothing more.
    let second = hub
        .submit_task(new_task("second", 3))
        .await
        .expect("submitted");
    accept(hub, "alpha", &first.id).await;
    fsm_is(hub, "alpha", AgentState::Working, Some(&first.id)).await;
    assert_eq!(
        hub.task(&second.id).await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
    assert!(alpha.no_task_pushed());

    let done = complete(hub, "alpha", &first.id, 1)
        .await
        .expect("completed");
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(stored(hub, &first.id).status, TaskStatus::Completed);
    // The completion released the FSM, and the scheduler gave it the waiting task.
    let next = alpha.next_task().await;
    assert_eq!((next.id.as_str(), next.generation), (second.id.as_str(), 1));
    fsm_is(hub, "alpha", AgentState::Assigned, Some(&second.id)).await;
    let twice = complete(hub, "alpha", &first.id, 1).await.unwrap_err();
    assert!(
        matches!(twice, HubError::Task(TaskError::InvalidState)),
        "{twice:?}"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_returns_the_task_and_generations_only_grow() {
    let t = start_hub(|_| {}).await;
    let hub = &t.hub;
    let mut events = EventLog::subscribe(&hub.subscriptions, Topic::Tasks);
    let mut alpha = Agent::connect(hub, "alpha").await;
    let task = hub
        .submit_task(new_task("reclaimed", 3))
        .await
        .expect("submitted");
    assert_eq!(alpha.next_task().await.generation, 1);

    let back = reclaim(hub, &task.id, Some("alpha"))
        .await
        .expect("reclaimed");
    assert_eq!((back.status, back.generation), (TaskStatus::Queued, 2));
    assert_eq!(back.assigned_to, None);
    assert_eq!(back.history[0].event, "reclaimed");
    // The FSM was released, so the task comes straight back with a newer generation.
    let again = alpha.next_task().await;
    assert_eq!((again.id.as_str(), again.generation), (task.id.as_str(), 3));

    // Fencing: the first assignment's generation can no longer finish the task.
    let stale = complete(hub, "alpha", &task.id, 1).await.unwrap_err();
    assert!(
        matches!(stale, HubError::Task(TaskError::StaleGeneration)),
        "{stale:?}"
    );
    let other = reclaim(hub, &task.id, Some("beta")).await.unwrap_err();
    assert!(
        matches!(other, HubError::Task(TaskError::NotAssignee)),
        "{other:?}"
    );
    complete(hub, "alpha", &task.id, 3)
        .await
        .expect("current generation completes");
    // A finished task is no longer anyone's to give back.
    let late = reclaim(hub, &task.id, Some("alpha")).await.unwrap_err();
    assert!(
        matches!(late, HubError::Task(TaskError::NotAssignee)),
        "{late:?}"
    );
    let late = reclaim(hub, &task.id, None).await.unwrap_err();
    assert!(
        matches!(late, HubError::Task(TaskError::NotAssigned)),
        "{late:?}"
    );
    assert_eq!(stored(hub, &task.id).generation, 3);

    // One event per transition, and the generation never goes back.
    let mut seen = Vec::new();
    while seen.last().map(|(k, _)| *k) != Some(TaskEventKind::Completed) {
        let next = events
            .next_where("the task's next event", |e| match e {
                HubEvent::Task { kind, task: t } if t.id == task.id => Some((*kind, t.generation)),
                _ => None,
            })
            .await;
        seen.push(next);
    }
    use TaskEventKind::*;
    assert_eq!(
        seen,
        vec![
            (Submitted, 0),
            (Assigned, 1),
            (Reclaimed, 2),
            (Assigned, 3),
            (Completed, 3)
        ]
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsm_s_disconnect_reclaims_its_task_for_another_agent() {
    let t = start_hub(|_| {}).await;
    let hub = &t.hub;
    let mut alpha = Agent::connect(hub, "alpha").await;
    let task = hub
        .submit_task(new_task("handed on", 3))
        .await
        .expect("submitted");
    assert_eq!(alpha.next_task().await.id, task.id);
    accept(hub, "alpha", &task.id).await;

    // A newer connection rebinds the FSM; the old one's disconnect then changes nothing.
    let old = alpha.reconnect(hub).await;
    alpha.disconnect(hub, &old).await;
    fsm_is(hub, "alpha", AgentState::Working, Some(&task.id)).await;
    assert!(hub.agent_table.get("alpha").is_some());
    assert_eq!(
        hub.task(&task.id).await.unwrap().unwrap().status,
        TaskStatus::Assigned
    );

    let mut beta = Agent::connect(hub, "beta").await;
    fsm_is(hub, "beta", AgentState::Idle, None).await;
    let current = alpha.session.clone();
    alpha.disconnect(hub, &current).await;
    // Disconnect answers after the FSM reclaimed durably and stopped.
    assert!(
        hub.agent_table.get("alpha").is_none(),
        "alpha's FSM row outlived it"
    );
    assert!(stored(hub, &task.id)
        .history
        .iter()
        .any(|e| e.event == "reclaimed" && e.details == json!("agent_disconnect")));

    let moved = beta.next_task().await;
    assert_eq!((moved.id.as_str(), moved.generation), (task.id.as_str(), 3));
    assert_eq!(moved.assigned_to.as_deref(), Some("beta"));
    complete(hub, "beta", &task.id, 3)
        .await
        .expect("beta completes it");
    fsm_is(hub, "beta", AgentState::Idle, None).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_not_accepted_in_time_is_reclaimed_and_the_agent_skipped() {
    let t = start_hub(|s| s.accept_timeout = Duration::from_millis(200)).await;
    let hub = &t.hub;
    let mut events = EventLog::subscribe(&hub.subscriptions, Topic::Tasks);
    let mut alpha = Agent::connect(hub, "alpha").await;
    let task = hub
        .submit_task(new_task("ignored", 3))
        .await
        .expect("submitted");
    assert_eq!(alpha.next_task().await.generation, 1);

    assert_eq!(
        reclaim_of(&mut events, &task.id).await,
        json!("accept_timeout")
    );
    eventually("alpha is idle and unresponsive", || {
        fsm(hub, "alpha").is_some_and(|f| f.state == AgentState::Idle && f.unresponsive)
    })
    .await;
    assert!(
        alpha.no_task_pushed(),
        "offered again to an unresponsive agent"
    );

    // Once it shows life it is offered the task again.
    hub.agent_table.showed_life("alpha");
    let again = alpha.next_task().await;
    assert_eq!((again.id.as_str(), again.generation), (task.id.as_str(), 3));
    hub.shutdown().await;
}

/// The acceptance timer stops once the task is accepted, and only then: a task pushed by
/// an admin to an unresponsive agent still times out after the agent shows life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptance_timer_stops_at_acceptance_and_not_at_a_sign_of_life() {
    let t = start_hub(|s| s.accept_timeout = Duration::from_millis(200)).await;
    let hub = &t.hub;
    let mut events = EventLog::subscribe(&hub.subscriptions, Topic::Tasks);
    let mut alpha = Agent::connect(hub, "alpha").await;
    let accepted = hub.submit_task(new_task("accepted", 3)).await.unwrap();
    assert_eq!(alpha.next_task().await.id, accepted.id);
    accept(hub, "alpha", &accepted.id).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    fsm_is(hub, "alpha", AgentState::Working, Some(&accepted.id)).await;
    complete(hub, "alpha", &accepted.id, 1)
        .await
        .expect("completed");

    // Unresponsive: an ignored task times out.
    let ignored = hub.submit_task(new_task("ignored", 3)).await.unwrap();
    assert_eq!(alpha.next_task().await.id, ignored.id);
    eventually("alpha is unresponsive", || {
        fsm(hub, "alpha").is_some_and(|f| f.unresponsive)
    })
    .await;
    // An admin push reaches it all the same; a sign of life does not stop the timer.
    let pushed = hub
        .push_task("alpha", new_task("pushed", 3))
        .await
        .expect("pushed to an idle agent");
    hub.agent_table.showed_life("alpha");
    assert_eq!(
        reclaim_of(&mut events, &pushed.id).await,
        json!("accept_timeout")
    );
    hub.shutdown().await;
}
