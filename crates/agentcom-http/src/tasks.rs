//! Task routes (reference §2.2 routes 35, 38–43) with the field validation of F13.

use agentcom_core::auth::Role;
use agentcom_core::task::{
    parse_priority_name, NewTask, Task, TaskStatus, DEFAULT_MAX_RETRIES, DEFAULT_PRIORITY,
};
use agentcom_hub::task_queue::TaskFilter;
use agentcom_hub::Principal;
use http::StatusCode;
use serde_json::{json, Map, Value};

use crate::api::{
    self, admin, caller, messaging_caller, ok, query_param, read_object, ApiError, ApiResult,
    Request,
};
use crate::server::App;
use crate::wire;

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::bad_request("invalid_field")
        .with("field", field)
        .with("message", message)
}

/// A priority by name (`urgent|high|normal|low`) or as its integer 0–3.
fn priority(v: &Value) -> Option<u8> {
    match v {
        Value::String(s) => parse_priority_name(s),
        Value::Number(n) => n.as_u64().filter(|p| *p <= 3).map(|p| p as u8),
        _ => None,
    }
}

/// Validate a submission (F13): every field of the wrong type is a 400 naming it.
fn new_task(body: &Map<String, Value>, submitted_by: &str, now: u64) -> Result<NewTask, ApiError> {
    let description = match body.get("description") {
        None => return Err(ApiError::bad_request("missing required field: description")),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            return Err(invalid(
                "description",
                "description must be a non-empty string",
            ))
        }
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => DEFAULT_PRIORITY,
        Some(v) => priority(v).ok_or_else(|| {
            invalid(
                "priority",
                "priority must be urgent, high, normal or low (or 0–3)",
            )
        })?,
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(invalid("metadata", "metadata must be a JSON object")),
    };
    let max_retries = match body.get("max_retries") {
        None | Some(Value::Null) => DEFAULT_MAX_RETRIES,
        Some(v) => v.as_u64().filter(|n| *n <= 1000).ok_or_else(|| {
            invalid(
                "max_retries",
                "max_retries must be an integer from 0 to 1000",
            )
        })? as u32,
    };
    if let Some(caps @ Value::Array(_)) = body.get("needed_capabilities") {
        agentcom_core::scheduler::check_capabilities(caps)
            .map_err(|why| invalid("needed_capabilities", &why))?;
    }
    let needed_capabilities = match body.get("needed_capabilities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|c| match c {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| {
                invalid(
                    "needed_capabilities",
                    "needed_capabilities must be a list of strings",
                )
            })?,
        Some(_) => {
            return Err(invalid(
                "needed_capabilities",
                "needed_capabilities must be a list of strings",
            ))
        }
    };
    let complete_by = match body.get("complete_by") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|t| *t > now).ok_or_else(|| {
            invalid(
                "complete_by",
                "complete_by must be an integer epoch-ms time in the future",
            )
        })?),
    };
    Ok(NewTask {
        description,
        metadata,
        priority,
        max_retries,
        needed_capabilities,
        complete_by,
        submitted_by: submitted_by.to_string(),
    })
}

/// Route 38: submit a task.
pub async fn submit(app: &App, req: Request) -> ApiResult {
    let who = messaging_caller(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let task = app
        .hub
        .submit_task(new_task(&body, &who.agent_id, agentcom_hub::now_ms())?)
        .await?;
    Ok(api::json(
        StatusCode::CREATED,
        json!({"status": "queued", "task_id": task.id, "priority": task.priority, "created_at": task.created_at}),
    ))
}

/// May `who` read `task`? Admins and viewers see every task; agents the tasks they
/// submitted or hold.
fn may_read(who: &Principal, task: &Task) -> bool {
    who.role != Role::Agent
        || task.submitted_by == who.agent_id
        || task.assigned_to.as_deref() == Some(&who.agent_id)
}

fn listing(tasks: &[Task]) -> Value {
    json!({"tasks": tasks.iter().map(wire::task).collect::<Vec<_>>(), "count": tasks.len()})
}

/// Route 39: active tasks, filtered, in lane order.
pub async fn list(app: &App, req: Request) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    let uri = req.uri();
    let status = query_param(uri, "status")
        .map(|s| {
            TaskStatus::from_name(&s)
                .filter(|s| *s != TaskStatus::DeadLetter)
                .ok_or_else(|| invalid("status", "status must be queued, assigned or completed"))
        })
        .transpose()?;
    let priority = query_param(uri, "priority")
        .map(|p| {
            priority(
                &p.parse::<u64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(p)),
            )
            .ok_or_else(|| invalid("priority", "priority must be one of the four names or 0–3"))
        })
        .transpose()?;
    let filter = TaskFilter {
        status,
        priority,
        assigned_to: query_param(uri, "assigned_to"),
        involving: (who.role == Role::Agent).then(|| who.agent_id.clone()),
    };
    Ok(ok(listing(&app.hub.tasks(filter).await?)))
}

