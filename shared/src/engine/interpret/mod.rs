//! The interpreter: DSL.md's step semantics as async Rust, driven by [`super::machine`].
//!
//! Rules that keep it deterministic (and so replayable):
//! - every suspension is an effect whose key derives from the step's path and attempt;
//! - combinators poll their children in declaration order;
//! - time comes from the fact being applied (`Shared::now`), randomness from hashes.
//!
//! Paths: a top-level step is its id (or its index); nested blocks extend the parent's path:
//! `/child`, `.branch`, `[item]`, `#iteration`, `?case`, `!catch`, and `~attempt` when a
//! retried block runs again, so every effect of every attempt has its own key.

mod combinators;
mod inputs;

pub use inputs::resolve_inputs;

use combinators::{run_foreach, run_loop, run_parallel};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};

use crate::expr::{Expr, Template};
use crate::flow::{Retry, Setting, SleepStep, Step, StepKind, Workflow, parse_duration};
use crate::{Map, Value};

use super::backoff::retry_delay;
use super::journal::{
    ErrorInfo, Event, ExecutionId, ExecutionStatus, Outcome, StepStatus, Timestamp,
};
use super::machine::{ActionCommand, Command, Completion, Handle, Resolution, StepView, WaitSpec};
use super::scope::Locals;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a block or step ended, when it did not fail.
pub(crate) enum Flow {
    /// Ran, with this output.
    Ran(Value),
    /// Its `if`/`unless` said no: the block's output stays what it was.
    Skipped,
    /// A `return` step: the execution finishes now with this output.
    Return(Value),
}

type Run = Result<Flow, ErrorInfo>;

struct Ctx {
    h: Handle,
    workflow: Arc<Workflow>,
}

/// Runs a whole execution: inputs, variables, steps (under the workflow timeout), output,
/// and `on_failure` when it fails.
pub(crate) async fn run_execution(h: Handle, workflow: Arc<Workflow>) -> Completion {
    let ctx = Ctx {
        h,
        workflow: workflow.clone(),
    };
    let result = match prepare(&ctx) {
        Ok(()) => {
            let body = run_block(&ctx, &workflow.steps, String::new(), Locals::default());
            match workflow.timeout {
                Some(limit) => with_timeout(&ctx, "timeout".into(), limit, body).await,
                None => body.await,
            }
        }
        Err(error) => Err(error),
    };
    let result = result.and_then(|flow| match flow {
        Flow::Return(value) => Ok(value),
        Flow::Ran(last) => finish_output(&ctx, last),
        Flow::Skipped => finish_output(&ctx, Value::Null),
    });
    match result {
        Ok(output) => Completion {
            status: ExecutionStatus::Succeeded,
            output,
            error: None,
        },
        Err(error) => {
            if !workflow.on_failure.is_empty() {
                let locals = Locals::default().with("error", error.to_value());
                // The execution has failed whatever its handler does; a failing handler is
                // visible in its own steps.
                let _ = run_block(&ctx, &workflow.on_failure, "on_failure".into(), locals).await;
            }
            Completion {
                status: ExecutionStatus::Failed,
                output: Value::Null,
                error: Some(error),
            }
        }
    }
}

/// Checks inputs against their declarations (defaults applied) and sets initial variables.
fn prepare(ctx: &Ctx) -> Result<(), ErrorInfo> {
    let given = ctx.h.lock().globals.inputs.clone();
    let inputs = resolve_inputs(&ctx.workflow, given)?;
    ctx.h.lock().globals.inputs = inputs;
    for (name, template) in &ctx.workflow.vars {
        let value = ctx.eval(template, &Locals::default())?;
        if let Value::Object(vars) = &mut ctx.h.lock().globals.vars {
            vars.insert(name.clone(), value);
        }
    }
    Ok(())
}

fn finish_output(ctx: &Ctx, last: Value) -> Result<Value, ErrorInfo> {
    match &ctx.workflow.output {
        Some(template) => ctx.eval(template, &Locals::default()),
        None => Ok(last),
    }
}

