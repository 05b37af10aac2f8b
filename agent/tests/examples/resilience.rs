//! Examples built on retries, races, quorums and batches, against flaky or slow services.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, example, exec, input, mirror_inputs, ok, status, step};

#[tokio::test]
async fn sensor_alert_posts_hot_readings_with_retries_and_an_idempotency_key() {
    // The webhook fails twice with 503 before it accepts.
    let server = Server::start(|_, before| {
        if before < 2 {
            status(503)
        } else {
            ok(json!({"ok": true}))
        }
    })
    .await;
    let webhook = format!("{}/hooks/alert", server.base);
    let inputs = input(json!({"webhook": webhook}));
    let run = exec(
        &example("sensor-overheat-alert"),
        &[
            "--event",
            r#"{"device":"pump-7","temp":31.5}"#,
            "--input",
            &inputs,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"device": "pump-7", "temp": 31.5, "notified": true})
    );
    assert_eq!(step(&run, "notify")["attempts"], 3);
    assert_eq!(step(&run, "notify")["output"]["status"], 200);
    let posts = server.requests("POST", "/hooks/alert");
    assert_eq!(posts.len(), 3);
    assert_eq!(
        posts[2].body["text"],
        "Sensor pump-7 at 31.5°C (threshold 30°C)"
    );
    let keys: Vec<&str> = posts
        .iter()
        .map(|p| {
            p.headers
                .get("idempotency-key")
                .map(String::as_str)
                .unwrap_or("")
        })
        .collect();
    assert!(
        keys.iter().all(|k| !k.is_empty()),
        "every attempt carries an Idempotency-Key: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "retries of one step share their key: {keys:?}"
    );

    // A cool reading and a device in maintenance are skipped: no execution, no request.
    for event in [
        r#"{"device":"pump-7","temp":22}"#,
        r#"{"device":"pump-7","temp":45,"maintenance":true}"#,
    ] {
        let run = exec(
            &example("sensor-overheat-alert"),
            &["--event", event, "--input", &inputs],
        )
        .await;
        assert_eq!(run.code, 0);
        assert_eq!(
            run.json,
            json!({"status": "skipped", "output": null, "error": null, "steps": {}})
        );
    }
    // The threshold is an input.
    let inputs = input(json!({"webhook": webhook, "threshold": 20}));
    let run = exec(
        &example("sensor-overheat-alert"),
        &[
            "--event",
            r#"{"device":"fan-1","temp":22}"#,
            "--input",
            &inputs,
        ],
    )
    .await;
    assert_eq!(run.json["status"], "succeeded");
    assert_eq!(server.requests("POST", "/hooks/alert").len(), 4);
}

