//! AgentCom storage: the table registry, the engine trait and its sled implementation,
//! and the versioned record codec.
//!
//! Architecture invariant: the hub's store actor is the only caller of [`Engine::apply`];
//! everyone else reads through a [`StoreReader`].

pub mod backup;
mod codec;
pub mod compact;
mod durable_dir;
mod engine;
mod error;
mod integrity;
mod journal;
pub mod live_dir;
pub mod quarantine;
mod records;
mod sled_engine;
mod table;

pub use codec::{check_readable, check_writable, decode, decode_or_skip, encode, CODEC_VERSION};
pub use durable_dir::{create_dir_all_durable, sync_dir};
pub use engine::{
    live_bytes, Compaction, Engine, Record, Retired, StoreReader, TableStats, WriteOp,
};
pub use error::StoreError;
pub use records::{
    channel_history_key, mailbox_key, meta, owned_seq_key, owner_prefix, seq_key, seq_of_key,
    ChannelRecord, HistoryEntry, MailboxEntry, TokenRecord,
};
pub use sled_engine::SledEngine;
pub use table::Table;
