//! The notifier (reference §6.13): the dashboard's Web Push identity and subscriptions.
//!
//! The VAPID key pair is generated once and kept in `hub_meta`, like the subscriptions, so
//! both survive restarts (the original regenerated the keys at every boot, which made every
//! subscription useless). Subscriptions are bounded. Delivering pushes needs the push
//! services on the internet and is not done here.

use agentcom_core::Millis;
use agentcom_store::{encode, StoreReader, Table, WriteOp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::service::Service;
use crate::store::{write_then, InOrder, StoreMsg};
use crate::{now_ms, HubError, CALL_TIMEOUT};

/// Subscriptions kept; the oldest are dropped beyond this.
pub const MAX_SUBSCRIPTIONS: usize = 1000;
const VAPID_KEY: &[u8] = b"vapid_keys";
const SUBSCRIPTIONS_KEY: &[u8] = b"push_subscriptions";

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
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source works");
        // A value at or above the group order (probability ~2^-32) is simply redrawn.
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            let public = secret.public_key().to_encoded_point(false);
            return VapidKeys {
                public: URL_SAFE_NO_PAD.encode(public.as_bytes()),
                private: URL_SAFE_NO_PAD.encode(bytes),
                created_at: now_ms(),
            };
        }
    }
}

pub enum NotifierMsg {
    PublicKey(RpcReplyPort<String>),
    /// Keep a subscription (a JSON document from the browser); answers once durable.
    Subscribe(String, RpcReplyPort<Result<(), HubError>>),
    Count(RpcReplyPort<usize>),
}

pub struct NotifierArgs {
    pub reader: StoreReader,
    pub store: Service<StoreMsg>,
}

pub struct NotifierState {
    store: Service<StoreMsg>,
    order: InOrder,
    keys: VapidKeys,
    subscriptions: Vec<String>,
}

pub struct Notifier;

impl Actor for Notifier {
    type Msg = NotifierMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
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
        let subscriptions = args
            .reader
            .get_record(Table::HubMeta, SUBSCRIPTIONS_KEY)?
            .unwrap_or_default();
        Ok(NotifierState {
            store: args.store,
            order: InOrder::new(),
            keys,
            subscriptions,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NotifierMsg::PublicKey(reply) => {
                let _ = reply.send(state.keys.public.clone());
            }
            NotifierMsg::Subscribe(subscription, reply) => {
                state.subscriptions.retain(|s| *s != subscription);
                state.subscriptions.push(subscription);
                let excess = state.subscriptions.len().saturating_sub(MAX_SUBSCRIPTIONS);
                state.subscriptions.drain(..excess);
                let op = WriteOp::Put {
                    table: Table::HubMeta,
                    key: SUBSCRIPTIONS_KEY.to_vec(),
                    value: encode(&state.subscriptions),
                };
                write_then(&state.store, &state.order, vec![op], reply, || ()).await;
            }
            NotifierMsg::Count(reply) => {
                let _ = reply.send(state.subscriptions.len());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_an_uncompressed_p256_point_and_a_scalar() {
        let keys = generate();
        let public = URL_SAFE_NO_PAD.decode(&keys.public).unwrap();
        assert_eq!((public.len(), public[0]), (65, 4));
        assert_eq!(URL_SAFE_NO_PAD.decode(&keys.private).unwrap().len(), 32);
        assert_ne!(generate().public, keys.public);
    }
}
