//! Channels (reference §6.3): named groups an agent subscribes to; a publish is kept in
//! the channel's history (newest [`HISTORY_KEEP`]), pushed to online subscribers' attached
//! connections, and copied to the mailbox of subscribers that are offline (F15).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use agentcom_core::channel::HISTORY_KEEP;
use agentcom_core::message::Message;
use agentcom_store::{
    channel_history_key, decode_or_skip, encode, owner_prefix, ChannelRecord, HistoryEntry,
    StoreError, StoreReader, Table, WriteOp,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::events::{HubEvent, Topic};
use crate::history::last_seq;
use crate::mailbox::MailboxMsg;
use crate::presence::PresenceTable;
use crate::pubsub::Publisher;
use crate::service::{Service, DEFAULT_WAIT};
use crate::store::{write_then, InOrder, StoreMsg, WRITE_TIMEOUT};
use crate::{now_ms, HubError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    Subscribed,
    AlreadySubscribed,
}

pub enum ChannelsMsg {
    /// Create a channel (name normalised): description, creator.
    Create(String, String, String, RpcReplyPort<Result<(), HubError>>),
    Subscribe(String, String, RpcReplyPort<Result<Subscription, HubError>>),
    Unsubscribe(String, String, RpcReplyPort<Result<(), HubError>>),
    /// Publish on a channel; answers with the channel sequence number once durable.
    Publish(String, Message, RpcReplyPort<Result<u64, HubError>>),
    /// Take back a publish whose mailbox copies failed: its entry goes, the entries it
    /// trimmed come back (sent by the actor to itself). Answers once that is durable, or
    /// has failed (which is logged).
    Undo(Undo, RpcReplyPort<()>),
}

/// What one publish changed in a channel's history.
pub struct Undo {
    channel: String,
    seq: u64,
    trimmed: Vec<(u64, Kept, Vec<u8>)>,
}

/// What the actor knows of one history entry: who sent it, and its size.
#[derive(Clone)]
struct Kept {
    sender: String,
    bytes: u64,
}

pub struct ChannelsArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    pub mailbox: Service<MailboxMsg>,
    pub presence: Arc<PresenceTable>,
    pub publisher: Publisher,
    /// Bytes of history one sender may hold over every channel (0: no limit).
    pub quota_bytes: u64,
}

pub struct ChannelsState {
    order: InOrder,
    args: ChannelsArgs,
    channels: HashMap<String, ChannelRecord>,
    last_seq: HashMap<String, u64>,
    /// Per channel, its history entries by sequence number.
    kept: HashMap<String, BTreeMap<u64, Kept>>,
    /// Bytes of history per sender, for the quota.
    stored_by: HashMap<String, u64>,
}

impl ChannelsState {
    fn account(&mut self, kept: &Kept, add: bool) {
        let total = self.stored_by.entry(kept.sender.clone()).or_default();
        *total = if add {
            total.saturating_add(kept.bytes)
        } else {
            total.saturating_sub(kept.bytes)
        };
        if *total == 0 {
            self.stored_by.remove(&kept.sender);
        }
    }
}

pub struct Channels;

const NOT_FOUND: HubError = HubError::NotFound("channel_not_found");

