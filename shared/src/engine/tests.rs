//! State-machine tests: feed facts, check commands. No I/O, no expressions needed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::expr::Template;
use crate::flow::*;

use super::*;

fn workflow(steps: Vec<Step>) -> Arc<Workflow> {
    Arc::new(Workflow {
        name: WorkflowName::new("test").unwrap(),
        description: None,
        version: 1,
        labels: Default::default(),
        runs_on: RunsOn::Any,
        inputs: Vec::new(),
        triggers: Vec::new(),
        when: None,
        unless: None,
        concurrency: None,
        timeout: None,
        vars: Vec::new(),
        steps,
        output: None,
        on_failure: Vec::new(),
        source: "<test>".into(),
    })
}

fn with_id(id: &str, kind: StepKind) -> Step {
    let mut step = Step::of(kind);
    step.id = Some(StepId::new(id).unwrap());
    step
}

fn action(id: &str, value: serde_json::Value) -> Step {
    with_id(
        id,
        StepKind::Action(ActionStep {
            action: "http".into(),
            with: Template::Literal(value),
        }),
    )
}

fn started() -> Fact {
    Fact::Started {
        workflow: "test".into(),
        version: 1,
        event: Event::new("manual", "test", json!({})),
        inputs: json!({}),
        parent: None,
        at: Timestamp(1_000),
    }
}

fn start(wf: Arc<Workflow>) -> (Machine, Vec<Fact>) {
    let first = started();
    let machine = Machine::start(
        wf,
        ExecutionId::new(),
        &first,
        Arc::new(Environment::empty()),
    );
    (machine, vec![first])
}

fn finish(key: &str, value: serde_json::Value, at: i64) -> Fact {
    Fact::EffectFinished {
        key: key.into(),
        attempt: 1,
        outcome: Outcome::Succeeded(value),
        at: Timestamp(at),
    }
}

fn fail(key: &str, retryable: bool, at: i64) -> Fact {
    let mut error = ErrorInfo::new("http", "boom");
    error.retryable = retryable;
    Fact::EffectFinished {
        key: key.into(),
        attempt: 1,
        outcome: Outcome::Failed(error),
        at: Timestamp(at),
    }
}

fn keys(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .map(|c| match c {
            Command::Cancel { key } => format!("cancel {key}"),
            other => other.key().to_string(),
        })
        .collect()
}

fn apply(machine: &mut Machine, journal: &mut Vec<Fact>, fact: Fact) -> Vec<Command> {
    machine.apply(&fact);
    journal.push(fact);
    machine.take_commands()
}

#[test]
fn sequence_runs_steps_in_order_and_outputs_the_last() {
    let wf = workflow(vec![
        action("a", json!({"n": 1})),
        action("b", json!({"n": 2})),
    ]);
    let (mut m, mut journal) = start(wf);
    assert_eq!(keys(&m.take_commands()), ["a@1"]);
    assert_eq!(
        keys(&apply(
            &mut m,
            &mut journal,
            finish("a@1", json!("A"), 2_000)
        )),
        ["b@1"]
    );
    assert!(m.completion().is_none());
    apply(&mut m, &mut journal, finish("b@1", json!("B"), 3_000));
    let done = m.completion().unwrap();
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    assert_eq!(done.output, json!("B"));
    let steps = m.step_records();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].1.output, json!("A"));
    assert_eq!(steps[0].1.started_at, Some(Timestamp(1_000)));
    assert_eq!(steps[0].1.finished_at, Some(Timestamp(2_000)));
}

#[test]
fn action_commands_carry_a_stable_idempotency_key() {
    let mut step = action("a", json!({}));
    step.retry = Some(Retry {
        attempts: 3,
        delay: Duration::from_secs(1),
        jitter: false,
        ..Retry::default()
    });
    let (mut m, mut journal) = start(workflow(vec![step]));
    let first = m.take_commands();
    let Command::RunAction(a1) = &first[0] else {
        panic!()
    };
    let retry = apply(&mut m, &mut journal, fail("a@1", true, 2_000));
    assert_eq!(
        retry,
        [Command::StartTimer {
            key: "a@1#retry".into(),
            at: Timestamp(3_000)
        }]
    );
    let second = apply(
        &mut m,
        &mut journal,
        Fact::TimerFired {
            key: "a@1#retry".into(),
            at: Timestamp(3_000),
        },
    );
    let Command::RunAction(a2) = &second[0] else {
        panic!()
    };
    assert_eq!(a2.attempt, 2);
    assert_eq!(a1.idempotency_key, a2.idempotency_key);
    assert_ne!(a1.key, a2.key);
}

