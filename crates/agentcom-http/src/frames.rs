//! Agent and dashboard websocket frames: JSON text ⇄ the hub's typed protocol.

use std::sync::{Arc, Mutex, Weak};

use agentcom_core::message::{check_keys, Message};
use agentcom_hub::events::HubEvent;
use agentcom_hub::protocol::{AgentPush, AgentReply, AgentRequest, DashboardRequest, Outbound};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::wire;

/// Why a frame is not a well-formed request.
enum Reject {
    /// A required field is missing: the original's `unknown_message_type` fall-through.
    Unknown,
    Invalid(&'static str, String),
}

impl From<Reject> for AgentRequest {
    fn from(r: Reject) -> Self {
        match r {
            Reject::Unknown => AgentRequest::Unknown,
            Reject::Invalid(field, message) => AgentRequest::Invalid { field, message },
        }
    }
}

fn invalid(field: &'static str, message: &str) -> Reject {
    Reject::Invalid(field, message.to_string())
}

/// An optional string field: absent or null is `None`; another type is an error.
fn opt_string(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Reject> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, &format!("{field} must be a string"))),
    }
}

/// A required string field: absent is `Unknown` (the original's fall-through).
fn req_string(obj: &Map<String, Value>, field: &'static str) -> Result<String, Reject> {
    match obj.get(field) {
        None => Err(Reject::Unknown),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(field, &format!("{field} must be a string"))),
    }
}

/// A required channel name, at most `channel::MAX_NAME_BYTES` as sent.
fn req_channel(obj: &Map<String, Value>) -> Result<String, Reject> {
    let name = req_string(obj, "channel")?;
    agentcom_core::channel::check_length(&name).map_err(|m| invalid("channel", &m))?;
    Ok(name)
}

fn opt_int(
    obj: &Map<String, Value>,
    field: &'static str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, Reject> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                invalid(
                    field,
                    &format!("{field} must be an integer from {min} to {max}"),
                )
            }),
    }
}

/// A `limit` field: at least 1; one above `max` is taken as `max` (as over HTTP).
fn opt_limit(obj: &Map<String, Value>, max: usize, default: usize) -> Result<usize, Reject> {
    match obj.get("limit") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(n.min(max as u64) as usize),
            // A whole number too large for a u64.
            _ if v
                .as_f64()
                .is_some_and(|f| f >= u64::MAX as f64 && f.fract() == 0.0) =>
            {
                Ok(max)
            }
            _ => Err(invalid(
                "limit",
                &format!("limit must be a positive integer (at most {max} are returned)"),
            )),
        },
    }
}

fn message_type(obj: &Map<String, Value>) -> Result<String, Reject> {
    Ok(opt_string(obj, "message_type")?.unwrap_or_else(|| "chat".into()))
}

/// Parse an agent's frame.
pub fn parse_agent(value: Value) -> AgentRequest {
    let Value::Object(obj) = value else {
        return AgentRequest::Unknown;
    };
    parse_object(&obj).unwrap_or_else(AgentRequest::from)
}

