//! The execution state machine: pure, deterministic, advanced by facts.
//!
//! A [`Machine`] interprets one execution of a workflow. It performs no I/O: whenever the
//! workflow needs the outside world (an action, a timer, an event, a child workflow) it emits
//! a [`Command`] and suspends that branch until the driver applies the matching [`Fact`].
//!
//! The interpreter is written as ordinary async Rust (see `interpret.rs`) polled by this
//! machine with a no-op waker: every suspension point is an effect keyed by a deterministic
//! string (the step's path and attempt), and every combinator polls its children in a fixed
//! order. So the same facts, applied in the same order, always produce the same commands and
//! the same state — which is what makes recovery a plain replay of the journal.
//!
//! "Now" inside the machine is the time of the fact being applied, never a clock read.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::flow::Workflow;
use crate::{Map, Value};

use super::interpret;
use super::journal::{
    ErrorInfo, Event, ExecutionId, ExecutionStatus, Fact, Outcome, StepRecord, StepStatus,
    Timestamp,
};
use super::scope::{Environment, Globals, Locals, View};

/// Something the driver must do for the machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run an action. Its result comes back as `Fact::EffectFinished { key, .. }`.
    RunAction(ActionCommand),
    /// Apply `Fact::TimerFired { key }` at (or after) `at`.
    StartTimer { key: String, at: Timestamp },
    /// Offer matching events with [`Machine::offer_event`]; apply `Fact::EventReceived`
    /// for the first one it accepts.
    AwaitEvent { key: String, pattern: String },
    /// Start (or find, after a restart) the child execution `child`. With `wait`, apply its
    /// end as `Fact::EffectFinished`; without, apply `Fact::ChildStarted` once it is recorded.
    StartChild {
        key: String,
        child: ExecutionId,
        workflow: String,
        version: Option<u32>,
        input: Value,
        wait: bool,
    },
    /// Publish an event; apply `Fact::EffectFinished` once it is published.
    Emit {
        key: String,
        event: Event,
        topic: Option<String>,
    },
    /// The effect `key` is no longer wanted (a lost race, a timeout, a cancel): stop it and
    /// apply nothing more for it.
    Cancel { key: String },
}

impl Command {
    pub fn key(&self) -> &str {
        match self {
            Command::RunAction(a) => &a.key,
            Command::StartTimer { key, .. }
            | Command::AwaitEvent { key, .. }
            | Command::StartChild { key, .. }
            | Command::Emit { key, .. }
            | Command::Cancel { key } => key,
        }
    }
}

/// An action to perform.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionCommand {
    /// Unique per attempt: `path@attempt`.
    pub key: String,
    pub action: String,
    pub input: Value,
    pub attempt: u32,
    /// The step's id or path, for logs and the action's context.
    pub step: String,
    /// Stable across attempts and restarts of the same step.
    pub idempotency_key: String,
}

/// How an execution ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub status: ExecutionStatus,
    pub output: Value,
    pub error: Option<ErrorInfo>,
}

/// What an effect resolved to.
#[derive(Clone, Debug)]
pub(crate) enum Resolution {
    Finished(Outcome),
    TimerFired,
    Event(Event),
    ChildStarted(ExecutionId),
}

/// A pending `wait`: what the driver's offered events are matched against.
#[derive(Clone)]
pub(crate) struct WaitSpec {
    pub matches: Option<crate::expr::Expr>,
    pub locals: Locals,
}

/// State shared by the interpreter's futures and the machine. Only touched while the machine
/// polls or applies a fact, from one thread at a time.
pub(crate) struct Shared {
    pub id: ExecutionId,
    pub now: Timestamp,
    pub globals: Globals,
    /// Effects requested and not yet resolved, with the command that requested them.
    pub pending: BTreeMap<String, Command>,
    pub resolved: HashMap<String, Resolution>,
    pub waits: HashMap<String, WaitSpec>,
    pub commands: Vec<Command>,
    /// Timing of steps with an id (the `steps` value holds the rest).
    pub timing: HashMap<String, (Timestamp, Option<Timestamp>)>,
    pub cancel_requested: Option<String>,
}

impl Shared {
    pub fn request(&mut self, command: Command) {
        self.pending
            .insert(command.key().to_string(), command.clone());
        self.commands.push(command);
    }

    /// Called when a suspended effect is dropped before it resolved.
    pub fn abandon(&mut self, key: &str) {
        self.resolved.remove(key);
        self.waits.remove(key);
        if self.pending.remove(key).is_some() {
            self.commands.push(Command::Cancel {
                key: key.to_string(),
            });
        }
    }

    pub fn view<'a>(&'a self, locals: &'a Locals) -> View<'a> {
        View {
            globals: &self.globals,
            locals,
        }
    }

