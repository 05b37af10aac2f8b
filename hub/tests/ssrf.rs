//! The hub's outbound guard on the `http` action, end to end through the engine: a local
//! server on 127.0.0.1 is refused (by address and by name after DNS resolution), reachable
//! once allow-listed, and a redirect from an allowed host to a private address is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use reactor_core::action::http::HttpConfig;
use reactor_core::action::{BuiltinConfig, builtin_registry};
use reactor_core::engine::{
    Environment, Event, ExecutionRecord, ExecutionStatus, Runtime, RuntimeConfig, Submission,
};
use reactor_core::store::MemoryStore;
use serde_json::json;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Runs a one-step workflow calling `url` with the hub's guard allowing `allow`.
async fn call(url: &str, allow: &[&str]) -> ExecutionRecord {
    let yaml = format!(
        "reactor: 1\nname: out\nsteps:\n  - id: call\n    action: http\n    with: {{ url: \"{url}\" }}\n"
    );
    let workflow = reactor_core::dsl::parse_workflow("out.yaml", &yaml).unwrap();
    let config = BuiltinConfig {
        http: HttpConfig::guarded(allow).unwrap(),
        ..BuiltinConfig::default()
    };
    let runtime = Runtime::new(
        Arc::new(MemoryStore::new()),
        builtin_registry(config),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    runtime.load(workflow);
    let Submission::Accepted(id) = runtime
        .submit("out", Event::new("manual", "test", json!({})), json!({}))
        .await
        .unwrap()
    else {
        panic!("not accepted")
    };
    let record = runtime.wait(id).await.unwrap();
    runtime.shutdown().await;
    record
}

fn error_of(record: &ExecutionRecord) -> String {
    record
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn loopback_is_refused_by_address_and_by_name_then_allowed_when_listed() {
    let addr = serve(Router::new().route("/", get(|| async { "hello" }))).await;
    let by_address = format!("http://127.0.0.1:{}/", addr.port());
    let by_name = format!("http://localhost:{}/", addr.port());

    let refused = call(&by_address, &[]).await;
    assert_eq!(refused.status, ExecutionStatus::Failed);
    let message = error_of(&refused);
    assert!(message.contains("a loopback address"), "{message}");
    assert_eq!(refused.steps[0].1.attempts, 1, "a refusal is permanent");

    // A name is checked after DNS resolution: localhost resolves to loopback addresses.
    let refused = call(&by_name, &[]).await;
    assert_eq!(refused.status, ExecutionStatus::Failed);
    let message = error_of(&refused);
    assert!(message.contains("loopback"), "{message}");

    for (url, allow) in [
        (&by_address, "127.0.0.1"),
        (&by_address, "127.0.0.0/8"),
        (&by_name, "localhost"),
    ] {
        let allowed = call(url, &[allow]).await;
        assert_eq!(
            allowed.status,
            ExecutionStatus::Succeeded,
            "{url} with {allow}: {}",
            error_of(&allowed)
        );
        assert_eq!(allowed.output["body"], json!("hello"));
    }
}

#[tokio::test]
async fn metadata_and_private_literals_are_refused_before_connecting() {
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:9/",
        "http://100.64.0.1/",
    ] {
        let record = call(url, &[]).await;
        assert_eq!(record.status, ExecutionStatus::Failed, "{url}");
        assert!(
            error_of(&record).contains("refuses non-public targets"),
            "{url}: {}",
            error_of(&record)
        );
    }
}

#[tokio::test]
async fn a_redirect_from_an_allowed_host_to_a_private_one_is_refused() {
    let private = serve(Router::new().route("/", get(|| async { "internal data" }))).await;
    let target = format!("http://127.0.0.1:{}/", private.port());
    let redirecting = serve(Router::new().route(
        "/go",
        get(move || {
            let target = target.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, target)]).into_response() }
        }),
    ))
    .await;
    // Only the name `localhost` is allowed; the redirect goes to the address 127.0.0.1.
    let url = format!("http://localhost:{}/go", redirecting.port());
    let record = call(&url, &["localhost"]).await;
    assert_eq!(record.status, ExecutionStatus::Failed);
    let message = error_of(&record);
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(message.contains("refuses non-public targets"), "{message}");
    assert!(!message.contains("internal data"), "{message}");

    // Allowing the target too lets the redirect through.
    let record = call(&url, &["localhost", "127.0.0.1"]).await;
    assert_eq!(
        record.status,
        ExecutionStatus::Succeeded,
        "{}",
        error_of(&record)
    );
    assert_eq!(record.output["body"], json!("internal data"));
}
