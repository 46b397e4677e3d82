//! Mailboxes (reference §6.4): messages kept for agents that were offline, polled and acked
//! over HTTP. One global sequence number that only grows, stored in `hub_meta` (F17); at
//! most [`MAILBOX_KEEP`] entries per agent; TTL eviction every hour.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use agentcom_core::config::{ConfigKey, ConfigValue, DEFAULT_MAILBOX_TTL_MS};
use agentcom_core::message::Message;
use agentcom_core::Millis;
use agentcom_store::{
    decode_or_skip, encode, mailbox_key, meta, seq_key, MailboxEntry, StoreError, StoreReader,
    Table, WriteOp,
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
    /// Put the message in each agent's mailbox (stored once, referred to by every entry);
    /// answers once durable.
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
    /// Bytes of messages one sender may have waiting in mailboxes (0: no limit).
    pub quota_bytes: u64,
}

/// A stored message body and who holds it.
struct Body {
    /// Mailbox entries that refer to it; the body is deleted with the last one.
    refs: usize,
    sender: String,
    bytes: u64,
}

pub struct MailboxState {
    order: InOrder,
    args: MailboxArgs,
    last_seq: u64,
    /// Per agent: its entries' sequence numbers and the body each refers to (`None` for an
    /// entry written before bodies were shared, which carries its message).
    held: HashMap<String, BTreeMap<u64, Option<u64>>>,
    bodies: HashMap<u64, Body>,
    /// What each sender stores in mailboxes, for the quota: its bodies and one
    /// [`entry_cost`] per entry that refers to them.
    stored_by: HashMap<String, u64>,
}

/// What one mailbox entry costs its sender's quota: about its size on disk (key and
/// record), so that many tiny messages to many mailboxes count too.
pub fn entry_cost(agent_id: &str) -> u64 {
    96 + 2 * agent_id.len() as u64
}

fn charge(stored_by: &mut HashMap<String, u64>, sender: &str, add: u64, sub: u64) {
    let total = stored_by.entry(sender.to_string()).or_default();
    *total = total.saturating_add(add).saturating_sub(sub);
    if *total == 0 {
        stored_by.remove(sender);
    }
}

impl MailboxState {
    /// Delete one entry; with the last entry that refers to its body, the body too.
    fn drop_entry(&mut self, agent_id: &str, seq: u64, body: Option<u64>, ops: &mut Vec<WriteOp>) {
        ops.push(WriteOp::Delete {
            table: Table::AgentMailbox,
            key: mailbox_key(agent_id, seq),
        });
        let Some(b) = body.and_then(|id| self.bodies.get_mut(&id)) else {
            return;
        };
        b.refs = b.refs.saturating_sub(1);
        charge(&mut self.stored_by, &b.sender, 0, entry_cost(agent_id));
        if b.refs == 0 {
            self.drop_body(body.expect("found"), ops);
        }
    }

