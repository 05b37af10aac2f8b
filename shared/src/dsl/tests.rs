use std::time::{Duration, Instant};

use super::*;
use crate::Value;
use crate::expr::Template;
use crate::flow::*;

const EXAMPLE: &str = include_str!("testdata/overheat-alert.yaml");

/// `line:col: message` lines, for compact assertions.
fn errors(text: &str) -> Vec<String> {
    match parse_workflow("w.yaml", text) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect(),
    }
}

fn one_error(text: &str) -> Diagnostic {
    let diags = parse_workflow("w.yaml", text).expect_err("should be invalid");
    assert_eq!(diags.len(), 1, "{diags:#?}");
    diags.into_iter().next().unwrap()
}

const HEAD: &str = "reactor: 1\nname: t\n";

fn with_steps(steps: &str) -> String {
    format!("{HEAD}steps:\n{steps}")
}

#[test]
fn the_dsl_md_example_parses_fully() {
    let w = parse_workflow("overheat-alert.yaml", EXAMPLE).unwrap();
    assert_eq!(w.name.as_str(), "overheat-alert");
    assert_eq!(
        w.description.as_deref(),
        Some("Tell the on-call channel when a sensor runs hot")
    );
    assert_eq!(w.version, 3);
    assert_eq!(w.labels.get("team").map(String::as_str), Some("ops"));
    assert_eq!(w.runs_on, RunsOn::Any);
    assert_eq!(w.inputs.len(), 1);
    assert_eq!(w.inputs[0].name, "threshold");
    assert_eq!(w.inputs[0].ty, InputType::Number);
    assert_eq!(w.inputs[0].default, Some(Value::from(30)));
    assert_eq!(w.triggers.len(), 2);
    match &w.triggers[0].kind {
        TriggerKind::Mqtt(m) => {
            assert_eq!(m.topic, "sensors/+/temp");
            assert_eq!(m.qos, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.triggers[0].location,
        Location {
            line: 12,
            column: 5
        }
    );
    match &w.triggers[1].kind {
        TriggerKind::Http(h) => {
            assert_eq!(h.path, "/hooks/temp");
            assert_eq!(h.method, "POST");
            assert_eq!(h.response, HttpResponseMode::Sync);
        }
        other => panic!("{other:?}"),
    }
    assert!(w.when.is_some() && w.unless.is_some());
    let c = w.concurrency.as_ref().unwrap();
    assert_eq!((c.limit, c.overflow), (4, Overflow::Queue));
    assert!(c.key.is_some());
    assert_eq!(w.timeout, Some(Duration::from_secs(300)));
    assert_eq!(w.vars.len(), 1);
    assert_eq!(w.vars[0].0, "alerts");
    assert_eq!(w.vars[0].1, Template::Literal(Value::from(0)));
    assert_eq!(w.steps.len(), 2);
    let notify = &w.steps[0];
    assert_eq!(notify.id.as_ref().unwrap().as_str(), "notify");
    assert_eq!(
        notify.location,
        Location {
            line: 23,
            column: 5
        }
    );
    let StepKind::Action(action) = &notify.kind else {
        panic!("{:?}", notify.kind)
    };
    assert_eq!(action.action, "http");
    let retry = notify.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 5);
    assert_eq!(retry.backoff, Backoff::Exponential);
    assert_eq!(retry.delay, Duration::from_millis(500));
    assert_eq!(retry.max_delay, Some(Duration::from_secs(30)));
    assert!(retry.jitter);
    assert!(matches!(&w.steps[1].kind, StepKind::Set(pairs) if pairs[0].0 == "alerts"));
    assert!(w.output.is_some());
    assert_eq!(w.on_failure.len(), 1);
    assert_eq!(w.source, "overheat-alert.yaml");
}

#[test]
fn every_problem_at_once() {
    let text = "\
reactor: 1
name: Bad Name
runs_on: edge
triggers:
  - cron: \"61 * * * *\"
steps:
  - id: a
    action: htp
  - id: a
    sleep: 5 m
    retyr: { attempts: 3 }
";
    assert_eq!(
        errors(text),
        vec![
            "2:7: invalid workflow name \"Bad Name\": use 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            "3:10: invalid runs_on \"edge\": expected agent, hub or any",
            "5:11: invalid cron schedule \"61 * * * *\": Minutes must be less than 59. ('61' specified.)",
            "8:13: unknown action type \"htp\"",
            "9:9: duplicate step id \"a\" (first defined at 7:9)",
            "10:12: sleep: invalid duration \"5 m\": missing unit; units are ms, s, m, h, d",
            "11:5: unknown key \"retyr\" in step",
        ]
    );
}

#[test]
fn unknown_key_suggests() {
    let d = one_error(&with_steps(
        "  - action: log\n    with: { message: hi }\n    retyr: {}\n",
    ));
    assert_eq!((d.line, d.column), (6, 5));
    assert_eq!(d.message, "unknown key \"retyr\" in step");
    assert_eq!(d.help.as_deref(), Some("did you mean \"retry\"?"));
    assert_eq!(
        d.to_string(),
        "w.yaml:6:5: error: unknown key \"retyr\" in step\n  help: did you mean \"retry\"?"
    );
}

#[test]
fn invalid_snippets() {
    let cases: &[(&str, &str)] = &[
        (
            "reactor: 1\nsteps: []\n",
            "1:1: missing required key \"name\" in workflow (unique per fleet: [a-z0-9][a-z0-9._-]{0,63})",
        ),
        (
            "reactor: 2\nname: t\nsteps: []\n",
            "1:10: unsupported language version 2; this engine reads version 1",
        ),
        (
            "reactor: 1\nname: t\nversion: 0\nsteps: []\n",
            "3:10: version must be an integer at least 1, found 0",
        ),
        (
            "reactor: 1\nname: t\nversion: \"3\"\nsteps: []\n",
            "3:10: version must be an integer, found a string",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - mqtt: { topic: a, qos: 3 }\nsteps: []\n",
            "4:28: qos must be an integer from 0 to 2, found 3",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - http: { path: /x }\n    method: GET\nsteps: []\n",
            "5:5: a trigger has exactly one key, its type; found \"http\" and \"method\"",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - mqqt: { topic: a }\nsteps: []\n",
            "4:5: unknown trigger type \"mqqt\"",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - http: { method: GET }\nsteps: []\n",
            "4:11: missing required key \"path\" in http trigger (the request path, like /hooks/temp)",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - redis: { connection: main }\nsteps: []\n",
            "4:12: the redis trigger needs \"channel\" (pub/sub) or \"stream\" + \"group\"",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - kafka: { topic: x, batch: { size: 0 } }\nsteps: []\n",
            "4:39: size must be an integer from 1 to 10000, found 0",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - kafka: { topic: x, batch: { wait: 1s } }\nsteps: []\n",
            "4:31: missing required key \"size\" in batch (messages per execution at most)",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - redis: { channel: c, batch: { size: 5 } }\nsteps: []\n",
            "4:26: batch applies to stream, not channel",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - nats: { subject: s, batch: { size: 5 } }\nsteps: []\n",
            "4:25: batch applies to JetStream (stream + durable), not core subjects",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - postgres: { table: t, mode: poll }\nsteps: []\n",
            "4:27: mode poll needs \"poll\" with column and every",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - cron: { schedule: \"0 * * * *\", timezone: Europe/Pariss }\nsteps: []\n",
            "4:46: unknown timezone \"Europe/Pariss\"",
        ),
        (
            "reactor: 1\nname: t\ntriggers:\n  - cron: \"* * *\"\nsteps: []\n",
            "4:11: invalid cron schedule \"* * *\": expected 5 or 6 fields, found 3",
        ),
        (
            "reactor: 1\nname: t\nruns_on: agent\ntriggers:\n  - kafka: { topic: x }\nsteps: []\n",
            "5:5: the kafka trigger runs only on the hub, but runs_on is agent",
        ),
        (
            "reactor: 1\nname: t\ninputs:\n  n: { type: number, default: \"x\" }\nsteps: []\n",
            "4:31: the default of input \"n\" must be a number, found a string",
        ),
        (
            "reactor: 1\nname: t\nconcurrency: { limit: 0 }\nsteps: []\n",
            "3:23: concurrency limit must be an integer at least 1, found 0",
        ),
        (
            "reactor: 1\nname: t\nconcurrency: { limit: 1, overflow: queu }\nsteps: []\n",
            "3:36: invalid overflow \"queu\": expected queue, drop or replace",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - name: x\n",
            "4:5: a step needs exactly one of action, set, switch, parallel, foreach, loop, call, sleep, wait, emit, group, fail or return",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - sleep: 1s\n    set: { a: 1 }\n",
            "5:5: a step has exactly one kind, but this one has both \"sleep\" and \"set\"",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - sleep: 1s\n    with: {}\n",
            "5:5: \"with\" only applies to action steps, not sleep",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - loop: { while: true }\n    steps: []\n",
            "4:11: missing required key \"max\" in loop (the most iterations before the step fails)",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - foreach: [1, 2]\n",
            "4:5: foreach needs \"steps\"",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - foreach: [1]\n    as: event\n    steps: []\n",
            "5:9: as \"event\" would hide the expression name \"event\"",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - action: http\n    with: { url: x, methd: GET }\n",
            "5:21: unknown setting \"methd\" for action \"http\"",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - action: http\n    with: { method: GET }\n",
            "5:11: action \"http\" needs \"url\" in with (http:// or https:// address)",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - action: log\n    with: { message: m }\n    retry: { attempts: 0 }\n",
            "6:24: retry attempts must be an integer at least 1, found 0",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - action: log\n    with: { message: m }\n    retry: { jitter: yes }\n",
            "6:22: jitter must be true or false, found a string",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - id: Fetch\n    action: log\n    with: { message: m }\n",
            "4:9: invalid step id \"Fetch\": use 1 to 64 characters of a-z, 0-9, '_' and '-'",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - switch:\n      - default: []\n      - when: true\n        steps: []\n",
            "5:9: the default branch must be the last one",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - parallel: { join: { count: 3 }, branches: { a: [], b: [] } }\n",
            "4:17: join count 3 is more than the 2 branches",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - wait: { match: x }\n",
            "4:11: missing required key \"event\" in wait (glob over the event type)",
        ),
        (
            "reactor: 1\nname: t\nsteps:\n  - sleep: 10\n",
            "4:12: sleep: invalid duration 10: missing unit",
        ),
        (
            "reactor: 1\nname: t\nsteps: {}\n",
            "3:8: expected a list of steps, found a map",
        ),
        (
            "reactor: 1\nname: t\nname: u\nsteps: []\n",
            "3:1: duplicate key \"name\" (first at 2:1)",
        ),
        (
            "",
            "1:1: the file is empty; a workflow needs reactor, name and steps",
        ),
        ("- a\n", "1:1: expected a map for workflow, found a list"),
    ];
    for (text, expected) in cases {
        let got = errors(text);
        assert_eq!(
            got.first().map(String::as_str),
            Some(*expected),
            "{text}\n{got:#?}"
        );
        assert_eq!(got.len(), 1, "{text}\n{got:#?}");
    }
}

#[test]
fn valid_snippets() {
    let cases: &[&str] = &[
        "  - action: log\n    with: { message: hi }\n",
        "  - sleep: { until: \"${{ vars.when }}\" }\n",
        "  - sleep: \"${{ vars.backoff }}\"\n",
        "  - foreach: \"${{ event.data.items }}\"\n    as: reading\n    concurrency: 4\n    steps:\n      - action: log\n        with: { message: \"${{ reading }} ${{ index }}\" }\n",
        "  - loop: { until: \"vars.n > 3\", max: 10 }\n    steps:\n      - set: { n: \"${{ vars.n + 1 }}\" }\n",
        "  - call: child\n",
        "  - call: { workflow: child, input: { a: 1 }, wait: false }\n",
        "  - wait: { event: \"order.*\", match: \"event.data.id == vars.id\", timeout: 10m }\n",
        "  - emit: { type: done, data: { ok: true }, topic: out }\n",
        "  - group:\n      - fail: boom\n    catch: []\n",
        "  - fail: { message: boom }\n",
        "  - return: { ok: true }\n",
        "  - parallel:\n      join: { when: \"branches.a.status == 'succeeded'\" }\n      branches:\n        a: [ { action: log, with: { message: m } } ]\n        b: [ { action: log, with: { message: m } } ]\n",
        "  - switch:\n      - when: event.data.x > 1\n        steps: [ { action: log, with: { message: m } } ]\n      - default: [ { action: log, with: { message: m } } ]\n",
        "  - action: log\n    with: { message: m }\n    if: true\n    unless: ${{ vars.off }}\n    timeout: 5s\n    output: ${{ result }}\n",
    ];
    for steps in cases {
        let text = with_steps(steps);
        assert_eq!(errors(&text), Vec::<String>::new(), "{text}");
    }
    let triggers = "\
triggers:
  - cron: \"0 */5 * * * *\"
  - cron: { schedule: \"*/5 * * * *\", timezone: Europe/Paris }
  - interval: { every: 1m30s }
  - file: { path: /data, pattern: \"*.csv\", events: [create], recursive: true, debounce: 2s }
  - event: { type: \"order.*\" }
  - startup: {}
  - kafka: { topic: [a, b], group: g, brokers: \"k1:9092,k2:9092\", from: earliest }
  - nats: { subject: \"a.>\", stream: S, durable: d, connection: main }
  - redis: { stream: s, group: g, consumer: c, url: \"redis://localhost\" }
  - redis: { channel: \"news.*\" }
  - mysql: { table: orders, mode: poll, poll: { column: id, every: 30s } }
  - plugin: { name: modbus, register: 40001 }
  - http: { path: /h, method: get, auth: token, secret: \"${{ secrets.T }}\", response: async }
steps: []
";
    let w = match parse_workflow("w.yaml", &format!("{HEAD}{triggers}")) {
        Ok(w) => w,
        Err(d) => panic!("{d:#?}"),
    };
    let TriggerKind::Cron(cron) = &w.triggers[1].kind else {
        panic!()
    };
    assert_eq!(cron.normalized, "0 */5 * * * *");
    assert_eq!(cron.timezone, "Europe/Paris");
    let TriggerKind::Http(http) = &w.triggers[12].kind else {
        panic!()
    };
    assert_eq!(http.method, "GET");
    let TriggerKind::Plugin { settings, .. } = &w.triggers[11].kind else {
        panic!()
    };
    assert_eq!(settings, &serde_json::json!({"register": 40001}));
}

#[test]
fn batch_settings_of_kafka_jetstream_and_redis_streams() {
    let triggers = "triggers:
  - kafka: { topic: a, batch: { size: 500, wait: 250ms } }
  - redis: { stream: s, group: g, batch: { size: 20 } }
  - kafka: { topic: b }
  - nats: { subject: o.>, stream: S, durable: d, batch: { size: 300, wait: 50ms } }
steps: []
";
    let w = match parse_workflow("w.yaml", &format!("{HEAD}{triggers}")) {
        Ok(w) => w,
        Err(d) => panic!("{d:#?}"),
    };
    let TriggerKind::Kafka(kafka) = &w.triggers[0].kind else {
        panic!()
    };
    assert_eq!(
        kafka.batch,
        Some(crate::flow::Batch {
            size: 500,
            wait: std::time::Duration::from_millis(250)
        })
    );
    let TriggerKind::Redis(redis) = &w.triggers[1].kind else {
        panic!()
    };
    assert_eq!(
        redis.batch,
        Some(crate::flow::Batch {
            size: 20,
            wait: crate::flow::Batch::DEFAULT_WAIT
        })
    );
    let TriggerKind::Kafka(plain) = &w.triggers[2].kind else {
        panic!()
    };
    assert_eq!(plain.batch, None);
    let TriggerKind::Nats(nats) = &w.triggers[3].kind else {
        panic!()
    };
    assert_eq!(
        nats.batch,
        Some(crate::flow::Batch {
            size: 300,
            wait: std::time::Duration::from_millis(50)
        })
    );
}

#[test]
fn unquoted_ternary_gets_quote_help() {
    let d = one_error(&format!("{HEAD}if: ${{{{ a ? b : c }}}}\nsteps: []\n"));
    assert_eq!(d.line, 3);
    assert!(d.message.starts_with("invalid YAML"), "{d}");
    assert_eq!(
        d.help.as_deref(),
        Some("quote the expression: \"${{ a ? b : c }}\"")
    );
}

#[test]
fn set_checks() {
    let parse = |name: &str, body: &str| {
        let text = format!("reactor: 1\nname: {name}\n{body}");
        parse_workflow(&format!("{name}.yaml"), &text).unwrap()
    };
    let a = parse("a", "steps:\n  - call: b\n");
    let b = parse("b", "steps:\n  - call: { workflow: a }\n");
    let c = parse("c", "steps:\n  - call: nope\n");
    let a2 = parse("a", "steps: []\n");
    let set = vec![
        (a, "a.yaml".to_string()),
        (b, "b.yaml".to_string()),
        (c, "c.yaml".to_string()),
        (a2, "a2.yaml".to_string()),
    ];
    let got: Vec<String> = check_set(&set).iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        vec![
            "a2.yaml:1:1: error: duplicate workflow name \"a\" (also in a.yaml)\n  help: workflow names are unique; rename one of them",
            "a.yaml:4:5: error: call cycle: a → b → a\n  help: a workflow may not call itself, directly or through others",
            "b.yaml:4:5: error: call cycle: b → a → b\n  help: a workflow may not call itself, directly or through others",
            "c.yaml:4:5: error: call to unknown workflow \"nope\"",
        ]
    );
}

#[test]
fn load_paths_reads_folders_sorted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "reactor: 1\nname: b\nsteps: []\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.yml"),
        "reactor: 1\nname: a\nsteps:\n  - call: b\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("c.yaml"), "reactor: 1\nname: c\nstep: []\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let loaded = load_paths(&[dir.path().to_path_buf()]);
    assert_eq!(loaded.workflows.len(), 2);
    assert_eq!(loaded.workflows[0].0.name.as_str(), "a");
    let messages: Vec<&str> = loaded
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        messages,
        vec![
            "missing required key \"steps\" in workflow (what the workflow does, in order)",
            "unknown key \"step\" in workflow",
        ]
    );
}

#[test]
fn hostile_documents_are_refused_fast() {
    let huge = format!(
        "reactor: 1\nname: t\nsteps: []\ndescription: \"{}\"\n",
        "x".repeat(1 << 20)
    );
    let deep = format!("reactor: 1\nname: t\nsteps: {}", "[".repeat(10_000));
    let mut bomb = String::from(
        "reactor: 1\nname: t\nsteps: []\nvars:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10u8 {
        let (prev, name) = ((b'a' + i - 1) as char, (b'a' + i) as char);
        bomb.push_str(&format!(
            "  {name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    for (what, text) in [("huge", huge), ("deep", deep), ("bomb", bomb)] {
        let start = Instant::now();
        let diags = parse_workflow("w.yaml", &text).unwrap_err();
        let took = start.elapsed();
        assert!(took < Duration::from_millis(100), "{what} took {took:?}");
        assert_eq!(diags.len(), 1, "{what}: {diags:?}");
    }
}

#[test]
fn fifty_steps_parse_quickly() {
    let mut text = String::from("reactor: 1\nname: big\nsteps:\n");
    for i in 0..50 {
        text.push_str(&format!(
            "  - id: s{i}\n    action: http\n    with: {{ url: \"https://x/{i}\", json: {{ n: {i} }} }}\n    retry: {{ attempts: 3, delay: 1s }}\n"
        ));
    }
    let w = parse_workflow("big.yaml", &text).unwrap();
    assert_eq!(w.steps.len(), 50);
}

#[test]
fn expression_checks() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "  - id: fetch\n    action: log\n    with: { message: \"${{ steps.fetc.output }}\" }\n",
            "6:27: unknown step id \"fetc\" in steps.fetc",
            Some("did you mean \"fetch\"?"),
        ),
        (
            "  - action: log\n    with: { message: \"${{ evnt.data }}\" }\n",
            "5:27: unknown name \"evnt\" in expression",
            Some("did you mean \"event\"?"),
        ),
        (
            "  - action: log\n    with: { message: \"failed: ${{ error.message }}\" }\n",
            "5:35: \"error\" is only available inside catch, on_failure and retry.if",
            None,
        ),
        (
            "  - action: log\n    if: inputs.limit > 3\n    with: { message: m }\n",
            "5:9: unknown input \"limit\" in inputs.limit",
            Some("declare it under inputs: (limit: { type: string })"),
        ),
        (
            "  - action: log\n    if: ${{ event.data.x > }}\n    with: { message: m }\n",
            "5:28: invalid expression in if: expression ends where a value was expected",
            None,
        ),
        (
            "  - set: { a: \"${{ item }}\" }\n",
            "4:20: \"item\" is only available inside foreach",
            None,
        ),
        (
            "  - set: { a: \"${{ result }}\" }\n",
            "4:20: \"result\" is only available inside a step's output",
            None,
        ),
        (
            "  - set: { a: \"${{ branches.a }}\" }\n",
            "4:20: \"branches\" is only available inside a parallel join: { when }",
            None,
        ),
    ];
    for (steps, expected, help) in cases {
        let text = with_steps(steps);
        let diags = parse_workflow("w.yaml", &text).expect_err(&text);
        let got: Vec<String> = diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect();
        assert_eq!(got, vec![expected.to_string()], "{text}");
        assert_eq!(diags[0].help.as_deref(), *help, "{text}");
    }
    // Names that are in scope.
    let ok = with_steps(
        "  - id: a
    action: log
    with: { message: \"${{ execution.id }} ${{ env.HOME }} ${{ secrets.T }} ${{ device.id }}\" }
    retry: { attempts: 2, if: \"error.status >= 500\" }
    catch:
      - action: log
        with: { message: \"${{ error.message }} ${{ steps.a.status }}\" }
    output: \"${{ result.body }}\"
  - foreach: [1, 2]
    as: n
    steps:
      - set: { total: \"${{ n + index }}\" }
on_failure:
  - action: log
    with: { message: \"${{ error.message }}\" }
",
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
}
