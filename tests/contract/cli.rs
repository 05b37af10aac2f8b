// The command-line contract of DSL.md, checked against a real binary.
//
// Shared by `agent/tests/cli.rs` and `hub/tests/cli.rs` (through `#[path]`): both binaries
// must meet exactly the same expectations. The including file defines `BIN` (the binary's
// path, from `CARGO_BIN_EXE_…`) and `NAME` (its name in `--help`).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use super::{BIN, NAME};

/// Runs the binary in `dir` with a clean `REACTOR_*` environment and logs off.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir).env("RUST_LOG", "off");
    for (name, _) in std::env::vars() {
        if name.starts_with("REACTOR_") {
            command.env_remove(name);
        }
    }
    command.output().expect("the binary runs")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited normally")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 stderr")
}

/// Parses `exec`'s stdout: exactly one JSON object on one line.
fn exec_json(output: &Output) -> Value {
    let text = stdout(output);
    assert_eq!(
        text.lines().count(),
        1,
        "exec prints one line of JSON, got {text:?}"
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Asserts the exact shape DSL.md gives `exec`'s output.
fn assert_exec_shape(result: &Value) {
    assert_eq!(
        keys(result),
        ["error", "output", "status", "steps"],
        "{result}"
    );
    assert!(result["status"].is_string(), "{result}");
    match &result["error"] {
        Value::Null => {}
        error @ Value::Object(_) => {
            assert_eq!(keys(error), ["message", "step"], "{result}");
            assert!(error["message"].is_string(), "{result}");
            assert!(
                error["step"].is_string() || error["step"].is_null(),
                "{result}"
            );
        }
        other => panic!("error must be null or an object, got {other}"),
    }
    for (id, step) in result["steps"].as_object().expect("steps is an object") {
        assert_eq!(
            keys(step),
            ["attempts", "output", "status"],
            "step {id}: {result}"
        );
        assert!(step["status"].is_string(), "step {id}: {result}");
        assert!(step["attempts"].is_u64(), "step {id}: {result}");
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write a fixture");
}

const VALID: &str = r#"
reactor: 1
name: greet
inputs:
  who: { type: string, default: world }
  times: { type: integer, default: 1 }
triggers:
  - http: { path: /greet }
steps:
  - id: hello
    action: transform
    with: { value: "hello ${{ inputs.who }}" }
  - action: log
    with: { message: "${{ steps.hello.output }}" }
  - id: event
    action: transform
    with: { value: { type: "${{ event.type }}", data: "${{ event.data }}" } }
output:
  greeting: ${{ steps.hello.output }}
  times: ${{ inputs.times }}
  event: ${{ steps.event.output }}
"#;

/// Several problems in one file: all must be reported at once.
const BROKEN: &str = r#"reactor: 1
name: Bad_Name
steps:
  - id: fetch
    action: http
    with: { url: "http://127.0.0.1:9/" }
    retyr: { attempts: 3 }
  - id: fetch
    sleep: soon
"#;

#[test]
fn help_lists_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &["--help"]);
    assert_eq!(code(&output), 0);
    let help = stdout(&output);
    assert!(help.contains(&format!("Usage: {NAME}")), "{help}");
    for subcommand in ["validate", "exec", "schema"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(subcommand)),
            "--help does not list {subcommand}:\n{help}"
        );
    }
}

#[test]
fn validate_accepts_valid_files_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", VALID);
    write(
        dir.path(),
        "other.yml",
        &VALID.replace("name: greet", "name: other"),
    );
    for args in [
        &["validate", "greet.yaml"][..],
        &["validate", "."],
        &["validate", "greet.yaml", "other.yml"],
    ] {
        let output = run_in(dir.path(), args);
        assert_eq!(
            code(&output),
            0,
            "{args:?}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert_eq!(stdout(&output), "", "{args:?}");
    }
}

