//! Rate limits on HTTP requests, applied before a request is routed to its handler: a
//! request refused here is answered 429 and has no effect.
//!
//! A request with a credential that resolves (Bearer token, dashboard session cookie, or
//! `token` query parameter) draws on its caller's bucket, the one its websocket frames
//! draw on too (`agentcom_hub::rate::CallerLimits`). An unauthenticated request to a route
//! that costs the hub something whoever asks (dashboard sign-in, onboarding registration)
//! draws on its peer address's bucket. `/health` and `/metrics` are never limited: they
//! are what an operator looks at during a flood.

use std::net::IpAddr;

use agentcom_hub::rate::RateLimiter;

use crate::api::{known_caller, ApiError, Request};
use crate::server::App;

/// Peer addresses (or IPv6 /64 networks) with a bucket at once.
pub const MAX_PEERS: usize = 1 << 16;

/// The address of the peer a request came from, set on each request by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub IpAddr);

/// The limit on unauthenticated requests that cost something, per peer address.
pub type PeerLimits = RateLimiter<IpAddr>;

/// Which bucket, if any, a request of a route draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Never limited.
    Free,
    /// Its caller's bucket, if it has a credential; else not limited.
    Caller,
    /// Its caller's bucket, if it has a credential; else its peer address's bucket.
    CallerOrPeer,
}

/// Take a token for `req`, or the 429 to answer it with.
pub fn check(app: &App, metering: Metering, req: &Request) -> Result<(), ApiError> {
    let by_peer = metering == Metering::CallerOrPeer && app.peer_limits.is_on();
    if metering == Metering::Free || !(app.hub.rate_limits.is_on() || by_peer) {
        // Nothing to check: spare the credential lookup.
        return Ok(());
    }
    let result = match known_caller(&app.hub, req.headers(), req.uri()) {
        Some(who) => app.hub.rate_limits.check(&who),
        None if by_peer => match req.extensions().get::<PeerAddr>() {
            Some(PeerAddr(ip)) => app.peer_limits.check(&agentcom_core::rate::peer_key(*ip)),
            None => Ok(()),
        },
        None => Ok(()),
    };
    result.map_err(ApiError::rate_limited)
}
