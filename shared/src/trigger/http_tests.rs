use super::*;
use crate::action::builtin_registry;
use crate::engine::RuntimeConfig;
use crate::flow::TriggerKind;
use crate::store::MemoryStore;

const ECHO: &str = r#"
reactor: 1
name: echo
triggers:
  - http: { path: /echo }
  - http: { path: /echo, method: PUT, response: async }
  - http: { path: /token, auth: token, secret: "${{ secrets.TOKEN }}" }
  - http: { path: /hmac, auth: hmac, secret: "${{ secrets.TOKEN }}" }
  - http: { path: /github, verify: github, secret: "${{ secrets.TOKEN }}" }
  - http: { path: /stripe, verify: stripe, secret: "${{ secrets.TOKEN }}" }
  - http: { path: /slack, verify: slack, secret: "${{ secrets.TOKEN }}" }
  - http: { path: /small, max_body: 8 }
  - http: { path: /unset, auth: token, secret: "${{ secrets.MISSING }}" }
if: ${{ event.data != "skip" }}
steps:
  - id: echo
    action: transform
    with: { value: "${{ event }}" }
output:
  data: ${{ event.data }}
  meta: ${{ event.meta }}
  type: ${{ event.type }}
  source: ${{ event.source }}
"#;

const FAILS: &str = r#"
reactor: 1
name: fails
triggers:
  - http: { path: /fails }
steps:
  - id: boom
    fail: { message: "it broke" }
"#;

const SLOW: &str = r#"
reactor: 1
name: slow
triggers:
  - http: { path: /slow, response: async }
steps:
  - sleep: 30s
"#;

