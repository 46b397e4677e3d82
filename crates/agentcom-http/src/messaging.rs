//! Messaging routes: messages, mailboxes, history, threads, channels, agents, analytics and
//! onboarding (reference §2.2 routes 2–3, 8–24, 30–33, 48).

use agentcom_core::auth::{check_id, is_valid_agent_id, Role};
use agentcom_core::channel::{self, normalize};
use agentcom_core::config::{ConfigKey, ConfigValue};
use agentcom_core::message;
use agentcom_hub::channels::{self, Subscription};
use agentcom_hub::history::{self, HistoryQuery};
use agentcom_hub::{mailbox, threads, Principal};
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::api::{
    self, acts_for, caller, caller_or_token_param, forbidden, messaging_caller, ok, query_int,
    query_limit, query_param, read_object, ApiError, ApiResult, Request,
};
use crate::server::App;
use crate::wire;

const MAX_SEQ: i64 = i64::MAX;

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::bad_request("invalid_field")
        .with("field", field)
        .with("message", message)
}

/// An optional string body field; null counts as absent.
fn opt_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, &format!("{field} must be a string"))),
    }
}

/// Refuse message fields that would become malformed store keys (`to`, `reply_to`).
fn check_keys(to: Option<&str>, reply_to: Option<&str>) -> Result<(), ApiError> {
    message::check_keys(to, reply_to).map_err(|(field, e)| invalid(field, &format!("{field} {e}")))
}

/// The agent id of a mailbox route: an identifier, or 400 (it owns store keys).
fn mailbox_agent(agent_id: &str) -> Result<(), ApiError> {
    check_id(agent_id).map_err(|e| invalid("agent_id", &format!("agent_id {e}")))
}

