//! `agentcom`: the hub binary.

mod settings;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use agentcom_core::auth::Role;
use agentcom_http::HttpSettings;
use agentcom_hub::{now_ms, tokens, Hub, HubSettings};
use agentcom_store::{Engine, SledEngine, StoreError, StoreReader};
use clap::{Parser, Subcommand};

use crate::settings::{LogFormat, ServeArgs, Settings};

/// AgentCom: a coordination hub for AI agents.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve(Box<ServeArgs>),
    /// Manage tokens offline (the hub must not be running on the same data dir).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token and print it on stdout.
    Create {
        #[arg(long)]
        agent_id: String,
        #[arg(long, default_value = "agent", value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// List tokens (agent, role, prefix; never the token).
    List {
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Revoke every token of an agent.
    Revoke {
        #[arg(long)]
        agent_id: String,
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Token(cmd)) => token(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("agentcom: {message}");
            ExitCode::FAILURE
        }
    }
}

fn open_store(data_dir: &Path) -> Result<SledEngine, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    SledEngine::open(data_dir).map_err(|e| match e {
        StoreError::Locked { .. } => format!("{e}. Stop the hub that uses {} first.", data_dir.display()),
        StoreError::Open { .. } => format!(
            "{e}\nThe store may be damaged. Restore the newest verified backup with:\n  agentcom restore --from <backup-dir>/<newest> --data-dir {}",
            data_dir.display()
        ),
        other => other.to_string(),
    })
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let settings = Settings::resolve(args)?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), String> {
    let engine: Arc<dyn Engine> = Arc::new(open_store(&settings.data_dir)?);
    let hub_settings = HubSettings {
        test_hooks: settings.test_hooks,
        presence_ttl: settings.presence_ttl,
        reaper_interval: settings.reaper_interval,
        accept_timeout: settings.accept_timeout,
        task_sweep_interval: settings.task_sweep_interval,
        stuck_task_after: settings.stuck_task_after,
        completed_task_ttl: settings.completed_task_ttl,
        ..HubSettings::default()
    };
    let hub = Hub::start(engine, hub_settings)
        .await
        .map_err(|e| format!("the hub failed to start: {e}"))?;

    if let Some(token) = &settings.admin_token {
        hub.token_bootstrap(token)
            .await
            .map_err(|e| format!("cannot store the admin token: {e}"))?;
    } else if !hub.has_admin_token().map_err(|e| e.to_string())? {
        let (token, _) = hub
            .token_create(tokens::BOOTSTRAP_ADMIN_ID, Role::Admin)
            .await
            .map_err(|e| format!("cannot create an admin token: {e}"))?;
        println!("admin token (shown once, keep it): {token}");
    }

    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let data = std::fs::canonicalize(&settings.data_dir).unwrap_or(settings.data_dir.clone());
    println!("AgentCom listening on http://{addr}");
    println!("dashboard: http://{addr}/dashboard");
    println!("data: {}", data.join("db").display());
    tracing::info!(%addr, data = %data.display(), "hub started");

    let http = HttpSettings {
        max_body_bytes: settings.max_body_bytes as usize,
        max_ws_message_bytes: settings.max_ws_message_bytes as usize,
        ws_idle_timeout: settings.ws_idle_timeout,
        open_registration: settings.open_registration,
        public_url: settings.public_url.clone(),
    };
    agentcom_http::serve(listener, hub.clone(), http, shutdown_signal()).await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    println!("AgentCom stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
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

fn token(cmd: TokenCommand) -> Result<(), String> {
    let data_dir = match &cmd {
        TokenCommand::Create { data_dir, .. }
        | TokenCommand::List { data_dir }
        | TokenCommand::Revoke { data_dir, .. } => data_dir.clone(),
    };
    let engine = Arc::new(open_store(&data_dir)?);
    let reader = StoreReader::new(engine.clone());
    let err = |e: StoreError| e.to_string();
    match cmd {
        TokenCommand::Create { agent_id, role, .. } => {
            if !agentcom_core::auth::is_valid_agent_id(&agent_id) {
                return Err("agent id must be non-empty, without spaces or slashes".into());
            }
            let token = tokens::mint();
            let (_, op) = tokens::create(&agent_id, role, &token, false, now_ms());
            engine.apply(&[op]).map_err(err)?;
            engine.flush().map_err(err)?;
            println!("{token}");
        }
        TokenCommand::List { .. } => {
            for (_, r) in tokens::list(&reader).map_err(err)? {
                println!(
                    "{}\t{}\t{}...\t{}",
                    r.agent_id,
                    r.role.as_str(),
                    r.prefix,
                    r.created_at
                );
            }
        }
        TokenCommand::Revoke { agent_id, .. } => {
            let ops = tokens::revoke(&reader, &agent_id).map_err(err)?;
            engine.apply(&ops).map_err(err)?;
            engine.flush().map_err(err)?;
            println!("revoked {} token(s) of {agent_id}", ops.len());
        }
    }
    Ok(())
}
