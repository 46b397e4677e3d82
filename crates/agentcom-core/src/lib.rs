//! Domain types and pure logic of the AgentCom hub.
//!
//! Architecture invariant: this crate does no IO, starts no runtime and knows nothing of
//! the wire JSON. Everything here is plain data and plain functions, tested without tokio.
//! (Message payloads are arbitrary JSON documents chosen by agents, so they are held as
//! `serde_json::Value`; that is data, not a wire format.)

pub mod analytics;
pub mod auth;
pub mod channel;
pub mod config;
pub mod dashboard;
pub mod fsm;
pub mod health;
pub mod json;
pub mod message;
pub mod metrics;
pub mod rate;
pub mod scheduler;
pub mod supervision;
pub mod task;
pub mod threads;
pub mod trends;

/// Integer Unix epoch milliseconds: the only time representation on the wire and on disk.
pub type Millis = u64;