/// Route 3: send a direct message or a broadcast as the token's agent.
pub async fn post_message(app: &App, req: Request) -> ApiResult {
    let who = messaging_caller(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let Some(payload) = body.get("payload").cloned() else {
        return Err(ApiError::bad_request("missing required field: payload"));
    };
    let to = opt_string(&body, "to")?;
    let kind = opt_string(&body, "type")?.unwrap_or_else(|| "chat".into());
    let reply_to = opt_string(&body, "reply_to")?;
    check_keys(to.as_deref(), reply_to.as_deref())?;
    let message = app
        .hub
        .new_message(&who.agent_id, to, kind, payload, reply_to);
    let id = message.id.clone();
    app.hub.route(message).await?;
    Ok(ok(json!({"status": "sent", "id": id})))
}

/// Route 8: evict expired mailbox entries (in the background).
pub async fn evict(app: &App, req: Request) -> ApiResult {
    messaging_caller(&app.hub, req.headers())?;
    app.hub.mailbox_evict().await?;
    Ok(ok(json!({"status": "eviction_triggered"})))
}

/// The caller of a mailbox route: an agent token of the path's agent, or an admin token
/// (S6); a viewer token minted for that agent id is refused too.
fn mailbox_owner(app: &App, req: &Request, agent_id: &str) -> Result<Principal, ApiError> {
    let who = caller_or_token_param(&app.hub, req.headers(), req.uri())?;
    if who.role == Role::Viewer {
        return Err(forbidden(
            "a viewer token cannot read or acknowledge a mailbox",
        ));
    }
    if !acts_for(&who, agent_id) {
        return Err(forbidden("this token belongs to another agent"));
    }
    Ok(who)
}

/// Route 12: poll a mailbox.
pub async fn poll_mailbox(app: &App, req: Request, agent_id: String) -> ApiResult {
    mailbox_owner(app, &req, &agent_id)?;
    mailbox_agent(&agent_id)?;
    let since = query_int(req.uri(), "since", 0, MAX_SEQ)?.unwrap_or(0) as u64;
    let entries =
        mailbox::poll(&app.hub.reader, &agent_id, since).map_err(agentcom_hub::HubError::from)?;
    let last_seq = entries.last().map_or(since, |e| e.seq);
    Ok(ok(json!({
        "agent_id": agent_id,
        "messages": entries.iter().map(wire::mailbox_entry).collect::<Vec<_>>(),
        "last_seq": last_seq,
        "count": entries.len(),
    })))
}

/// Route 13: acknowledge (delete) entries up to `seq`; `seq` must be a non-negative
/// integer (F15: a string or null no longer wipes the mailbox).
pub async fn ack_mailbox(app: &App, req: Request, agent_id: String) -> ApiResult {
    mailbox_owner(app, &req, &agent_id)?;
    mailbox_agent(&agent_id)?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let seq = match body.get("seq") {
        None => return Err(ApiError::bad_request("missing required field: seq")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid("seq", "seq must be a non-negative integer"))?,
    };
    app.hub.mailbox_ack(&agent_id, seq).await?;
    Ok(ok(json!({"status": "acked", "up_to": seq})))
}

/// Route 24: message history, private to its parties unless the caller is admin (S4).
pub async fn list_messages(app: &App, req: Request) -> ApiResult {
    let who = caller_or_token_param(&app.hub, req.headers(), req.uri())?;
    if who.role == Role::Viewer {
        return Err(forbidden("a viewer token cannot read messages"));
    }
    let uri = req.uri();
    let cursor = query_int(uri, "cursor", 0, MAX_SEQ)?.unwrap_or(0) as u64;
    let limit = query_limit(uri, 200, 50)?;
    let q = HistoryQuery {
        from: query_param(uri, "from"),
        to: query_param(uri, "to"),
        channel: query_param(uri, "channel"),
        start_time: query_int(uri, "start_time", 0, MAX_SEQ)?.map(|t| t as u64),
        end_time: query_int(uri, "end_time", 0, MAX_SEQ)?.map(|t| t as u64),
        cursor,
        limit,
        visible_to: (!who.role.is_admin()).then(|| who.agent_id.clone()),
    };
    let entries = history::query(&app.hub.reader, &q).map_err(agentcom_hub::HubError::from)?;
    let next = entries.last().map_or(cursor, |e| e.seq);
    Ok(ok(json!({
        "messages": entries.iter().map(|e| wire::message_with_seq(&e.message, e.seq)).collect::<Vec<_>>(),
        "cursor": next,
        "count": entries.len(),
    })))
}

/// Messages of a thread the caller may see (S4).
fn visible(who: &Principal, messages: Vec<agentcom_core::message::Message>) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| who.role.is_admin() || m.visible_to(&who.agent_id))
        .map(wire::message)
        .collect()
}

/// Routes 9–11: a thread, the direct replies, the root.
pub async fn thread(app: &App, req: Request, id: String, part: &str) -> ApiResult {
    let who = caller_or_token_param(&app.hub, req.headers(), req.uri())?;
    if who.role == Role::Viewer {
        return Err(forbidden("a viewer token cannot read messages"));
    }
    let reader = &app.hub.reader;
    let err = agentcom_hub::HubError::from;
    Ok(ok(match part {
        "replies" => {
            let replies = visible(&who, threads::direct_replies(reader, &id).map_err(err)?);
            json!({"parent": id, "count": replies.len(), "replies": replies})
        }
        "root" => json!({"message_id": id, "root": threads::root(reader, &id).map_err(err)?}),
        _ => {
            let (root, messages) = threads::thread(reader, &id).map_err(err)?;
            let messages = visible(&who, messages);
            json!({"root": root, "count": messages.len(), "messages": messages})
        }
    }))
}

/// Route 14.
pub async fn list_channels(app: &App) -> ApiResult {
    let list = channels::list(&app.hub.reader).map_err(agentcom_hub::HubError::from)?;
    Ok(ok(
        json!({"channels": list.iter().map(wire::channel_summary).collect::<Vec<_>>()}),
    ))
}

