//! Thread structure over `reply_to` links (reference §6.6), safe against cycles (C8).

use std::collections::HashSet;

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
}