impl Ctx {
    fn eval(&self, template: &Template, locals: &Locals) -> Result<Value, ErrorInfo> {
        if let Template::Literal(value) = template {
            return Ok(value.clone());
        }
        let shared = self.h.lock();
        template
            .eval(&shared.view(locals))
            .map_err(|e| ErrorInfo::new("expression", e.message))
    }

    fn eval_bool(&self, expr: &Expr, locals: &Locals) -> Result<bool, ErrorInfo> {
        let shared = self.h.lock();
        expr.eval_bool(&shared.view(locals))
            .map_err(|e| ErrorInfo::new("expression", e.message))
    }

    fn duration(
        &self,
        setting: &Setting<Duration>,
        locals: &Locals,
    ) -> Result<Duration, ErrorInfo> {
        match setting {
            Setting::Fixed(d) => Ok(*d),
            Setting::Dynamic(expr) => {
                let value = {
                    let shared = self.h.lock();
                    expr.eval(&shared.view(locals))
                        .map_err(|e| ErrorInfo::new("expression", e.message))?
                };
                value_to_duration(&value)
            }
        }
    }

    fn now(&self) -> Timestamp {
        self.h.lock().now
    }

    /// The execution's id as text: only actions, retries and emits need it, so it is made
    /// when they ask rather than for every execution.
    fn execution(&self) -> String {
        self.h.lock().id.to_string()
    }

    fn record(&self, step: &Step, view: StepView) {
        if let Some(id) = &step.id {
            self.h.lock().record_step(id.as_str(), view);
        }
    }

    /// Records a step that succeeded with `output`: copied only for a step with an id, the
    /// only ones the record keeps (a batch's list of messages passed on by a step without
    /// one is not copied for nothing).
    fn record_success(&self, step: &Step, output: &Value, attempts: u32) {
        if step.id.is_some() {
            let view = StepView {
                status: StepStatus::Succeeded,
                output: output.clone(),
                error: None,
                attempts,
            };
            self.record(step, view);
        }
    }
}

/// A duration computed at run time: a duration string, or a number of seconds.
fn value_to_duration(value: &Value) -> Result<Duration, ErrorInfo> {
    match value {
        Value::String(text) => {
            parse_duration(text).map_err(|e| ErrorInfo::new("expression", e.to_string()))
        }
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| ErrorInfo::new("expression", format!("invalid duration {n}"))),
        other => Err(ErrorInfo::new(
            "expression",
            format!("expected a duration like \"10s\", got {other}"),
        )),
    }
}

/// Races `body` against a durable timer; the loser is dropped (and so cancelled).
async fn with_timeout<'a>(ctx: &'a Ctx, key: String, limit: Duration, body: Boxed<'a, Run>) -> Run {
    let at = ctx.now().plus(limit);
    let timer = ctx.h.effect(Command::StartTimer { key, at });
    match select(body, timer).await {
        Either::Left((result, _timer)) => result,
        Either::Right((_, _body)) => {
            let mut error = ErrorInfo::new(
                "timeout",
                format!("timed out after {}", crate::flow::format_duration(limit)),
            );
            error.retryable = true;
            Err(error)
        }
    }
}

fn run_block<'a>(ctx: &'a Ctx, steps: &'a [Step], path: String, locals: Locals) -> Boxed<'a, Run> {
    Box::pin(async move {
        let mut last = Value::Null;
        for (index, step) in steps.iter().enumerate() {
            let name = step
                .id
                .as_ref()
                .map_or_else(|| index.to_string(), |id| id.to_string());
            let step_path = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            match run_step(ctx, step, step_path, locals.clone()).await? {
                Flow::Ran(output) => last = output,
                Flow::Skipped => {}
                Flow::Return(value) => return Ok(Flow::Return(value)),
            }
        }
        Ok(Flow::Ran(last))
    })
}

/// Marks a step with an id `cancelled` if its future is dropped while it runs.
struct RunningGuard<'a> {
    ctx: &'a Ctx,
    step: &'a Step,
    attempts: u32,
    armed: bool,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let view = StepView {
                status: StepStatus::Cancelled,
                output: Value::Null,
                error: None,
                attempts: self.attempts,
            };
            self.ctx.record(self.step, view);
        }
    }
}