    /// Records a step with an id as `steps.<id>`.
    ///
    /// A step is recorded at least twice (running, then its end), so an existing entry is
    /// updated in place: no new map, no key strings, no re-hashing of the step id.
    pub fn record_step(&mut self, id: &str, record: StepView) {
        let now = self.now;
        let running = record.status == StepStatus::Running;
        match self.timing.get_mut(id) {
            Some(timing) if running => *timing = (now, None),
            Some(timing) => timing.1 = Some(now),
            None => {
                let end = if running { None } else { Some(now) };
                self.timing.insert(id.to_string(), (now, end));
            }
        }
        let Value::Object(steps) = &mut self.globals.steps else {
            return;
        };
        let error = record.error.map_or(Value::Null, |e| e.to_value());
        // In the order of `STEP_FIELDS`.
        let mut values = [
            Some(Value::from(record.status.as_str())),
            Some(record.output),
            Some(error),
            Some(Value::from(record.attempts)),
        ];
        if let Some(Value::Object(entry)) = steps.get_mut(id) {
            // Only this function writes these maps: they hold exactly `STEP_FIELDS`.
            for (key, slot) in entry.iter_mut() {
                if let Some(index) = STEP_FIELDS.iter().position(|field| field == key)
                    && let Some(value) = values[index].take()
                {
                    *slot = value;
                }
            }
            return;
        }
        let mut entry = Map::with_capacity(STEP_FIELDS.len());
        for (field, value) in STEP_FIELDS.iter().zip(values) {
            entry.insert((*field).to_string(), value.unwrap_or(Value::Null));
        }
        steps.insert(id.to_string(), Value::Object(entry));
    }
}

/// The fields of `steps.<id>`, in their order.
const STEP_FIELDS: [&str; 4] = ["status", "output", "error", "attempts"];

/// A step's state as `steps.<id>` shows it.
pub(crate) struct StepView {
    pub status: StepStatus,
    pub output: Value,
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
}

/// A handle the interpreter uses to reach the shared state.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Mutex<Shared>>);

impl Handle {
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock means the interpreter panicked: a broken invariant, not bad input.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Suspends until the effect `command` names resolves. The command is emitted now.
    pub fn effect(&self, command: Command) -> EffectFuture {
        let key = command.key().to_string();
        self.lock().request(command);
        EffectFuture {
            handle: self.clone(),
            key,
            done: false,
        }
    }
}

/// A suspension point: ready once the driver applies the effect's fact.
pub(crate) struct EffectFuture {
    handle: Handle,
    key: String,
    done: bool,
}

