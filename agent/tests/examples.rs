//! The example workflows in `workflows/`: every one validates, matches the JSON Schema
//! `reactor-agent schema` prints, and runs with `reactor-agent exec` against local HTTP
//! servers that behave like the services the examples talk to (flaky, slow, polling …).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_reactor-agent");

fn workflows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows")
}

fn example(name: &str) -> String {
    workflows_dir()
        .join(format!("{name}.yaml"))
        .display()
        .to_string()
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workflows_dir())
        .expect("workflows/ exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        })
        .collect();
    files.sort();
    files
}

// ---- a scriptable HTTP server ------------------------------------------------------------

/// One request the server received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// What the server answers, after `delay`.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    delay: Duration,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        delay: Duration::ZERO,
    }
}

fn status(status: u16) -> Reply {
    Reply {
        status,
        body: json!({"error": status}),
        delay: Duration::ZERO,
    }
}

impl Reply {
    fn after(mut self, millis: u64) -> Reply {
        self.delay = Duration::from_millis(millis);
        self
    }
}

/// Decides the reply from the request and how many requests with the same method and path
/// came before it.
type Routes = dyn Fn(&Request, usize) -> Reply + Send + Sync;

struct Shared {
    routes: Box<Routes>,
    log: Mutex<Vec<Request>>,
}

struct Server {
    base: String,
    shared: Arc<Shared>,
}

