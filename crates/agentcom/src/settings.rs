//! `serve` settings: every setting of SPEC §8 from a flag, an `AGENTCOM_*` environment
//! variable or a key of the optional TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcom_core::rate::Limit;
use clap::Args;
use serde::Deserialize;

/// Parse `250ms`, `60s`, `5m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration `{s}`: {e} (use e.g. 250ms, 60s, 5m, 24h, 7d)"))
}

/// Parse a byte size: `1048576`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size `{s}` (use e.g. 1048576, 512KiB, 64MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("invalid size unit in `{s}` (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags of `serve`. Every value is optional here so that the TOML file can fill in
/// what neither a flag nor the environment gave.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with settings (keys as in the table of the README).
    #[arg(long, env = "AGENTCOM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "AGENTCOM_BIND")]
    pub bind: Option<SocketAddr>,
    /// Directory holding the database.
    #[arg(long, env = "AGENTCOM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory for backups [default: <data_dir>/backups].
    #[arg(long, env = "AGENTCOM_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    #[arg(long, env = "AGENTCOM_BACKUP_INTERVAL", value_parser = parse_duration)]
    pub backup_interval: Option<Duration>,
    #[arg(long, env = "AGENTCOM_BACKUP_KEEP")]
    pub backup_keep: Option<u32>,
    #[arg(long, env = "AGENTCOM_BACKUP_STALE_AFTER", value_parser = parse_duration)]
    pub backup_stale_after: Option<Duration>,
    #[arg(long, env = "AGENTCOM_FRAGMENTATION_FLOOR", value_parser = parse_size)]
    pub fragmentation_floor: Option<u64>,
    /// Compact the store after a scheduled backup when storage health reports high
    /// fragmentation (at most once per backup interval).
    #[arg(long, env = "AGENTCOM_COMPACT_WHEN_FRAGMENTED", num_args = 0..=1, default_missing_value = "true")]
    pub compact_when_fragmented: Option<bool>,
    /// Bytes of messages one sender may have waiting in mailboxes (0: no limit).
    #[arg(long, env = "AGENTCOM_MAILBOX_QUOTA", value_parser = parse_size)]
    pub mailbox_quota: Option<u64>,
    /// Bytes of channel history one sender may hold over every channel (0: no limit).
    #[arg(long, env = "AGENTCOM_CHANNEL_QUOTA", value_parser = parse_size)]
    pub channel_quota: Option<u64>,
    /// The message history's oldest entries are trimmed beyond this many bytes.
    #[arg(long, env = "AGENTCOM_HISTORY_MAX_BYTES", value_parser = parse_size)]
    pub history_max_bytes: Option<u64>,
    /// How long a dashboard sign-in lasts.
    #[arg(long, env = "AGENTCOM_DASHBOARD_SESSION_TTL", value_parser = parse_duration)]
    pub dashboard_session_ttl: Option<Duration>,
    /// Let anyone register an agent (never re-mints for an existing id).
    #[arg(long, env = "AGENTCOM_OPEN_REGISTRATION", num_args = 0..=1, default_missing_value = "true")]
    pub open_registration: Option<bool>,
    /// Base URL handed to onboarded agents [default: from the Host header].
    #[arg(long, env = "AGENTCOM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Admin token (64 lowercase hex) created or refreshed at start.
    #[arg(long, env = "AGENTCOM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "AGENTCOM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "AGENTCOM_ACCEPT_TIMEOUT", value_parser = parse_duration)]
    pub accept_timeout: Option<Duration>,
    #[arg(long, env = "AGENTCOM_TASK_SWEEP_INTERVAL", value_parser = parse_duration)]
    pub task_sweep_interval: Option<Duration>,
    #[arg(long, env = "AGENTCOM_STUCK_TASK_AFTER", value_parser = parse_duration)]
    pub stuck_task_after: Option<Duration>,
    #[arg(long, env = "AGENTCOM_WS_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub ws_idle_timeout: Option<Duration>,
    /// How long one websocket write (and the close handshake) may take before the
    /// connection is dropped.
    #[arg(long, env = "AGENTCOM_WS_SEND_TIMEOUT", value_parser = parse_duration)]
    pub ws_send_timeout: Option<Duration>,
    /// How long an agent websocket may stay open without identifying.
    #[arg(long, env = "AGENTCOM_WS_IDENTIFY_TIMEOUT", value_parser = parse_duration)]
    pub ws_identify_timeout: Option<Duration>,
    #[arg(long, env = "AGENTCOM_REAPER_INTERVAL", value_parser = parse_duration)]
    pub reaper_interval: Option<Duration>,
    #[arg(long, env = "AGENTCOM_PRESENCE_TTL", value_parser = parse_duration)]
    pub presence_ttl: Option<Duration>,
    #[arg(long, env = "AGENTCOM_DASHBOARD_FLUSH_INTERVAL", value_parser = parse_duration)]
    pub dashboard_flush_interval: Option<Duration>,
    #[arg(long, env = "AGENTCOM_QUEUE_SAMPLE_INTERVAL", value_parser = parse_duration)]
    pub queue_sample_interval: Option<Duration>,
    #[arg(long, env = "AGENTCOM_COMPLETED_TASK_TTL", value_parser = parse_duration)]
    pub completed_task_ttl: Option<Duration>,
    /// How often the dashboard's health is checked for a Web Push alert.
    #[arg(long, env = "AGENTCOM_PUSH_HEALTH_INTERVAL", value_parser = parse_duration)]
    pub push_health_interval: Option<Duration>,
    /// VAPID `sub` claim of Web Push requests (`mailto:` or `https:` URL)
    /// [default: public_url if it is https, else mailto:agentcom@localhost].
    #[arg(long, env = "AGENTCOM_PUSH_SUBJECT")]
    pub push_subject: Option<String>,
    #[arg(long, env = "AGENTCOM_MAX_BODY_BYTES", value_parser = parse_size)]
    pub max_body_bytes: Option<u64>,
    #[arg(long, env = "AGENTCOM_MAX_WS_MESSAGE_BYTES", value_parser = parse_size)]
    pub max_ws_message_bytes: Option<u64>,
    /// A request body must arrive whole within this, else 408.
    #[arg(long, env = "AGENTCOM_BODY_TIMEOUT", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// A connection must send a request's headers within this of opening or of its
    /// previous answer, else it is closed.
    #[arg(long, env = "AGENTCOM_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Connections open at once, websockets included [default: 3/4 of the open-file limit].
    #[arg(long, env = "AGENTCOM_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Agent websockets open at once that have not identified [default: max_connections / 8].
    #[arg(long, env = "AGENTCOM_MAX_UNIDENTIFIED")]
    pub max_unidentified: Option<u32>,
    /// Requests (HTTP) and websocket frames one caller (agent id and role) may make a
    /// second, on average; 0 turns the limit off.
    #[arg(long, env = "AGENTCOM_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<f64>,
    /// Requests and frames one caller may make at once (the bucket's size).
    #[arg(long, env = "AGENTCOM_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Rate limit admin callers too (by default they are not limited).
    #[arg(long, env = "AGENTCOM_RATE_LIMIT_ADMIN", num_args = 0..=1, default_missing_value = "true")]
    pub rate_limit_admin: Option<bool>,
    /// Unauthenticated sign-ins and registrations one peer address may make a second, on
    /// average; 0 turns the limit off.
    #[arg(long, env = "AGENTCOM_ANONYMOUS_RATE_LIMIT_PER_SEC")]
    pub anonymous_rate_limit_per_sec: Option<f64>,
    /// Unauthenticated sign-ins and registrations one peer address may make at once.
    #[arg(long, env = "AGENTCOM_ANONYMOUS_RATE_LIMIT_BURST")]
    pub anonymous_rate_limit_burst: Option<u32>,
    /// Messages kept in the thread index; the oldest leave first [default: 10000].
    #[arg(long, env = "AGENTCOM_THREAD_INDEX_KEEP")]
    pub thread_index_keep: Option<u64>,
    /// Replies indexed per parent message; later ones are not listed [default: 1000].
    #[arg(long, env = "AGENTCOM_THREAD_MAX_REPLIES")]
    pub thread_max_replies: Option<u64>,
    /// Bytes of messages in the thread index; beyond it the oldest leave [default: 256MiB].
    #[arg(long, env = "AGENTCOM_THREAD_INDEX_MAX_BYTES", value_parser = parse_size)]
    pub thread_index_max_bytes: Option<u64>,
    /// Enable hooks for black-box tests (crash injection). Never in production.
    #[arg(long, env = "AGENTCOM_TEST_HOOKS", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub test_hooks: Option<bool>,
    /// Test hook: the scheduler pauses this long between an agent's FSM taking a task and
    /// the queue recording it, to widen that race window. Ignored without `--test-hooks`.
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub test_assign_pause: Option<Duration>,
    /// Test hook: every backup run waits this long before it starts writing, so that
    /// tests can make requests arrive during a run. Ignored without `--test-hooks`.
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub test_backup_pause: Option<Duration>,
}

