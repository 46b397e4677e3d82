//! Threads (reference §6.6): every routed message indexed by id, with the children of each
//! parent, so that a conversation can be walked. Fed by every routed message (F7); walks
//! terminate on circular chains (C8).

use agentcom_core::message::Message;
use agentcom_core::threads::{root_of, subtree};
use agentcom_store::{encode, StoreError, StoreReader, Table, WriteOp};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::HubError;

pub enum ThreadsMsg {
    /// Index a message; answers once the index entries are durable.
    Index(Message, RpcReplyPort<Result<(), HubError>>),
}

pub struct ThreadsArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
}

pub struct Threads;

impl Actor for Threads {
    type Msg = ThreadsMsg;
    type State = (ThreadsArgs, InOrder);
    type Arguments = ThreadsArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ThreadsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.store
            .call(StoreMsg::Barrier, crate::CALL_TIMEOUT)
            .await?;
        Ok((args, InOrder::new()))
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        (state, order): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ThreadsMsg::Index(message, reply) = msg;
        let mut ops = vec![WriteOp::Put {
            table: Table::ThreadMessages,
            key: message.id.as_bytes().to_vec(),
            value: encode(&message),
        }];
        if let Some(parent) = &message.reply_to {
            let mut children = replies(&state.reader, parent)?;
            if !children.contains(&message.id) {
                children.push(message.id.clone());
                ops.push(WriteOp::Put {
                    table: Table::ThreadReplies,
                    key: parent.as_bytes().to_vec(),
                    value: encode(&children),
                });
            }
        }
        write_then(&state.store, order, ops, reply, || ()).await;
        Ok(())
    }
}

fn replies(reader: &StoreReader, parent: &str) -> Result<Vec<String>, StoreError> {
    Ok(reader
        .get_record(Table::ThreadReplies, parent.as_bytes())?
        .unwrap_or_default())
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