fn run_step<'a>(ctx: &'a Ctx, step: &'a Step, path: String, locals: Locals) -> Boxed<'a, Run> {
    Box::pin(async move {
        // The step's name is only needed on an error: built then, not for every step.
        let with_step = |mut e: ErrorInfo| {
            e.step.get_or_insert_with(|| {
                step.id
                    .as_ref()
                    .map_or_else(|| path.clone(), |id| id.to_string())
            });
            e
        };
        let skipped = match (&step.when, &step.unless) {
            (Some(when), _) if !ctx.eval_bool(when, &locals).map_err(with_step)? => true,
            (_, Some(unless)) if ctx.eval_bool(unless, &locals).map_err(with_step)? => true,
            _ => false,
        };
        if skipped {
            ctx.record(
                step,
                StepView {
                    status: StepStatus::Skipped,
                    output: Value::Null,
                    error: None,
                    attempts: 0,
                },
            );
            return Ok(Flow::Skipped);
        }
        let default_retry = Retry::default();
        let retry = step.retry.as_ref().unwrap_or(&default_retry);
        let mut attempt = 1;
        let mut guard = RunningGuard {
            ctx,
            step,
            attempts: 1,
            armed: step.id.is_some(),
        };
        loop {
            guard.attempts = attempt;
            ctx.record(
                step,
                StepView {
                    status: StepStatus::Running,
                    output: Value::Null,
                    error: None,
                    attempts: attempt,
                },
            );
            let body = run_kind(ctx, step, &path, &locals, attempt);
            let result = match &step.timeout {
                Some(setting) => match ctx.duration(setting, &locals) {
                    Ok(limit) => {
                        with_timeout(ctx, format!("{path}@{attempt}#timeout"), limit, body).await
                    }
                    Err(e) => Err(e),
                },
                None => body.await,
            };
            let error = match result {
                Ok(Flow::Return(value)) => {
                    guard.armed = false;
                    ctx.record_success(step, &value, attempt);
                    return Ok(Flow::Return(value));
                }
                Ok(Flow::Ran(result)) => match step_output(ctx, step, &locals, result) {
                    Ok(output) => {
                        guard.armed = false;
                        ctx.record_success(step, &output, attempt);
                        return Ok(Flow::Ran(output));
                    }
                    Err(e) => with_step(e),
                },
                Ok(Flow::Skipped) => unreachable!("a step kind never reports skipped"),
                Err(e) => with_step(e),
            };
            if attempt < retry.attempts && should_retry(ctx, retry, &error, &locals) {
                let key = format!("{path}@{attempt}#retry");
                let delay = retry_delay(retry, attempt + 1, &format!("{}:{key}", ctx.execution()));
                let at = ctx.now().plus(delay);
                ctx.h.effect(Command::StartTimer { key, at }).await;
                attempt += 1;
                continue;
            }
            guard.armed = false;
            let view = StepView {
                status: StepStatus::Failed,
                output: Value::Null,
                error: Some(error.clone()),
                attempts: attempt,
            };
            ctx.record(step, view);
            return match &step.catch {
                Some(handler) => {
                    let handler_locals = locals.with("error", error.to_value());
                    match run_block(ctx, handler, format!("{path}!catch"), handler_locals).await? {
                        Flow::Skipped => Ok(Flow::Ran(Value::Null)),
                        flow => Ok(flow),
                    }
                }
                None => Err(error),
            };
        }
    })
}

fn should_retry(ctx: &Ctx, retry: &Retry, error: &ErrorInfo, locals: &Locals) -> bool {
    match &retry.when {
        Some(condition) => ctx
            .eval_bool(condition, &locals.with("error", error.to_value()))
            .unwrap_or(false),
        None => error.retryable,
    }
}

fn step_output(ctx: &Ctx, step: &Step, locals: &Locals, result: Value) -> Result<Value, ErrorInfo> {
    match &step.output {
        Some(template) => ctx.eval(template, &locals.with("result", result)),
        None => Ok(result),
    }
}