impl Server {
    async fn start(routes: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Server {
        let shared = Arc::new(Shared {
            routes: Box::new(routes),
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            base: format!("http://{addr}"),
            shared,
        }
    }

    fn requests(&self, method: &str, path: &str) -> Vec<Request> {
        let log = self.shared.log.lock().expect("log lock");
        log.iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    fn count(&self) -> usize {
        self.shared.log.lock().expect("log lock").len()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Request {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let reply = {
        let mut log = shared.log.lock().expect("log lock");
        let before = log
            .iter()
            .filter(|r| r.method == request.method && r.path == request.path)
            .count();
        log.push(request.clone());
        (shared.routes)(&request, before)
    };
    tokio::time::sleep(reply.delay).await;
    let code = StatusCode::from_u16(reply.status).expect("a valid status");
    (code, axum::Json(reply.body)).into_response()
}

// ---- running the binary ------------------------------------------------------------------

struct Run {
    code: i32,
    json: Value,
    elapsed: Duration,
}

async fn exec(file: &str, args: &[&str]) -> Run {
    let started = Instant::now();
    let output = tokio::process::Command::new(BIN)
        .arg("exec")
        .arg(file)
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("REACTOR_EVENT")
        .env_remove("REACTOR_INPUT")
        .env_remove("REACTOR_ALLOW_EXEC")
        .output()
        .await
        .expect("reactor-agent runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "exec printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Run {
        code: output.status.code().expect("exited normally"),
        json,
        elapsed: started.elapsed(),
    }
}

fn input(value: Value) -> String {
    value.to_string()
}

fn step<'a>(run: &'a Run, id: &str) -> &'a Value {
    &run.json["steps"][id]
}

// ---- every example validates -------------------------------------------------------------

#[test]
fn there_are_at_least_twelve_examples() {
    assert!(example_files().len() >= 12, "{:?}", example_files());
}

#[test]
fn every_example_validates_with_the_real_binary() {
    let output = std::process::Command::new(BIN)
        .arg("validate")
        .arg(workflows_dir())
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(output.stdout.is_empty());
    for file in example_files() {
        let output = std::process::Command::new(BIN)
            .arg("validate")
            .arg(&file)
            .output()
            .expect("runs");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn every_example_is_named_after_its_file() {
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        let stem = file.file_stem().and_then(|s| s.to_str()).expect("a name");
        assert!(
            text.lines().any(|l| l == format!("name: {stem}")),
            "{} is not named {stem}",
            file.display()
        );
        assert!(
            text.starts_with('#'),
            "{} opens with a comment saying what it shows",
            file.display()
        );
    }
}

#[test]
fn the_schema_is_valid_and_every_example_matches_it() {
    let output = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&output.stdout).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("the schema is not a valid draft 2020-12 schema: {error}");
    }
    let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        let document = reactor_core::dsl::yaml::parse(&text, Default::default())
            .expect("YAML")
            .to_value();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            file.display(),
            errors.join("\n")
        );
    }
    // And the schema is not vacuous: a broken document fails it.
    let broken = json!({"reactor": 1, "name": "x", "steps": [{"action": "log", "retyr": {}}]});
    assert!(!validator.is_valid(&broken));
}

// ---- running the examples ----------------------------------------------------------------

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

fn mirror_inputs(server: &Server) -> String {
    input(json!({
        "primary": format!("{}/mirror/a", server.base),
        "secondary": format!("{}/mirror/b", server.base),
        "tertiary": format!("{}/mirror/c", server.base),
    }))
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

#[tokio::test]
async fn change_approval_times_out_into_its_catch() {
    let inputs =
        input(json!({"request": "req-42", "requester": "ana", "approval_timeout": "300ms"}));
    let run = exec(&example("change-approval"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["status"], "succeeded");
    assert_eq!(
        run.json["output"],
        json!({"request": "req-42", "approved": false, "escalated": true})
    );
    assert_eq!(step(&run, "announce")["status"], "succeeded");
    assert_eq!(step(&run, "decision")["status"], "failed");
    assert_eq!(step(&run, "escalate")["status"], "succeeded");
    assert_eq!(step(&run, "record")["status"], "skipped");
    assert!(
        run.elapsed >= Duration::from_millis(300),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test]
async fn order_intake_calls_its_sub_workflows() {
    let event = json!({"order": "o-17", "lines": [{"sku": "a", "qty": 2, "price": 10}, {"sku": "b", "qty": 1, "price": 5}]});
    let run = exec(&example("order-intake"), &["--event", &event.to_string()]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"order": "o-17", "total": 30.0, "tax": 5.0})
    );
    assert_eq!(
        step(&run, "invoice")["output"],
        json!({"net": 25, "tax": 5.0, "total": 30.0})
    );
    assert_eq!(step(&run, "audit")["status"], "succeeded");
    assert!(
        step(&run, "audit")["output"]["execution"].is_string(),
        "wait: false gives the child's id: {}",
        run.json
    );

    // The called workflow runs on its own too; its required input is checked.
    let run = exec(
        &example("compute-invoice"),
        &[
            "--input",
            r#"{"lines":[{"qty":3,"price":2}],"tax_rate":0.5}"#,
        ],
    )
    .await;
    assert_eq!(
        run.json["output"],
        json!({"net": 6, "tax": 3.0, "total": 9.0})
    );
    let run = exec(&example("compute-invoice"), &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lines"),
        "{}",
        run.json
    );
    let run = exec(
        &example("audit-trail"),
        &["--input", r#"{"kind":"manual","reference":"r-1"}"#],
    )
    .await;
    assert_eq!(
        run.json["output"],
        json!({"kind": "manual", "reference": "r-1"})
    );
}

#[tokio::test]
async fn health_check_classifies_the_service() {
    for (answer, health, announced) in [
        (200, "up", false),
        (503, "degraded", true),
        (500, "down", true),
    ] {
        let server = Server::start(move |_, _| status(answer)).await;
        let inputs =
            input(json!({"url": format!("{}/healthz", server.base), "service": "billing"}));
        let run = exec(&example("service-health-check"), &["--input", &inputs]).await;
        assert_eq!(run.code, 0, "{}", run.json);
        assert_eq!(
            run.json["output"],
            json!({"service": "billing", "health": health, "announced": announced}),
            "status {answer}"
        );
        assert_eq!(step(&run, "probe")["output"]["status"], answer);
        assert_eq!(step(&run, "classify")["status"], "succeeded");
    }
    // Nobody listening: the probe fails, its catch marks the service down.
    let inputs = input(json!({"url": "http://127.0.0.1:9/healthz"}));
    let run = exec(&example("service-health-check"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["health"], "down");
    assert_eq!(step(&run, "probe")["status"], "failed");
    assert_eq!(step(&run, "classify")["status"], "skipped");
}

#[tokio::test]
async fn log_rotation_archives_and_truncates_the_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.log"), "line 1\nline 2\n").unwrap();
    let inputs = input(json!({"dir": dir.path().display().to_string()}));
    let run = exec(&example("log-rotation"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["rotated"], true);
    assert_eq!(run.json["output"]["bytes"], 14);
    let archive = run.json["output"]["archive"]
        .as_str()
        .expect("archive path")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(&archive).unwrap(),
        "line 1\nline 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("app.log")).unwrap(),
        ""
    );
    let journal = std::fs::read_to_string(dir.path().join("rotations.txt")).unwrap();
    assert!(
        journal.ends_with(&format!("app.log -> {archive} (14 bytes)\n")),
        "{journal}"
    );

    // Second run: nothing new, the guard returns early.
    let run = exec(&example("log-rotation"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.json["output"], json!({"rotated": false, "bytes": 0}));
    assert!(run.json["steps"].get("archive").is_none(), "{}", run.json);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rotations.txt"))
            .unwrap()
            .lines()
            .count(),
        1
    );

    // No log at all: file.read fails.
    let empty = tempfile::tempdir().unwrap();
    let run = exec(
        &example("log-rotation"),
        &[
            "--input",
            &input(json!({"dir": empty.path().display().to_string()})),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json["error"]["step"], "current");
}

fn job_server(
    polls_until_done: usize,
) -> impl Fn(&Request, usize) -> Reply + Send + Sync + 'static {
    move |request, before| match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/jobs") => ok(json!({"id": "job-9"})),
        ("GET", "/jobs/job-9") if before + 1 >= polls_until_done => {
            ok(json!({"state": "done", "result": {"rows": 1234}}))
        }
        ("GET", "/jobs/job-9") => ok(json!({"state": "running"})),
        _ => status(404),
    }
}

#[tokio::test]
async fn job_poll_loops_until_the_job_is_done() {
    let server = Server::start(job_server(3)).await;
    let inputs = input(json!({"api": server.base, "poll_every": "20ms"}));
    let run = exec(&example("job-poll"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"job": "job-9", "state": "done", "result": {"rows": 1234}})
    );
    assert_eq!(server.requests("GET", "/jobs/job-9").len(), 3);
    assert_eq!(
        server.requests("POST", "/jobs")[0].body,
        json!({"report": "daily-usage"})
    );
    assert_eq!(step(&run, "wait_done")["status"], "succeeded");
}

#[tokio::test]
async fn job_poll_fails_when_the_job_outlasts_max() {
    let server = Server::start(job_server(usize::MAX)).await;
    let inputs = input(json!({"api": server.base, "poll_every": "10ms"}));
    let run = exec(&example("job-poll"), &["--input", &inputs]).await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(run.json["error"]["step"], "wait_done");
    assert_eq!(
        server.requests("GET", "/jobs/job-9").len(),
        20,
        "max: 20 polls"
    );
}

#[tokio::test]
async fn nightly_export_notifies_on_failure() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/archive" => status(500),
        _ => ok(json!({"ok": true})),
    })
    .await;
    let inputs =
        input(json!({"api": server.base, "notify": format!("{}/hooks/notify", server.base)}));
    let run = exec(&example("nightly-export"), &["--input", &inputs]).await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(run.json["error"]["step"], "export");
    assert_eq!(step(&run, "export")["attempts"], 2);
    assert_eq!(server.requests("POST", "/archive").len(), 2);
    let notes = server.requests("POST", "/hooks/notify");
    assert_eq!(notes.len(), 1, "on_failure ran once");
    assert_eq!(notes[0].body["step"], "export");
    assert!(
        notes[0].body["text"]
            .as_str()
            .unwrap()
            .starts_with("nightly-export failed at step export: "),
        "{}",
        notes[0].body
    );

    // Success: no notification.
    let server = Server::start(|request, _| match request.path.as_str() {
        "/archive" => ok(json!({"id": "arc-1"})),
        _ => ok(json!({})),
    })
    .await;
    let inputs =
        input(json!({"api": server.base, "notify": format!("{}/hooks/notify", server.base)}));
    let run = exec(&example("nightly-export"), &["--input", &inputs]).await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"], json!({"archived": "arc-1"}));
    assert!(server.requests("POST", "/hooks/notify").is_empty());
    assert_eq!(server.requests("POST", "/archive")[0].body["kwh"], 12.5);
}