/// The TOML file: the same keys, snake_case, durations and sizes as strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    bind: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    backup_dir: Option<PathBuf>,
    backup_interval: Option<String>,
    backup_keep: Option<u32>,
    backup_stale_after: Option<String>,
    fragmentation_floor: Option<String>,
    compact_when_fragmented: Option<bool>,
    mailbox_quota: Option<String>,
    channel_quota: Option<String>,
    history_max_bytes: Option<String>,
    dashboard_session_ttl: Option<String>,
    open_registration: Option<bool>,
    public_url: Option<String>,
    admin_token: Option<String>,
    log_format: Option<LogFormat>,
    accept_timeout: Option<String>,
    task_sweep_interval: Option<String>,
    stuck_task_after: Option<String>,
    ws_idle_timeout: Option<String>,
    ws_send_timeout: Option<String>,
    ws_identify_timeout: Option<String>,
    reaper_interval: Option<String>,
    presence_ttl: Option<String>,
    dashboard_flush_interval: Option<String>,
    queue_sample_interval: Option<String>,
    completed_task_ttl: Option<String>,
    push_health_interval: Option<String>,
    push_subject: Option<String>,
    max_body_bytes: Option<String>,
    max_ws_message_bytes: Option<String>,
    body_timeout: Option<String>,
    header_read_timeout: Option<String>,
    max_connections: Option<u32>,
    max_unidentified: Option<u32>,
    rate_limit_per_sec: Option<f64>,
    rate_limit_burst: Option<u32>,
    rate_limit_admin: Option<bool>,
    anonymous_rate_limit_per_sec: Option<f64>,
    anonymous_rate_limit_burst: Option<u32>,
    thread_index_keep: Option<u64>,
    thread_max_replies: Option<u64>,
    thread_index_max_bytes: Option<String>,
}

