//! The route table: path → the methods it answers by `matchit`, each method naming one
//! operation, and operation → handler. An unknown path or a known path with the wrong
//! method is `404 {"error":"not_found"}`.
//!
//! The table is also the list of routes `docs/openapi.yaml` must describe
//! ([`route_table`]; `tests/openapi.rs` compares the two).

use crate::api::{percent_decode, ApiError, ApiResult, Request};
use crate::handlers;
use crate::messaging as m;
use crate::metrics;
use crate::openapi;
use crate::push;
use crate::rate::{self, Metering};
use crate::server::App;
use crate::storage;
use crate::tasks;
use crate::ws;

/// The HTTP methods the hub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }
}

/// One thing the hub does: a path and a method select exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Health,
    GetHeartbeatInterval,
    PutHeartbeatInterval,
    GetMailboxRetention,
    PutMailboxRetention,
    GetDefaultRepo,
    PutDefaultRepo,
    CreateToken,
    ListTokens,
    RevokeTokens,
    ListActors,
    RestartActor,
    CrashActor,
    AgentSocket,
    DashboardSocket,
    ListAgents,
    AgentStates,
    AgentState,
    AgentSubscriptions,
    PostMessage,
    EvictMailbox,
    PollMailbox,
    AckMailbox,
    ListMessages,
    Thread,
    ThreadReplies,
    ThreadRoot,
    ListChannels,
    CreateChannel,
    GetChannel,
    Subscribe,
    Unsubscribe,
    Publish,
    ChannelHistory,
    Reset,
    AnalyticsSummary,
    AnalyticsAgents,
    AnalyticsHourly,
    Register,
    SubmitTask,
    ListTasks,
    DeadLetter,
    TaskStats,
    GetTask,
    RetryTask,
    PushTask,
    CreateBackup,
    Compact,
    ListBackups,
    VerifyBackup,
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
    OpenApi,
}

use Op as O;
use Verb::{Delete as DELETE, Get as GET, Post as POST, Put as PUT};

