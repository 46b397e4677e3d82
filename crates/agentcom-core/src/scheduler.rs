//! Scheduler matching (reference §5.4): queued tasks in (priority, created_at) order, each
//! to the first available agent (in the order given: the hub gives the agent idle the
//! longest first) that has every needed capability.

use std::collections::HashSet;

use serde_json::Value;

use crate::Millis;

/// The most capabilities an agent may declare, or a task may need.
pub const MAX_CAPABILITIES: usize = 64;
/// The longest capability name, in bytes.
pub const MAX_CAPABILITY_LEN: usize = 128;

/// An agent that may take a task now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub agent_id: String,
    /// A set: matching a task costs one lookup per needed capability.
    pub capabilities: HashSet<String>,
    /// When the agent last changed state (became idle): the longest idle goes first.
    pub idle_since: Millis,
}

/// A queued task as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTask {
    pub id: String,
    pub priority: u8,
    pub created_at: Millis,
    pub needed: Vec<String>,
}

/// The names of capabilities given at identify: strings, or objects with a string `name`
/// (which the original never matched, F13).
pub fn capability_names(caps: &Value) -> Vec<String> {
    caps.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| match c {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Check a client's capability list (an identify's `capabilities`, a task's
/// `needed_capabilities`): a JSON array of at most [`MAX_CAPABILITIES`] entries, each name
/// at most [`MAX_CAPABILITY_LEN`] bytes. Bounds what one agent or task costs every
/// scheduler pass.
pub fn check_capabilities(caps: &Value) -> Result<(), String> {
    let Some(list) = caps.as_array() else {
        return if caps.is_null() {
            Ok(())
        } else {
            Err("capabilities must be a list".into())
        };
    };
    if list.len() > MAX_CAPABILITIES {
        return Err(format!(
            "at most {MAX_CAPABILITIES} capabilities (got {})",
            list.len()
        ));
    }
    match capability_names(caps)
        .iter()
        .find(|name| name.len() > MAX_CAPABILITY_LEN)
    {
        Some(_) => Err(format!(
            "capability names are at most {MAX_CAPABILITY_LEN} bytes"
        )),
        None => Ok(()),
    }
}

/// What matching reads of a queued task.
pub trait Matchable {
    fn id(&self) -> &str;
    fn needed(&self) -> &[String];
}

impl Matchable for QueuedTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn needed(&self) -> &[String] {
        &self.needed
    }
}

impl Matchable for crate::task::Task {
    fn id(&self) -> &str {
        &self.id
    }
    fn needed(&self) -> &[String] {
        &self.needed_capabilities
    }
}

pub fn matches(agent: &Candidate, task: &impl Matchable) -> bool {
    task.needed().iter().all(|n| agent.capabilities.contains(n))
}

/// Plan one pass: pairs of (task id, agent id). Tasks go in lane order, FIFO inside a
/// lane; a task with no matching agent is skipped (no head-of-line blocking); each agent
/// gets at most one task; `excluded(task, agent)` pairs are never made.
pub fn plan(
    agents: &[Candidate],
    tasks: &[QueuedTask],
    excluded: impl Fn(&str, &str) -> bool,
) -> Vec<(String, String)> {
    let mut order: Vec<&QueuedTask> = tasks.iter().collect();
    order.sort_by(|a, b| (a.priority, a.created_at, &a.id).cmp(&(b.priority, b.created_at, &b.id)));
    plan_in_order(agents, order, excluded)
}

/// [`plan`] over tasks already in lane order: it stops as soon as every agent has a task,
/// so a long queue costs a pass only as many tasks as it takes to find them.
pub fn plan_in_order<'a, T: Matchable + 'a>(
    agents: &[Candidate],
    tasks_in_order: impl IntoIterator<Item = &'a T>,
    excluded: impl Fn(&str, &str) -> bool,
) -> Vec<(String, String)> {
    let mut free: Vec<&Candidate> = agents.iter().collect();
    let mut out = Vec::new();
    for task in tasks_in_order {
        if free.is_empty() {
            break;
        }
        if let Some(i) = free
            .iter()
            .position(|a| matches(a, task) && !excluded(task.id(), &a.agent_id))
        {
            out.push((task.id().to_string(), free.remove(i).agent_id.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent(id: &str, caps: &[&str]) -> Candidate {
        Candidate {
            agent_id: id.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            idle_since: 0,
        }
    }

    fn task(id: &str, priority: u8, created_at: Millis, needed: &[&str]) -> QueuedTask {
        QueuedTask {
            id: id.into(),
            priority,
            created_at,
            needed: needed.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn lanes_fifo_capabilities_and_no_head_of_line_blocking() {
        let agents = [agent("a", &[]), agent("b", &["code"])];
        let tasks = [
            task("low", 3, 1, &[]),
            task("urgent-code", 0, 5, &["code"]),
            task("gpu", 0, 2, &["gpu"]),
            task("normal", 2, 0, &[]),
        ];
        let plan = plan(&agents, &tasks, |_, _| false);
        assert_eq!(
            plan,
            vec![
                ("urgent-code".to_string(), "b".to_string()),
                ("normal".to_string(), "a".to_string())
            ]
        );
    }

    #[test]
    fn object_capabilities_match_like_strings() {
        let caps = serde_json::json!(["code", {"name": "gpu"}, 7, {"x": 1}]);
        assert_eq!(capability_names(&caps), vec!["code", "gpu"]);
    }

    #[test]
    fn capability_lists_are_bounded() {
        assert!(check_capabilities(&serde_json::Value::Null).is_ok());
        assert!(check_capabilities(&serde_json::json!(["a", {"name": "b"}])).is_ok());
        assert!(check_capabilities(&serde_json::json!("code")).is_err());
        let many: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        assert!(check_capabilities(&serde_json::json!(many)).is_err());
        let long = "x".repeat(MAX_CAPABILITY_LEN + 1);
        assert!(check_capabilities(&serde_json::json!([{ "name": long }])).is_err());
    }

    #[test]
    fn excluded_pairs_are_skipped() {
        let agents = [agent("a", &[])];
        let tasks = [task("t", 2, 0, &[])];
        assert!(plan(&agents, &tasks, |t, a| t == "t" && a == "a").is_empty());
    }

    proptest! {
        #[test]
        fn every_pair_matches_and_nothing_is_used_twice(
            n_agents in 0usize..6, specs in proptest::collection::vec((0u8..4, 0u64..5, proptest::option::of(0usize..3)), 0..12)
        ) {
            let names = ["x", "y", "z"];
            let agents: Vec<Candidate> = (0..n_agents).map(|i| agent(&format!("a{i}"), &names[..i % 4])).collect();
            let tasks: Vec<QueuedTask> = specs.iter().enumerate()
                .map(|(i, (p, c, need))| task(&format!("t{i}"), *p, *c, need.map(|n| vec![names[n]]).unwrap_or_default().as_slice()))
                .collect();
            let pairs = plan(&agents, &tasks, |_, _| false);
            let mut seen_t = std::collections::HashSet::new();
            let mut seen_a = std::collections::HashSet::new();
            for (t, a) in &pairs {
                prop_assert!(seen_t.insert(t.clone()) && seen_a.insert(a.clone()));
                let ag = agents.iter().find(|x| &x.agent_id == a).unwrap();
                let tk = tasks.iter().find(|x| &x.id == t).unwrap();
                prop_assert!(matches(ag, tk));
            }
            prop_assert!(pairs.len() <= n_agents.min(tasks.len()));
        }
    }
}
