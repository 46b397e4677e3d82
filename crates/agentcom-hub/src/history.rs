//! Message history (reference §6.5): every routed direct and broadcast message, under a
//! global sequence number that only grows (it is stored, not recovered from the entries).

use std::collections::BTreeMap;

use agentcom_core::message::Message;
use agentcom_core::Millis;
use agentcom_store::{
    decode_or_skip, encode, meta, seq_key, HistoryEntry, StoreError, StoreReader, Table, WriteOp,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::{now_ms, HubError};

/// Messages kept; the oldest are trimmed (also beyond `history_max_bytes`).
pub const HISTORY_KEEP: u64 = 10_000;

pub enum HistoryMsg {
    /// Store a message; answers with its sequence number once durable.
    Store(Message, RpcReplyPort<Result<u64, HubError>>),
}

pub struct HistoryArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    /// The oldest entries are trimmed while the history holds more bytes than this.
    pub max_bytes: u64,
}

pub struct HistoryState {
    order: InOrder,
    last_seq: u64,
    store: Service<StoreMsg>,
    /// The size of each entry held, by sequence number, and their sum.
    sizes: BTreeMap<u64, u64>,
    total: u64,
    max_bytes: u64,
}

pub struct MessageHistory;

/// The greater of the stored counter and the newest entry's key.
pub(crate) fn last_seq(
    reader: &StoreReader,
    counter: Option<&[u8]>,
    table: Table,
    prefix: &[u8],
) -> Result<u64, StoreError> {
    let stored: u64 = match counter {
        Some(key) => reader.get_record(Table::HubMeta, key)?.unwrap_or(0),
        None => 0,
    };
    let newest = reader
        .last_with_prefix(table, prefix)?
        .and_then(|(k, _)| agentcom_store::seq_of_key(&k))
        .unwrap_or(0);
    Ok(stored.max(newest))
}

impl Actor for MessageHistory {
    type Msg = HistoryMsg;
    type State = HistoryState;
    type Arguments = HistoryArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: HistoryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.store
            .call(StoreMsg::Barrier, crate::CALL_TIMEOUT)
            .await?;
        let mut sizes = BTreeMap::new();
        args.reader
            .for_each(Table::MessageHistory, &mut |key: &[u8], value: &[u8]| {
                if let Some(seq) = agentcom_store::seq_of_key(key) {
                    sizes.insert(seq, (key.len() + value.len()) as u64);
                }
                Ok(())
            })?;
        Ok(HistoryState {
            order: InOrder::new(),
            last_seq: last_seq(
                &args.reader,
                Some(meta::HISTORY_SEQ),
                Table::MessageHistory,
                b"",
            )?,
            store: args.store,
            total: sizes.values().sum(),
            sizes,
            max_bytes: args.max_bytes,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let HistoryMsg::Store(message, reply) = msg;
        state.last_seq += 1;
        let seq = state.last_seq;
        let entry = HistoryEntry {
            seq,
            message,
            stored_at: now_ms(),
        };
        let key = seq_key(seq).to_vec();
        let value = encode(&entry);
        let size = (key.len() + value.len()) as u64;
        state.sizes.insert(seq, size);
        state.total += size;
        let mut ops = vec![
            WriteOp::Put {
                table: Table::MessageHistory,
                key,
                value,
            },
            WriteOp::Put {
                table: Table::HubMeta,
                key: meta::HISTORY_SEQ.to_vec(),
                value: encode(&seq),
            },
        ];
        // The newest entry always stays, however large.
        while state.sizes.len() > 1
            && (state.sizes.len() as u64 > HISTORY_KEEP || state.total > state.max_bytes)
        {
            let (old, size) = state.sizes.pop_first().expect("non-empty");
            state.total -= size;
            ops.push(WriteOp::Delete {
                table: Table::MessageHistory,
                key: seq_key(old).to_vec(),
            });
        }
        write_then(&state.store, &state.order, ops, reply, move || seq).await;
        Ok(())
    }
}

/// A history query (route 24). Numbers are already validated by the caller.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub channel: Option<String>,
    pub start_time: Option<Millis>,
    pub end_time: Option<Millis>,
    pub cursor: u64,
    pub limit: usize,
    /// Only messages this agent may see (S4); `None` for admins.
    pub visible_to: Option<String>,
}

/// Entries after `cursor` that match, the first `limit` of them.
pub fn query(reader: &StoreReader, q: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut out = Vec::new();
    let mut from = seq_key(q.cursor.saturating_add(1)).to_vec();
    let end = [0xffu8; 9];
    'scan: loop {
        let batch = reader.range(Table::MessageHistory, &from, &end, 512)?;
        let Some((last_key, _)) = batch.last() else {
            break;
        };
        from = last_key.clone();
        from.push(0);
        for (key, bytes) in &batch {
            let Some(entry) = decode_or_skip::<HistoryEntry>(Table::MessageHistory, key, bytes)
            else {
                continue;
            };
            if matches(&entry.message, q) {
                out.push(entry);
                if out.len() >= q.limit {
                    break 'scan;
                }
            }
        }
    }
    Ok(out)
}

fn matches(m: &Message, q: &HistoryQuery) -> bool {
    let to_matches = match q.to.as_deref() {
        None => true,
        Some("broadcast") => m.is_broadcast(),
        Some(to) => m.to.as_deref() == Some(to),
    };
    q.visible_to.as_deref().is_none_or(|a| m.visible_to(a))
        && q.from.as_deref().is_none_or(|f| m.from == f)
        && to_matches
        && q.channel
            .as_deref()
            .is_none_or(|c| m.payload.get("channel").and_then(|v| v.as_str()) == Some(c))
        && q.start_time.is_none_or(|t| m.timestamp >= t)
        && q.end_time.is_none_or(|t| m.timestamp <= t)
}
