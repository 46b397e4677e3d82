//! The route table: path → endpoint by `matchit`, then endpoint × method → handler.
//! An unknown path or a known path with the wrong method is `404 {"error":"not_found"}`.

use http::Method;

use crate::api::{percent_decode, ApiError, ApiResult, Request};
use crate::handlers;
use crate::messaging as m;
use crate::metrics;
use crate::push;
use crate::rate::{self, Metering};
use crate::server::App;
use crate::storage;
use crate::tasks;
use crate::ws;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Health,
    HeartbeatInterval,
    MailboxRetention,
    DefaultRepo,
    Tokens,
    AgentTokens,
    Actors,
    ActorRestart,
    ActorCrash,
    AgentSocket,
    DashboardSocket,
    Agents,
    AgentStates,
    AgentState,
    AgentSubscriptions,
    Message,
    MailboxEvict,
    Mailbox,
    MailboxAck,
    Messages,
    Thread,
    ThreadReplies,
    ThreadRoot,
    Channels,
    Channel,
    ChannelSubscribe,
    ChannelUnsubscribe,
    ChannelPublish,
    ChannelHistory,
    Reset,
    AnalyticsSummary,
    AnalyticsAgents,
    AnalyticsHourly,
    Register,
    Tasks,
    TasksDeadLetter,
    TasksStats,
    Task,
    TaskRetry,
    PushTask,
    Backup,
    Backups,
    BackupVerify,
    StorageHealth,
    ServiceWorker,
    VapidKey,
    PushSubscribe,
    DashboardState,
    DashboardPage,
    Login,
    Logout,
    WhoAmI,
    Metrics,
}

const ROUTES: &[(&str, Endpoint)] = &[
    ("/health", Endpoint::Health),
    (
        "/api/config/heartbeat-interval",
        Endpoint::HeartbeatInterval,
    ),
    ("/api/config/mailbox-retention", Endpoint::MailboxRetention),
    ("/api/config/default-repo", Endpoint::DefaultRepo),
    ("/admin/tokens", Endpoint::Tokens),
    ("/admin/tokens/{agent_id}", Endpoint::AgentTokens),
    ("/api/admin/actors", Endpoint::Actors),
    ("/api/admin/actors/{name}/restart", Endpoint::ActorRestart),
    ("/api/admin/actors/{name}/crash", Endpoint::ActorCrash),
    ("/ws", Endpoint::AgentSocket),
    ("/ws/dashboard", Endpoint::DashboardSocket),
    ("/api/agents", Endpoint::Agents),
    ("/api/agents/states", Endpoint::AgentStates),
    ("/api/agents/{agent_id}/state", Endpoint::AgentState),
    (
        "/api/agents/{agent_id}/subscriptions",
        Endpoint::AgentSubscriptions,
    ),
    ("/api/message", Endpoint::Message),
    ("/api/mailbox/evict", Endpoint::MailboxEvict),
    ("/api/mailbox/{agent_id}", Endpoint::Mailbox),
    ("/api/mailbox/{agent_id}/ack", Endpoint::MailboxAck),
    ("/api/messages", Endpoint::Messages),
    ("/api/threads/{message_id}", Endpoint::Thread),
    ("/api/threads/{message_id}/replies", Endpoint::ThreadReplies),
    ("/api/threads/{message_id}/root", Endpoint::ThreadRoot),
    ("/api/channels", Endpoint::Channels),
    ("/api/channels/{channel}", Endpoint::Channel),
    (
        "/api/channels/{channel}/subscribe",
        Endpoint::ChannelSubscribe,
    ),
    (
        "/api/channels/{channel}/unsubscribe",
        Endpoint::ChannelUnsubscribe,
    ),
    ("/api/channels/{channel}/publish", Endpoint::ChannelPublish),
    ("/api/channels/{channel}/history", Endpoint::ChannelHistory),
    ("/api/admin/reset", Endpoint::Reset),
    ("/api/analytics/summary", Endpoint::AnalyticsSummary),
    ("/api/analytics/agents", Endpoint::AnalyticsAgents),
    (
        "/api/analytics/agents/{agent_id}/hourly",
        Endpoint::AnalyticsHourly,
    ),
    ("/api/onboard/register", Endpoint::Register),
    ("/api/tasks", Endpoint::Tasks),
    ("/api/tasks/dead-letter", Endpoint::TasksDeadLetter),
    ("/api/tasks/stats", Endpoint::TasksStats),
    ("/api/tasks/{task_id}", Endpoint::Task),
    ("/api/tasks/{task_id}/retry", Endpoint::TaskRetry),
    ("/api/admin/push-task", Endpoint::PushTask),
    ("/api/admin/backup", Endpoint::Backup),
    ("/api/admin/backups", Endpoint::Backups),
    (
        "/api/admin/backups/{backup_id}/verify",
        Endpoint::BackupVerify,
    ),
    ("/api/admin/dets-health", Endpoint::StorageHealth),
    ("/api/admin/storage-health", Endpoint::StorageHealth),
    ("/sw.js", Endpoint::ServiceWorker),
    ("/api/dashboard/vapid-key", Endpoint::VapidKey),
    ("/api/dashboard/push-subscribe", Endpoint::PushSubscribe),
    ("/api/dashboard/state", Endpoint::DashboardState),
    ("/dashboard", Endpoint::DashboardPage),
    ("/api/dashboard/login", Endpoint::Login),
    ("/api/dashboard/logout", Endpoint::Logout),
    ("/api/dashboard/whoami", Endpoint::WhoAmI),
    ("/metrics", Endpoint::Metrics),
];

