//! AgentCom's actors: a supervisor over the pubsub, store, config, auth and session
//! actors, and [`Hub`], the handle the HTTP layer and the binary use.
//!
//! Architecture invariants: only the store actor writes to the engine; actors talk by
//! messages; this crate knows nothing of the wire JSON.

pub mod auth;
pub mod config;
pub mod events;
pub mod pubsub;
pub mod service;
pub mod sessions;
pub mod store;
pub mod supervisor;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use agentcom_core::auth::Role;
use agentcom_core::config::{ConfigKey, ConfigValue};
use agentcom_core::supervision::RestartPolicy;
use agentcom_core::Millis;
use agentcom_store::{Engine, StoreError, StoreReader, TokenRecord};
use ractor::{Actor, ActorRef};

use crate::auth::{AuthActor, AuthArgs, AuthMsg};
use crate::config::{ConfigActor, ConfigArgs, ConfigMsg};
use crate::pubsub::{PubSub, PubSubMsg, Publisher, Subscriptions};
use crate::service::{Service, ServiceError, Slot};
use crate::sessions::{CloseReason, SessionArgs, SessionCounts, SessionMsg, Sessions, SessionsMsg};
use crate::store::{Durability, StoreActor, StoreArgs, StoreMsg};
use crate::supervisor::{
    ChildRecord, ChildSpec, Supervisor, SupervisorArgs, SupervisorError, SupervisorMsg,
};

/// Current time as Unix epoch milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Who is calling: the owner of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: String,
    pub role: Role,
}

/// Everything a hub operation can fail with. The HTTP layer maps each variant to one
/// status code and one error code, in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// Settings the actors need.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub durability: Durability,
    pub restart_policy: RestartPolicy,
    /// Enables operator hooks meant for tests (crash injection).
    pub test_hooks: bool,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            durability: Durability::GroupCommit,
            restart_policy: RestartPolicy::default(),
            test_hooks: false,
        }
    }
}

/// How long request handlers wait for an actor's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running hub: the supervision tree and handles to its services.
#[derive(Clone)]
pub struct Hub {
    supervisor: ActorRef<SupervisorMsg>,
    reader: StoreReader,
    engine: Arc<dyn Engine>,
    subscriptions: Arc<Subscriptions>,
    config: Service<ConfigMsg>,
    auth: Service<AuthMsg>,
    sessions: Service<SessionsMsg>,
    publisher: Publisher,
    started_at: Millis,
    settings: HubSettings,
}

