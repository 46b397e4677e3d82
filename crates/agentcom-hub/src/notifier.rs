//! The notifier (reference §6.13): the dashboard's Web Push identity, its subscriptions,
//! and the alerts it pushes to them.
//!
//! The VAPID key pair is generated once and kept in `hub_meta`, like the subscriptions, so
//! both survive restarts (the original regenerated the keys at every boot, which made every
//! subscription useless). Subscriptions are validated when given and bounded. Alerts, as
//! the original sent them: "Agent offline: <id>" when an agent leaves, and "Health
//! <status>: <conditions>" when the dashboard's health gets worse (checked every
//! `push_health_interval`). Each push is encrypted for its subscriber (RFC 8291), signed
//! with the VAPID key (RFC 8292) and sent from its own task, so a slow push service never
//! holds the notifier up; a subscription its push service calls gone (404, 410) is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentcom_core::dashboard::Status;
use agentcom_core::Millis;
use agentcom_store::{encode, StoreReader, Table, WriteOp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::dashboard::DashboardMsg;
use crate::events::{HubEvent, Topic};
use crate::pubsub::{Subscribed, Subscriptions};
use crate::push_client::PushClient;
use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::webpush::{self, Subscription};
use crate::{now_ms, HubError, CALL_TIMEOUT};

/// Subscriptions kept; the oldest are dropped beyond this.
pub const MAX_SUBSCRIPTIONS: usize = 1000;
const VAPID_KEY: &[u8] = b"vapid_keys";
const SUBSCRIPTIONS_KEY: &[u8] = b"push_subscriptions";
/// How long a push service keeps an alert for an offline browser.
const PUSH_TTL: &str = "3600";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VapidKeys {
    /// base64url (unpadded) of the 65-byte uncompressed P-256 public point.
    public: String,
    /// base64url (unpadded) of the 32-byte private scalar.
    private: String,
    created_at: Millis,
}

/// A fresh P-256 key pair.
fn generate() -> VapidKeys {
    let secret = webpush::random_secret();
    VapidKeys {
        public: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
        private: URL_SAFE_NO_PAD.encode(secret.to_bytes()),
        created_at: now_ms(),
    }
}

fn signing_key(keys: &VapidKeys) -> Result<SigningKey, ActorProcessingErr> {
    let bytes = URL_SAFE_NO_PAD.decode(&keys.private)?;
    SigningKey::from_slice(&bytes)
        .map_err(|_| "the stored VAPID private key is not a P-256 scalar".into())
}

pub enum NotifierMsg {
    PublicKey(RpcReplyPort<String>),
    /// Keep a subscription (replacing one with the same endpoint); answers once durable.
    Subscribe(Subscription, RpcReplyPort<Result<(), HubError>>),
    Count(RpcReplyPort<usize>),
    /// An agent's presence ended: alert every subscriber.
    AgentLeft(String),
    /// Time to compare the dashboard's health with the last one seen.
    HealthCheck,
    /// The push service says this subscription is gone (404 or 410): drop it.
    Gone(String),
}

pub struct NotifierArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
    pub subscriptions: Arc<Subscriptions>,
    pub dashboard: Service<DashboardMsg>,
    pub health_interval: Duration,
    /// The VAPID `sub` claim.
    pub subject: String,
    /// Set while the hub shuts down: the agents it disconnects are not alerted about.
    pub shutting_down: Arc<AtomicBool>,
}

pub struct NotifierState {
    store: Service<StoreMsg>,
    order: InOrder,
    keys: VapidKeys,
    signer: Arc<SigningKey>,
    subject: Arc<str>,
    subscriptions: Vec<Subscription>,
    dashboard: Service<DashboardMsg>,
    /// The health status last seen (the original started from ok, too).
    last_status: Status,
    client: PushClient,
    shutting_down: Arc<AtomicBool>,
    /// Kept for its subscription, which ends when the state is dropped.
    _subscribed: Subscribed<NotifierMsg>,
}

