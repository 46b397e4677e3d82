//! Threads (reference §6.6): every routed message indexed by id, with the children of each
//! parent, so that a conversation can be walked. Fed by every routed message (F7); walks
//! terminate on circular chains (C8).
//!
//! The index is bounded (issue 9 #5), and adding a message writes a few small records
//! whatever the index holds:
//! - `thread_messages`: message id → the message;
//! - `thread_replies`: one record per reply, `<parent>\0<n>` → `[child id]`, `n` numbering
//!   the parent's replies from 1 (a store written before kept one record per parent,
//!   `<parent>` → every child id, rewritten whole at each reply; it is renumbered at start);
//! - `hub_meta` `thread_order:<seq>` → which message, and which reply record, the `seq`-th
//!   indexed message wrote. Once more than [`ThreadLimits::keep`] are indexed, the oldest
//!   leave with their reply records; a parent has at most [`ThreadLimits::max_replies`]
//!   replies indexed (further ones are kept as messages, not listed as its replies).

use std::collections::HashSet;

use agentcom_core::message::Message;
use agentcom_core::threads::{next_reply_number, number, root_of, subtree, Unnumbered};
use agentcom_store::{
    decode_or_skip, encode, owned_seq_key, owner_prefix, seq_of_key, StoreError, StoreReader,
    Table, WriteOp,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::service::Service;
use crate::store::{write_then, InFlight, InOrder, StoreMsg, WRITE_TIMEOUT};
use crate::{HubError, CALL_TIMEOUT};

pub enum ThreadsMsg {
    /// Index a message; answers once the index entries are durable.
    Index(Message, RpcReplyPort<Result<(), HubError>>),
}

/// How much the thread index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadLimits {
    /// Messages indexed; the oldest leave first (`thread_index_keep`).
    pub keep: u64,
    /// Replies indexed per parent; later ones are not listed (`thread_max_replies`).
    pub max_replies: u64,
    /// Bytes of indexed messages; beyond it the oldest leave, however few are indexed
    /// (`thread_index_max_bytes`).
    pub max_bytes: u64,
}

impl Default for ThreadLimits {
    fn default() -> Self {
        ThreadLimits {
            keep: 10_000,
            max_replies: 1_000,
            max_bytes: 256 << 20,
        }
    }
}

pub struct ThreadsArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    pub limits: ThreadLimits,
}

pub struct ThreadsState {
    reader: StoreReader,
    store: Service<StoreMsg>,
    limits: ThreadLimits,
    order: InOrder,
    /// The index order of the newest indexed message.
    last_seq: u64,
    /// Messages being indexed, and parents whose replies are, until durable.
    in_flight: InFlight,
}

/// `hub_meta` keys of the index order: this prefix and the big-endian sequence number.
const ORDER_PREFIX: &[u8] = b"thread_order:";
/// `hub_meta` key present once an index of the earlier layout has been renumbered.
const INDEX_VERSION: &[u8] = b"thread_index_version";
/// Oldest entries removed per message indexed: more than the one it adds.
const PRUNE_PER_INDEX: usize = 4;
/// Records read, or writes sent, per batch at start.
const START_BATCH: usize = 4096;

/// A record of the index order: the message and the reply record its indexing wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderEntry {
    id: String,
    /// The parent and the reply's number under it.
    #[serde(default)]
    reply: Option<(String, u64)>,
}

fn order_key(seq: u64) -> Vec<u8> {
    [ORDER_PREFIX, &seq.to_be_bytes()].concat()
}

fn put(table: Table, key: Vec<u8>, value: Vec<u8>) -> WriteOp {
    WriteOp::Put { table, key, value }
}

fn delete(table: Table, key: Vec<u8>) -> WriteOp {
    WriteOp::Delete { table, key }
}

/// The writes that index `entry` as the `seq`-th message.
fn index_ops(seq: u64, message: Option<&Message>, entry: &OrderEntry) -> Vec<WriteOp> {
    let mut ops = Vec::with_capacity(3);
    if let Some(m) = message {
        ops.push(put(
            Table::ThreadMessages,
            m.id.as_bytes().to_vec(),
            encode(m),
        ));
    }
    if let Some((parent, n)) = &entry.reply {
        ops.push(put(
            Table::ThreadReplies,
            owned_seq_key(parent, *n),
            encode(&[&entry.id]),
        ));
    }
    ops.push(put(Table::HubMeta, order_key(seq), encode(entry)));
    ops
}