#[test]
fn validate_reports_every_problem_with_location_and_help() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "broken.yaml", BROKEN);
    let output = run_in(dir.path(), &["validate", "broken.yaml"]);
    assert_eq!(code(&output), 1);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    // Every line is a problem or the help line of the problem above it.
    for line in &lines {
        let is_problem = line.starts_with("broken.yaml:") && line.contains(": error: ");
        assert!(
            is_problem || line.starts_with("  help: "),
            "unexpected line {line:?} in\n{text}"
        );
    }
    let problems: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("  help: "))
        .collect();
    assert_eq!(problems.len(), 4, "{text}");
    assert!(
        problems[0].starts_with("broken.yaml:2:7: error: invalid workflow name \"Bad_Name\""),
        "{text}"
    );
    let retry = lines
        .iter()
        .position(|l| *l == "broken.yaml:7:5: error: unknown key \"retyr\" in step")
        .expect(&text);
    assert_eq!(
        lines[retry + 1],
        "  help: did you mean \"retry\"?",
        "{text}"
    );
    assert!(
        problems[2].starts_with("broken.yaml:8:9: error: duplicate step id \"fetch\""),
        "{text}"
    );
    assert!(
        problems[3].starts_with("broken.yaml:9:12: error: sleep: invalid duration \"soon\""),
        "{text}"
    );

    // Valid and invalid together: only the invalid file is reported, exit 1.
    write(dir.path(), "greet.yaml", VALID);
    let output = run_in(dir.path(), &["validate", "greet.yaml", "broken.yaml"]);
    assert_eq!(code(&output), 1);
    assert!(
        stdout(&output)
            .lines()
            .all(|l| l.starts_with("broken.yaml:") || l.starts_with("  help: "))
    );
    // A folder reports its files' problems under their paths.
    let output = run_in(dir.path(), &["validate", "."]);
    assert_eq!(code(&output), 1);
    assert!(
        stdout(&output).contains("broken.yaml:7:5: error: unknown key \"retyr\" in step"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn validate_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &["validate", "missing.yaml"]);
    assert_eq!(code(&output), 1);
    assert!(
        stdout(&output).starts_with("missing.yaml:1:1: error: "),
        "{}",
        stdout(&output)
    );
}

#[test]
fn exec_prints_the_contract_shape_and_lists_only_steps_with_an_id() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", VALID);
    let output = run_in(dir.path(), &["exec", "greet.yaml"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let result = exec_json(&output);
    assert_exec_shape(&result);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["error"], Value::Null);
    assert_eq!(
        keys(&result["steps"]),
        ["event", "hello"],
        "the log step has no id: {result}"
    );
    assert_eq!(
        result["steps"]["hello"],
        json!({"status": "succeeded", "output": "hello world", "attempts": 1})
    );
    assert_eq!(result["output"]["greeting"], "hello world");
    assert_eq!(result["output"]["times"], 1, "defaults apply");
    assert_eq!(
        result["output"]["event"],
        json!({"type": "manual", "data": {}})
    );
}

#[test]
fn exec_takes_the_event_as_json_or_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", VALID);
    let output = run_in(
        dir.path(),
        &[
            "exec",
            "greet.yaml",
            "--event",
            r#"{"temp": 31, "tags": ["a"]}"#,
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let result = exec_json(&output);
    assert_eq!(
        result["output"]["event"],
        json!({"type": "manual", "data": {"temp": 31, "tags": ["a"]}})
    );

    write(dir.path(), "event.json", r#"{"temp": 12.5}"#);
    let output = run_in(
        dir.path(),
        &["exec", "greet.yaml", "--event", "@event.json"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let result = exec_json(&output);
    assert_eq!(
        result["output"]["event"],
        json!({"type": "manual", "data": {"temp": 12.5}})
    );
}

#[test]
fn exec_applies_inputs_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet.yaml", VALID);
    let output = run_in(
        dir.path(),
        &["exec", "greet.yaml", "--input", r#"{"who": "reactor"}"#],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let result = exec_json(&output);
    assert_eq!(result["output"]["greeting"], "hello reactor");
    assert_eq!(result["output"]["times"], 1);
}

#[test]
fn exec_fails_on_a_missing_or_mistyped_input_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "greet.yaml",
        &VALID.replace(
            "who: { type: string, default: world }",
            "who: { type: string }",
        ),
    );
    let output = run_in(dir.path(), &["exec", "greet.yaml"]);
    assert_eq!(code(&output), 1);
    let result = exec_json(&output);
    assert_exec_shape(&result);
    assert_eq!(result["status"], "failed");
    assert!(
        result["error"]["message"].as_str().unwrap().contains("who"),
        "{result}"
    );
    assert_eq!(result["steps"], json!({}), "no step ran: {result}");

    let output = run_in(
        dir.path(),
        &[
            "exec",
            "greet.yaml",
            "--input",
            r#"{"who": "x", "times": "many"}"#,
        ],
    );
    assert_eq!(code(&output), 1);
    let result = exec_json(&output);
    assert_eq!(result["status"], "failed");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("times"),
        "{result}"
    );
    assert_eq!(result["steps"], json!({}));
}

#[test]
fn exec_exits_1_with_the_failed_step_when_a_step_fails() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fails.yaml",
        "reactor: 1\nname: fails\nsteps:\n  - id: first\n    set: { a: 1 }\n  - id: boom\n    fail: { message: \"it broke\" }\n  - id: never\n    set: { a: 2 }\n",
    );
    let output = run_in(dir.path(), &["exec", "fails.yaml"]);
    assert_eq!(code(&output), 1);
    let result = exec_json(&output);
    assert_exec_shape(&result);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["step"], "boom");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("it broke"),
        "{result}"
    );
    assert_eq!(result["steps"]["first"]["status"], "succeeded");
    assert_eq!(result["steps"]["boom"]["status"], "failed");
    assert!(
        result["steps"]
            .get("never")
            .is_none_or(|s| s["status"] != "succeeded"),
        "{result}"
    );
}

