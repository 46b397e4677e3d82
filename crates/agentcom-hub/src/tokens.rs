//! Token book-keeping shared by the auth actor and the offline `agentcom token` commands.
//!
//! Tokens are 64 lowercase hex characters (32 random bytes). Only their SHA-256 is stored,
//! as the key of the `auth_tokens` table; the raw token is shown once, to its creator.
//!
//! Every operation but [`list`] costs O(log n) in the number of tokens and sessions: two
//! indexes in `hub_meta`, written in the same batch as what they index, answer "the tokens
//! of this agent (or role)" and "the sessions that have expired" without a scan (issue 9
//! #9: registration and sign-in used to scan every token or session). A store written
//! before the indexes existed gets them at start ([`index_ops`]).

use std::collections::BTreeSet;

use agentcom_core::auth::Role;
use agentcom_core::Millis;
use agentcom_store::{
    decode_or_skip, encode, StoreError, StoreReader, Table, TokenRecord, WriteOp,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The agent id given to the token created from `AGENTCOM_ADMIN_TOKEN`.
pub const BOOTSTRAP_ADMIN_ID: &str = "admin";

/// `hub_meta` keys of the token index, one per token:
/// `token_index:<role>:<agent id length, u32 big-endian><agent id><token key>`, so the
/// tokens of one role, and of one agent in it, sort together.
const TOKEN_INDEX: &[u8] = b"token_index:";
/// `hub_meta` key present once the token and session indexes are complete.
const INDEX_VERSION: &[u8] = b"auth_index_version";

/// A fresh random token.
pub fn mint() -> String {
    hex::encode(crate::random_bytes::<32>())
}

/// The `auth_tokens` key of a token: its SHA-256, hex-encoded.
pub fn token_key(token: &str) -> Vec<u8> {
    sha256_hex(token.as_bytes())
}

/// The SHA-256 of `bytes` in lower-case hex. Every authenticated request computes one, so
/// it is written straight into its buffer (`hex::encode` builds its string a character at
/// a time: 1.5 % of the hub's samples in the lifecycle benchmark).
fn sha256_hex(bytes: &[u8]) -> Vec<u8> {
    let digest = Sha256::digest(bytes);
    let mut out = vec![0; digest.len() * 2];
    match hex::encode_to_slice(digest, &mut out) {
        Ok(()) => out,
        // Unreachable (the buffer is twice the digest's length); kept total all the same.
        Err(_) => hex::encode(digest).into_bytes(),
    }
}

/// The index prefix of every token of `role`, or of those of `role` and `agent_id`.
fn index_prefix(role: Role, agent_id: Option<&str>) -> Vec<u8> {
    let mut key = TOKEN_INDEX.to_vec();
    key.extend_from_slice(role.as_str().as_bytes());
    key.push(b':');
    if let Some(id) = agent_id {
        // Length-prefixed: the tokens of `bob` are not a prefix scan away from `bobby`'s.
        let len = u32::try_from(id.len()).unwrap_or(u32::MAX);
        key.extend_from_slice(&len.to_be_bytes());
        key.extend_from_slice(id.as_bytes());
    }
    key
}

fn index_key(role: Role, agent_id: &str, token_key: &[u8]) -> Vec<u8> {
    let mut key = index_prefix(role, Some(agent_id));
    key.extend_from_slice(token_key);
    key
}

/// The agent id and token key of an index key under `index_prefix(role, None)` (`rest`
/// is the part after it).
fn indexed_token(rest: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let (id, token_key) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
    Some((String::from_utf8(id.to_vec()).ok()?, token_key))
}

/// The writes that store a new token and its index entry.
pub fn create(
    agent_id: &str,
    role: Role,
    token: &str,
    bootstrap: bool,
    now: Millis,
) -> (TokenRecord, Vec<WriteOp>) {
    let record = TokenRecord {
        agent_id: agent_id.to_string(),
        role,
        prefix: token.chars().take(8).collect(),
        created_at: now,
        bootstrap,
    };
    let key = token_key(token);
    let ops = vec![
        WriteOp::Put {
            table: Table::HubMeta,
            key: index_key(role, agent_id, &key),
            value: encode(&()),
        },
        WriteOp::Put {
            table: Table::AuthTokens,
            key,
            value: encode(&record),
        },
    ];
    (record, ops)
}

/// Look a presented token up.
pub fn lookup(reader: &StoreReader, token: &str) -> Result<Option<TokenRecord>, StoreError> {
    reader.get_record(Table::AuthTokens, &token_key(token))
}

/// Every token record with its key, oldest first. Reads every token: for listings only.
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

/// The keys of the tokens of `agent_id` with `role`, as the index has them.
fn indexed_keys(
    reader: &StoreReader,
    agent_id: &str,
    role: Role,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let prefix = index_prefix(role, Some(agent_id));
    Ok(reader
        .scan_prefix(Table::HubMeta, &prefix)?
        .into_iter()
        .map(|(key, _)| key[prefix.len()..].to_vec())
        .collect())
}

/// Does `agent_id` hold a token, of any role?
pub fn is_registered(reader: &StoreReader, agent_id: &str) -> Result<bool, StoreError> {
    for role in Role::ALL {
        for key in indexed_keys(reader, agent_id, role)? {
            if reader.get(Table::AuthTokens, &key)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The writes that remove one token and its index entry. An index entry whose token is
/// already gone (moved to quarantine) is removed alone. The token's dashboard sessions
/// stay until they expire, dead (see [`session_lookup`]), so that a socket opened with one
/// is closed as "token revoked", not "signed out".
fn remove_token(
    reader: &StoreReader,
    role: Role,
    agent_id: &str,
    key: Vec<u8>,
) -> Result<Vec<WriteOp>, StoreError> {
    let mut ops = vec![WriteOp::Delete {
        table: Table::HubMeta,
        key: index_key(role, agent_id, &key),
    }];
    if reader.get(Table::AuthTokens, &key)?.is_some() {
        ops.push(WriteOp::Delete {
            table: Table::AuthTokens,
            key,
        });
    }
    Ok(ops)
}

/// The writes that revoke every token of `agent_id`, or only those of role `only` (which
/// ends their dashboard sessions). [`revoked_count`] tells how many tokens they remove.
pub fn revoke(
    reader: &StoreReader,
    agent_id: &str,
    only: Option<Role>,
) -> Result<Vec<WriteOp>, StoreError> {
    let mut ops = Vec::new();
    for role in Role::ALL
        .into_iter()
        .filter(|r| only.is_none_or(|o| o == *r))
    {
        for key in indexed_keys(reader, agent_id, role)? {
            ops.extend(remove_token(reader, role, agent_id, key)?);
        }
    }
    Ok(ops)
}

/// How many tokens the writes of [`revoke`] remove.
pub fn revoked_count(ops: &[WriteOp]) -> usize {
    ops.iter()
        .filter(|op| {
            matches!(
                op,
                WriteOp::Delete {
                    table: Table::AuthTokens,
                    ..
                }
            )
        })
        .count()
}

/// The writes that make `token` the bootstrap admin token, replacing an earlier one.
pub fn bootstrap(
    reader: &StoreReader,
    token: &str,
    now: Millis,
) -> Result<Vec<WriteOp>, StoreError> {
    let key = token_key(token);
    let mut ops = Vec::new();
    // Bootstrap tokens are admin tokens of `BOOTSTRAP_ADMIN_ID`.
    for old in indexed_keys(reader, BOOTSTRAP_ADMIN_ID, Role::Admin)? {
        if old == key {
            continue;
        }
        let was_bootstrap = reader
            .get(Table::AuthTokens, &old)?
            .and_then(|v| decode_or_skip::<TokenRecord>(Table::AuthTokens, &old, &v))
            .is_some_and(|r| r.bootstrap);
        if was_bootstrap {
            ops.extend(remove_token(reader, Role::Admin, BOOTSTRAP_ADMIN_ID, old)?);
        }
    }
    if lookup(reader, token)?.is_none() {
        ops.extend(create(BOOTSTRAP_ADMIN_ID, Role::Admin, token, true, now).1);
    }
    Ok(ops)
}

/// Does any admin token exist? Reads the admin tokens' index entries (admins are few).
pub fn has_admin(reader: &StoreReader) -> Result<bool, StoreError> {
    let prefix = index_prefix(Role::Admin, None);
    for (key, _) in reader.scan_prefix(Table::HubMeta, &prefix)? {
        if let Some((_, token_key)) = indexed_token(&key[prefix.len()..]) {
            if reader.get(Table::AuthTokens, token_key)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The agent ids that hold a token of `role` (for `agent`: the agents a broadcast is
/// meant for). Reads the index only, never a token record.
pub fn agents_with_role(reader: &StoreReader, role: Role) -> Result<BTreeSet<String>, StoreError> {
    let prefix = index_prefix(role, None);
    Ok(reader
        .scan_prefix(Table::HubMeta, &prefix)?
        .into_iter()
        .filter_map(|(key, _)| Some(indexed_token(&key[prefix.len()..])?.0))
        .collect())
}

/// The writes that complete the token and session indexes of a store written before they
/// existed (every token and session read once); none once they are complete.
pub fn index_ops(reader: &StoreReader) -> Result<Vec<WriteOp>, StoreError> {
    if reader.get(Table::HubMeta, INDEX_VERSION)?.is_some() {
        return Ok(Vec::new());
    }
    let mut ops: Vec<WriteOp> = list(reader)?
        .into_iter()
        .map(|(key, r)| WriteOp::Put {
            table: Table::HubMeta,
            key: index_key(r.role, &r.agent_id, &key),
            value: encode(&()),
        })
        .collect();
    for (key, bytes) in reader.scan_prefix(Table::HubMeta, SESSION_PREFIX)? {
        if let Some(session) = decode_or_skip::<DashboardSession>(Table::HubMeta, &key, &bytes) {
            ops.push(WriteOp::Put {
                table: Table::HubMeta,
                key: by_expiry_key(session.expires_at, &key[SESSION_PREFIX.len()..]),
                value: encode(&()),
            });
        }
    }
    ops.push(WriteOp::Put {
        table: Table::HubMeta,
        key: INDEX_VERSION.to_vec(),
        value: encode(&1u32),
    });
    Ok(ops)
}

/// The default lifetime of a dashboard session (`dashboard_session_ttl`).
pub const SESSION_TTL_MS: Millis = 7 * 24 * 3600 * 1000;
/// Dashboard sessions live in `hub_meta` under this prefix, keyed by their secret's hash
/// (the session's id).
const SESSION_PREFIX: &[u8] = b"dashboard_session:";
/// `hub_meta` index of sessions by expiry: `<prefix><expires_at big-endian><session id>`.
/// Each sign-in removes a few expired sessions through it.
const SESSIONS_BY_EXPIRY: &[u8] = b"dashboard_session_expiry:";
/// Expired sessions removed per sign-in: more than the one it adds, so they never pile
/// up, and few enough that a sign-in stays cheap.
const EXPIRED_PER_SIGN_IN: usize = 8;

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
    session_key_of_id(&sha256_hex(secret.as_bytes()))
}

fn session_key_of_id(id: &[u8]) -> Vec<u8> {
    [SESSION_PREFIX, id].concat()
}

fn by_expiry_key(expires_at: Millis, id: &[u8]) -> Vec<u8> {
    [SESSIONS_BY_EXPIRY, &expires_at.to_be_bytes(), id].concat()
}

/// The writes that remove session `id` and its index entry.
fn end_session(id: &[u8], expires_at: Millis) -> [WriteOp; 2] {
    [session_key_of_id(id), by_expiry_key(expires_at, id)].map(|key| WriteOp::Delete {
        table: Table::HubMeta,
        key,
    })
}

/// The writes that open a session for `token` (a fresh secret, returned) and drop up to
/// [`EXPIRED_PER_SIGN_IN`] sessions that have expired, oldest first.
pub fn open_session(
    reader: &StoreReader,
    token: &str,
    now: Millis,
    ttl: Millis,
) -> Result<(String, Vec<WriteOp>), StoreError> {
    let mut ops = Vec::new();
    let expired_before = by_expiry_key(now.saturating_add(1), b"");
    let expired = reader.range(
        Table::HubMeta,
        SESSIONS_BY_EXPIRY,
        &expired_before,
        EXPIRED_PER_SIGN_IN,
    )?;
    for (key, _) in expired {
        if let Some((at, id)) = key[SESSIONS_BY_EXPIRY.len()..].split_first_chunk::<8>() {
            ops.extend(end_session(id, Millis::from_be_bytes(*at)));
        }
    }
    let secret = mint();
    let session = DashboardSession {
        token_key: String::from_utf8(token_key(token)).expect("hex is UTF-8"),
        created_at: now,
        expires_at: now.saturating_add(ttl),
    };
    let key = session_key(&secret);
    ops.push(WriteOp::Put {
        table: Table::HubMeta,
        key: by_expiry_key(session.expires_at, &key[SESSION_PREFIX.len()..]),
        value: encode(&()),
    });
    ops.push(WriteOp::Put {
        table: Table::HubMeta,
        key,
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

/// The writes that end a session (none but a no-op delete if it is already gone).
pub fn close_session(reader: &StoreReader, secret: &str) -> Result<Vec<WriteOp>, StoreError> {
    let key = session_key(secret);
    let session = reader
        .get(Table::HubMeta, &key)?
        .and_then(|bytes| decode_or_skip::<DashboardSession>(Table::HubMeta, &key, &bytes));
    let id = &key[SESSION_PREFIX.len()..];
    Ok(match session {
        Some(s) => end_session(id, s.expires_at).to_vec(),
        None => vec![WriteOp::Delete {
            table: Table::HubMeta,
            key,
        }],
    })
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

    /// Stored keys must not change: a token's key is the lower-case hex SHA-256 of it.
    #[test]
    fn token_and_session_keys_are_the_hex_sha256_they_always_were() {
        assert_eq!(
            token_key("abc"),
            b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_vec()
        );
        for secret in ["", "abc", &"f".repeat(64)] {
            let old = hex::encode(Sha256::digest(secret.as_bytes()));
            assert_eq!(token_key(secret), old.as_bytes());
            assert_eq!(session_key(secret), session_key_of_id(old.as_bytes()));
        }
    }

    /// Writes of the session records themselves (not of their index entries).
    fn sessions_written(ops: &[WriteOp]) -> usize {
        ops.iter()
            .filter(|op| match op {
                WriteOp::Put { table, key, .. } | WriteOp::Delete { table, key } => {
                    *table == Table::HubMeta && key.starts_with(SESSION_PREFIX)
                }
            })
            .count()
    }

    /// The keys of every record about sessions: the sessions and both indexes.
    fn session_records(reader: &StoreReader) -> Vec<Vec<u8>> {
        [SESSION_PREFIX, SESSIONS_BY_EXPIRY]
            .into_iter()
            .flat_map(|p| reader.scan_prefix(Table::HubMeta, p).unwrap())
            .map(|(k, _)| k)
            .collect()
    }

    /// An engine that counts what is read through it: one per call, one per record.
    struct CountingEngine {
        inner: SledEngine,
        reads: std::sync::atomic::AtomicU64,
    }

    impl CountingEngine {
        fn count(&self, records: usize) {
            self.reads
                .fetch_add(1 + records as u64, std::sync::atomic::Ordering::Relaxed);
        }

        fn reads(&self) -> u64 {
            self.reads.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl Engine for CountingEngine {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let r = self.inner.get(table, key)?;
            self.count(r.iter().count());
            Ok(r)
        }
        fn scan_prefix(
            &self,
            table: Table,
            prefix: &[u8],
        ) -> Result<Vec<agentcom_store::Record>, StoreError> {
            let r = self.inner.scan_prefix(table, prefix)?;
            self.count(r.len());
            Ok(r)
        }
        fn range(
            &self,
            table: Table,
            from: &[u8],
            to: &[u8],
            limit: usize,
        ) -> Result<Vec<agentcom_store::Record>, StoreError> {
            let r = self.inner.range(table, from, to, limit)?;
            self.count(r.len());
            Ok(r)
        }
        fn last_with_prefix(
            &self,
            table: Table,
            prefix: &[u8],
        ) -> Result<Option<agentcom_store::Record>, StoreError> {
            let r = self.inner.last_with_prefix(table, prefix)?;
            self.count(r.iter().count());
            Ok(r)
        }
        fn for_each(
            &self,
            table: Table,
            f: &mut (dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + '_),
        ) -> Result<(), StoreError> {
            self.inner.for_each(table, &mut |k, v| {
                self.count(1);
                f(k, v)
            })
        }
        fn apply(&self, batch: &[WriteOp]) -> Result<(), StoreError> {
            self.inner.apply(batch)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush()
        }
        fn stats(&self, table: Table) -> agentcom_store::TableStats {
            self.inner.stats(table)
        }
        fn size_on_disk(&self) -> Result<u64, StoreError> {
            self.inner.size_on_disk()
        }
        fn was_recovered(&self) -> bool {
            self.inner.was_recovered()
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    /// Records read by each auth operation on a store holding `n` agents (each with a token
    /// and a dashboard session, half of them expired), in the order: registration check,
    /// registration, sign-in, sign-out, revocation, bootstrap, `has_admin`.
    fn reads_per_operation(n: usize) -> Vec<u64> {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(CountingEngine {
            inner: SledEngine::open(dir.path()).unwrap(),
            reads: Default::default(),
        });
        let reader = StoreReader::new(engine.clone());
        engine.apply(&index_ops(&reader).unwrap()).unwrap();
        engine
            .apply(&bootstrap(&reader, &mint(), 1).unwrap())
            .unwrap();
        let now = 10 * SESSION_TTL_MS;
        let mut batch = Vec::new();
        for i in 0..n {
            let token = mint();
            batch.extend(create(&format!("agent-{i}"), Role::Viewer, &token, false, 1).1);
            let at = if i % 2 == 0 { 1 } else { now };
            batch.extend(open_session(&reader, &token, at, SESSION_TTL_MS).unwrap().1);
        }
        engine.apply(&batch).unwrap();

        let mut costs = Vec::new();
        let mut measure = |f: &mut dyn FnMut() -> Vec<WriteOp>| {
            let before = engine.reads();
            let ops = f();
            costs.push(engine.reads() - before);
            engine.apply(&ops).unwrap();
        };
        let token = mint();
        measure(&mut || {
            assert!(is_registered(&reader, "agent-1").unwrap());
            Vec::new()
        });
        measure(&mut || {
            assert!(!is_registered(&reader, "newcomer").unwrap());
            create("newcomer", Role::Admin, &token, false, now).1
        });
        let mut secret = String::new();
        measure(&mut || {
            let (s, ops) = open_session(&reader, &token, now, SESSION_TTL_MS).unwrap();
            secret = s;
            ops
        });
        measure(&mut || close_session(&reader, &secret).unwrap());
        measure(&mut || revoke(&reader, "agent-3", None).unwrap());
        measure(&mut || bootstrap(&reader, &mint(), now).unwrap());
        measure(&mut || {
            assert!(has_admin(&reader).unwrap());
            Vec::new()
        });
        costs
    }

    #[test]
    fn no_auth_operation_reads_more_as_tokens_and_sessions_grow() {
        let small = reads_per_operation(20);
        let large = reads_per_operation(2_000);
        assert_eq!(
            small, large,
            "records read per operation at 20 agents, then at 2,000"
        );
    }

    #[test]
    fn the_indexes_answer_registration_roles_and_admins() {
        let (_dir, engine, reader) = store();
        engine.apply(&index_ops(&reader).unwrap()).unwrap();
        assert!(!has_admin(&reader).unwrap());
        let (bob, bobby, screen) = (mint(), mint(), mint());
        engine
            .apply(
                &[
                    create("bob", Role::Agent, &bob, false, 1).1,
                    create("bobby", Role::Agent, &bobby, false, 2).1,
                    create("screen", Role::Viewer, &screen, false, 3).1,
                ]
                .concat(),
            )
            .unwrap();
        assert!(is_registered(&reader, "bob").unwrap());
        assert!(is_registered(&reader, "screen").unwrap());
        assert!(!is_registered(&reader, "bo").unwrap());
        assert!(!has_admin(&reader).unwrap(), "viewers are not admins");
        assert_eq!(
            agents_with_role(&reader, Role::Agent).unwrap(),
            BTreeSet::from(["bob".to_string(), "bobby".to_string()])
        );
        // Revoking `bob` leaves `bobby`, whose id extends it.
        let ops = revoke(&reader, "bob", None).unwrap();
        assert_eq!(revoked_count(&ops), 1);
        engine.apply(&ops).unwrap();
        assert!(!is_registered(&reader, "bob").unwrap());
        assert!(is_registered(&reader, "bobby").unwrap());
        assert_eq!(
            agents_with_role(&reader, Role::Agent).unwrap(),
            BTreeSet::from(["bobby".to_string()])
        );
        engine
            .apply(&create("ops", Role::Admin, &mint(), false, 4).1)
            .unwrap();
        assert!(has_admin(&reader).unwrap());
    }

    #[test]
    fn a_store_written_before_the_indexes_gets_them_once() {
        let (_dir, engine, reader) = store();
        // The writes of the previous layout: records without index entries.
        let (agent, viewer) = (mint(), mint());
        let unindexed = |ops: Vec<WriteOp>| -> Vec<WriteOp> {
            ops.into_iter()
                .filter(|op| match op {
                    WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => {
                        !key.starts_with(TOKEN_INDEX) && !key.starts_with(SESSIONS_BY_EXPIRY)
                    }
                })
                .collect()
        };
        engine
            .apply(&unindexed(create("a1", Role::Agent, &agent, false, 1).1))
            .unwrap();
        engine
            .apply(&unindexed(
                create("screen", Role::Viewer, &viewer, false, 2).1,
            ))
            .unwrap();
        let (secret, ops) = open_session(&reader, &viewer, 1_000, SESSION_TTL_MS).unwrap();
        engine.apply(&unindexed(ops)).unwrap();
        assert!(!is_registered(&reader, "a1").unwrap());

        let ops = index_ops(&reader).unwrap();
        engine.apply(&ops).unwrap();
        assert!(index_ops(&reader).unwrap().is_empty(), "done once");
        assert!(is_registered(&reader, "a1").unwrap());
        assert_eq!(
            agents_with_role(&reader, Role::Agent).unwrap(),
            BTreeSet::from(["a1".to_string()])
        );
        // The old session is indexed: it is dropped once expired.
        assert!(session_lookup(&reader, &secret, 2_000).unwrap().is_some());
        assert_eq!(session_records(&reader).len(), 2);
        let (_, ops) =
            open_session(&reader, &agent, 1_000 + SESSION_TTL_MS, SESSION_TTL_MS).unwrap();
        engine.apply(&ops).unwrap();
        assert!(reader
            .get(Table::HubMeta, &session_key(&secret))
            .unwrap()
            .is_none());
        assert_eq!(session_records(&reader).len(), 2, "only the new session");
    }

    #[test]
    fn minted_tokens_have_the_original_format_and_are_stored_hashed() {
        let (_dir, engine, reader) = store();
        let token = mint();
        assert!(agentcom_core::auth::is_token_format(&token));
        let (_, ops) = create("a1", Role::Agent, &token, false, 1);
        engine.apply(&ops).unwrap();
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
            .apply(
                &[
                    create("a1", Role::Agent, &t1, false, 1).1,
                    create("a1", Role::Agent, &t2, false, 2).1,
                    create("b", Role::Agent, &t3, false, 3).1,
                ]
                .concat(),
            )
            .unwrap();
        let viewer = mint();
        engine
            .apply(&create("a1", Role::Viewer, &viewer, false, 4).1)
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
            .apply(&create("screen", Role::Viewer, &token, false, 1).1)
            .unwrap();
        let (secret, ops) = open_session(&reader, &token, 1_000, SESSION_TTL_MS).unwrap();
        assert_eq!(sessions_written(&ops), 1);
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
        engine
            .apply(&close_session(&reader, &secret).unwrap())
            .unwrap();
        assert!(session_lookup(&reader, &secret, 2_000).unwrap().is_none());
        // Revoking the token ends its sessions.
        let (second, ops) = open_session(&reader, &token, 3_000, SESSION_TTL_MS).unwrap();
        engine.apply(&ops).unwrap();
        engine
            .apply(&revoke(&reader, "screen", None).unwrap())
            .unwrap();
        assert!(session_lookup(&reader, &second, 3_001).unwrap().is_none());
        // Opening another drops the expired ones (the revoked token's among them).
        let other = mint();
        engine
            .apply(&create("ops", Role::Admin, &other, false, 4).1)
            .unwrap();
        let (old, ops) = open_session(&reader, &other, 5_000, SESSION_TTL_MS).unwrap();
        engine.apply(&ops).unwrap();
        let (_, ops) =
            open_session(&reader, &other, 5_000 + SESSION_TTL_MS, SESSION_TTL_MS).unwrap();
        assert_eq!(
            sessions_written(&ops),
            3,
            "the revoked token's and the expired session are dropped: {ops:?}"
        );
        engine.apply(&ops).unwrap();
        assert!(reader
            .get(Table::HubMeta, &session_key(&old))
            .unwrap()
            .is_none());
        assert_eq!(
            session_records(&reader).len(),
            2,
            "one session and its index entry"
        );
    }

    #[test]
    fn a_proof_lapses_at_revocation_sign_out_or_expiry() {
        use crate::Proof;
        let (_dir, engine, reader) = store();
        let token = mint();
        engine
            .apply(&create("screen", Role::Viewer, &token, false, 1).1)
            .unwrap();
        let (secret, ops) = open_session(&reader, &token, 1_000, SESSION_TTL_MS).unwrap();
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
        engine
            .apply(&close_session(&reader, &secret).unwrap())
            .unwrap();
        assert_eq!(
            lapsed(&reader, &by_session, 2_000).unwrap(),
            Some("signed out")
        );
        let (second, ops) = open_session(&reader, &token, 3_000, SESSION_TTL_MS).unwrap();
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