fn routes_for(yaml: &[&str], max_running: usize) -> HttpRoutes {
    let mut environment = Environment::empty();
    environment.secrets = json!({ "TOKEN": "s3cret" });
    let runtime = Runtime::new(
        Arc::new(MemoryStore::new()),
        builtin_registry(Default::default()),
        environment,
        RuntimeConfig {
            max_running,
            ..RuntimeConfig::default()
        },
    );
    let routes = HttpRoutes::new(runtime.clone());
    for text in yaml {
        let workflow =
            crate::dsl::parse_workflow("test.yaml", text).unwrap_or_else(|d| panic!("{d:?}"));
        let triggers: Vec<HttpTrigger> = workflow
            .triggers
            .iter()
            .filter_map(|t| match &t.kind {
                TriggerKind::Http(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        routes.replace(workflow.name.as_str(), &triggers).unwrap();
        runtime.load(workflow);
    }
    routes
}

fn post(path: &str, body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: path.into(),
        query: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
        remote: Some("127.0.0.1:5000".parse().unwrap()),
    }
}

fn with(mut request: HttpRequest, name: &str, value: &str) -> HttpRequest {
    request.headers.push((name.into(), value.into()));
    request
}

#[tokio::test]
async fn sync_answers_with_the_output_and_builds_the_event() {
    let routes = routes_for(&[ECHO], 16);
    let reply = routes
        .handle(with(post("/echo", r#"{"n": 1}"#), "cookie", "x=1"))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json_body());
    let out = reply.json_body();
    assert_eq!(out["data"], json!({ "n": 1 }));
    assert_eq!(out["type"], "http");
    assert_eq!(out["source"], "reactor:http/echo");
    assert_eq!(out["meta"]["method"], "POST");
    assert_eq!(out["meta"]["path"], "/echo");
    assert_eq!(out["meta"]["query"]["a"], json!(["1", "2"]));
    assert_eq!(out["meta"]["headers"]["content-type"], "application/json");
    assert!(out["meta"]["headers"].get("cookie").is_none());
    assert_eq!(out["meta"]["remote"], "127.0.0.1:5000");
    assert!(
        reply
            .headers
            .iter()
            .any(|(n, _)| n == "x-reactor-execution")
    );
    let stats = routes.stats();
    assert!(
        stats
            .iter()
            .any(|(_, m, p, s)| m == "POST" && p == "/echo" && s.snapshot().events == 1)
    );
}

#[tokio::test]
async fn text_bodies_are_strings_and_bad_json_is_400() {
    let routes = routes_for(&[ECHO], 16);
    let mut text = post("/echo", "a=1&b=2");
    text.headers = vec![(
        "content-type".into(),
        "application/x-www-form-urlencoded".into(),
    )];
    let reply = routes.handle(text).await;
    assert_eq!(reply.json_body()["data"], "a=1&b=2");
    let reply = routes.handle(post("/echo", "{nope")).await;
    assert_eq!(reply.status, 400);
    let message = reply.json_body()["error"]["message"].clone();
    assert!(message.as_str().unwrap().starts_with("invalid JSON body"));
}

#[tokio::test]
async fn unknown_path_wrong_method_and_large_body() {
    let routes = routes_for(&[ECHO], 16);
    assert_eq!(routes.handle(post("/nope", "{}")).await.status, 404);
    let mut get = post("/echo", "");
    get.method = "GET".into();
    let reply = routes.handle(get).await;
    assert_eq!(reply.status, 405);
    assert!(
        reply
            .headers
            .contains(&("allow".to_string(), "POST, PUT".to_string()))
    );
    assert_eq!(routes.handle(post("/small", "123456789")).await.status, 413);
    assert_eq!(routes.handle(post("/small", "12345678")).await.status, 200);
    assert_eq!(routes.body_limit("POST", "/small"), Some(8));
    assert_eq!(routes.body_limit("POST", "/echo"), Some(DEFAULT_MAX_BODY));
}

#[tokio::test]
async fn async_answers_202_and_skipped_answers_200() {
    let routes = routes_for(&[ECHO], 16);
    let mut put = post("/echo", "{}");
    put.method = "PUT".into();
    let reply = routes.handle(put).await;
    assert_eq!(reply.status, 202);
    let id: crate::engine::ExecutionId = reply.json_body()["execution"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Durably recorded before the answer.
    assert!(
        routes
            .runtime
            .store()
            .execution(id)
            .await
            .unwrap()
            .is_some()
    );
    let reply = routes.handle(post("/echo", r#""skip""#)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json_body(), json!({ "status": "skipped" }));
}

#[tokio::test]
async fn failed_execution_is_500_with_message_and_step() {
    let routes = routes_for(&[FAILS], 16);
    let reply = routes.handle(post("/fails", "{}")).await;
    assert_eq!(reply.status, 500);
    let body = reply.json_body();
    assert_eq!(body["error"]["message"], "it broke");
    assert_eq!(body["error"]["step"], "boom");
}

#[tokio::test]
async fn saturated_runtime_sheds_with_503() {
    let routes = routes_for(&[SLOW, ECHO], 1);
    assert_eq!(routes.handle(post("/slow", "{}")).await.status, 202);
    let reply = routes.handle(post("/echo", "{}")).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .headers
            .contains(&("retry-after".to_string(), "1".to_string()))
    );
    let stats = routes.stats();
    let echo = stats
        .iter()
        .find(|(_, m, p, _)| m == "POST" && p == "/echo");
    assert_eq!(echo.unwrap().3.snapshot().shed, 1);
    routes.runtime.shutdown().await;
}

#[tokio::test]
async fn own_auth_is_reported_per_route() {
    let routes = routes_for(&[ECHO], 16);
    assert_eq!(routes.has_own_auth("POST", "/echo"), Some(false));
    assert_eq!(routes.has_own_auth("put", "/echo"), Some(false));
    for path in ["/token", "/hmac", "/github", "/stripe", "/slack"] {
        assert_eq!(routes.has_own_auth("POST", path), Some(true), "{path}");
    }
    assert_eq!(routes.has_own_auth("GET", "/echo"), None);
    assert_eq!(routes.has_own_auth("POST", "/nowhere"), None);
}

#[tokio::test]
async fn token_auth() {
    let routes = routes_for(&[ECHO], 16);
    let ok = [
        ("authorization", "Bearer s3cret"),
        ("x-reactor-token", "s3cret"),
    ];
    for (name, value) in ok {
        let reply = routes.handle(with(post("/token", "{}"), name, value)).await;
        assert_eq!(reply.status, 200, "{name}");
        assert!(reply.json_body()["meta"]["headers"].get(name).is_none());
    }
    let bad = [
        ("authorization", "Bearer nope"),
        ("x-reactor-token", "s3cre"),
        ("x-other", "s3cret"),
    ];
    for (name, value) in bad {
        let reply = routes.handle(with(post("/token", "{}"), name, value)).await;
        assert_eq!(reply.status, 401, "{name}");
        assert_eq!(reply.json_body()["error"]["message"], "unauthorized");
    }
    // An unresolvable secret is a server problem, not the caller's; no detail leaks.
    let reply = routes
        .handle(with(post("/unset", "{}"), "x-reactor-token", "x"))
        .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json_body()["error"]["message"], "internal error");
}

#[tokio::test]
async fn hmac_and_github_signatures() {
    let routes = routes_for(&[ECHO], 16);
    let body = r#"{"push": true}"#;
    let good = format!("sha256={}", hmac_sha256_hex(b"s3cret", &[body.as_bytes()]));
    let wrong = format!("sha256={}", hmac_sha256_hex(b"other", &[body.as_bytes()]));
    for (path, header) in [
        ("/hmac", "x-reactor-signature"),
        ("/github", "x-hub-signature-256"),
    ] {
        let reply = routes.handle(with(post(path, body), header, &good)).await;
        assert_eq!(reply.status, 200, "{path}");
        let reply = routes.handle(with(post(path, body), header, &wrong)).await;
        assert_eq!(reply.status, 401, "{path}");
        let reply = routes
            .handle(with(post(path, body), header, "sha256=zz"))
            .await;
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(routes.handle(post(path, body)).await.status, 401, "{path}");
    }
}

#[tokio::test]
async fn stripe_signatures() {
    let routes = routes_for(&[ECHO], 16);
    let body = r#"{"type": "charge.succeeded"}"#;
    let sign = |t: i64, key: &[u8]| {
        hmac_sha256_hex(key, &[t.to_string().as_bytes(), b".", body.as_bytes()])
    };
    let now = chrono::Utc::now().timestamp();
    let good = format!(
        "t={now},v1={},v1={}",
        sign(now, b"old"),
        sign(now, b"s3cret")
    );
    let reply = routes
        .handle(with(post("/stripe", body), "stripe-signature", &good))
        .await;
    assert_eq!(reply.status, 200);
    let stale = now - 600;
    let cases = [
        format!("t={stale},v1={}", sign(stale, b"s3cret")),
        format!("t={now},v1={}", sign(now, b"nope")),
        format!("v1={}", sign(now, b"s3cret")),
    ];
    for header in cases {
        let reply = routes
            .handle(with(post("/stripe", body), "stripe-signature", &header))
            .await;
        assert_eq!(reply.status, 401, "{header}");
    }
}

#[tokio::test]
async fn slack_signatures() {
    let routes = routes_for(&[ECHO], 16);
    let body = "token=x&text=hi";
    let sign = |t: &str, key: &[u8]| {
        format!(
            "v0={}",
            hmac_sha256_hex(key, &[b"v0:", t.as_bytes(), b":", body.as_bytes()])
        )
    };
    let now = chrono::Utc::now().timestamp().to_string();
    let stale = (chrono::Utc::now().timestamp() - 301).to_string();
    let request = |t: &str, sig: &str| {
        let mut r = post("/slack", body);
        r.headers = vec![
            ("x-slack-request-timestamp".into(), t.into()),
            ("x-slack-signature".into(), sig.into()),
        ];
        r
    };
    let reply = routes.handle(request(&now, &sign(&now, b"s3cret"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json_body()["data"], body);
    for (t, sig) in [
        (stale.clone(), sign(&stale, b"s3cret")),
        (now.clone(), sign(&now, b"wrong")),
        (now.clone(), sign(&stale, b"s3cret")),
    ] {
        assert_eq!(routes.handle(request(&t, &sig)).await.status, 401);
    }
}

#[tokio::test]
async fn replace_and_remove() {
    let routes = routes_for(&[ECHO], 16);
    let other = HttpTrigger {
        path: "/echo".into(),
        method: "POST".into(),
        auth: HttpAuth::None,
        secret: None,
        verify: None,
        response: HttpResponseMode::Sync,
        max_body: None,
    };
    assert!(matches!(
        routes.replace("other", std::slice::from_ref(&other)),
        Err(TriggerError::Settings(_))
    ));
    assert!(routes.replace("echo", &[other.clone(), other]).is_err());
    routes.remove("echo");
    assert_eq!(routes.handle(post("/echo", "{}")).await.status, 404);
    assert!(routes.stats().is_empty());
}