#[test]
fn exec_exits_2_with_validate_lines_on_stderr_for_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "broken.yaml", BROKEN);
    let output = run_in(dir.path(), &["exec", "broken.yaml"]);
    assert_eq!(code(&output), 2);
    assert_eq!(stdout(&output), "", "nothing on stdout");
    let validated = run_in(dir.path(), &["validate", "broken.yaml"]);
    assert_eq!(
        stderr(&output),
        stdout(&validated),
        "exec prints exactly the validate lines"
    );
}

#[test]
fn exec_exits_0_with_status_skipped_when_if_rejects_the_event() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "hot.yaml",
        "reactor: 1\nname: hot\nif: ${{ event.data.temp > 30 }}\nsteps:\n  - id: alert\n    action: transform\n    with: { value: hot }\n",
    );
    let output = run_in(
        dir.path(),
        &["exec", "hot.yaml", "--event", r#"{"temp": 20}"#],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let result = exec_json(&output);
    assert_exec_shape(&result);
    assert_eq!(
        result,
        json!({"status": "skipped", "output": null, "error": null, "steps": {}})
    );

    let output = run_in(
        dir.path(),
        &["exec", "hot.yaml", "--event", r#"{"temp": 31}"#],
    );
    assert_eq!(code(&output), 0);
    assert_eq!(exec_json(&output)["status"], "succeeded");
}

#[test]
fn exec_runs_the_exec_action_only_with_allow_exec() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "echo.yaml",
        "reactor: 1\nname: echo\nsteps:\n  - id: say\n    action: exec\n    with: { command: echo, args: [\"hi\", \"there\"] }\n",
    );
    let output = run_in(dir.path(), &["exec", "echo.yaml"]);
    assert_eq!(code(&output), 1);
    let result = exec_json(&output);
    assert_exec_shape(&result);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["step"], "say");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{result}"
    );
    assert_eq!(result["steps"]["say"]["status"], "failed");

    let output = run_in(dir.path(), &["exec", "echo.yaml", "--allow-exec"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let result = exec_json(&output);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(
        result["steps"]["say"]["output"],
        json!({"code": 0, "stdout": "hi there\n", "stderr": ""})
    );
}

#[test]
fn exec_finds_called_workflows_by_name_in_the_files_folder() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    // The file names differ from the workflow names: lookup is by `name`, .yaml and .yml.
    write(
        &flows,
        "parent.yaml",
        "reactor: 1\nname: parent\nsteps:\n  - id: double\n    call: { workflow: doubler, input: { n: 21 } }\n  - id: later\n    call: { workflow: side-job, wait: false }\noutput: ${{ steps.double.output }}\n",
    );
    write(
        &flows,
        "the-child.yml",
        "reactor: 1\nname: doubler\ninputs:\n  n: { type: integer }\nsteps:\n  - id: calc\n    action: transform\n    with: { value: \"${{ inputs.n * 2 }}\" }\noutput: { doubled: \"${{ steps.calc.output }}\" }\n",
    );
    write(
        &flows,
        "side.yaml",
        "reactor: 1\nname: side-job\nsteps:\n  - set: { done: true }\n",
    );
    // Run from the temporary folder, naming the file by a path with a folder.
    let output = run_in(dir.path(), &["exec", "flows/parent.yaml"]);
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    let result = exec_json(&output);
    assert_exec_shape(&result);
    assert_eq!(result["output"], json!({"doubled": 42}));
    assert_eq!(result["steps"]["double"]["output"], json!({"doubled": 42}));
    assert_eq!(result["steps"]["later"]["status"], "succeeded");

    // `validate` of the file alone resolves its calls the same way.
    let output = run_in(dir.path(), &["validate", "flows/parent.yaml"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));

    // A call to a workflow that is not there is a validation error: exit 2.
    write(
        &flows,
        "orphan.yaml",
        "reactor: 1\nname: orphan\nsteps:\n  - call: { workflow: nobody }\n",
    );
    let output = run_in(dir.path(), &["exec", "flows/orphan.yaml"]);
    assert_eq!(code(&output), 2, "{}", stdout(&output));
    assert!(
        stderr(&output).starts_with("flows/orphan.yaml:4:"),
        "{}",
        stderr(&output)
    );
    let output = run_in(dir.path(), &["validate", "flows/orphan.yaml"]);
    assert_eq!(code(&output), 1);
    assert_eq!(
        stdout(&output),
        "flows/orphan.yaml:4:5: error: call to unknown workflow \"nobody\"\n"
    );
}
