//! [`Services`]: handles to every actor and shared table, and the domain operations built
//! on them (routing, channels, onboarding helpers). Cloned into every session.

use std::collections::BTreeSet;
use std::sync::Arc;

use agentcom_core::auth::Role;
use agentcom_core::config::{ConfigKey, ConfigValue};
use agentcom_core::message::{is_broadcast_target, Message, DEFAULT_KIND};
use agentcom_store::{StoreReader, TokenRecord};
use ractor::ActorId;
use serde_json::Value;

use crate::agents::{AgentTable, AgentsMsg};
use crate::analytics::{AnalyticsMsg, AnalyticsTable};
use crate::auth::AuthMsg;
use crate::backup::{BackupMsg, BackupRun, BackupStatus, StorageHealth, TableHealth};
use crate::channels::{ChannelsMsg, Subscription};
use crate::config::ConfigMsg;
use crate::events::{HubEvent, Topic};
use crate::history::HistoryMsg;
use crate::mailbox::MailboxMsg;
use crate::presence::{PresenceMsg, PresenceTable};
use crate::protocol::AgentPush;
use crate::pubsub::{Publisher, Subscriptions};
use crate::scheduler::SchedulerMsg;
use crate::service::{Service, DEFAULT_WAIT};
use crate::sessions::{SessionMsg, SessionsMsg};
use crate::store::StoreMsg;
use crate::task_queue::{task_id, TaskFilter, TaskMsg, TaskStats};
use crate::threads::ThreadsMsg;
use crate::{now_ms, tokens, HubError, HubSettings, Principal, CALL_TIMEOUT};
use agentcom_core::task::{NewTask, Task};

#[derive(Clone)]
pub struct Services {
    pub settings: HubSettings,
    pub reader: StoreReader,
    pub publisher: Publisher,
    pub subscriptions: Arc<Subscriptions>,
    pub presence_table: Arc<PresenceTable>,
    pub analytics_table: Arc<AnalyticsTable>,
    pub store: Service<StoreMsg>,
    pub config: Service<ConfigMsg>,
    pub auth: Service<AuthMsg>,
    pub presence: Service<PresenceMsg>,
    pub mailbox: Service<MailboxMsg>,
    pub channels: Service<ChannelsMsg>,
    pub history: Service<HistoryMsg>,
    pub threads: Service<ThreadsMsg>,
    pub analytics: Service<AnalyticsMsg>,
    pub sessions: Service<SessionsMsg>,
    pub agent_table: Arc<AgentTable>,
    pub agents: Service<AgentsMsg>,
    pub task_queue: Service<TaskMsg>,
    pub scheduler: Service<SchedulerMsg>,
    pub backup: Service<BackupMsg>,
    pub notifier: Service<crate::notifier::NotifierMsg>,
    pub dashboard: Service<crate::dashboard::DashboardMsg>,
    pub task_latency: Arc<crate::task_queue::TaskLatency>,
    /// The root supervisor, set once it runs.
    pub supervisor: Arc<std::sync::OnceLock<ractor::ActorRef<crate::supervisor::SupervisorMsg>>>,
    pub engine: Arc<dyn agentcom_store::Engine>,
    /// Set when the hub begins to shut down (agents leaving then are not news).
    pub shutting_down: Arc<std::sync::atomic::AtomicBool>,
    /// The per-caller rate limit, shared by the HTTP layer and every session.
    pub rate_limits: Arc<crate::rate::CallerLimits>,
}

/// How long an HTTP (un)subscription waits for the agent's live connection to follow.
const ATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A fresh message id: 16 lowercase hex characters.
pub fn message_id() -> String {
    hex::encode(crate::random_bytes::<8>())
}

/// Refuse a message whose `to` or `reply_to` would make a malformed store key. The front
/// ends check the same rule while parsing, to name the field; this is the backstop.
fn check_keys(message: &Message) -> Result<(), HubError> {
    agentcom_core::message::check_keys(message.to.as_deref(), message.reply_to.as_deref()).map_err(
        |(field, e)| HubError::Invalid {
            field: field.to_string(),
            message: format!("{field} {e}"),
        },
    )
}

