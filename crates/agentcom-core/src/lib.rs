//! Domain types and pure logic of the AgentCom hub.
//!
//! Architecture invariant: this crate does no IO, starts no runtime and knows nothing of
//! the wire JSON. Everything here is plain data and plain functions, tested without tokio.

pub mod auth;
pub mod config;
pub mod supervision;

/// Integer Unix epoch milliseconds: the only time representation on the wire and on disk.
pub type Millis = u64;