pub struct Notifier;

impl Actor for Notifier {
    type Msg = NotifierMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NotifierArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.store.call(StoreMsg::Barrier, CALL_TIMEOUT).await?;
        let keys = match args
            .reader
            .get_record::<VapidKeys>(Table::HubMeta, VAPID_KEY)?
        {
            Some(keys) => keys,
            None => {
                let keys = generate();
                let op = WriteOp::Put {
                    table: Table::HubMeta,
                    key: VAPID_KEY.to_vec(),
                    value: encode(&keys),
                };
                args.store
                    .call(|r| StoreMsg::Write(vec![op], r), CALL_TIMEOUT)
                    .await??;
                keys
            }
        };
        let stored: Vec<String> = args
            .reader
            .get_record(Table::HubMeta, SUBSCRIPTIONS_KEY)?
            .unwrap_or_default();
        // Subscriptions stored before they were validated may be unusable: skip those.
        let subscriptions = stored
            .iter()
            .filter_map(|text| {
                let parsed = serde_json::from_str::<Value>(text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| Subscription::from_json(&v, true));
                parsed
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "skipping a stored push subscription"),
                    )
                    .ok()
            })
            .collect();
        let mut subscribed =
            Subscribed::new(args.subscriptions, myself.clone(), |event| {
                match event.as_ref() {
                    HubEvent::AgentLeft(agent_id) => Some(NotifierMsg::AgentLeft(agent_id.clone())),
                    _ => None,
                }
            });
        subscribed.add(Topic::Presence);
        myself.send_interval(args.health_interval, || NotifierMsg::HealthCheck);
        Ok(NotifierState {
            store: args.store,
            order: InOrder::new(),
            signer: Arc::new(signing_key(&keys)?),
            keys,
            subject: args.subject.into(),
            subscriptions,
            dashboard: args.dashboard,
            last_status: Status::Ok,
            client: PushClient::default(),
            shutting_down: args.shutting_down,
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
            NotifierMsg::PublicKey(reply) => {
                let _ = reply.send(state.keys.public.clone());
            }
            NotifierMsg::Subscribe(subscription, reply) => {
                state
                    .subscriptions
                    .retain(|s| s.endpoint != subscription.endpoint);
                state.subscriptions.push(subscription);
                let excess = state.subscriptions.len().saturating_sub(MAX_SUBSCRIPTIONS);
                state.subscriptions.drain(..excess);
                state.save(reply).await;
            }
            NotifierMsg::Count(reply) => {
                let _ = reply.send(state.subscriptions.len());
            }
            NotifierMsg::AgentLeft(agent_id) => {
                // A hub shutting down closes every connection itself: not an alert.
                if !state.shutting_down.load(Ordering::SeqCst) {
                    state.push_all(&myself, &format!("Agent offline: {agent_id}"));
                }
            }
            NotifierMsg::HealthCheck => {
                let Ok(snapshot) = state
                    .dashboard
                    .call(DashboardMsg::Snapshot, CALL_TIMEOUT)
                    .await
                else {
                    return Ok(());
                };
                let (before, now) = (state.last_status, snapshot.status);
                state.last_status = now;
                if now > before {
                    let body = format!(
                        "Health {}: {}",
                        now.as_str(),
                        snapshot.conditions.join("; ")
                    );
                    state.push_all(&myself, &body);
                }
            }
            NotifierMsg::Gone(endpoint) => {
                let before = state.subscriptions.len();
                state.subscriptions.retain(|s| s.endpoint != endpoint);
                if state.subscriptions.len() != before {
                    tracing::info!(%endpoint, "push subscription gone; dropped");
                    state.save(ractor::concurrency::oneshot().0.into()).await;
                }
            }
        }
        Ok(())
    }
}

