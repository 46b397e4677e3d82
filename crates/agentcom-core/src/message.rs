//! A message between agents (reference §6.1), as stored in history, mailboxes and threads.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{check_id, IdError};
use crate::Millis;

/// A routed message. Stored with the original's `MessageJSON` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// 16 lowercase hex characters.
    pub id: String,
    pub from: String,
    /// `None` (or `"broadcast"`) for a broadcast.
    pub to: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub reply_to: Option<String>,
    pub timestamp: Millis,
}

impl Message {
    /// Is this a broadcast (`to` absent, null or `"broadcast"`)?
    pub fn is_broadcast(&self) -> bool {
        is_broadcast_target(self.to.as_deref())
    }

    /// May `agent_id` read this message (privacy rule S4)? Senders, recipients and everyone
    /// for broadcasts.
    pub fn visible_to(&self, agent_id: &str) -> bool {
        self.is_broadcast() || self.from == agent_id || self.to.as_deref() == Some(agent_id)
    }
}

pub fn is_broadcast_target(to: Option<&str>) -> bool {
    matches!(to, None | Some("broadcast"))
}

/// Check the fields of a message that become store keys: a direct `to` (a mailbox owner
/// and an analytics row) and `reply_to` (a key of the thread index) must be identifiers
/// ([`check_id`]). The error names the field.
pub fn check_keys(to: Option<&str>, reply_to: Option<&str>) -> Result<(), (&'static str, IdError)> {
    if let Some(to) = to.filter(|t| !is_broadcast_target(Some(t))) {
        check_id(to).map_err(|e| ("to", e))?;
    }
    if let Some(parent) = reply_to {
        check_id(parent).map_err(|e| ("reply_to", e))?;
    }
    Ok(())
}

/// The default message type.
pub const DEFAULT_KIND: &str = "chat";

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, to: Option<&str>) -> Message {
        Message {
            id: "0123456789abcdef".into(),
            from: from.into(),
            to: to.map(str::to_string),
            kind: DEFAULT_KIND.into(),
            payload: serde_json::json!({}),
            reply_to: None,
            timestamp: 1,
        }
    }

    #[test]
    fn broadcasts_and_privacy() {
        assert!(msg("a", None).is_broadcast());
        assert!(msg("a", Some("broadcast")).is_broadcast());
        let dm = msg("a", Some("b"));
        assert!(!dm.is_broadcast());
        assert!(dm.visible_to("a") && dm.visible_to("b") && !dm.visible_to("c"));
        assert!(msg("a", None).visible_to("c"));
    }

    #[test]
    fn keys_are_identifiers() {
        assert_eq!(check_keys(None, None), Ok(()));
        assert_eq!(
            check_keys(Some("broadcast"), Some("0123456789abcdef")),
            Ok(())
        );
        assert_eq!(
            check_keys(Some("bob\0x"), None),
            Err(("to", IdError::BadCharacter))
        );
        assert_eq!(check_keys(Some(""), None), Err(("to", IdError::Empty)));
        let long = "r".repeat(129);
        assert_eq!(
            check_keys(Some("bob"), Some(&long)),
            Err(("reply_to", IdError::TooLong))
        );
    }

    #[test]
    fn stored_form_uses_the_original_field_names() {
        let v = serde_json::to_value(msg("a", Some("b"))).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["to"], "b");
        assert!(v.get("kind").is_none());
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, msg("a", Some("b")));
    }
}
