//! The reaper (reference §6.8): closes connections whose agent has been silent for longer
//! than `presence_ttl` (the original only logged them, F4).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::now_ms;
use crate::presence::PresenceTable;
use crate::sessions::{close_code, CloseReason, SessionMsg};

pub enum ReaperMsg {
    Sweep,
}

pub struct ReaperArgs {
    pub presence: Arc<PresenceTable>,
    pub interval: Duration,
    pub ttl: Duration,
}

pub struct Reaper;

impl Actor for Reaper {
    type Msg = ReaperMsg;
    type State = ReaperArgs;
    type Arguments = ReaperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReaperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.interval, || ReaperMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        _: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let cutoff = now_ms().saturating_sub(state.ttl.as_millis() as u64);
        for (agent_id, session) in state.presence.silent_since(cutoff) {
            tracing::warn!(actor = "reaper", %agent_id, "closing stale connection");
            let _ = session.send_message(SessionMsg::Close(CloseReason::new(
                close_code::STALE,
                "stale connection",
            )));
        }
        Ok(())
    }
}
