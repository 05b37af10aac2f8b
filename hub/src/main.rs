//! `reactor-hub`: Reactor's fleet hub.
//!
//! Subcommands: `serve` (the server: [`reactor_hub::server`]), `token` (API tokens, offline:
//! [`reactor_hub::cli`]), `validate` and `exec` (the command-line contract in DSL.md, shared
//! with the agent through `reactor_core::cli`) and `schema` (the JSON Schema of the workflow
//! language).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reactor_core::cli::{self, ExecOptions};
use reactor_core::process::{self, LogFormat};
use reactor_hub::cli::TokenCommand;
use reactor_hub::config::{SERVE_HELP, ServeFlags};

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
    /// Check workflow files or folders; print every problem as PATH:LINE:COL and exit 1 if any.
    Validate {
        /// Files or folders (.yaml/.yml in a folder are checked, and `call:` targets resolved
        /// among them).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run one workflow once, to the end, in-process, and print its result as JSON.
    ///
    /// Exit 0 when it succeeded (or its `if` skipped it), 1 when it failed, 2 when the file
    /// is invalid. Workflows named by `call:` are looked up among the .yaml/.yml files in
    /// FILE's folder. Secrets come from REACTOR_SECRET_<NAME> variables.
    Exec {
        file: PathBuf,
        /// The event's data: JSON, or @FILE to read JSON from a file.
        #[arg(long, env = "REACTOR_EVENT")]
        event: Option<String>,
        /// The workflow's inputs: a JSON object.
        #[arg(long, env = "REACTOR_INPUT")]
        input: Option<String>,
        /// Let the `exec` action run any command (otherwise it runs none).
        #[arg(long, env = "REACTOR_ALLOW_EXEC")]
        allow_exec: bool,
        /// Make an environment variable visible to expressions as env.NAME (repeatable).
        #[arg(long = "env", value_name = "NAME")]
        env: Vec<String>,
    },
    /// Print the JSON Schema of the workflow language (for editors and the designer).
    Schema,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Command::Serve(flags) => return reactor_hub::server::run(&flags),
        Command::Token(command) => return reactor_hub::cli::token(command),
        Command::Device(command) => return reactor_hub::fleet::cli::device(command),
        Command::Secret(command) => return reactor_hub::secrets::cli::secret(command),
        Command::Validate { paths } => cli::validate(&paths, &mut std::io::stdout()),
        Command::Exec {
            file,
            event,
            input,
            allow_exec,
            env,
        } => {
            process::init_logging(LogFormat::Human, "warn");
            let options = ExecOptions {
                file,
                event,
                input,
                allow_exec,
                env,
            };
            process::run_command(cli::exec(
                &options,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            ))
        }
        Command::Schema => {
            let schema = reactor_core::dsl::schema::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            0
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