/// Resolved settings of `serve`. Settings of features still to come (backups, tasks,
/// presence, dashboard) are accepted and validated already, and wired as they land.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub backup_dir: PathBuf,
    pub backup_interval: Duration,
    pub backup_keep: u32,
    pub backup_stale_after: Duration,
    pub fragmentation_floor: u64,
    pub compact_when_fragmented: bool,
    pub mailbox_quota: u64,
    pub channel_quota: u64,
    pub history_max_bytes: u64,
    pub dashboard_session_ttl: Duration,
    pub open_registration: bool,
    pub public_url: Option<String>,
    pub admin_token: Option<String>,
    pub log_format: LogFormat,
    pub accept_timeout: Duration,
    pub task_sweep_interval: Duration,
    pub stuck_task_after: Duration,
    pub ws_idle_timeout: Duration,
    pub ws_send_timeout: Duration,
    pub ws_identify_timeout: Duration,
    pub reaper_interval: Duration,
    pub presence_ttl: Duration,
    pub dashboard_flush_interval: Duration,
    pub queue_sample_interval: Duration,
    pub completed_task_ttl: Duration,
    pub push_health_interval: Duration,
    pub push_subject: String,
    pub max_body_bytes: u64,
    pub max_ws_message_bytes: u64,
    pub body_timeout: Duration,
    pub header_read_timeout: Duration,
    /// `None`: sized from the open-file limit at start.
    pub max_connections: Option<u32>,
    /// `None`: an eighth of the connection cap.
    pub max_unidentified: Option<u32>,
    /// Per caller, HTTP requests and websocket frames together; `None`: off.
    pub rate_limit: Option<Limit>,
    pub rate_limit_admin: bool,
    /// Per peer address, unauthenticated sign-ins and registrations; `None`: off.
    pub anonymous_rate_limit: Option<Limit>,
    pub thread_index_keep: u64,
    pub thread_max_replies: u64,
    pub thread_index_max_bytes: u64,
    pub test_hooks: bool,
    pub test_assign_pause: Duration,
    pub test_backup_pause: Duration,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A rate limit from its two settings (`name` is their common prefix): a `per_sec` of 0
