//! Typed records stored in the tables, and key helpers.

use agentcom_core::message::Message;
use agentcom_core::{auth::Role, Millis};
use serde::{Deserialize, Serialize};

/// A record of `auth_tokens`, keyed by the SHA-256 of the token (hex). The raw token is
/// never stored; `prefix` (its first 8 characters) lets operators tell tokens apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub agent_id: String,
    pub role: Role,
    pub prefix: String,
    pub created_at: Millis,
    /// Set for tokens created by the `AGENTCOM_ADMIN_TOKEN` bootstrap.
    #[serde(default)]
    pub bootstrap: bool,
}

/// A big-endian sequence key, so that keys sort in sequence order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// A record of `agent_mailbox`, keyed by [`mailbox_key`]: one agent's copy of a message.
/// The message itself is stored once in `mailbox_bodies` (keyed by [`seq_key`] of `body`),
/// however many mailboxes hold it; entries written before bodies were shared carry it
/// inline in `message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxEntry {
    pub seq: u64,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    pub stored_at: Millis,
}

/// A record of `message_history` (keyed by [`seq_key`]) or of `channel_history` (keyed by
/// [`channel_history_key`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    pub message: Message,
    pub stored_at: Millis,
}

/// A record of `agent_channels`, keyed by the normalised name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub name: String,
    pub description: String,
    pub created_at: Millis,
    pub created_by: String,
    /// Newest first, as the original kept them.
    pub subscribers: Vec<String>,
}

/// Keys of `hub_meta`.
pub mod meta {
    /// The last mailbox sequence number handed out.
    pub const MAILBOX_SEQ: &[u8] = b"mailbox_seq";
    /// The last message-history sequence number handed out.
    pub const HISTORY_SEQ: &[u8] = b"message_history_seq";
}

/// `<owner>\0<seq big-endian>`: the records of one owner sort together, in sequence order.
/// Owners are agent ids and normalised channel names, which never hold a NUL (the hub
/// refuses such ids before they reach a key), so the separator is unambiguous; readers
/// still take only keys of exactly `<owner>\0` and 8 bytes (see `owned_after`), for
/// stores written before ids were checked.
pub fn owned_seq_key(owner: &str, seq: u64) -> Vec<u8> {
    let mut key = owner_prefix(owner);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key prefix of every record of `owner` in an owned-sequence table.
pub fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(owner.len() + 9);
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key
}

/// The sequence number at the end of an owned-sequence key.
pub fn seq_of_key(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|i| &key[i..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

pub fn mailbox_key(agent_id: &str, seq: u64) -> Vec<u8> {
    owned_seq_key(agent_id, seq)
}

pub fn channel_history_key(channel: &str, seq: u64) -> Vec<u8> {
    owned_seq_key(channel, seq)
}
