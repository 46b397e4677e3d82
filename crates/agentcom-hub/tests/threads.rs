//! The threads actor over sled (issue 9 #5): indexing a reply writes the same few bytes
//! however many replies its parent has; the index keeps the newest `keep` messages and at
//! most `max_replies` replies per parent; an index of the earlier layout (one children
//! list per parent) is renumbered at start and still walks the same.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agentcom_core::message::Message;
use agentcom_hub::threads::{self, ThreadLimits, ThreadsMsg};
use agentcom_hub::{Hub, HubSettings};
use agentcom_store::{
    encode, Engine, Record, SledEngine, StoreError, StoreReader, Table, TableStats, WriteOp,
};
use common::{within, WAIT};

/// The engine's record visitor (`agentcom_store`'s `Visitor`, which it does not export).
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// Sled, counting the key and value bytes written to the thread tables.
struct CountingEngine {
    sled: SledEngine,
    thread_bytes: AtomicU64,
}

impl Engine for CountingEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.sled.get(table, key)
    }
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.sled.scan_prefix(table, prefix)
    }
    fn range(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.sled.range(table, from, to, limit)
    }
    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<Record>, StoreError> {
        self.sled.last_with_prefix(table, prefix)
    }
    fn for_each(&self, table: Table, f: &mut Visit<'_>) -> Result<(), StoreError> {
        self.sled.for_each(table, f)
    }
    fn apply(&self, batch: &[WriteOp]) -> Result<(), StoreError> {
        let bytes: usize = batch
            .iter()
            .filter(|op| matches!(op.table(), Table::ThreadMessages | Table::ThreadReplies))
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
            })
            .sum();
        self.thread_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.sled.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.sled.flush()
    }
    fn stats(&self, table: Table) -> TableStats {
        self.sled.stats(table)
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.sled.size_on_disk()
    }
    fn was_recovered(&self) -> bool {
        self.sled.was_recovered()
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

/// Open the store, waiting out (up to 10 s) the lock of an engine just dropped: sled's
/// background flusher lets go of the directory a moment after the last handle is gone.
async fn open(dir: &std::path::Path) -> SledEngine {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledEngine::open(dir) {
            Err(agentcom_store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            opened => return opened.expect("sled opens"),
        }
    }
}

async fn start(dir: &std::path::Path, limits: ThreadLimits) -> (Hub, Arc<CountingEngine>) {
    let engine = Arc::new(CountingEngine {
        sled: open(dir).await,
        thread_bytes: AtomicU64::new(0),
    });
    let settings = HubSettings {
        backup_dir: dir.join("backups"),
        thread_limits: limits,
        ..HubSettings::default()
    };
    let hub = within("the hub starts", Hub::start(engine.clone(), settings))
        .await
        .expect("the hub starts");
    (hub, engine)
}

fn message(id: &str, reply_to: Option<&str>, timestamp: u64) -> Message {
    Message {
        id: id.to_string(),
        from: "alice".into(),
        to: Some("bob".into()),
        kind: "chat".into(),
        payload: serde_json::json!({"text": "hello"}),
        reply_to: reply_to.map(str::to_string),
        timestamp,
    }
}

async fn index(hub: &Hub, m: Message) {
    hub.threads
        .call(|r| ThreadsMsg::Index(m, r), WAIT)
        .await
        .expect("threads answers")
        .expect("indexed");
}

fn ids(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.id.as_str()).collect()
}

