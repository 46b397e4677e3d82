//! Per-agent message and connection counters in hourly buckets (reference §6.9).

use std::collections::BTreeMap;

use crate::Millis;

pub const HOUR_MS: Millis = 3_600_000;
/// A connected agent silent for less than this reads "active", otherwise "idle".
pub const ACTIVE_WITHIN_MS: Millis = 300_000;

/// The start of the hour bucket holding `t`.
pub fn bucket(t: Millis) -> Millis {
    t - t % HOUR_MS
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCounts {
    pub sent: u64,
    pub received: u64,
    pub connection_time_ms: u64,
}

/// One agent's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCounters {
    pub connected_at: Option<Millis>,
    pub last_active: Option<Millis>,
    pub last_seen: Option<Millis>,
    pub total_connections: u64,
    pub hours: BTreeMap<Millis, HourCounts>,
}

impl AgentCounters {
    fn hour(&mut self, now: Millis) -> &mut HourCounts {
        // Keep a day of buckets.
        let oldest = bucket(now).saturating_sub(23 * HOUR_MS);
        self.hours.retain(|b, _| *b >= oldest);
        self.hours.entry(bucket(now)).or_default()
    }

    pub fn connect(&mut self, now: Millis) {
        self.connected_at = Some(now);
        self.last_active = Some(now);
        self.total_connections += 1;
    }

    pub fn disconnect(&mut self, now: Millis) {
        if let Some(since) = self.connected_at.take() {
            self.hour(now).connection_time_ms += now.saturating_sub(since);
        }
        self.last_seen = Some(now);
    }

    pub fn sent(&mut self, now: Millis) {
        self.hour(now).sent += 1;
        self.last_active = Some(now);
    }

    pub fn received(&mut self, now: Millis) {
        self.hour(now).received += 1;
    }

    fn day(&self, now: Millis) -> impl Iterator<Item = &HourCounts> {
        let oldest = bucket(now).saturating_sub(23 * HOUR_MS);
        self.hours.range(oldest..).map(|(_, c)| c)
    }

    pub fn stats(&self, agent_id: &str, now: Millis) -> AgentStats {
        let connected = self.connected_at.is_some();
        let idle_ms = self.last_active.map(|t| now.saturating_sub(t));
        let status = match (connected, idle_ms) {
            (true, Some(idle)) if idle < ACTIVE_WITHIN_MS => "active",
            (true, _) => "idle",
            (false, _) => "offline",
        };
        let ongoing = self.connected_at.map_or(0, |t| now.saturating_sub(t));
        AgentStats {
            agent_id: agent_id.to_string(),
            connected,
            idle_ms,
            status,
            messages_sent_24h: self.day(now).map(|c| c.sent).sum(),
            messages_received_24h: self.day(now).map(|c| c.received).sum(),
            messages_sent_this_hour: self.hours.get(&bucket(now)).map_or(0, |c| c.sent),
            connection_time_24h_ms: self.day(now).map(|c| c.connection_time_ms).sum::<u64>()
                + ongoing,
            last_active: self.last_active,
            last_seen: self.last_seen,
            total_connections: self.total_connections,
        }
    }

    /// The last 24 hourly buckets, oldest first: `(bucket, sent, received)`.
    pub fn hourly(&self, now: Millis) -> Vec<(Millis, u64, u64)> {
        (0..24)
            .rev()
            .map(|i| {
                let b = bucket(now).saturating_sub(i * HOUR_MS);
                let c = self.hours.get(&b).copied().unwrap_or_default();
                (b, c.sent, c.received)
            })
            .collect()
    }
}

/// The original's `AgentStats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStats {
    pub agent_id: String,
    pub connected: bool,
    pub idle_ms: Option<Millis>,
    pub status: &'static str,
    pub messages_sent_24h: u64,
    pub messages_received_24h: u64,
    pub messages_sent_this_hour: u64,
    pub connection_time_24h_ms: u64,
    pub last_active: Option<Millis>,
    pub last_seen: Option<Millis>,
    pub total_connections: u64,
}

/// The original's analytics summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub total_agents: usize,
    pub agents_connected: usize,
    pub agents_active: usize,
    pub agents_idle: usize,
    pub agents_offline: usize,
    pub total_messages_24h: u64,
}

pub fn summarize(stats: &[AgentStats]) -> Summary {
    let count = |s: &str| stats.iter().filter(|a| a.status == s).count();
    Summary {
        total_agents: stats.len(),
        agents_connected: stats.iter().filter(|a| a.connected).count(),
        agents_active: count("active"),
        agents_idle: count("idle"),
        agents_offline: count("offline"),
        total_messages_24h: stats.iter().map(|a| a.messages_sent_24h).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_connections_and_messages() {
        let t0 = 10 * HOUR_MS + 5;
        let mut c = AgentCounters::default();
        c.connect(t0);
        c.sent(t0 + 1);
        c.received(t0 + 2);
        let s = c.stats("a", t0 + 10);
        assert!(s.connected);
        assert_eq!(
            (s.status, s.messages_sent_24h, s.messages_received_24h),
            ("active", 1, 1)
        );
        assert_eq!(c.stats("a", t0 + ACTIVE_WITHIN_MS + 10).status, "idle");
        c.disconnect(t0 + 100);
        let s = c.stats("a", t0 + 200);
        assert_eq!(
            (s.status, s.connection_time_24h_ms, s.total_connections),
            ("offline", 100, 1)
        );
        // A day later the counts have aged out.
        assert_eq!(c.stats("a", t0 + 25 * HOUR_MS).messages_sent_24h, 0);
    }

    #[test]
    fn hourly_has_24_buckets_oldest_first() {
        let now = 100 * HOUR_MS + 7;
        let mut c = AgentCounters::default();
        c.sent(now);
        let h = c.hourly(now);
        assert_eq!(h.len(), 24);
        assert_eq!(h[23], (100 * HOUR_MS, 1, 0));
        assert_eq!(h[0].0, 77 * HOUR_MS);
    }

    #[test]
    fn summary_counts_statuses() {
        let mut on = AgentCounters::default();
        on.connect(1);
        on.sent(1);
        let off = AgentCounters::default();
        let stats = vec![on.stats("a", 2), off.stats("b", 2)];
        let s = summarize(&stats);
        assert_eq!(
            (
                s.total_agents,
                s.agents_connected,
                s.agents_active,
                s.agents_offline,
                s.total_messages_24h
            ),
            (2, 1, 1, 1, 1)
        );
    }
}
