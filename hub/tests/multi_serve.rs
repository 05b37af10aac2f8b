//! Two real `reactor-hub serve` processes on one PostgreSQL database: a per-second cron
//! workflow and a stream of `POST /run`; the leader is SIGKILLed mid-load. Every execution
//! completes exactly once (each finished step ran once, an in-flight one at most once more,
//! on the survivor), and each cron tick (its scheduled time) fired exactly once across both.
//! A cancel sent to the hub that does not run an execution reaches the one that does — and
//! the adopter, when the owner died.

mod api_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_support::{Hub, PgDatabase, Place, client, create_token};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use reactor_hub::db::{Database, SqlStore};
use serde_json::{Value, json};

/// Idempotency key → the hubs that performed the call, in order.
type Calls = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// The outside service the workflow calls: records who called with which idempotency key.
async fn counter() -> (u16, Calls) {
    let calls: Calls = Arc::default();
    let app = axum::Router::new()
        .route(
            "/call",
            axum::routing::post(
                |State(calls): State<Calls>,
                 Query(query): Query<HashMap<String, String>>,
                 headers: HeaderMap| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_string();
                    let hub = query.get("hub").cloned().unwrap_or_default();
                    calls.lock().unwrap().entry(key).or_default().push(hub);
                    axum::Json(json!({ "ok": true }))
                },
            ),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, calls)
}

fn work(port: u16) -> String {
    format!(
        r#"
reactor: 1
name: work
steps:
  - id: first
    action: http
    with: {{ method: POST, url: "http://127.0.0.1:{port}/call?hub=${{{{ env.HUB_NAME }}}}", json: {{ n: 1 }} }}
  - id: nap
    sleep: 1s
  - id: second
    action: http
    with: {{ method: POST, url: "http://127.0.0.1:{port}/call?hub=${{{{ env.HUB_NAME }}}}", json: {{ n: 2 }} }}
"#
    )
}

const TICK: &str = r#"
reactor: 1
name: tick
triggers:
  - cron: "* * * * * *"
steps:
  - id: seen
    action: transform
    with: { value: "${{ event.data.scheduled }}" }
output:
  scheduled: ${{ event.data.scheduled }}
  catch_up: ${{ event.meta.catch_up }}
"#;

/// Every hub of one database must share the secrets key (secrets and the fleet's signing key
/// are sealed with it): 32 bytes, base64.
const SHARED_SECRET_KEY: &str = "bXVsdGktaHViLXRlc3Qta2V5LTMyLWJ5dGVzLWxvbmc=";

fn env(name: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("HUB_NAME", name),
        ("REACTOR_SECRET_KEY", SHARED_SECRET_KEY),
        // The counting service is on loopback, which the hub's http action refuses unless
        // allow-listed.
        ("REACTOR_HTTP__ALLOW", "[\"127.0.0.1\"]"),
        ("REACTOR_ENV__ALLOW", "[\"HUB_NAME\"]"),
        ("RUST_LOG", "info"),
    ]
}

/// Every execution of `workflow`, through the API (all pages).
async fn executions(hub: &Hub, workflow: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/executions?workflow={workflow}&limit=500");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = hub.get(&path).await.expect(200);
        all.extend(page.body["executions"].as_array().unwrap().iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return all,
        }
    }
}