#[test]
fn permanent_errors_are_not_retried_by_default() {
    let mut step = action("a", json!({}));
    step.retry = Some(Retry {
        attempts: 3,
        ..Retry::default()
    });
    let (mut m, mut journal) = start(workflow(vec![step]));
    m.take_commands();
    assert!(apply(&mut m, &mut journal, fail("a@1", false, 2_000)).is_empty());
    let done = m.completion().unwrap();
    assert_eq!(done.status, ExecutionStatus::Failed);
    assert_eq!(done.error.as_ref().unwrap().step.as_deref(), Some("a"));
    assert_eq!(m.step_records()[0].1.attempts, 1);
}

#[test]
fn exhausted_retries_fail_with_the_attempt_count() {
    let mut step = action("a", json!({}));
    step.retry = Some(Retry {
        attempts: 2,
        delay: Duration::from_millis(10),
        jitter: false,
        ..Retry::default()
    });
    let (mut m, mut journal) = start(workflow(vec![step]));
    m.take_commands();
    apply(&mut m, &mut journal, fail("a@1", true, 2_000));
    apply(
        &mut m,
        &mut journal,
        Fact::TimerFired {
            key: "a@1#retry".into(),
            at: Timestamp(2_010),
        },
    );
    apply(&mut m, &mut journal, fail("a@2", true, 2_020));
    assert_eq!(m.completion().unwrap().status, ExecutionStatus::Failed);
    assert_eq!(m.step_records()[0].1.attempts, 2);
}

#[test]
fn catch_handles_the_failure_and_the_workflow_continues() {
    let mut failing = action("a", json!({}));
    failing.catch = Some(vec![with_id(
        "handled",
        StepKind::Set(vec![("x".into(), Template::Literal(json!(1)))]),
    )]);
    let (mut m, mut journal) = start(workflow(vec![failing, action("b", json!({}))]));
    m.take_commands();
    let next = apply(&mut m, &mut journal, fail("a@1", false, 2_000));
    assert_eq!(keys(&next), ["b@1"]);
    let records = m.step_records();
    assert_eq!(records[0].1.status, StepStatus::Failed);
    assert_eq!(records[1].0, "handled");
    assert_eq!(records[1].1.status, StepStatus::Succeeded);
}

fn parallel(join: Join) -> Step {
    with_id(
        "fan",
        StepKind::Parallel(ParallelStep {
            join,
            branches: vec![
                Branch {
                    name: "x".into(),
                    steps: vec![action("ax", json!({}))],
                },
                Branch {
                    name: "y".into(),
                    steps: vec![action("ay", json!({}))],
                },
            ],
        }),
    )
}

#[test]
fn parallel_any_takes_the_first_success_and_cancels_the_rest() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::Any)]));
    assert_eq!(keys(&m.take_commands()), ["fan.x/ax@1", "fan.y/ay@1"]);
    let after = apply(
        &mut m,
        &mut journal,
        finish("fan.y/ay@1", json!("Y"), 2_000),
    );
    assert_eq!(keys(&after), ["cancel fan.x/ax@1"]);
    let done = m.completion().unwrap();
    assert_eq!(done.output, json!({"y": "Y"}));
    let ax = m
        .step_records()
        .into_iter()
        .find(|(id, _)| id == "ax")
        .unwrap()
        .1;
    assert_eq!(ax.status, StepStatus::Cancelled);
}

#[test]
fn parallel_all_fails_on_the_first_failure() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::All)]));
    m.take_commands();
    let after = apply(&mut m, &mut journal, fail("fan.x/ax@1", false, 2_000));
    assert_eq!(keys(&after), ["cancel fan.y/ay@1"]);
    assert_eq!(m.completion().unwrap().status, ExecutionStatus::Failed);
}

#[test]
fn parallel_all_succeeds_with_every_output() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::All)]));
    m.take_commands();
    apply(&mut m, &mut journal, finish("fan.y/ay@1", json!(2), 2_000));
    assert!(m.completion().is_none());
    apply(&mut m, &mut journal, finish("fan.x/ax@1", json!(1), 2_001));
    assert_eq!(m.completion().unwrap().output, json!({"y": 2, "x": 1}));
}

#[test]
fn parallel_first_takes_a_failure_too() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::First)]));
    m.take_commands();
    apply(&mut m, &mut journal, fail("fan.x/ax@1", false, 2_000));
    assert_eq!(m.completion().unwrap().status, ExecutionStatus::Failed);
}

