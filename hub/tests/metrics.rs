//! `GET /metrics` on the real `reactor-hub serve`: executions by workflow and status, step
//! latency histograms, trigger event counters and lag, queue depths, the journal's group
//! commits, process CPU, memory and disk; valid text format; a token is needed.

mod api_support;

use api_support::{Hub, Place};
use serde_json::json;

const OK: &str = r#"reactor: 1
name: m-ok
triggers:
  - event: { type: "metrics.test" }
steps:
  - id: shape
    action: transform
    with: { value: "${{ event.data }}" }
  - id: note
    action: log
    with: { message: "ok" }
"#;

const BAD: &str = r#"reactor: 1
name: m-bad
steps:
  - id: note
    action: log
    with: { message: "about to fail" }
  - fail: { message: "on purpose" }
"#;

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_cover_executions_steps_triggers_queues_and_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(Place::sqlite(&dir.path().join("data")), &[]).await;
    for yaml in [OK, BAD] {
        hub.send_yaml("POST", "/api/v1/workflows", yaml)
            .await
            .expect(201);
    }
    for _ in 0..3 {
        let run = hub
            .post_json("/api/v1/workflows/m-ok/run", json!({"n": 1}))
            .await
            .expect(202);
        hub.finished(run.body["execution"].as_str().unwrap()).await;
    }
    let run = hub
        .post_json("/api/v1/workflows/m-bad/run", json!({}))
        .await
        .expect(202);
    hub.finished(run.body["execution"].as_str().unwrap()).await;
    let emitted = hub
        .post_json(
            "/api/v1/events",
            json!({"type": "metrics.test", "data": {"x": 1}}),
        )
        .await
        .expect(202);
    assert_eq!(emitted.body["started"], 1, "{}", emitted.text);

    // The event's execution finishes shortly; poll /metrics until it is counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let reply = hub.get("/metrics").await.expect(200);
        assert!(
            reply.content_type.starts_with("text/plain; version=0.0.4"),
            "{}",
            reply.content_type
        );
        if sample(
            &reply.text,
            "reactor_executions_total{status=\"succeeded\",workflow=\"m-ok\"}",
        ) == Some(4.0)
        {
            break reply.text;
        }
        assert!(std::time::Instant::now() < deadline, "{}", reply.text);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    let expect = |prefix: &str, value: f64| {
        assert_eq!(sample(&text, prefix), Some(value), "{prefix}\n{text}");
    };
    expect(
        "reactor_executions_total{status=\"started\",workflow=\"m-ok\"}",
        4.0,
    );
    expect(
        "reactor_executions_total{status=\"failed\",workflow=\"m-bad\"}",
        1.0,
    );
    // log runs through the driver (transform is evaluated by the state machine).
    expect(
        "reactor_step_duration_seconds_count{action=\"log\",result=\"succeeded\",workflow=\"m-ok\"}",
        4.0,
    );
    expect(
        "reactor_step_duration_seconds_bucket{action=\"log\",le=\"+Inf\",result=\"succeeded\",workflow=\"m-bad\"}",
        1.0,
    );
    expect(
        "reactor_trigger_events_total{kind=\"event\",trigger=\"metrics.test\",workflow=\"m-ok\"}",
        1.0,
    );
    assert!(
        sample(
            &text,
            "reactor_trigger_lag_seconds_count{workflow=\"m-ok\"}"
        )
        .unwrap()
            >= 4.0,
        "{text}"
    );
    expect("reactor_executions_queued", 0.0);
    expect("reactor_workflows_loaded", 2.0);
    assert!(sample(&text, "reactor_executions_running").is_some());
    assert!(sample(&text, "reactor_process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&text, "reactor_process_cpu_percent").unwrap() >= 0.0);
    assert!(sample(&text, "reactor_disk_available_bytes").unwrap() > 0.0);
    assert!(sample(&text, "reactor_disk_total_bytes").unwrap() > 0.0);
    // The journal's group commits: the four runs above were at least four batches, and no
    // commit holds fewer than one.
    let commits = sample(&text, "reactor_journal_commits_total").unwrap();
    let batches = sample(&text, "reactor_journal_batches_total").unwrap();
    assert!(
        commits >= 1.0 && batches >= 4.0 && batches >= commits,
        "{text}"
    );
    assert!(sample(&text, "reactor_journal_writer_busy_seconds_total").unwrap() > 0.0);

    // The text format: comments, or `name{labels} value`.
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "{line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("reactor_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert_eq!(series.contains('{'), series.ends_with('}'), "{line}");
    }

    // A token is needed.
    hub.call("GET", "/metrics", None, None).await.problem(401);
}
