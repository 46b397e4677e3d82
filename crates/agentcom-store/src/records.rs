//! Typed records stored in the tables, and key helpers.

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
