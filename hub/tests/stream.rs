//! `GET /api/v1/stream` on the real `reactor-hub serve`: execution and step events in order,
//! `?workflow=` filtering, a metrics snapshot every second, and a token needed.

mod api_support;
mod stream_support;

use std::time::Duration;

use api_support::{Hub, Place};
use serde_json::json;
use stream_support::SseReader;

fn workflow(name: &str) -> String {
    format!(
        "reactor: 1\nname: {name}\nsteps:\n  - id: note\n    action: log\n    with: {{ message: \"hi\" }}\n  - id: boom\n    action: log\n    with: {{ message: \"${{{{ event.data.level }}}}\", level: \"${{{{ event.data.level }}}}\" }}\n"
    )
}

#[tokio::test]
async fn stream_sends_execution_and_step_events_filtered_by_workflow_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(Place::sqlite(&dir.path().join("data")), &[]).await;
    for name in ["s-one", "s-two"] {
        hub.send_yaml("POST", "/api/v1/workflows", &workflow(name))
            .await
            .expect(201);
    }
    let viewer = api_support::create_token(&hub.place, "viewer");
    let mut only_one = SseReader::open(&hub.url("/api/v1/stream?workflow=s-one"), &viewer).await;
    let mut all = SseReader::open(&hub.url("/api/v1/stream"), &viewer).await;

    // A metrics snapshot arrives within a few seconds, with subscribers counted.
    let (_, snapshot) = all
        .until(Duration::from_secs(5), |e| e.event == "metrics")
        .await;
    let snapshot = snapshot.expect("a metrics snapshot");
    assert_eq!(
        snapshot.data["subscribers"],
        json!(2.0),
        "{:?}",
        snapshot.data
    );

    let two = hub
        .post_json("/api/v1/workflows/s-two/run", json!({"level": "info"}))
        .await
        .expect(202);
    let one = hub
        .post_json("/api/v1/workflows/s-one/run", json!({"level": "loud"}))
        .await
        .expect(202);
    let one_id = one.body["execution"].as_str().unwrap().to_string();
    let two_id = two.body["execution"].as_str().unwrap().to_string();

    let (before, finished) = only_one
        .until(Duration::from_secs(10), |e| e.event == "execution.finished")
        .await;
    let finished = finished.expect("execution.finished for s-one");
    assert_eq!(finished.data["execution"], json!(one_id));
    assert_eq!(finished.data["status"], json!("failed"));
    let kinds: Vec<(String, String)> = before
        .iter()
        .filter(|e| e.event != "metrics")
        .map(|e| {
            (
                e.event.clone(),
                e.data["step"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("execution.started".to_string(), String::new()),
            ("step.started".to_string(), "note".to_string()),
            ("step.finished".to_string(), "note".to_string()),
            ("step.started".to_string(), "boom".to_string()),
            ("step.finished".to_string(), "boom".to_string()),
        ],
        "{before:?}"
    );
    let boom = &before[before.len() - 1];
    assert_eq!(boom.data["result"], json!("failed"));
    assert!(boom.data["duration_ms"].as_f64().is_some());
    assert!(
        before
            .iter()
            .all(|e| e.data["workflow"].is_null() || e.data["workflow"] == json!("s-one")),
        "the filter lets only s-one through: {before:?}"
    );

    // The unfiltered subscriber sees both executions end.
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let (_, event) = all
            .until(Duration::from_secs(10), |e| e.event == "execution.finished")
            .await;
        ended.push(event.expect("both executions finish").data["execution"].clone());
    }
    ended.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
    let mut expected = vec![json!(one_id), json!(two_id)];
    expected.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
    assert_eq!(ended, expected);

    hub.call("GET", "/api/v1/stream", None, None)
        .await
        .problem(401);
}
