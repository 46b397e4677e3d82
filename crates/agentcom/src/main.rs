//! `agentcom`: the hub binary.

mod offline;
mod serve;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::offline::{BackupCommand, Dirs, TokenCommand};
use crate::settings::ServeArgs;

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
    /// Back up, list and verify backups offline (the hub must not hold the data dir).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Rebuild a data directory from a verified backup (offline); the replaced database
    /// is kept aside.
    Restore {
        /// A backup id (in the backup directory) or a path to a backup directory.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Compact the store of a stopped hub: copy its live records into a fresh database and
    /// switch to it (a running hub compacts online: POST /api/admin/compact).
    Compact {
        #[command(flatten)]
        dirs: Dirs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve::serve(cli.serve),
        Some(Command::Serve(args)) => serve::serve(*args),
        Some(Command::Token(cmd)) => offline::token(cmd),
        Some(Command::Backup(cmd)) => offline::backup(cmd),
        Some(Command::Restore { from, dirs }) => offline::restore(&from, &dirs),
        Some(Command::Compact { dirs }) => offline::compact(&dirs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("agentcom: {message}");
            ExitCode::FAILURE
        }
    }
}
