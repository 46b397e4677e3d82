//! Token roles and what each may do.

use serde::{Deserialize, Serialize};

/// What a token may do. Roles are ordered by power only where `admin` implies the others;
/// an `agent` and a `viewer` are not comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Operators: admin routes, token management, config writes, the dashboard's buttons.
    Admin,
    /// Agents: their own mailbox, messaging, channels, tasks.
    Agent,
    /// Read-only dashboard access.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Agent, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Viewer => "viewer",
        }
    }

    /// May this role use admin-only routes?
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }

    /// May this role watch the dashboard?
    pub fn may_view_dashboard(self) -> bool {
        matches!(self, Role::Admin | Role::Viewer)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}` (expected admin, agent or viewer)"))
    }
}

/// Is `token` of the original's format: 64 lowercase hex characters?
pub fn is_token_format(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The longest identifier accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Why a string is not an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error("must not contain whitespace, control characters or '/'")]
    BadCharacter,
}

/// Check an identifier that names an agent or a message: non-empty, at most
/// [`MAX_ID_BYTES`], printable, no whitespace or slashes. Identifiers appear in URL paths
/// and own store keys (`<owner>\0<seq>`): a NUL would make one owner's key read as
/// another's, and an unbounded one would cost unbounded memory in every table it keys.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Err(IdError::Empty)
    } else if id.len() > MAX_ID_BYTES {
        Err(IdError::TooLong)
    } else if id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        Err(IdError::BadCharacter)
    } else {
        Ok(())
    }
}

/// Is `agent_id` acceptable as an agent identifier ([`check_id`])?
pub fn is_valid_agent_id(agent_id: &str) -> bool {
    check_id(agent_id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn only_admin_and_viewer_see_the_dashboard() {
        assert!(Role::Admin.may_view_dashboard());
        assert!(Role::Viewer.may_view_dashboard());
        assert!(!Role::Agent.may_view_dashboard());
        assert!(Role::Admin.is_admin() && !Role::Viewer.is_admin());
    }

    #[test]
    fn token_format_is_64_lowercase_hex() {
        assert!(is_token_format(&"a1".repeat(32)));
        assert!(!is_token_format(&"A1".repeat(32)));
        assert!(!is_token_format(&"a1".repeat(31)));
    }

    #[test]
    fn agent_ids_are_path_safe() {
        assert!(is_valid_agent_id("agent-1"));
        assert!(!is_valid_agent_id(""));
        assert!(!is_valid_agent_id("a b"));
        assert!(!is_valid_agent_id("a/b"));
        assert!(!is_valid_agent_id(&"x".repeat(129)));
        assert!(is_valid_agent_id(&"x".repeat(128)));
        assert_eq!(check_id("bob\0x"), Err(IdError::BadCharacter));
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(&"x".repeat(1 << 20)), Err(IdError::TooLong));
    }
}