/// What a `transform` step's `with` gives as its `value`. Only that entry is copied or
/// evaluated when it is the only one (the usual shape), not the whole `with` map.
fn transform_value(ctx: &Ctx, with: &Template, locals: &Locals) -> Result<Value, ErrorInfo> {
    match with {
        Template::Literal(Value::Object(map)) => {
            Ok(map.get("value").cloned().unwrap_or(Value::Null))
        }
        Template::Map(entries) if entries.len() == 1 && entries[0].0 == "value" => {
            ctx.eval(&entries[0].1, locals)
        }
        other => {
            let mut input = ctx.eval(other, locals)?;
            Ok(input
                .get_mut("value")
                .map(Value::take)
                .unwrap_or(Value::Null))
        }
    }
}

/// The path under which a block nested in this step runs on this attempt.
fn block_path(path: &str, attempt: u32) -> String {
    if attempt == 1 {
        path.to_string()
    } else {
        format!("{path}~{attempt}")
    }
}

fn run_kind<'a>(
    ctx: &'a Ctx,
    step: &'a Step,
    path: &str,
    locals: &Locals,
    attempt: u32,
) -> Boxed<'a, Run> {
    let base = block_path(path, attempt);
    let path = path.to_string();
    let locals = locals.clone();
    Box::pin(async move {
        match &step.kind {
            // `transform` only evaluates its `value`: the machine does it itself, with no
            // command and no journal entry — replay recomputes it exactly.
            StepKind::Action(action) if action.action == "transform" => {
                Ok(Flow::Ran(transform_value(ctx, &action.with, &locals)?))
            }
            StepKind::Action(action) => {
                let idempotency_key = format!("{}:{path}", ctx.execution());
                let mut execution = ctx.h.lock().globals.execution.clone();
                execution["attempt"] = Value::from(attempt);
                execution["idempotency_key"] = Value::from(idempotency_key.clone());
                let input = ctx.eval(&action.with, &locals.with("execution", execution))?;
                let command = ActionCommand {
                    key: format!("{path}@{attempt}"),
                    action: action.action.clone(),
                    input,
                    attempt,
                    step: step
                        .id
                        .as_ref()
                        .map_or_else(|| path.clone(), |id| id.to_string()),
                    idempotency_key,
                };
                outcome(ctx.h.effect(Command::RunAction(command)).await)
            }
            StepKind::Set(assignments) => {
                let mut assigned = Map::new();
                for (name, template) in assignments {
                    let value = ctx.eval(template, &locals)?;
                    if let Value::Object(vars) = &mut ctx.h.lock().globals.vars {
                        vars.insert(name.clone(), value.clone());
                    }
                    assigned.insert(name.clone(), value);
                }
                Ok(Flow::Ran(Value::Object(assigned)))
            }
            StepKind::Switch(switch) => {
                for (index, case) in switch.cases.iter().enumerate() {
                    if ctx.eval_bool(&case.when, &locals)? {
                        return ran(
                            run_block(ctx, &case.steps, format!("{base}?{index}"), locals).await?,
                        );
                    }
                }
                match &switch.default {
                    Some(steps) => {
                        ran(run_block(ctx, steps, format!("{base}?default"), locals).await?)
                    }
                    None => Ok(Flow::Ran(Value::Null)),
                }
            }
            StepKind::Parallel(parallel) => run_parallel(ctx, parallel, base, locals).await,
            StepKind::Foreach(foreach) => run_foreach(ctx, foreach, base, locals).await,
            StepKind::Loop(looping) => run_loop(ctx, looping, base, locals).await,
            StepKind::Call(call) => {
                let input = ctx.eval(&call.input, &locals)?;
                let key = format!("{path}@{attempt}");
                let child = ExecutionId::derived(ctx.h.lock().id, &key);
                let command = Command::StartChild {
                    key,
                    child,
                    workflow: call.workflow.clone(),
                    version: call.version,
                    input,
                    wait: call.wait,
                };
                match ctx.h.effect(command).await {
                    Resolution::ChildStarted(id) => Ok(Flow::Ran(
                        serde_json::json!({ "execution": id.to_string() }),
                    )),
                    other => outcome(other),
                }
            }
            StepKind::Sleep(sleep) => {
                let at = match sleep {
                    SleepStep::For(setting) => ctx.now().plus(ctx.duration(setting, &locals)?),
                    SleepStep::Until(template) => {
                        value_to_timestamp(&ctx.eval(template, &locals)?)?
                    }
                };
                ctx.h
                    .effect(Command::StartTimer {
                        key: format!("{path}@{attempt}#sleep"),
                        at,
                    })
                    .await;
                Ok(Flow::Ran(Value::Null))
            }
            StepKind::Wait(wait) => {
                let key = format!("{path}@{attempt}#wait");
                let spec = WaitSpec {
                    matches: wait.matches.clone(),
                    locals: locals.clone(),
                };
                ctx.h.lock().waits.insert(key.clone(), spec);
                let waiting: Boxed<'a, Run> = Box::pin(async move {
                    let command = Command::AwaitEvent {
                        key,
                        pattern: wait.event.clone(),
                    };
                    match ctx.h.effect(command).await {
                        Resolution::Event(event) => Ok(Flow::Ran(event.to_value())),
                        other => outcome(other),
                    }
                });
                match &wait.timeout {
                    Some(setting) => {
                        let limit = ctx.duration(setting, &locals)?;
                        with_timeout(
                            ctx,
                            format!("{path}@{attempt}#wait-timeout"),
                            limit,
                            waiting,
                        )
                        .await
                    }
                    None => waiting.await,
                }
            }
            StepKind::Emit(emit) => {
                let event_type = match ctx.eval(&emit.event_type, &locals)? {
                    Value::String(s) => s,
                    other => {
                        return Err(ErrorInfo::new(
                            "expression",
                            format!("emit type must be a string, got {other}"),
                        ));
                    }
                };
                let data = ctx.eval(&emit.data, &locals)?;
                let topic = match &emit.topic {
                    Some(t) => Some(value_text(ctx.eval(t, &locals)?)),
                    None => None,
                };
                let key = format!("{path}@{attempt}");
                let now = ctx.now();
                let execution = ctx.execution();
                let event = Event {
                    id: format!("{execution}:{key}"),
                    event_type,
                    source: format!("reactor:workflow/{}", ctx.workflow.name),
                    time: now.to_rfc3339(),
                    data,
                    meta: serde_json::json!({ "execution": execution }),
                };
                outcome(ctx.h.effect(Command::Emit { key, event, topic }).await)
            }
            StepKind::Group(steps) => ran(run_block(ctx, steps, base, locals).await?),
            StepKind::Fail { message } => {
                let message = value_text(ctx.eval(message, &locals)?);
                let mut error = ErrorInfo::new("fail", message);
                error.retryable = true;
                Err(error)
            }
            StepKind::Return(template) => Ok(Flow::Return(ctx.eval(template, &locals)?)),
        }
    })
}

/// A block that finished normally reports `Ran` (a skipped-only block ran with null output).
fn ran(flow: Flow) -> Run {
    Ok(match flow {
        Flow::Skipped => Flow::Ran(Value::Null),
        flow => flow,
    })
}

fn outcome(resolution: Resolution) -> Run {
    match resolution {
        Resolution::Finished(Outcome::Succeeded(value)) => Ok(Flow::Ran(value)),
        Resolution::Finished(Outcome::Failed(error)) => Err(error),
        other => Err(ErrorInfo::new(
            "internal",
            format!("unexpected resolution {other:?}"),
        )),
    }
}

fn value_text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn value_to_timestamp(value: &Value) -> Result<Timestamp, ErrorInfo> {
    match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(|e| {
                ErrorInfo::new(
                    "expression",
                    format!("sleep until {text:?}: not an RFC 3339 time ({e})"),
                )
            }),
        Value::Number(n) => n.as_i64().map(Timestamp).ok_or_else(|| {
            ErrorInfo::new(
                "expression",
                format!("sleep until {n}: expected milliseconds since the epoch"),
            )
        }),
        other => Err(ErrorInfo::new(
            "expression",
            format!("sleep until expects a timestamp, got {other}"),
        )),
    }
}
