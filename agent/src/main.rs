//! `reactor-agent`: Reactor's edge agent.
//!
//! Subcommands: `run` (the daemon, [`daemon`]), `validate` and `exec` (the command-line
//! contract in DSL.md, shared with the hub through `reactor_core::cli`) and `schema` (the JSON
//! Schema of the workflow language).
//!
//! Modules of the daemon:
//! - [`config`]: `agent.toml` + `REACTOR_*` environment + flags, layered and validated.
//! - [`daemon`]: start-up wiring, the task supervisor, graceful shutdown.
//! - [`workflows`]: the active workflows, their versions and their triggers.
//! - [`reload`]: hot reload of the workflows folder.
//! - [`embedded`]: workflows compiled into the binary.
//! - [`server`], [`api`], [`metrics`]: the HTTP server, `/api/v1`, `/metrics`.
//! - [`fleet`]: enrollment, the outbox feed and the connection to the fleet hub.
//! - [`mqtt`]: the MQTT publisher (`mqtt.publish`, `emit` with `topic`) and `mqtt` triggers.

mod api;
mod config;
mod daemon;
mod embedded;
mod fleet;
mod metrics;
mod mqtt;
mod reload;
mod server;
mod workflows;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reactor_core::process::{self, LogFormat};

/// Many small, short-lived allocations cross threads here (a request's event and record
/// are built on a worker, encoded, and freed after the store thread's commit); mimalloc's
/// per-thread free lists serve that pattern far cheaper than glibc's arenas.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "reactor-agent",
    version,
    about = "Reactor's edge agent: runs event-driven workflows on devices, offline, with durable state."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: every workflow of --workflows (and those compiled in), with durable
    /// state in --data, http triggers and the local API on --listen.
    #[command(after_long_help = config::RUN_HELP, after_help = "See --help for agent.toml keys and REACTOR_* variables.")]
    Run(config::RunFlags),
    /// Enroll this device in a fleet: trade a one-time token (from `reactor-hub device add`)
    /// for the device's identity, broker credentials and the fleet's bundle-signing key,
    /// stored in DATA/fleet/enrollment.json (0600). `run --data DATA` then connects by itself.
    Enroll {
        /// The hub's HTTP address, e.g. http://hub.local:8080.
        #[arg(long, value_name = "URL")]
        hub: String,
        /// The one-time enrollment token.
        #[arg(long, env = "REACTOR_ENROLL_TOKEN", value_name = "T")]
        token: String,
        /// The agent's data folder (the same as `run --data`).
        #[arg(long, env = "REACTOR_DATA", value_name = "DIR")]
        data: PathBuf,
    },
    /// validate, exec, schema: the same on both binaries.
    #[command(flatten)]
    Language(process::LanguageCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Command::Run(flags) => return daemon::run(&flags),
        Command::Language(command) => command.run(),
        Command::Enroll { hub, token, data } => {
            process::init_logging(LogFormat::Human, "warn");
            process::run_command(async {
                match fleet::enroll::enroll(&hub, &token, &data).await {
                    Ok(enrollment) => {
                        println!(
                            "enrolled as {} (broker {}); run `reactor-agent run --data {}` to connect",
                            enrollment.device_id,
                            enrollment.broker.url,
                            data.display()
                        );
                        0
                    }
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        1
                    }
                }
            })
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
