//! Restarts and crashes of hub actors through the hub's own supervisor: the new instance
//! reloads its state from the store and no acknowledged write is lost.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentcom_core::config::{ConfigKey, ConfigValue};
use agentcom_core::fsm::AgentState;
use agentcom_core::supervision::RestartPolicy;
use agentcom_core::task::{FailOutcome, Task, TaskStatus};
use agentcom_hub::events::{ActorEventKind, HubEvent, Topic};
use agentcom_hub::supervisor::ChildStatus;
use agentcom_hub::task_queue::{TaskFilter, TaskMsg};
use agentcom_hub::Hub;
use agentcom_store::Table;
use common::{eventually, new_task, start_hub, within, Agent, EventLog, WAIT};
use serde_json::json;

async fn record(hub: &Hub, name: &str) -> agentcom_hub::supervisor::ChildRecord {
    let actors = hub.actors().await.expect("the supervisor answers");
    actors.into_iter().find(|r| r.name == name).expect("record")
}

fn stored_tasks(hub: &Hub) -> BTreeSet<String> {
    hub.reader
        .scan_prefix(Table::TaskQueue, b"")
        .expect("scan")
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).expect("utf-8 key"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_task_queue_under_submits_keeps_every_acknowledged_task() {
    let t = start_hub(|_| {}).await;
    let hub = t.hub.clone();
    let mut acknowledged = BTreeSet::new();
    for n in 0..20 {
        let task = hub.submit_task(new_task(&format!("before {n}"), 3)).await;
        acknowledged.insert(task.expect("submitted").id);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));
    let submitter = {
        let (hub, stop, submitted) = (hub.clone(), stop.clone(), submitted.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let task = hub.submit_task(new_task("during", 3)).await;
                ids.push(task.expect("no submit fails across a restart").id);
                submitted.fetch_add(1, Ordering::SeqCst);
            }
            ids
        })
    };
    for round in 1..=3 {
        let before = submitted.load(Ordering::SeqCst);
        let restarted = hub.restart_actor("task_queue").await.expect("restarted");
        assert_eq!(
            (restarted.status, restarted.restarts),
            (ChildStatus::Running, round)
        );
        eventually("submits reach the new instance", || {
            submitted.load(Ordering::SeqCst) > before + 5
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    acknowledged.extend(within("the submitter stops", submitter).await.unwrap());

    // The last instance knows only what it loaded from the store and what came after.
    let listed: BTreeSet<String> = hub
        .tasks(TaskFilter::default())
        .await
        .expect("listed")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, acknowledged, "acknowledged tasks lost or invented");
    assert_eq!(stored_tasks(&hub), acknowledged);
    assert_eq!(hub.task_stats().await.unwrap().queued, acknowledged.len());
    hub.shutdown().await;
}

async fn fail(hub: &Hub, agent_id: &str, task_id: &str, generation: u64) -> (Task, FailOutcome) {
    let (task_id, agent_id) = (task_id.to_string(), agent_id.to_string());
    let msg = |reply| TaskMsg::Fail {
        task_id,
        agent_id,
        generation,
        error: json!("broken"),
        reply,
    };
    hub.task_queue
        .call(msg, WAIT)
        .await
        .expect("task_queue answers")
        .expect("failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_queue_restart_reloads_dead_letters_and_leaves_the_fsms_alone() {
    let t = start_hub(|_| {}).await;
    let hub = &t.hub;
    let mut alpha = Agent::connect(hub, "alpha").await;

    let doomed = hub.submit_task(new_task("fails once", 1)).await.unwrap();
    assert_eq!(alpha.next_task().await.id, doomed.id);
    let (_, outcome) = fail(hub, "alpha", &doomed.id, 1).await;
    assert_eq!(outcome, FailOutcome::DeadLetter);

    let working = hub.submit_task(new_task("in progress", 3)).await.unwrap();
    assert_eq!(alpha.next_task().await.id, working.id);
    let (id, agent) = (working.id.clone(), "alpha".to_string());
    hub.task_queue
        .call(|r| TaskMsg::Touch(id, agent, r), WAIT)
        .await
        .unwrap()
        .expect("touched");
    hub.agent_table.accepted("alpha", &working.id);
    let connected_at = hub
        .agent_table
        .get("alpha")
        .expect("alpha's row")
        .connected_at;

    hub.restart_actor("task_queue").await.expect("restarted");

    let dead: Vec<String> = hub
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(dead, vec![doomed.id.clone()]);
    let reloaded = hub.task(&working.id).await.unwrap().expect("reloaded");
    assert_eq!(
        (
            reloaded.status,
            reloaded.assigned_to.as_deref(),
            reloaded.generation
        ),
        (TaskStatus::Assigned, Some("alpha"), 1)
    );
    // The FSM is the same, still working on its task.
    let view = hub.agent_table.get("alpha").expect("alpha's row");
    assert_eq!(view.connected_at, connected_at);
    assert_eq!(
        (view.fsm.state, view.fsm.current_task.as_deref()),
        (AgentState::Working, Some(working.id.as_str()))
    );

    // The work goes on against the new instance.
    let (id, agent) = (working.id.clone(), "alpha".to_string());
    let complete = |reply| TaskMsg::Complete {
        task_id: id,
        agent_id: agent,
        generation: 1,
        result: json!({}),
        tokens_used: None,
        reply,
    };
    hub.task_queue
        .call(complete, WAIT)
        .await
        .unwrap()
        .expect("completed");
    let retried = hub
        .retry_task(&doomed.id)
        .await
        .expect("retried from dead letter");
    assert_eq!(
        (retried.status, retried.generation),
        (TaskStatus::Queued, 2)
    );
    let again = alpha.next_task().await;
    assert_eq!(
        (again.id.as_str(), again.generation),
        (doomed.id.as_str(), 3)
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_crash_loses_no_acknowledged_write() {
    let t = start_hub(|s| {
        s.test_hooks = true;
        s.restart_policy = RestartPolicy {
            initial_delay: Duration::from_millis(10),
            ..RestartPolicy::default()
        };
    })
    .await;
    let hub = t.hub.clone();
    let mut actors = EventLog::subscribe(&hub.subscriptions, Topic::Actors);
    let key = ConfigKey::HeartbeatIntervalMs;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (hub, stop, writes) = (hub.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let (mut last_ok, mut failed) = (None, 0);
            let mut v = 0u64;
            while !stop.load(Ordering::SeqCst) {
                v += 1;
                // A put queued in the instance that crashes is refused, never half-done.
                match hub.config_put(key, ConfigValue::Millis(v)).await {
                    Ok(()) => last_ok = Some(v),
                    Err(_) => failed += 1,
                }
                writes.fetch_add(1, Ordering::SeqCst);
            }
            (last_ok, failed)
        })
    };
    for crashes in 1..=3 {
        let before = writes.load(Ordering::SeqCst);
        hub.crash_actor("config")
            .await
            .expect("config has a crash hook");
        let restarted = actors
            .next_where("config restarts", |e| match e {
                HubEvent::Actor(a)
                    if a.kind == ActorEventKind::Restarted && a.record.name == "config" =>
                {
                    Some(a.record.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(restarted.crashes, crashes);
        eventually("puts reach the new instance", || {
            writes.load(Ordering::SeqCst) > before + 5
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let (last_ok, failed) = within("the writer stops", writer).await.unwrap();
    let last_ok = last_ok.expect("some put was acknowledged");
    assert!(failed <= 3, "{failed} puts failed for 3 crashes");

    // Nothing after the last acknowledged put was written, and it was not lost.
    assert_eq!(
        hub.config_get(key).await.unwrap(),
        Some(ConfigValue::Millis(last_ok))
    );
    let stored: Option<ConfigValue> = hub
        .reader
        .get_record(Table::AgentcomConfig, key.name().as_bytes())
        .unwrap();
    assert_eq!(stored, Some(ConfigValue::Millis(last_ok)));
    let config = record(&hub, "config").await;
    assert_eq!((config.status, config.crashes), (ChildStatus::Running, 3));
    assert!(config
        .last_error
        .is_some_and(|e| e.contains("injected crash")));
    hub.shutdown().await;
}
