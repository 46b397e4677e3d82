//! The config actor: owns `agentcom_config`, answers reads from memory, and updates its
//! cache only once a write is durable.

use agentcom_core::config::{ConfigKey, ConfigValue};
use agentcom_store::{decode, encode, StoreReader, Table, WriteOp};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;

use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::HubError;

pub enum ConfigMsg {
    Get(ConfigKey, RpcReplyPort<Option<ConfigValue>>),
    /// Validate, write, and answer once durable.
    Put(ConfigKey, ConfigValue, RpcReplyPort<Result<(), HubError>>),
    /// A write of this instance became durable: update the cache.
    Committed(ConfigKey, ConfigValue, u64),
    /// Test hook: panic, as a crashing actor would.
    Crash,
}

pub struct ConfigArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
}

pub struct ConfigState {
    order: InOrder,
    values: HashMap<ConfigKey, (ConfigValue, u64)>,
    next_seq: u64,
    store: Service<StoreMsg>,
}

pub struct ConfigActor;

impl Actor for ConfigActor {
    type Msg = ConfigMsg;
    type State = ConfigState;
    type Arguments = ConfigArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConfigArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Writes sent by an earlier instance may still sit in the store's queue: wait until
        // they are applied, so that this instance loads them.
        args.store
            .call(StoreMsg::Barrier, crate::CALL_TIMEOUT)
            .await?;
        let mut values = HashMap::new();
        for key in ConfigKey::ALL {
            if let Some(bytes) = args
                .reader
                .get(Table::AgentcomConfig, key.name().as_bytes())?
            {
                values.insert(key, (decode(Table::AgentcomConfig, &bytes)?, 0));
            }
        }
        Ok(ConfigState {
            order: InOrder::new(),
            values,
            next_seq: 1,
            store: args.store,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConfigMsg::Get(key, reply) => {
                let value = state
                    .values
                    .get(&key)
                    .map(|(v, _)| v.clone())
                    .or_else(|| key.default_value());
                let _ = reply.send(value);
            }
            ConfigMsg::Put(key, value, reply) => {
                if let Err(e) = key.validate(&value) {
                    let _ = reply.send(Err(HubError::Invalid {
                        field: key.name().to_string(),
                        message: e.to_string(),
                    }));
                    return Ok(());
                }
                let seq = state.next_seq;
                state.next_seq += 1;
                let op = WriteOp::Put {
                    table: Table::AgentcomConfig,
                    key: key.name().as_bytes().to_vec(),
                    value: encode(&value),
                };
                // The cache learns the value before the caller hears of it, so a read
                // that follows the acknowledgement sees it.
                write_then(&state.store, &state.order, vec![op], reply, move || {
                    let _ = myself.send_message(ConfigMsg::Committed(key, value, seq));
                })
                .await;
            }
            ConfigMsg::Committed(key, value, seq) => {
                let newer = state.values.get(&key).is_none_or(|(_, s)| *s < seq);
                if newer {
                    state.values.insert(key, (value, seq));
                }
            }
            ConfigMsg::Crash => panic!("injected crash (test hook)"),
        }
        Ok(())
    }
}
