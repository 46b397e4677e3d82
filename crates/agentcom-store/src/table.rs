//! The table registry: every table the hub stores, in the order reports list them.

/// A table of the store. The original's nine tables keep their names and come first, in
/// the reference's order; `auth_tokens` (a JSON file in the original), `hub_meta` and
/// `quarantine` follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    TaskQueue,
    TaskDeadLetter,
    AgentMailbox,
    MessageHistory,
    AgentChannels,
    ChannelHistory,
    AgentcomConfig,
    ThreadMessages,
    ThreadReplies,
    AuthTokens,
    HubMeta,
    /// Records that could not be read back, moved aside at start-up (see `quarantine`).
    Quarantine,
    /// The messages mailbox entries refer to, each stored once (see `MailboxEntry`).
    MailboxBodies,
}

impl Table {
    /// Every table, in report order.
    pub const ALL: [Table; 13] = [
        Table::TaskQueue,
        Table::TaskDeadLetter,
        Table::AgentMailbox,
        Table::MessageHistory,
        Table::AgentChannels,
        Table::ChannelHistory,
        Table::AgentcomConfig,
        Table::ThreadMessages,
        Table::ThreadReplies,
        Table::AuthTokens,
        Table::HubMeta,
        Table::Quarantine,
        Table::MailboxBodies,
    ];

    /// The table's name: the tree name on disk and the name in every report.
    pub fn name(self) -> &'static str {
        match self {
            Table::TaskQueue => "task_queue",
            Table::TaskDeadLetter => "task_dead_letter",
            Table::AgentMailbox => "agent_mailbox",
            Table::MessageHistory => "message_history",
            Table::AgentChannels => "agent_channels",
            Table::ChannelHistory => "channel_history",
            Table::AgentcomConfig => "agentcom_config",
            Table::ThreadMessages => "thread_messages",
            Table::ThreadReplies => "thread_replies",
            Table::AuthTokens => "auth_tokens",
            Table::HubMeta => "hub_meta",
            Table::Quarantine => "quarantine",
            Table::MailboxBodies => "mailbox_bodies",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// A table added after the first backup format: a backup written before it existed
    /// lacks it, and it was empty then.
    pub fn added_later(self) -> bool {
        matches!(self, Table::Quarantine | Table::MailboxBodies)
    }

    /// Position in [`Table::ALL`], also the table's number in the persisted counters: new
    /// tables go at the end.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_position_and_names_round_trip() {
        for (i, t) in Table::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(Table::from_name(t.name()), Some(t));
        }
    }
}
