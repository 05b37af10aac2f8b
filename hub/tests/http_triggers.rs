//! Workflows' `http` triggers served by the real `reactor-hub serve`, called with a real HTTP
//! client: a GitHub-style signed webhook becomes an execution, sync and async answers, the
//! hub token in front of `auth: none` triggers, reserved and taken paths refused at install,
//! body limits, and load shedding.

mod api_support;

use std::time::Duration;

use api_support::{Hub, Place, client, create_token};
use serde_json::{Value, json};

const SECRET: &str = "gh-webhook-secret-7d1e";

/// GitHub's scheme: `X-Hub-Signature-256: sha256=HEX(HMAC-SHA256(secret, body))`.
fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

const WEBHOOK: &str = r#"
reactor: 1
name: github-push
triggers:
  - http: { path: /hooks/github, verify: github, secret: "${{ secrets.GH }}", response: async }
steps:
  - id: summary
    action: transform
    with:
      value:
        repo: ${{ event.data.repository.full_name }}
        commits: ${{ size(event.data.commits) }}
output:
  repo: ${{ steps.summary.output.repo }}
  commits: ${{ steps.summary.output.commits }}
  kind: ${{ event.meta.headers["x-github-event"] }}
  headers: ${{ event.meta.headers }}
"#;

const ECHO: &str = r#"
reactor: 1
name: echo
triggers:
  - http: { path: /hooks/echo }
  - http: { path: /hooks/small, max_body: 16 }
steps:
  - id: echo
    action: transform
    with: { value: "${{ event.data }}" }
output:
  data: ${{ event.data }}
  headers: ${{ event.meta.headers }}
"#;

const FAILS: &str = r#"
reactor: 1
name: fails
triggers:
  - http: { path: /hooks/fails, auth: token, secret: "${{ secrets.GH }}" }
steps:
  - id: boom
    fail: { message: "it broke on purpose" }
"#;

async fn deploy(hub: &Hub, yaml: &str) {
    hub.send_yaml("POST", "/api/v1/workflows", yaml)
        .await
        .expect(201);
}