fn kill_9(hub: &mut Hub) {
    let pid = hub.pid();
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hubs_share_the_work_and_survive_a_kill_9() {
    let database = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = |name: &str| Place {
        data: dir.path().join(name),
        database: Some(database.url.clone()),
    };
    let (port, calls) = counter().await;

    let mut a = Hub::start(place("a"), &env("a")).await;
    // The same database: a token made through either works on both.
    let admin = a.admin.clone();
    let b = Hub::spawn(place("b"), admin.clone(), &env("b"));
    b.healthy(Duration::from_secs(30)).await;
    let editor = create_token(&place("b"), "editor");

    // A started first and leads: the cron runs there. Workflows deployed on A reach B.
    a.send_yaml("POST", "/api/v1/workflows", &work(port))
        .await
        .expect(201);
    a.send_yaml("POST", "/api/v1/workflows", TICK)
        .await
        .expect(201);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = b
            .call(
                "POST",
                "/api/v1/workflows/work/run",
                Some(&editor),
                Some(api_support::Body::Json(json!({ "warmup": true }))),
            )
            .await;
        if reply.status == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never got the workflow: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.logs().contains("singleton trigger started"),
        "A leads: {}",
        a.logs()
    );
    assert!(!b.logs().contains("singleton trigger started"));

    // A stream of runs on both, A killed in the middle of it.
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut killed = false;
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        if !killed && started.elapsed() > Duration::from_secs(4) {
            kill_9(&mut a);
            killed = true;
        }
        n += 1;
        let target = if n.is_multiple_of(2) && !killed {
            &a
        } else {
            &b
        };
        let sent = client()
            .post(target.url("/api/v1/workflows/work/run"))
            .bearer_auth(&editor)
            .json(&json!({ "n": n }))
            .send()
            .await;
        if let Ok(response) = sent
            && response.status() == 202
        {
            let body: Value = response.json().await.unwrap();
            accepted.push(body["execution"].as_str().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(killed);
    // B took over the cron.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.logs().contains("singleton trigger started") {
        assert!(Instant::now() < deadline, "B never led: {}", b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.call("DELETE", "/api/v1/workflows/tick", Some(&admin), None)
        .await
        .expect(204);

    // Every execution in the database completes — A's after its lease lapses, on B.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (runs, ticks) = loop {
        let runs = executions(&b, "work").await;
        let ticks = executions(&b, "tick").await;
        let unfinished = runs
            .iter()
            .chain(&ticks)
            .filter(|e| matches!(e["status"].as_str(), Some("running" | "queued")))
            .count();
        if unfinished == 0 {
            break (runs, ticks);
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} executions never finished; B's log:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        b.logs().contains("adopted unfinished executions"),
        "B adopted A's executions; runs {:?}; B's log:\n{}",
        runs.iter()
            .map(|e| format!("{}:{}", e["status"], e["id"]))
            .collect::<Vec<_>>(),
        b.logs()
    );
    for execution in runs.iter().chain(&ticks) {
        assert_eq!(execution["status"], "succeeded", "{execution}");
    }
    let ids: Vec<&str> = runs.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for id in &accepted {
        assert!(ids.contains(&id.as_str()), "accepted {id} is missing");
    }
    assert!(accepted.len() > 50, "only {} runs accepted", accepted.len());

    // Exactly once: the journal holds one end per effect, and the service saw each step's
    // key once — twice only for a step A had in flight when it died (A, then B).
    let db = Database::open(Some(&database.url), dir.path())
        .await
        .unwrap();
    let store = SqlStore::new(db.clone(), "multi-serve-reader");
    for id in &ids {
        let id = id.parse().unwrap();
        let journal = reactor_core::store::Store::journal(&store, id)
            .await
            .unwrap();
        let mut ends: BTreeMap<String, usize> = BTreeMap::new();
        for fact in &journal {
            if let reactor_core::engine::Fact::EffectFinished { key, .. } = fact {
                *ends.entry(key.clone()).or_default() += 1;
            }
        }
        assert!(ends.values().all(|n| *n == 1), "{id}: {ends:?}");
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        2 * ids.len(),
        "every step of every run called the service"
    );
    let mut repeated = 0;
    for (key, hubs) in &calls {
        match hubs.as_slice() {
            [_] => {}
            [first, second] if first == "a" && second == "b" => repeated += 1,
            other => panic!("{key} was performed {other:?}"),
        }
    }
    eprintln!(
        "{} runs ({} accepted), {} cron ticks, {repeated} in-flight steps re-run by B",
        ids.len(),
        accepted.len(),
        ticks.len()
    );

    // Each cron tick fired once across both hubs.
    let mut scheduled: BTreeMap<String, usize> = BTreeMap::new();
    for tick in &ticks {
        let id = tick["id"].as_str().unwrap();
        let detail = b.get(&format!("/api/v1/executions/{id}")).await.expect(200);
        let at = detail.body["output"]["scheduled"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", detail.text))
            .to_string();
        *scheduled.entry(at).or_default() += 1;
    }
    let twice: Vec<_> = scheduled.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks fired twice: {twice:?}");
    assert!(ticks.len() >= 8, "only {} ticks", ticks.len());
    drop(b);
    db.close().await;
    database.drop_now().await;
}

const SLOW: &str = r#"
reactor: 1
name: slow
steps:
  - id: nap
    sleep: 120s
  - id: after
    action: transform
    with: { value: 1 }
"#;

/// Polls `id` through `hub` until it is `status`.
async fn until_status(hub: &Hub, id: &str, status: &str, within: Duration, other: &Hub) {
    let deadline = Instant::now() + within;
    loop {
        let reply = hub.get(&format!("/api/v1/executions/{id}")).await;
        if reply.status == 200 && reply.body["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {}\nthis hub:\n{}\nthe other:\n{}",
            reply.text,
            hub.logs(),
            other.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_the_hub_that_runs_the_execution() {
    let database = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = |name: &str| Place {
        data: dir.path().join(name),
        database: Some(database.url.clone()),
    };
    let mut a = Hub::start(place("a"), &env("a")).await;
    let b = Hub::spawn(place("b"), a.admin.clone(), &env("b"));
    b.healthy(Duration::from_secs(30)).await;
    a.send_yaml("POST", "/api/v1/workflows", SLOW)
        .await
        .expect(201);
    let run_on_a = || async {
        let reply = a
            .post_json("/api/v1/workflows/slow/run", json!({}))
            .await
            .expect(202);
        reply.body["execution"].as_str().unwrap().to_string()
    };

    // A runs it; B is asked to cancel: B records the request, A delivers it.
    let first = run_on_a().await;
    until_status(&b, &first, "running", Duration::from_secs(10), &a).await;
    let reply = b
        .post_json(&format!("/api/v1/executions/{first}/cancel"), json!({}))
        .await
        .expect(202);
    assert_eq!(reply.body["status"], "cancelling");
    until_status(&b, &first, "cancelled", Duration::from_secs(10), &a).await;
    assert!(
        a.logs()
            .contains("delivered cancels recorded by other hubs"),
        "A took the cancel: {}",
        a.logs()
    );
    // Finished now: a second cancel is a conflict, on either hub; an unknown id is 404.
    b.post_json(&format!("/api/v1/executions/{first}/cancel"), json!({}))
        .await
        .problem(409);
    a.post_json(&format!("/api/v1/executions/{first}/cancel"), json!({}))
        .await
        .problem(409);
    b.post_json(
        "/api/v1/executions/01JAAAAAAAAAAAAAAAAAAAAAAA/cancel",
        json!({}),
    )
    .await
    .problem(404);

    // A dies with an execution asleep: the cancel sent to B waits for B to adopt it.
    let second = run_on_a().await;
    until_status(&b, &second, "running", Duration::from_secs(10), &a).await;
    kill_9(&mut a);
    b.post_json(&format!("/api/v1/executions/{second}/cancel"), json!({}))
        .await
        .expect(202);
    until_status(&b, &second, "cancelled", Duration::from_secs(60), &a).await;
    let detail = b
        .get(&format!("/api/v1/executions/{second}"))
        .await
        .expect(200);
    assert!(
        detail.body["steps"]["after"]["status"] != "succeeded",
        "the step after the sleep never ran: {}",
        detail.text
    );
    drop(b);
    drop(a);
    database.drop_now().await;
}
