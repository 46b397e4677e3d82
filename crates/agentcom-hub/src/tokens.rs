//! Token book-keeping shared by the auth actor and the offline `agentcom token` commands.
//!
//! Tokens are 64 lowercase hex characters (32 random bytes). Only their SHA-256 is stored,
//! as the key of the `auth_tokens` table; the raw token is shown once, to its creator.

use agentcom_core::auth::Role;
use agentcom_core::Millis;
use agentcom_store::{
    decode_or_skip, encode, StoreError, StoreReader, Table, TokenRecord, WriteOp,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The agent id given to the token created from `AGENTCOM_ADMIN_TOKEN`.
pub const BOOTSTRAP_ADMIN_ID: &str = "admin";

/// A fresh random token.
pub fn mint() -> String {
    hex::encode(crate::random_bytes::<32>())
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
    reader.get_record(Table::AuthTokens, &token_key(token))
}

/// Every token record with its key, oldest first.
pub fn list(reader: &StoreReader) -> Result<Vec<(Vec<u8>, TokenRecord)>, StoreError> {
    let mut out = reader
        .scan_prefix(Table::AuthTokens, b"")?
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                k.clone(),
                decode_or_skip::<TokenRecord>(Table::AuthTokens, &k, &v)?,
            ))
        })
        .collect::<Vec<_>>();
    out.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// The writes that revoke every token of `agent_id`, or only those of role `only`.