/// Route 15: create a channel.
pub async fn create_channel(app: &App, req: Request) -> ApiResult {
    let who = messaging_caller(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let name = match body.get("name") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("missing required field: name"))
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("name", "name must be a string")),
    };
    channel::check_length(&name).map_err(|m| invalid("name", &m))?;
    let normalized = normalize(&name).ok_or_else(|| {
        invalid(
            "name",
            "the channel name has no letters, digits, '_' or '-'",
        )
    })?;
    let description = opt_string(&body, "description")?.unwrap_or_default();
    app.hub
        .create_channel(&normalized, description, &who.agent_id)
        .await?;
    Ok(api::json(
        StatusCode::CREATED,
        json!({"status": "created", "channel": name}),
    ))
}

/// The normalised channel name of a path: 400 if too long, 404 if it normalises to
/// nothing (no such channel can exist).
fn channel_name(raw: &str) -> Result<String, ApiError> {
    channel::check_length(raw).map_err(|m| invalid("channel", &m))?;
    normalize(raw).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "channel_not_found"))
}

/// Route 16.
pub async fn get_channel(app: &App, raw: String) -> ApiResult {
    let name = channel_name(&raw)?;
    match channels::get(&app.hub.reader, &name).map_err(agentcom_hub::HubError::from)? {
        Some(c) => Ok(ok(wire::channel_detail(&c))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "channel_not_found")),
    }
}

/// Routes 17 and 18.
pub async fn subscription(app: &App, req: Request, raw: String, subscribe: bool) -> ApiResult {
    let who = messaging_caller(&app.hub, req.headers())?;
    let name = channel_name(&raw)?;
    if subscribe {
        Ok(ok(
            match app.hub.subscribe(&name, &who.agent_id, None).await? {
                Subscription::Subscribed => json!({"status": "subscribed", "channel": raw}),
                Subscription::AlreadySubscribed => json!({"status": "already_subscribed"}),
            },
        ))
    } else {
        app.hub.unsubscribe(&name, &who.agent_id, None).await?;
        Ok(ok(json!({"status": "unsubscribed", "channel": raw})))
    }
}

/// Route 19: publish; `payload` must be a JSON object (C2).
pub async fn publish(app: &App, req: Request, raw: String) -> ApiResult {
    let who = messaging_caller(&app.hub, req.headers())?;
    let name = channel_name(&raw)?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let payload = match body.get("payload") {
        None => return Err(ApiError::bad_request("missing required field: payload")),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(invalid("payload", "payload must be a JSON object")),
    };
    let kind = opt_string(&body, "type")?.unwrap_or_else(|| "chat".into());
    let reply_to = opt_string(&body, "reply_to")?;
    check_keys(None, reply_to.as_deref())?;
    let message = app
        .hub
        .new_message(&who.agent_id, None, kind, payload, reply_to);
    let seq = app.hub.publish(&name, message).await?;
    Ok(ok(json!({"status": "published", "seq": seq})))
}

/// Route 20: the first `limit` entries after `since` (F16).
pub async fn channel_history(app: &App, req: Request, raw: String) -> ApiResult {
    let limit = query_limit(req.uri(), 200, 50)?;
    let since = query_int(req.uri(), "since", 0, MAX_SEQ)?.unwrap_or(0) as u64;
    channel::check_length(&raw).map_err(|m| invalid("channel", &m))?;
    let entries = match normalize(&raw) {
        Some(name) => channels::history(&app.hub.reader, &name, since, limit)
            .map_err(agentcom_hub::HubError::from)?,
        None => Vec::new(),
    };
    Ok(ok(json!({
        "channel": raw,
        "messages": entries.iter().map(wire::history_entry).collect::<Vec<_>>(),
        "count": entries.len(),
    })))
}

/// Route 2: agents present (open, for the onboarding scripts).
pub async fn list_agents(app: &App) -> ApiResult {
    let agents: Vec<Value> = app
        .hub
        .presence_table
        .list()
        .iter()
        .map(wire::presence_agent)
        .collect();
    Ok(ok(json!({ "agents": agents })))
}

/// Route 21.
pub async fn agent_states(app: &App, req: Request) -> ApiResult {
    caller(&app.hub, req.headers())?;
    let agents: Vec<Value> = app
        .hub
        .agent_table
        .list()
        .iter()
        .map(wire::fsm_agent)
        .collect();
    Ok(ok(json!({ "agents": agents })))
}

