//! A record that cannot be read back never stops an actor: loads, sweeps and listings skip
//! it (start-up moves it to quarantine before the actors start; these records arrive after
//! that, straight through the engine, as a bug or an older build could have written them).

mod common;

use std::sync::Arc;

use agentcom_hub::task_queue::TaskFilter;
use agentcom_hub::{Hub, HubSettings};
use agentcom_store::{encode, mailbox_key, Engine, SledEngine, StoreReader, Table, WriteOp};
use common::{new_task, within};
use serde_json::json;

fn deeply_nested(levels: usize) -> serde_json::Value {
    let mut v = json!([]);
    for _ in 1..levels {
        v = json!([v]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_load_and_sweep_past_unreadable_records() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    let settings = HubSettings {
        backup_dir: dir.path().join("backups"),
        ..HubSettings::default()
    };
    let hub = within("the hub starts", Hub::start(engine.clone(), settings))
        .await
        .unwrap();
    let kept = hub.submit_task(new_task("kept", 1)).await.unwrap();

    let deep = encode(&json!({"seq": 7, "agent_id": "bob", "message": deeply_nested(130)}));
    engine
        .apply(&[
            WriteOp::Put {
                table: Table::AgentMailbox,
                key: mailbox_key("bob", 7),
                value: deep,
            },
            WriteOp::Put {
                table: Table::TaskQueue,
                key: b"task-garbled".to_vec(),
                value: encode(&json!({"not": "a task"})),
            },
        ])
        .unwrap();

    // The hourly sweep used to crash the mailbox actor in a loop on such a record.
    hub.mailbox_evict().await.unwrap();
    let reader = StoreReader::new(engine.clone() as Arc<dyn Engine>);
    let unread = agentcom_hub::mailbox::poll(&reader, "bob", 0).unwrap();
    assert!(unread.is_empty(), "{unread:?}");
    for actor in ["mailbox", "task_queue"] {
        hub.restart_actor(actor).await.unwrap();
    }
    let tasks = hub.tasks(TaskFilter::default()).await.unwrap();
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![kept.id.as_str()]);
    assert!(hub.submit_task(new_task("after", 1)).await.is_ok());
}
