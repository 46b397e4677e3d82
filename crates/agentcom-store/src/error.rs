use crate::Table;

/// Everything that can go wrong below the store actor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {path} is in use by another process (is a hub running?)")]
    Locked { path: String },
    #[error("the store at {path} could not be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("record in {table} could not be decoded: {reason}")]
    Decode { table: Table, reason: String },
    #[error("record has unsupported encoding version {0}")]
    UnsupportedVersion(u8),
    /// A record whose bytes changed after they were written: the store is damaged.
    #[error("the store is damaged: {table}: {reason}")]
    Damaged { table: Table, reason: String },
    /// A write refused because what it would store could not be read back.
    #[error("write refused: {0}")]
    Refused(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}
