//! Alerts on the real `reactor-hub serve`, in real time: a rule on a gauge goes pending,
//! fires after its `for`, resolves; both transitions are in the history, on the live stream
//! and delivered as `reactor.alert.*` events to a workflow's `event` trigger.

mod api_support;
mod stream_support;

use std::time::{Duration, Instant};

use api_support::{Hub, Place};
use serde_json::json;
use stream_support::SseReader;

const SLEEPER: &str = "reactor: 1\nname: sleeper\nsteps:\n  - sleep: 3s\n";

const NOTIFY: &str = r#"reactor: 1
name: notify
triggers:
  - event: { type: "reactor.alert.*" }
steps:
  - return: { kind: "${{ event.type }}", rule: "${{ event.data.rule.id }}", value: "${{ event.data.value }}" }
"#;

#[tokio::test]
async fn a_rule_fires_after_for_and_resolves_with_history_stream_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(Place::sqlite(&dir.path().join("data")), &[]).await;
    for yaml in [SLEEPER, NOTIFY] {
        hub.send_yaml("POST", "/api/v1/workflows", yaml)
            .await
            .expect(201);
    }
    // Bad rules are refused with every problem.
    let bad = hub
        .post_json(
            "/api/v1/alerts",
            json!({"metric": "9x", "comparator": ">", "threshold": 1, "for": "later"}),
        )
        .await
        .problem(422);
    assert!(
        bad.text.contains("metric must be") && bad.text.contains("for:"),
        "{}",
        bad.text
    );
    hub.post_json(
        "/api/v1/alerts",
        json!({"metric": "m", "comparator": "~", "threshold": 1}),
    )
    .await
    .problem(400);

    let created = hub
        .post_json(
            "/api/v1/alerts",
            json!({
                "name": "busy",
                "metric": "reactor_executions_running",
                "comparator": ">",
                "threshold": 0,
                "for": "1s"
            }),
        )
        .await
        .expect(201);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["for"], json!("1s"));

    let mut stream = SseReader::open(&hub.url("/api/v1/stream"), &hub.admin).await;
    let started = Instant::now();
    hub.post_json("/api/v1/workflows/sleeper/run", json!({}))
        .await
        .expect(202);

    // Pending first (the condition holds, `for` not yet over).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = hub.get("/api/v1/alerts").await.expect(200);
        let state = listed.body["alerts"][0]["status"]["state"].clone();
        if state == json!("pending") || state == json!("firing") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", listed.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_, firing) = stream
        .until(Duration::from_secs(10), |e| e.event == "alert.firing")
        .await;
    let firing = firing.expect("alert.firing on the stream");
    assert_eq!(firing.data["rule"]["id"], json!(id));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "fired only after `for`: {:?}",
        started.elapsed()
    );
    let listed = hub.get("/api/v1/alerts").await.expect(200);
    assert_eq!(listed.body["alerts"][0]["status"]["state"], json!("firing"));

    let (_, resolved) = stream
        .until(Duration::from_secs(10), |e| e.event == "alert.resolved")
        .await;
    assert!(
        resolved.is_some(),
        "alert.resolved once the sleeper finished"
    );

    let history = hub
        .get(&format!("/api/v1/alerts/{id}/history"))
        .await
        .expect(200);
    let states: Vec<&str> = history.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["resolved", "firing"], "{}", history.text);

    // The events reached the `notify` workflow's event trigger.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kinds = loop {
        let list = hub
            .get("/api/v1/executions?workflow=notify&limit=10")
            .await
            .expect(200);
        let items = list.body["executions"]
            .as_array()
            .or_else(|| list.body["items"].as_array())
            .cloned()
            .unwrap_or_default();
        let mut kinds = Vec::new();
        for item in &items {
            let id = item["id"].as_str().or_else(|| item["execution"].as_str());
            if let Some(id) = id {
                let done = hub.finished(id).await;
                kinds.push(
                    done["output"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                assert_eq!(done["output"]["rule"], json!(id_of(&firing)), "{done}");
            }
        }
        kinds.sort();
        if kinds.len() >= 2 {
            break kinds;
        }
        assert!(Instant::now() < deadline, "{}", list.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(kinds, ["reactor.alert.firing", "reactor.alert.resolved"]);

    hub.call(
        "DELETE",
        &format!("/api/v1/alerts/{id}"),
        Some(&hub.admin.clone()),
        None,
    )
    .await
    .expect(204);
    hub.get(&format!("/api/v1/alerts/{id}/history"))
        .await
        .problem(404);
}

fn id_of(event: &stream_support::SseEvent) -> serde_json::Value {
    event.data["rule"]["id"].clone()
}

/// The rules and history tables on PostgreSQL (its own database), evaluated in-process.
#[tokio::test]
async fn alert_store_and_evaluation_on_postgres() {
    use std::sync::Arc;

    use reactor_core::engine::{Environment, Runtime, RuntimeConfig, Timestamp};
    use reactor_core::store::MemoryStore;
    use reactor_hub::alerts::Alerts;
    use reactor_hub::alerts::rule::{AlertState, RuleRequest};
    use reactor_hub::db::Database;
    use reactor_hub::metrics::{EngineMetrics, Telemetry};
    use reactor_hub::stream::LiveStream;

    let pg = api_support::PgDatabase::create().await;
    let db = Database::open(Some(&pg.url), std::path::Path::new("/nonexistent"))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let runtime = Runtime::new(
        Arc::new(MemoryStore::new()),
        reactor_core::action::builtin_registry(Default::default()),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Arc::new(Telemetry::new(
        Arc::new(EngineMetrics::new()),
        runtime.clone(),
        None,
        dir.path().to_path_buf(),
    ));
    let alerts = Alerts::new(db.clone(), telemetry, LiveStream::new(), runtime, None);
    let request: RuleRequest = serde_json::from_value(json!({
        "metric": "reactor_executions_queued",
        "comparator": "==",
        "threshold": 0
    }))
    .unwrap();
    let rule = alerts.create(request).await.unwrap();
    assert_eq!(alerts.rules().await.unwrap(), std::slice::from_ref(&rule));
    alerts.evaluate(Timestamp(1_000)).await.unwrap();
    assert_eq!(alerts.state(&rule.id), AlertState::Firing { since: 1_000 });
    let history = alerts.history(&rule.id, 10).await.unwrap().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, "firing");
    assert_eq!(history[0].value, Some(0.0));
    assert!(alerts.history("nope", 10).await.unwrap().is_none());
    assert!(alerts.delete(&rule.id).await.unwrap());
    assert!(alerts.rules().await.unwrap().is_empty());
    db.close().await;
    pg.drop_now().await;
}
