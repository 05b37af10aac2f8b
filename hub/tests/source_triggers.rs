//! Broker and database triggers through the real `reactor-hub serve`: a workflow uploaded
//! through the API starts its `redis` stream trigger (a named connection from hub.toml),
//! entries added to the stream become executions, and deleting the workflow stops the
//! trigger cleanly (later entries start nothing). The per-source guarantees are tested in
//! `hub/triggers/tests/`.

mod api_support;

use std::time::{Duration, Instant};

use api_support::{Hub, Place};
use serde_json::Value;

const REDIS: &str = "redis://127.0.0.1:6379";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the Redis server on 127.0.0.1:6379")
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, stream: &str, n: usize) {
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("n")
        .arg(n.to_string())
        .query_async(conn)
        .await
        .unwrap();
}

async fn executions(hub: &Hub, workflow: &str) -> Vec<Value> {
    let reply = hub
        .get(&format!(
            "/api/v1/executions?workflow={workflow}&limit=1000"
        ))
        .await
        .expect(200);
    reply.body["executions"].as_array().unwrap().clone()
}

async fn wait_for_count(hub: &Hub, workflow: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = executions(hub, workflow).await;
        if list.len() >= count || Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_redis_workflow_runs_and_stops_when_deleted() {
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let stream = format!("reactor-test-hub-{unique}");
    let name = format!("orders-{}", &unique[..10]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, format!("[connections.cache]\nurl = \"{REDIS}\"\n")).unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place, &[("REACTOR_CONFIG", config.to_str().unwrap())]).await;

    let yaml = format!(
        "reactor: 1\nname: {name}\ntriggers:\n  - redis: {{ stream: {stream}, group: hub, connection: cache }}\n\
         steps:\n  - id: note\n    action: log\n    with:\n      message: \"order ${{{{ event.data.n }}}}\"\n\
         output:\n  n: \"${{{{ event.data.n }}}}\"\n"
    );
    hub.send_yaml("POST", "/api/v1/workflows", &yaml)
        .await
        .expect(201);

    let mut conn = redis().await;
    // The consumer group is created by the trigger from the stream's end: wait until it
    // exists before adding entries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await;
        if matches!(groups, Ok(redis::Value::Array(ref g)) if !g.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trigger never created its group\n{}",
            hub.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..5 {
        xadd(&mut conn, &stream, n).await;
    }
    let list = wait_for_count(&hub, &name, 5).await;
    assert_eq!(list.len(), 5, "{}", hub.logs());
    let mut seen: Vec<String> = Vec::new();
    for item in &list {
        let id = item["id"].as_str().unwrap();
        let execution = hub.finished(id).await;
        assert_eq!(execution["status"], "succeeded", "{execution}");
        seen.push(execution["output"]["n"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2", "3", "4"]);

    // Deleting the workflow stops its trigger: new entries start nothing.
    let admin = hub.admin.clone();
    let reply = hub
        .call(
            "DELETE",
            &format!("/api/v1/workflows/{name}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(
        reply.status == 204 || reply.status == 200,
        "{}",
        reply.status
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 5..8 {
        xadd(&mut conn, &stream, n).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(executions(&hub, &name).await.len(), 5, "{}", hub.logs());

    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A trigger whose source stays unreachable is reported unhealthy, with its last error, in
/// the workflow's API resource and in `/metrics`; a working one is healthy.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_trigger_is_unhealthy_in_the_api_and_metrics() {
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(Place::sqlite(&dir.path().join("data")), &[]).await;
    // Nothing listens on port 1.
    let broken = format!("broken-{}", &unique[..10]);
    let working = format!("working-{}", &unique[..10]);
    for (name, url) in [(&broken, "redis://127.0.0.1:1"), (&working, REDIS)] {
        let yaml = format!(
            "reactor: 1\nname: {name}\ntriggers:\n  - redis: {{ stream: reactor-health-{unique}, group: hub, url: \"{url}\" }}\n\
             steps:\n  - action: transform\n    with: {{ value: 1 }}\n"
        );
        hub.send_yaml("POST", "/api/v1/workflows", &yaml)
            .await
            .expect(201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let reply = hub
            .get(&format!("/api/v1/workflows/{broken}"))
            .await
            .expect(200);
        let status = reply.body["trigger_status"][0].clone();
        if status["healthy"] == false || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["healthy"], false, "{status}");
    assert_eq!(status["kind"], "redis", "{status}");
    assert!(status["failing"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["errors"].as_u64().unwrap() >= 3, "{status}");
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("redis"), "{message}");
    assert!(status["last_error"]["at"].is_string(), "{status}");

    let reply = hub
        .get(&format!("/api/v1/workflows/{working}"))
        .await
        .expect(200);
    let ok = &reply.body["trigger_status"][0];
    assert_eq!(ok["healthy"], true, "{ok}");
    assert_eq!(ok["failing"], 0, "{ok}");

    let metrics = hub.get("/metrics").await.text;
    let line = |family: &str, workflow: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{family}{{"))
                    && l.contains(&format!("workflow=\"{workflow}\""))
            })
            .unwrap_or_else(|| panic!("no {family} for {workflow} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(line("reactor_trigger_healthy", &broken), 0.0);
    assert_eq!(line("reactor_trigger_healthy", &working), 1.0);
    assert!(line("reactor_trigger_errors_total", &broken) >= 3.0);
    assert!(line("reactor_trigger_last_error_timestamp_seconds", &broken) > 1.7e9);
    assert_eq!(line("reactor_trigger_source_lag", &working), 0.0);

    let mut conn = redis().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("reactor-health-{unique}"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
