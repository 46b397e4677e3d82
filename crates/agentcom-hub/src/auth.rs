//! The auth actor: creates and revokes tokens, opens and closes dashboard sessions.
//! Checking a presented token is a read and does not go through the actor (see
//! [`crate::Hub::authenticate`]). Each operation reads a few index entries, never every
//! token or session (see [`crate::tokens`]).

use agentcom_core::auth::Role;
use agentcom_core::Millis;
use agentcom_store::{StoreReader, TokenRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::service::Service;
use crate::store::{write_then, InFlight, InOrder, StoreMsg};
use crate::{now_ms, tokens, HubError, CALL_TIMEOUT};

pub enum AuthMsg {
    /// Mint a token; answers with the raw token once it is durable.
    Create(
        String,
        Role,
        RpcReplyPort<Result<(String, TokenRecord), HubError>>,
    ),
    /// Mint the first token of an agent; `Conflict` if it already has one.
    Register(
        String,
        RpcReplyPort<Result<(String, TokenRecord), HubError>>,
    ),
    /// Revoke every token of an agent (or only those of one role); answers with how many
    /// were revoked.
    Revoke(String, Option<Role>, RpcReplyPort<Result<usize, HubError>>),
    /// Make this token the bootstrap admin token.
    Bootstrap(String, RpcReplyPort<Result<(), HubError>>),
    /// Open a dashboard session for a (checked) token; answers with its secret once
    /// durable.
    OpenSession(String, RpcReplyPort<Result<String, HubError>>),
    /// End a dashboard session; answers once durable.
    CloseSession(String, RpcReplyPort<Result<(), HubError>>),
}

pub struct AuthArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    /// How long a dashboard session lasts.
    pub session_ttl: Millis,
}

pub struct AuthState {
    reader: StoreReader,
    store: Service<StoreMsg>,
    order: InOrder,
    session_ttl: Millis,
    pending: InFlight,
}

/// Stands for every agent among the agents whose tokens this actor's writes in flight
/// change (a bootstrap): a registration reads the store at once unless its agent is among
/// them, and only then waits for those writes to be applied.
const EVERY_AGENT: &str = "";

impl AuthState {
    /// Wait until every write this actor sent is applied, so that a read sees them.
    async fn settled(&self) -> Result<(), HubError> {
        Ok(self.store.call(StoreMsg::Barrier, CALL_TIMEOUT).await?)
    }
}

/// Writes per batch when indexing a store written before the indexes existed.
const INDEX_BATCH: usize = 4096;

pub struct AuthActor;

impl Actor for AuthActor {
    type Msg = AuthMsg;
    type State = AuthState;
    type Arguments = AuthArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AuthArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // See what an earlier instance wrote, then complete the indexes of a store written
        // before they existed (a no-op once they are complete).
        args.store.call(StoreMsg::Barrier, CALL_TIMEOUT).await?;
        let ops = tokens::index_ops(&args.reader)?;
        if !ops.is_empty() {
            tracing::info!(writes = ops.len(), "indexing tokens and dashboard sessions");
        }
        // The completion mark is the last write: an interrupted run is redone whole.
        for chunk in ops.chunks(INDEX_BATCH) {
            let batch = chunk.to_vec();
            args.store
                .call(|r| StoreMsg::Write(batch, r), crate::store::WRITE_TIMEOUT)
                .await??;
        }
        Ok(AuthState {
            reader: args.reader,
            store: args.store,
            order: InOrder::new(),
            session_ttl: args.session_ttl,
            pending: InFlight::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AuthMsg::Create(agent_id, role, reply) => {
                let token = tokens::mint();
                let (record, ops) = tokens::create(&agent_id, role, &token, false, now_ms());
                let in_flight = state.pending.start(&agent_id);
                write_then(&state.store, &state.order, ops, reply, move || {
                    drop(in_flight);
                    (token, record)
                })
                .await;
            }
            AuthMsg::Register(agent_id, reply) => {
                // Serialised here, and read after this actor's earlier writes for the agent
                // are applied (`settled`), so two concurrent registrations cannot both mint.
                let settled =
                    if state.pending.touches(&agent_id) || state.pending.touches(EVERY_AGENT) {
                        state.settled().await
                    } else {
                        Ok(())
                    };
                let registered = settled.and_then(|()| {
                    tokens::is_registered(&state.reader, &agent_id).map_err(Into::into)
                });
                match registered {
                    Ok(true) => {
                        let _ = reply.send(Err(HubError::Conflict("agent_id already registered")));
                    }
                    Ok(false) => {
                        let token = tokens::mint();
                        let (record, ops) =
                            tokens::create(&agent_id, Role::Agent, &token, false, now_ms());
                        let in_flight = state.pending.start(&agent_id);
                        write_then(&state.store, &state.order, ops, reply, move || {
                            drop(in_flight);
                            (token, record)
                        })
                        .await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            AuthMsg::Revoke(agent_id, only, reply) => {
                let ops = match state.settled().await {
                    Ok(()) => tokens::revoke(&state.reader, &agent_id, only).map_err(Into::into),
                    Err(e) => Err(e),
                };
                match ops {
                    Ok(ops) => {
                        let n = tokens::revoked_count(&ops);
                        let in_flight = state.pending.start(&agent_id);
                        write_then(&state.store, &state.order, ops, reply, move || {
                            drop(in_flight);
                            n
                        })
                        .await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            AuthMsg::OpenSession(token, reply) => {
                match tokens::open_session(&state.reader, &token, now_ms(), state.session_ttl) {
                    Ok((secret, ops)) => {
                        write_then(&state.store, &state.order, ops, reply, move || secret).await
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            AuthMsg::CloseSession(secret, reply) => {
                match tokens::close_session(&state.reader, &secret) {
                    Ok(ops) => write_then(&state.store, &state.order, ops, reply, || ()).await,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            AuthMsg::Bootstrap(token, reply) => {
                let ops = match state.settled().await {
                    Ok(()) => {
                        tokens::bootstrap(&state.reader, &token, now_ms()).map_err(Into::into)
                    }
                    Err(e) => Err(e),
                };
                match ops {
                    Ok(ops) => {
                        let in_flight = state.pending.start(EVERY_AGENT);
                        write_then(&state.store, &state.order, ops, reply, move || {
                            drop(in_flight)
                        })
                        .await
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        Ok(())
    }
}
