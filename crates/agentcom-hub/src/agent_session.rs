//! The agent side of a session: the identify ladder and every non-task message of
//! reference §3.3, and which pubsub events become pushes (§3.4).

use std::sync::Arc;

use agentcom_core::auth::Role;
use agentcom_core::channel::normalize;
use ractor::ActorRef;
use serde_json::Value;

use crate::events::{HubEvent, Topic};
use crate::presence::{PresenceEntry, PresenceMsg};
use crate::protocol::{AgentPush, AgentReply, AgentRequest, Outbound};
use crate::sessions::{close_code, CloseReason, SessionMsg, SessionState};
use crate::{channels, now_ms, HubError, CALL_TIMEOUT};

/// Which agent, if any, this connection speaks for.
#[derive(Debug, Default)]
pub struct AgentSession {
    pub agent_id: Option<String>,
}

fn error(code: &'static str) -> Outbound {
    Outbound::error(code)
}

fn hub_error(e: &HubError) -> Outbound {
    match e {
        HubError::NotFound(code) => error(code),
        HubError::Invalid { message, .. } => Outbound::Error {
            code: "invalid_field",
            field: None,
            message: Some(message.clone()),
        },
        other => Outbound::Error {
            code: "internal_error",
            field: None,
            message: Some(other.to_string()),
        },
    }
}

/// Answer one request from the agent.
pub async fn handle(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    request: AgentRequest,
) {
    let Some(agent_id) = state.agent.agent_id.clone() else {
        let reply = match request {
            AgentRequest::Identify { .. } => identify(myself, state, request).await,
            _ => error("not_identified"),
        };
        state.push(myself, reply);
        return;
    };
    state
        .services
        .presence_table
        .touch(&agent_id, myself.get_id());
    let reply = match request {
        AgentRequest::Identify { .. } => Some(identify(myself, state, request).await),
        AgentRequest::Message {
            to,
            message_type,
            payload,
            reply_to,
        } => {
            let message =
                state
                    .services
                    .new_message(&agent_id, to, message_type, payload, reply_to);
            let id = message.id.clone();
            Some(match state.services.route(message).await {
                Ok(()) => Outbound::Reply(AgentReply::MessageSent { id }),
                Err(e) => hub_error(&e),
            })
        }
        AgentRequest::Status(status) => {
            let _ = state
                .services
                .presence
                .call(
                    |r| PresenceMsg::SetStatus(agent_id.clone(), myself.get_id(), status, r),
                    CALL_TIMEOUT,
                )
                .await;
            Some(Outbound::Reply(AgentReply::StatusUpdated))
        }
        AgentRequest::ListAgents => Some(Outbound::Reply(AgentReply::Agents(
            state.services.presence_table.list(),
        ))),
        AgentRequest::ChannelSubscribe(channel) => Some(match normalize(&channel) {
            None => error("channel_not_found"),
            Some(name) => match state.services.subscribe(&name, &agent_id).await {
                Ok(sub) => {
                    state.subscribe(myself, Topic::Channel(name));
                    let already = sub == channels::Subscription::AlreadySubscribed;
                    Outbound::Reply(AgentReply::ChannelSubscribed { channel, already })
                }
                Err(e) => hub_error(&e),
            },
        }),
        AgentRequest::ChannelUnsubscribe(channel) => Some(match normalize(&channel) {
            None => error("channel_not_found"),
            Some(name) => match state.services.unsubscribe(&name, &agent_id).await {
                Ok(()) => {
                    state.unsubscribe(&Topic::Channel(name));
                    Outbound::Reply(AgentReply::ChannelUnsubscribed { channel })
                }
                Err(e) => hub_error(&e),
            },
        }),
        AgentRequest::ChannelPublish {
            channel,
            message_type,
            payload,
            reply_to,
        } => Some(match normalize(&channel) {
            None => error("channel_not_found"),
            Some(name) => {
                let message =
                    state
                        .services
                        .new_message(&agent_id, None, message_type, payload, reply_to);
                let id = message.id.clone();
                match state.services.publish(&name, message).await {
                    Ok(seq) => Outbound::Reply(AgentReply::ChannelPublished { channel, seq, id }),
                    Err(e) => hub_error(&e),
                }
            }
        }),
        AgentRequest::ChannelHistory {
            channel,
            limit,
            since,
        } => Some(match normalize(&channel) {
            None => Outbound::Reply(AgentReply::ChannelHistory {
                channel,
                entries: Vec::new(),
            }),
            Some(name) => match channels::history(&state.services.reader, &name, since, limit) {
                Ok(entries) => Outbound::Reply(AgentReply::ChannelHistory { channel, entries }),
                Err(e) => hub_error(&e.into()),
            },
        }),
        AgentRequest::ListChannels => Some(match channels::list(&state.services.reader) {
            Ok(list) => Outbound::Reply(AgentReply::Channels(list)),
            Err(e) => hub_error(&e.into()),
        }),
        AgentRequest::Ping => Some(Outbound::Reply(AgentReply::Pong {
            timestamp: now_ms(),
        })),
        AgentRequest::Invalid { field, message } => Some(Outbound::Error {
            code: "invalid_field",
            field: Some(field),
            message: Some(message),
        }),
        AgentRequest::Unknown => Some(error("unknown_message_type")),
    };
    if let Some(reply) = reply {
        state.push(myself, reply);
    }
}

