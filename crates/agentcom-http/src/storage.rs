//! Backup and storage-health routes (the seed feature; SPEC §4). All admin-only.

use agentcom_hub::backup::{BackupRun, StorageHealth};
use agentcom_store::backup;
use http::StatusCode;
use serde_json::{json, Value};

use crate::api::{admin, ok, ApiError, ApiResult, Request};
use crate::server::App;

fn run_json(run: &BackupRun) -> Value {
    let c = &run.created;
    let results: Vec<Value> = c
        .results
        .iter()
        .map(|r| match &r.outcome {
            Ok((path, size)) => json!({"table": r.table.name(), "status": "ok", "path": path.display().to_string(), "size": size}),
            Err(reason) => json!({"table": r.table.name(), "status": "error", "reason": reason}),
        })
        .collect();
    json!({
        "status": "complete",
        "tables_total": c.results.len(),
        "tables_success": c.results.iter().filter(|r| r.outcome.is_ok()).count(),
        "results": results,
        "backup_id": c.id,
        "created_at": c.manifest.created_at,
        "duration_ms": run.duration_ms,
        "verified": c.verified,
        "problems": c.problems,
    })
}

/// `POST /api/admin/backup`: synchronous; concurrent requests share one run.
pub async fn create(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let run = app.hub.backup_now().await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed")
            .with("message", e.to_string())
    })?;
    Ok(ok(run_json(&run)))
}

/// `POST /api/admin/compact`: compact the store now; answers when it is done.
pub async fn compact(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let run = app.hub.compact_now().await?;
    let mut body = serde_json::to_value(&run).unwrap_or_default();
    body["status"] = "compacted".into();
    Ok(ok(body))
}

/// `GET /api/admin/backups`: every complete backup with its manifest.
pub async fn list(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let dir = app.hub.settings().backup_dir.clone();
    let backups: Vec<Value> = backup::list(&dir)
        .iter()
        .rev()
        .map(|b| json!({"backup_id": b.id, "path": b.path.display().to_string(), "manifest": b.manifest}))
        .collect();
    Ok(ok(
        json!({"backup_dir": dir.display().to_string(), "count": backups.len(), "backups": backups}),
    ))
}

/// `POST /api/admin/backups/:id/verify`: re-read one backup from disk.
pub async fn verify(app: &App, req: Request, id: String) -> ApiResult {
    admin(&app.hub, req.headers())?;
    let dir = app.hub.settings().backup_dir.clone();
    let Some(entry) = backup::list(&dir).into_iter().find(|b| b.id == id) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "backup_not_found").with("backup_id", id));
    };
    let report = tokio::task::spawn_blocking(move || backup::verify_dir(&entry.path))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "verify_failed")
                .with("message", e.to_string())
        })?;
    Ok(ok(
        json!({"backup_id": report.id, "verified": report.ok(), "problems": report.problems}),
    ))
}

fn health_json(h: &StorageHealth) -> Value {
    let tables: Vec<Value> = h
        .tables
        .iter()
        .map(|t| {
            json!({
                "table": t.table,
                "status": "ok",
                "record_count": t.record_count,
                "file_size_bytes": t.logical_bytes,
                "fragmentation_ratio": null,
            })
        })
        .collect();
    let last = h.last_run.as_ref().map(|r| {
        json!({"at": r.at, "backup_id": r.backup_id, "status": if r.ok { "ok" } else { "error" }, "verified": r.verified, "error": r.error})
    });
    json!({
        "health_status": h.health_status,
        "stale_backup": h.stale_backup,
        "high_fragmentation": h.high_fragmentation,
        "last_backup_at": h.last_backup_at,
        "next_backup_at": h.next_backup_at,
        "last_backup_result": last,
        "tables": tables,
        "store": {
            "engine": h.engine,
            "size_on_disk": h.size_on_disk,
            "live_bytes": h.live_bytes,
            "fragmentation_ratio": h.fragmentation_ratio,
            "fragmentation_floor": h.fragmentation_floor,
            "was_recovered": h.was_recovered,
            "quarantined_records": h.quarantined_records,
        },
        "compaction": {
            "running": h.compactions.running,
            "completed": h.compactions.completed,
            "failed": h.compactions.failed,
            "reclaimed_bytes": h.compactions.reclaimed_bytes,
            "last": h.compactions.last,
        },
        "scope": {
            "tables.file_size_bytes": "logical bytes (keys and values) of the table's live records; the engine keeps one file set for the whole store",
            "tables.fragmentation_ratio": "not measurable per table (null); see store.fragmentation_ratio",
            "store.fragmentation_ratio": "1 - live_bytes / size_on_disk, for the whole store",
            "high_fragmentation": "store.fragmentation_ratio > 0.5 and wasted bytes > fragmentation_floor",
        },
    })
}

/// `GET /api/admin/dets-health` (the seed's path) and `GET /api/admin/storage-health`.
pub async fn health(app: &App, req: Request) -> ApiResult {
    admin(&app.hub, req.headers())?;
    Ok(ok(health_json(&app.hub.storage_health().await?)))
}