/// The writes that remove up to `limit` of the oldest indexed messages, those indexed
/// `keep` or more before `last_seq`.
fn prune_ops(
    reader: &StoreReader,
    last_seq: u64,
    keep: u64,
    limit: usize,
) -> Result<Vec<WriteOp>, StoreError> {
    let Some(newest_gone) = last_seq.checked_sub(keep) else {
        return Ok(Vec::new());
    };
    let mut ops = Vec::new();
    for (key, bytes) in reader.range(
        Table::HubMeta,
        ORDER_PREFIX,
        &order_key(newest_gone.saturating_add(1)),
        limit,
    )? {
        if let Some(entry) = decode_or_skip::<OrderEntry>(Table::HubMeta, &key, &bytes) {
            ops.push(delete(Table::ThreadMessages, entry.id.into_bytes()));
            if let Some((parent, n)) = entry.reply {
                ops.push(delete(Table::ThreadReplies, owned_seq_key(&parent, n)));
            }
        }
        ops.push(delete(Table::HubMeta, key));
    }
    Ok(ops)
}

/// The numbers of the oldest and newest indexed replies to `parent`.
fn reply_numbers(reader: &StoreReader, parent: &str) -> Result<Option<(u64, u64)>, StoreError> {
    let prefix = owner_prefix(parent);
    let number = |key: &[u8]| {
        (key.len() == prefix.len() + 8)
            .then(|| seq_of_key(key))
            .flatten()
    };
    let mut end = prefix.clone();
    *end.last_mut().expect("prefix ends with a separator") = 1;
    let oldest = reader.range(Table::ThreadReplies, &prefix, &end, 1)?;
    let newest = reader.last_with_prefix(Table::ThreadReplies, &prefix)?;
    Ok(oldest
        .first()
        .and_then(|(k, _)| number(k))
        .zip(newest.and_then(|(k, _)| number(&k))))
}

impl ThreadsState {
    /// The writes that index `message`; none if it is indexed already.
    async fn plan(&mut self, message: &Message) -> Result<Vec<WriteOp>, HubError> {
        // Read after this actor's earlier writes for the same message or parent are
        // applied: a reply's number depends on the replies indexed just before it. Writes
        // for other messages do not change what is read here (the pruning below may see
        // entries already being pruned: it removes them again, which is harmless).
        let parent = message.reply_to.as_deref();
        if self.in_flight.touches(&message.id) || parent.is_some_and(|p| self.in_flight.touches(p))
        {
            self.store.call(StoreMsg::Barrier, CALL_TIMEOUT).await?;
        }
        let reader = &self.reader;
        if reader
            .get(Table::ThreadMessages, message.id.as_bytes())?
            .is_some()
        {
            return Ok(Vec::new());
        }
        let reply = match &message.reply_to {
            Some(parent) => {
                next_reply_number(reply_numbers(reader, parent)?, self.limits.max_replies)
                    .map(|n| (parent.clone(), n))
            }
            None => None,
        };
        let seq = self.last_seq + 1;
        let entry = OrderEntry {
            id: message.id.clone(),
            reply,
        };
        let mut ops = index_ops(seq, Some(message), &entry);
        // Over the byte bound, the oldest leave whatever `keep` says (all but the newest
        // may go); each message indexed removes up to PRUNE_PER_INDEX of them, so the index
        // gets back under the bound.
        let held = reader.stats(Table::ThreadMessages).logical_bytes;
        let keep = if held > self.limits.max_bytes {
            1
        } else {
            self.limits.keep
        };
        ops.extend(prune_ops(reader, seq, keep, PRUNE_PER_INDEX)?);
        self.last_seq = seq;
        Ok(ops)
    }
}

/// Write `ops` in batches, each durable before the next is sent.
async fn write_all(store: &Service<StoreMsg>, ops: Vec<WriteOp>) -> Result<(), HubError> {
    for chunk in ops.chunks(START_BATCH) {
        let batch = chunk.to_vec();
        store
            .call(|r| StoreMsg::Write(batch, r), WRITE_TIMEOUT)
            .await??;
    }
    Ok(())
}

/// Every record of `table` (keys are UTF-8, so below `0xff`), `START_BATCH` at a time.
fn for_each_record(
    reader: &StoreReader,
    table: Table,
    mut f: impl FnMut(Vec<u8>, Vec<u8>),
) -> Result<(), StoreError> {
    let mut from = Vec::new();
    loop {
        let batch = reader.range(table, &from, &[0xff], START_BATCH)?;
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        from = last.clone();
        from.push(0);
        for (key, value) in batch {
            f(key, value);
        }
    }
}