/// Every path, in the order of the reference's table where it has one, with the methods
/// it answers.
const ROUTES: &[(&str, &[(Verb, Op)])] = &[
    ("/health", &[(GET, O::Health)]),
    (
        "/api/config/heartbeat-interval",
        &[
            (GET, O::GetHeartbeatInterval),
            (PUT, O::PutHeartbeatInterval),
        ],
    ),
    (
        "/api/config/mailbox-retention",
        &[(GET, O::GetMailboxRetention), (PUT, O::PutMailboxRetention)],
    ),
    (
        "/api/config/default-repo",
        &[(GET, O::GetDefaultRepo), (PUT, O::PutDefaultRepo)],
    ),
    (
        "/admin/tokens",
        &[(POST, O::CreateToken), (GET, O::ListTokens)],
    ),
    ("/admin/tokens/{agent_id}", &[(DELETE, O::RevokeTokens)]),
    ("/api/admin/actors", &[(GET, O::ListActors)]),
    (
        "/api/admin/actors/{name}/restart",
        &[(POST, O::RestartActor)],
    ),
    ("/api/admin/actors/{name}/crash", &[(POST, O::CrashActor)]),
    ("/ws", &[(GET, O::AgentSocket)]),
    ("/ws/dashboard", &[(GET, O::DashboardSocket)]),
    ("/api/agents", &[(GET, O::ListAgents)]),
    ("/api/agents/states", &[(GET, O::AgentStates)]),
    ("/api/agents/{agent_id}/state", &[(GET, O::AgentState)]),
    (
        "/api/agents/{agent_id}/subscriptions",
        &[(GET, O::AgentSubscriptions)],
    ),
    ("/api/message", &[(POST, O::PostMessage)]),
    ("/api/mailbox/evict", &[(POST, O::EvictMailbox)]),
    ("/api/mailbox/{agent_id}", &[(GET, O::PollMailbox)]),
    ("/api/mailbox/{agent_id}/ack", &[(POST, O::AckMailbox)]),
    ("/api/messages", &[(GET, O::ListMessages)]),
    ("/api/threads/{message_id}", &[(GET, O::Thread)]),
    (
        "/api/threads/{message_id}/replies",
        &[(GET, O::ThreadReplies)],
    ),
    ("/api/threads/{message_id}/root", &[(GET, O::ThreadRoot)]),
    (
        "/api/channels",
        &[(GET, O::ListChannels), (POST, O::CreateChannel)],
    ),
    ("/api/channels/{channel}", &[(GET, O::GetChannel)]),
    ("/api/channels/{channel}/subscribe", &[(POST, O::Subscribe)]),
    (
        "/api/channels/{channel}/unsubscribe",
        &[(POST, O::Unsubscribe)],
    ),
    ("/api/channels/{channel}/publish", &[(POST, O::Publish)]),
    (
        "/api/channels/{channel}/history",
        &[(GET, O::ChannelHistory)],
    ),
    ("/api/admin/reset", &[(POST, O::Reset)]),
    ("/api/analytics/summary", &[(GET, O::AnalyticsSummary)]),
    ("/api/analytics/agents", &[(GET, O::AnalyticsAgents)]),
    (
        "/api/analytics/agents/{agent_id}/hourly",
        &[(GET, O::AnalyticsHourly)],
    ),
    ("/api/onboard/register", &[(POST, O::Register)]),
    ("/api/tasks", &[(POST, O::SubmitTask), (GET, O::ListTasks)]),
    ("/api/tasks/dead-letter", &[(GET, O::DeadLetter)]),
    ("/api/tasks/stats", &[(GET, O::TaskStats)]),
    ("/api/tasks/{task_id}", &[(GET, O::GetTask)]),
    ("/api/tasks/{task_id}/retry", &[(POST, O::RetryTask)]),
    ("/api/admin/push-task", &[(POST, O::PushTask)]),
    ("/api/admin/backup", &[(POST, O::CreateBackup)]),
    ("/api/admin/compact", &[(POST, O::Compact)]),
    ("/api/admin/backups", &[(GET, O::ListBackups)]),
    (
        "/api/admin/backups/{backup_id}/verify",
        &[(POST, O::VerifyBackup)],
    ),
    ("/api/admin/dets-health", &[(GET, O::StorageHealth)]),
    ("/api/admin/storage-health", &[(GET, O::StorageHealth)]),
    ("/sw.js", &[(GET, O::ServiceWorker)]),
    ("/api/dashboard/vapid-key", &[(GET, O::VapidKey)]),
    ("/api/dashboard/push-subscribe", &[(POST, O::PushSubscribe)]),
    ("/api/dashboard/state", &[(GET, O::DashboardState)]),
    ("/dashboard", &[(GET, O::DashboardPage)]),
    ("/api/dashboard/login", &[(POST, O::Login)]),
    ("/api/dashboard/logout", &[(POST, O::Logout)]),
    ("/api/dashboard/whoami", &[(GET, O::WhoAmI)]),
    ("/metrics", &[(GET, O::Metrics)]),
    ("/api/openapi.json", &[(GET, O::OpenApi)]),
];

/// Every route as `(path, method)`, paths in matchit's `{param}` form (the same as
/// OpenAPI's). `POST /api/admin/actors/{name}/crash` is listed though it answers only
/// when the hub runs with `--test-hooks` (404 otherwise).
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .flat_map(|(path, ops)| ops.iter().map(move |(verb, _)| (*path, verb.as_str())))
        .collect()
}

pub struct Router {
    inner: matchit::Router<&'static [(Verb, Op)]>,
}

impl Router {
    pub fn new() -> Self {
        let mut inner = matchit::Router::new();
        for (path, ops) in ROUTES {
            inner.insert(*path, *ops).expect("route table is valid");
        }
        Router { inner }
    }
}

/// Which rate limit a request for `op` (`None`: no route) draws on.
fn metering(op: Option<Op>) -> Metering {
    match op {
        Some(O::Health | O::Metrics | O::OpenApi) => Metering::Free,
        Some(O::Login | O::Register) => Metering::CallerOrPeer,
        _ => Metering::Caller,
    }
}