/// Route 40.
pub async fn dead_letter(app: &App, req: Request) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    let tasks: Vec<Task> = app
        .hub
        .dead_letters()
        .await?
        .into_iter()
        .filter(|t| may_read(&who, t))
        .collect();
    Ok(ok(listing(&tasks)))
}

/// Route 41.
pub async fn stats(app: &App, req: Request) -> ApiResult {
    caller(&app.hub, req.headers())?;
    let s = app.hub.task_stats().await?;
    let by_status: Map<String, Value> = s
        .by_status
        .iter()
        .map(|(k, n)| (k.as_str().to_string(), (*n).into()))
        .collect();
    let by_priority: Map<String, Value> = s
        .by_priority
        .iter()
        .map(|(p, n)| (p.to_string(), (*n).into()))
        .collect();
    Ok(ok(
        json!({"by_status": by_status, "by_priority": by_priority, "dead_letter": s.dead_letter, "queued_index_size": s.queued}),
    ))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "task_not_found").with("task_id", id)
}

/// Route 42: from the active or the dead-letter table.
pub async fn get(app: &App, req: Request, id: String) -> ApiResult {
    let who = caller(&app.hub, req.headers())?;
    match app.hub.task(&id).await? {
        Some(task) if may_read(&who, &task) => Ok(ok(wire::task(&task))),
        _ => Err(not_found(&id)),
    }
}

/// Route 43: requeue a dead-letter task (admin, or its submitter).
pub async fn retry(app: &App, req: Request, id: String) -> ApiResult {
    let who = messaging_caller(&app.hub, req.headers())?;
    match app.hub.task(&id).await? {
        Some(task)
            if task.status == TaskStatus::DeadLetter
                && (who.role.is_admin() || task.submitted_by == who.agent_id) => {}
        _ => return Err(not_found(&id)),
    }
    let task = app.hub.retry_task(&id).await.map_err(|e| match e {
        agentcom_hub::HubError::Task(_) => not_found(&id),
        other => other.into(),
    })?;
    Ok(ok(
        json!({"status": "requeued", "task_id": task.id, "priority": task.priority}),
    ))
}

/// Route 35: give a new task straight to a connected agent (F14: a real task).
pub async fn push(app: &App, req: Request) -> ApiResult {
    let who = admin(&app.hub, req.headers())?;
    let body = read_object(req, app.settings.max_body_bytes).await?;
    let agent_id = body
        .get("agent_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (Some(agent_id), true) = (agent_id, body.contains_key("description")) else {
        return Err(ApiError::bad_request(
            "missing required fields: agent_id, description",
        ));
    };
    let new = new_task(&body, &who.agent_id, agentcom_hub::now_ms())?;
    let task = app
        .hub
        .push_task(&agent_id, new)
        .await
        .map_err(|e| match e {
            agentcom_hub::HubError::NotFound(code) => {
                ApiError::new(StatusCode::NOT_FOUND, code).with("agent_id", agent_id.as_str())
            }
            other => other.into(),
        })?;
    Ok(ok(
        json!({"status": "pushed", "task_id": task.id, "agent_id": agent_id}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn submissions_are_validated_field_by_field() {
        let ok = new_task(&body(json!({"description": "d", "priority": "urgent", "needed_capabilities": ["a", {"name": "b"}]})), "s", 10).unwrap();
        assert_eq!(
            (ok.priority, ok.needed_capabilities.clone(), ok.max_retries),
            (0, vec!["a".to_string(), "b".to_string()], 3)
        );
        assert_eq!(
            new_task(&body(json!({"description": "d", "priority": 3})), "s", 10)
                .unwrap()
                .priority,
            3
        );
        for (bad, field) in [
            (json!({"description": null}), "description"),
            (json!({"description": ""}), "description"),
            (json!({"description": "d", "priority": "asap"}), "priority"),
            (json!({"description": "d", "priority": 4}), "priority"),
            (
                json!({"description": "d", "needed_capabilities": "code"}),
                "needed_capabilities",
            ),
            (
                json!({"description": "d", "needed_capabilities": [1]}),
                "needed_capabilities",
            ),
            (
                json!({"description": "d", "max_retries": "2"}),
                "max_retries",
            ),
            (
                json!({"description": "d", "max_retries": -1}),
                "max_retries",
            ),
            (json!({"description": "d", "complete_by": 5}), "complete_by"),
            (
                json!({"description": "d", "complete_by": "soon"}),
                "complete_by",
            ),
            (json!({"description": "d", "metadata": [1]}), "metadata"),
        ] {
            let e = new_task(&body(bad.clone()), "s", 10).unwrap_err();
            assert_eq!(e.body.get("field"), Some(&Value::from(field)), "{bad}");
        }
        let missing = new_task(&body(json!({})), "s", 10).unwrap_err();
        assert_eq!(missing.body["error"], "missing required field: description");
    }
}
