//! `agentcom serve`: start the hub, serve until SIGTERM/SIGINT, shut down cleanly.

use std::sync::Arc;

use agentcom_core::auth::Role;
use agentcom_http::HttpSettings;
use agentcom_hub::threads::ThreadLimits;
use agentcom_hub::{tokens, Hub, HubSettings};
use agentcom_store::Engine;

use crate::offline::open_store;
use crate::settings::{LogFormat, ServeArgs, Settings};

pub fn serve(args: ServeArgs) -> Result<(), String> {
    let settings = Settings::resolve(args)?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run(settings))
}

/// Hand memory freed after a burst (a join storm, a large snapshot, a backup) back to the
/// system every few seconds: glibc keeps freed memory in its per-thread arenas otherwise,
/// and an idle hub would keep the resident size of its busiest moment.
fn spawn_memory_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe { libc::malloc_trim(0) };
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::warn!(error = %e, "memory trimmer not started"));
}

/// Raise the open-file soft limit to the hard limit: every connection is a file
/// descriptor, and the common soft limit of 1,024 is reached long before memory runs out.
/// Returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "cannot raise the open-file limit"
            );
        }
    }
    limit.rlim_cur
}

/// The default connection cap: three quarters of the open-file limit, leaving the rest to
/// the store, backups and the runtime.
fn default_max_connections(open_file_limit: u64) -> usize {
    (open_file_limit.min(1 << 24) / 4 * 3).max(16) as usize
}

async fn run(settings: Settings) -> Result<(), String> {
    spawn_memory_trimmer();
    let open_file_limit = raise_open_file_limit();
    let max_connections = settings
        .max_connections
        .map_or_else(|| default_max_connections(open_file_limit), |n| n as usize);
    tracing::info!(open_file_limit, max_connections, "connection limits");
    let engine: Arc<dyn Engine> =
        Arc::new(open_store(&settings.data_dir, Some(&settings.backup_dir))?);
    let hub_settings = HubSettings {
        test_hooks: settings.test_hooks,
        test_assign_pause: settings.test_assign_pause,
        test_backup_pause: settings.test_backup_pause,
        presence_ttl: settings.presence_ttl,
        reaper_interval: settings.reaper_interval,
        accept_timeout: settings.accept_timeout,
        task_sweep_interval: settings.task_sweep_interval,
        stuck_task_after: settings.stuck_task_after,
        completed_task_ttl: settings.completed_task_ttl,
        backup_dir: settings.backup_dir.clone(),
        backup_keep: settings.backup_keep.max(1) as usize,
        backup_interval: settings.backup_interval,
        backup_stale_after: settings.backup_stale_after,
        fragmentation_floor: settings.fragmentation_floor,
        compact_when_fragmented: settings.compact_when_fragmented,
        mailbox_quota_bytes: settings.mailbox_quota,
        channel_quota_bytes: settings.channel_quota,
        history_max_bytes: settings.history_max_bytes,
        dashboard_session_ttl: settings.dashboard_session_ttl,
        queue_sample_interval: settings.queue_sample_interval,
        dashboard_flush_interval: settings.dashboard_flush_interval,
        push_health_interval: settings.push_health_interval,
        push_subject: settings.push_subject.clone(),
        rate_limit: settings.rate_limit,
        rate_limit_admin: settings.rate_limit_admin,
        thread_limits: ThreadLimits {
            keep: settings.thread_index_keep,
            max_replies: settings.thread_max_replies,
            max_bytes: settings.thread_index_max_bytes,
        },
        ..HubSettings::default()
    };
    let hub = Hub::start(engine, hub_settings)
        .await
        .map_err(|e| format!("the hub failed to start: {e}"))?;

    let mut first_token = None;
    if let Some(token) = &settings.admin_token {
        hub.token_bootstrap(token)
            .await
            .map_err(|e| format!("cannot store the admin token: {e}"))?;
    } else if !hub.has_admin_token().map_err(|e| e.to_string())? {
        let (token, _) = hub
            .token_create(tokens::BOOTSTRAP_ADMIN_ID, Role::Admin)
            .await
            .map_err(|e| format!("cannot create an admin token: {e}"))?;
        first_token = Some(token);
    }

    let listener =
        listen(settings.bind).map_err(|e| format!("cannot listen on {}: {e}", settings.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let data = std::fs::canonicalize(&settings.data_dir).unwrap_or(settings.data_dir.clone());
    let shutdown = shutdown_signal();
    // First contact: the token and where to use it, side by side.
    if let Some(token) = first_token {
        println!("admin token (shown once, keep it): {token}");
        println!("dashboard: http://{addr}/dashboard (sign in with the admin token)");
    }
    println!("AgentCom listening on http://{addr}");
    let live = agentcom_store::live_dir::live_path(&data).unwrap_or(data.join("db"));
    println!("data: {}", live.display());
    tracing::info!(%addr, data = %data.display(), "hub started");

    let http = HttpSettings {
        max_body_bytes: settings.max_body_bytes as usize,
        body_timeout: settings.body_timeout,
        header_read_timeout: settings.header_read_timeout,
        max_connections,
        max_unidentified: settings
            .max_unidentified
            .map_or((max_connections / 8).max(1), |n| n as usize),
        max_ws_message_bytes: settings.max_ws_message_bytes as usize,
        ws_idle_timeout: settings.ws_idle_timeout,
        ws_send_timeout: settings.ws_send_timeout,
        ws_identify_timeout: settings.ws_identify_timeout,
        open_registration: settings.open_registration,
        public_url: settings.public_url.clone(),
        anonymous_rate_limit: settings.anonymous_rate_limit,
    };
    agentcom_http::serve(listener, hub.clone(), http, shutdown).await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    println!("AgentCom stopped");
    Ok(())
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future
/// is first polled: a signal sent as soon as "listening" is printed stops the hub cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTCOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Connections the kernel may hold for the hub before it accepts them. Linux caps it at
/// `net.core.somaxconn` (4096 by default). Tokio's `bind` asks for 1,024, which a flood of
/// new connections fills: the kernel then drops SYNs, and a client such as a health probe
/// waits a second for its retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
