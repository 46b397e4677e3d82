//! Thread structure over `reply_to` links (reference §6.6), safe against cycles (C8), and
//! the numbering that bounds the thread index: every indexed message has a place in index
//! order (the oldest leave first), every indexed reply a number under its parent.

use std::collections::{HashMap, HashSet};

use crate::Millis;

/// Walk `reply_to` links up from `id` to the root: the first message that is unknown or has
/// no parent. A cycle stops at the first message seen twice.
pub fn root_of(id: &str, mut parent_of: impl FnMut(&str) -> Option<String>) -> String {
    let mut seen = HashSet::new();
    let mut current = id.to_string();
    seen.insert(current.clone());
    while let Some(parent) = parent_of(&current) {
        if !seen.insert(parent.clone()) {
            break;
        }
        current = parent;
    }
    current
}

/// Every message in the subtree under `root` (itself included), depth-first, each once.
pub fn subtree(root: &str, mut children_of: impl FnMut(&str) -> Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![root.to_string()];
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let mut children = children_of(&id);
        children.reverse();
        stack.extend(children);
        out.push(id);
    }
    out
}

/// The number of the next reply to a parent whose indexed replies are numbered `oldest`
/// to `newest` (`None`: it has none); `None` when `max_replies` are already indexed.
/// Replies are numbered from 1 in the order they arrive and leave the index oldest first,
/// so the indexed ones are always a run of consecutive numbers.
pub fn next_reply_number(indexed: Option<(u64, u64)>, max_replies: u64) -> Option<u64> {
    let (count, next) = match indexed {
        None => (0, 1),
        Some((oldest, newest)) => (
            newest.saturating_sub(oldest).saturating_add(1),
            newest.checked_add(1)?,
        ),
    };
    (count < max_replies).then_some(next)
}

/// A message of a thread index built before messages were numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnumbered {
    pub id: String,
    pub timestamp: Millis,
    pub reply_to: Option<String>,
}

/// A message's place in the thread index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    /// Index order, from 1.
    pub seq: u64,
    pub id: String,
    /// The parent and the reply's number under it, if it is an indexed reply.
    pub reply: Option<(String, u64)>,
}

/// Number the messages of an old index in timestamp order (ties by id), as if indexed one
/// by one: each reply is numbered under its parent while fewer than `max_replies` are.
pub fn number(mut messages: Vec<Unnumbered>, max_replies: u64) -> Vec<Numbered> {
    messages.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then_with(|| a.id.cmp(&b.id)));
    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let reply = m.reply_to.and_then(|parent| {
            let last = newest.get(&parent).copied();
            let n = next_reply_number(last.map(|l| (1, l)), max_replies)?;
            newest.insert(parent.clone(), n);
            Some((parent, n))
        });
        out.push(Numbered {
            seq: i as u64 + 1,
            id: m.id,
            reply,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn root_walk_and_subtree() {
        let parents: HashMap<&str, &str> = [("b", "a"), ("c", "b"), ("d", "a")].into();
        let parent = |id: &str| parents.get(id).map(|p| p.to_string());
        assert_eq!(root_of("c", parent), "a");
        assert_eq!(root_of("x", parent), "x");
        let children = |id: &str| -> Vec<String> {
            let mut c: Vec<String> = parents
                .iter()
                .filter(|(_, p)| **p == id)
                .map(|(k, _)| k.to_string())
                .collect();
            c.sort();
            c
        };
        assert_eq!(subtree("a", children), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn circular_chains_terminate() {
        let parents: HashMap<&str, &str> = [("a", "b"), ("b", "c"), ("c", "a")].into();
        let root = root_of("a", |id| parents.get(id).map(|p| p.to_string()));
        assert!(["a", "b", "c"].contains(&root.as_str()));
        let all = subtree("a", |id| {
            parents
                .iter()
                .filter(|(_, p)| **p == id)
                .map(|(k, _)| k.to_string())
                .collect()
        });
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn replies_are_numbered_in_a_run_up_to_the_cap() {
        assert_eq!(next_reply_number(None, 3), Some(1));
        assert_eq!(next_reply_number(Some((1, 2)), 3), Some(3));
        assert_eq!(next_reply_number(Some((1, 3)), 3), None, "full");
        // The oldest left: room for one more, numbered after the newest.
        assert_eq!(next_reply_number(Some((2, 3)), 3), Some(4));
        assert_eq!(next_reply_number(None, 0), None);
    }

    #[test]
    fn an_old_index_is_numbered_by_timestamp_as_if_indexed_one_by_one() {
        let m = |id: &str, timestamp, reply_to: Option<&str>| Unnumbered {
            id: id.into(),
            timestamp,
            reply_to: reply_to.map(Into::into),
        };
        let numbered = number(
            vec![
                m("r3", 30, Some("p")),
                m("p", 10, None),
                m("r1", 20, Some("p")),
                m("r2", 20, Some("p")),
                m("q1", 40, Some("q")),
            ],
            2,
        );
        let n = |seq, id: &str, reply: Option<(&str, u64)>| Numbered {
            seq,
            id: id.into(),
            reply: reply.map(|(p, k)| (p.into(), k)),
        };
        assert_eq!(
            numbered,
            vec![
                n(1, "p", None),
                n(2, "r1", Some(("p", 1))),
                n(3, "r2", Some(("p", 2))),
                n(4, "r3", None),
                n(5, "q1", Some(("q", 1))),
            ]
        );
    }
}
