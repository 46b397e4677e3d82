//! The agent side of a session: the identify ladder and every non-task message of
//! reference §3.3, and which pubsub events become pushes (§3.4).

use std::sync::Arc;

use agentcom_core::auth::Role;
use agentcom_core::channel::normalize;
use ractor::ActorRef;
use serde_json::Value;

use agentcom_core::task::{FailOutcome, TaskError};

use crate::agents::AgentsMsg;
use crate::events::{HubEvent, Topic};
use crate::presence::{PresenceEntry, PresenceMsg};
use crate::protocol::{AgentPush, AgentReply, AgentRequest, Outbound};
use crate::scheduler::SchedulerMsg;
use crate::service::DEFAULT_WAIT;
use crate::sessions::{close_code, CloseReason, SessionMsg, SessionState};
use crate::task_queue::TaskMsg;
use crate::{channels, now_ms, HubError, CALL_TIMEOUT};

/// Which agent, if any, this connection speaks for.
#[derive(Debug, Default)]
pub struct AgentSession {
    pub agent_id: Option<String>,
}

fn error(code: &str) -> Outbound {
    Outbound::error(code)
}

fn hub_error(e: &HubError) -> Outbound {
    match e {
        HubError::NotFound(code) => error(code),
        HubError::Task(e) => error(&e.to_string()),
        HubError::Invalid { message, .. } => Outbound::Error {
            code: "invalid_field".into(),
            field: None,
            message: Some(message.clone()),
        },
        HubError::QuotaExceeded { .. } => Outbound::Error {
            code: "quota_exceeded".into(),
            field: None,
            message: Some(e.to_string()),
        },
        other => Outbound::Error {
            code: "internal_error".into(),
            field: None,
            message: Some(other.to_string()),
        },
    }
}