/// turns it off; otherwise it must be a positive number and `burst` at least 1.
fn resolve_rate_limit(per_sec: f64, burst: u32, name: &str) -> Result<Option<Limit>, String> {
    if !per_sec.is_finite() || per_sec < 0.0 {
        return Err(format!(
            "{name}_per_sec must be a number of requests a second, 0 to turn the limit off (not {per_sec})"
        ));
    }
    if per_sec == 0.0 {
        return Ok(None);
    }
    if burst == 0 {
        return Err(format!(
            "{name}_burst must be at least 1 (set {name}_per_sec to 0 to turn the limit off)"
        ));
    }
    Ok(Limit::per_second(per_sec, burst))
}

fn file_duration(v: Option<String>, key: &str) -> Result<Option<Duration>, String> {
    v.map(|s| parse_duration(&s).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

fn file_size(v: Option<String>, key: &str) -> Result<Option<u64>, String> {
    v.map(|s| parse_size(&s).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> Result<Settings, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let backup_dir = args
            .backup_dir
            .or(file.backup_dir)
            .unwrap_or_else(|| data_dir.join("backups"));
        let admin_token = args.admin_token.or(file.admin_token);
        if let Some(t) = &admin_token {
            if !agentcom_core::auth::is_token_format(t) {
                return Err(
                    "admin_token must be 64 lowercase hex characters (e.g. `openssl rand -hex 32`)"
                        .into(),
                );
            }
        }
        let max_body_bytes = args
            .max_body_bytes
            .or(file_size(file.max_body_bytes, "max_body_bytes")?)
            .unwrap_or(1 << 20);
        let max_ws_message_bytes = args
            .max_ws_message_bytes
            .or(file_size(
                file.max_ws_message_bytes,
                "max_ws_message_bytes",
            )?)
            .unwrap_or(1 << 20);
        if max_body_bytes == 0 || max_ws_message_bytes == 0 {
            return Err("max_body_bytes and max_ws_message_bytes must be positive".into());
        }
        let public_url = args.public_url.or(file.public_url);
        // Test-hook pauses count only with test hooks on.
        let test_hooks = args.test_hooks.unwrap_or(false);
        let hook = |pause: Option<Duration>| {
            if test_hooks {
                pause.unwrap_or_default()
            } else {
                Duration::ZERO
            }
        };
        macro_rules! dur {
            ($name:ident, $default:expr) => {
                args.$name
                    .or(file_duration(file.$name, stringify!($name))?)
                    .unwrap_or($default)
            };
        }
        let body_timeout = dur!(body_timeout, secs(10));
        let header_read_timeout = dur!(header_read_timeout, secs(30));
        if body_timeout.is_zero() || header_read_timeout.is_zero() {
            return Err("body_timeout and header_read_timeout must be positive".into());
        }
        let (per_sec, burst) = agentcom_hub::DEFAULT_RATE_LIMIT;
        let rate_limit = resolve_rate_limit(
            args.rate_limit_per_sec
                .or(file.rate_limit_per_sec)
                .unwrap_or(per_sec),
            args.rate_limit_burst
                .or(file.rate_limit_burst)
                .unwrap_or(burst),
            "rate_limit",
        )?;
        let (per_sec, burst) = agentcom_http::DEFAULT_ANONYMOUS_RATE_LIMIT;
        let anonymous_rate_limit = resolve_rate_limit(
            args.anonymous_rate_limit_per_sec
                .or(file.anonymous_rate_limit_per_sec)
                .unwrap_or(per_sec),
            args.anonymous_rate_limit_burst
                .or(file.anonymous_rate_limit_burst)
                .unwrap_or(burst),
            "anonymous_rate_limit",
        )?;
        let max_connections = args.max_connections.or(file.max_connections);
        let max_unidentified = args.max_unidentified.or(file.max_unidentified);
        if max_connections == Some(0) || max_unidentified == Some(0) {
            return Err("max_connections and max_unidentified must be positive".into());
        }
        let thread_index_keep = args
            .thread_index_keep
            .or(file.thread_index_keep)
            .unwrap_or(10_000);
        let thread_max_replies = args
            .thread_max_replies
            .or(file.thread_max_replies)
            .unwrap_or(1_000);
        if thread_index_keep == 0 || thread_max_replies == 0 {
            return Err("thread_index_keep and thread_max_replies must be positive".into());
        }
        Ok(Settings {
            bind: args
                .bind
                .or(file.bind)
                .unwrap_or_else(|| "127.0.0.1:4000".parse().expect("valid")),
            backup_interval: dur!(backup_interval, secs(24 * 3600)),
            backup_keep: args.backup_keep.or(file.backup_keep).unwrap_or(3),
            backup_stale_after: dur!(backup_stale_after, secs(48 * 3600)),
            fragmentation_floor: args
                .fragmentation_floor
                .or(file_size(file.fragmentation_floor, "fragmentation_floor")?)
                .unwrap_or(64 << 20),
            compact_when_fragmented: args
                .compact_when_fragmented
                .or(file.compact_when_fragmented)
                .unwrap_or(false),
            mailbox_quota: args
                .mailbox_quota
                .or(file_size(file.mailbox_quota, "mailbox_quota")?)
                .unwrap_or(64 << 20),
            channel_quota: args
                .channel_quota
                .or(file_size(file.channel_quota, "channel_quota")?)
                .unwrap_or(64 << 20),
            history_max_bytes: args
                .history_max_bytes
                .or(file_size(file.history_max_bytes, "history_max_bytes")?)
                .unwrap_or(256 << 20),
            open_registration: args
                .open_registration
                .or(file.open_registration)
                .unwrap_or(false),
            public_url: public_url.clone(),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            accept_timeout: dur!(accept_timeout, secs(60)),
            task_sweep_interval: dur!(task_sweep_interval, secs(30)),
            stuck_task_after: dur!(stuck_task_after, secs(300)),
            ws_idle_timeout: dur!(ws_idle_timeout, secs(60)),
            ws_send_timeout: dur!(ws_send_timeout, secs(10)),
            ws_identify_timeout: dur!(ws_identify_timeout, secs(30)),
            reaper_interval: dur!(reaper_interval, secs(30)),
            presence_ttl: dur!(presence_ttl, secs(60)),
            dashboard_flush_interval: dur!(dashboard_flush_interval, Duration::from_millis(100)),
            queue_sample_interval: dur!(queue_sample_interval, secs(60)),
            completed_task_ttl: dur!(completed_task_ttl, secs(7 * 24 * 3600)),
            push_health_interval: dur!(push_health_interval, secs(60)),
            dashboard_session_ttl: dur!(dashboard_session_ttl, secs(7 * 24 * 3600)).max(secs(1)),
            body_timeout,
            header_read_timeout,
            max_connections,
            max_unidentified,
            rate_limit,
            rate_limit_admin: args
                .rate_limit_admin
                .or(file.rate_limit_admin)
                .unwrap_or(false),
            anonymous_rate_limit,
            thread_index_keep,
            thread_max_replies,
            thread_index_max_bytes: args
                .thread_index_max_bytes
                .or(file_size(
                    file.thread_index_max_bytes,
                    "thread_index_max_bytes",
                )?)
                .unwrap_or(256 << 20),
            push_subject: match args.push_subject.or(file.push_subject) {
                Some(s) if s.starts_with("mailto:") || s.starts_with("https://") => s,
                Some(s) => {
                    return Err(format!(
                        "push_subject must be a mailto: or https: URL, not `{s}`"
                    ))
                }
                None => public_url
                    .clone()
                    .filter(|u| u.starts_with("https://"))
                    .unwrap_or_else(|| "mailto:agentcom@localhost".into()),
            },
            test_hooks,
            test_assign_pause: hook(args.test_assign_pause),
            test_backup_pause: hook(args.test_backup_pause),
            data_dir,
            backup_dir,
            admin_token,
            max_body_bytes,
            max_ws_message_bytes,
        })
    }
}

fn read_file(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), secs(300));
        assert_eq!(parse_duration("7d").unwrap(), secs(7 * 86400));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:4000");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.backup_dir, PathBuf::from("./data/backups"));
        assert_eq!(s.backup_keep, 3);
        assert_eq!(s.fragmentation_floor, 64 << 20);
        assert_eq!((s.mailbox_quota, s.channel_quota), (64 << 20, 64 << 20));
        assert_eq!((s.thread_index_keep, s.thread_max_replies), (10_000, 1_000));
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.dashboard_flush_interval, Duration::from_millis(100));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:5000\"\nbackup_keep = 7\nws_idle_timeout = \"5s\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            backup_keep: Some(9),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.bind.port(), 5000);
        assert_eq!(s.backup_keep, 9);
        assert_eq!(s.ws_idle_timeout, secs(5));
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = Settings::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn the_push_subject_is_a_contact_url() {
        let subject = |push_subject: Option<&str>, public_url: Option<&str>| {
            Settings::resolve(ServeArgs {
                push_subject: push_subject.map(Into::into),
                public_url: public_url.map(Into::into),
                ..ServeArgs::default()
            })
            .map(|s| s.push_subject)
        };
        assert_eq!(subject(None, None).unwrap(), "mailto:agentcom@localhost");
        assert_eq!(
            subject(None, Some("https://hub.example.org")).unwrap(),
            "https://hub.example.org"
        );
        assert_eq!(
            subject(None, Some("http://10.0.0.5:4000")).unwrap(),
            "mailto:agentcom@localhost"
        );
        assert_eq!(
            subject(
                Some("mailto:ops@example.org"),
                Some("https://hub.example.org")
            )
            .unwrap(),
            "mailto:ops@example.org"
        );
        let err = subject(Some("ops@example.org"), None).unwrap_err();
        assert!(err.contains("push_subject"), "{err}");
    }

    #[test]
    fn rate_limits_default_on_for_callers_and_peers_and_zero_turns_them_off() {
        let s = Settings::resolve(ServeArgs::default()).unwrap();
        assert_eq!(s.rate_limit, Limit::per_second(500.0, 1000));
        assert!(!s.rate_limit_admin);
        assert_eq!(s.anonymous_rate_limit, Limit::per_second(1.0, 20));
        let s = Settings::resolve(ServeArgs {
            rate_limit_per_sec: Some(0.0),
            anonymous_rate_limit_per_sec: Some(0.0),
            rate_limit_admin: Some(true),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!((s.rate_limit, s.anonymous_rate_limit), (None, None));
        assert!(s.rate_limit_admin);
    }

    #[test]
    fn rate_limits_come_from_the_file_as_integers_or_decimals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            "rate_limit_per_sec = 20\nrate_limit_burst = 40\nrate_limit_admin = true\n\
             anonymous_rate_limit_per_sec = 0.5\nanonymous_rate_limit_burst = 3\n",
        )
        .unwrap();
        let s = Settings::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(s.rate_limit, Limit::per_second(20.0, 40));
        assert!(s.rate_limit_admin);
        assert_eq!(s.anonymous_rate_limit, Limit::per_second(0.5, 3));
    }

    #[test]
    fn nonsense_rate_limits_are_refused_with_the_setting_named() {
        for (args, named) in [
            (
                ServeArgs {
                    rate_limit_per_sec: Some(-1.0),
                    ..ServeArgs::default()
                },
                "rate_limit_per_sec",
            ),
            (
                ServeArgs {
                    rate_limit_per_sec: Some(f64::NAN),
                    ..ServeArgs::default()
                },
                "rate_limit_per_sec",
            ),
            (
                ServeArgs {
                    rate_limit_burst: Some(0),
                    ..ServeArgs::default()
                },
                "rate_limit_burst",
            ),
            (
                ServeArgs {
                    anonymous_rate_limit_burst: Some(0),
                    ..ServeArgs::default()
                },
                "anonymous_rate_limit_burst",
            ),
        ] {
            let err = Settings::resolve(args).unwrap_err();
            assert!(err.starts_with(named), "{err}");
        }
    }

    #[test]
    fn a_malformed_admin_token_is_refused() {
        let err = Settings::resolve(ServeArgs {
            admin_token: Some("short".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("64 lowercase hex"));
    }
}