/// The identify ladder (reference §3.2), then registration as the agent's newest
/// connection (F5) and subscriptions (each once).
async fn identify(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    request: AgentRequest,
) -> Outbound {
    let AgentRequest::Identify {
        agent_id,
        token,
        name,
        status,
        capabilities,
    } = request
    else {
        return error("not_identified");
    };
    let principal = match token.as_deref().map(|t| state.services.authenticate(t)) {
        Some(Ok(Some(p))) if p.role != Role::Viewer => p,
        Some(Err(e)) => return hub_error(&e),
        _ => return error("invalid_token"),
    };
    if principal.agent_id != agent_id {
        return error("token_agent_mismatch");
    }
    if state
        .agent
        .agent_id
        .as_deref()
        .is_some_and(|current| current != agent_id)
    {
        leave(myself, state).await;
    }
    let now = now_ms();
    let entry = PresenceEntry {
        agent_id: agent_id.clone(),
        name: name.unwrap_or_else(|| agent_id.clone()),
        status: status.unwrap_or_else(|| "connected".into()),
        capabilities: if capabilities.is_null() {
            Value::Array(Vec::new())
        } else {
            capabilities
        },
        connected_at: now,
        last_seen: now,
        fsm_state: "idle".into(),
    };
    let newly = state.agent.agent_id.is_none();
    state.agent.agent_id = Some(agent_id.clone());
    match state
        .services
        .presence
        .call(
            |r| PresenceMsg::Register(entry, myself.clone(), r),
            CALL_TIMEOUT,
        )
        .await
    {
        Ok(Some(replaced)) => {
            let _ = replaced.send_message(SessionMsg::Close(CloseReason::new(
                close_code::REPLACED,
                "replaced by a newer connection",
            )));
        }
        Ok(None) => {}
        Err(e) => return hub_error(&e.into()),
    }
    state.subscribe(myself, Topic::Messages);
    state.subscribe(myself, Topic::Presence);
    match channels::subscriptions_of(&state.services.reader, &agent_id) {
        Ok(names) => {
            for name in names {
                state.subscribe(myself, Topic::Channel(name));
            }
        }
        Err(e) => return hub_error(&e.into()),
    }
    if newly {
        state.services.analytics_connected(&agent_id).await;
    }
    Outbound::Reply(AgentReply::Identified { agent_id })
}

/// End this connection's identity: presence (if still ours), analytics, subscriptions.
pub async fn leave(myself: &ActorRef<SessionMsg>, state: &mut SessionState) {
    let Some(agent_id) = state.agent.agent_id.take() else {
        return;
    };
    let _ = state
        .services
        .presence
        .call(
            |r| PresenceMsg::Unregister(agent_id.clone(), myself.get_id(), r),
            CALL_TIMEOUT,
        )
        .await;
    state.services.analytics_disconnected(&agent_id).await;
    state.unsubscribe_all();
}

/// The push a pubsub event becomes for this agent, if any.
pub fn push_for(state: &SessionState, event: &Arc<HubEvent>) -> Option<AgentPush> {
    let me = state.agent.agent_id.as_deref()?;
    match event.as_ref() {
        HubEvent::AgentJoined(entry) if entry.agent_id != me => {
            Some(AgentPush::AgentJoined(entry.clone()))
        }
        HubEvent::AgentLeft(agent_id) if agent_id != me => {
            Some(AgentPush::AgentLeft(agent_id.clone()))
        }
        HubEvent::StatusChanged(entry) => Some(AgentPush::StatusChanged(entry.clone())),
        HubEvent::Broadcast(message) => Some(AgentPush::Message(message.clone())),
        // An event already on its way when the session detached is dropped here.
        HubEvent::ChannelMessage { channel, .. } | HubEvent::ChannelSubscribed { channel, .. }
            if !state.is_subscribed(&Topic::Channel(channel.clone())) =>
        {
            None
        }
        HubEvent::ChannelMessage { channel, message } if message.from != me => {
            Some(AgentPush::ChannelMessage {
                channel: channel.clone(),
                message: message.clone(),
            })
        }
        HubEvent::ChannelSubscribed { channel, agent_id } if agent_id != me => {
            Some(AgentPush::ChannelAgentJoined {
                channel: channel.clone(),
                agent_id: agent_id.clone(),
            })
        }
        _ => None,
    }
}