#[test]
fn parallel_count_needs_n_successes() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::Count(2))]));
    m.take_commands();
    apply(&mut m, &mut journal, finish("fan.x/ax@1", json!(1), 2_000));
    assert!(m.completion().is_none());
    apply(&mut m, &mut journal, fail("fan.y/ay@1", false, 2_001));
    assert_eq!(m.completion().unwrap().status, ExecutionStatus::Failed);
}

#[test]
fn step_timeout_cancels_the_action_and_fails() {
    let mut step = action("slow", json!({}));
    step.timeout = Some(Setting::Fixed(Duration::from_secs(5)));
    let (mut m, mut journal) = start(workflow(vec![step]));
    let first = m.take_commands();
    assert_eq!(keys(&first), ["slow@1#timeout", "slow@1"]);
    assert_eq!(
        first[0],
        Command::StartTimer {
            key: "slow@1#timeout".into(),
            at: Timestamp(6_000)
        }
    );
    let after = apply(
        &mut m,
        &mut journal,
        Fact::TimerFired {
            key: "slow@1#timeout".into(),
            at: Timestamp(6_000),
        },
    );
    assert_eq!(keys(&after), ["cancel slow@1"]);
    let done = m.completion().unwrap();
    assert_eq!(done.error.as_ref().unwrap().kind, "timeout");
}

#[test]
fn a_late_result_for_a_cancelled_effect_changes_nothing() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::Any)]));
    m.take_commands();
    apply(
        &mut m,
        &mut journal,
        finish("fan.y/ay@1", json!("Y"), 2_000),
    );
    assert!(!m.is_pending("fan.x/ax@1"));
    let before = m.completion().cloned();
    apply(
        &mut m,
        &mut journal,
        finish("fan.x/ax@1", json!("X"), 2_001),
    );
    assert_eq!(m.completion().cloned(), before);
}

#[test]
fn foreach_runs_items_with_bounded_concurrency_and_ordered_output() {
    let body = vec![with_id(
        "each",
        StepKind::Action(ActionStep {
            action: "http".into(),
            with: Template::Literal(json!({})),
        }),
    )];
    let foreach = with_id(
        "batch",
        StepKind::Foreach(ForeachStep {
            items: Template::Literal(json!(["a", "b", "c"])),
            item_name: "item".into(),
            concurrency: 2,
            steps: body,
        }),
    );
    let (mut m, mut journal) = start(workflow(vec![foreach]));
    assert_eq!(
        keys(&m.take_commands()),
        ["batch[0]/each@1", "batch[1]/each@1"]
    );
    let next = apply(
        &mut m,
        &mut journal,
        finish("batch[1]/each@1", json!(1), 2_000),
    );
    assert_eq!(keys(&next), ["batch[2]/each@1"]);
    apply(
        &mut m,
        &mut journal,
        finish("batch[2]/each@1", json!(2), 2_001),
    );
    apply(
        &mut m,
        &mut journal,
        finish("batch[0]/each@1", json!(0), 2_002),
    );
    assert_eq!(m.completion().unwrap().output, json!([0, 1, 2]));
}

#[test]
fn sleep_is_a_durable_timer_from_the_fact_time() {
    let sleep = with_id(
        "nap",
        StepKind::Sleep(SleepStep::For(Setting::Fixed(Duration::from_secs(60)))),
    );
    let (mut m, mut journal) = start(workflow(vec![sleep]));
    assert_eq!(
        m.take_commands(),
        [Command::StartTimer {
            key: "nap@1#sleep".into(),
            at: Timestamp(61_000)
        }]
    );
    apply(
        &mut m,
        &mut journal,
        Fact::TimerFired {
            key: "nap@1#sleep".into(),
            at: Timestamp(61_000),
        },
    );
    assert_eq!(m.completion().unwrap().status, ExecutionStatus::Succeeded);
}