fn parse_object(obj: &Map<String, Value>) -> Result<AgentRequest, Reject> {
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    Ok(match kind {
        "identify" => {
            if !obj.contains_key("agent_id") {
                return Err(Reject::Unknown);
            }
            AgentRequest::Identify {
                agent_id: req_string(obj, "agent_id")?,
                token: obj.get("token").and_then(Value::as_str).map(str::to_string),
                name: opt_string(obj, "name")?,
                status: opt_string(obj, "status")?,
                capabilities: obj.get("capabilities").cloned().unwrap_or(Value::Null),
            }
        }
        "message" => {
            let (to, reply_to) = (opt_string(obj, "to")?, opt_string(obj, "reply_to")?);
            check_keys(to.as_deref(), reply_to.as_deref())
                .map_err(|(field, e)| invalid(field, &format!("{field} {e}")))?;
            AgentRequest::Message {
                to,
                message_type: message_type(obj)?,
                payload: obj.get("payload").cloned().unwrap_or(Value::Null),
                reply_to,
            }
        }
        "status" => AgentRequest::Status(req_string(obj, "status")?),
        "list_agents" => AgentRequest::ListAgents,
        "channel_subscribe" => AgentRequest::ChannelSubscribe(req_channel(obj)?),
        "channel_unsubscribe" => AgentRequest::ChannelUnsubscribe(req_channel(obj)?),
        "channel_publish" => {
            let channel = req_channel(obj)?;
            let payload = match obj.get("payload") {
                None => return Err(Reject::Unknown),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => return Err(invalid("payload", "payload must be a JSON object")),
            };
            let reply_to = opt_string(obj, "reply_to")?;
            check_keys(None, reply_to.as_deref())
                .map_err(|(field, e)| invalid(field, &format!("{field} {e}")))?;
            AgentRequest::ChannelPublish {
                channel,
                message_type: message_type(obj)?,
                payload,
                reply_to,
            }
        }
        "channel_history" => AgentRequest::ChannelHistory {
            channel: req_channel(obj)?,
            limit: opt_limit(obj, 200, 50)?,
            since: opt_int(obj, "since", 0, u64::MAX, 0)?,
        },
        "list_channels" => AgentRequest::ListChannels,
        "ping" => AgentRequest::Ping,
        "task_accepted" => AgentRequest::TaskAccepted(req_string(obj, "task_id")?),
        "task_progress" => AgentRequest::TaskProgress(req_string(obj, "task_id")?),
        "task_recovering" => AgentRequest::TaskRecovering(req_string(obj, "task_id")?),
        "task_complete" => {
            let task_id = req_string(obj, "task_id")?;
            let result = obj.get("result").cloned().unwrap_or_else(|| json!({}));
            // `tokens_used` at the top level, else inside an object `result` (C7: a
            // non-object result no longer breaks the lookup).
            let tokens = obj.get("tokens_used").or_else(|| result.get("tokens_used"));
            let tokens_used = match tokens {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    invalid("tokens_used", "tokens_used must be a non-negative integer")
                })?),
            };
            AgentRequest::TaskComplete {
                task_id,
                generation: opt_int(obj, "generation", 0, u64::MAX, 0)?,
                result,
                tokens_used,
            }
        }
        "task_failed" => AgentRequest::TaskFailed {
            task_id: req_string(obj, "task_id")?,
            generation: opt_int(obj, "generation", 0, u64::MAX, 0)?,
            error: obj
                .get("error")
                .or_else(|| obj.get("reason"))
                .cloned()
                .unwrap_or_else(|| Value::from("unknown")),
        },
        "task_rejected" => AgentRequest::TaskRejected {
            task_id: req_string(obj, "task_id")?,
            reason: obj.get("reason").cloned().unwrap_or(Value::Null),
        },
        _ => AgentRequest::Unknown,
    })
}

/// The last frame encoded from one shared value (a `T` behind an `Arc`, and a `K` telling
/// frames of the same value apart), with its text.
struct LastEncoded<T, K>(Mutex<Option<(Weak<T>, K, Utf8Bytes)>>);

impl<T, K: PartialEq> LastEncoded<T, K> {
    const fn new() -> Self {
        LastEncoded(Mutex::new(None))
    }

    /// The text of `frame`, made from `shared`: encoded once, while the first connection
    /// to send it holds the lock, and shared by the rest. While `shared` is held, no other
    /// value can have its address.
    fn text(&self, shared: &Arc<T>, kind: K, frame: &Outbound) -> Utf8Bytes {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let same = |(was, was_kind, _): &&(Weak<T>, K, Utf8Bytes)| {
            *was_kind == kind && Weak::as_ptr(was) == Arc::as_ptr(shared)
        };
        if let Some((_, _, text)) = last.as_ref().filter(same) {
            return text.clone();
        }
        let text: Utf8Bytes = encode(frame).into();
        *last = Some((Arc::downgrade(shared), kind, text.clone()));
        text
    }
}

/// The last message push (and whether as a channel message).
static LAST_PUSH: LastEncoded<Message, bool> = LastEncoded::new();
/// The last dashboard batch (`agentcom_hub::feed`).
static LAST_BATCH: LastEncoded<Vec<Arc<HubEvent>>, ()> = LastEncoded::new();

/// The text of an outbound frame, ready to send. A message push is the same frame for
/// every recipient of one broadcast or channel publish, and a dashboard batch the same for
/// every dashboard, so its text is made once and shared by every connection it goes to
/// (the connections write it, in turn, from one buffer): a 1 MiB broadcast to 1,000 agents
/// that read slowly holds 1 MiB, not 1 GiB.
pub fn encode_shared(frame: &Outbound) -> Utf8Bytes {
    match frame {
        Outbound::Push(AgentPush::Message(m)) => LAST_PUSH.text(m, false, frame),
        Outbound::Push(AgentPush::ChannelMessage { message, .. }) => {
            LAST_PUSH.text(message, true, frame)
        }
        Outbound::Events(batch) => LAST_BATCH.text(batch, (), frame),
        _ => encode(frame).into(),
    }
}