/// Route 22.
pub async fn agent_state(app: &App, req: Request, agent_id: String) -> ApiResult {
    caller(&app.hub, req.headers())?;
    let view = app
        .hub
        .agent_table
        .get(&agent_id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "agent_not_found"))?;
    let mut v = wire::fsm_agent(&view);
    v["last_state_change"] = view.fsm.last_state_change.into();
    Ok(ok(v))
}

/// Route 23.
pub async fn subscriptions(app: &App, agent_id: String) -> ApiResult {
    let names = channels::subscriptions_of(&app.hub.reader, &agent_id)
        .map_err(agentcom_hub::HubError::from)?;
    Ok(ok(json!({"agent_id": agent_id, "channels": names})))
}

/// Routes 31–33.
pub async fn analytics(app: &App, part: &str, agent_id: Option<String>) -> ApiResult {
    let now = agentcom_hub::now_ms();
    let stats = app.hub.analytics_table.stats(now);
    Ok(ok(match (part, agent_id) {
        ("hourly", Some(agent_id)) => {
            let hourly: Vec<Value> = app
                .hub
                .analytics_table
                .hourly(&agent_id, now)
                .into_iter()
                .map(|(bucket, sent, received)| {
                    let minutes = (bucket / 60_000) % (24 * 60);
                    json!({"bucket": bucket, "hour": format!("{:02}:{:02}", minutes / 60, minutes % 60), "sent": sent, "received": received})
                })
                .collect();
            json!({"agent_id": agent_id, "hourly": hourly})
        }
        ("agents", _) => json!({"agents": stats.iter().map(wire::agent_stats).collect::<Vec<_>>()}),
        _ => {
            let s = agentcom_core::analytics::summarize(&stats);
            json!({
                "total_agents": s.total_agents,
                "agents_connected": s.agents_connected,
                "agents_active": s.agents_active,
                "agents_idle": s.agents_idle,
                "agents_offline": s.agents_offline,
                "total_messages_24h": s.total_messages_24h,
                "timestamp": now,
            })
        }
    }))
}

/// Route 30: restart every restartable actor (admin); connected agents keep working (F25).
pub async fn reset(app: &App, req: Request) -> ApiResult {
    let who = api::admin(&app.hub, req.headers())?;
    let restarted = app.hub.reset().await?;
    Ok(ok(
        json!({"status": "reset_scheduled", "triggered_by": who.agent_id, "restarted": restarted}),
    ))
}

/// The base URLs handed to an onboarded agent (F19).
fn hub_urls(app: &App, req: &Request) -> (String, String) {
    if let Some(public) = &app.settings.public_url {
        let base = public.trim_end_matches('/').to_string();
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/ws")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/ws")
        } else {
            format!("ws://{base}/ws")
        };
        return (ws, base);
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    (format!("ws://{host}/ws"), format!("http://{host}"))
}

/// Route 48: register an agent (admin, or anyone under `--open-registration`); never
/// re-mints for an existing id (S1).
pub async fn register(app: &App, req: Request) -> ApiResult {
    if !app.settings.open_registration {
        let who = caller(&app.hub, req.headers())?;
        if !who.role.is_admin() {
            return Err(ApiError::admin_only());
        }
    }
    let (ws_url, api_url) = hub_urls(app, &req);
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let agent_id = body
        .get("agent_id")
        .and_then(Value::as_str)
        .filter(|id| is_valid_agent_id(id))
        .ok_or_else(|| ApiError::bad_request("missing or invalid field: agent_id"))?
        .to_string();
    let (token, _) = app.hub.register_agent(&agent_id).await?;
    let default_repo = match app.hub.config_get(ConfigKey::DefaultRepo).await? {
        Some(ConfigValue::Text(url)) => Value::String(url),
        _ => Value::Null,
    };
    Ok(api::json(
        StatusCode::CREATED,
        json!({"agent_id": agent_id, "token": token, "hub_ws_url": ws_url, "hub_api_url": api_url, "default_repo": default_repo}),
    ))
}