fn secret_env() -> Vec<(&'static str, &'static str)> {
    vec![("REACTOR_SECRET_GH", SECRET)]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_github_webhook_becomes_an_execution() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place, &secret_env()).await;
    deploy(&hub, WEBHOOK).await;

    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "repository": { "full_name": "acme/widgets" },
        "commits": [{ "id": "a1" }, { "id": "b2" }, { "id": "c3" }],
    }))
    .unwrap();
    let signature = github_signature(SECRET, &body);
    let url = hub.url("/hooks/github");

    // No hub token: the signature is the credential.
    let response = client()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-hub-signature-256", &signature)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["execution"].as_str().expect("execution id");
    let execution = hub.finished(id).await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(execution["workflow"], "github-push");
    let output = &execution["output"];
    assert_eq!(output["repo"], "acme/widgets");
    assert_eq!(output["commits"], 3);
    assert_eq!(output["kind"], "push");
    assert!(
        output["headers"].get("x-hub-signature-256").is_none(),
        "signature headers are not copied into the event: {output}"
    );

    // A wrong signature, a signature over another body, no signature: 401, nothing runs —
    // and a hub admin token does not stand in for the webhook's own auth.
    let tampered = br#"{"repository":{"full_name":"evil/x"},"commits":[]}"#.to_vec();
    let wrong = github_signature("not-the-secret", &body);
    let attempts: Vec<(Vec<u8>, Option<String>, Option<&str>)> = vec![
        (body.clone(), Some(wrong), None),
        (tampered, Some(signature.clone()), None),
        (body.clone(), None, None),
        (body.clone(), None, Some(hub.admin.as_str())),
    ];
    for (payload, signature, token) in attempts {
        let mut request = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(payload);
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json")
        );
    }
    let list = hub
        .get("/api/v1/executions?workflow=github-push")
        .await
        .expect(200);
    assert_eq!(
        list.body["executions"].as_array().unwrap().len(),
        1,
        "{}",
        list.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_answers_auth_none_needs_an_editor_token_and_refusals_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place.clone(), &secret_env()).await;
    let viewer = create_token(&place, "viewer");
    let editor = create_token(&place, "editor");
    deploy(&hub, ECHO).await;
    deploy(&hub, FAILS).await;
    let echo = hub.url("/hooks/echo");

    // `auth: none` on the hub: a token of role editor or higher.
    let anonymous = client().post(&echo).json(&json!({})).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let as_viewer = client()
        .post(&echo)
        .bearer_auth(&viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_viewer.status(), 403);
    let response = client()
        .post(format!("{echo}?x=1"))
        .bearer_auth(&editor)
        .header("x-custom", "yes")
        .json(&json!({ "n": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let execution = response.headers()["x-reactor-execution"]
        .to_str()
        .unwrap()
        .to_string();
    let output: Value = response.json().await.unwrap();
    assert_eq!(output["data"], json!({ "n": 7 }));
    assert_eq!(output["headers"]["x-custom"], "yes");
    assert!(
        output["headers"].get("authorization").is_none(),
        "the hub token is not copied into the event"
    );
    let stored = hub.finished(&execution).await;
    assert_eq!(stored["status"], "succeeded");

    // A sync execution that fails answers 500 with its error (not a hub fault).
    let failed = client()
        .post(hub.url("/hooks/fails"))
        .bearer_auth(SECRET)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().contains_key("x-reactor-execution"));
    let failed: Value = failed.json().await.unwrap();
    assert_eq!(failed["error"]["message"], "it broke on purpose");
    assert_eq!(failed["error"]["step"], "boom");

    // Refusals are problem details.
    let wrong_method = hub.call("GET", "/hooks/echo", Some(&editor), None).await;
    let wrong_method = wrong_method.problem(405);
    assert!(wrong_method.text.contains("method not allowed"));
    let response = client()
        .post(hub.url("/hooks/small"))
        .bearer_auth(&editor)
        .json(&json!({ "this body": "is larger than sixteen bytes" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client()
        .post(&echo)
        .bearer_auth(&editor)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{body}"
    );
    // A path no trigger serves: 401 without a token (paths cannot be probed), 404 with one.
    assert_eq!(
        client()
            .post(hub.url("/hooks/none"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    hub.call("POST", "/hooks/none", Some(&editor), None)
        .await
        .problem(404);
    // The API's own unknown paths stay the API's.
    hub.call("GET", "/api/v1/nothing", None, None)
        .await
        .problem(401);
    hub.call("GET", "/api/v1/nothing", Some(&editor), None)
        .await
        .problem(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_and_taken_paths_are_refused_at_install() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place, &[]).await;
    for path in ["/api/v1/workflows", "/api/hook", "/healthz", "/metrics"] {
        let yaml = format!(
            "reactor: 1\nname: grab\ntriggers:\n  - http: {{ path: {path} }}\nsteps:\n  - action: transform\n    with: {{ value: 1 }}\n"
        );
        let reply = hub
            .send_yaml("POST", "/api/v1/workflows", &yaml)
            .await
            .problem(422);
        let diagnostic = &reply.body["diagnostics"][0];
        assert_eq!(diagnostic["line"], 4, "{}", reply.text);
        assert!(
            diagnostic["message"]
                .as_str()
                .unwrap()
                .contains("is reserved on the hub"),
            "{}",
            reply.text
        );
    }
    hub.get("/api/v1/workflows/grab").await.problem(404);

    deploy(&hub, ECHO).await;
    let thief = "reactor: 1\nname: thief\ntriggers:\n  - http: { path: /hooks/echo }\nsteps:\n  - action: transform\n    with: { value: 1 }\n";
    let reply = hub
        .send_yaml("POST", "/api/v1/workflows", thief)
        .await
        .problem(422);
    assert!(
        reply.text.contains("already served by workflow echo"),
        "{}",
        reply.text
    );
    // The owner may keep its paths when it changes.
    let edited = ECHO.replace("value: \"${{ event.data }}\"", "value: 2");
    hub.send_yaml("PUT", "/api/v1/workflows/echo", &edited)
        .await
        .expect(200);
    // Once the owner is gone, the path is free.
    hub.call("DELETE", "/api/v1/workflows/echo", Some(&hub.admin), None)
        .await
        .expect(204);
    deploy(&hub, thief).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_hub_sheds_trigger_requests_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place, &[("REACTOR_LIMITS__MAX_RUNNING", "1")]).await;
    let slow = "reactor: 1\nname: slow\ntriggers:\n  - http: { path: /hooks/slow, response: async }\nsteps:\n  - sleep: 3s\n";
    deploy(&hub, slow).await;
    let url = hub.url("/hooks/slow");
    let first = client()
        .post(&url)
        .bearer_auth(&hub.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The one slot is taken until the sleep ends.
    let mut shed = None;
    for _ in 0..50 {
        let response = client()
            .post(&url)
            .bearer_auth(&hub.admin)
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            shed = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("a request while saturated is shed");
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(
        shed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
    let done = hub.finished(first["execution"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    // Free again: accepted.
    let again = client()
        .post(&url)
        .bearer_auth(&hub.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
}