/// The JSON text of an outbound frame.
pub fn encode(frame: &Outbound) -> String {
    match frame {
        Outbound::Error {
            code,
            field,
            message,
        } => {
            let mut v = json!({"type": "error", "error": code});
            if let Some(f) = field {
                v["field"] = (*f).into();
            }
            if let Some(m) = message {
                v["message"] = m.clone().into();
            }
            v
        }
        Outbound::Reply(reply) => encode_reply(reply),
        Outbound::Push(push) => encode_push(push),
        Outbound::Events(events) => json!({"type": "events", "data": events.iter().map(|e| event_json(e)).collect::<Vec<_>>()}),
        Outbound::Snapshot(snapshot) => return wire::snapshot_frame(snapshot),
        Outbound::RetryResult { task_id, status } => json!({"type": "retry_result", "task_id": task_id, "status": status}),
        Outbound::RateLimited { retry_after_ms } => json!({
            "type": "error",
            "error": "rate_limited",
            "retry_after_ms": retry_after_ms,
            "message": crate::api::rate_limited_message(*retry_after_ms),
        }),
    }
    .to_string()
}

fn encode_reply(reply: &AgentReply) -> Value {
    match reply {
        AgentReply::Identified { agent_id } => json!({"type": "identified", "agent_id": agent_id}),
        AgentReply::MessageSent { id } => json!({"type": "message_sent", "id": id}),
        AgentReply::StatusUpdated => json!({"type": "status_updated"}),
        AgentReply::Agents(list) => {
            json!({"type": "agents", "agents": list.iter().map(wire::agent_brief).collect::<Vec<_>>()})
        }
        AgentReply::ChannelSubscribed { channel, already } => {
            let mut v = json!({"type": "channel_subscribed", "channel": channel});
            if *already {
                v["note"] = "already_subscribed".into();
            }
            v
        }
        AgentReply::ChannelUnsubscribed { channel } => {
            json!({"type": "channel_unsubscribed", "channel": channel})
        }
        AgentReply::ChannelPublished { channel, seq, id } => {
            json!({"type": "channel_published", "channel": channel, "seq": seq, "id": id})
        }
        AgentReply::ChannelHistory { channel, entries } => json!({
            "type": "channel_history",
            "channel": channel,
            "messages": entries.iter().map(wire::history_entry).collect::<Vec<_>>(),
        }),
        AgentReply::Channels(list) => {
            json!({"type": "channels", "channels": list.iter().map(wire::channel_summary).collect::<Vec<_>>()})
        }
        AgentReply::Pong { timestamp } => json!({"type": "pong", "timestamp": timestamp}),
        AgentReply::TaskAck { task_id, status } => {
            json!({"type": "task_ack", "task_id": task_id, "status": status})
        }
        AgentReply::TaskContinue {
            task_id,
            generation,
        } => {
            json!({"type": "task_continue", "task_id": task_id, "generation": generation})
        }
        AgentReply::TaskReassign { task_id } => {
            json!({"type": "task_reassign", "task_id": task_id})
        }
    }
}

fn encode_push(push: &AgentPush) -> Value {
    match push {
        AgentPush::Message(m) => json!({
            "type": "message",
            "id": m.id,
            "from": m.from,
            "message_type": m.kind,
            "payload": m.payload,
            "reply_to": m.reply_to,
            "timestamp": m.timestamp,
        }),
        AgentPush::ChannelMessage {
            channel,
            message: m,
        } => json!({
            "type": "channel_message",
            "channel": channel,
            "id": m.id,
            "from": m.from,
            "message_type": m.kind,
            "payload": m.payload,
            "reply_to": m.reply_to,
            "timestamp": m.timestamp,
        }),
        AgentPush::ChannelAgentJoined { channel, agent_id } => {
            json!({"type": "channel_agent_joined", "channel": channel, "agent_id": agent_id})
        }
        AgentPush::AgentJoined(p) => json!({"type": "agent_joined", "agent": wire::agent_brief(p)}),
        AgentPush::AgentLeft(id) => json!({"type": "agent_left", "agent_id": id}),
        AgentPush::StatusChanged(p) => {
            json!({"type": "status_changed", "agent": wire::agent_brief(p)})
        }
        AgentPush::TaskAssign(t) => json!({
            "type": "task_assign",
            "task_id": t.id,
            "description": t.description,
            "metadata": t.metadata,
            "generation": t.generation,
            "assigned_at": agentcom_hub::now_ms(),
        }),
    }
}

/// Parse a dashboard's frame: `request_snapshot`, `retry_task`; anything else is ignored.
pub fn parse_dashboard(value: Value) -> DashboardRequest {
    match value.get("type").and_then(Value::as_str) {
        Some("request_snapshot") => DashboardRequest::RequestSnapshot,
        Some("retry_task") => match value.get("task_id").and_then(Value::as_str) {
            Some(id) => DashboardRequest::RetryTask(id.to_string()),
            None => DashboardRequest::Other,
        },
        _ => DashboardRequest::Other,
    }
}

