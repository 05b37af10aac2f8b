use std::net::SocketAddr;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap as AxumHeaders, Method as AxumMethod, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, get};

use super::*;
use crate::action::test_context;

/// Answers with what it received.
async fn echo(method: AxumMethod, uri: Uri, headers: AxumHeaders, body: String) -> Json<Value> {
    let headers: Map = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    Json(json!({
        "method": method.as_str(),
        "query": uri.query(),
        "headers": headers,
        "body": body,
    }))
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    (
        StatusCode::from_u16(code).unwrap(),
        format!("body of {code}"),
    )
}

async fn server() -> SocketAddr {
    let app = Router::new()
        .route("/echo", any(echo))
        .route("/status/{code}", get(status))
        .route("/text", get(|| async { "plain text" }))
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route("/big", get(|| async { "x".repeat(5000) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn call(input: Value) -> Result<Value, ActionError> {
    HttpAction::try_new(HttpConfig::default())
        .unwrap()
        .execute(input, &test_context())
        .await
}

#[tokio::test]
async fn json_round_trip_with_idempotency_key() {
    let addr = server().await;
    let out = call(json!({
        "url": format!("http://{addr}/echo"),
        "json": {"a": [1, 2], "b": "c"},
    }))
    .await
    .unwrap();
    assert_eq!(out["status"], json!(200));
    assert_eq!(out["headers"]["content-type"], json!("application/json"));
    let seen = &out["body"];
    assert_eq!(seen["method"], json!("POST"), "json without method posts");
    assert_eq!(seen["body"], json!(r#"{"a":[1,2],"b":"c"}"#));
    assert_eq!(seen["headers"]["content-type"], json!("application/json"));
    assert_eq!(seen["headers"]["idempotency-key"], json!("01JTEST/s1"));
    assert_eq!(
        seen["headers"]["user-agent"],
        json!(format!("reactor/{}", env!("CARGO_PKG_VERSION")))
    );
}

#[tokio::test]
async fn query_headers_and_text_body() {
    let addr = server().await;
    let out = call(json!({
        "method": "put",
        "url": format!("http://{addr}/echo?x=1"),
        "query": {"q": "a b", "n": 2, "tag": ["t1", "t2"], "skip": null},
        "headers": {"X-Token": "abc", "X-Count": 3, "Idempotency-Key": "mine"},
        "body": "hello",
    }))
    .await
    .unwrap();
    let seen = &out["body"];
    assert_eq!(seen["method"], json!("PUT"));
    assert_eq!(seen["query"], json!("x=1&q=a+b&n=2&tag=t1&tag=t2"));
    assert_eq!(seen["headers"]["x-token"], json!("abc"));
    assert_eq!(seen["headers"]["x-count"], json!("3"));
    assert_eq!(seen["headers"]["idempotency-key"], json!("mine"));
    assert_eq!(
        seen["headers"]["content-type"],
        json!("text/plain; charset=utf-8")
    );
    assert_eq!(seen["body"], json!("hello"));
}

#[tokio::test]
async fn text_and_empty_bodies() {
    let addr = server().await;
    let out = call(json!({"url": format!("http://{addr}/text")}))
        .await
        .unwrap();
    assert_eq!(out["body"], json!("plain text"));
    assert_eq!(
        out["headers"]["content-type"],
        json!("text/plain; charset=utf-8")
    );
    let out = call(json!({"url": format!("http://{addr}/empty")}))
        .await
        .unwrap();
    assert_eq!(out["status"], json!(204));
    assert_eq!(out["body"], Value::Null);
}

#[tokio::test]
async fn expect_and_status_errors() {
    let addr = server().await;
    let out = call(json!({"url": format!("http://{addr}/status/404"), "expect": [200, 404]}))
        .await
        .unwrap();
    assert_eq!(out["status"], json!(404));
    assert_eq!(out["body"], json!("body of 404"));

    let err = call(json!({"url": format!("http://{addr}/status/404?token=secret")}))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ActionError::Permanent {
            message: format!("http: GET http://{addr}/status/404?… → 404 Not Found: body of 404"),
            status: Some(404),
        }
    );
    assert!(!err.to_string().contains("secret"));

    for code in [500, 503, 429] {
        let err = call(json!({"url": format!("http://{addr}/status/{code}")}))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{code}: {err:?}");
        assert_eq!(err.status(), Some(code));
    }
    let err = call(json!({"url": format!("http://{addr}/status/200"), "expect": [201]}))
        .await
        .unwrap_err();
    assert!(!err.parts().0);
    assert_eq!(err.status(), Some(200));
}

#[tokio::test]
async fn timeout_is_retryable() {
    let addr = server().await;
    let started = Instant::now();
    let err = call(json!({"url": format!("http://{addr}/slow"), "timeout": "200ms"}))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        err,
        ActionError::retryable(format!(
            "http: GET http://{addr}/slow timed out after 200ms"
        ))
    );
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = call(json!({"url": format!("http://user:pw@{addr}/x")}))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.status(), None);
    assert!(
        err.to_string()
            .starts_with(&format!("http: GET http://{addr}/x: ")),
        "{err}"
    );
    assert!(!err.to_string().contains("pw"), "{err}");
}

#[tokio::test]
async fn cancellation() {
    let addr = server().await;
    let context = test_context();
    let cancel = context.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let err = HttpAction::try_new(HttpConfig::default())
        .unwrap()
        .execute(json!({"url": format!("http://{addr}/slow")}), &context)
        .await
        .unwrap_err();
    assert_eq!(err, ActionError::Cancelled);
}

#[tokio::test]
async fn response_size_limit() {
    let addr = server().await;
    let action = HttpAction::try_new(HttpConfig {
        max_response_bytes: 1000,
        ..HttpConfig::default()
    })
    .unwrap();
    let err = action
        .execute(
            json!({"url": format!("http://{addr}/big")}),
            &test_context(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("larger than the 1000-byte limit"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn invalid_settings_are_permanent() {
    let cases = [
        (json!({}), "http: \"url\" is required"),
        (
            json!({"url": "http://x", "json": 1, "body": "a"}),
            "http: give either \"json\" or \"body\", not both",
        ),
        (
            json!({"url": "http://x", "expect": 200}),
            "http: \"expect\" must be a list of status codes (100-599)",
        ),
        (
            json!({"url": "http://x", "expect": ["ok"]}),
            "http: \"expect\" must be a list of status codes (100-599)",
        ),
        (
            json!({"url": "ftp://x"}),
            "http: \"url\" must start with http:// or https://, not ftp://",
        ),
        (
            json!({"url": "http://x", "method": "FETCH"}),
            "http: unknown method \"FETCH\"; use one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
        ),
        (
            json!({"url": "http://x", "body": {"a": 1}}),
            "http: \"body\" must be a string; use \"json\" to send a structured value",
        ),
        (
            json!({"url": "http://x", "headers": {"bad name": "v"}}),
            "http: \"bad name\" is not a valid header name",
        ),
    ];
    for (input, message) in cases {
        let err = HttpRequest::parse(&input).unwrap_err();
        assert_eq!(err, ActionError::permanent(message), "{input}");
    }
    let err = HttpRequest::parse(&json!({"url": "not a url"})).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("http: \"url\" is not a valid URL"),
        "{err}"
    );
}

#[test]
fn bodies() {
    assert_eq!(parse_body(Some("application/json"), b"3"), json!(3));
    assert_eq!(
        parse_body(
            Some("application/problem+json; charset=utf-8"),
            b"{\"a\":1}"
        ),
        json!({"a": 1})
    );
    assert_eq!(parse_body(Some("text/plain"), b"3"), json!("3"));
    assert_eq!(parse_body(Some("text/plain"), b" [1]"), json!([1]));
    assert_eq!(
        parse_body(Some("application/json"), b"{broken"),
        json!("{broken")
    );
    assert_eq!(parse_body(None, b""), Value::Null);
}

#[test]
fn https_client_builds_with_platform_roots() {
    // Loads the system CA store through rustls-platform-verifier with the ring provider.
    HttpAction::try_new(HttpConfig::default()).unwrap();
}
