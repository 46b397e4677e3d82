//! The hub's runtime configuration values (the original's `agentcom_config` table):
//! their keys, defaults and validation.

use serde::{Deserialize, Serialize};

/// A key of the `agentcom_config` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKey {
    /// Advisory heartbeat interval for clients, in ms.
    HeartbeatIntervalMs,
    /// Mailbox retention, in ms.
    MailboxTtlMs,
    /// Repository URL handed to newly onboarded agents.
    DefaultRepo,
}

impl ConfigKey {
    pub const ALL: [ConfigKey; 3] = [
        ConfigKey::HeartbeatIntervalMs,
        ConfigKey::MailboxTtlMs,
        ConfigKey::DefaultRepo,
    ];

    /// The key's name, as stored and as it appears on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ConfigKey::HeartbeatIntervalMs => "heartbeat_interval_ms",
            ConfigKey::MailboxTtlMs => "mailbox_ttl_ms",
            ConfigKey::DefaultRepo => "default_repo",
        }
    }

    pub fn from_name(name: &str) -> Option<ConfigKey> {
        ConfigKey::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The value a key reads as when it was never written (reference §6.10).
    pub fn default_value(self) -> Option<ConfigValue> {
        match self {
            ConfigKey::HeartbeatIntervalMs => Some(ConfigValue::Millis(DEFAULT_HEARTBEAT_MS)),
            ConfigKey::MailboxTtlMs => Some(ConfigValue::Millis(DEFAULT_MAILBOX_TTL_MS)),
            ConfigKey::DefaultRepo => None,
        }
    }

    /// Check that `value` has the type this key takes.
    pub fn validate(self, value: &ConfigValue) -> Result<(), ConfigError> {
        match (self, value) {
            (ConfigKey::HeartbeatIntervalMs | ConfigKey::MailboxTtlMs, ConfigValue::Millis(ms)) => {
                if *ms == 0 {
                    Err(ConfigError::NotPositive(self))
                } else if *ms > MAX_MILLIS {
                    Err(ConfigError::TooLarge(self))
                } else {
                    Ok(())
                }
            }
            (ConfigKey::DefaultRepo, ConfigValue::Text(url)) => {
                if url.trim().is_empty() {
                    Err(ConfigError::Empty(self))
                } else if url.len() > MAX_TEXT_BYTES {
                    Err(ConfigError::TooLong(self))
                } else {
                    Ok(())
                }
            }
            _ => Err(ConfigError::WrongType(self)),
        }
    }
}

/// Default advisory heartbeat: 15 minutes.
pub const DEFAULT_HEARTBEAT_MS: u64 = 900_000;
/// Default mailbox retention: 7 days.
pub const DEFAULT_MAILBOX_TTL_MS: u64 = 604_800_000;
/// The largest duration accepted: 30 days. A value near 2^64 ms means nothing to a
/// client (the heartbeat is advisory) and turns the mailbox TTL into "forever".
pub const MAX_MILLIS: u64 = 30 * 24 * 3600 * 1000;
/// Longest text value accepted.
pub const MAX_TEXT_BYTES: usize = 4096;

/// A stored configuration value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigValue {
    Millis(u64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{} must be a positive integer", .0.name())]
    NotPositive(ConfigKey),
    #[error("{} must be at most {MAX_MILLIS} (30 days)", .0.name())]
    TooLarge(ConfigKey),
    #[error("{} must not be empty", .0.name())]
    Empty(ConfigKey),
    #[error("{} is longer than {MAX_TEXT_BYTES} bytes", .0.name())]
    TooLong(ConfigKey),
    #[error("{} has the wrong type", .0.name())]
    WrongType(ConfigKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for key in ConfigKey::ALL {
            assert_eq!(ConfigKey::from_name(key.name()), Some(key));
        }
        assert_eq!(ConfigKey::from_name("port"), None);
    }

    #[test]
    fn defaults_match_the_original() {
        assert_eq!(
            ConfigKey::HeartbeatIntervalMs.default_value(),
            Some(ConfigValue::Millis(900_000))
        );
        assert_eq!(
            ConfigKey::MailboxTtlMs.default_value(),
            Some(ConfigValue::Millis(604_800_000))
        );
        assert_eq!(ConfigKey::DefaultRepo.default_value(), None);
    }

    #[test]
    fn validation_rejects_zero_empty_and_wrong_types() {
        let hb = ConfigKey::HeartbeatIntervalMs;
        assert_eq!(hb.validate(&ConfigValue::Millis(1)), Ok(()));
        assert_eq!(
            hb.validate(&ConfigValue::Millis(0)),
            Err(ConfigError::NotPositive(hb))
        );
        assert_eq!(
            hb.validate(&ConfigValue::Text("x".into())),
            Err(ConfigError::WrongType(hb))
        );
        assert_eq!(hb.validate(&ConfigValue::Millis(MAX_MILLIS)), Ok(()));
        for key in [hb, ConfigKey::MailboxTtlMs] {
            for ms in [MAX_MILLIS + 1, u64::MAX] {
                assert_eq!(
                    key.validate(&ConfigValue::Millis(ms)),
                    Err(ConfigError::TooLarge(key))
                );
            }
        }
        let repo = ConfigKey::DefaultRepo;
        assert_eq!(
            repo.validate(&ConfigValue::Text("  ".into())),
            Err(ConfigError::Empty(repo))
        );
        assert_eq!(
            repo.validate(&ConfigValue::Text("x".repeat(MAX_TEXT_BYTES + 1))),
            Err(ConfigError::TooLong(repo))
        );
        assert_eq!(
            repo.validate(&ConfigValue::Text("https://git/x".into())),
            Ok(())
        );
    }
}