/// One dashboard event (reference §4.2, plus backups and actors).
fn event_json(event: &HubEvent) -> Value {
    match event {
        HubEvent::Actor(e) => json!({
            "type": e.kind.as_str(),
            "actor": e.record.name,
            "status": e.record.status.as_str(),
            "restarts": e.record.restarts,
            "last_error": e.record.last_error,
            "last_backoff_ms": e.record.last_backoff_ms,
            "timestamp": agentcom_hub::now_ms(),
        }),
        HubEvent::AgentJoined(p) => {
            json!({"type": "agent_joined", "agent_id": p.agent_id, "name": p.name, "capabilities": p.capabilities})
        }
        HubEvent::AgentLeft(id) => json!({"type": "agent_left", "agent_id": id}),
        HubEvent::StatusChanged(p) => {
            json!({"type": "status_changed", "agent_id": p.agent_id, "status": p.status})
        }
        // The task rides along, so the page can update itself without a snapshot.
        HubEvent::Task { kind, task } => json!({
            "type": "task_event",
            "task_id": task.id,
            "event": kind.as_str(),
            "agent_id": task.assigned_to,
            "timestamp": task.updated_at,
            "task": {
                "description": task.description,
                "priority": task.priority,
                "status": task.status.as_str(),
                "assigned_to": task.assigned_to,
                "assigned_at": task.assigned_at,
                "tokens_used": task.tokens_used,
                "last_error": task.last_error,
                "retry_count": task.retry_count,
                "created_at": task.created_at,
            },
        }),
        HubEvent::AgentState {
            agent_id,
            fsm_state,
            current_task_id,
            unresponsive,
            last_state_change,
        } => json!({
            "type": "agent_state",
            "agent_id": agent_id,
            "fsm_state": fsm_state,
            "current_task_id": current_task_id,
            "flags": if *unresponsive { vec!["unresponsive"] } else { vec![] },
            "last_state_change": last_state_change,
        }),
        HubEvent::BackupStarted { timestamp } => {
            json!({"type": "backup_started", "timestamp": timestamp})
        }
        HubEvent::BackupComplete {
            timestamp,
            tables_backed_up,
            backup_id,
            duration_ms,
            verified,
        } => json!({
            "type": "backup_complete",
            "timestamp": timestamp,
            "tables_backed_up": tables_backed_up,
            "backup_id": backup_id,
            "duration_ms": duration_ms,
            "verified": verified,
        }),
        HubEvent::BackupFailed { timestamp, error } => {
            json!({"type": "backup_failed", "timestamp": timestamp, "error": error})
        }
        HubEvent::CompactionStarted { timestamp } => {
            json!({"type": "compaction_started", "timestamp": timestamp})
        }
        HubEvent::CompactionComplete { timestamp, run } => {
            let mut event = serde_json::to_value(run).unwrap_or_default();
            event["type"] = "compaction_complete".into();
            event["timestamp"] = (*timestamp).into();
            event
        }
        HubEvent::CompactionFailed { timestamp, error } => {
            json!({"type": "compaction_failed", "timestamp": timestamp, "error": error})
        }
        other => json!({"type": "other", "detail": format!("{other:?}")}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> AgentRequest {
        parse_agent(v)
    }

    #[test]
    fn missing_required_fields_fall_through_and_wrong_types_are_invalid() {
        assert!(matches!(
            parse(json!({"type": "identify"})),
            AgentRequest::Unknown
        ));
        assert!(matches!(
            parse(json!({"type": "status"})),
            AgentRequest::Unknown
        ));
        assert!(matches!(
            parse(json!({"type": "channel_publish", "channel": "dev"})),
            AgentRequest::Unknown
        ));
        assert!(matches!(parse(json!([1])), AgentRequest::Unknown));
        assert!(matches!(
            parse(json!({"type": "channel_subscribe", "channel": 5})),
            AgentRequest::Invalid {
                field: "channel",
                ..
            }
        ));
        assert!(matches!(
            parse(json!({"type": "channel_publish", "channel": "dev", "payload": "hi"})),
            AgentRequest::Invalid {
                field: "payload",
                ..
            }
        ));
        assert!(matches!(
            parse(json!({"type": "channel_history", "channel": "dev", "limit": "abc"})),
            AgentRequest::Invalid { field: "limit", .. }
        ));
        assert!(matches!(
            parse(json!({"type": "channel_history", "channel": "dev", "limit": 0})),
            AgentRequest::Invalid { field: "limit", .. }
        ));
    }

    #[test]
    fn defaults_follow_the_original() {
        match parse(json!({"type": "message", "payload": {"x": 1}})) {
            AgentRequest::Message {
                to, message_type, ..
            } => {
                assert_eq!((to, message_type.as_str()), (None, "chat"));
            }
            other => panic!("{other:?}"),
        }
        match parse(json!({"type": "channel_history", "channel": "dev"})) {
            AgentRequest::ChannelHistory { limit, since, .. } => {
                assert_eq!((limit, since), (50, 0))
            }
            other => panic!("{other:?}"),
        }
    }
}