pub fn revoke(
    reader: &StoreReader,
    agent_id: &str,
    only: Option<Role>,
) -> Result<Vec<WriteOp>, StoreError> {
    Ok(list(reader)?
        .into_iter()
        .filter(|(_, r)| r.agent_id == agent_id && only.is_none_or(|role| r.role == role))
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

/// How long a dashboard sign-in lasts.
pub const SESSION_TTL_MS: Millis = 7 * 24 * 3600 * 1000;
/// Dashboard sessions live in `hub_meta` under this prefix, keyed by their secret's hash.
const SESSION_PREFIX: &[u8] = b"dashboard_session:";

/// A dashboard sign-in: the browser holds a random secret in its cookie, never the token
/// itself; the store holds the secret's hash and which token it stands for. Revoking the
/// token, signing out or expiry ends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardSession {
    /// The `auth_tokens` key (hash) of the token used to sign in.
    pub token_key: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// The `hub_meta` key of a dashboard session.
pub fn session_key(secret: &str) -> Vec<u8> {
    let mut key = SESSION_PREFIX.to_vec();
    key.extend_from_slice(hex::encode(Sha256::digest(secret.as_bytes())).as_bytes());
    key
}

/// The writes that open a session for `token` (a fresh secret, returned) and drop the
/// sessions that have expired or whose token is gone.
pub fn open_session(
    reader: &StoreReader,
    token: &str,
    now: Millis,
) -> Result<(String, Vec<WriteOp>), StoreError> {
    let mut ops = Vec::new();
    for (key, bytes) in reader.scan_prefix(Table::HubMeta, SESSION_PREFIX)? {
        let Some(session) = decode_or_skip::<DashboardSession>(Table::HubMeta, &key, &bytes) else {
            continue;
        };
        let token_gone = reader
            .get(Table::AuthTokens, session.token_key.as_bytes())?
            .is_none();
        if session.expires_at <= now || token_gone {
            ops.push(WriteOp::Delete {
                table: Table::HubMeta,
                key,
            });
        }
    }
    let secret = mint();
    let session = DashboardSession {
        token_key: String::from_utf8(token_key(token)).expect("hex is UTF-8"),
        created_at: now,
        expires_at: now + SESSION_TTL_MS,
    };
    ops.push(WriteOp::Put {
        table: Table::HubMeta,
        key: session_key(&secret),
        value: encode(&session),
    });
    Ok((secret, ops))
}

/// The token record a session secret stands for, if the session is open and unexpired
/// and its token still exists.
pub fn session_lookup(
    reader: &StoreReader,
    secret: &str,
    now: Millis,
) -> Result<Option<TokenRecord>, StoreError> {
    let Some(session) =
        reader.get_record::<DashboardSession>(Table::HubMeta, &session_key(secret))?
    else {
        return Ok(None);
    };
    if session.expires_at <= now {
        return Ok(None);
    }
    reader.get_record(Table::AuthTokens, session.token_key.as_bytes())
}

/// Why `proof` no longer holds (a close reason), or `None` while it does.
pub fn lapsed(
    reader: &StoreReader,
    proof: &crate::Proof,
    now: Millis,
) -> Result<Option<&'static str>, StoreError> {
    let token_key = match proof {
        crate::Proof::Token(key) => key.clone(),
        crate::Proof::DashboardSession(key) => {
            let Some(session) = reader.get_record::<DashboardSession>(Table::HubMeta, key)? else {
                return Ok(Some("signed out"));
            };
            if session.expires_at <= now {
                return Ok(Some("session expired"));
            }
            session.token_key.into_bytes()
        }
    };
    Ok(reader
        .get(Table::AuthTokens, &token_key)?
        .is_none()
        .then_some("token revoked"))
}

/// The write that ends a session.
pub fn close_session(secret: &str) -> WriteOp {
    WriteOp::Delete {
        table: Table::HubMeta,
        key: session_key(secret),
    }
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
        let viewer = mint();
        engine
            .apply(&[create("a1", Role::Viewer, &viewer, false, 4).1])
            .unwrap();
        engine
            .apply(&revoke(&reader, "a1", Some(Role::Viewer)).unwrap())
            .unwrap();
        assert!(lookup(&reader, &viewer).unwrap().is_none());
        assert!(
            lookup(&reader, &t1).unwrap().is_some(),
            "only the role asked for"
        );
        engine.apply(&revoke(&reader, "a1", None).unwrap()).unwrap();
        assert!(lookup(&reader, &t1).unwrap().is_none());
        assert!(lookup(&reader, &t2).unwrap().is_none());
        assert!(lookup(&reader, &t3).unwrap().is_some());
    }

    #[test]
    fn sessions_stand_for_their_token_until_closed_expired_or_revoked() {
        let (_dir, engine, reader) = store();
        let token = mint();
        engine
            .apply(&[create("screen", Role::Viewer, &token, false, 1).1])
            .unwrap();
        let (secret, ops) = open_session(&reader, &token, 1_000).unwrap();
        assert_eq!(ops.len(), 1);
        engine.apply(&ops).unwrap();
        assert_ne!(secret, token);
        let found = session_lookup(&reader, &secret, 2_000).unwrap().unwrap();
        assert_eq!(
            (found.agent_id.as_str(), found.role),
            ("screen", Role::Viewer)
        );
        assert!(
            session_lookup(&reader, &token, 2_000).unwrap().is_none(),
            "a token is not a session"
        );
        assert!(session_lookup(&reader, &mint(), 2_000).unwrap().is_none());
        // Expiry.
        let end = 1_000 + SESSION_TTL_MS;
        assert!(session_lookup(&reader, &secret, end - 1).unwrap().is_some());
        assert!(session_lookup(&reader, &secret, end).unwrap().is_none());
        // The secret is stored hashed only.
        let stored = reader.scan_prefix(Table::HubMeta, SESSION_PREFIX).unwrap();
        assert_eq!(stored.len(), 1);
        let raw = format!("{:?}", stored);
        assert!(!raw.contains(&secret) && !raw.contains(&token));
        // Closing.
        engine.apply(&[close_session(&secret)]).unwrap();
        assert!(session_lookup(&reader, &secret, 2_000).unwrap().is_none());
        // Revoking the token ends its sessions; opening another prunes the dead ones.
        let (second, ops) = open_session(&reader, &token, 3_000).unwrap();
        engine.apply(&ops).unwrap();
        engine
            .apply(&revoke(&reader, "screen", None).unwrap())
            .unwrap();
        assert!(session_lookup(&reader, &second, 3_001).unwrap().is_none());
        let other = mint();
        engine
            .apply(&[create("ops", Role::Admin, &other, false, 4).1])
            .unwrap();
        let (_, ops) = open_session(&reader, &other, end + 10).unwrap();
        assert_eq!(
            ops.len(),
            2,
            "the revoked token's session is dropped: {ops:?}"
        );
    }

    #[test]
    fn a_proof_lapses_at_revocation_sign_out_or_expiry() {
        use crate::Proof;
        let (_dir, engine, reader) = store();
        let token = mint();
        engine
            .apply(&[create("screen", Role::Viewer, &token, false, 1).1])
            .unwrap();
        let (secret, ops) = open_session(&reader, &token, 1_000).unwrap();
        engine.apply(&ops).unwrap();
        let by_token = Proof::Token(token_key(&token));
        let by_session = Proof::DashboardSession(session_key(&secret));
        assert_eq!(lapsed(&reader, &by_token, 2_000).unwrap(), None);
        assert_eq!(lapsed(&reader, &by_session, 2_000).unwrap(), None);
        let end = 1_000 + SESSION_TTL_MS;
        assert_eq!(
            lapsed(&reader, &by_session, end).unwrap(),
            Some("session expired")
        );
        engine.apply(&[close_session(&secret)]).unwrap();
        assert_eq!(
            lapsed(&reader, &by_session, 2_000).unwrap(),
            Some("signed out")
        );
        let (second, ops) = open_session(&reader, &token, 3_000).unwrap();
        engine.apply(&ops).unwrap();
        engine
            .apply(&revoke(&reader, "screen", None).unwrap())
            .unwrap();
        let by_second = Proof::DashboardSession(session_key(&second));
        assert_eq!(
            lapsed(&reader, &by_second, 3_001).unwrap(),
            Some("token revoked")
        );
        assert_eq!(
            lapsed(&reader, &by_token, 3_001).unwrap(),
            Some("token revoked")
        );
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
