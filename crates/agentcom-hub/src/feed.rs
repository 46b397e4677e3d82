//! The dashboards' feed: the events of the topics a dashboard follows (`actors`, `tasks`,
//! `presence`, `backups`), gathered for one `dashboard_flush_interval` and published as one
//! batch on the `dashboard_feed` topic, which every dashboard session follows.
//!
//! One batch for every dashboard: each session receives one message per interval instead
//! of one per event, and the frame is encoded once and shared by every connection (see
//! `agentcom-http`'s `frames::encode_shared`). The interval starts with the first event
//! after a flush, as it did per session: an event waits at most the interval.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::events::{HubEvent, Topic};
use crate::pubsub::{Publisher, Subscribed, Subscriptions};

/// The topics a dashboard follows.
pub const DASHBOARD_TOPICS: [Topic; 4] =
    [Topic::Actors, Topic::Tasks, Topic::Presence, Topic::Backups];

pub enum FeedMsg {
    Event(Arc<HubEvent>),
    Flush,
}

pub struct FeedArgs {
    pub subscriptions: Arc<Subscriptions>,
    pub publisher: Publisher,
    pub flush_interval: Duration,
}

pub struct FeedState {
    publisher: Publisher,
    flush_interval: Duration,
    pending: Vec<Arc<HubEvent>>,
    /// Kept for its subscriptions, which end when the state is dropped.
    _subscribed: Subscribed<FeedMsg>,
}

pub struct DashboardFeed;

impl Actor for DashboardFeed {
    type Msg = FeedMsg;
    type State = FeedState;
    type Arguments = FeedArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: FeedArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Nothing is gathered while no dashboard follows the feed: with none open, the
        // feed costs the task lifecycle nothing but this check per event.
        let table = args.subscriptions.clone();
        let dashboards_open: Arc<dyn Fn() -> bool + Send + Sync> =
            Arc::new(move || table.count(&Topic::DashboardFeed) > 0);
        let mut subscribed = Subscribed::new(args.subscriptions, myself, |e| {
            Some(FeedMsg::Event(e.clone()))
        });
        for topic in DASHBOARD_TOPICS {
            subscribed.add_when(topic, dashboards_open.clone());
        }
        Ok(FeedState {
            publisher: args.publisher,
            flush_interval: args.flush_interval,
            pending: Vec::new(),
            _subscribed: subscribed,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FeedMsg::Event(event) => {
                if state.pending.is_empty() {
                    myself.send_after(state.flush_interval, || FeedMsg::Flush);
                }
                state.pending.push(event);
            }
            FeedMsg::Flush => {
                let batch = std::mem::take(&mut state.pending);
                if !batch.is_empty() {
                    state.publisher.publish(
                        Topic::DashboardFeed,
                        HubEvent::DashboardBatch(Arc::new(batch)),
                    );
                }
            }
        }
        Ok(())
    }
}