impl Actor for Channels {
    type Msg = ChannelsMsg;
    type State = ChannelsState;
    type Arguments = ChannelsArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ChannelsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.store
            .call(StoreMsg::Barrier, crate::CALL_TIMEOUT)
            .await?;
        let mut channels = HashMap::new();
        let mut seqs = HashMap::new();
        let mut state_kept: HashMap<String, BTreeMap<u64, Kept>> = HashMap::new();
        let mut stored_by: HashMap<String, u64> = HashMap::new();
        for record in list(&args.reader)? {
            let prefix = owner_prefix(&record.name);
            let seq = last_seq(&args.reader, None, Table::ChannelHistory, &prefix)?;
            let mut kept = BTreeMap::new();
            for (key, bytes) in args.reader.scan_prefix(Table::ChannelHistory, &prefix)? {
                let Some(entry) =
                    decode_or_skip::<HistoryEntry>(Table::ChannelHistory, &key, &bytes)
                else {
                    continue;
                };
                *stored_by.entry(entry.message.from.clone()).or_default() += bytes.len() as u64;
                kept.insert(
                    entry.seq,
                    Kept {
                        sender: entry.message.from,
                        bytes: bytes.len() as u64,
                    },
                );
            }
            seqs.insert(record.name.clone(), seq);
            state_kept.insert(record.name.clone(), kept);
            channels.insert(record.name.clone(), record);
        }
        Ok(ChannelsState {
            order: InOrder::new(),
            args,
            channels,
            last_seq: seqs,
            kept: state_kept,
            stored_by,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChannelsMsg::Create(name, description, created_by, reply) => {
                if state.channels.contains_key(&name) {
                    let _ = reply.send(Err(HubError::Conflict("channel_exists")));
                    return Ok(());
                }
                let record = ChannelRecord {
                    name: name.clone(),
                    description,
                    created_at: now_ms(),
                    created_by,
                    subscribers: Vec::new(),
                };
                let op = put_record(&record);
                state.channels.insert(name.clone(), record);
                state.last_seq.insert(name, 0);
                write_then(&state.args.store, &state.order, vec![op], reply, || ()).await;
            }
            ChannelsMsg::Subscribe(name, agent_id, reply) => {
                let Some(record) = state.channels.get_mut(&name) else {
                    let _ = reply.send(Err(NOT_FOUND));
                    return Ok(());
                };
                if record.subscribers.contains(&agent_id) {
                    let _ = reply.send(Ok(Subscription::AlreadySubscribed));
                    return Ok(());
                }
                record.subscribers.insert(0, agent_id.clone());
                let op = put_record(record);
                let publisher = state.args.publisher.clone();
                write_then(
                    &state.args.store,
                    &state.order,
                    vec![op],
                    reply,
                    move || {
                        publisher.publish(
                            Topic::Channel(name.clone()),
                            HubEvent::ChannelSubscribed {
                                channel: name,
                                agent_id,
                            },
                        );
                        Subscription::Subscribed
                    },
                )
                .await;
            }
            ChannelsMsg::Unsubscribe(name, agent_id, reply) => {
                let Some(record) = state.channels.get_mut(&name) else {
                    let _ = reply.send(Err(NOT_FOUND));
                    return Ok(());
                };
                let before = record.subscribers.len();
                record.subscribers.retain(|s| *s != agent_id);
                let ops = if record.subscribers.len() != before {
                    vec![put_record(record)]
                } else {
                    Vec::new()
                };
                write_then(&state.args.store, &state.order, ops, reply, || ()).await;
            }
            ChannelsMsg::Publish(name, message, reply) => {
                let Some(record) = state.channels.get(&name) else {
                    let _ = reply.send(Err(NOT_FOUND));
                    return Ok(());
                };
                // Offline subscribers (not the sender) get a mailbox copy tagged with the channel.
                let offline: Vec<String> = record
                    .subscribers
                    .iter()
                    .filter(|s| **s != message.from && !state.args.presence.is_online(s))
                    .cloned()
                    .collect();
                let seq = state.last_seq.get(&name).copied().unwrap_or(0) + 1;
                let entry = HistoryEntry {
                    seq,
                    message: message.clone(),
                    stored_at: now_ms(),
                };
                let value = encode(&entry);
                let new = Kept {
                    sender: message.from.clone(),
                    bytes: value.len() as u64,
                };
                let quota = state.args.quota_bytes;
                let used = state.stored_by.get(&new.sender).copied().unwrap_or(0);
                if quota > 0 && used.saturating_add(new.bytes) > quota {
                    let _ = reply.send(Err(HubError::QuotaExceeded {
                        quota: "channel_quota",
                        limit: quota,
                    }));
                    return Ok(());
                }
                // The mailbox must be there before anything is written: an error means
                // "not published" (a crashed mailbox answers at once, see service.rs).
                if !offline.is_empty() {
                    if let Err(e) = state.args.mailbox.ready(DEFAULT_WAIT).await {
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
                    }
                }
                let mut ops = vec![WriteOp::Put {
                    table: Table::ChannelHistory,
                    key: channel_history_key(&name, seq),
                    value,
                }];
                state.last_seq.insert(name.clone(), seq);
                state.account(&new, true);
                let kept = state.kept.entry(name.clone()).or_default();
                kept.insert(seq, new);
                let mut trimmed = Vec::new();
                while kept.len() > HISTORY_KEEP {
                    let (old, k) = kept.pop_first().expect("non-empty");
                    trimmed.push((old, k));
                }
                // What the trimmed entries were, should this publish be taken back.
                let mut undo = Undo {
                    channel: name.clone(),
                    seq,
                    trimmed: Vec::new(),
                };
                for (old, k) in trimmed {
                    state.account(&k, false);
                    let key = channel_history_key(&name, old);
                    if !offline.is_empty() {
                        if let Some(raw) = state.args.reader.get(Table::ChannelHistory, &key)? {
                            undo.trimmed.push((old, k, raw));
                        }
                    }
                    ops.push(WriteOp::Delete {
                        table: Table::ChannelHistory,
                        key,
                    });
                }
                let written = state
                    .args
                    .store
                    .request(|port| StoreMsg::Write(ops, port), DEFAULT_WAIT)
                    .await;
                let copied = if offline.is_empty() {
                    None
                } else {
                    let mut copy = message.clone();
                    if let Some(payload) = copy.payload.as_object_mut() {
                        payload.insert("channel".into(), name.clone().into());
                    }
                    Some(
                        state
                            .args
                            .mailbox
                            .request(
                                |port| MailboxMsg::Enqueue(offline, copy, port),
                                DEFAULT_WAIT,
                            )
                            .await,
                    )
                };
                // Subscribers hear of it once it is durable, and only if it stands.
                let publisher = state.args.publisher.clone();
                state.order.then(async move {
                    let result = async {
                        written?.wait(WRITE_TIMEOUT).await??;
                        if let Some(copied) = copied {
                            let copied: Result<(), HubError> = async {
                                copied?.wait(WRITE_TIMEOUT).await??;
                                Ok(())
                            }
                            .await;
                            if let Err(e) = copied {
                                // Answered once the entry is gone: the error means "not
                                // published" to a reader who looks right after it.
                                let (tx, rx) = ractor::concurrency::oneshot();
                                if myself
                                    .send_message(ChannelsMsg::Undo(undo, tx.into()))
                                    .is_ok()
                                {
                                    let _ = tokio::time::timeout(WRITE_TIMEOUT, rx).await;
                                }
                                return Err(e);
                            }
                        }
                        Ok::<u64, HubError>(seq)
                    }
                    .await;
                    if result.is_ok() {
                        publisher.publish(
                            Topic::Channel(name.clone()),
                            HubEvent::ChannelMessage {
                                channel: name,
                                message: Arc::new(message),
                            },
                        );
                    }
                    let _ = reply.send(result);
                });
            }
            ChannelsMsg::Undo(undo, done) => {
                let mut ops = vec![WriteOp::Delete {
                    table: Table::ChannelHistory,
                    key: channel_history_key(&undo.channel, undo.seq),
                }];
                if let Some(gone) = state
                    .kept
                    .get_mut(&undo.channel)
                    .and_then(|kept| kept.remove(&undo.seq))
                {
                    state.account(&gone, false);
                }
                for (seq, k, raw) in undo.trimmed {
                    state.account(&k, true);
                    state
                        .kept
                        .entry(undo.channel.clone())
                        .or_default()
                        .insert(seq, k);
                    ops.push(WriteOp::Put {
                        table: Table::ChannelHistory,
                        key: channel_history_key(&undo.channel, seq),
                        value: raw,
                    });
                }
                // Not through `state.order`: the publish's continuation, which runs there,
                // waits for this answer.
                let pending = state
                    .args
                    .store
                    .request(|port| StoreMsg::Write(ops, port), DEFAULT_WAIT)
                    .await;
                let (channel, seq) = (undo.channel, undo.seq);
                tokio::spawn(async move {
                    let written = match pending {
                        Ok(pending) => matches!(pending.wait(WRITE_TIMEOUT).await, Ok(Ok(()))),
                        Err(_) => false,
                    };
                    if !written {
                        tracing::error!(
                            channel,
                            seq,
                            "a publish whose mailbox copies failed stays in the channel's history"
                        );
                    }
                    let _ = done.send(());
                });
            }
        }
        Ok(())
    }
}