impl Hub {
    /// Start every actor over an opened engine.
    pub async fn start(engine: Arc<dyn Engine>, settings: HubSettings) -> Result<Hub, HubError> {
        let reader = StoreReader::new(engine.clone());
        let subscriptions = Arc::new(Subscriptions::default());

        let store_slot = Arc::new(Slot::<StoreMsg>::new());
        let pubsub_slot = Arc::new(Slot::<PubSubMsg>::new());
        let config_slot = Arc::new(Slot::<ConfigMsg>::new());
        let auth_slot = Arc::new(Slot::<AuthMsg>::new());
        let sessions_slot = Arc::new(Slot::<SessionsMsg>::new());
        let store = store_slot.service("store");
        let publisher = Publisher::new(pubsub_slot.service("pubsub"));

        let mut children = Vec::new();
        let (e, durability) = (engine.clone(), settings.durability);
        children.push(ChildSpec::new(
            "store",
            "service",
            store_slot.clone(),
            move || {
                (
                    StoreActor,
                    StoreArgs {
                        engine: e.clone(),
                        durability,
                    },
                )
            },
        ));
        let subs = subscriptions.clone();
        children.push(ChildSpec::new(
            "pubsub",
            "service",
            pubsub_slot.clone(),
            move || (PubSub, subs.clone()),
        ));
        let (r, s) = (reader.clone(), store.clone());
        children.push(ChildSpec::new(
            "auth",
            "service",
            auth_slot.clone(),
            move || {
                (
                    AuthActor,
                    AuthArgs {
                        reader: r.clone(),
                        store: s.clone(),
                    },
                )
            },
        ));
        let (r, s) = (reader.clone(), store.clone());
        let config_spec = ChildSpec::new("config", "service", config_slot.clone(), move || {
            (
                ConfigActor,
                ConfigArgs {
                    reader: r.clone(),
                    store: s.clone(),
                },
            )
        });
        children.push(if settings.test_hooks {
            config_spec.with_crash_hook(|| ConfigMsg::Crash)
        } else {
            config_spec
        });
        children.push(
            ChildSpec::new("sessions", "supervisor", sessions_slot.clone(), || {
                (Sessions, ())
            })
            .permanent(),
        );

        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                children,
                policy: settings.restart_policy,
                publisher: publisher.clone(),
            },
        )
        .await
        .map_err(|e| SupervisorError::StartFailed {
            name: "supervisor".into(),
            reason: e.to_string(),
        })?;

        Ok(Hub {
            supervisor,
            reader,
            engine,
            subscriptions,
            config: config_slot.service("config"),
            auth: auth_slot.service("auth"),
            sessions: sessions_slot.service("sessions"),
            publisher,
            started_at: now_ms(),
            settings,
        })
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    pub fn started_at(&self) -> Millis {
        self.started_at
    }

    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Agents present (identified on a websocket). Presence arrives with agent
    /// identification; until an agent can identify, none is present.
    pub fn presence_count(&self) -> usize {
        0
    }

    /// The owner of `token`, if it is a live token.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, HubError> {
        Ok(tokens::lookup(&self.reader, token)?.map(|r| Principal {
            agent_id: r.agent_id,
            role: r.role,
        }))
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

    pub async fn token_revoke(&self, agent_id: &str) -> Result<usize, HubError> {
        let agent_id = agent_id.to_string();
        self.auth
            .call(|r| AuthMsg::Revoke(agent_id, r), CALL_TIMEOUT)
            .await?
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

    /// The supervision tree, one record per supervised actor.
    pub async fn actors(&self) -> Result<Vec<ChildRecord>, HubError> {
        Ok(self
            .supervisor
            .call(SupervisorMsg::List, Some(CALL_TIMEOUT))
            .await
            .map_err(|_| ServiceError::Unavailable("supervisor"))?
            .success_or(ServiceError::Timeout("supervisor"))?)
    }

    /// Restart one actor by name; returns once the new instance runs.
    pub async fn restart_actor(&self, name: &str) -> Result<ChildRecord, HubError> {
        let name = name.to_string();
        Ok(self
            .supervisor
            .call(|r| SupervisorMsg::Restart(name, r), Some(CALL_TIMEOUT))
            .await
            .map_err(|_| ServiceError::Unavailable("supervisor"))?
            .success_or(ServiceError::Timeout("supervisor"))??)
    }

    /// Test hook: make the named actor crash. Refused unless `test_hooks` is set.
    pub async fn crash_actor(&self, name: &str) -> Result<(), HubError> {
        if !self.settings.test_hooks {
            return Err(SupervisorError::NoCrashHook(name.to_string()).into());
        }
        let name = name.to_string();
        Ok(self
            .supervisor
            .call(|r| SupervisorMsg::Crash(name, r), Some(CALL_TIMEOUT))
            .await
            .map_err(|_| ServiceError::Unavailable("supervisor"))?
            .success_or(ServiceError::Timeout("supervisor"))??)
    }

    /// Open a websocket session actor.
    pub async fn open_session(&self, args: SessionArgs) -> Result<ActorRef<SessionMsg>, HubError> {
        let reply = self
            .sessions
            .call(|r| SessionsMsg::Open(args, r), CALL_TIMEOUT)
            .await?;
        reply.map_err(|reason| {
            HubError::Supervisor(SupervisorError::StartFailed {
                name: "session".into(),
                reason,
            })
        })
    }

    pub async fn session_counts(&self) -> Result<SessionCounts, HubError> {
        Ok(self.sessions.call(SessionsMsg::Count, CALL_TIMEOUT).await?)
    }

    pub fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subscriptions
    }

    /// Close every websocket (1001), stop every actor after it finishes its queued
    /// messages, and flush the store.
    pub async fn shutdown(&self) {
        let reason = CloseReason::new(sessions::close_code::GOING_AWAY, "hub shutting down");
        let _ = self
            .sessions
            .call(|r| SessionsMsg::CloseAll(reason, r), Duration::from_secs(5))
            .await;
        // Sessions stop themselves once their close frame is queued; wait for them (briefly)
        // so that stopping the actors below cannot cut a close frame off.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            match self.session_counts().await {
                Ok(c) if c.agent + c.dashboard > 0 => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
        let _ = self
            .supervisor
            .call(SupervisorMsg::StopAll, Some(Duration::from_secs(30)))
            .await;
        self.supervisor.stop(None);
        if let Err(e) = self.engine.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}
