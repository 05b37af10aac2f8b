//! `reactor-hub secret set NAME` (the value from stdin, never from the command line, where
//! `ps` and shell history would see it) / `list` / `delete NAME`. Works offline on the data
//! folder (or `--database`); a running hub picks the change up within
//! [`super::WATCH_PERIOD`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{MAX_VALUE_LEN, SecretStore};
use crate::db::Database;

/// The data folder when neither `--data` nor `REACTOR_DATA` is given (as `serve`).
const DEFAULT_DATA: &str = "./reactor-data";

/// `reactor-hub secret` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret; its value is read from stdin (one trailing newline is
    /// dropped): `printf %s "$TOKEN" | reactor-hub secret set SLACK_TOKEN`.
    Set {
        /// Letters, digits and _ (workflows read it as secrets.NAME).
        name: String,
        #[command(flatten)]
        place: SecretPlace,
    },
    /// List secret names and when they changed — never their values.
    List {
        #[command(flatten)]
        place: SecretPlace,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        place: SecretPlace,
    },
}

/// Where the hub keeps its database and key: the same flags and variables as `serve`.
#[derive(Debug, Clone, Args)]
pub struct SecretPlace {
    /// The hub's data folder (holds secret.key unless REACTOR_SECRET_KEY is set)
    /// [default: ./reactor-data].
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

impl SecretPlace {
    async fn open(&self) -> anyhow::Result<(Database, SecretStore)> {
        let data = self
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
        let db = Database::open(self.database.as_deref(), &data)
            .await
            .context("opening the hub's database")?;
        db.migrate().await.context("migrating the hub's database")?;
        let store = SecretStore::open(db.clone(), &data)?;
        Ok((db, store))
    }
}

/// Runs a secret subcommand: exit 0, or 1 with the error on stderr.
pub fn secret(command: SecretCommand) -> ExitCode {
    let mut stdin = std::io::stdin().lock();
    reactor_core::process::run_admin(run(command, &mut stdin, &mut std::io::stdout()))
}

/// Reads a value: at most [`MAX_VALUE_LEN`] bytes of UTF-8, one trailing newline dropped.
pub fn read_value(input: &mut dyn Read) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    input
        .take(MAX_VALUE_LEN as u64 + 3)
        .read_to_end(&mut bytes)
        .context("reading the value from stdin")?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() > MAX_VALUE_LEN {
        anyhow::bail!("the value on stdin is over the {MAX_VALUE_LEN}-byte limit");
    }
    String::from_utf8(bytes).context("the value on stdin is not UTF-8 text")
}

/// The subcommands, with their input and output passed in (for tests).
pub async fn run(
    command: SecretCommand,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set { name, place } => {
            super::check_name(&name)?;
            let value = read_value(input)?;
            let (db, store) = place.open().await?;
            let existed = store.set(&name, &value).await;
            db.close().await;
            let verb = if existed? { "replaced" } else { "created" };
            eprintln!("{verb} secret {name}");
        }
        SecretCommand::List { place } => {
            let (db, store) = place.open().await?;
            let secrets = store.list().await;
            db.close().await;
            for secret in secrets? {
                writeln!(out, "{}\t{}", secret.name, secret.updated_at)?;
            }
        }
        SecretCommand::Delete { name, place } => {
            let (db, store) = place.open().await?;
            let deleted = store.delete(&name).await;
            db.close().await;
            if !deleted? {
                anyhow::bail!("no secret named {name:?}");
            }
            eprintln!("deleted secret {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_drops_one_newline_and_has_a_limit() {
        assert_eq!(read_value(&mut &b"abc\n"[..]).unwrap(), "abc");
        assert_eq!(read_value(&mut &b"abc\r\n"[..]).unwrap(), "abc");
        assert_eq!(read_value(&mut &b"abc\n\n"[..]).unwrap(), "abc\n");
        let big = vec![b'x'; MAX_VALUE_LEN + 1];
        assert!(read_value(&mut &big[..]).is_err());
        assert!(read_value(&mut &[0xff, 0xfe][..]).is_err());
    }
}
