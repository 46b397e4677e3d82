//! Presence: which agents are identified, on which connection (reference §6.7).
//!
//! The table is shared (reads — routing lookups, listings, liveness touches — never wait for
//! an actor) and survives a restart of the presence actor, which owns every change that
//! others must hear about: register, unregister and status changes, each published on the
//! `presence` topic in order.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use agentcom_core::Millis;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::events::{HubEvent, Topic};
use crate::now_ms;
use crate::pubsub::Publisher;
use crate::sessions::SessionMsg;

/// What the hub knows of an identified agent.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEntry {
    pub agent_id: String,
    pub name: String,
    pub status: String,
    /// As sent at identify (strings and/or objects).
    pub capabilities: Value,
    pub connected_at: Millis,
    pub last_seen: Millis,
    pub fsm_state: String,
}

struct Registered {
    entry: PresenceEntry,
    session: ActorRef<SessionMsg>,
}

/// agent id → presence entry and the agent's current (newest) connection.
#[derive(Default)]
pub struct PresenceTable {
    agents: RwLock<HashMap<String, Registered>>,
}

impl PresenceTable {
    pub fn list(&self) -> Vec<PresenceEntry> {
        let agents = self.agents.read().expect("presence lock");
        let mut list: Vec<PresenceEntry> = agents.values().map(|r| r.entry.clone()).collect();
        list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        list
    }

    pub fn get(&self, agent_id: &str) -> Option<PresenceEntry> {
        let agents = self.agents.read().expect("presence lock");
        agents.get(agent_id).map(|r| r.entry.clone())
    }

    pub fn count(&self) -> usize {
        self.agents.read().expect("presence lock").len()
    }

    /// The agent's current connection, if it is online.
    pub fn session_of(&self, agent_id: &str) -> Option<ActorRef<SessionMsg>> {
        let agents = self.agents.read().expect("presence lock");
        agents.get(agent_id).map(|r| r.session.clone())
    }

    pub fn is_online(&self, agent_id: &str) -> bool {
        self.agents
            .read()
            .expect("presence lock")
            .contains_key(agent_id)
    }

    /// Record a sign of life from `session` for `agent_id`.
    pub fn touch(&self, agent_id: &str, session: ActorId) {
        let mut agents = self.agents.write().expect("presence lock");
        if let Some(r) = agents.get_mut(agent_id) {
            if r.session.get_id() == session {
                r.entry.last_seen = now_ms();
            }
        }
    }

    /// Mirror an agent's FSM state (no event, as in the original).
    pub fn set_fsm_state(&self, agent_id: &str, state: &str) {
        let mut agents = self.agents.write().expect("presence lock");
        if let Some(r) = agents.get_mut(agent_id) {
            r.entry.fsm_state = state.to_string();
        }
    }

    /// Agents whose connection has been silent since before `cutoff`.
    pub fn silent_since(&self, cutoff: Millis) -> Vec<(String, ActorRef<SessionMsg>)> {
        let agents = self.agents.read().expect("presence lock");
        agents
            .values()
            .filter(|r| r.entry.last_seen < cutoff)
            .map(|r| (r.entry.agent_id.clone(), r.session.clone()))
            .collect()
    }
}

pub enum PresenceMsg {
    /// Register `session` as the agent's connection; answers with the connection it
    /// replaces, if any.
    Register(
        PresenceEntry,
        ActorRef<SessionMsg>,
        RpcReplyPort<Option<ActorRef<SessionMsg>>>,
    ),
    /// Remove the agent's presence if `session` is still its connection.
    Unregister(String, ActorId, RpcReplyPort<()>),
    /// Remove whatever presence `session` holds (after the session crashed); answers
    /// with the agents it held.
    UnregisterSession(ActorId, RpcReplyPort<Vec<String>>),
    /// Change the agent's status (only from its current connection).
    SetStatus(String, ActorId, String, RpcReplyPort<()>),
}

pub struct PresenceArgs {
    pub table: Arc<PresenceTable>,
    pub publisher: Publisher,
}

pub struct Presence;

impl Actor for Presence {
    type Msg = PresenceMsg;
    type State = PresenceArgs;
    type Arguments = PresenceArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: PresenceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PresenceMsg::Register(entry, session, reply) => {
                let replaced = {
                    let mut agents = state.table.agents.write().expect("presence lock");
                    agents
                        .insert(
                            entry.agent_id.clone(),
                            Registered {
                                entry: entry.clone(),
                                session: session.clone(),
                            },
                        )
                        .map(|old| old.session)
                        .filter(|old| old.get_id() != session.get_id())
                };
                state
                    .publisher
                    .publish(Topic::Presence, HubEvent::AgentJoined(Arc::new(entry)));
                let _ = reply.send(replaced);
            }
            PresenceMsg::Unregister(agent_id, session, reply) => {
                let removed = {
                    let mut agents = state.table.agents.write().expect("presence lock");
                    match agents.get(&agent_id) {
                        Some(r) if r.session.get_id() == session => {
                            agents.remove(&agent_id).is_some()
                        }
                        _ => false,
                    }
                };
                if removed {
                    state
                        .publisher
                        .publish(Topic::Presence, HubEvent::AgentLeft(agent_id));
                }
                let _ = reply.send(());
            }
            PresenceMsg::UnregisterSession(session, reply) => {
                let removed: Vec<String> = {
                    let mut agents = state.table.agents.write().expect("presence lock");
                    let ids: Vec<String> = agents
                        .values()
                        .filter(|r| r.session.get_id() == session)
                        .map(|r| r.entry.agent_id.clone())
                        .collect();
                    for id in &ids {
                        agents.remove(id);
                    }
                    ids
                };
                for agent_id in &removed {
                    state
                        .publisher
                        .publish(Topic::Presence, HubEvent::AgentLeft(agent_id.clone()));
                }
                let _ = reply.send(removed);
            }
            PresenceMsg::SetStatus(agent_id, session, status, reply) => {
                let changed = {
                    let mut agents = state.table.agents.write().expect("presence lock");
                    match agents.get_mut(&agent_id) {
                        Some(r) if r.session.get_id() == session => {
                            r.entry.status = status;
                            Some(r.entry.clone())
                        }
                        _ => None,
                    }
                };
                if let Some(entry) = changed {
                    state
                        .publisher
                        .publish(Topic::Presence, HubEvent::StatusChanged(Arc::new(entry)));
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
