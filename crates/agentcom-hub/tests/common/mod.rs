//! Helpers shared by the actor tests: bounded waits, an event log on a pubsub topic, a hub
//! over sled in a temporary directory, and a stand-in for an agent's websocket session.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentcom_core::task::{NewTask, Task, DEFAULT_PRIORITY};
use agentcom_hub::agents::AgentsMsg;
use agentcom_hub::events::{HubEvent, Topic};
use agentcom_hub::protocol::AgentPush;
use agentcom_hub::pubsub::{SubscriptionId, Subscriptions};
use agentcom_hub::sessions::SessionMsg;
use agentcom_hub::{Hub, HubSettings};
use agentcom_store::SledEngine;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// The longest any single step of a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// Await `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// Poll `check` until it holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every event published on one topic from now on, in delivery order.
pub struct EventLog {
    rx: mpsc::UnboundedReceiver<Arc<HubEvent>>,
    subscriptions: Arc<Subscriptions>,
    topic: Topic,
    id: SubscriptionId,
}

impl EventLog {
    pub fn subscribe(subscriptions: &Arc<Subscriptions>, topic: Topic) -> EventLog {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = subscriptions.subscribe(
            topic.clone(),
            Arc::new(move |event: &Arc<HubEvent>| tx.send(event.clone()).is_ok()),
        );
        EventLog {
            rx,
            subscriptions: subscriptions.clone(),
            topic,
            id,
        }
    }

    /// The next event (skipping others) for which `pick` returns a value.
    pub async fn next_where<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&HubEvent) -> Option<T>,
    ) -> T {
        within(what, async {
            loop {
                let event = self.rx.recv().await.expect("the event log is subscribed");
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
        })
        .await
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.subscriptions.unsubscribe(&self.topic, self.id);
    }
}

/// A hub over a fresh sled store; the directory lives as long as the value.
pub struct TestHub {
    pub hub: Hub,
    pub dir: tempfile::TempDir,
}

/// Start a hub over sled in a temporary directory, with `tweak` applied to its settings.
pub async fn start_hub(tweak: impl FnOnce(&mut HubSettings)) -> TestHub {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Arc::new(SledEngine::open(dir.path()).expect("sled opens"));
    let mut settings = HubSettings {
        backup_dir: dir.path().join("backups"),
        ..HubSettings::default()
    };
    tweak(&mut settings);
    let hub = within("the hub starts", Hub::start(engine, settings))
        .await
        .expect("the hub starts");
    TestHub { hub, dir }
}

/// A stand-in for an agent's websocket session: records the pushes it is sent.
pub struct FakeSession;

impl Actor for FakeSession {
    type Msg = SessionMsg;
    type State = mpsc::UnboundedSender<AgentPush>;
    type Arguments = mpsc::UnboundedSender<AgentPush>;

    async fn pre_start(
        &self,
        _: ActorRef<SessionMsg>,
        pushes: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(pushes)
    }

    async fn handle(
        &self,
        _: ActorRef<SessionMsg>,
        msg: SessionMsg,
        pushes: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Push(push) => {
                let _ = pushes.send(push);
            }
            SessionMsg::Attach(_, reply) | SessionMsg::Detach(_, reply) => {
                let _ = reply.send(());
            }
            _ => {}
        }
        Ok(())
    }
}

async fn fake_session() -> (ActorRef<SessionMsg>, mpsc::UnboundedReceiver<AgentPush>) {
    let (tx, pushes) = mpsc::unbounded_channel();
    let (session, _) = Actor::spawn(None, FakeSession, tx)
        .await
        .expect("fake session starts");
    (session, pushes)
}

/// An agent connected to the hub's `agents` supervisor through a [`FakeSession`].
pub struct Agent {
    pub id: String,
    pub session: ActorRef<SessionMsg>,
    pushes: mpsc::UnboundedReceiver<AgentPush>,
}

impl Agent {
    /// Open a fake session and connect the agent on it (starts its FSM).
    pub async fn connect(hub: &Hub, id: &str) -> Agent {
        let (session, pushes) = fake_session().await;
        let agent = Agent {
            id: id.to_string(),
            session,
            pushes,
        };
        agent.identify(hub).await;
        agent
    }

    /// Identify again on a new connection (which rebinds the running FSM); returns the
    /// previous connection.
    pub async fn reconnect(&mut self, hub: &Hub) -> ActorRef<SessionMsg> {
        let (session, pushes) = fake_session().await;
        let old = std::mem::replace(&mut self.session, session);
        self.pushes = pushes;
        self.identify(hub).await;
        old
    }

    async fn identify(&self, hub: &Hub) {
        let (agent_id, session) = (self.id.clone(), self.session.clone());
        let connect = |reply| AgentsMsg::Connect {
            agent_id,
            name: "test agent".into(),
            capabilities: serde_json::json!([]),
            session,
            reply,
        };
        hub.agents
            .call(connect, WAIT)
            .await
            .expect("agents answers Connect");
    }

    /// The connection closed; returns once the agents supervisor has handled it.
    pub async fn disconnect(&self, hub: &Hub, session: &ActorRef<SessionMsg>) {
        let (agent_id, session) = (self.id.clone(), session.get_id());
        let disconnect = |reply| AgentsMsg::Disconnect {
            agent_id,
            session,
            reply,
        };
        hub.agents
            .call(disconnect, WAIT)
            .await
            .expect("agents answers Disconnect");
    }

    /// The next `task_assign` pushed to this agent.
    pub async fn next_task(&mut self) -> Arc<Task> {
        let what = format!("a task_assign push to {}", self.id);
        within(&what, async {
            loop {
                match self.pushes.recv().await.expect("the fake session runs") {
                    AgentPush::TaskAssign(task) => return task,
                    _ => continue,
                }
            }
        })
        .await
    }

    /// Nothing was pushed to this agent that it has not read yet.
    pub fn no_task_pushed(&mut self) -> bool {
        loop {
            match self.pushes.try_recv() {
                Ok(AgentPush::TaskAssign(_)) => return false,
                Ok(_) => continue,
                Err(_) => return true,
            }
        }
    }
}

pub fn new_task(description: &str, max_retries: u32) -> NewTask {
    NewTask {
        description: description.to_string(),
        metadata: serde_json::json!({}),
        priority: DEFAULT_PRIORITY,
        max_retries,
        needed_capabilities: Vec::new(),
        complete_by: None,
        submitted_by: "tester".to_string(),
    }
}
