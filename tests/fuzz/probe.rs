//! What a fuzz case is checked against: the store's digest, read through the admin API,
//! and whether the hub still serves.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use crate::common::{self, TestHub};
use crate::DEADLINE;

/// Reads the hub's state through the admin API, as a dedicated admin (`auditor`) that no
/// case can revoke.
pub struct Probe {
    pub addr: String,
    pub auditor: String,
}

/// What the digest reads: the store's tables (record counts and logical bytes), and the
/// listings that show values whose size does not change (config, token roles, task
/// states, subscriptions, backups). Actors' crash counts ride along.
const DIGEST_READS: &[(&str, &str)] = &[
    ("tables", "/api/admin/storage-health"),
    ("heartbeat", "/api/config/heartbeat-interval"),
    ("retention", "/api/config/mailbox-retention"),
    ("default_repo", "/api/config/default-repo"),
    ("tokens", "/admin/tokens"),
    ("tasks", "/api/tasks"),
    ("dead_letter", "/api/tasks/dead-letter"),
    ("channels", "/api/channels"),
    ("messages", "/api/messages?limit=200"),
    ("backups", "/api/admin/backups"),
    ("actors", "/api/admin/actors"),
];

impl Probe {
    async fn get(&self, path: &str) -> Result<common::Reply, String> {
        match timeout(
            DEADLINE,
            common::try_request(&self.addr, "GET", path, Some(&self.auditor), None),
        )
        .await
        {
            Err(_) => Err(format!("GET {path} did not answer within {DEADLINE:?}")),
            Ok(Err(e)) => Err(format!("GET {path} failed: {e}")),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// The store's observable state.
    pub async fn digest(&self) -> Result<Value, String> {
        let mut out = serde_json::Map::new();
        for (key, path) in DIGEST_READS {
            let r = self.get(path).await?;
            if r.status != 200 {
                return Err(format!(
                    "GET {path} (the digest) answered {}: {}",
                    r.status,
                    common::abbreviate(&String::from_utf8_lossy(&r.body), 500)
                ));
            }
            let v = match *key {
                "tables" => json!(r.json["tables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| json!([t["table"], t["record_count"], t["file_size_bytes"]]))
                    .collect::<Vec<_>>()),
                "actors" => json!(r.json["actors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| json!([a["name"], a["crashes"]]))
                    .collect::<Vec<_>>()),
                _ => r.json,
            };
            out.insert(key.to_string(), v);
        }
        let digest = Value::Object(out);
        let crashed: Vec<&Value> = digest["actors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a[1].as_u64() != Some(0))
            .collect();
        if !crashed.is_empty() {
            return Err(format!("actors crashed: {crashed:?}"));
        }
        Ok(digest)
    }

    /// The digest once the effects of an accepted request have landed: two readings in a
    /// row that agree.
    pub async fn settled(&self) -> Result<Value, String> {
        let until = Instant::now() + DEADLINE;
        let mut last = self.digest().await?;
        loop {
            sleep(Duration::from_millis(40)).await;
            let next = self.digest().await?;
            if next == last {
                return Ok(next);
            }
            if Instant::now() > until {
                return Err(format!(
                    "the store was still changing {DEADLINE:?} after the request: {}",
                    diff(&last, &next)
                ));
            }
            last = next;
        }
    }

    /// `/health` answers 200 within the deadline and the hub process runs.
    pub async fn still_serving(&self, hub: &TestHub) -> Result<(), String> {
        let health = timeout(
            DEADLINE,
            common::try_request(&self.addr, "GET", "/health", None, None),
        )
        .await;
        let ok = matches!(&health, Ok(Ok(r)) if r.status == 200);
        if !hub.alive() {
            return Err("the hub process is gone".into());
        }
        if !ok {
            return Err(format!(
                "/health did not answer 200 within {DEADLINE:?}: {health:?}"
            ));
        }
        Ok(())
    }
}

/// The parts of two digests that differ.
pub fn diff(before: &Value, after: &Value) -> String {
    let keys = before.as_object().into_iter().flat_map(|m| m.keys());
    let parts: Vec<String> = keys
        .filter(|k| before[k.as_str()] != after[k.as_str()])
        .map(|k| {
            format!(
                "{k}: {} → {}",
                common::abbreviate(&before[k.as_str()].to_string(), 1500),
                common::abbreviate(&after[k.as_str()].to_string(), 1500)
            )
        })
        .collect();
    parts.join("\n  ")
}