impl Future for EffectFuture {
    type Output = Resolution;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Resolution> {
        let resolution = self.handle.lock().resolved.remove(&self.key);
        match resolution {
            Some(resolution) => {
                self.done = true;
                Poll::Ready(resolution)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for EffectFuture {
    fn drop(&mut self) {
        if !self.done {
            self.handle.lock().abandon(&self.key);
        }
    }
}

type Root = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// One execution's state machine.
pub struct Machine {
    handle: Handle,
    root: Option<Root>,
    completion: Option<Completion>,
    workflow: Arc<Workflow>,
    /// The start fact of [`Machine::begin`] until [`Machine::take_started`], without the
    /// event's fields (they are in `event` meanwhile).
    started: Option<Fact>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("workflow", &self.workflow.name)
            .field("finished", &self.completion.is_some())
            .finish()
    }
}

impl Machine {
    /// Starts an execution from its first fact (`Fact::Started`).
    ///
    /// # Panics
    /// If `started` is not a `Fact::Started` (a broken caller invariant).
    pub fn start(
        workflow: Arc<Workflow>,
        id: ExecutionId,
        started: &Fact,
        environment: Arc<Environment>,
    ) -> Machine {
        let Fact::Started { event, .. } = started else {
            panic!("an execution starts with Fact::Started");
        };
        let environment = environment.for_event(event);
        let mut machine = Machine::build(workflow, id, started, event.to_value(), environment);
        machine.poll();
        machine
    }

    /// Like [`Machine::start`], taking the fact: the event's fields move into the
    /// execution's `event` instead of being copied, and [`Machine::take_started`] gives the
    /// fact back for the journal — moved back out once the execution has finished (a pure
    /// execution's event is never copied), copied before. The driver's path for new
    /// executions.
    ///
    /// # Panics
    /// If `started` is not a `Fact::Started` (a broken caller invariant).
    pub fn begin(
        workflow: Arc<Workflow>,
        id: ExecutionId,
        mut started: Fact,
        environment: Arc<Environment>,
    ) -> Machine {
        let Fact::Started { event, .. } = &mut started else {
            panic!("an execution starts with Fact::Started");
        };
        let environment = environment.for_event(event);
        // Every field moves; `take_started` moves (or copies) them back.
        let value = Event {
            id: std::mem::take(&mut event.id),
            event_type: std::mem::take(&mut event.event_type),
            source: std::mem::take(&mut event.source),
            time: std::mem::take(&mut event.time),
            data: std::mem::take(&mut event.data),
            meta: std::mem::take(&mut event.meta),
        }
        .into_value();
        let mut machine = Machine::build(workflow, id, &started, value, environment);
        machine.started = Some(started);
        machine.poll();
        machine
    }

    /// The fact given to [`Machine::begin`], whole again (see there); `None` after the
    /// first call, and for machines made otherwise.
    pub fn take_started(&mut self) -> Option<Fact> {
        let mut started = self.started.take()?;
        let Fact::Started { event, .. } = &mut started else {
            return Some(started);
        };
        let finished = self.completion.is_some();
        let mut shared = self.handle.lock();
        if let Value::Object(fields) = &mut shared.globals.event {
            // Nothing evaluates expressions once the execution has finished.
            let out = |value: &mut Value| {
                if finished {
                    value.take()
                } else {
                    value.clone()
                }
            };
            for (field, value) in fields.iter_mut() {
                let text = match field.as_str() {
                    "data" => {
                        event.data = out(value);
                        continue;
                    }
                    "meta" => {
                        event.meta = out(value);
                        continue;
                    }
                    "id" => &mut event.id,
                    "type" => &mut event.event_type,
                    "source" => &mut event.source,
                    "time" => &mut event.time,
                    _ => continue,
                };
                if let Value::String(moved) = out(value) {
                    *text = moved;
                }
            }
        }
        Some(started)
    }

    /// A machine for `started`, whose event expressions see as `event`; not polled yet
    /// unless it came through [`Machine::start`].
    fn build(
        workflow: Arc<Workflow>,
        id: ExecutionId,
        started: &Fact,
        event: Value,
        environment: Arc<Environment>,
    ) -> Machine {
        let Fact::Started {
            inputs,
            version,
            at,
            ..
        } = started
        else {
            panic!("an execution starts with Fact::Started");
        };
        let mut execution = Map::with_capacity(5);
        execution.insert("id".into(), Value::String(id.to_string()));
        execution.insert("workflow".into(), Value::from(workflow.name.as_str()));
        execution.insert("version".into(), Value::from(*version));
        execution.insert("attempt".into(), Value::from(1));
        execution.insert("idempotency_key".into(), Value::Null);
        let execution = Value::Object(execution);
        let globals = Globals {
            event,
            inputs: inputs.clone(),
            vars: Value::Object(Map::new()),
            steps: Value::Object(Map::new()),
            execution,
            environment,
        };
        let shared = Shared {
            id,
            now: *at,
            globals,
            pending: BTreeMap::new(),
            resolved: HashMap::new(),
            waits: HashMap::new(),
            commands: Vec::new(),
            timing: HashMap::new(),
            cancel_requested: None,
        };
        let handle = Handle(Arc::new(Mutex::new(shared)));
        let root = Box::pin(interpret::run_execution(handle.clone(), workflow.clone()));
        Machine {
            handle,
            root: Some(root),
            completion: None,
            workflow,
            started: None,
        }
    }

    /// Rebuilds an execution's state by replaying its journal. Afterwards,
    /// [`Machine::outstanding`] lists the effects still to perform.
    pub fn replay(
        workflow: Arc<Workflow>,
        id: ExecutionId,
        journal: &[Fact],
        environment: Arc<Environment>,
    ) -> Option<Machine> {
        let (first, rest) = journal.split_first()?;
        if !matches!(first, Fact::Started { .. }) {
            return None;
        }
        let mut machine = Machine::start(workflow, id, first, environment);
        for fact in rest {
            machine.apply(fact);
        }
        machine.take_commands();
        Some(machine)
    }

    /// Applies one fact and runs the interpreter as far as it can go. Facts for effects that
    /// are not pending (cancelled, or already resolved) change nothing.
    pub fn apply(&mut self, fact: &Fact) {
        {
            let mut shared = self.handle.lock();
            shared.now = shared.now.max(fact.at());
            let (key, resolution) = match fact {
                Fact::Started { .. } | Fact::EffectStarted { .. } => return,
                Fact::EffectFinished { key, outcome, .. } => {
                    (key, Resolution::Finished(outcome.clone()))
                }
                Fact::TimerFired { key, .. } => (key, Resolution::TimerFired),
                Fact::EventReceived { key, event, .. } => (key, Resolution::Event(event.clone())),
                Fact::ChildStarted { key, child, .. } => (key, Resolution::ChildStarted(*child)),
                Fact::CancelRequested { reason, .. } => {
                    shared.cancel_requested = Some(reason.clone());
                    drop(shared);
                    self.cancel();
                    return;
                }
            };
            if shared.pending.remove(key).is_none() {
                return;
            }
            shared.waits.remove(key);
            shared.resolved.insert(key.clone(), resolution);
        }
        self.poll();
    }

    fn poll(&mut self) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(completion) = root.as_mut().poll(&mut cx) {
            self.root = None;
            self.completion = Some(completion);
        }
    }

    fn cancel(&mut self) {
        if self.completion.is_some() {
            return;
        }
        // Dropping the interpreter drops every suspended effect, which emits their cancels
        // and marks running steps cancelled.
        self.root = None;
        let reason = self
            .handle
            .lock()
            .cancel_requested
            .clone()
            .unwrap_or_default();
        self.completion = Some(Completion {
            status: ExecutionStatus::Cancelled,
            output: Value::Null,
            error: Some(ErrorInfo::new("cancelled", format!("cancelled: {reason}"))),
        });
    }

    /// Commands emitted since the last call, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.handle.lock().commands)
    }

    /// Effects requested and not resolved: after a replay, what the driver must (re)start.
    pub fn outstanding(&self) -> Vec<Command> {
        self.handle.lock().pending.values().cloned().collect()
    }

    pub fn is_pending(&self, key: &str) -> bool {
        self.handle.lock().pending.contains_key(key)
    }

    /// Whether a pending `wait` accepts `event` (type glob and `match`). An expression error
    /// counts as no match.
    pub fn offer_event(&self, key: &str, event: &Event) -> bool {
        let shared = self.handle.lock();
        let (Some(Command::AwaitEvent { pattern, .. }), Some(wait)) =
            (shared.pending.get(key), shared.waits.get(key))
        else {
            return false;
        };
        if !glob_match(pattern, &event.event_type) {
            return false;
        }
        let Some(matches) = &wait.matches else {
            return true;
        };
        let locals = wait.locals.with("event", event.to_value());
        matches.eval_bool(&shared.view(&locals)).unwrap_or(false)
    }

    /// How the execution ended, once it has.
    pub fn completion(&self) -> Option<&Completion> {
        self.completion.as_ref()
    }

    pub fn workflow(&self) -> &Arc<Workflow> {
        &self.workflow
    }

    pub fn id(&self) -> ExecutionId {
        self.handle.lock().id
    }

    /// The completion's output and error, moved out (`Null` and `None` are left): for the
    /// execution's final record, built once. `None` while the execution runs.
    pub fn take_result(&mut self) -> Option<(Value, Option<ErrorInfo>)> {
        let completion = self.completion.as_mut()?;
        Some((
            std::mem::take(&mut completion.output),
            completion.error.take(),
        ))
    }

    /// Steps with an id, in the order they first ran, as `exec` and the API show them.
    pub fn step_records(&self) -> Vec<(String, StepRecord)> {
        self.records(false)
    }

    /// Like [`Machine::step_records`], for the final record: once the execution has finished
    /// (nothing evaluates `steps` any more) each output is moved out instead of copied.
    pub fn take_step_records(&mut self) -> Vec<(String, StepRecord)> {
        self.records(self.completion.is_some())
    }

    fn records(&self, take: bool) -> Vec<(String, StepRecord)> {
        let mut shared = self.handle.lock();
        let shared = &mut *shared;
        let Value::Object(steps) = &mut shared.globals.steps else {
            return Vec::new();
        };
        steps
            .iter_mut()
            .map(|(id, value)| {
                let mut record = StepRecord {
                    status: StepStatus::Running,
                    output: Value::Null,
                    error: None,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                };
                // One pass over the entry's fields instead of a hashed lookup per field.
                if let Value::Object(fields) = value {
                    for (field, value) in fields {
                        match field.as_str() {
                            "status" => {
                                if let Some(status) = value.as_str().and_then(StepStatus::parse) {
                                    record.status = status;
                                }
                            }
                            "output" if take => record.output = value.take(),
                            "output" => record.output = value.clone(),
                            "error" if !value.is_null() => {
                                record.error = serde_json::from_value(value.clone()).ok();
                            }
                            "attempts" => {
                                record.attempts = value.as_u64().unwrap_or(0) as u32;
                            }
                            _ => {}
                        }
                    }
                }
                if let Some((started, finished)) = shared.timing.get(id).copied() {
                    record.started_at = Some(started);
                    record.finished_at = finished;
                }
                (id.clone(), record)
            })
            .collect()
    }
}

/// Matches `text` against a glob where `*` is any run of characters and `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("order.*", "order.paid"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("order.*", "invoice.paid"));
        assert!(glob_match("*.paid", "order.paid"));
        assert!(!glob_match("a*b", "acbd"));
    }
}
