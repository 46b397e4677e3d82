//! Channel names (reference §6.3).

/// Normalise a channel name: strip leading `#`, lower-case, keep only `[a-z0-9_-]`.
/// A name with nothing left is no channel (`None`; the original accepted it, F16).
pub fn normalize(name: &str) -> Option<String> {
    let normalized: String = name
        .trim_start_matches('#')
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    (!normalized.is_empty()).then_some(normalized)
}

/// The longest channel name accepted, as sent, in bytes. The normalised name keys the
/// channel record and every history entry; the name as sent is echoed in replies.
pub const MAX_NAME_BYTES: usize = 128;

/// Refuse a channel name (as sent) longer than [`MAX_NAME_BYTES`].
pub fn check_length(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        Err(format!("channel names are at most {MAX_NAME_BYTES} bytes"))
    } else {
        Ok(())
    }
}

/// Entries of channel history kept per channel.
pub const HISTORY_KEEP: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalisation_matches_the_original() {
        assert_eq!(normalize("#Dev Team!").as_deref(), Some("devteam"));
        assert_eq!(normalize("##ops_1-a").as_deref(), Some("ops_1-a"));
        assert_eq!(normalize("#!!"), None);
        assert_eq!(normalize(""), None);
    }

    #[test]
    fn names_are_bounded() {
        assert!(check_length(&"a".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(check_length(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(name in ".{0,40}") {
            if let Some(n) = normalize(&name) {
                prop_assert_eq!(normalize(&n), Some(n.clone()));
                prop_assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'));
            }
        }
    }
}
