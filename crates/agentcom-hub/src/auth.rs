//! The auth actor: creates and revokes tokens. Checking a presented token is a read and
//! does not go through the actor (see [`crate::Hub::authenticate`]).

use agentcom_core::auth::Role;
use agentcom_store::{StoreReader, TokenRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::{now_ms, tokens, HubError};

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
}

pub struct AuthState {
    reader: StoreReader,
    store: Service<StoreMsg>,
    order: InOrder,
}

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
        Ok(AuthState {
            reader: args.reader,
            store: args.store,
            order: InOrder::new(),
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
                let (record, op) = tokens::create(&agent_id, role, &token, false, now_ms());
                write_then(&state.store, &state.order, vec![op], reply, move || {
                    (token, record)
                })
                .await;
            }
            AuthMsg::Register(agent_id, reply) => {
                // Serialised here, so two concurrent registrations cannot both mint.
                match tokens::list(&state.reader) {
                    Ok(all) if all.iter().any(|(_, r)| r.agent_id == agent_id) => {
                        let _ = reply.send(Err(HubError::Conflict("agent_id already registered")));
                    }
                    Ok(_) => {
                        let token = tokens::mint();
                        let (record, op) =
                            tokens::create(&agent_id, Role::Agent, &token, false, now_ms());
                        write_then(&state.store, &state.order, vec![op], reply, move || {
                            (token, record)
                        })
                        .await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            AuthMsg::Revoke(agent_id, only, reply) => {
                match tokens::revoke(&state.reader, &agent_id, only) {
                    Ok(ops) => {
                        let n = ops.len();
                        write_then(&state.store, &state.order, ops, reply, move || n).await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            AuthMsg::OpenSession(token, reply) => {
                match tokens::open_session(&state.reader, &token, now_ms()) {
                    Ok((secret, ops)) => {
                        write_then(&state.store, &state.order, ops, reply, move || secret).await
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            AuthMsg::CloseSession(secret, reply) => {
                let ops = vec![tokens::close_session(&secret)];
                write_then(&state.store, &state.order, ops, reply, || ()).await;
            }
            AuthMsg::Bootstrap(token, reply) => {
                match tokens::bootstrap(&state.reader, &token, now_ms()) {
                    Ok(ops) => write_then(&state.store, &state.order, ops, reply, || ()).await,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
        }
        Ok(())
    }
}
