//! `GET /metrics` (admin): Prometheus text exposition of the hub's figures (SPEC §10).

use std::fmt::Write as _;

use agentcom_core::fsm::AgentState;
use agentcom_core::metrics::Histogram;
use agentcom_core::task::TaskStatus;
use agentcom_hub::CALL_TIMEOUT;
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::Full;

use crate::api::{admin, ApiResult, Request};
use crate::server::App;

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, n) in h.cumulative() {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", bound as f64 / 1000.0);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_ms as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn gauge(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

pub async fn metrics(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let hub = &app.hub;
    let mut out = String::new();

    let stats = hub.task_stats().await?;
    let by_status: Vec<(String, f64)> = [
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::Completed,
    ]
    .iter()
    .map(|s| {
        let n = stats
            .by_status
            .iter()
            .find(|(k, _)| k == s)
            .map_or(0, |(_, n)| *n);
        (format!("status=\"{}\"", s.as_str()), n as f64)
    })
    .chain(std::iter::once((
        "status=\"dead_letter\"".to_string(),
        stats.dead_letter as f64,
    )))
    .collect();
    gauge(
        &mut out,
        "agentcom_tasks",
        "Tasks by status.",
        "gauge",
        &by_status,
    );
    let queued = hub
        .tasks(agentcom_hub::task_queue::TaskFilter {
            status: Some(TaskStatus::Queued),
            ..Default::default()
        })
        .await?;
    let by_priority: Vec<(String, f64)> = (0..4u8)
        .map(|p| {
            (
                format!("priority=\"{p}\""),
                queued.iter().filter(|t| t.priority == p).count() as f64,
            )
        })
        .collect();
    gauge(
        &mut out,
        "agentcom_queue_depth",
        "Queued tasks by priority lane (0 urgent … 3 low).",
        "gauge",
        &by_priority,
    );
    let wait = hub.task_latency.wait.lock().expect("latency lock").clone();
    let run = hub.task_latency.run.lock().expect("latency lock").clone();
    histogram(
        &mut out,
        "agentcom_task_wait_seconds",
        "Time from submission to assignment.",
        &wait,
    );
    histogram(
        &mut out,
        "agentcom_task_run_seconds",
        "Time from assignment to completion.",
        &run,
    );

    let agents = hub.agent_table.list();
    let by_state: Vec<(String, f64)> = [
        AgentState::Idle,
        AgentState::Assigned,
        AgentState::Working,
        AgentState::Blocked,
    ]
    .iter()
    .map(|s| {
        (
            format!("state=\"{}\"", s.as_str()),
            agents.iter().filter(|a| a.fsm.state == *s).count() as f64,
        )
    })
    .collect();
    gauge(
        &mut out,
        "agentcom_agents",
        "Identified agents by FSM state.",
        "gauge",
        &by_state,
    );
    let sessions = hub.session_counts().await?;
    gauge(
        &mut out,
        "agentcom_websocket_connections",
        "Open websocket connections by kind.",
        "gauge",
        &[
            ("kind=\"agent\"".into(), sessions.agent as f64),
            ("kind=\"dashboard\"".into(), sessions.dashboard as f64),
        ],
    );

    let actors = hub.actors().await?;
    let restarts: Vec<(String, f64)> = actors
        .iter()
        .map(|a| (format!("actor=\"{}\"", a.name), a.restarts as f64))
        .collect();
    gauge(
        &mut out,
        "agentcom_actor_restarts_total",
        "Restarts per actor since start.",
        "counter",
        &restarts,
    );
    let crashes: Vec<(String, f64)> = actors
        .iter()
        .map(|a| (format!("actor=\"{}\"", a.name), a.crashes as f64))
        .collect();
    gauge(
        &mut out,
        "agentcom_actor_crashes_total",
        "Crashes per actor since start.",
        "counter",
        &crashes,
    );

    let health = hub.storage_health().await?;
    let now = agentcom_hub::now_ms();
    if let Some(at) = health.last_backup_at {
        gauge(
            &mut out,
            "agentcom_backup_age_seconds",
            "Age of the newest backup on disk.",
            "gauge",
            &[(String::new(), now.saturating_sub(at) as f64 / 1000.0)],
        );
    }
    if let Some(run) = health.last_run.as_ref().filter(|r| r.ok) {
        gauge(
            &mut out,
            "agentcom_backup_duration_seconds",
            "Duration of the latest backup run.",
            "gauge",
            &[(String::new(), run.duration_ms as f64 / 1000.0)],
        );
        gauge(
            &mut out,
            "agentcom_backup_size_bytes",
            "Size of the latest backup.",
            "gauge",
            &[(String::new(), run.bytes as f64)],
        );
    }
    let c = &health.compactions;
    gauge(
        &mut out,
        "agentcom_compactions_total",
        "Compactions since start, by result.",
        "counter",
        &[
            ("result=\"ok\"".to_string(), c.completed as f64),
            ("result=\"failed\"".to_string(), c.failed as f64),
        ],
    );
    gauge(
        &mut out,
        "agentcom_compaction_reclaimed_bytes_total",
        "Bytes on disk reclaimed by compactions since start.",
        "counter",
        &[(String::new(), c.reclaimed_bytes as f64)],
    );
    if let Some(run) = &c.last {
        gauge(
            &mut out,
            "agentcom_compaction_duration_seconds",
            "Duration of the latest compaction.",
            "gauge",
            &[(String::new(), run.duration_ms as f64 / 1000.0)],
        );
        gauge(
            &mut out,
            "agentcom_compaction_write_pause_seconds",
            "How long writes waited during the latest compaction's switch.",
            "gauge",
            &[(String::new(), run.longest_write_pause_ms / 1000.0)],
        );
    }
    gauge(
        &mut out,
        "agentcom_store_size_bytes",
        "Bytes the store occupies on disk.",
        "gauge",
        &[(String::new(), health.size_on_disk as f64)],
    );
    gauge(
        &mut out,
        "agentcom_store_live_bytes",
        "Logical bytes of live records.",
        "gauge",
        &[(String::new(), health.live_bytes as f64)],
    );
    gauge(
        &mut out,
        "agentcom_store_fragmentation_ratio",
        "1 - live bytes / size on disk (whole store).",
        "gauge",
        &[(String::new(), health.fragmentation_ratio)],
    );
    gauge(
        &mut out,
        "agentcom_quarantined_records",
        "Records moved to the quarantine table because they could not be read back.",
        "gauge",
        &[(String::new(), health.quarantined_records as f64)],
    );
    let records: Vec<(String, f64)> = health
        .tables
        .iter()
        .map(|t| (format!("table=\"{}\"", t.table), t.record_count as f64))
        .collect();
    gauge(
        &mut out,
        "agentcom_table_records",
        "Records per table.",
        "gauge",
        &records,
    );
    gauge(
        &mut out,
        "agentcom_rate_limited_total",
        "HTTP requests and websocket frames refused by a rate limit, by limit.",
        "counter",
        &[
            ("limit=\"caller\"".into(), hub.rate_limits.refused() as f64),
            ("limit=\"peer\"".into(), app.peer_limits.refused() as f64),
        ],
    );
    let subscriptions = hub
        .notifier
        .call(agentcom_hub::notifier::NotifierMsg::Count, CALL_TIMEOUT)
        .await
        .map_err(agentcom_hub::HubError::from)?;
    gauge(
        &mut out,
        "agentcom_push_subscriptions",
        "Web Push subscriptions kept for dashboard alerts.",
        "gauge",
        &[(String::new(), subscriptions as f64)],
    );

    let mut res = hyper::Response::new(Full::new(Bytes::from(out)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}
