//! Route handlers: each reads its input, makes one typed hub call and shapes the answer.

use agentcom_core::auth::{is_valid_agent_id, Role};
use agentcom_core::config::{ConfigKey, ConfigValue};
use agentcom_hub::supervisor::ChildRecord;
use http::StatusCode;
use serde_json::{json, Value};

use crate::api::{
    self, admin, caller, caller_or_token_param, ok, read_object, ApiError, ApiResult, Request,
};
use crate::server::App;

/// Route 1: liveness and the number of agents present.
pub async fn health(app: &App) -> ApiResult {
    let agents = app.hub.presence_count();
    Ok(ok(
        json!({"status": "ok", "service": "agent_com", "agents_connected": agents}),
    ))
}

/// Routes 4 and 6: any valid token (Bearer or `token` parameter).
pub async fn get_millis_setting(app: &App, req: Request, key: ConfigKey) -> ApiResult {
    caller_or_token_param(&app.hub, req.headers(), req.uri())?;
    let value = match app.hub.config_get(key).await? {
        Some(ConfigValue::Millis(ms)) => json!(ms),
        _ => Value::Null,
    };
    Ok(ok(json!({ key.name(): value })))
}

/// Routes 5 and 7: admin only; the value must be a positive integer.
pub async fn put_millis_setting(app: &App, req: Request, key: ConfigKey) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let ms = body
        .get(key.name())
        .and_then(Value::as_u64)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            ApiError::bad_request(&format!(
                "missing or invalid field: {} (positive integer)",
                key.name()
            ))
            .with("field", key.name())
        })?;
    app.hub.config_put(key, ConfigValue::Millis(ms)).await?;
    Ok(ok(json!({ key.name(): ms, "status": "updated" })))
}

/// Route 49: open, for the onboarding scripts.
pub async fn get_default_repo(app: &App) -> ApiResult {
    Ok(ok(
        match app.hub.config_get(ConfigKey::DefaultRepo).await? {
            Some(ConfigValue::Text(url)) => json!({"default_repo": url, "configured": true}),
            _ => json!({"default_repo": null, "configured": false}),
        },
    ))
}

/// Route 50: admin only; `url` must be a non-empty string.
pub async fn put_default_repo(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let url = body
        .get("url")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing or invalid field: url"))?
        .to_string();
    app.hub
        .config_put(ConfigKey::DefaultRepo, ConfigValue::Text(url.clone()))
        .await?;
    Ok(ok(json!({"status": "ok", "default_repo": url})))
}

/// Route 25: admin only. `role` defaults to `agent`.
pub async fn create_token(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let agent_id = match body.get("agent_id") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("missing required field: agent_id"))
        }
        Some(Value::String(id)) if is_valid_agent_id(id) => id.clone(),
        Some(_) => {
            return Err(ApiError::bad_request("invalid_field")
                .with("field", "agent_id")
                .with(
                    "message",
                    "agent_id must be a non-empty string without spaces or slashes",
                ))
        }
    };
    let role = match body.get("role") {
        None | Some(Value::Null) => Role::Agent,
        Some(Value::String(r)) => r.parse::<Role>().map_err(|m| {
            ApiError::bad_request("invalid_field")
                .with("field", "role")
                .with("message", m)
        })?,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_field")
                .with("field", "role")
                .with("message", "role must be admin, agent or viewer"))
        }
    };
    let (token, record) = app.hub.token_create(&agent_id, role).await?;
    Ok(api::json(
        StatusCode::CREATED,
        json!({"agent_id": record.agent_id, "token": token, "role": record.role.as_str()}),
    ))
}

/// Route 26: admin only; one entry per token, never the token itself.
pub async fn list_tokens(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let tokens: Vec<Value> = app
        .hub
        .token_list()?
        .into_iter()
        .map(|r| {
            json!({
                "agent_id": r.agent_id,
                "token_prefix": format!("{}...", r.prefix),
                "role": r.role.as_str(),
                "created_at": r.created_at,
            })
        })
        .collect();
    Ok(ok(json!({ "tokens": tokens })))
}

/// Route 27: admin (every token of the agent), or an agent token revoking its own agent
/// tokens (the original's remove-agent) — not the admin or viewer tokens minted with the
/// same id. A viewer token revokes nothing, whatever agent id it was minted for.
pub async fn revoke_tokens(app: &App, req: Request, agent_id: String) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    if !api::acts_for(&who, &agent_id) {
        return Err(ApiError::admin_only());
    }
    let only = (!who.role.is_admin()).then_some(Role::Agent);
    app.hub.token_revoke(&agent_id, only).await?;
    Ok(ok(json!({"status": "revoked", "agent_id": agent_id})))
}

fn actor_json(r: &ChildRecord) -> Value {
    json!({
        "name": r.name,
        "kind": r.kind,
        "status": r.status.as_str(),
        "restartable": r.restartable,
        "started_at": r.started_at,
        "restarts": r.restarts,
        "crashes": r.crashes,
        "crash_streak": r.crash_streak,
        "last_restart_at": r.last_restart_at,
        "last_error": r.last_error,
        "last_backoff_ms": r.last_backoff_ms,
    })
}

/// The supervision tree, with websocket sessions counted per kind.
pub async fn list_actors(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let actors: Vec<Value> = app.hub.actors().await?.iter().map(actor_json).collect();
    let sessions = app.hub.session_counts().await?;
    Ok(ok(json!({
        "actors": actors,
        "sessions": {"agent": sessions.agent, "dashboard": sessions.dashboard},
    })))
}

/// Restart one actor; answers once the new instance runs.
pub async fn restart_actor(app: &App, req: Request, name: String) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let record = app.hub.restart_actor(&name).await?;
    Ok(ok(
        json!({"status": "restarted", "actor": actor_json(&record)}),
    ))
}

/// Test hook (only with `--test-hooks`): make an actor crash.
pub async fn crash_actor(app: &App, req: Request, name: String) -> ApiResult {
    admin(&app.hub, req.headers())?;
    app.hub.crash_actor(&name).await?;
    Ok(api::json(
        StatusCode::ACCEPTED,
        json!({"status": "crash_injected", "actor": name}),
    ))
}