/// Renumber an index of the earlier layout (one children list per parent, no order): its
/// messages in timestamp order, its replies as records of their own. Done once; an
/// interrupted run is redone whole at the next start (the mark is the last write).
async fn renumber(
    reader: &StoreReader,
    store: &Service<StoreMsg>,
    limits: ThreadLimits,
) -> Result<(), HubError> {
    if reader.get(Table::HubMeta, INDEX_VERSION)?.is_some() {
        return Ok(());
    }
    let mut messages = Vec::new();
    for_each_record(reader, Table::ThreadMessages, |key, bytes| {
        if let Some(m) = decode_or_skip::<Message>(Table::ThreadMessages, &key, &bytes) {
            messages.push(Unnumbered {
                id: m.id,
                timestamp: m.timestamp,
                reply_to: m.reply_to,
            });
        }
    })?;
    // The children lists are rebuilt from the children's `reply_to`, as they were built.
    let mut ops = Vec::new();
    for_each_record(reader, Table::ThreadReplies, |key, _| {
        ops.push(delete(Table::ThreadReplies, key))
    })?;
    if !messages.is_empty() {
        tracing::info!(
            messages = messages.len(),
            "renumbering the thread index of an earlier version"
        );
    }
    for n in number(messages, limits.max_replies) {
        let entry = OrderEntry {
            id: n.id,
            reply: n.reply,
        };
        ops.extend(index_ops(n.seq, None, &entry));
    }
    ops.push(put(Table::HubMeta, INDEX_VERSION.to_vec(), encode(&1u32)));
    write_all(store, ops).await
}

pub struct Threads;

impl Actor for Threads {
    type Msg = ThreadsMsg;
    type State = ThreadsState;
    type Arguments = ThreadsArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ThreadsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ThreadsArgs {
            reader,
            store,
            limits,
        } = args;
        store.call(StoreMsg::Barrier, CALL_TIMEOUT).await?;
        renumber(&reader, &store, limits).await?;
        let last_seq = reader
            .last_with_prefix(Table::HubMeta, ORDER_PREFIX)?
            .and_then(|(key, _)| seq_of_key(&key))
            .unwrap_or(0);
        // Down to the cap at once (it may have been lowered, or the old index was larger).
        loop {
            let ops = prune_ops(&reader, last_seq, limits.keep, START_BATCH)?;
            if ops.is_empty() {
                break;
            }
            write_all(&store, ops).await?;
        }
        Ok(ThreadsState {
            reader,
            store,
            limits,
            order: InOrder::new(),
            last_seq,
            in_flight: InFlight::default(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ThreadsMsg::Index(message, reply) = msg;
        match state.plan(&message).await {
            Ok(ops) => {
                let flying = (
                    state.in_flight.start(&message.id),
                    message
                        .reply_to
                        .as_deref()
                        .map(|p| state.in_flight.start(p)),
                );
                write_then(&state.store, &state.order, ops, reply, move || drop(flying)).await
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
        Ok(())
    }
}

/// The direct children of `parent`, oldest first: its reply records, and the children
/// list of the earlier layout should one remain.
fn replies(reader: &StoreReader, parent: &str) -> Result<Vec<String>, StoreError> {
    let old: Vec<String> = reader
        .get(Table::ThreadReplies, parent.as_bytes())?
        .and_then(|bytes| decode_or_skip(Table::ThreadReplies, parent.as_bytes(), &bytes))
        .unwrap_or_default();
    let new = reader.owned_after::<Vec<String>>(Table::ThreadReplies, parent, 0, usize::MAX)?;
    let mut seen = HashSet::new();
    Ok(old
        .into_iter()
        .chain(new.into_iter().flatten())
        .filter(|id| seen.insert(id.clone()))
        .collect())
}

fn message(reader: &StoreReader, id: &str) -> Result<Option<Message>, StoreError> {
    reader.get_record(Table::ThreadMessages, id.as_bytes())
}

/// The root of the thread holding `id`.
pub fn root(reader: &StoreReader, id: &str) -> Result<String, StoreError> {
    let mut error = None;
    let root = root_of(id, |m| match message(reader, m) {
        Ok(found) => found.and_then(|m| m.reply_to),
        Err(e) => {
            error = Some(e);
            None
        }
    });
    error.map_or(Ok(root), Err)
}

/// Every message of the thread holding `id`, by timestamp; and its root.
pub fn thread(reader: &StoreReader, id: &str) -> Result<(String, Vec<Message>), StoreError> {
    let root = root(reader, id)?;
    let ids = subtree(&root, |m| replies(reader, m).unwrap_or_default());
    let mut messages = Vec::new();
    for id in ids {
        if let Some(m) = message(reader, &id)? {
            messages.push(m);
        }
    }
    messages.sort_by_key(|m| m.timestamp);
    Ok((root, messages))
}

/// The direct replies to `id`, by timestamp.
pub fn direct_replies(reader: &StoreReader, id: &str) -> Result<Vec<Message>, StoreError> {
    let mut messages = Vec::new();
    for child in replies(reader, id)? {
        if let Some(m) = message(reader, &child)? {
            messages.push(m);
        }
    }
    messages.sort_by_key(|m| m.timestamp);
    Ok(messages)
}
