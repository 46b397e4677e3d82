//! AgentCom's HTTP front end on hyper 1: routing, authentication, JSON bodies, and the
//! agent and dashboard websocket endpoints.
//!
//! Architecture invariant: this is the only crate that knows the wire JSON. Handlers turn
//! requests into typed hub calls and typed results into the reference's shapes.

mod api;
mod connections;
mod frames;
mod handlers;
mod messaging;
mod metrics;
mod openapi;
mod push;
mod rate;
mod routes;
mod server;
mod storage;
mod tasks;
mod wire;
mod ws;

use std::time::Duration;

pub use routes::route_table;
pub use server::serve;

/// Limits and timers of the front end.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    /// A request body must arrive whole within this (else 408 and the connection closes).
    pub body_timeout: Duration,
    /// A connection must send a request's headers within this of opening, or of its
    /// previous answer (so this is also the keep-alive idle timeout); else it is closed.
    pub header_read_timeout: Duration,
    /// Connections open at once, websockets included. At the cap the connection idle the
    /// longest is closed to make room.
    pub max_connections: usize,
    pub max_ws_message_bytes: usize,
    pub ws_idle_timeout: Duration,
    /// Deadline of one websocket write and of the close handshake; a client that does not
    /// read within it loses its connection.
    pub ws_send_timeout: Duration,
    /// An agent websocket that has not identified within this long is closed (1008).
    pub ws_identify_timeout: Duration,
    /// Agent websockets open at once that have not identified; one more sheds the one
    /// waiting the longest (1013).
    pub max_unidentified: usize,
    /// Let anyone register an agent (`POST /api/onboard/register` without a token).
    pub open_registration: bool,
    /// Base URL handed to onboarded agents; from the `Host` header when `None`.
    pub public_url: Option<String>,
    /// Unauthenticated sign-ins and registrations one peer address may make; `None`:
    /// unlimited.
    pub anonymous_rate_limit: Option<agentcom_core::rate::Limit>,
}

/// The default limit of unauthenticated sign-ins and registrations per peer address: one
/// a second, 20 at once.
pub const DEFAULT_ANONYMOUS_RATE_LIMIT: (f64, u32) = (1.0, 20);

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 768,
            max_ws_message_bytes: 1 << 20,
            ws_idle_timeout: Duration::from_secs(60),
            ws_send_timeout: Duration::from_secs(10),
            ws_identify_timeout: Duration::from_secs(30),
            max_unidentified: 64,
            open_registration: false,
            public_url: None,
            anonymous_rate_limit: agentcom_core::rate::Limit::per_second(
                DEFAULT_ANONYMOUS_RATE_LIMIT.0,
                DEFAULT_ANONYMOUS_RATE_LIMIT.1,
            ),
        }
    }
}
