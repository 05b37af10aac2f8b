//! The `exec` action: runs an allow-listed command without a shell
//!
//! Decisions:
//! - Only commands the runtime's [`Allowlist`] permits run; the default permits none, and the
//!   refusal names the setting to change. An entry matches the `command` setting exactly: a
//!   bare name (`echo`) is looked up in the runtime's `PATH`, a path (`/usr/bin/echo`) allows
//!   only that path. [`Allowlist::All`] is for `reactor-agent exec --allow-exec`.
//! - The program runs directly with its `args` (no shell, so no globbing, pipes or `$VAR`
//!   expansion; allow-list `sh` explicitly to get one). It inherits the runtime's environment
//!   and working directory. `stdin` is written to its standard input (else it reads nothing).
//! - Like a GitHub Actions `run:` step or a Kestra script task, a non-zero exit fails the
//!   step, permanently (running it again would most likely fail the same way), with the exit
//!   code and the end of stderr in the message. `allow_failure: true` turns that off: the step
//!   succeeds and the output carries the code. A process killed by a signal has code `null`
//!   and always fails.
//! - Output `{code, stdout, stderr}`: the streams as text (invalid UTF-8 replaced), each capped
//!   at [`ExecConfig::max_output_bytes`] (1 MiB by default); the rest is read and dropped and
//!   a `[… N more bytes truncated]` line is appended.
//! - `timeout` (default 60s): the process is killed and the step fails as retryable
//!   (`timed out`). Cancellation kills it too ([`ActionError::Cancelled`]); so does dropping the
//!   action's future (`kill_on_drop`). Only the direct child is killed: processes it started
//!   in the background may outlive it, and if they keep its stdout/stderr open the step waits
//!   for them (until the timeout).
//! - Errors: a missing program or one that may not be executed is permanent; other spawn
//!   failures (out of processes, memory) are retryable.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::settings::{With, clip, scalar_text};
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::Value;

pub const SPEC: ActionSpec = ActionSpec {
    kind: "exec",
    description: "runs an allow-listed command without a shell",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "command",
            required: true,
            json_type: "string",
            description: "the program: a name looked up in PATH, or a path; must be allow-listed",
        },
        SettingSpec {
            name: "args",
            required: false,
            json_type: "array",
            description: "its arguments (passed as they are, no shell)",
        },
        SettingSpec {
            name: "stdin",
            required: false,
            json_type: "string",
            description: "text written to its standard input",
        },
        SettingSpec {
            name: "timeout",
            required: false,
            json_type: "string",
            description: "a duration (default 60s); the process is killed when it passes",
        },
        SettingSpec {
            name: "allow_failure",
            required: false,
            json_type: "boolean",
            description: "succeed even when the exit code is not 0 (default false)",
        },
    ],
};

/// Which commands `exec` may run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Allowlist {
    /// Exactly these commands (names or paths, compared as written). Empty denies all.
    Only(Vec<String>),
    /// Any command (`reactor-agent exec --allow-exec`).
    All,
}

impl Default for Allowlist {
    fn default() -> Self {
        Allowlist::Only(Vec::new())
    }
}

impl Allowlist {
    pub fn permits(&self, command: &str) -> bool {
        match self {
            Allowlist::All => true,
            Allowlist::Only(commands) => commands.iter().any(|c| c == command),
        }
    }
}

/// How the runtime lets `exec` run.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    pub allow: Allowlist,
    /// Used when the step gives no `timeout`.
    pub default_timeout: Duration,
    /// Cap of each captured stream.
    pub max_output_bytes: usize,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            allow: Allowlist::default(),
            default_timeout: Duration::from_secs(60),
            max_output_bytes: 1024 * 1024,
        }
    }
}

impl ExecConfig {
    /// Allows the given commands, other settings default.
    pub fn allowing<I, S>(commands: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecConfig {
            allow: Allowlist::Only(commands.into_iter().map(Into::into).collect()),
            ..ExecConfig::default()
        }
    }
}

/// A parsed `exec` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSettings {
    pub command: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub timeout: Option<Duration>,
    pub allow_failure: bool,
}

