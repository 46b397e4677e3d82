//! Websocket cases: every frame type the hub handles (`crates/agentcom-http/src/frames.rs`)
//! from a valid template, mutated, sent on an identified agent socket, on an agent socket
//! that has not identified, or on a dashboard socket; plus text that is not JSON, binary
//! frames and frames that break the protocol.

use std::fmt;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::input::{self, Fixtures, Mutation};

/// A valid frame of every type an agent may send.
fn agent_templates() -> Vec<Value> {
    vec![
        json!({"type": "identify", "agent_id": "wsagent", "token": "$WSAGENT", "name": "Fuzz", "status": "ready", "capabilities": ["code"]}),
        json!({"type": "identify", "agent_id": "bob", "token": "$BOB"}),
        json!({"type": "message", "to": "bob", "message_type": "chat", "payload": {"text": "hi"}, "reply_to": "$MSG0"}),
        json!({"type": "message", "payload": {"text": "to everyone"}}),
        json!({"type": "status", "status": "busy"}),
        json!({"type": "list_agents"}),
        json!({"type": "channel_subscribe", "channel": "dev"}),
        json!({"type": "channel_unsubscribe", "channel": "dev"}),
        json!({"type": "channel_publish", "channel": "dev", "payload": {"x": 1}, "message_type": "chat", "reply_to": null}),
        json!({"type": "channel_history", "channel": "dev", "limit": 10, "since": 0}),
        json!({"type": "list_channels"}),
        json!({"type": "ping"}),
        json!({"type": "task_accepted", "task_id": "$TASK0"}),
        json!({"type": "task_progress", "task_id": "$TASK0"}),
        json!({"type": "task_recovering", "task_id": "$TASK0"}),
        json!({"type": "task_complete", "task_id": "$TASK0", "generation": "$GEN0", "result": {"ok": true}, "tokens_used": 10}),
        json!({"type": "task_failed", "task_id": "$TASK0", "generation": "$GEN0", "error": "boom"}),
        json!({"type": "task_rejected", "task_id": "$TASK0", "reason": "busy"}),
        json!({"type": "no_such_type"}),
        json!({"agent_id": "wsagent"}),
    ]
}

/// A valid frame of every type a dashboard may send.
fn dashboard_templates() -> Vec<Value> {
    vec![
        json!({"type": "request_snapshot"}),
        json!({"type": "retry_task", "task_id": "$DEAD"}),
        json!({"type": "retry_task", "task_id": "$TASK1"}),
        json!({"type": "ping"}),
    ]
}

/// Which socket the frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The fuzzer's agent socket, identified as `wsagent` (kept across cases).
    Agent,
    /// A fresh `/ws` socket that has not identified.
    Unidentified,
    /// A fresh `/ws/dashboard` socket opened with this fixture's token.
    Dashboard(&'static str),
}

/// What is sent.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A template, mutated, as a text frame.
    Json(Value, Vec<Mutation>),
    /// Text that is not JSON.
    Broken(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A text frame over the 1 MiB message limit.
    Oversized,
    /// A frame that breaks RFC 6455 (the connection ends).
    Protocol(Violation),
}

#[derive(Debug, Clone, Copy)]
pub enum Violation {
    /// A text frame whose payload is not UTF-8.
    InvalidUtf8,
    /// A data frame with a reserved opcode.
    ReservedOpcode,
    /// A text frame with RSV1 set (no extension was negotiated).
    ReservedBit,
    /// A continuation frame with no message to continue.
    LoneContinuation,
}

#[derive(Clone)]
pub struct WsCase {
    pub target: Target,
    pub payload: Payload,
}

impl fmt::Debug for WsCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = format!(
            "WsCase {{ target: {:?}, payload: {:?} }}",
            self.target, self.payload
        );
        f.write_str(&crate::common::abbreviate(&full, 4000))
    }
}

fn target() -> BoxedStrategy<Target> {
    prop_oneof![
        8 => Just(Target::Agent),
        2 => Just(Target::Unidentified),
        1 => select(&["$ADMIN", "$VIEWER", "$ALICE", "$NOBODY"][..]).prop_map(Target::Dashboard),
    ]
    .boxed()
}

fn payload(templates: Vec<Value>) -> BoxedStrategy<Payload> {
    prop_oneof![
        16 => (select(templates), input::mutations()).prop_map(|(t, m)| Payload::Json(t, m)),
        2 => input::broken_json().prop_map(Payload::Broken),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Binary),
        1 => Just(Payload::Oversized),
        1 => select(&[
            Violation::InvalidUtf8, Violation::ReservedOpcode, Violation::ReservedBit,
            Violation::LoneContinuation,
        ][..]).prop_map(Payload::Protocol),
    ]
    .boxed()
}

pub fn ws_case() -> impl Strategy<Value = WsCase> {
    target().prop_flat_map(|target| {
        let templates = match target {
            Target::Dashboard(_) => dashboard_templates(),
            _ => agent_templates(),
        };
        payload(templates).prop_map(move |payload| WsCase { target, payload })
    })
}

impl WsCase {
    /// Whether the frame may identify the socket as someone else (or with other
    /// capabilities): the fuzzer's agent socket is opened afresh afterwards.
    pub fn may_reidentify(&self) -> bool {
        match &self.payload {
            Payload::Json(t, m) => {
                t["type"] == "identify" || m.iter().any(|m| matches!(m, Mutation::Whole(_)))
            }
            _ => false,
        }
    }

    /// Whether the frame ends the connection (a protocol violation, an oversized message).
    pub fn ends_connection(&self) -> bool {
        matches!(self.payload, Payload::Oversized | Payload::Protocol(_))
    }

    /// The message to send, and a printable form of it.
    pub fn message(&self, fx: &Fixtures) -> (Message, String) {
        match &self.payload {
            Payload::Json(template, mutations) => {
                let text = input::render(template, mutations, fx);
                (Message::Text(text.clone().into()), text)
            }
            Payload::Broken(text) => (Message::Text(text.clone().into()), text.clone()),
            Payload::Binary(bytes) => (
                Message::Binary(bytes.clone().into()),
                format!("binary {bytes:?}"),
            ),
            Payload::Oversized => {
                let text = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(1 << 20));
                let shown = crate::common::abbreviate(&text, 200);
                (Message::Text(text.into()), shown)
            }
            Payload::Protocol(v) => {
                let frame = match v {
                    Violation::InvalidUtf8 => {
                        Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true)
                    }
                    Violation::ReservedOpcode => {
                        Frame::message(b"{}".to_vec(), OpCode::Data(Data::Reserved(3)), true)
                    }
                    Violation::ReservedBit => {
                        let mut f = Frame::message(
                            b"{\"type\":\"ping\"}".to_vec(),
                            OpCode::Data(Data::Text),
                            true,
                        );
                        f.header_mut().rsv1 = true;
                        f
                    }
                    Violation::LoneContinuation => {
                        Frame::message(b"{}".to_vec(), OpCode::Data(Data::Continue), true)
                    }
                };
                (Message::Frame(frame), format!("{v:?}"))
            }
        }
    }
}
