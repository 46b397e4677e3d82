//! The pubsub actor: per-subscriber publish order, and the end of delivery when a
//! subscription set is dropped or its actor stops.

mod common;

use std::sync::Arc;

use agentcom_hub::events::{HubEvent, Topic};
use agentcom_hub::pubsub::{PubSub, PubSubMsg, Publisher, Subscribed, Subscriptions};
use agentcom_hub::service::Slot;
use common::{EventLog, WAIT};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// An event that carries a number, so that order and loss are visible.
fn numbered(n: u64) -> HubEvent {
    HubEvent::BackupStarted { timestamp: n }
}

fn number(event: &HubEvent) -> Option<u64> {
    match event {
        HubEvent::BackupStarted { timestamp } => Some(*timestamp),
        _ => None,
    }
}

async fn pubsub() -> (Arc<Subscriptions>, Publisher, ActorRef<PubSubMsg>) {
    let subscriptions = Arc::new(Subscriptions::default());
    let (actor, _) = Actor::spawn(None, PubSub, subscriptions.clone())
        .await
        .expect("pubsub starts");
    let slot = Slot::new();
    slot.fill(actor.clone());
    (subscriptions, Publisher::new(slot.service("pubsub")), actor)
}

/// An actor subscribed through [`Subscribed`], which records the numbers it is delivered.
enum RecorderMsg {
    Got(u64),
    Seen(RpcReplyPort<Vec<u64>>),
}

struct Recorder;

impl Actor for Recorder {
    type Msg = RecorderMsg;
    type State = Vec<u64>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<RecorderMsg>,
        _: (),
    ) -> Result<Vec<u64>, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _: ActorRef<RecorderMsg>,
        msg: RecorderMsg,
        seen: &mut Vec<u64>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RecorderMsg::Got(n) => seen.push(n),
            RecorderMsg::Seen(reply) => {
                let _ = reply.send(seen.clone());
            }
        }
        Ok(())
    }
}

fn wrap(event: &Arc<HubEvent>) -> Option<RecorderMsg> {
    number(event).map(RecorderMsg::Got)
}

async fn seen(recorder: &ActorRef<RecorderMsg>) -> Vec<u64> {
    recorder
        .call(RecorderMsg::Seen, Some(WAIT))
        .await
        .expect("recorder runs")
        .success_or(())
        .expect("recorder answers")
}

/// Publish `n` on a marker topic and wait until `marker` receives it: the pubsub actor has
/// then handled every event published before it (it handles one message at a time).
async fn settle(publisher: &Publisher, marker: &mut EventLog, n: u64) {
    publisher.publish(Topic::Actors, numbered(n));
    marker
        .next_where("the marker event", |e| number(e).filter(|m| *m == n))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_the_events_in_publish_order() {
    let (subscriptions, publisher, _actor) = pubsub().await;
    let mut logs: Vec<EventLog> = (0..3)
        .map(|_| EventLog::subscribe(&subscriptions, Topic::Backups))
        .collect();
    let (recorder, _) = Actor::spawn(None, Recorder, ())
        .await
        .expect("recorder starts");
    let mut subscribed = Subscribed::new(subscriptions.clone(), recorder.clone(), wrap);
    subscribed.add(Topic::Backups);
    subscribed.add(Topic::Backups); // at most once per topic
    assert_eq!(subscriptions.count(&Topic::Backups), 4);

    let events = 2_000u64;
    for n in 0..events {
        publisher.publish(Topic::Backups, numbered(n));
    }
    // Events of another topic reach no one here.
    publisher.publish(Topic::Tasks, numbered(u64::MAX));
    for log in &mut logs {
        for n in 0..events {
            let got = log.next_where("the next event", number).await;
            assert_eq!(got, n, "a subscriber got events out of publish order");
        }
    }
    let mut marker = EventLog::subscribe(&subscriptions, Topic::Actors);
    settle(&publisher, &mut marker, 0).await;
    assert_eq!(seen(&recorder).await, (0..events).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_set_stops_delivery() {
    let (subscriptions, publisher, _actor) = pubsub().await;
    let mut marker = EventLog::subscribe(&subscriptions, Topic::Actors);
    let (recorder, _) = Actor::spawn(None, Recorder, ())
        .await
        .expect("recorder starts");
    let mut subscribed = Subscribed::new(subscriptions.clone(), recorder.clone(), wrap);
    subscribed.add(Topic::Backups);
    subscribed.add(Topic::Channel("ops".into()));

    publisher.publish(Topic::Backups, numbered(1));
    publisher.publish(Topic::Channel("ops".into()), numbered(2));
    settle(&publisher, &mut marker, 100).await;
    assert_eq!(seen(&recorder).await, vec![1, 2]);

    subscribed.remove(&Topic::Channel("ops".into()));
    publisher.publish(Topic::Channel("ops".into()), numbered(3));
    publisher.publish(Topic::Backups, numbered(4));
    settle(&publisher, &mut marker, 101).await;
    assert_eq!(seen(&recorder).await, vec![1, 2, 4]);

    drop(subscribed);
    assert_eq!(subscriptions.count(&Topic::Backups), 0);
    assert_eq!(subscriptions.count(&Topic::Channel("ops".into())), 0);
    publisher.publish(Topic::Backups, numbered(5));
    settle(&publisher, &mut marker, 102).await;
    assert_eq!(
        seen(&recorder).await,
        vec![1, 2, 4],
        "delivered after the drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_actor_stopped_is_removed_at_the_next_publish() {
    let (subscriptions, publisher, _actor) = pubsub().await;
    let mut marker = EventLog::subscribe(&subscriptions, Topic::Actors);
    let (recorder, handle) = Actor::spawn(None, Recorder, ())
        .await
        .expect("recorder starts");
    // Kept alive on purpose: only the actor's end may remove the subscription here.
    let mut kept = Subscribed::new(subscriptions.clone(), recorder.clone(), wrap);
    kept.add(Topic::Backups);
    recorder.stop(None);
    handle.await.expect("recorder stops");
    assert_eq!(subscriptions.count(&Topic::Backups), 1);

    publisher.publish(Topic::Backups, numbered(1));
    settle(&publisher, &mut marker, 100).await;
    assert_eq!(subscriptions.count(&Topic::Backups), 0);
    drop(kept);
}
