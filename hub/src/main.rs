//! `reactor-hub`: Reactor's fleet hub.
//!
//! Subcommands: `serve` (the server: [`reactor_hub::server`]), `token` (API tokens, offline:
//! [`reactor_hub::cli`]), `validate` and `exec` (the command-line contract in DSL.md, shared
//! with the agent through `reactor_core::cli`) and `schema` (the JSON Schema of the workflow
//! language).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reactor_core::process;
use reactor_hub::cli::TokenCommand;
use reactor_hub::config::{SERVE_HELP, ServeFlags};

/// The API's requests, events, records and SQL rows are many small allocations made on one
/// worker thread and freed on another (the journal's writer tasks); mimalloc's per-thread
/// free lists serve that far cheaper than glibc's arenas (a quarter of the hub's CPU went to
/// malloc/free under `POST /run` load).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "reactor-hub",
    version,
    about = "Reactor's hub: the control plane — workflows, executions and the API, on SQLite or PostgreSQL."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: the API on --listen, workflows and executions in the database (SQLite in
    /// --data, or --database postgres://…). Zero configuration works.
    #[command(after_long_help = SERVE_HELP, after_help = "See --help for hub.toml keys and REACTOR_* variables.")]
    Serve(ServeFlags),
    /// API tokens: create (printed once), list, revoke. Works offline on the data folder.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Fleet devices: add (prints a one-time enrollment token on its last line), list.
    /// Works offline on the data folder.
    #[command(subcommand)]
    Device(reactor_hub::fleet::cli::DeviceCommand),
    /// Secrets workflows read as secrets.NAME: set (value from stdin), list, delete.
    /// Works offline on the data folder; values are encrypted at rest and never printed.
    #[command(subcommand)]
    Secret(reactor_hub::secrets::cli::SecretCommand),
    /// validate, exec, schema: the same on both binaries.
    #[command(flatten)]
    Language(process::LanguageCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Command::Serve(flags) => return reactor_hub::server::run(&flags),
        Command::Token(command) => return reactor_hub::cli::token(command),
        Command::Device(command) => return reactor_hub::fleet::cli::device(command),
        Command::Secret(command) => return reactor_hub::secrets::cli::secret(command),
        Command::Language(command) => command.run(),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