/// Any frame from an identified agent is a sign of life: presence (for the reaper, F4)
/// and the FSM's `unresponsive` flag (F10).
pub fn showed_life(myself: &ActorRef<SessionMsg>, state: &SessionState) {
    let Some(agent_id) = state.agent.agent_id.as_deref() else {
        return;
    };
    state
        .services
        .presence_table
        .touch(agent_id, myself.get_id());
    state.services.agent_table.showed_life(agent_id);
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
    showed_life(myself, state);
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
            Some(name) => match state
                .services
                .subscribe(&name, &agent_id, Some(myself.get_id()))
                .await
            {
                Ok(sub) => {
                    state.subscribe(Topic::Channel(name));
                    let already = sub == channels::Subscription::AlreadySubscribed;
                    Outbound::Reply(AgentReply::ChannelSubscribed { channel, already })
                }
                Err(e) => hub_error(&e),
            },
        }),
        AgentRequest::ChannelUnsubscribe(channel) => Some(match normalize(&channel) {
            None => error("channel_not_found"),
            Some(name) => match state
                .services
                .unsubscribe(&name, &agent_id, Some(myself.get_id()))
                .await
            {
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
        AgentRequest::TaskAccepted(task_id) => Some(task_accepted(state, &agent_id, task_id).await),
        AgentRequest::TaskProgress(task_id) => {
            let a = agent_id.clone();
            let _ = state
                .services
                .task_queue
                .call(|r| TaskMsg::Touch(task_id, a, r), CALL_TIMEOUT)
                .await;
            None
        }
        AgentRequest::TaskComplete {
            task_id,
            generation,
            result,
            tokens_used,
        } => {
            let (t, a) = (task_id.clone(), agent_id.clone());
            let msg = |reply| TaskMsg::Complete {
                task_id: t,
                agent_id: a,
                generation,
                result,
                tokens_used,
                reply,
            };
            Some(
                match state.services.task_queue.call(msg, CALL_TIMEOUT).await {
                    Ok(Ok(_)) => Outbound::Reply(AgentReply::TaskAck {
                        task_id,
                        status: "complete",
                    }),
                    Ok(Err(e)) => refused(state, &agent_id, &task_id, "task_complete_failed", e),
                    Err(e) => hub_error(&e.into()),
                },
            )
        }
        AgentRequest::TaskFailed {
            task_id,
            generation,
            error,
        } => {
            let (t, a) = (task_id.clone(), agent_id.clone());
            let msg = |reply| TaskMsg::Fail {
                task_id: t,
                agent_id: a,
                generation,
                error,
                reply,
            };
            Some(
                match state.services.task_queue.call(msg, CALL_TIMEOUT).await {
                    Ok(Ok((_, outcome))) => {
                        let status = match outcome {
                            FailOutcome::Retried => "retried",
                            FailOutcome::DeadLetter => "dead_letter",
                        };
                        Outbound::Reply(AgentReply::TaskAck { task_id, status })
                    }
                    Ok(Err(e)) => refused(state, &agent_id, &task_id, "task_fail_failed", e),
                    Err(e) => hub_error(&e.into()),
                },
            )
        }
        AgentRequest::TaskRecovering(task_id) => {
            Some(task_recovering(state, &agent_id, task_id).await)
        }
        AgentRequest::TaskRejected { task_id, reason } => {
            let detail = match &reason {
                Value::String(s) => format!("rejected: {s}"),
                _ => "rejected".to_string(),
            };
            let msg = |reply| TaskMsg::Reclaim {
                task_id: task_id.clone(),
                from: Some(agent_id.clone()),
                reason: detail,
                reply: Some(reply),
            };
            // The scheduler learns of the rejection before the task is requeued, so no
            // pass can hand it straight back to this agent.
            let rejected = SchedulerMsg::Rejected(task_id.clone(), agent_id.clone());
            let _ = state.services.scheduler.send(rejected, DEFAULT_WAIT).await;
            Some(
                match state.services.task_queue.call(msg, CALL_TIMEOUT).await {
                    Ok(Ok(_)) => Outbound::Reply(AgentReply::TaskAck {
                        task_id,
                        status: "rejected",
                    }),
                    Ok(Err(e)) => refused(state, &agent_id, &task_id, "task_reject_failed", e),
                    Err(e) => hub_error(&e.into()),
                },
            )
        }
        AgentRequest::Invalid { field, message } => Some(Outbound::Error {
            code: "invalid_field".into(),
            field: Some(field),
            message: Some(message),
        }),
        AgentRequest::Unknown => Some(error("unknown_message_type")),
    };
    if let Some(reply) = reply {
        state.push(myself, reply);
    }
}

/// `task_accepted`: the assignee takes the task (its FSM goes `working`).
async fn task_accepted(state: &mut SessionState, agent_id: &str, task_id: String) -> Outbound {
    let (t, a) = (task_id.clone(), agent_id.to_string());
    match state
        .services
        .task_queue
        .call(|r| TaskMsg::Touch(t, a, r), CALL_TIMEOUT)
        .await
    {
        Ok(Ok(_)) => {
            state.services.agent_table.accepted(agent_id, &task_id);
            Outbound::Reply(AgentReply::TaskAck {
                task_id,
                status: "accepted",
            })
        }
        Ok(Err(e)) => refused(state, agent_id, &task_id, "task_accept_failed", e),
        Err(e) => hub_error(&e.into()),
    }
}

/// `task_recovering`: `task_continue` if the task is still assigned to this agent (and
/// its FSM resumes work, F12), else `task_reassign`.
async fn task_recovering(state: &mut SessionState, agent_id: &str, task_id: String) -> Outbound {
    let t = task_id.clone();
    match state
        .services
        .task_queue
        .call(|r| TaskMsg::Get(t, r), CALL_TIMEOUT)
        .await
    {
        Ok(Some(task)) if task.is_assigned_to(agent_id) => {
            state.services.agent_table.resume(agent_id, &task_id);
            Outbound::Reply(AgentReply::TaskContinue {
                task_id,
                generation: task.generation,
            })
        }
        Ok(_) => Outbound::Reply(AgentReply::TaskReassign { task_id }),
        Err(e) => hub_error(&e.into()),
    }
}

/// A task operation the queue refused: the error frame, and — when the task is no longer
/// this agent's — the FSM is told, so it does not wait for it forever (F9).
fn refused(
    state: &SessionState,
    agent_id: &str,
    task_id: &str,
    prefix: &str,
    e: HubError,
) -> Outbound {
    if let HubError::Task(TaskError::NotAssignee | TaskError::InvalidState | TaskError::NotFound) =
        e
    {
        state.services.agent_table.released(agent_id, task_id);
    }
    match e {
        HubError::Task(reason) => error(&format!("{prefix}: {reason}")),
        other => hub_error(&other),
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
    if agentcom_core::scheduler::check_capabilities(&capabilities).is_err() {
        return error("invalid_capabilities");
    }
    // Kept, so that revoking the token closes this connection (SessionMsg::Recheck).
    state.principal = Some(principal);
    state.waiting = None;
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
    let (name_for_fsm, caps_for_fsm) = (entry.name.clone(), entry.capabilities.clone());
    let newly = state.agent.agent_id.is_none();
    state.agent.agent_id = Some(agent_id.clone());
    let register = |r| PresenceMsg::Register(entry, myself.clone(), r);
    let replaced = match state.services.presence.call(register, CALL_TIMEOUT).await {
        Ok(replaced) => replaced,
        Err(e) => return hub_error(&e.into()),
    };
    state.subscribe(Topic::Messages);
    state.subscribe(Topic::Presence);
    match channels::subscriptions_of(&state.services.reader, &agent_id) {
        Ok(names) => {
            for name in names {
                state.subscribe(Topic::Channel(name));
            }
        }
        Err(e) => return hub_error(&e.into()),
    }
    let connect = |reply| AgentsMsg::Connect {
        agent_id: agent_id.clone(),
        name: name_for_fsm,
        capabilities: caps_for_fsm,
        session: myself.clone(),
        reply,
    };
    if let Err(e) = state.services.agents.call(connect, CALL_TIMEOUT).await {
        return hub_error(&e.into());
    }
    // Only now, with the FSM bound to this connection, close the one it replaces (F5):
    // that connection's disconnect can no longer take the agent's tasks.
    if let Some(old) = replaced {
        let reason = CloseReason::new(close_code::REPLACED, "replaced by a newer connection");
        let _ = old.send_message(SessionMsg::Close(reason));
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
    let disconnect = |reply| AgentsMsg::Disconnect {
        agent_id: agent_id.clone(),
        session: myself.get_id(),
        reply,
    };
    let _ = state.services.agents.call(disconnect, CALL_TIMEOUT).await;
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