/// Refuse a channel name (normalised) that is too long to be a key.
fn check_channel(name: &str) -> Result<(), HubError> {
    agentcom_core::channel::check_length(name).map_err(|message| HubError::Invalid {
        field: "channel".into(),
        message,
    })
}

impl Services {
    /// The owner of `token`, if it is a live token.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, HubError> {
        let proof = crate::Proof::Token(tokens::token_key(token));
        Ok(tokens::lookup(&self.reader, token)?.map(|r| Principal::new(r, proof)))
    }

    /// The owner of the token a dashboard session stands for, if the session is live.
    pub fn authenticate_session(&self, secret: &str) -> Result<Option<Principal>, HubError> {
        let proof = crate::Proof::DashboardSession(tokens::session_key(secret));
        Ok(tokens::session_lookup(&self.reader, secret, now_ms())?
            .map(|r| Principal::new(r, proof)))
    }

    /// Why the credential that proved `principal` no longer holds, if it does not (the
    /// close reason of a connection opened with it). A store that cannot be read counts
    /// as lapsed: a connection is cheap to reopen, a revoked one must not stay.
    pub fn lapsed(&self, principal: &Principal) -> Option<&'static str> {
        tokens::lapsed(&self.reader, &principal.proof, now_ms()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not check a connection's credential");
            Some("credential could not be checked")
        })
    }

    /// Close every websocket whose credential no longer holds (after a revocation or a
    /// sign-out). Answers once each of them has released what it held — an agent's
    /// presence, FSM and tasks — so nothing is given to it after the revocation returns.
    /// Returns how many were closed.
    pub async fn close_lapsed_sessions(&self) -> usize {
        let open = match self.sessions.call(SessionsMsg::List, CALL_TIMEOUT).await {
            Ok(open) => open,
            Err(e) => {
                tracing::error!(error = %e, "could not list sessions to close revoked ones");
                return 0;
            }
        };
        let checks = open.iter().map(|session| {
            session.call(SessionMsg::Recheck, Some(crate::sessions::RECHECK_TIMEOUT))
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(ractor::rpc::CallResult::Success(true))))
            .count()
    }

    /// Open a dashboard session for `token` (already checked); its secret, once durable.
    pub async fn dashboard_sign_in(&self, token: &str) -> Result<String, HubError> {
        let token = token.to_string();
        self.auth
            .call(|r| AuthMsg::OpenSession(token, r), CALL_TIMEOUT)
            .await?
    }

    /// End a dashboard session (durably), and close the dashboards opened with it.
    pub async fn dashboard_sign_out(&self, secret: &str) -> Result<(), HubError> {
        let secret = secret.to_string();
        self.auth
            .call(|r| AuthMsg::CloseSession(secret, r), CALL_TIMEOUT)
            .await??;
        self.close_lapsed_sessions().await;
        Ok(())
    }

    pub fn new_message(
        &self,
        from: &str,
        to: Option<String>,
        kind: String,
        payload: Value,
        reply_to: Option<String>,
    ) -> Message {
        Message {
            id: message_id(),
            from: from.to_string(),
            to: to.filter(|t| !is_broadcast_target(Some(t))),
            kind: if kind.is_empty() {
                DEFAULT_KIND.to_string()
            } else {
                kind
            },
            payload: if payload.is_null() {
                Value::Object(Default::default())
            } else {
                payload
            },
            reply_to,
            timestamp: now_ms(),
        }
    }

    /// Agent ids that hold a token of role `agent`: the agents a broadcast is meant for
    /// (read from the token index, without decoding a token record).
    fn known_agents(&self) -> Result<BTreeSet<String>, HubError> {
        Ok(tokens::agents_with_role(&self.reader, Role::Agent)?)
    }

    /// Route a direct or broadcast message (reference §6.2): stored in history (durable
    /// when this returns), indexed into threads and counted in analytics (F7), pushed to
    /// online recipients and kept in the mailbox of offline ones (one copy per agent).
    /// Answered with an error, it has no effect (see docs/runtime-semantics.md).
    pub async fn route(&self, message: Message) -> Result<(), HubError> {
        check_keys(&message)?;
        // Who gets a mailbox copy is decided first, so that every actor the message needs
        // is known to be running before anything is written: an error leaves no trace.
        let direct_session = match &message.to {
            Some(to) if !message.is_broadcast() => self.presence_table.session_of(to),
            _ => None,
        };
        let mut mailbox: Vec<String> = if message.is_broadcast() {
            self.known_agents()?
                .into_iter()
                .filter(|a| *a != message.from && !self.presence_table.is_online(a))
                .collect()
        } else if direct_session.is_none() {
            vec![message.to.clone().unwrap_or_default()]
        } else {
            Vec::new()
        };
        self.history.ready(CALL_TIMEOUT).await?;
        if !mailbox.is_empty() {
            self.mailbox.ready(CALL_TIMEOUT).await?;
        }
        let m = message.clone();
        let seq = self
            .history
            .call(|r| HistoryMsg::Store(m, r), CALL_TIMEOUT)
            .await??;
        // Pushed to an online recipient only once stored; a push that fails (the
        // connection just closed) falls back to the mailbox.
        let recipients = match (&message.to, direct_session) {
            (Some(to), Some(session)) => {
                let push = SessionMsg::Push(AgentPush::Message(Arc::new(message.clone())));
                if session.send_message(push).is_err() {
                    mailbox.push(to.clone());
                }
                vec![to.clone()]
            }
            (Some(to), None) if !message.is_broadcast() => vec![to.clone()],
            _ => Vec::new(),
        };
        if !mailbox.is_empty() {
            let m = message.clone();
            let copied = self
                .mailbox
                .call(|r| MailboxMsg::Enqueue(mailbox, m, r), CALL_TIMEOUT)
                .await;
            if let Err(e) = copied.map_err(HubError::from).and_then(|r| r) {
                self.unstore(seq, &message.id).await;
                return Err(e);
            }
        }
        if message.is_broadcast() {
            self.publisher.publish(
                Topic::Messages,
                HubEvent::Broadcast(Arc::new(message.clone())),
            );
        }
        self.index(&message).await;
        self.count(&message.from, recipients).await;
        Ok(())
    }

    /// Take back a history entry whose message could not be delivered, so that the error
    /// the sender gets means "not sent". Best effort: a failure is logged.
    async fn unstore(&self, seq: u64, message_id: &str) {
        let ops = vec![agentcom_store::WriteOp::Delete {
            table: agentcom_store::Table::MessageHistory,
            key: agentcom_store::seq_key(seq).to_vec(),
        }];
        let undone = self
            .store
            .call(|r| StoreMsg::Write(ops, r), CALL_TIMEOUT)
            .await;
        if !matches!(undone, Ok(Ok(_))) {
            tracing::error!(
                message_id,
                seq,
                "a message whose delivery failed stays in history"
            );
        }
    }

    /// Index a message into threads; returns once the index is durable. A failure is
    /// logged, not returned: the message itself is already delivered and stored.
    async fn index(&self, message: &Message) {
        let m = message.clone();
        let result = self
            .threads
            .call(|r| ThreadsMsg::Index(m, r), CALL_TIMEOUT)
            .await;
        if let Err(e) = result.map_err(HubError::from).and_then(|r| r) {
            tracing::error!(error = %e, message_id = %message.id, "message not indexed into threads");
        }
    }

    async fn count(&self, from: &str, recipients: Vec<String>) {
        let msg = AnalyticsMsg::Message {
            from: from.to_string(),
            recipients,
        };
        if let Err(e) = self.analytics.send(msg, DEFAULT_WAIT).await {
            tracing::warn!(error = %e, "message not counted in analytics");
        }
    }

    pub async fn analytics_connected(&self, agent_id: &str) {
        let _ = self
            .analytics
            .send(AnalyticsMsg::Connected(agent_id.to_string()), DEFAULT_WAIT)
            .await;
    }

    pub async fn analytics_disconnected(&self, agent_id: &str) {
        let _ = self
            .analytics
            .send(
                AnalyticsMsg::Disconnected(agent_id.to_string()),
                DEFAULT_WAIT,
            )
            .await;
    }

    /// Create a channel (`name` already normalised).
    pub async fn create_channel(
        &self,
        name: &str,
        description: String,
        created_by: &str,
    ) -> Result<(), HubError> {
        check_channel(name)?;
        let (name, by) = (name.to_string(), created_by.to_string());
        self.channels
            .call(
                |r| ChannelsMsg::Create(name, description, by, r),
                CALL_TIMEOUT,
            )
            .await?
    }

    /// Subscribe an agent; its live connection, if any, is attached to the channel before
    /// this returns (F15). `by_session` is the connection asking, which attaches itself.
    pub async fn subscribe(
        &self,
        name: &str,
        agent_id: &str,
        by_session: Option<ActorId>,
    ) -> Result<Subscription, HubError> {
        check_channel(name)?;
        let (n, a) = (name.to_string(), agent_id.to_string());
        let sub = self
            .channels
            .call(|r| ChannelsMsg::Subscribe(n, a, r), CALL_TIMEOUT)
            .await??;
        if let Some(session) = self.live_session(agent_id, by_session) {
            let attach = |r| SessionMsg::Attach(name.to_string(), r);
            let _ = session.call(attach, Some(ATTACH_TIMEOUT)).await;
        }
        Ok(sub)
    }

    /// Unsubscribe an agent; its live connection, if any, is detached before this returns.
    pub async fn unsubscribe(
        &self,
        name: &str,
        agent_id: &str,
        by_session: Option<ActorId>,
    ) -> Result<(), HubError> {
        let (n, a) = (name.to_string(), agent_id.to_string());
        self.channels
            .call(|r| ChannelsMsg::Unsubscribe(n, a, r), CALL_TIMEOUT)
            .await??;
        if let Some(session) = self.live_session(agent_id, by_session) {
            let detach = |r| SessionMsg::Detach(name.to_string(), r);
            let _ = session.call(detach, Some(ATTACH_TIMEOUT)).await;
        }
        Ok(())
    }

    /// The agent's live connection, unless it is `except` (which acts for itself).
    fn live_session(
        &self,
        agent_id: &str,
        except: Option<ActorId>,
    ) -> Option<ractor::ActorRef<SessionMsg>> {
        self.presence_table
            .session_of(agent_id)
            .filter(|s| Some(s.get_id()) != except)
    }

    /// Publish on a channel; counted and indexed like every routed message.
    pub async fn publish(&self, name: &str, message: Message) -> Result<u64, HubError> {
        check_keys(&message)?;
        check_channel(name)?;
        let (n, m) = (name.to_string(), message.clone());
        let seq = self
            .channels
            .call(|r| ChannelsMsg::Publish(n, m, r), CALL_TIMEOUT)
            .await??;
        self.index(&message).await;
        self.count(&message.from, Vec::new()).await;
        Ok(seq)
    }

    pub async fn mailbox_ack(&self, agent_id: &str, seq: u64) -> Result<(), HubError> {
        let a = agent_id.to_string();
        self.mailbox
            .call(|r| MailboxMsg::Ack(a, seq, r), CALL_TIMEOUT)
            .await?
    }

    /// Evict expired mailbox entries now (in the background, as the original did).
    pub async fn mailbox_evict(&self) -> Result<(), HubError> {
        Ok(self
            .mailbox
            .send(MailboxMsg::Evict(None), DEFAULT_WAIT)
            .await?)
    }

    pub async fn config_get(&self, key: ConfigKey) -> Result<Option<ConfigValue>, HubError> {
        Ok(self
            .config
            .call(|r| ConfigMsg::Get(key, r), CALL_TIMEOUT)
            .await?)
    }

    /// Write a config value; returns once it is durable.
    pub async fn config_put(&self, key: ConfigKey, value: ConfigValue) -> Result<(), HubError> {
        self.config
            .call(|r| ConfigMsg::Put(key, value, r), CALL_TIMEOUT)
            .await?
    }

    /// Mint a token; returns the raw token (shown once) once it is durable.
    pub async fn token_create(
        &self,
        agent_id: &str,
        role: Role,
    ) -> Result<(String, TokenRecord), HubError> {
        let agent_id = agent_id.to_string();
        self.auth
            .call(|r| AuthMsg::Create(agent_id, role, r), CALL_TIMEOUT)
            .await?
    }

    /// Register an agent: mint its first token, unless it already has one (S1).
    pub async fn register_agent(&self, agent_id: &str) -> Result<(String, TokenRecord), HubError> {
        let agent_id = agent_id.to_string();
        self.auth
            .call(|r| AuthMsg::Register(agent_id, r), CALL_TIMEOUT)
            .await?
    }

    /// Revoke every token of an agent, or only those of role `only` (durably), and close
    /// the websockets opened with them or with their dashboard sessions; answers once
    /// those are closed.
    pub async fn token_revoke(
        &self,
        agent_id: &str,
        only: Option<Role>,
    ) -> Result<usize, HubError> {
        let agent_id = agent_id.to_string();
        let revoked = self
            .auth
            .call(|r| AuthMsg::Revoke(agent_id, only, r), CALL_TIMEOUT)
            .await??;
        self.close_lapsed_sessions().await;
        Ok(revoked)
    }

    pub async fn token_bootstrap(&self, token: &str) -> Result<(), HubError> {
        let token = token.to_string();
        self.auth
            .call(|r| AuthMsg::Bootstrap(token, r), CALL_TIMEOUT)
            .await?
    }

    pub fn token_list(&self) -> Result<Vec<TokenRecord>, HubError> {
        Ok(tokens::list(&self.reader)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    pub fn has_admin_token(&self) -> Result<bool, HubError> {
        Ok(tokens::has_admin(&self.reader)?)
    }

    pub async fn submit_task(&self, new: NewTask) -> Result<Task, HubError> {
        self.task_queue
            .call(|r| TaskMsg::Submit(new, r), CALL_TIMEOUT)
            .await?
    }

    /// Give a new task straight to a connected agent (admin push-task). It is a real task
    /// (F14): the agent's FSM takes it first, so a busy agent is refused, not overloaded.
    pub async fn push_task(&self, agent_id: &str, new: NewTask) -> Result<Task, HubError> {
        if !self.agent_table.contains(agent_id) {
            return Err(HubError::NotFound("agent_not_connected"));
        }
        let id = task_id();
        if !self.agent_table.assign(agent_id, &id) {
            return Err(HubError::Conflict("agent_busy"));
        }
        let a = agent_id.to_string();
        let submitted = self
            .task_queue
            .call(
                |r| TaskMsg::SubmitAssigned(id.clone(), new, a, r),
                CALL_TIMEOUT,
            )
            .await
            .map_err(HubError::from)
            .and_then(|r| r);
        let task = match submitted {
            Ok(task) => task,
            Err(e) => {
                self.agent_table.released(agent_id, &id);
                return Err(e);
            }
        };
        crate::agents::hand_over(&self.agent_table, agent_id, task.clone(), &self.task_queue).await;
        Ok(task)
    }

    pub async fn task(&self, id: &str) -> Result<Option<Task>, HubError> {
        let id = id.to_string();
        Ok(self
            .task_queue
            .call(|r| TaskMsg::Get(id, r), CALL_TIMEOUT)
            .await?)
    }

    pub async fn tasks(&self, filter: TaskFilter) -> Result<Vec<Task>, HubError> {
        Ok(self
            .task_queue
            .call(|r| TaskMsg::List(filter, r), CALL_TIMEOUT)
            .await?)
    }

    pub async fn dead_letters(&self) -> Result<Vec<Task>, HubError> {
        Ok(self
            .task_queue
            .call(TaskMsg::DeadLetters, CALL_TIMEOUT)
            .await?)
    }

    pub async fn task_stats(&self) -> Result<TaskStats, HubError> {
        Ok(self.task_queue.call(TaskMsg::Stats, CALL_TIMEOUT).await?)
    }

    pub async fn retry_task(&self, id: &str) -> Result<Task, HubError> {
        let id = id.to_string();
        self.task_queue
            .call(|r| TaskMsg::RetryDeadLetter(id, r), CALL_TIMEOUT)
            .await?
    }

    /// Back up now (joining a run in progress); answers when the backup is written and
    /// verified.
    pub async fn backup_now(&self) -> Result<BackupRun, HubError> {
        self.backup
            .call(
                |r| BackupMsg::Run(Some(r)),
                std::time::Duration::from_secs(3600),
            )
            .await?
    }

    /// Compact the store now (see [`crate::compaction`]) and answer when it is done.
    pub async fn compact_now(&self) -> Result<crate::compaction::CompactionRun, HubError> {
        self.backup
            .call(
                |r| BackupMsg::Compact(Some(r)),
                std::time::Duration::from_secs(3600),
            )
            .await?
    }

    pub async fn backup_status(&self) -> Result<BackupStatus, HubError> {
        Ok(self.backup.call(BackupMsg::Status, CALL_TIMEOUT).await?)
    }

    /// The storage health report: per-table counters, store totals, backup freshness.
    pub async fn storage_health(&self) -> Result<StorageHealth, HubError> {
        use agentcom_core::health;
        let status = self.backup_status().await?;
        let tables: Vec<TableHealth> = agentcom_store::Table::ALL
            .iter()
            .map(|t| {
                let s = self.reader.stats(*t);
                TableHealth {
                    table: t.name(),
                    record_count: s.record_count,
                    logical_bytes: s.logical_bytes,
                }
            })
            .collect();
        let live_bytes = tables.iter().map(|t| t.logical_bytes).sum();
        let size_on_disk = self.reader.size_on_disk()?;
        let last_backup_at = agentcom_store::backup::list(&status.backup_dir)
            .into_iter()
            .rev()
            .find_map(|b| b.manifest.map(|m| m.created_at));
        let now = now_ms();
        let floor = self.settings.fragmentation_floor;
        let stale = health::stale_backup(
            last_backup_at,
            now,
            self.settings.backup_stale_after.as_millis() as u64,
        );
        let high = health::high_fragmentation(size_on_disk, live_bytes, floor);
        let quarantined = self
            .reader
            .stats(agentcom_store::Table::Quarantine)
            .record_count;
        Ok(StorageHealth {
            health_status: health::health_status(stale, high, quarantined > 0).as_str(),
            stale_backup: stale,
            high_fragmentation: high,
            last_backup_at,
            // The backup on disk may be newer than the actor's schedule (it is written
            // before the actor hears that its run finished): the next run is due an
            // interval after it either way.
            next_backup_at: status.next_backup_at.max(
                last_backup_at.map_or(0, |t| t + self.settings.backup_interval.as_millis() as u64),
            ),
            last_run: status.last_run,
            tables,
            engine: self.reader.engine_name(),
            size_on_disk,
            live_bytes,
            fragmentation_ratio: health::fragmentation_ratio(size_on_disk, live_bytes),
            fragmentation_floor: floor,
            was_recovered: self.reader.was_recovered(),
            quarantined_records: quarantined,
            compactions: status.compactions,
        })
    }

    /// The supervision tree, one record per supervised actor.
    pub async fn actors(&self) -> Result<Vec<crate::supervisor::ChildRecord>, HubError> {
        let supervisor = self
            .supervisor
            .get()
            .ok_or(crate::service::ServiceError::Unavailable("supervisor"))?;
        Ok(supervisor
            .call(crate::supervisor::SupervisorMsg::List, Some(CALL_TIMEOUT))
            .await
            .map_err(|_| crate::service::ServiceError::Unavailable("supervisor"))?
            .success_or(crate::service::ServiceError::Timeout("supervisor"))?)
    }

    /// The dashboard snapshot.
    pub async fn dashboard_snapshot(
        &self,
    ) -> Result<Arc<crate::dashboard::SharedSnapshot>, HubError> {
        Ok(self
            .dashboard
            .call(crate::dashboard::DashboardMsg::Snapshot, CALL_TIMEOUT)
            .await?)
    }

    /// Agents present (identified on a websocket).
    pub fn presence_count(&self) -> usize {
        self.presence_table.count()
    }
}