impl ExecSettings {
    pub fn parse(input: &Value) -> Result<Self, ActionError> {
        let with = With::new(&SPEC, input)?;
        let command = with.required_string("command")?;
        if command.is_empty() {
            return Err(with.error("\"command\" must not be empty"));
        }
        let args = match with.array("args")? {
            None => Vec::new(),
            Some(items) => items
                .iter()
                .map(|item| {
                    scalar_text(item).ok_or_else(|| {
                        with.error("\"args\" must be a list of strings (numbers and booleans are converted)")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let stdin = match with.get("stdin") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        Ok(ExecSettings {
            command: command.to_string(),
            args,
            stdin,
            timeout: with.duration("timeout")?,
            allow_failure: with.bool("allow_failure")?.unwrap_or(false),
        })
    }
}

/// What a finished process left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn to_value(&self) -> Value {
        json!({"code": self.code, "stdout": self.stdout, "stderr": self.stderr})
    }
}

/// Runs one `exec` step: the allowlist check, the process, the timeout, cancellation and the
/// exit-code rule.
pub async fn run_command(
    config: &ExecConfig,
    settings: &ExecSettings,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<ExecOutput, ActionError> {
    let command = settings.command.as_str();
    if !config.allow.permits(command) {
        return Err(ActionError::permanent(format!(
            "exec: command {command:?} is not allowed; add it to the runtime's exec allowlist \
             (setting `exec.allow`), or pass --allow-exec to `reactor-agent exec`"
        )));
    }
    let timeout = settings.timeout.unwrap_or(config.default_timeout);
    let mut child = Command::new(command)
        .args(&settings.args)
        .stdin(if settings.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(command, &e))?;

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = settings.stdin.as_deref().unwrap_or("").as_bytes();
    let max = config.max_output_bytes;
    let work = async {
        let feed = async {
            if let Some(mut pipe) = stdin {
                // A program that exits without reading its input closes the pipe: not an error.
                let _ = pipe.write_all(input).await;
                drop(pipe);
            }
        };
        let ((), out, err, status) = tokio::join!(
            feed,
            read_capped(stdout, max),
            read_capped(stderr, max),
            child.wait()
        );
        (out, err, status)
    };
    // Cancel safety: dropping `work` (on cancel or timeout) drops the child handle, and
    // `kill_on_drop` kills the process; we also kill it explicitly below and reap it.
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(None),
        _ = tokio::time::sleep(timeout) => Err(Some(timeout)),
        done = work => Ok(done),
    };
    let (out, err, status) = match outcome {
        Ok(done) => done,
        Err(reason) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(match reason {
                None => ActionError::Cancelled,
                Some(timeout) => ActionError::retryable(format!(
                    "exec: {command:?} timed out after {} and was killed",
                    crate::flow::format_duration(timeout)
                )),
            });
        }
    };
    let status = status.map_err(|e| ActionError::retryable(format!("exec: {command:?}: {e}")))?;
    let output = ExecOutput {
        code: status.code(),
        stdout: out,
        stderr: err,
    };
    check_status(command, status, &output, settings.allow_failure)?;
    Ok(output)
}

fn check_status(
    command: &str,
    status: ExitStatus,
    output: &ExecOutput,
    allow_failure: bool,
) -> Result<(), ActionError> {
    if status.success() || (allow_failure && output.code.is_some()) {
        return Ok(());
    }
    let how = match output.code {
        Some(code) => format!("exited with code {code}"),
        None => signal_text(status),
    };
    let detail = clip(output.stderr.trim_end(), 500, true);
    let message = if detail.is_empty() {
        format!("exec: {command:?} {how}")
    } else {
        format!("exec: {command:?} {how}: {detail}")
    };
    Err(ActionError::permanent(message))
}

#[cfg(unix)]
fn signal_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => format!("was killed by signal {signal}"),
        None => "ended without an exit code".to_string(),
    }
}

#[cfg(not(unix))]
fn signal_text(_status: ExitStatus) -> String {
    "ended without an exit code".to_string()
}

fn spawn_error(command: &str, error: &std::io::Error) -> ActionError {
    use std::io::ErrorKind::*;
    match error.kind() {
        NotFound => ActionError::permanent(format!("exec: command {command:?} not found")),
        PermissionDenied => {
            ActionError::permanent(format!("exec: command {command:?} may not be executed"))
        }
        InvalidInput => ActionError::permanent(format!("exec: command {command:?}: {error}")),
        _ => ActionError::retryable(format!("exec: could not start {command:?}: {error}")),
    }
}

/// Reads a stream to its end, keeping at most `max` bytes.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, max: usize) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut dropped: u64 = 0;
    let mut chunk = vec![0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                let take = room.min(n);
                kept.extend_from_slice(&chunk[..take]);
                dropped += (n - take) as u64;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n[… {dropped} more bytes truncated]\n"));
    }
    text
}

/// The `exec` action.
#[derive(Clone, Debug, Default)]
pub struct ExecAction {
    config: ExecConfig,
}

