//! The agent state machine (reference §5.5), with the fixes of F8–F12: every reclaim,
//! rejection and refused completion reaches it; `task_continue` resumes work; an agent
//! that missed the acceptance timeout is not offered work until it shows life.

use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Idle,
    Assigned,
    Working,
    Blocked,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Idle => "idle",
            AgentState::Assigned => "assigned",
            AgentState::Working => "working",
            AgentState::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFsm {
    pub state: AgentState,
    pub current_task: Option<String>,
    /// Missed an acceptance timeout; cleared by any sign of life.
    pub unresponsive: bool,
    pub last_state_change: Millis,
}

impl AgentFsm {
    pub fn new(now: Millis) -> Self {
        AgentFsm {
            state: AgentState::Idle,
            current_task: None,
            unresponsive: false,
            last_state_change: now,
        }
    }

    fn go(&mut self, state: AgentState, task: Option<String>, now: Millis) {
        self.state = state;
        self.current_task = task;
        self.last_state_change = now;
    }

    /// May the scheduler offer this agent a task?
    pub fn is_available(&self) -> bool {
        self.state == AgentState::Idle && !self.unresponsive
    }

    /// idle → assigned. Refused in any other state, so an agent never holds two tasks (F11).
    pub fn assign(&mut self, task_id: &str, now: Millis) -> bool {
        if self.state != AgentState::Idle {
            return false;
        }
        self.go(AgentState::Assigned, Some(task_id.to_string()), now);
        true
    }

    /// assigned → working, for the current task only.
    pub fn accepted(&mut self, task_id: &str, now: Millis) -> bool {
        if self.state == AgentState::Assigned && self.current_task.as_deref() == Some(task_id) {
            self.go(AgentState::Working, Some(task_id.to_string()), now);
            true
        } else {
            false
        }
    }

    /// `task_continue` after `task_recovering`: the agent works on a task the queue has
    /// assigned to it (F12), whatever this FSM believed.
    pub fn resume(&mut self, task_id: &str, now: Millis) {
        self.go(AgentState::Working, Some(task_id.to_string()), now);
    }

    /// The task left this agent (completed, failed, reclaimed, rejected, or a refused
    /// completion showed it was no longer the agent's): back to idle if it was current.
    pub fn released(&mut self, task_id: &str, now: Millis) -> bool {
        if self.current_task.as_deref() == Some(task_id) {
            self.go(AgentState::Idle, None, now);
            true
        } else {
            false
        }
    }

    /// The acceptance timer for `task_id` fired: if the agent still has not accepted it,
    /// it goes idle and unresponsive (the caller reclaims the task).
    pub fn accept_timed_out(&mut self, task_id: &str, now: Millis) -> bool {
        if self.state == AgentState::Assigned && self.current_task.as_deref() == Some(task_id) {
            self.go(AgentState::Idle, None, now);
            self.unresponsive = true;
            true
        } else {
            false
        }
    }

    /// Any frame from the agent.
    pub fn showed_life(&mut self) {
        self.unresponsive = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let mut f = AgentFsm::new(0);
        assert!(f.is_available());
        assert!(f.assign("t1", 1));
        assert!(!f.assign("t2", 2), "no second task while assigned (F11)");
        assert!(!f.accepted("t2", 2));
        assert!(f.accepted("t1", 3));
        assert_eq!(f.state, AgentState::Working);
        assert!(!f.released("other", 4));
        assert!(f.released("t1", 5));
        assert_eq!((f.state, f.current_task.clone()), (AgentState::Idle, None));
    }

    #[test]
    fn a_missed_acceptance_makes_the_agent_unavailable_until_it_shows_life() {
        let mut f = AgentFsm::new(0);
        f.assign("t1", 1);
        assert!(!f.accept_timed_out("stale", 2));
        assert!(f.accept_timed_out("t1", 2));
        assert!(!f.is_available());
        f.showed_life();
        assert!(f.is_available());
    }

    #[test]
    fn resume_moves_to_working() {
        let mut f = AgentFsm::new(0);
        f.resume("t9", 1);
        assert_eq!(
            (f.state, f.current_task.as_deref()),
            (AgentState::Working, Some("t9"))
        );
    }
}
