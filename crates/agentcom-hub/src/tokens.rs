//! Token book-keeping shared by the auth actor and the offline `agentcom token` commands.
//!
//! Tokens are 64 lowercase hex characters (32 random bytes). Only their SHA-256 is stored,
//! as the key of the `auth_tokens` table; the raw token is shown once, to its creator.

use agentcom_core::auth::Role;
use agentcom_core::Millis;
use agentcom_store::{decode, encode, StoreError, StoreReader, Table, TokenRecord, WriteOp};
use sha2::{Digest, Sha256};

/// The agent id given to the token created from `AGENTCOM_ADMIN_TOKEN`.
pub const BOOTSTRAP_ADMIN_ID: &str = "admin";

/// A fresh random token.
pub fn mint() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    hex::encode(bytes)
}

/// The `auth_tokens` key of a token: its SHA-256, hex-encoded.
pub fn token_key(token: &str) -> Vec<u8> {
    hex::encode(Sha256::digest(token.as_bytes())).into_bytes()
}

/// The write that stores a new token.
pub fn create(
    agent_id: &str,
    role: Role,
    token: &str,
    bootstrap: bool,
    now: Millis,
) -> (TokenRecord, WriteOp) {
    let record = TokenRecord {
        agent_id: agent_id.to_string(),
        role,
        prefix: token.chars().take(8).collect(),
        created_at: now,
        bootstrap,
    };
    let op = WriteOp::Put {
        table: Table::AuthTokens,
        key: token_key(token),
        value: encode(&record),
    };
    (record, op)
}

/// Look a presented token up.
pub fn lookup(reader: &StoreReader, token: &str) -> Result<Option<TokenRecord>, StoreError> {
    match reader.get(Table::AuthTokens, &token_key(token))? {
        Some(bytes) => Ok(Some(decode(Table::AuthTokens, &bytes)?)),
        None => Ok(None),
    }
}

/// Every token record with its key, oldest first.
pub fn list(reader: &StoreReader) -> Result<Vec<(Vec<u8>, TokenRecord)>, StoreError> {
    let mut out = reader
        .scan_prefix(Table::AuthTokens, b"")?
        .into_iter()
        .map(|(k, v)| Ok((k, decode::<TokenRecord>(Table::AuthTokens, &v)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// The writes that revoke every token of `agent_id`.
pub fn revoke(reader: &StoreReader, agent_id: &str) -> Result<Vec<WriteOp>, StoreError> {
    Ok(list(reader)?
        .into_iter()
        .filter(|(_, r)| r.agent_id == agent_id)
        .map(|(key, _)| WriteOp::Delete {
            table: Table::AuthTokens,
            key,
        })
        .collect())
}

/// The writes that make `token` the bootstrap admin token, replacing an earlier one.
pub fn bootstrap(
    reader: &StoreReader,
    token: &str,
    now: Millis,
) -> Result<Vec<WriteOp>, StoreError> {
    let key = token_key(token);
    let mut ops: Vec<WriteOp> = list(reader)?
        .into_iter()
        .filter(|(k, r)| r.bootstrap && *k != key)
        .map(|(key, _)| WriteOp::Delete {
            table: Table::AuthTokens,
            key,
        })
        .collect();
    if lookup(reader, token)?.is_none() {
        ops.push(create(BOOTSTRAP_ADMIN_ID, Role::Admin, token, true, now).1);
    }
    Ok(ops)
}

/// Does any admin token exist?
pub fn has_admin(reader: &StoreReader) -> Result<bool, StoreError> {
    Ok(list(reader)?.iter().any(|(_, r)| r.role == Role::Admin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_store::{Engine, SledEngine};
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, Arc<SledEngine>, StoreReader) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
        let reader = StoreReader::new(engine.clone());
        (dir, engine, reader)
    }

    #[test]
    fn minted_tokens_have_the_original_format_and_are_stored_hashed() {
        let (_dir, engine, reader) = store();
        let token = mint();
        assert!(agentcom_core::auth::is_token_format(&token));
        let (_, op) = create("a1", Role::Agent, &token, false, 1);
        engine.apply(&[op]).unwrap();
        let found = lookup(&reader, &token).unwrap().unwrap();
        assert_eq!(found.agent_id, "a1");
        assert_eq!(found.prefix, &token[..8]);
        let (key, _) = &list(&reader).unwrap()[0];
        assert_ne!(key.as_slice(), token.as_bytes());
        assert!(lookup(&reader, &mint()).unwrap().is_none());
    }

    #[test]
    fn revoke_removes_every_token_of_the_agent_only() {
        let (_dir, engine, reader) = store();
        let (t1, t2, t3) = (mint(), mint(), mint());
        engine
            .apply(&[
                create("a1", Role::Agent, &t1, false, 1).1,
                create("a1", Role::Agent, &t2, false, 2).1,
                create("b", Role::Agent, &t3, false, 3).1,
            ])
            .unwrap();
        engine.apply(&revoke(&reader, "a1").unwrap()).unwrap();
        assert!(lookup(&reader, &t1).unwrap().is_none());
        assert!(lookup(&reader, &t2).unwrap().is_none());
        assert!(lookup(&reader, &t3).unwrap().is_some());
    }

    #[test]
    fn bootstrap_replaces_the_previous_bootstrap_token() {
        let (_dir, engine, reader) = store();
        let (old, new) = (mint(), mint());
        engine.apply(&bootstrap(&reader, &old, 1).unwrap()).unwrap();
        assert!(has_admin(&reader).unwrap());
        assert!(
            bootstrap(&reader, &old, 2).unwrap().is_empty(),
            "idempotent"
        );
        engine.apply(&bootstrap(&reader, &new, 3).unwrap()).unwrap();
        assert!(lookup(&reader, &old).unwrap().is_none());
        assert_eq!(lookup(&reader, &new).unwrap().unwrap().role, Role::Admin);
    }
}
