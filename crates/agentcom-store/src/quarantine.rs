//! Quarantine: a record that cannot be read back is moved aside at start-up, so one bad
//! record never stops the hub or an actor from loading the rest.
//!
//! Two kinds of unreadable record are told apart:
//! - **damaged** (a checksum mismatch, an unknown encoding version): the bytes changed
//!   after they were written, so the store itself is suspect; start-up refuses and names
//!   the backup to restore ([`StoreError::Damaged`]);
//! - **poison** (intact bytes that do not decode as what the hub reads from that table:
//!   nested past the decoder's limit, a shape this build does not know): moved to the
//!   `quarantine` table with the reason, counted in storage health and `/metrics`.

use agentcom_core::message::Message;
use agentcom_core::task::Task;
use agentcom_core::Millis;
use serde::{Deserialize, Serialize};

use crate::backup::hex;
use crate::codec::{body_intact, check_readable};
use crate::{
    decode, encode, ChannelRecord, Engine, HistoryEntry, MailboxEntry, StoreError, Table,
    TokenRecord, WriteOp,
};

/// A record of `quarantine`, keyed by `<table>\0<original key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedRecord {
    pub table: String,
    /// The original key and value, hex-encoded (they may be anything).
    pub key_hex: String,
    pub value_hex: String,
    pub reason: String,
    pub quarantined_at: Millis,
}

/// Why `value`, stored in `table`, does not read back as what the hub reads there.
pub fn unreadable(table: Table, value: &[u8]) -> Option<String> {
    fn typed<T: serde::de::DeserializeOwned>(table: Table, value: &[u8]) -> Result<(), StoreError> {
        check_readable(table, value)?;
        decode::<T>(table, value).map(drop)
    }
    let result = match table {
        Table::TaskQueue | Table::TaskDeadLetter => typed::<Task>(table, value),
        Table::AgentMailbox => typed::<MailboxEntry>(table, value),
        Table::MessageHistory | Table::ChannelHistory => typed::<HistoryEntry>(table, value),
        Table::AgentChannels => typed::<ChannelRecord>(table, value),
        Table::ThreadMessages | Table::MailboxBodies => typed::<Message>(table, value),
        Table::ThreadReplies => typed::<Vec<String>>(table, value),
        Table::AuthTokens => typed::<TokenRecord>(table, value),
        Table::AgentcomConfig | Table::HubMeta | Table::Quarantine => check_readable(table, value),
    };
    result.err().map(|e| e.to_string())
}

/// The key of a quarantined record.
pub fn quarantine_key(table: Table, key: &[u8]) -> Vec<u8> {
    let mut out = table.name().as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(key);
    out
}

/// Check every record of every table: refuse a damaged store, move poison records to
/// `quarantine` (durably) and return them. Reads the whole store once.
pub fn sweep(engine: &dyn Engine, now: Millis) -> Result<Vec<QuarantinedRecord>, StoreError> {
    let mut found = Vec::new();
    let mut ops = Vec::new();
    for table in Table::ALL {
        engine.for_each(table, &mut |key, value| {
            if let Err(reason) = body_intact(table, value) {
                return Err(StoreError::Damaged {
                    table,
                    reason: format!("record {}: {reason}", String::from_utf8_lossy(key)),
                });
            }
            if table == Table::Quarantine {
                return Ok(());
            }
            if let Some(reason) = unreadable(table, value) {
                let record = QuarantinedRecord {
                    table: table.name().into(),
                    key_hex: hex(key),
                    value_hex: hex(value),
                    reason,
                    quarantined_at: now,
                };
                ops.push(WriteOp::Delete {
                    table,
                    key: key.to_vec(),
                });
                ops.push(WriteOp::Put {
                    table: Table::Quarantine,
                    key: quarantine_key(table, key),
                    value: encode(&record),
                });
                found.push(record);
            }
            Ok(())
        })?;
    }
    if !ops.is_empty() {
        // One batch: each record is either still in its table or in quarantine.
        engine.apply(&ops)?;
        engine.flush()?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SledEngine;

    fn put(table: Table, key: &[u8], value: Vec<u8>) -> WriteOp {
        WriteOp::Put {
            table,
            key: key.to_vec(),
            value,
        }
    }

    #[test]
    fn poison_records_move_to_quarantine_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        let mut deep = serde_json::json!([]);
        for _ in 0..130 {
            deep = serde_json::json!([deep]);
        }
        engine
            .apply(&[
                put(Table::AgentcomConfig, b"good", encode(&7u64)),
                put(Table::AgentcomConfig, b"deep", encode(&deep)),
                put(Table::AuthTokens, b"wrong-shape", encode(&"just a string")),
            ])
            .unwrap();
        let found = sweep(&engine, 42).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(engine
            .get(Table::AgentcomConfig, b"good")
            .unwrap()
            .is_some());
        assert!(engine
            .get(Table::AgentcomConfig, b"deep")
            .unwrap()
            .is_none());
        assert!(engine
            .get(Table::AuthTokens, b"wrong-shape")
            .unwrap()
            .is_none());
        assert_eq!(engine.stats(Table::Quarantine).record_count, 2);
        let kept = engine
            .get(
                Table::Quarantine,
                &quarantine_key(Table::AgentcomConfig, b"deep"),
            )
            .unwrap()
            .unwrap();
        let kept: QuarantinedRecord = decode(Table::Quarantine, &kept).unwrap();
        assert_eq!(kept.table, "agentcom_config");
        assert!(kept.reason.contains("127"), "{}", kept.reason);
        // A second start finds nothing more to move.
        assert!(sweep(&engine, 43).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_record_refuses_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        let mut bytes = encode(&serde_json::json!({"amount": 100}));
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        engine
            .apply(&[put(Table::HubMeta, b"k", bytes.clone())])
            .unwrap();
        match sweep(&engine, 1) {
            Err(StoreError::Damaged { table, .. }) => assert_eq!(table, Table::HubMeta),
            other => panic!("expected Damaged, got {other:?}"),
        }
        assert_eq!(engine.get(Table::HubMeta, b"k").unwrap().unwrap(), bytes);
    }
}
