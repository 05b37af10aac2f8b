//! `reactor-hub token …`: API tokens from the command line, offline, on the data folder (or
//! `--database`) — how the first admin token is made.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::auth::Role;
use crate::db::Database;

/// `reactor-hub token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it, alone on its own line, once (only its hash is kept).
    Create {
        /// What the token may do: viewer (read), editor (also write and run), admin (all).
        #[arg(long, value_enum)]
        role: Role,
        /// A label to recognise the token by in listings.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        place: DataFlags,
    },
    /// List tokens (id, role, name, created, revoked) — never their secrets.
    List {
        #[command(flatten)]
        place: DataFlags,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        place: DataFlags,
    },
}

/// Where the hub keeps its database: the same flags and variables as `serve`.
#[derive(Debug, Clone, Args)]
pub struct DataFlags {
    /// The hub's data folder [default: ./reactor-data].
    #[arg(long, env = "REACTOR_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Database URL (postgres://…); without it, SQLite in the data folder.
    #[arg(
        long,
        env = "REACTOR_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

impl DataFlags {
    pub(crate) async fn open(&self) -> anyhow::Result<Database> {
        let data = self
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA));
        let db = Database::open(self.database.as_deref(), &data)
            .await
            .context("opening the hub's database")?;
        db.migrate().await.context("migrating the hub's database")?;
        Ok(db)
    }
}

/// Runs a token subcommand: exit 0, or 1 with the error on stderr.
pub fn token(command: TokenCommand) -> ExitCode {
    reactor_core::process::run_admin(run_token(command, &mut std::io::stdout()))
}

async fn run_token(command: TokenCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, name, place } => {
            let db = place.open().await?;
            let (id, token) = crate::db::tokens::create(&db, role, name.as_deref())
                .await
                .context("storing the token")?;
            db.close().await;
            eprintln!("created {role} token {id}; it is shown once:");
            writeln!(out, "{}", token.secret)?;
        }
        TokenCommand::List { place } => {
            let db = place.open().await?;
            let tokens = crate::db::tokens::list(&db).await?;
            db.close().await;
            for t in tokens {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.role,
                    t.name.as_deref().unwrap_or("-"),
                    t.created_at.to_rfc3339(),
                    t.revoked_at.map_or_else(
                        || "active".to_string(),
                        |at| format!("revoked {}", at.to_rfc3339())
                    )
                )?;
            }
        }
        TokenCommand::Revoke { id, place } => {
            let db = place.open().await?;
            let revoked = crate::db::tokens::revoke(&db, &id).await?;
            db.close().await;
            if !revoked {
                anyhow::bail!("no live token with id {id:?}");
            }
            eprintln!("revoked token {id}");
        }
    }
    Ok(())
}