impl ExecAction {
    pub fn new(config: ExecConfig) -> Self {
        ExecAction { config }
    }
}

#[async_trait]
impl Action for ExecAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        let settings = ExecSettings::parse(&input)?;
        let output = run_command(&self.config, &settings, &context.cancel).await?;
        Ok(output.to_value())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::action::test_context;

    fn action(commands: &[&str]) -> ExecAction {
        ExecAction::new(ExecConfig::allowing(commands.iter().copied()))
    }

    async fn run(commands: &[&str], input: Value) -> Result<Value, ActionError> {
        action(commands).execute(input, &test_context()).await
    }

    #[tokio::test]
    async fn default_denies_and_names_the_setting() {
        let err = ExecAction::default()
            .execute(json!({"command": "echo"}), &test_context())
            .await
            .unwrap_err();
        assert!(matches!(err, ActionError::Permanent { .. }));
        assert!(err.to_string().contains("exec.allow"), "{err}");
        assert!(err.to_string().contains("--allow-exec"), "{err}");
        // A name on the list does not allow the same name at another path.
        let err = run(&["echo"], json!({"command": "/bin/echo"}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
    }

    #[tokio::test]
    async fn runs_without_a_shell() {
        let out = run(
            &["echo"],
            json!({"command": "echo", "args": ["a b", "$HOME", 3]}),
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"code": 0, "stdout": "a b $HOME 3\n", "stderr": ""})
        );
    }

    #[tokio::test]
    async fn all_allows_anything() {
        let config = ExecConfig {
            allow: Allowlist::All,
            ..ExecConfig::default()
        };
        let out = ExecAction::new(config)
            .execute(json!({"command": "echo", "args": ["x"]}), &test_context())
            .await
            .unwrap();
        assert_eq!(out["stdout"], json!("x\n"));
    }

    #[tokio::test]
    async fn writes_stdin() {
        let out = run(
            &["cat"],
            json!({"command": "cat", "stdin": "line 1\nline 2"}),
        )
        .await
        .unwrap();
        assert_eq!(out["stdout"], json!("line 1\nline 2"));
    }

    #[tokio::test]
    async fn non_zero_exit_fails_unless_allowed() {
        let script =
            json!({"command": "sh", "args": ["-c", "echo out; echo bad thing >&2; exit 3"]});
        let err = run(&["sh"], script.clone()).await.unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("exec: \"sh\" exited with code 3: bad thing")
        );
        let mut allowed = script;
        allowed["allow_failure"] = json!(true);
        let out = run(&["sh"], allowed).await.unwrap();
        assert_eq!(
            out,
            json!({"code": 3, "stdout": "out\n", "stderr": "bad thing\n"})
        );
    }

    #[tokio::test]
    async fn caps_output_with_a_marker() {
        let config = ExecConfig {
            max_output_bytes: 10,
            ..ExecConfig::allowing(["sh"])
        };
        let settings = ExecSettings::parse(&json!({
            "command": "sh",
            "args": ["-c", "head -c 100000 /dev/zero | tr '\\0' x"]
        }))
        .unwrap();
        let out = run_command(&config, &settings, &Default::default())
            .await
            .unwrap();
        assert_eq!(out.stdout, "xxxxxxxxxx\n[… 99990 more bytes truncated]\n");
    }

    #[tokio::test]
    async fn timeout_kills_and_is_retryable() {
        let started = Instant::now();
        let err = run(
            &["sleep"],
            json!({"command": "sleep", "args": ["10"], "timeout": "200ms"}),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("timed out after 200ms"), "{err}");
    }

    #[tokio::test]
    async fn cancel_kills() {
        let context = test_context();
        let cancel = context.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let err = action(&["sleep"])
            .execute(json!({"command": "sleep", "args": ["10"]}), &context)
            .await
            .unwrap_err();
        assert_eq!(err, ActionError::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn missing_program_and_bad_settings_are_permanent() {
        let err = run(
            &["no-such-program-here"],
            json!({"command": "no-such-program-here"}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("exec: command \"no-such-program-here\" not found")
        );
        let err = run(&["echo"], json!({"command": "echo", "args": "x"}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("exec: \"args\" must be a list, not a string")
        );
        let err = run(&["echo"], json!({"command": "echo", "timeout": 5}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("duration string"), "{err}");
        let err = run(&["echo"], json!({"args": []})).await.unwrap_err();
        assert_eq!(err, ActionError::permanent("exec: \"command\" is required"));
    }
}
