//! What the agent and hub binaries share around their commands: log set-up and the async
//! runtime each command runs on, with the exit codes DSL.md's command-line contract gives.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use serde::Deserialize;

/// How logs are written: human-readable lines (default) or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Logs go to stderr (stdout carries the commands' output); `RUST_LOG` filters, else
/// `default_level`. Colours only on a terminal. A second call changes nothing.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs a daemon (`reactor-agent run`, `reactor-hub serve`) on a multi-thread runtime with
/// `workers` worker threads (tokio's default, one per core, when `None`): exit 0 after a
/// clean stop, 1 when the runtime cannot start or `serve` ends with an error (logged as
/// `{program} stopped`, with its causes).
pub fn run_daemon<E: Display>(
    program: &str,
    workers: Option<usize>,
    serve: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "{program} stopped");
            ExitCode::from(1)
        }
    }
}

/// Runs a short command (`exec`, `enroll`, …) on a current-thread runtime and returns its exit
/// code; 2 when the runtime cannot start.
pub fn run_command(command: impl Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            2
        }
    }
}

/// Runs an administrative command (`token`, `device`, `secret`, `enroll` …): exit 0, or 1
/// with the error and its causes on stderr (also when the runtime cannot start).
pub fn run_admin<E: Display>(command: impl Future<Output = Result<(), E>>) -> ExitCode {
    let code = run_command(async {
        match command.await {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("error: {error:#}");
                1
            }
        }
    });
    ExitCode::from(u8::try_from(code.min(1)).unwrap_or(1))
}

/// The commands both binaries offer with the same contract (DSL.md): `validate`, `exec` and
/// `schema`. Each binary flattens them into its own subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LanguageCommand {
    /// Check workflow files or folders; print every problem as PATH:LINE:COL and exit 1 if any.
    Validate {
        /// Files or folders (.yaml/.yml in a folder are checked, and `call:` targets resolved
        /// among them).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Run one workflow once, to the end, in-process, and print its result as JSON.
    ///
    /// Exit 0 when it succeeded (or its `if` skipped it), 1 when it failed, 2 when the file
    /// is invalid. Workflows named by `call:` are looked up among the .yaml/.yml files in
    /// FILE's folder. Secrets come from REACTOR_SECRET_<NAME> variables.
    Exec {
        file: std::path::PathBuf,
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

impl LanguageCommand {
    /// Runs the command; returns its exit code.
    pub fn run(self) -> i32 {
        match self {
            LanguageCommand::Validate { paths } => {
                crate::cli::validate(&paths, &mut std::io::stdout())
            }
            LanguageCommand::Exec {
                file,
                event,
                input,
                allow_exec,
                env,
            } => {
                init_logging(LogFormat::Human, "warn");
                let options = crate::cli::ExecOptions {
                    file,
                    event,
                    input,
                    allow_exec,
                    env,
                };
                run_command(crate::cli::exec(
                    &options,
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                ))
            }
            LanguageCommand::Schema => {
                let schema = crate::dsl::schema::json_schema();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schema).unwrap_or_default()
                );
                0
            }
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM (logged): the start of a graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