pub struct Router {
    inner: matchit::Router<Endpoint>,
}

impl Router {
    pub fn new() -> Self {
        let mut inner = matchit::Router::new();
        for (path, endpoint) in ROUTES {
            inner
                .insert(*path, *endpoint)
                .expect("route table is valid");
        }
        Router { inner }
    }
}

/// Which rate limit a request to `endpoint` (`None`: no route) draws on.
fn metering(endpoint: Option<Endpoint>) -> Metering {
    match endpoint {
        Some(Endpoint::Health | Endpoint::Metrics) => Metering::Free,
        Some(Endpoint::Login | Endpoint::Register) => Metering::CallerOrPeer,
        _ => Metering::Caller,
    }
}

/// Answer one request: rate limits first (a refused request reaches no handler), then
/// the route.
pub async fn dispatch(app: &App, req: Request) -> ApiResult {
    let path = req.uri().path().to_string();
    let matched = app.router.inner.at(&path).ok();
    rate::check(app, metering(matched.as_ref().map(|m| *m.value)), &req)?;
    let Some(matched) = matched else {
        return Err(ApiError::not_found());
    };
    let endpoint = *matched.value;
    let param = |name: &str| {
        matched
            .params
            .get(name)
            .map(percent_decode)
            .unwrap_or_default()
    };
    let method = req.method().clone();
    use Endpoint as E;
    match (endpoint, method) {
        (E::Health, Method::GET) => handlers::health(app).await,
        (E::HeartbeatInterval | E::MailboxRetention, Method::GET) => {
            handlers::get_millis_setting(app, req, key_of(endpoint)).await
        }
        (E::HeartbeatInterval | E::MailboxRetention, Method::PUT) => {
            handlers::put_millis_setting(app, req, key_of(endpoint)).await
        }
        (E::DefaultRepo, Method::GET) => handlers::get_default_repo(app).await,
        (E::DefaultRepo, Method::PUT) => handlers::put_default_repo(app, req).await,
        (E::Tokens, Method::POST) => handlers::create_token(app, req).await,
        (E::Tokens, Method::GET) => handlers::list_tokens(app, req).await,
        (E::AgentTokens, Method::DELETE) => {
            handlers::revoke_tokens(app, req, param("agent_id")).await
        }
        (E::Actors, Method::GET) => handlers::list_actors(app, req).await,
        (E::ActorRestart, Method::POST) => handlers::restart_actor(app, req, param("name")).await,
        (E::ActorCrash, Method::POST) if app.hub.settings().test_hooks => {
            handlers::crash_actor(app, req, param("name")).await
        }
        (E::Agents, Method::GET) => m::list_agents(app).await,
        (E::AgentStates, Method::GET) => m::agent_states(app, req).await,
        (E::AgentState, Method::GET) => m::agent_state(app, req, param("agent_id")).await,
        (E::AgentSubscriptions, Method::GET) => m::subscriptions(app, param("agent_id")).await,
        (E::Message, Method::POST) => m::post_message(app, req).await,
        (E::MailboxEvict, Method::POST) => m::evict(app, req).await,
        (E::Mailbox, Method::GET) => m::poll_mailbox(app, req, param("agent_id")).await,
        (E::MailboxAck, Method::POST) => m::ack_mailbox(app, req, param("agent_id")).await,
        (E::Messages, Method::GET) => m::list_messages(app, req).await,
        (E::Thread, Method::GET) => m::thread(app, req, param("message_id"), "thread").await,
        (E::ThreadReplies, Method::GET) => {
            m::thread(app, req, param("message_id"), "replies").await
        }
        (E::ThreadRoot, Method::GET) => m::thread(app, req, param("message_id"), "root").await,
        (E::Channels, Method::GET) => m::list_channels(app).await,
        (E::Channels, Method::POST) => m::create_channel(app, req).await,
        (E::Channel, Method::GET) => m::get_channel(app, param("channel")).await,
        (E::ChannelSubscribe, Method::POST) => {
            m::subscription(app, req, param("channel"), true).await
        }
        (E::ChannelUnsubscribe, Method::POST) => {
            m::subscription(app, req, param("channel"), false).await
        }
        (E::ChannelPublish, Method::POST) => m::publish(app, req, param("channel")).await,
        (E::ChannelHistory, Method::GET) => m::channel_history(app, req, param("channel")).await,
        (E::Reset, Method::POST) => m::reset(app, req).await,
        (E::AnalyticsSummary, Method::GET) => m::analytics(app, "summary", None).await,
        (E::AnalyticsAgents, Method::GET) => m::analytics(app, "agents", None).await,
        (E::AnalyticsHourly, Method::GET) => {
            m::analytics(app, "hourly", Some(param("agent_id"))).await
        }
        (E::Register, Method::POST) => m::register(app, req).await,
        (E::Tasks, Method::POST) => tasks::submit(app, req).await,
        (E::Tasks, Method::GET) => tasks::list(app, req).await,
        (E::TasksDeadLetter, Method::GET) => tasks::dead_letter(app, req).await,
        (E::TasksStats, Method::GET) => tasks::stats(app, req).await,
        (E::Task, Method::GET) => tasks::get(app, req, param("task_id")).await,
        (E::TaskRetry, Method::POST) => tasks::retry(app, req, param("task_id")).await,
        (E::PushTask, Method::POST) => tasks::push(app, req).await,
        (E::Backup, Method::POST) => storage::create(app, req).await,
        (E::Backups, Method::GET) => storage::list(app, req).await,
        (E::BackupVerify, Method::POST) => storage::verify(app, req, param("backup_id")).await,
        (E::StorageHealth, Method::GET) => storage::health(app, req).await,
        (E::ServiceWorker, Method::GET) => Ok(push::service_worker()),
        (E::VapidKey, Method::GET) => push::vapid_key(app).await,
        (E::PushSubscribe, Method::POST) => push::subscribe(app, req).await,
        (E::DashboardState, Method::GET) => push::dashboard_state(app, req).await,
        (E::DashboardPage, Method::GET) => Ok(push::dashboard_page()),
        (E::Login, Method::POST) => push::login(app, req).await,
        (E::Logout, Method::POST) => push::logout(app, req).await,
        (E::WhoAmI, Method::GET) => push::whoami(app, req).await,
        (E::Metrics, Method::GET) => metrics::metrics(app, req).await,
        (E::AgentSocket, Method::GET) => ws::upgrade_agent(app, req).await,
        (E::DashboardSocket, Method::GET) => ws::upgrade_dashboard(app, req).await,
        _ => Err(ApiError::not_found()),
    }
}

fn key_of(endpoint: Endpoint) -> agentcom_core::config::ConfigKey {
    use agentcom_core::config::ConfigKey;
    match endpoint {
        Endpoint::HeartbeatInterval => ConfigKey::HeartbeatIntervalMs,
        _ => ConfigKey::MailboxTtlMs,
    }
}