/// Answer one request: rate limits first (a refused request reaches no handler), then
/// the route.
pub async fn dispatch(app: &App, req: Request) -> ApiResult {
    let path = req.uri().path().to_string();
    let matched = app.router.inner.at(&path).ok();
    let op = matched.as_ref().and_then(|m| {
        m.value
            .iter()
            .find(|(verb, _)| verb.as_str() == req.method().as_str())
            .map(|(_, op)| *op)
    });
    rate::check(app, metering(op), &req)?;
    let (Some(matched), Some(op)) = (matched, op) else {
        return Err(ApiError::not_found());
    };
    let param = |name: &str| {
        matched
            .params
            .get(name)
            .map(percent_decode)
            .unwrap_or_default()
    };
    use crate::handlers::get_millis_setting as get_ms;
    use crate::handlers::put_millis_setting as put_ms;
    use agentcom_core::config::ConfigKey::{HeartbeatIntervalMs, MailboxTtlMs};
    match op {
        O::Health => handlers::health(app).await,
        O::GetHeartbeatInterval => get_ms(app, req, HeartbeatIntervalMs).await,
        O::PutHeartbeatInterval => put_ms(app, req, HeartbeatIntervalMs).await,
        O::GetMailboxRetention => get_ms(app, req, MailboxTtlMs).await,
        O::PutMailboxRetention => put_ms(app, req, MailboxTtlMs).await,
        O::GetDefaultRepo => handlers::get_default_repo(app).await,
        O::PutDefaultRepo => handlers::put_default_repo(app, req).await,
        O::CreateToken => handlers::create_token(app, req).await,
        O::ListTokens => handlers::list_tokens(app, req).await,
        O::RevokeTokens => handlers::revoke_tokens(app, req, param("agent_id")).await,
        O::ListActors => handlers::list_actors(app, req).await,
        O::RestartActor => handlers::restart_actor(app, req, param("name")).await,
        O::CrashActor if app.hub.settings().test_hooks => {
            handlers::crash_actor(app, req, param("name")).await
        }
        O::CrashActor => Err(ApiError::not_found()),
        O::AgentSocket => ws::upgrade_agent(app, req).await,
        O::DashboardSocket => ws::upgrade_dashboard(app, req).await,
        O::ListAgents => m::list_agents(app).await,
        O::AgentStates => m::agent_states(app, req).await,
        O::AgentState => m::agent_state(app, req, param("agent_id")).await,
        O::AgentSubscriptions => m::subscriptions(app, param("agent_id")).await,
        O::PostMessage => m::post_message(app, req).await,
        O::EvictMailbox => m::evict(app, req).await,
        O::PollMailbox => m::poll_mailbox(app, req, param("agent_id")).await,
        O::AckMailbox => m::ack_mailbox(app, req, param("agent_id")).await,
        O::ListMessages => m::list_messages(app, req).await,
        O::Thread => m::thread(app, req, param("message_id"), "thread").await,
        O::ThreadReplies => m::thread(app, req, param("message_id"), "replies").await,
        O::ThreadRoot => m::thread(app, req, param("message_id"), "root").await,
        O::ListChannels => m::list_channels(app).await,
        O::CreateChannel => m::create_channel(app, req).await,
        O::GetChannel => m::get_channel(app, param("channel")).await,
        O::Subscribe => m::subscription(app, req, param("channel"), true).await,
        O::Unsubscribe => m::subscription(app, req, param("channel"), false).await,
        O::Publish => m::publish(app, req, param("channel")).await,
        O::ChannelHistory => m::channel_history(app, req, param("channel")).await,
        O::Reset => m::reset(app, req).await,
        O::AnalyticsSummary => m::analytics(app, "summary", None).await,
        O::AnalyticsAgents => m::analytics(app, "agents", None).await,
        O::AnalyticsHourly => m::analytics(app, "hourly", Some(param("agent_id"))).await,
        O::Register => m::register(app, req).await,
        O::SubmitTask => tasks::submit(app, req).await,
        O::ListTasks => tasks::list(app, req).await,
        O::DeadLetter => tasks::dead_letter(app, req).await,
        O::TaskStats => tasks::stats(app, req).await,
        O::GetTask => tasks::get(app, req, param("task_id")).await,
        O::RetryTask => tasks::retry(app, req, param("task_id")).await,
        O::PushTask => tasks::push(app, req).await,
        O::CreateBackup => storage::create(app, req).await,
        O::Compact => storage::compact(app, req).await,
        O::ListBackups => storage::list(app, req).await,
        O::VerifyBackup => storage::verify(app, req, param("backup_id")).await,
        O::StorageHealth => storage::health(app, req).await,
        O::ServiceWorker => Ok(push::service_worker()),
        O::VapidKey => push::vapid_key(app).await,
        O::PushSubscribe => push::subscribe(app, req).await,
        O::DashboardState => push::dashboard_state(app, req).await,
        O::DashboardPage => Ok(push::dashboard_page()),
        O::Login => push::login(app, req).await,
        O::Logout => push::logout(app, req).await,
        O::WhoAmI => push::whoami(app, req).await,
        O::Metrics => metrics::metrics(app, req).await,
        O::OpenApi => Ok(openapi::document(&req)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_and_method_is_listed_once() {
        let routes = route_table();
        let mut unique = routes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), routes.len(), "a (path, method) listed twice");
        Router::new();
    }
}
