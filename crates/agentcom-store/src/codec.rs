//! The versioned record encoding: one version byte, then the record as JSON.
//!
//! JSON keeps records readable in a backup and tolerant of added optional fields; the
//! version byte lets a later format coexist with this one.

use serde::{de::DeserializeOwned, Serialize};

use crate::{StoreError, Table};

/// The encoding version written by this build.
pub const CODEC_VERSION: u8 = 1;

/// Encode a record for storage.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![CODEC_VERSION];
    // Serialising plain data structs to a Vec cannot fail.
    serde_json::to_writer(&mut out, record).expect("records serialise");
    out
}

/// Decode a record read from `table`.
pub fn decode<T: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&CODEC_VERSION, body)) => {
            serde_json::from_slice(body).map_err(|e| StoreError::Decode {
                table,
                reason: e.to_string(),
            })
        }
        Some((&other, _)) => Err(StoreError::UnsupportedVersion(other)),
        None => Err(StoreError::Decode {
            table,
            reason: "empty record".into(),
        }),
    }
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
        assert!(decode::<Vec<u32>>(Table::HubMeta, &[CODEC_VERSION, b'{']).is_err());
    }
}
