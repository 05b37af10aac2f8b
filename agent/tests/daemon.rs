//! End-to-end tests of `reactor-agent run`: the real binary on 127.0.0.1 with a free port and
//! a temporary data folder, driven over HTTP.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Agent, BIN, client, write};

const HELLO: &str = r#"
reactor: 1
name: hello
version: 1
triggers:
  - http: { path: /hello }
  - http: { path: /hello-async, response: async }
steps:
  - id: greet
    action: transform
    with:
      value: "hello ${{ event.data.name }}"
output: { greeting: "${{ steps.greet.output }}" }
"#;

const SLEEPY: &str = r#"
reactor: 1
name: sleepy
version: 1
triggers:
  - http: { path: /sleepy, response: async }
steps:
  - id: nap
    sleep: ${{ event.data.for }}
  - id: done
    action: transform
    with:
      value: awake
"#;

#[tokio::test]
async fn http_triggers_sync_and_async_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    write(&workflows, "hello.yaml", HELLO);
    write(
        &workflows,
        "broken.yaml",
        "reactor: 1\nname: broken\nstepz: []\n",
    );
    let agent = Agent::start(&workflows, &dir.path().join("data"), &[]).await;

    let (status, body) = agent.post("/hello", json!({ "name": "ada" })).await;
    assert_eq!((status, body), (200, json!({ "greeting": "hello ada" })));

    let (status, body) = agent.post("/hello-async", json!({ "name": "bo" })).await;
    assert_eq!(status, 202);
    let id = body["execution"].as_str().unwrap().to_string();
    let execution = agent.finished(&id).await;
    assert_eq!(execution["status"], "succeeded");
    assert_eq!(execution["output"], json!({ "greeting": "hello bo" }));
    assert_eq!(execution["workflow"], "hello");
    assert_eq!(execution["id"], id.as_str());
    assert_eq!(execution["steps"]["greet"]["attempts"], 1);
    assert!(execution["steps"]["greet"]["finished_at"].is_string());

    // The invalid file is reported and skipped; the daemon serves the rest.
    assert!(agent.logs().contains("broken.yaml"), "{}", agent.logs());
    let (status, list) = agent.get("/api/v1/workflows").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"hello") && names.contains(&"agent-info"));
    assert!(!names.contains(&"broken"));

    let (status, run) = agent
        .post("/api/v1/workflows/hello/run", json!({ "name": "cy" }))
        .await;
    assert_eq!(status, 202);
    let manual = run["execution"].as_str().unwrap().to_string();
    assert_eq!(
        agent.finished(&manual).await["output"]["greeting"],
        "hello cy"
    );

    let (status, page) = agent
        .get("/api/v1/executions?workflow=hello&status=succeeded&limit=2")
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], manual, "newest first");
    assert_eq!(ids.len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = agent
        .get(&format!(
            "/api/v1/executions?workflow=hello&cursor={cursor}"
        ))
        .await;
    assert_eq!(next["executions"].as_array().unwrap().len(), 1);

    let (status, problem) = agent.post("/api/v1/workflows/nope/run", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(problem["status"], 404);
    let (status, _) = agent.get("/api/v1/executions/not-an-id").await;
    assert_eq!(status, 400);

    let (status, info) = agent.get("/reactor/info").await;
    assert_eq!(status, 200, "embedded workflow serves");
    assert!(info["device"]["id"].is_string());

    let metrics = client()
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "reactor_executions_total{status=\"succeeded\",workflow=\"hello\"} 3",
        "reactor_executions_skipped_total 0",
        "reactor_executions_dropped_total 0",
        "reactor_executions_running 0",
        "reactor_http_requests_shed_total 0",
        "reactor_trigger_events_total{kind=\"http\",trigger=\"POST /hello\",workflow=\"hello\"} 1",
        "reactor_process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn api_cancels_a_running_execution() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    write(&workflows, "sleepy.yaml", SLEEPY);
    let agent = Agent::start(&workflows, &dir.path().join("data"), &[]).await;
    let (status, run) = agent
        .post("/api/v1/workflows/sleepy/run", json!({ "for": "1h" }))
        .await;
    assert_eq!(status, 202);
    let id = run["execution"].as_str().unwrap().to_string();
    let (status, _) = agent
        .post(&format!("/api/v1/executions/{id}/cancel"), json!(null))
        .await;
    assert_eq!(status, 202);
    assert_eq!(agent.finished(&id).await["status"], "cancelled");
    let (status, problem) = agent
        .post(&format!("/api/v1/executions/{id}/cancel"), json!(null))
        .await;
    assert_eq!(status, 409, "{problem}");
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_resumes_a_sleeping_execution() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    let data = dir.path().join("data");
    std::fs::create_dir(&workflows).unwrap();
    write(&workflows, "sleepy.yaml", SLEEPY);
    let mut agent = Agent::start(&workflows, &data, &[]).await;
    let (status, body) = agent.post("/sleepy", json!({ "for": "2s" })).await;
    assert_eq!(status, 202);
    let id = body["execution"].as_str().unwrap().to_string();
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "{}", agent.logs());

    let agent = Agent::start(&workflows, &data, &[]).await;
    let execution = agent.finished(&id).await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(execution["steps"]["done"]["output"], "awake");
}

