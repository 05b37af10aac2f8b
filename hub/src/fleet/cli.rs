//! `reactor-hub device …`: add devices (and print their one-time enrollment token) and list
//! them, offline, on the data folder (or `--database`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::registry;
use crate::cli::DataFlags;

/// `reactor-hub device` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Add a device and print its one-time enrollment token alone on the last line.
    Add {
        /// The device's name, also its id on the wire (1-64 bytes, none of `+ # / %`, no
        /// control characters, not starting with `$`).
        name: String,
        /// Labels `key=value` (repeatable, or comma-separated); rollouts target them.
        #[arg(long = "labels", value_name = "K=V")]
        labels: Vec<String>,
        /// How long the token stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        expires: String,
        #[command(flatten)]
        place: DataFlags,
    },
    /// List devices: id, enrolled, online, last seen, versions, labels.
    List {
        #[command(flatten)]
        place: DataFlags,
    },
}

/// Runs a device subcommand: exit 0, or 1 with the error on stderr.
pub fn device(command: DeviceCommand) -> ExitCode {
    reactor_core::process::run_admin(run(command, &mut std::io::stdout()))
}

async fn run(command: DeviceCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add {
            name,
            labels,
            expires,
            place,
        } => {
            let labels = registry::parse_labels(&labels)?;
            let ttl = reactor_core::flow::parse_duration(&expires)
                .map_err(|e| anyhow::anyhow!("--expires {expires:?}: {e}"))?;
            if ttl.is_zero() {
                anyhow::bail!("--expires must be longer than zero");
            }
            let db = place.open().await?;
            let token = registry::add_device(&db, &name, &labels, ttl).await;
            db.close().await;
            let token = token.context("adding the device")?;
            let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                out,
                "added device {name} (labels: {}); enrollment token, single use, valid {expires}:",
                if shown.is_empty() {
                    "none".into()
                } else {
                    shown.join(",")
                }
            )?;
            writeln!(out, "{token}")?;
        }
        DeviceCommand::List { place } => {
            let db = place.open().await?;
            let devices = registry::list(&db).await;
            db.close().await;
            for d in devices? {
                let labels: Vec<String> =
                    d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(
                    out,
                    "{}\t{}\t{}\tagent {}\tbundle {}\t{}",
                    d.id,
                    if d.enrolled { "enrolled" } else { "pending" },
                    if d.online { "online" } else { "offline" },
                    d.agent_version.as_deref().unwrap_or("-"),
                    d.bundle_version
                        .map_or_else(|| "-".into(), |v| v.to_string()),
                    labels.join(",")
                )?;
            }
        }
    }
    Ok(())
}
