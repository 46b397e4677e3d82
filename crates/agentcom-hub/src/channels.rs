//! Channels (reference §6.3): named groups an agent subscribes to; a publish is kept in
//! the channel's history (newest [`HISTORY_KEEP`]), pushed to online subscribers' attached
//! connections, and copied to the mailbox of subscribers that are offline (F15).

use std::collections::HashMap;
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
}

pub struct ChannelsArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    pub mailbox: Service<MailboxMsg>,
    pub presence: Arc<PresenceTable>,
    pub publisher: Publisher,
}

pub struct ChannelsState {
    order: InOrder,
    args: ChannelsArgs,
    channels: HashMap<String, ChannelRecord>,
    last_seq: HashMap<String, u64>,
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
        for record in list(&args.reader)? {
            let seq = last_seq(
                &args.reader,
                None,
                Table::ChannelHistory,
                &owner_prefix(&record.name),
            )?;
            seqs.insert(record.name.clone(), seq);
            channels.insert(record.name.clone(), record);
        }
        Ok(ChannelsState {
            order: InOrder::new(),
            args,
            channels,
            last_seq: seqs,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
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
                let seq = state.last_seq.get(&name).copied().unwrap_or(0) + 1;
                state.last_seq.insert(name.clone(), seq);
                let entry = HistoryEntry {
                    seq,
                    message: message.clone(),
                    stored_at: now_ms(),
                };
                let mut ops = vec![WriteOp::Put {
                    table: Table::ChannelHistory,
                    key: channel_history_key(&name, seq),
                    value: encode(&entry),
                }];
                if seq > HISTORY_KEEP as u64 {
                    ops.push(WriteOp::Delete {
                        table: Table::ChannelHistory,
                        key: channel_history_key(&name, seq - HISTORY_KEEP as u64),
                    });
                }
                // Offline subscribers (not the sender) get a mailbox copy tagged with the channel.
                let offline: Vec<String> = record
                    .subscribers
                    .iter()
                    .filter(|s| **s != message.from && !state.args.presence.is_online(s))
                    .cloned()
                    .collect();
                // The mailbox must be there before anything is written: an error means
                // "not published" (a crashed mailbox answers at once, see service.rs).
                if !offline.is_empty() {
                    if let Err(e) = state.args.mailbox.ready(DEFAULT_WAIT).await {
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
                    }
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
                state.args.publisher.publish(
                    Topic::Channel(name.clone()),
                    HubEvent::ChannelMessage {
                        channel: name,
                        message: Arc::new(message),
                    },
                );
                state.order.then(async move {
                    let result = async {
                        written?.wait(WRITE_TIMEOUT).await??;
                        if let Some(copied) = copied {
                            copied?.wait(WRITE_TIMEOUT).await??;
                        }
                        Ok::<u64, HubError>(seq)
                    }
                    .await;
                    let _ = reply.send(result);
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

/// The first `limit` entries of a channel's history with `seq > since`, ascending.
pub fn history(
    reader: &StoreReader,
    name: &str,
    since: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    reader.owned_after(Table::ChannelHistory, name, since, limit)
}
