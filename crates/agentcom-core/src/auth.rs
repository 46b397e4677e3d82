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

/// Is `agent_id` acceptable as an agent identifier: non-empty, at most 128 bytes, printable,
/// no whitespace or slashes (it appears in URL paths).
pub fn is_valid_agent_id(agent_id: &str) -> bool {
    !agent_id.is_empty()
        && agent_id.len() <= 128
        && agent_id
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/')
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
    }
}