#[test]
fn wait_resolves_with_the_event_and_times_out_otherwise() {
    let wait = WaitStep {
        event: "order.*".into(),
        matches: None,
        timeout: Some(Setting::Fixed(Duration::from_secs(10))),
    };
    let (mut m, mut journal) = start(workflow(vec![with_id(
        "approval",
        StepKind::Wait(wait.clone()),
    )]));
    let commands = m.take_commands();
    assert_eq!(
        keys(&commands),
        ["approval@1#wait-timeout", "approval@1#wait"]
    );
    let event = Event::new("order.approved", "test", json!({"ok": true}));
    assert!(!m.offer_event(
        "approval@1#wait",
        &Event::new("invoice.paid", "t", json!(null))
    ));
    assert!(m.offer_event("approval@1#wait", &event));
    apply(
        &mut m,
        &mut journal,
        Fact::EventReceived {
            key: "approval@1#wait".into(),
            event,
            at: Timestamp(2_000),
        },
    );
    assert_eq!(m.completion().unwrap().output["data"], json!({"ok": true}));

    let (mut m, mut journal) = start(workflow(vec![with_id("approval", StepKind::Wait(wait))]));
    m.take_commands();
    let after = apply(
        &mut m,
        &mut journal,
        Fact::TimerFired {
            key: "approval@1#wait-timeout".into(),
            at: Timestamp(11_000),
        },
    );
    assert_eq!(keys(&after), ["cancel approval@1#wait"]);
    assert_eq!(
        m.completion().unwrap().error.as_ref().unwrap().kind,
        "timeout"
    );
}

#[test]
fn cancel_request_cancels_everything_outstanding() {
    let (mut m, mut journal) = start(workflow(vec![parallel(Join::All)]));
    m.take_commands();
    let after = apply(
        &mut m,
        &mut journal,
        Fact::CancelRequested {
            reason: "user".into(),
            at: Timestamp(2_000),
        },
    );
    let mut cancelled = keys(&after);
    cancelled.sort();
    assert_eq!(cancelled, ["cancel fan.x/ax@1", "cancel fan.y/ay@1"]);
    assert_eq!(m.completion().unwrap().status, ExecutionStatus::Cancelled);
}

#[test]
fn replay_rebuilds_the_same_state_and_outstanding_effects() {
    let wf = workflow(vec![
        action("a", json!({})),
        parallel(Join::All),
        action("z", json!({})),
    ]);
    let (mut m, mut journal) = start(wf.clone());
    m.take_commands();
    apply(&mut m, &mut journal, finish("a@1", json!("A"), 2_000));
    apply(
        &mut m,
        &mut journal,
        finish("fan.x/ax@1", json!("X"), 3_000),
    );
    let replayed = Machine::replay(wf, m.id(), &journal, Arc::new(Environment::empty())).unwrap();
    assert_eq!(keys(&replayed.outstanding()), ["fan.y/ay@1"]);
    assert_eq!(replayed.step_records(), m.step_records());
}

#[test]
fn call_waits_for_the_child_with_a_derived_id() {
    let call = with_id(
        "child",
        StepKind::Call(CallStep {
            workflow: "other".into(),
            version: Some(2),
            input: Template::Literal(json!({"a": 1})),
            wait: true,
        }),
    );
    let (mut m, mut journal) = start(workflow(vec![call]));
    let commands = m.take_commands();
    let Command::StartChild {
        child,
        workflow,
        version,
        input,
        ..
    } = &commands[0]
    else {
        panic!()
    };
    assert_eq!(
        (workflow.as_str(), *version, input),
        ("other", Some(2), &json!({"a": 1}))
    );
    assert_eq!(*child, ExecutionId::derived(m.id(), "child@1"));
    apply(
        &mut m,
        &mut journal,
        finish("child@1", json!({"r": 1}), 2_000),
    );
    assert_eq!(m.completion().unwrap().output, json!({"r": 1}));
}

#[test]
fn return_finishes_early_and_fail_fails() {
    let ret = with_id("done", StepKind::Return(Template::Literal(json!("early"))));
    let (m, _) = start(workflow(vec![ret, action("never", json!({}))]));
    assert_eq!(m.completion().unwrap().output, json!("early"));

    let failing = with_id(
        "boom",
        StepKind::Fail {
            message: Template::Literal(json!("nope")),
        },
    );
    let (m, _) = start(workflow(vec![failing]));
    let done = m.completion().unwrap();
    assert_eq!(done.status, ExecutionStatus::Failed);
    assert_eq!(done.error.as_ref().unwrap().message, "nope");
    assert_eq!(done.error.as_ref().unwrap().step.as_deref(), Some("boom"));
}

#[test]
fn missing_required_input_fails_before_any_step() {
    let mut wf = (*workflow(vec![action("a", json!({}))])).clone();
    wf.inputs.push(InputSpec {
        name: "threshold".into(),
        ty: InputType::Number,
        default: None,
        description: None,
    });
    let (mut m, _) = start(Arc::new(wf));
    assert!(m.take_commands().is_empty());
    let done = m.completion().unwrap();
    assert_eq!(done.error.as_ref().unwrap().kind, "input");
}
