//! Scheduler matching (reference §5.4): queued tasks in (priority, created_at) order, each
//! to the first available agent (in the order given: the hub gives the agent idle the
//! longest first) that has every needed capability.

use std::collections::HashSet;

use serde_json::Value;

use crate::task::Task;
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

pub fn matches(agent: &Candidate, task: &Task) -> bool {
    task.needed_capabilities
        .iter()
        .all(|n| agent.capabilities.contains(n))
}

/// Plan one pass: pairs of (task id, agent id), over queued tasks given in lane order
/// ([`Task::lane`]). A task with no matching agent is skipped (no head-of-line blocking);
/// each agent gets at most one task; `excluded(task, agent)` pairs are never made. It
/// stops as soon as every agent has a task, so a long queue costs a pass only as many
/// tasks as it takes to find them.
pub fn plan<'a>(
    agents: &[Candidate],
    tasks_in_lane_order: impl IntoIterator<Item = &'a Task>,
    excluded: impl Fn(&str, &str) -> bool,
) -> Vec<(String, String)> {
    let mut free: Vec<&Candidate> = agents.iter().collect();
    let mut out = Vec::new();
    for task in tasks_in_lane_order {
        if free.is_empty() {
            break;
        }
        if let Some(i) = free
            .iter()
            .position(|a| matches(a, task) && !excluded(&task.id, &a.agent_id))
        {
            out.push((task.id.clone(), free.remove(i).agent_id.clone()));
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

    fn task(id: &str, priority: u8, created_at: Millis, needed: &[&str]) -> Task {
        let new = crate::task::NewTask {
            description: String::new(),
            metadata: Value::Null,
            priority,
            max_retries: 0,
            needed_capabilities: needed.iter().map(|c| c.to_string()).collect(),
            complete_by: None,
            submitted_by: "test".into(),
        };
        Task::new(id.into(), new, created_at)
    }

    /// [`plan`] over `tasks` put in lane order, as the task queue keeps them.
    fn plan_lanes(
        agents: &[Candidate],
        tasks: &[Task],
        excluded: impl Fn(&str, &str) -> bool,
    ) -> Vec<(String, String)> {
        let mut order: Vec<&Task> = tasks.iter().collect();
        order.sort_by(|a, b| a.lane().cmp(&b.lane()));
        plan(agents, order, excluded)
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
        let plan = plan_lanes(&agents, &tasks, |_, _| false);
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
        assert!(plan_lanes(&agents, &tasks, |t, a| t == "t" && a == "a").is_empty());
    }

    proptest! {
        #[test]
        fn every_pair_matches_and_nothing_is_used_twice(
            n_agents in 0usize..6, specs in proptest::collection::vec((0u8..4, 0u64..5, proptest::option::of(0usize..3)), 0..12)
        ) {
            let names = ["x", "y", "z"];
            let agents: Vec<Candidate> = (0..n_agents).map(|i| agent(&format!("a{i}"), &names[..i % 4])).collect();
            let tasks: Vec<Task> = specs.iter().enumerate()
                .map(|(i, (p, c, need))| task(&format!("t{i}"), *p, *c, need.map(|n| vec![names[n]]).unwrap_or_default().as_slice()))
                .collect();
            let pairs = plan_lanes(&agents, &tasks, |_, _| false);
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