    /// Delete a body and take its bytes off its sender's account.
    fn drop_body(&mut self, id: u64, ops: &mut Vec<WriteOp>) {
        let Some(b) = self.bodies.remove(&id) else {
            return;
        };
        charge(&mut self.stored_by, &b.sender, 0, b.bytes);
        ops.push(WriteOp::Delete {
            table: Table::MailboxBodies,
            key: seq_key(id).to_vec(),
        });
    }
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
        let mut bodies = HashMap::new();
        let mut stored_by: HashMap<String, u64> = HashMap::new();
        let mut max_seq = 0;
        for (key, bytes) in args.reader.scan_prefix(Table::MailboxBodies, b"")? {
            let Some(message) = decode_or_skip::<Message>(Table::MailboxBodies, &key, &bytes)
            else {
                continue;
            };
            let Ok(id) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
                continue;
            };
            max_seq = max_seq.max(id);
            *stored_by.entry(message.from.clone()).or_default() += bytes.len() as u64;
            bodies.insert(
                id,
                Body {
                    refs: 0,
                    sender: message.from,
                    bytes: bytes.len() as u64,
                },
            );
        }
        let mut held: HashMap<String, BTreeMap<u64, Option<u64>>> = HashMap::new();
        for (key, bytes) in args.reader.scan_prefix(Table::AgentMailbox, b"")? {
            let Some(entry) = decode_or_skip::<MailboxEntry>(Table::AgentMailbox, &key, &bytes)
            else {
                continue;
            };
            max_seq = max_seq.max(entry.seq);
            if let Some(b) = entry.body.and_then(|id| bodies.get_mut(&id)) {
                b.refs += 1;
                charge(&mut stored_by, &b.sender, entry_cost(&entry.agent_id), 0);
            }
            held.entry(entry.agent_id)
                .or_default()
                .insert(entry.seq, entry.body);
        }
        let stored: u64 = args
            .reader
            .get_record(Table::HubMeta, meta::MAILBOX_SEQ)?
            .unwrap_or(0);
        myself.send_interval(EVICT_EVERY, || MailboxMsg::Evict(None));
        let mut state = MailboxState {
            order: InOrder::new(),
            args,
            last_seq: stored.max(max_seq),
            held,
            bodies,
            stored_by,
        };
        // Bodies no entry refers to (their last entry went in a crash between the two
        // writes of an older build, or was unreadable) are deleted.
        let orphans: Vec<u64> = state
            .bodies
            .iter()
            .filter(|(_, b)| b.refs == 0)
            .map(|(id, _)| *id)
            .collect();
        if !orphans.is_empty() {
            let mut ops = Vec::new();
            for id in orphans {
                state.drop_body(id, &mut ops);
            }
            state
                .args
                .store
                .call(|r| StoreMsg::Write(ops, r), crate::CALL_TIMEOUT)
                .await??;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MailboxMsg::Enqueue(agents, message, reply) => {
                if agents.is_empty() {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let value = encode(&message);
                let bytes = value.len() as u64;
                let entries: u64 = agents.iter().map(|a| entry_cost(a)).sum();
                let quota = state.args.quota_bytes;
                let used = state.stored_by.get(&message.from).copied().unwrap_or(0);
                if quota > 0 && used.saturating_add(bytes + entries) > quota {
                    let _ = reply.send(Err(HubError::QuotaExceeded {
                        quota: "mailbox_quota",
                        limit: quota,
                    }));
                    return Ok(());
                }
                let stored_at = now_ms();
                let id = state.last_seq + 1;
                let mut ops = vec![WriteOp::Put {
                    table: Table::MailboxBodies,
                    key: seq_key(id).to_vec(),
                    value,
                }];
                state.bodies.insert(
                    id,
                    Body {
                        refs: 0,
                        sender: message.from.clone(),
                        bytes,
                    },
                );
                charge(&mut state.stored_by, &message.from, bytes + entries, 0);
                for agent_id in agents {
                    state.last_seq += 1;
                    let seq = state.last_seq;
                    state.bodies.get_mut(&id).expect("just stored").refs += 1;
                    let held = state.held.entry(agent_id.clone()).or_default();
                    held.insert(seq, Some(id));
                    let mut trimmed = Vec::new();
                    while held.len() > MAILBOX_KEEP {
                        trimmed.push(held.pop_first().expect("non-empty"));
                    }
                    for (old, body) in trimmed {
                        state.drop_entry(&agent_id, old, body, &mut ops);
                    }
                    let entry = MailboxEntry {
                        seq,
                        agent_id,
                        body: Some(id),
                        message: None,
                        stored_at,
                    };
                    ops.push(WriteOp::Put {
                        table: Table::AgentMailbox,
                        key: mailbox_key(&entry.agent_id, seq),
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
                    let acked = std::mem::replace(held, keep);
                    for (seq, body) in acked {
                        state.drop_entry(&agent_id, seq, body, &mut ops);
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
                let mut n = 0;
                for (key, bytes) in state.args.reader.scan_prefix(Table::AgentMailbox, b"")? {
                    let Some(entry) =
                        decode_or_skip::<MailboxEntry>(Table::AgentMailbox, &key, &bytes)
                    else {
                        continue;
                    };
                    if entry.stored_at >= cutoff {
                        continue;
                    }
                    n += 1;
                    let held = state.held.get_mut(&entry.agent_id);
                    match held.and_then(|h| h.remove(&entry.seq)) {
                        Some(body) => state.drop_entry(&entry.agent_id, entry.seq, body, &mut ops),
                        None => ops.push(WriteOp::Delete {
                            table: Table::AgentMailbox,
                            key,
                        }),
                    }
                }
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

/// One message waiting in a mailbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub seq: u64,
    pub message: Message,
    pub stored_at: Millis,
}

/// An agent's messages with `seq > since`, ascending. An entry whose body is gone (acked
/// or evicted while this read ran) is left out.
pub fn poll(reader: &StoreReader, agent_id: &str, since: u64) -> Result<Vec<Delivery>, StoreError> {
    let entries: Vec<MailboxEntry> =
        reader.owned_after(Table::AgentMailbox, agent_id, since, usize::MAX)?;
    let mut out = Vec::with_capacity(entries.len());
    let mut last: Option<(u64, Message)> = None;
    for e in entries {
        let message = match (e.message, e.body) {
            (Some(m), _) => m,
            (None, Some(id)) => match &last {
                Some((seen, m)) if *seen == id => m.clone(),
                _ => match reader.get_record::<Message>(Table::MailboxBodies, &seq_key(id))? {
                    Some(m) => {
                        last = Some((id, m.clone()));
                        m
                    }
                    None => continue,
                },
            },
            (None, None) => continue,
        };
        out.push(Delivery {
            seq: e.seq,
            message,
            stored_at: e.stored_at,
        });
    }
    Ok(out)
}
