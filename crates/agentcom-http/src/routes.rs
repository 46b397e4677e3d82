//! The route table: path → endpoint by `matchit`, then endpoint × method → handler.
//! An unknown path or a known path with the wrong method is `404 {"error":"not_found"}`.

use http::Method;

use crate::api::{percent_decode, ApiError, ApiResult, Request};
use crate::handlers;
use crate::server::App;
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

/// Answer one request.
pub async fn dispatch(app: &App, req: Request) -> ApiResult {
    let path = req.uri().path().to_string();
    let Ok(matched) = app.router.inner.at(&path) else {
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
