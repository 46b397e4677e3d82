//! AgentCom's actors: a supervisor over the store, pubsub, config, auth, presence,
//! messaging (history, threads, mailbox, channels, analytics), task (queue, agent FSMs,
//! scheduler), backup, reaper and session actors; and [`Hub`], the handle the HTTP layer
//! and the binary use.
//!
//! Architecture invariants: only the store actor writes to the engine; actors talk by
//! messages; this crate knows nothing of the wire JSON.

pub mod agent_session;
pub mod agents;
pub mod analytics;
pub mod auth;
pub mod backup;
pub mod channels;
pub mod compaction;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod feed;
pub mod history;
mod hub;
pub mod mailbox;
pub mod notifier;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod push_client;
pub mod rate;
pub mod reaper;
pub mod scheduler;
pub mod service;
pub mod services;
pub mod sessions;
pub mod store;
pub mod supervisor;
pub mod task_queue;
pub mod threads;
pub mod tokens;
pub mod waiting;
pub mod webpush;

pub use hub::Hub;
pub use services::Services;

use std::time::Duration;

use agentcom_core::auth::Role;
use agentcom_core::supervision::RestartPolicy;
use agentcom_core::Millis;
use agentcom_store::StoreError;

use crate::service::ServiceError;
use crate::store::Durability;
use crate::supervisor::SupervisorError;

/// Current time as Unix epoch milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// `N` bytes from the operating system's random source (ids, tokens, keys).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// Who is calling: the owner of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: String,
    pub role: Role,
    /// What proved it, so that a connection opened with it can tell when it lapses.
    pub proof: Proof,
}

impl Principal {
    pub fn new(record: agentcom_store::TokenRecord, proof: Proof) -> Self {
        Principal {
            agent_id: record.agent_id,
            role: record.role,
            proof,
        }
    }
}

/// The credential a principal was proven by, as store keys (hashes: never the raw token
/// or session secret). A websocket keeps it and is closed once it no longer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A token: its `auth_tokens` key. Lapses when the token is revoked.
    Token(Vec<u8>),
    /// A dashboard session: its `hub_meta` key. Lapses at sign-out, at expiry, or when the
    /// token it stands for is revoked.
    DashboardSession(Vec<u8>),
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
    /// A named thing does not exist (`code` is the wire error, e.g. `channel_not_found`).
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The request conflicts with what exists (`code` is the wire error).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// A task transition was refused.
    #[error(transparent)]
    Task(#[from] agentcom_core::task::TaskError),
    /// What the sender already stores is at its quota (`quota` names the setting).
    #[error("quota exceeded: {quota} is {limit}")]
    QuotaExceeded { quota: &'static str, limit: u64 },
    /// A compaction failed; the live database is unchanged.
    #[error("compaction failed: {0}")]
    Compaction(String),
}

/// Settings the actors need.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub durability: Durability,
    pub restart_policy: RestartPolicy,
    /// Enables operator hooks meant for tests (crash injection).
    pub test_hooks: bool,
    /// Test hook: pause between an FSM taking a task and the queue recording it.
    pub test_assign_pause: Duration,
    /// Test hook: a pause at the start of every backup run.
    pub test_backup_pause: Duration,
    /// A connection silent for longer than this is closed by the reaper.
    pub presence_ttl: Duration,
    pub reaper_interval: Duration,
    /// Time an agent has to accept an assigned task.
    pub accept_timeout: Duration,
    pub task_sweep_interval: Duration,
    pub stuck_task_after: Duration,
    pub completed_task_ttl: Duration,
    pub backup_dir: std::path::PathBuf,
    pub backup_keep: usize,
    pub backup_interval: Duration,
    pub backup_stale_after: Duration,
    pub fragmentation_floor: u64,
    /// Compact after a scheduled backup when the store is highly fragmented.
    pub compact_when_fragmented: bool,
    pub queue_sample_interval: Duration,
    pub dashboard_flush_interval: Duration,
    /// How often the notifier checks the dashboard's health for a push alert.
    pub push_health_interval: Duration,
    /// The VAPID `sub` claim (`mailto:` or `https:`).
    pub push_subject: String,
    /// Bytes of messages one sender may have waiting in mailboxes (0: no limit).
    pub mailbox_quota_bytes: u64,
    /// Bytes of channel history one sender may hold, over every channel (0: no limit).
    pub channel_quota_bytes: u64,
    /// The message history's oldest entries are trimmed beyond this many bytes.
    pub history_max_bytes: u64,
    /// How long a dashboard sign-in lasts; an open dashboard socket closes (4003) when
    /// its session expires.
    pub dashboard_session_ttl: Duration,
    /// Requests (HTTP) and frames (websocket) one caller may make; `None`: unlimited.
    pub rate_limit: Option<agentcom_core::rate::Limit>,
    /// Whether admin callers are rate limited too.
    pub rate_limit_admin: bool,
    /// How much the thread index holds.
    pub thread_limits: crate::threads::ThreadLimits,
}

/// The default rate limit of a caller: 500 requests a second, 1,000 at once.
pub const DEFAULT_RATE_LIMIT: (f64, u32) = (500.0, 1000);

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            durability: Durability::GroupCommit,
            restart_policy: RestartPolicy::default(),
            test_hooks: false,
            test_assign_pause: Duration::ZERO,
            test_backup_pause: Duration::ZERO,
            presence_ttl: Duration::from_secs(60),
            reaper_interval: Duration::from_secs(30),
            accept_timeout: Duration::from_secs(60),
            task_sweep_interval: Duration::from_secs(30),
            stuck_task_after: Duration::from_secs(300),
            completed_task_ttl: Duration::from_secs(7 * 24 * 3600),
            backup_dir: std::path::PathBuf::from("./data/backups"),
            backup_keep: 3,
            backup_interval: Duration::from_secs(24 * 3600),
            backup_stale_after: Duration::from_secs(48 * 3600),
            fragmentation_floor: 64 << 20,
            compact_when_fragmented: false,
            queue_sample_interval: Duration::from_secs(60),
            dashboard_flush_interval: Duration::from_millis(100),
            push_health_interval: Duration::from_secs(60),
            push_subject: "mailto:agentcom@localhost".into(),
            mailbox_quota_bytes: 64 << 20,
            channel_quota_bytes: 64 << 20,
            history_max_bytes: 256 << 20,
            dashboard_session_ttl: Duration::from_millis(tokens::SESSION_TTL_MS),
            rate_limit: agentcom_core::rate::Limit::per_second(
                DEFAULT_RATE_LIMIT.0,
                DEFAULT_RATE_LIMIT.1,
            ),
            rate_limit_admin: false,
            thread_limits: Default::default(),
        }
    }
}

/// How long request handlers wait for an actor's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
