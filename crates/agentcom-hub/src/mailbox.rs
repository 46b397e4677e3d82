//! Mailboxes (reference §6.4): messages kept for agents that were offline, polled and acked
//! over HTTP. One global sequence number that only grows, stored in `hub_meta` (F17); at
//! most [`MAILBOX_KEEP`] entries per agent; TTL eviction every hour.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use agentcom_core::config::{ConfigKey, ConfigValue, DEFAULT_MAILBOX_TTL_MS};
use agentcom_core::message::Message;
use agentcom_store::{
    decode_or_skip, encode, mailbox_key, meta, MailboxEntry, StoreError, StoreReader, Table,
    WriteOp,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::ConfigMsg;
use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::{now_ms, HubError};

/// Entries kept per agent; the oldest are trimmed.
pub const MAILBOX_KEEP: usize = 100;
/// How often expired entries are evicted.
pub const EVICT_EVERY: Duration = Duration::from_secs(3600);

pub enum MailboxMsg {
    /// Put a copy of the message in each agent's mailbox; answers once durable.
    Enqueue(Vec<String>, Message, RpcReplyPort<Result<(), HubError>>),
    /// Delete the agent's entries up to and including `seq`; answers once durable.
    Ack(String, u64, RpcReplyPort<Result<(), HubError>>),
    /// Delete entries older than the configured TTL; answers with how many.
    Evict(Option<RpcReplyPort<Result<usize, HubError>>>),
    /// Crash (test hook, only with `--test-hooks`).
    Crash,
}

pub struct MailboxArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    pub config: Service<ConfigMsg>,
}

pub struct MailboxState {
    order: InOrder,
    args: MailboxArgs,
    last_seq: u64,
    /// The sequence numbers held per agent.
    held: HashMap<String, BTreeSet<u64>>,
}

pub struct Mailbox;

impl Actor for Mailbox {
    type Msg = MailboxMsg;
    type State = MailboxState;
    type Arguments = MailboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MailboxArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.store
            .call(StoreMsg::Barrier, crate::CALL_TIMEOUT)
            .await?;
        let mut held: HashMap<String, BTreeSet<u64>> = HashMap::new();
        let mut max_seq = 0;
        for (key, bytes) in args.reader.scan_prefix(Table::AgentMailbox, b"")? {
            let Some(entry) = decode_or_skip::<MailboxEntry>(Table::AgentMailbox, &key, &bytes)
            else {
                continue;
            };
            max_seq = max_seq.max(entry.seq);
            held.entry(entry.agent_id).or_default().insert(entry.seq);
        }
        let stored: u64 = args
            .reader
            .get_record(Table::HubMeta, meta::MAILBOX_SEQ)?
            .unwrap_or(0);
        myself.send_interval(EVICT_EVERY, || MailboxMsg::Evict(None));
        Ok(MailboxState {
            order: InOrder::new(),
            args,
            last_seq: stored.max(max_seq),
            held,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MailboxMsg::Enqueue(agents, message, reply) => {
                let mut ops = Vec::new();
                let stored_at = now_ms();
                for agent_id in agents {
                    state.last_seq += 1;
                    let seq = state.last_seq;
                    let key = mailbox_key(&agent_id, seq);
                    let held = state.held.entry(agent_id.clone()).or_default();
                    held.insert(seq);
                    while held.len() > MAILBOX_KEEP {
                        let oldest = held.pop_first().expect("non-empty");
                        ops.push(WriteOp::Delete {
                            table: Table::AgentMailbox,
                            key: mailbox_key(&agent_id, oldest),
                        });
                    }
                    let entry = MailboxEntry {
                        seq,
                        agent_id,
                        message: message.clone(),
                        stored_at,
                    };
                    ops.push(WriteOp::Put {
                        table: Table::AgentMailbox,
                        key,
                        value: encode(&entry),
                    });
                }
                ops.push(WriteOp::Put {
                    table: Table::HubMeta,
                    key: meta::MAILBOX_SEQ.to_vec(),
                    value: encode(&state.last_seq),
                });
                write_then(&state.args.store, &state.order, ops, reply, || ()).await;
            }
            MailboxMsg::Ack(agent_id, up_to, reply) => {
                let mut ops = Vec::new();
                if let Some(held) = state.held.get_mut(&agent_id) {
                    let keep = held.split_off(&(up_to.saturating_add(1)));
                    for seq in std::mem::replace(held, keep) {
                        ops.push(WriteOp::Delete {
                            table: Table::AgentMailbox,
                            key: mailbox_key(&agent_id, seq),
                        });
                    }
                }
                write_then(&state.args.store, &state.order, ops, reply, || ()).await;
            }
            MailboxMsg::Crash => panic!("injected crash (test hook)"),
            MailboxMsg::Evict(reply) => {
                let ttl = match state
                    .args
                    .config
                    .call(
                        |r| ConfigMsg::Get(ConfigKey::MailboxTtlMs, r),
                        crate::CALL_TIMEOUT,
                    )
                    .await
                {
                    Ok(Some(ConfigValue::Millis(ms))) => ms,
                    _ => DEFAULT_MAILBOX_TTL_MS,
                };
                let cutoff = now_ms().saturating_sub(ttl);
                let mut ops = Vec::new();
                for (key, bytes) in state.args.reader.scan_prefix(Table::AgentMailbox, b"")? {
                    let Some(entry) =
                        decode_or_skip::<MailboxEntry>(Table::AgentMailbox, &key, &bytes)
                    else {
                        continue;
                    };
                    if entry.stored_at < cutoff {
                        if let Some(held) = state.held.get_mut(&entry.agent_id) {
                            held.remove(&entry.seq);
                        }
                        ops.push(WriteOp::Delete {
                            table: Table::AgentMailbox,
                            key,
                        });
                    }
                }
                let n = ops.len();
                match reply {
                    Some(reply) => {
                        write_then(&state.args.store, &state.order, ops, reply, move || n).await
                    }
                    None => {
                        let (tx, _) = ractor::concurrency::oneshot();
                        write_then(&state.args.store, &state.order, ops, tx.into(), move || n).await
                    }
                }
            }
        }
        Ok(())
    }
}

/// An agent's entries with `seq > since`, ascending.
pub fn poll(
    reader: &StoreReader,
    agent_id: &str,
    since: u64,
) -> Result<Vec<MailboxEntry>, StoreError> {
    reader.owned_after(Table::AgentMailbox, agent_id, since, usize::MAX)
}
