//! End-to-end tests of the hub's API v1: the real `reactor-hub serve` process, on SQLite and
//! on PostgreSQL (its own database per test), driven over HTTP.

mod api_support;

use api_support::{Body, Hub, PgDatabase, Place};
use serde_json::json;

fn hello(version: u32, message: &str) -> String {
    format!(
        "reactor: 1\nname: hello\nversion: {version}\ndescription: says hello\nsteps:\n  - id: greet\n    action: transform\n    with:\n      value: \"{message} ${{{{ event.data.who }}}}\"\n  - return: ${{{{ steps.greet.output }}}}\n"
    )
}

/// Workflows: create, conflict, invalid → 422 with diagnostics, update, versions, diff,
/// delete (versions kept), and everything survives a restart.
async fn workflows_lifecycle(place: Place) {
    let mut hub = Hub::start(place.clone(), &[]).await;
    let created = hub
        .send_yaml("POST", "/api/v1/workflows", &hello(1, "hello"))
        .await
        .expect(201);
    assert_eq!(created.body["version"], 1);
    hub.send_yaml("POST", "/api/v1/workflows", &hello(1, "hello"))
        .await
        .problem(409);

    let invalid = hub
        .send_yaml(
            "POST",
            "/api/v1/workflows",
            "reactor: 1\nname: broken\nsteps:\n  - actoin: log\n",
        )
        .await
        .problem(422);
    let diagnostics = invalid.body["diagnostics"].as_array().unwrap();
    assert!(!diagnostics.is_empty(), "{}", invalid.text);
    assert_eq!(diagnostics[0]["line"], 4, "{}", invalid.text);
    assert!(diagnostics[0]["column"].as_u64().unwrap() >= 1);
    assert!(diagnostics[0]["message"].is_string());
    assert!(diagnostics[0].get("help").is_some());

    let updated = hub
        .send_yaml("PUT", "/api/v1/workflows/hello", &hello(1, "bonjour"))
        .await
        .expect(200);
    assert_eq!(updated.body["version"], 2, "{}", updated.text);
    assert_eq!(updated.body["result"], "updated");
    let same = hub
        .send_yaml("PUT", "/api/v1/workflows/hello", &hello(1, "bonjour"))
        .await
        .expect(200);
    assert_eq!(same.body["result"], "unchanged");
    hub.send_yaml("PUT", "/api/v1/workflows/other", &hello(1, "x"))
        .await
        .problem(422);

    let list = hub.get("/api/v1/workflows").await.expect(200);
    let names: Vec<&str> = list.body["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["hello"]);
    assert_eq!(list.body["workflows"][0]["version"], 2);

    let one = hub.get("/api/v1/workflows/hello").await.expect(200);
    assert!(one.body["source"].as_str().unwrap().contains("bonjour"));
    assert_eq!(one.body["description"], "says hello");
    assert!(one.body["author"].is_string());

    let versions = hub
        .get("/api/v1/workflows/hello/versions")
        .await
        .expect(200);
    assert_eq!(versions.body["versions"].as_array().unwrap().len(), 2);
    let v1 = hub
        .get("/api/v1/workflows/hello/versions/1")
        .await
        .expect(200);
    assert!(v1.body["source"].as_str().unwrap().contains("hello ${{"));
    let diff = hub
        .get("/api/v1/workflows/hello/diff?from=1&to=2")
        .await
        .expect(200);
    let unified = diff.body["unified"].as_str().unwrap();
    assert!(unified.contains("-      value: \"hello"), "{unified}");
    assert!(unified.contains("+      value: \"bonjour"), "{unified}");
    hub.get("/api/v1/workflows/hello/versions/9")
        .await
        .problem(404);

    // Runs use the newest version.
    let run = hub
        .post_json("/api/v1/workflows/hello/run", json!({ "who": "Ada" }))
        .await
        .expect(202);
    let execution = hub.finished(run.body["execution"].as_str().unwrap()).await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(execution["output"], "bonjour Ada");
    assert_eq!(execution["version"], 2);

    // Restart: stored workflows are loaded again.
    assert!(hub.terminate().success(), "{}", hub.logs());
    let admin = hub.admin.clone();
    let hub = Hub::spawn(place.clone(), admin, &[]);
    hub.healthy(std::time::Duration::from_secs(30)).await;
    let run = hub
        .post_json("/api/v1/workflows/hello/run", json!({ "who": "Bob" }))
        .await
        .expect(202);
    let execution = hub.finished(run.body["execution"].as_str().unwrap()).await;
    assert_eq!(execution["output"], "bonjour Bob", "{execution}");

    hub.call("DELETE", "/api/v1/workflows/hello", Some(&hub.admin), None)
        .await
        .expect(204);
    hub.get("/api/v1/workflows/hello").await.problem(404);
    hub.post_json("/api/v1/workflows/hello/run", json!({}))
        .await
        .problem(404);
    // Versions outlive the deletion; re-creating continues the numbering.
    let versions = hub
        .get("/api/v1/workflows/hello/versions")
        .await
        .expect(200);
    assert_eq!(versions.body["active"], false);
    let again = hub
        .send_yaml("POST", "/api/v1/workflows", &hello(1, "hi"))
        .await
        .expect(201);
    assert_eq!(again.body["version"], 3, "{}", again.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_lifecycle_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    workflows_lifecycle(Place::sqlite(&dir.path().join("data"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_lifecycle_postgres() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = Place {
        data: dir.path().join("data"),
        database: Some(pg.url.clone()),
    };
    workflows_lifecycle(place).await;
    pg.drop_now().await;
}

/// Executions: run, get (exec's shape + trace with inputs and outputs, secrets redacted),
/// list filters, a failure, retry from the failed step, cancel, events.
async fn executions(place: Place) {
    let dir = place.data.parent().unwrap().to_path_buf();
    let counter = dir.join("counter.txt");
    let needed = dir.join("needed.txt");
    let hub = Hub::start(place, &[("REACTOR_SECRET_API_KEY", "canary-5ecret-value")]).await;
    let pipeline = format!(
        "reactor: 1\nname: pipeline\nsteps:\n  - id: count\n    action: file.write\n    with:\n      path: {counter}\n      content: \"x\"\n      append: true\n  - id: key\n    action: transform\n    with:\n      value: \"${{{{ secrets.API_KEY }}}}\"\n  - id: load\n    action: file.read\n    with:\n      path: {needed}\n  - return: ${{{{ steps.load.output.content }}}}\n",
        counter = counter.display(),
        needed = needed.display()
    );
    hub.send_yaml("POST", "/api/v1/workflows", &pipeline)
        .await
        .expect(201);

    // Fails at `load`: the file is not there yet.
    let run = hub
        .post_json("/api/v1/workflows/pipeline/run", json!({ "n": 1 }))
        .await
        .expect(202);
    let failed_id = run.body["execution"].as_str().unwrap().to_string();
    let failed = hub.finished(&failed_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["step"], "load", "{failed}");
    assert_eq!(failed["steps"]["count"]["status"], "succeeded");
    assert_eq!(failed["steps"]["count"]["attempts"], 1);
    assert!(failed["steps"]["count"]["started_at"].is_string());
    let trace = failed["trace"].as_array().unwrap();
    let count = trace.iter().find(|t| t["step"] == "count").unwrap();
    assert_eq!(count["action"], "file.write");
    assert_eq!(count["input"]["content"], "x");
    assert_eq!(count["attempts"], 1);
    assert!(count["started_at"].is_string() && count["finished_at"].is_string());
    assert!(count["output"]["bytes"].is_number(), "{count}");
    let load = trace.iter().find(|t| t["step"] == "load").unwrap();
    assert_eq!(load["status"], "failed");
    assert!(load["error"]["message"].is_string());
    let text = failed.to_string();
    assert!(
        !text.contains("canary-5ecret-value"),
        "secret leaked: {text}"
    );

    // Retry from the failed step: `count` is not performed again.
    std::fs::write(&needed, "ready").unwrap();
    let retry = hub
        .post_json(&format!("/api/v1/executions/{failed_id}/retry"), json!({}))
        .await
        .expect(202);
    assert_eq!(retry.body["from_step"], "load");
    let retried = hub
        .finished(retry.body["execution"].as_str().unwrap())
        .await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(retried["output"], "ready");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "x");
    hub.post_json(
        &format!(
            "/api/v1/executions/{}/retry",
            retry.body["execution"].as_str().unwrap()
        ),
        json!({}),
    )
    .await
    .problem(409);

    // Listing and filters.
    let all = hub
        .get("/api/v1/executions?workflow=pipeline")
        .await
        .expect(200);
    assert_eq!(all.body["executions"].as_array().unwrap().len(), 2);
    let failed_only = hub
        .get("/api/v1/executions?workflow=pipeline&status=failed")
        .await
        .expect(200);
    assert_eq!(failed_only.body["executions"][0]["id"], failed_id.as_str());
    assert_eq!(failed_only.body["executions"].as_array().unwrap().len(), 1);
    let page = hub.get("/api/v1/executions?limit=1").await.expect(200);
    let cursor = page.body["next_cursor"].as_str().unwrap().to_string();
    let next = hub
        .get(&format!("/api/v1/executions?limit=1&cursor={cursor}"))
        .await
        .expect(200);
    assert_ne!(
        next.body["executions"][0]["id"],
        page.body["executions"][0]["id"]
    );
    let future = hub
        .get("/api/v1/executions?since=2999-01-01T00:00:00Z")
        .await
        .expect(200);
    assert!(future.body["executions"].as_array().unwrap().is_empty());
    let past = hub
        .get("/api/v1/executions?until=2000-01-01T00:00:00Z")
        .await
        .expect(200);
    assert!(past.body["executions"].as_array().unwrap().is_empty());
    hub.get("/api/v1/executions?status=done").await.problem(400);
    hub.get("/api/v1/executions?since=yesterday")
        .await
        .problem(400);
    hub.get("/api/v1/executions/not-an-id").await.problem(400);
    hub.get("/api/v1/executions/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await
        .problem(404);

    // Cancel a sleeping execution.
    hub.send_yaml(
        "POST",
        "/api/v1/workflows",
        "reactor: 1\nname: sleeper\nsteps:\n  - sleep: 60s\n",
    )
    .await
    .expect(201);
    let run = hub
        .post_json("/api/v1/workflows/sleeper/run", json!({}))
        .await
        .expect(202);
    let id = run.body["execution"].as_str().unwrap().to_string();
    hub.post_json(&format!("/api/v1/executions/{id}/cancel"), json!({}))
        .await
        .expect(202);
    let cancelled = hub.finished(&id).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    hub.post_json(&format!("/api/v1/executions/{id}/cancel"), json!({}))
        .await
        .problem(409);

    // Events reach `event` triggers.
    hub.send_yaml(
        "POST",
        "/api/v1/workflows",
        "reactor: 1\nname: on-order\ntriggers:\n  - event: { type: \"order.*\" }\nsteps:\n  - return: ${{ event.data.total }}\n",
    )
    .await
    .expect(201);
    let emitted = hub
        .post_json(
            "/api/v1/events",
            json!({ "type": "order.created", "data": { "total": 42 } }),
        )
        .await
        .expect(202);
    assert_eq!(emitted.body["started"], 1, "{}", emitted.text);
    let list = hub
        .get("/api/v1/executions?workflow=on-order")
        .await
        .expect(200);
    let id = list.body["executions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = hub.finished(&id).await;
    assert_eq!(done["output"], 42);
    hub.post_json("/api/v1/events", json!({ "data": {} }))
        .await
        .problem(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn executions_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    executions(Place::sqlite(&dir.path().join("data"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn executions_postgres() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = Place {
        data: dir.path().join("data"),
        database: Some(pg.url.clone()),
    };
    executions(place).await;
    pg.drop_now().await;
}

/// Problem details everywhere, a global body limit, OpenAPI listing every route.
#[tokio::test(flavor = "multi_thread")]
async fn problems_body_limit_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(
        Place::sqlite(&dir.path().join("data")),
        &[("REACTOR_LIMITS__MAX_BODY", "2048")],
    )
    .await;
    let big = "x".repeat(4096);
    hub.call(
        "POST",
        "/api/v1/workflows",
        Some(&hub.admin),
        Some(Body::Text(big.clone())),
    )
    .await
    .problem(413);
    hub.call(
        "POST",
        "/api/v1/events",
        Some(&hub.admin),
        Some(Body::Json(json!({ "type": "t", "data": big }))),
    )
    .await
    .problem(413);
    // Unknown route and wrong method are problems too.
    hub.get("/api/v1/nothing-here").await.problem(404);
    hub.call("PATCH", "/api/v1/workflows", Some(&hub.admin), None)
        .await
        .problem(405);
    hub.post_json("/api/v1/workflows/x/run", json!({}))
        .await
        .problem(404);
    hub.call(
        "POST",
        "/api/v1/workflows",
        Some(&hub.admin),
        Some(Body::Text("\u{0}not yaml: [".into())),
    )
    .await
    .problem(422);

    let openapi = hub.get("/api/v1/openapi.json").await.expect(200);
    assert_eq!(openapi.body["openapi"], "3.1.0");
    let paths = openapi.body["paths"].as_object().unwrap();
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().unwrap() {
            if path == "/healthz" {
                continue;
            }
            assert!(operation["x-required-role"].is_string(), "{method} {path}");
            // The live stream never ends: hub/tests/stream.rs covers it.
            if path == "/api/v1/stream" {
                continue;
            }
            // Mounted: calling it with an admin token is never "no such route".
            let concrete = path
                .replace("{name}", "nope")
                .replace("{version}", "1")
                .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV");
            let reply = hub
                .call(
                    &method.to_uppercase(),
                    &concrete,
                    Some(&hub.admin),
                    Some(Body::Json(json!({}))),
                )
                .await;
            assert_ne!(
                reply.status, 405,
                "{method} {path} not mounted: {}",
                reply.text
            );
            assert_ne!(
                reply.body["detail"], "no such route; see /api/v1/openapi.json",
                "{method} {path} not mounted"
            );
        }
    }
}