/// Reply `i` to the parent `p`: 16 characters like a real message id.
fn reply_id(i: u64) -> String {
    format!("r{i:015}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_writes_the_same_bytes_however_many_replies_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ThreadLimits {
        keep: 10_000,
        max_replies: 10_000,
        ..ThreadLimits::default()
    };
    let (hub, engine) = start(dir.path(), limits).await;
    index(&hub, message("p", None, 1)).await;
    let mut cost = Vec::new();
    for i in 1..=600 {
        let before = engine.thread_bytes.load(Ordering::Relaxed);
        // Timestamps of one width, so that every message encodes to the same size.
        index(&hub, message(&reply_id(i), Some("p"), 1_000_000 + i)).await;
        cost.push(engine.thread_bytes.load(Ordering::Relaxed) - before);
    }
    // The earlier layout rewrote the whole children list: ~20 bytes more per reply.
    assert_eq!(
        cost[9], cost[599],
        "bytes written by reply 10, then by reply 600"
    );
    let replies = threads::direct_replies(&hub.reader, "p").unwrap();
    assert_eq!(replies.len(), 600);
    assert_eq!(replies[0].id, reply_id(1));
    assert_eq!(replies[599].id, reply_id(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_keeps_the_newest_messages_and_a_run_of_replies_per_parent() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ThreadLimits {
        keep: 30,
        max_replies: 5,
        ..ThreadLimits::default()
    };
    let (hub, _) = start(dir.path(), limits).await;
    index(&hub, message("p", None, 1)).await;
    for i in 1..=8 {
        index(&hub, message(&reply_id(i), Some("p"), 1 + i)).await;
    }
    // The first five replies are listed, the others are kept as messages only.
    let replies = threads::direct_replies(&hub.reader, "p").unwrap();
    assert_eq!(ids(&replies), (1..=5).map(reply_id).collect::<Vec<_>>());
    assert_eq!(threads::root(&hub.reader, &reply_id(8)).unwrap(), "p");
    // Indexing the same message again changes nothing.
    index(&hub, message(&reply_id(2), Some("p"), 3)).await;
    assert_eq!(threads::direct_replies(&hub.reader, "p").unwrap().len(), 5);

    // 40 more messages: only the newest 30 of all 49 stay, with their reply records.
    for i in 0..40 {
        let id = format!("m{i:015}");
        let parent = if i % 2 == 0 { Some("q") } else { None };
        index(&hub, message(&id, parent, 100 + i)).await;
    }
    let stats = |t| hub.reader.stats(t).record_count;
    assert_eq!(stats(Table::ThreadMessages), 30);
    assert!(
        stats(Table::ThreadReplies) <= 5,
        "{}",
        stats(Table::ThreadReplies)
    );
    assert!(threads::direct_replies(&hub.reader, "p")
        .unwrap()
        .is_empty());
    // `q` had 20 replies: its first five left with their messages, and slots freed by
    // leaving replies were taken by later ones.
    let q = threads::direct_replies(&hub.reader, "q").unwrap();
    assert!(!q.is_empty() && q.len() <= 5, "{}", q.len());
    // The thread walk still ends; the unknown parent is the root.
    let (root, messages) = threads::thread(&hub.reader, &q[0].id).unwrap();
    assert_eq!(root, "q");
    assert_eq!(messages.len(), q.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_the_earlier_layout_is_renumbered_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The earlier layout: messages by id, one children list per parent, no order.
        let sled = SledEngine::open(dir.path()).unwrap();
        let mut ops: Vec<WriteOp> = [
            message("p", None, 10),
            message("r1", Some("p"), 20),
            message("r2", Some("p"), 30),
            message("r3", Some("r1"), 40),
            message("old", None, 5),
        ]
        .iter()
        .map(|m| WriteOp::Put {
            table: Table::ThreadMessages,
            key: m.id.as_bytes().to_vec(),
            value: encode(m),
        })
        .collect();
        for (parent, children) in [("p", vec!["r1", "r2"]), ("r1", vec!["r3"])] {
            ops.push(WriteOp::Put {
                table: Table::ThreadReplies,
                key: parent.as_bytes().to_vec(),
                value: encode(&children),
            });
        }
        sled.apply(&ops).unwrap();
        sled.flush().unwrap();
    }
    let limits = ThreadLimits {
        keep: 4,
        max_replies: 10,
        ..ThreadLimits::default()
    };
    let (hub, _) = start(dir.path(), limits).await;
    let reader: &StoreReader = &hub.reader;
    // The oldest message left (four kept); the children lists became reply records.
    assert_eq!(reader.stats(Table::ThreadMessages).record_count, 4);
    assert!(reader.get(Table::ThreadMessages, b"old").unwrap().is_none());
    assert!(reader.get(Table::ThreadReplies, b"p").unwrap().is_none());
    assert_eq!(reader.stats(Table::ThreadReplies).record_count, 3);
    let (root, messages) = threads::thread(reader, "r3").unwrap();
    assert_eq!(root, "p");
    assert_eq!(ids(&messages), ["p", "r1", "r2", "r3"]);
    assert_eq!(
        ids(&threads::direct_replies(reader, "p").unwrap()),
        ["r1", "r2"]
    );
    // New replies follow the renumbered ones, and the next one pushes `p` out.
    index(&hub, message("r4", Some("p"), 50)).await;
    assert_eq!(
        ids(&threads::direct_replies(reader, "p").unwrap()),
        ["r1", "r2", "r4"]
    );
    assert!(reader.get(Table::ThreadMessages, b"p").unwrap().is_none());
    drop(hub);
}
