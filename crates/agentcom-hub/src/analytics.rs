//! Analytics: per-agent connection and message counters (reference §6.9), fed by every
//! connect, disconnect and routed message (F7).
//!
//! Like the original, the counters live in memory only; the table is shared so that a
//! restart of the actor keeps them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentcom_core::analytics::{AgentCounters, AgentStats};
use agentcom_core::Millis;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::now_ms;

#[derive(Default)]
pub struct AnalyticsTable {
    agents: Mutex<HashMap<String, AgentCounters>>,
}

impl AnalyticsTable {
    /// Stats of every agent seen, sorted by agent id.
    pub fn stats(&self, now: Millis) -> Vec<AgentStats> {
        let agents = self.agents.lock().expect("analytics lock");
        let mut stats: Vec<AgentStats> = agents.iter().map(|(id, c)| c.stats(id, now)).collect();
        stats.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        stats
    }

    /// The last 24 hourly buckets of one agent (zeros for an unknown agent).
    pub fn hourly(&self, agent_id: &str, now: Millis) -> Vec<(Millis, u64, u64)> {
        let agents = self.agents.lock().expect("analytics lock");
        agents
            .get(agent_id)
            .cloned()
            .unwrap_or_default()
            .hourly(now)
    }
}

pub enum AnalyticsMsg {
    Connected(String),
    Disconnected(String),
    /// A routed message: the sender, and the recipients that count as receiving it.
    Message {
        from: String,
        recipients: Vec<String>,
    },
}

pub struct Analytics;

impl Actor for Analytics {
    type Msg = AnalyticsMsg;
    type State = Arc<AnalyticsTable>;
    type Arguments = Arc<AnalyticsTable>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        table: Arc<AnalyticsTable>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(table)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        table: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        let mut agents = table.agents.lock().expect("analytics lock");
        match msg {
            AnalyticsMsg::Connected(agent) => agents.entry(agent).or_default().connect(now),
            AnalyticsMsg::Disconnected(agent) => agents.entry(agent).or_default().disconnect(now),
            AnalyticsMsg::Message { from, recipients } => {
                agents.entry(from).or_default().sent(now);
                for r in recipients {
                    agents.entry(r).or_default().received(now);
                }
            }
        }
        Ok(())
    }
}
