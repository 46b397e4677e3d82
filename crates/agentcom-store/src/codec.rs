//! The versioned record encoding: one version byte, a CRC-32 of the body, then the record
//! as JSON.
//!
//! JSON keeps records readable in a backup and tolerant of added optional fields; the
//! version byte lets a later format coexist with this one; the checksum makes damage to a
//! record's bytes an error instead of altered data (sled checks its own log, but not what
//! reaches it from elsewhere, such as a backup file or a bad copy).
//!
//! - version 1 (written before checksums): `[1] json`, still read;
//! - version 2: `[2] crc32(json), 4 bytes big-endian, json`.

use serde::{de::DeserializeOwned, Serialize};

use agentcom_core::json::{nesting_depth, DECODER_DEPTH_LIMIT, MAX_RECORD_DEPTH};

use crate::{StoreError, Table};

/// The encoding version written by this build.
pub const CODEC_VERSION: u8 = 2;
const V1: u8 = 1;
const HEADER: usize = 5;

/// Encode a record for storage. The store actor refuses to write a record that would not
/// read back ([`check_writable`]).
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![CODEC_VERSION, 0, 0, 0, 0];
    // Serialising plain data structs to a Vec cannot fail.
    serde_json::to_writer(&mut out, record).expect("records serialise");
    let crc = crc32fast::hash(&out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The JSON body of a stored record, its checksum verified.
fn body(table: Table, bytes: &[u8]) -> Result<&[u8], StoreError> {
    let corrupt = |reason: String| StoreError::Decode { table, reason };
    match bytes.split_first() {
        Some((&CODEC_VERSION, rest)) => {
            let (crc, body) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("record shorter than its header".into()))?;
            let (stored, actual) = (u32::from_be_bytes(*crc), crc32fast::hash(body));
            if stored != actual {
                return Err(corrupt(format!(
                    "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
                )));
            }
            Ok(body)
        }
        Some((&V1, body)) => Ok(body),
        Some((&other, _)) => Err(StoreError::UnsupportedVersion(other)),
        None => Err(corrupt("empty record".into())),
    }
}

/// Decode a record met while scanning many; one that cannot be read back is logged and
/// skipped (start-up moves it to quarantine), so that it never stops a load or a listing.
pub fn decode_or_skip<T: DeserializeOwned>(table: Table, key: &[u8], bytes: &[u8]) -> Option<T> {
    match decode(table, bytes) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::error!(
                %table,
                key = %String::from_utf8_lossy(key),
                error = %e,
                "record skipped: it cannot be read back (the next start moves it to quarantine)"
            );
            None
        }
    }
}

/// Are the record's bytes as they were written? (Header and checksum; says nothing of
/// whether the body decodes.)
pub fn body_intact(table: Table, bytes: &[u8]) -> Result<(), StoreError> {
    body(table, bytes).map(drop)
}

/// Decode a record read from `table`.
pub fn decode<T: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body(table, bytes)?).map_err(|e| StoreError::Decode {
        table,
        reason: e.to_string(),
    })
}

/// Can this stored value be read back? Its header and checksum hold and its body is JSON
/// within the decoder's limits (whatever type the reader then expects).
pub fn check_readable(table: Table, bytes: &[u8]) -> Result<(), StoreError> {
    let body = body(table, bytes)?;
    // Skipping a value (`IgnoredAny`) does not count levels: check them first.
    let depth = nesting_depth(body);
    if depth > DECODER_DEPTH_LIMIT {
        return Err(StoreError::Decode {
            table,
            reason: format!("nested {depth} levels deep, past the decoder's {DECODER_DEPTH_LIMIT}"),
        });
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| StoreError::Decode {
            table,
            reason: e.to_string(),
        })
}

/// May this encoded value be written? Refuses what could not be read back: a record
/// nested deeper than [`MAX_RECORD_DEPTH`] (serde_json stops at 127 levels).
pub fn check_writable(table: Table, bytes: &[u8]) -> Result<(), StoreError> {
    let depth = nesting_depth(body(table, bytes)?);
    if depth > MAX_RECORD_DEPTH {
        return Err(StoreError::Refused(format!(
            "a record for {table} nests {depth} levels deep; at most {MAX_RECORD_DEPTH} are stored"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_checks() {
        let bytes = encode(&vec![1u32, 2, 3]);
        assert_eq!(bytes[0], CODEC_VERSION);
        let back: Vec<u32> = decode(Table::HubMeta, &bytes).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
        assert!(matches!(
            decode::<Vec<u32>>(Table::HubMeta, &[9, b'[', b']']),
            Err(StoreError::UnsupportedVersion(9))
        ));
        assert!(decode::<Vec<u32>>(Table::HubMeta, &[]).is_err());
        assert!(decode::<Vec<u32>>(Table::HubMeta, &[CODEC_VERSION, 0, 0]).is_err());
    }

    #[test]
    fn version_1_records_still_read() {
        let back: Vec<u32> = decode(Table::HubMeta, b"\x01[4,5]").unwrap();
        assert_eq!(back, vec![4, 5]);
        assert!(decode::<Vec<u32>>(Table::HubMeta, b"\x01[4,").is_err());
    }

    #[test]
    fn a_flipped_byte_is_an_error_not_altered_data() {
        let bytes = encode(&serde_json::json!({"amount": 100}));
        for i in 1..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x04;
            assert!(
                decode::<serde_json::Value>(Table::HubMeta, &damaged).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn what_cannot_be_read_back_cannot_be_written() {
        let nest = |levels: usize| -> serde_json::Value {
            let text = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
            serde_json::from_str(&text).unwrap()
        };
        let ok = encode(&nest(MAX_RECORD_DEPTH));
        check_writable(Table::AgentMailbox, &ok).unwrap();
        check_readable(Table::AgentMailbox, &ok).unwrap();
        let deep = encode(&nest(MAX_RECORD_DEPTH + 1));
        assert!(matches!(
            check_writable(Table::AgentMailbox, &deep),
            Err(StoreError::Refused(_))
        ));
        // Past serde_json's limit a record would be unreadable: exactly what is refused.
        let unreadable = encode(&serde_json::json!({"wrap": nest(127)}));
        assert!(check_readable(Table::AgentMailbox, &unreadable).is_err());
        assert!(check_writable(Table::AgentMailbox, &unreadable).is_err());
    }
}