#[tokio::test]
async fn flaky_api_is_retried_with_backoff_until_it_answers() {
    let server = Server::start(|request, before| match before {
        0 => status(503),
        1 => status(429),
        2 => status(502),
        _ => ok(json!({"cents": 31, "query": request.query})),
    })
    .await;
    let run = exec(
        &example("flaky-api-retry"),
        &["--input", &input(json!({"api": server.base}))],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(step(&run, "fetch")["attempts"], 4);
    assert_eq!(
        step(&run, "fetch")["output"]["body"]["query"],
        "region=eu-west"
    );
    assert_eq!(
        run.json["output"],
        json!({"region": "eu-west", "cents_per_kwh": 31, "attempts": 4})
    );
    // Exponential backoff without jitter: 100 + 200 + 400 ms of waiting at least.
    assert!(
        run.elapsed >= Duration::from_millis(700),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn flaky_api_does_not_retry_a_client_error() {
    let server = Server::start(|_, _| status(404)).await;
    let run = exec(
        &example("flaky-api-retry"),
        &["--input", &input(json!({"api": server.base}))],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(run.json["status"], "failed");
    assert_eq!(run.json["error"]["step"], "fetch");
    assert_eq!(step(&run, "fetch")["status"], "failed");
    assert_eq!(step(&run, "fetch")["attempts"], 1, "retry.if refuses 404");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn flaky_api_gives_up_after_its_attempts() {
    let server = Server::start(|_, _| status(500)).await;
    let run = exec(
        &example("flaky-api-retry"),
        &["--input", &input(json!({"api": server.base}))],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(step(&run, "fetch")["attempts"], 6);
    assert_eq!(server.count(), 6);
    assert!(
        run.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{}",
        run.json
    );
}

#[tokio::test]
async fn mirror_race_takes_the_fastest_mirror_and_cancels_the_rest() {
    let server = Server::start(|request, _| {
        let manifest = |mirror: &str| json!({"version": "2.4.1", "mirror": mirror});
        match request.path.as_str() {
            "/mirror/a/manifest.json" => ok(manifest("a")).after(3000),
            "/mirror/b/manifest.json" => ok(manifest("b")).after(50),
            _ => ok(manifest("c")).after(3000),
        }
    })
    .await;
    let run = exec(
        &example("mirror-race"),
        &["--input", &mirror_inputs(&server)],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"mirror": "secondary", "manifest": {"version": "2.4.1", "mirror": "b"}})
    );
    assert_eq!(
        step(&run, "race")["output"],
        json!({"secondary": {"version": "2.4.1", "mirror": "b"}})
    );
    assert!(
        run.elapsed < Duration::from_millis(2500),
        "the slow mirrors were not waited for: {:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn mirror_race_survives_failing_mirrors_and_fails_when_all_fail() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/mirror/c/manifest.json" => ok(json!({"version": "2.4.0"})).after(200),
        _ => status(500),
    })
    .await;
    let run = exec(
        &example("mirror-race"),
        &["--input", &mirror_inputs(&server)],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["mirror"], "tertiary");

    let server = Server::start(|_, _| status(503)).await;
    let run = exec(
        &example("mirror-race"),
        &["--input", &mirror_inputs(&server)],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(run.json["error"]["step"], "race");
    assert_eq!(step(&run, "race")["status"], "failed");
}

#[tokio::test]
async fn replicate_config_needs_both_checks_and_a_quorum_of_replicas() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/check/schema" | "/check/policy" => ok(json!({"ok": true})),
        "/replica/3" => ok(json!({})).after(3000),
        _ => ok(json!({})).after(50),
    })
    .await;
    let event = r#"{"key":"sampling_rate","value":10}"#;
    let run = exec(
        &example("replicate-config"),
        &[
            "--event",
            event,
            "--input",
            &input(json!({"api": server.base})),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"checks": {"schema": true, "policy": true}, "acknowledged": 2})
    );
    assert_eq!(step(&run, "write")["output"], json!({"r1": 200, "r2": 200}));
    assert!(
        run.elapsed < Duration::from_millis(2500),
        "the slow replica was not waited for: {:?}",
        run.elapsed
    );
    let writes = server.requests("PUT", "/replica/1");
    assert_eq!(writes[0].body, json!({"key": "sampling_rate", "value": 10}));

    // One failed check fails the `join: all` step, and nothing is written.
    let server = Server::start(|request, _| match request.path.as_str() {
        "/check/policy" => status(500),
        _ => ok(json!({"ok": true})),
    })
    .await;
    let run = exec(
        &example("replicate-config"),
        &[
            "--event",
            event,
            "--input",
            &input(json!({"api": server.base})),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.json);
    // The failed step has no id: the error names it by its place inside `checks`.
    let failed = run.json["error"]["step"].as_str().unwrap_or("");
    assert!(failed.starts_with("checks"), "{}", run.json);
    assert_eq!(step(&run, "checks")["status"], "failed");
    assert!(server.requests("PUT", "/replica/1").is_empty());
}

#[tokio::test]
async fn batch_ingest_keeps_the_batch_order_however_requests_interleave() {
    // Earlier readings answer later, so completion order is the reverse of batch order.
    let server = Server::start(|request, _| {
        let position = request.body["position"].as_u64().unwrap_or(0);
        ok(json!({"id": format!("rec-{}", request.body["meter"].as_str().unwrap_or("?"))}))
            .after(300 - 40 * position)
    })
    .await;
    let readings: Vec<Value> = (1..=6)
        .map(|i| json!({"meter": format!("m{i}"), "wh": i * 500}))
        .collect();
    let event = json!({"readings": readings}).to_string();
    let run = exec(
        &example("batch-ingest"),
        &[
            "--event",
            &event,
            "--input",
            &input(json!({"api": server.base})),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"ids": ["rec-m1", "rec-m2", "rec-m3", "rec-m4", "rec-m5", "rec-m6"], "count": 6})
    );
    let posts = server.requests("POST", "/ingest");
    assert_eq!(posts.len(), 6);
    let m3 = posts
        .iter()
        .find(|p| p.body["meter"] == "m3")
        .expect("m3 posted");
    assert_eq!(m3.body, json!({"meter": "m3", "kwh": 1.5, "position": 2}));
    // Four at a time: six requests of at most 300ms take well under 6 × 100ms sequentially.
    assert!(
        run.elapsed < Duration::from_millis(1500),
        "{:?}",
        run.elapsed
    );

    let run = exec(
        &example("batch-ingest"),
        &[
            "--event",
            r#"{"readings":[]}"#,
            "--input",
            &input(json!({"api": server.base})),
        ],
    )
    .await;
    assert_eq!(run.code, 0);
    assert_eq!(run.json["status"], "skipped");
}