fn put_record(record: &ChannelRecord) -> WriteOp {
    WriteOp::Put {
        table: Table::AgentChannels,
        key: record.name.as_bytes().to_vec(),
        value: encode(record),
    }
}

/// Every channel, by name.
pub fn list(reader: &StoreReader) -> Result<Vec<ChannelRecord>, StoreError> {
    Ok(reader
        .scan_prefix(Table::AgentChannels, b"")?
        .iter()
        .filter_map(|(key, bytes)| decode_or_skip(Table::AgentChannels, key, bytes))
        .collect())
}

pub fn get(reader: &StoreReader, name: &str) -> Result<Option<ChannelRecord>, StoreError> {
    reader.get_record(Table::AgentChannels, name.as_bytes())
}

/// The channels `agent_id` is subscribed to.
pub fn subscriptions_of(reader: &StoreReader, agent_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(list(reader)?
        .into_iter()
        .filter(|c| c.subscribers.iter().any(|s| s == agent_id))
        .map(|c| c.name)
        .collect())
}

/// The newest `limit` entries of a channel's history with `seq > since`, ascending: a
/// client opening a channel wants its latest messages (as the original answered).
pub fn history(
    reader: &StoreReader,
    name: &str,
    since: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    reader.owned_newest_after(Table::ChannelHistory, name, since, limit)
}
