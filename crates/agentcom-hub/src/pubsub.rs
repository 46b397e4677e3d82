//! The pubsub actor: publishes [`HubEvent`]s to the subscribers of a [`Topic`] in the
//! order they were published.
//!
//! Subscriptions live in a [`Subscriptions`] table shared with the hub, not in the actor's
//! state, so a restart of the pubsub actor keeps every live session subscribed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::events::{HubEvent, Topic};
use crate::service::Service;

/// A subscriber's callback. It returns `false` once the subscriber is gone, which removes
/// the subscription.
pub type Subscriber = Arc<dyn Fn(&Arc<HubEvent>) -> bool + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// Topic → subscribers. Subscribing is synchronous; publishing goes through the actor.
#[derive(Default)]
pub struct Subscriptions {
    next: AtomicU64,
    topics: Mutex<HashMap<Topic, Vec<(SubscriptionId, Subscriber)>>>,
}

impl Subscriptions {
    pub fn subscribe(&self, topic: Topic, subscriber: Subscriber) -> SubscriptionId {
        let id = SubscriptionId(self.next.fetch_add(1, Ordering::Relaxed));
        let mut topics = self.topics.lock().expect("subscriptions lock");
        topics.entry(topic).or_default().push((id, subscriber));
        id
    }

    pub fn unsubscribe(&self, topic: &Topic, id: SubscriptionId) {
        let mut topics = self.topics.lock().expect("subscriptions lock");
        if let Some(subs) = topics.get_mut(topic) {
            subs.retain(|(sid, _)| *sid != id);
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
    }

    fn subscribers(&self, topic: &Topic) -> Vec<(SubscriptionId, Subscriber)> {
        let topics = self.topics.lock().expect("subscriptions lock");
        topics.get(topic).cloned().unwrap_or_default()
    }

    pub fn count(&self, topic: &Topic) -> usize {
        let topics = self.topics.lock().expect("subscriptions lock");
        topics.get(topic).map_or(0, Vec::len)
    }
}

/// One actor's subscriptions, each delivered to the actor as a message. Each topic is
/// subscribed at most once, and every subscription ends when the set is dropped — with
/// the actor's state, whether it stopped or crashed.
pub struct Subscribed<M: ractor::Message> {
    table: Arc<Subscriptions>,
    actor: ActorRef<M>,
    wrap: fn(&Arc<HubEvent>) -> Option<M>,
    ids: HashMap<Topic, SubscriptionId>,
}

impl<M: ractor::Message> Subscribed<M> {
    /// Events become `wrap(event)`; `None` skips an event without a message.
    pub fn new(
        table: Arc<Subscriptions>,
        actor: ActorRef<M>,
        wrap: fn(&Arc<HubEvent>) -> Option<M>,
    ) -> Self {
        Subscribed {
            table,
            actor,
            wrap,
            ids: HashMap::new(),
        }
    }

    pub fn add(&mut self, topic: Topic) {
        self.add_when(topic, Arc::new(|| true));
    }

    /// As [`Subscribed::add`], but events published while `when()` is false are skipped
    /// without a message.
    pub fn add_when(&mut self, topic: Topic, when: Arc<dyn Fn() -> bool + Send + Sync>) {
        if self.ids.contains_key(&topic) {
            return;
        }
        let (actor, wrap) = (self.actor.clone(), self.wrap);
        let id = self.table.subscribe(
            topic.clone(),
            Arc::new(move |event| {
                if !when() {
                    return true;
                }
                match wrap(event) {
                    Some(msg) => actor.send_message(msg).is_ok(),
                    None => true,
                }
            }),
        );
        self.ids.insert(topic, id);
    }

    pub fn contains(&self, topic: &Topic) -> bool {
        self.ids.contains_key(topic)
    }

    pub fn remove(&mut self, topic: &Topic) {
        if let Some(id) = self.ids.remove(topic) {
            self.table.unsubscribe(topic, id);
        }
    }

    pub fn clear(&mut self) {
        for (topic, id) in self.ids.drain() {
            self.table.unsubscribe(&topic, id);
        }
    }
}

impl<M: ractor::Message> Drop for Subscribed<M> {
    fn drop(&mut self) {
        self.clear();
    }
}

pub enum PubSubMsg {
    Publish(Topic, Arc<HubEvent>),
}

pub struct PubSub;

impl Actor for PubSub {
    type Msg = PubSubMsg;
    type State = Arc<Subscriptions>;
    type Arguments = Arc<Subscriptions>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(subscriptions)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        subscriptions: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let PubSubMsg::Publish(topic, event) = msg;
        for (id, deliver) in subscriptions.subscribers(&topic) {
            if !deliver(&event) {
                subscriptions.unsubscribe(&topic, id);
            }
        }
        Ok(())
    }
}

/// A cheap handle for publishing events.
#[derive(Clone)]
pub struct Publisher {
    service: Service<PubSubMsg>,
}

impl Publisher {
    pub fn new(service: Service<PubSubMsg>) -> Self {
        Publisher { service }
    }

    /// Publish without waiting. An event published while the pubsub actor is being
    /// restarted waits for the new instance (briefly) in a background task.
    pub fn publish(&self, topic: Topic, event: HubEvent) {
        let msg = PubSubMsg::Publish(topic, Arc::new(event));
        match self.service.current() {
            Some(actor) => {
                if let Err(ractor::MessagingErr::SendErr(msg)) = actor.send_message(msg) {
                    self.publish_later(msg);
                }
            }
            None => self.publish_later(msg),
        }
    }

    fn publish_later(&self, msg: PubSubMsg) {
        let service = self.service.clone();
        tokio::spawn(async move {
            if let Err(e) = service.send(msg, crate::service::DEFAULT_WAIT).await {
                tracing::warn!(actor = "pubsub", error = %e, "event dropped");
            }
        });
    }
}