/// The alert as the service worker reads it, shortened (at a character boundary, with
/// "…") so that the JSON fits in one push.
fn alert_payload(body: &str) -> String {
    let payload = |body: &str| {
        json!({"title": "AgentCom Alert", "body": body, "icon": "/favicon.ico"}).to_string()
    };
    let mut text = payload(body);
    let mut keep = body.len();
    while text.len() > webpush::MAX_PAYLOAD && keep > 0 {
        // Drop at least the excess (escapes may make it more), then back to a boundary.
        keep = keep.saturating_sub((text.len() - webpush::MAX_PAYLOAD).max(1));
        while !body.is_char_boundary(keep) {
            keep -= 1;
        }
        text = payload(&format!("{}…", &body[..keep]));
    }
    text
}

impl NotifierState {
    async fn save(&self, reply: RpcReplyPort<Result<(), HubError>>) {
        let stored: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| s.to_json().to_string())
            .collect();
        let op = WriteOp::Put {
            table: Table::HubMeta,
            key: SUBSCRIPTIONS_KEY.to_vec(),
            value: encode(&stored),
        };
        write_then(&self.store, &self.order, vec![op], reply, || ()).await;
    }

    /// Send the alert to every subscriber, each from its own task.
    fn push_all(&self, myself: &ActorRef<NotifierMsg>, body: &str) {
        let payload: Arc<[u8]> = alert_payload(body).into_bytes().into();
        for subscription in &self.subscriptions {
            let (subscription, payload) = (subscription.clone(), payload.clone());
            let (signer, subject) = (self.signer.clone(), self.subject.clone());
            let (client, myself) = (self.client.clone(), myself.clone());
            tokio::spawn(async move {
                let endpoint = subscription.endpoint.clone();
                let Some(authorization) =
                    webpush::vapid_authorization(&signer, &endpoint, &subject, now_ms() / 1000)
                else {
                    return;
                };
                let body = webpush::encrypt(&payload, &subscription);
                let headers = [
                    ("authorization", authorization),
                    ("content-encoding", "aes128gcm".to_string()),
                    ("content-type", "application/octet-stream".to_string()),
                    ("ttl", PUSH_TTL.to_string()),
                    ("urgency", "high".to_string()),
                ];
                match client.post(&endpoint, &headers, body).await {
                    Ok(200..=299) => tracing::debug!(%endpoint, "push sent"),
                    Ok(404 | 410) => {
                        let _ = myself.send_message(NotifierMsg::Gone(endpoint));
                    }
                    Ok(status) => tracing::warn!(%endpoint, status, "push refused"),
                    Err(error) => tracing::warn!(%endpoint, %error, "push failed"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_alerts_are_shortened_to_valid_json_that_fits_one_push() {
        let short = alert_payload("Agent offline: a1");
        assert_eq!(
            serde_json::from_str::<Value>(&short).unwrap(),
            json!({"title": "AgentCom Alert", "body": "Agent offline: a1", "icon": "/favicon.ico"})
        );
        let names: Vec<String> = (0..2000).map(|i| format!("agent-ü-{i}")).collect();
        let long = format!("Health warning: Agent offline: {}", names.join(", "));
        let text = alert_payload(&long);
        assert!(text.len() <= webpush::MAX_PAYLOAD, "{}", text.len());
        let v: Value = serde_json::from_str(&text).unwrap();
        let body = v["body"].as_str().unwrap();
        assert!(body.ends_with('…') && long.starts_with(body.trim_end_matches('…')));
        assert!(
            body.len() > webpush::MAX_PAYLOAD / 2,
            "not cut more than needed"
        );
    }

    #[test]
    fn keys_are_an_uncompressed_p256_point_and_a_scalar() {
        let keys = generate();
        let public = URL_SAFE_NO_PAD.decode(&keys.public).unwrap();
        assert_eq!((public.len(), public[0]), (65, 4));
        assert_eq!(URL_SAFE_NO_PAD.decode(&keys.private).unwrap().len(), 32);
        assert_ne!(generate().public, keys.public);
    }
}