#[tokio::test]
async fn firmware_rollout_verifies_the_flashed_image() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/devices/dev-1/flash" => ok(json!({"accepted": true})),
        "/devices/dev-1/version" => ok(json!({"image": "fw-2.0"})),
        _ => status(404),
    })
    .await;
    let inputs = input(json!({"api": server.base}));
    let run = exec(
        &example("firmware-rollout"),
        &[
            "--event",
            r#"{"device":"dev-1","image":"fw-2.0"}"#,
            "--input",
            &inputs,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"device": "dev-1", "image": "fw-2.0"})
    );
    assert_eq!(
        server.requests("POST", "/devices/dev-1/flash")[0].body,
        json!({"image": "fw-2.0"})
    );

    let run = exec(
        &example("firmware-rollout"),
        &[
            "--event",
            r#"{"device":"dev-1","image":"fw-3.0"}"#,
            "--input",
            &inputs,
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.json);
    assert_eq!(
        run.json["error"]["message"],
        "device dev-1 reports fw-2.0 after flashing fw-3.0"
    );
}

#[tokio::test]
async fn door_guard_returns_early_for_allowed_badges() {
    let run = exec(
        &example("door-access-guard"),
        &["--event", r#"{"badge":"b-101","door":"north"}"#],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"badge": "b-101", "door": "north", "access": "granted"})
    );
    assert_eq!(
        keys(&run.json["steps"]),
        ["guard"],
        "nothing after the return ran"
    );

    let run = exec(
        &example("door-access-guard"),
        &["--event", r#"{"badge":"b-666","door":"north"}"#],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(run.json["output"]["access"], "denied");
    assert_eq!(step(&run, "guard")["status"], "skipped");
    assert_eq!(step(&run, "audit")["status"], "succeeded");
    assert_eq!(step(&run, "alert")["status"], "succeeded");
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn disk_usage_runs_df_only_when_allowed() {
    let run = exec(
        &example("disk-usage"),
        &[
            "--allow-exec",
            "--input",
            r#"{"path":"/","limit_percent":101}"#,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    let percent = run.json["output"]["percent"]
        .as_i64()
        .expect("an integer percent");
    assert!((0..=100).contains(&percent), "{}", run.json);
    assert_eq!(run.json["output"]["over_limit"], false);
    assert_eq!(step(&run, "warn")["status"], "skipped");

    let run = exec(
        &example("disk-usage"),
        &[
            "--allow-exec",
            "--input",
            r#"{"path":"/","limit_percent":0}"#,
        ],
    )
    .await;
    assert_eq!(run.json["output"]["over_limit"], true);
    assert_eq!(step(&run, "warn")["status"], "succeeded");

    let run = exec(&example("disk-usage"), &[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json["error"]["step"], "df");
    assert!(
        run.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
}

#[tokio::test]
async fn github_webhook_deploys_only_the_main_branch() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/deploys" => ok(json!({"id": "dep-5"})),
        _ => status(404),
    })
    .await;
    let inputs = input(json!({"deploy_api": server.base}));
    let push = json!({"ref": "refs/heads/main", "after": "abc123", "repository": {"full_name": "acme/reactor"}});
    let run = exec(
        &example("github-push-webhook"),
        &["--event", &push.to_string(), "--input", &inputs],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.json);
    assert_eq!(
        run.json["output"],
        json!({"deployed": true, "branch": "main", "deploy": "dep-5"})
    );
    let deploys = server.requests("POST", "/deploys");
    assert_eq!(
        deploys[0].body,
        json!({"repository": "acme/reactor", "commit": "abc123"})
    );
    assert!(deploys[0].headers.contains_key("idempotency-key"));

    let push = json!({"ref": "refs/heads/feature/x", "after": "def456", "repository": {"full_name": "acme/reactor"}});
    let run = exec(
        &example("github-push-webhook"),
        &["--event", &push.to_string(), "--input", &inputs],
    )
    .await;
    assert_eq!(run.code, 0);
    assert_eq!(
        run.json["output"],
        json!({"deployed": false, "branch": "feature/x", "reason": "not the deploy branch"})
    );
    assert_eq!(server.requests("POST", "/deploys").len(), 1);
}