#[tokio::test]
async fn hot_reload_replaces_valid_changes_and_keeps_the_old_version_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    write(&workflows, "hello.yaml", HELLO);
    let agent = Agent::start(&workflows, &dir.path().join("data"), &[]).await;
    assert_eq!(
        agent.post("/hello", json!({ "name": "a" })).await.1["greeting"],
        "hello a"
    );

    // Changed content, same `version`: served as version 2.
    write(
        &workflows,
        "hello.yaml",
        &HELLO.replace("hello ${{", "hi ${{"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = agent.post("/hello", json!({ "name": "a" })).await;
        if body["greeting"] == "hi a" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list) = agent.get("/api/v1/workflows").await;
    let hello = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "hello")
        .unwrap()
        .clone();
    assert_eq!(hello["version"], 2);

    // A broken edit is reported; version 2 keeps serving.
    write(
        &workflows,
        "hello.yaml",
        "reactor: 1\nname: hello\nsteps: [ { bogus: 1 } ]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.logs().contains("no longer validates") {
        assert!(Instant::now() < deadline, "not reported: {}", agent.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        agent.post("/hello", json!({ "name": "b" })).await.1["greeting"],
        "hi b"
    );

    // A removed file stops its triggers.
    std::fs::remove_file(workflows.join("hello.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = agent.post("/hello", json!({})).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "not removed: {}", agent.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_with_config(config: &str, data: &Path) -> (Option<i32>, String) {
    let file = data.with_extension("toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&file)
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_is_refused_with_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = run_with_config("[device]\nid = \"pi\"\nlables = {}\n", &data);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("data.toml:3:1"), "{stderr}");
    assert!(stderr.contains("lables"), "{stderr}");

    let (code, stderr) = run_with_config("[limits]\nmax_running = 0\n", &data);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("limits.max_running"), "{stderr}");
    assert!(stderr.contains("data.toml"), "{stderr}");
    assert!(!data.exists(), "nothing is created for a refused config");
}

#[test]
fn run_help_documents_the_configuration() {
    let output = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--workflows",
        "REACTOR_DATA",
        "REACTOR_LISTEN",
        "REACTOR_LOG_FORMAT",
        "REACTOR_CONFIG",
        "REACTOR_DEVICE__ID",
        "max_running",
        "REACTOR_SECRET_",
    ] {
        assert!(help.contains(needle), "{needle} missing from\n{help}");
    }
}

#[tokio::test]
async fn interval_startup_and_event_triggers_run_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    write(
        &workflows,
        "boot.yaml",
        "reactor: 1\nname: boot\ntriggers:\n  - startup: {}\nsteps:\n  - emit: { type: device.booted, data: { ok: true } }\n",
    );
    write(
        &workflows,
        "on-boot.yaml",
        "reactor: 1\nname: on-boot\ntriggers:\n  - event: { type: device.* }\nsteps:\n  - id: seen\n    action: transform\n    with: { value: \"${{ event.type }}\" }\n",
    );
    write(
        &workflows,
        "tick.yaml",
        "reactor: 1\nname: tick\ntriggers:\n  - interval: { every: 200ms }\nsteps:\n  - action: log\n    with: { message: tick }\n",
    );
    let agent = Agent::start(&workflows, &dir.path().join("data"), &[]).await;
    for workflow in ["on-boot", "tick"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, page) = agent
                .get(&format!(
                    "/api/v1/executions?workflow={workflow}&status=succeeded"
                ))
                .await;
            if !page["executions"].as_array().unwrap().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{workflow} never ran: {}",
                agent.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let metrics = client()
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "reactor_trigger_up{kind=\"interval\",trigger=\"tick#0\",workflow=\"tick\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("reactor_trigger_events_total{")
                && line.contains("workflow=\"on-boot\"")),
        "{metrics}"
    );
}
