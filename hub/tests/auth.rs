//! Every route × every role × no token → the expected status, against the real hub; the
//! table must cover every operation of the OpenAPI document (so a new route needs a row).

mod api_support;

use std::collections::BTreeSet;

use api_support::{Body, Hub, Place, create_token};
use serde_json::json;

const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// The lowest role a route needs; `None`: no token needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Open,
    Viewer,
    Editor,
    Admin,
}

struct Row {
    method: &'static str,
    /// The OpenAPI path.
    template: &'static str,
    /// The concrete path called.
    path: String,
    body: Option<Body>,
    need: Need,
    /// The status when the caller is allowed.
    allowed: u16,
}

fn row(
    method: &'static str,
    template: &'static str,
    body: Option<Body>,
    need: Need,
    allowed: u16,
) -> Row {
    Row {
        method,
        template,
        path: template
            .replace("{name}", "nope")
            .replace("{version}", "1")
            .replace("{id}", UNKNOWN_ID)
            .replace("{command}", "1"),
        body,
        need,
        allowed,
    }
}

fn table() -> Vec<Row> {
    use Need::{Admin, Editor, Open, Viewer};
    let yaml = || Some(Body::Text(String::new()));
    let json = |v: serde_json::Value| Some(Body::Json(v));
    vec![
        row("GET", "/healthz", None, Open, 200),
        row("GET", "/api/v1/openapi.json", None, Viewer, 200),
        row("GET", "/api/v1/workflows", None, Viewer, 200),
        row("POST", "/api/v1/workflows", yaml(), Editor, 422),
        row("GET", "/api/v1/workflows/{name}", None, Viewer, 404),
        row("PUT", "/api/v1/workflows/{name}", yaml(), Editor, 422),
        row("DELETE", "/api/v1/workflows/{name}", None, Editor, 404),
        row(
            "GET",
            "/api/v1/workflows/{name}/versions",
            None,
            Viewer,
            404,
        ),
        row(
            "GET",
            "/api/v1/workflows/{name}/versions/{version}",
            None,
            Viewer,
            404,
        ),
        row("GET", "/api/v1/workflows/{name}/diff", None, Viewer, 404),
        row(
            "POST",
            "/api/v1/workflows/{name}/run",
            json(json!({})),
            Editor,
            404,
        ),
        row("GET", "/api/v1/executions", None, Viewer, 200),
        row("GET", "/api/v1/executions/{id}", None, Viewer, 404),
        row("POST", "/api/v1/executions/{id}/cancel", None, Editor, 404),
        row("POST", "/api/v1/executions/{id}/retry", None, Editor, 404),
        row(
            "POST",
            "/api/v1/events",
            json(json!({ "type": "nobody.listens" })),
            Editor,
            202,
        ),
        row("GET", "/api/v1/tokens", None, Admin, 200),
        row(
            "POST",
            "/api/v1/tokens",
            json(json!({ "role": "viewer" })),
            Admin,
            201,
        ),
        row("DELETE", "/api/v1/tokens/{id}", None, Admin, 404),
        // Secrets, metrics, the live stream, alerts (hub/src/{secrets,metrics,stream,alerts}).
        row("GET", "/api/v1/secrets", None, Admin, 200),
        row("PUT", "/api/v1/secrets/{name}", json(json!({})), Admin, 400),
        row("DELETE", "/api/v1/secrets/{name}", None, Admin, 404),
        row("GET", "/metrics", None, Viewer, 200),
        // The stream never ends when allowed: an unknown query parameter makes the allowed
        // answer a quick 400, after the role check.
        Row {
            path: "/api/v1/stream?unknown=1".into(),
            ..row("GET", "/api/v1/stream", None, Viewer, 400)
        },
        row("POST", "/api/v1/alerts", json(json!({})), Editor, 400),
        row("GET", "/api/v1/alerts", None, Viewer, 200),
        row("DELETE", "/api/v1/alerts/{id}", None, Editor, 404),
        row("GET", "/api/v1/alerts/{id}/history", None, Viewer, 404),
        // Fleet (hub/src/fleet; POST /api/v1/enroll takes no bearer token: fleet_enroll.rs).
        row("GET", "/api/v1/devices", None, Viewer, 200),
        row(
            "POST",
            "/api/v1/devices/{id}/commands",
            json(json!({})),
            Editor,
            422,
        ),
        row("GET", "/api/v1/devices/{id}/commands", None, Viewer, 404),
        row(
            "GET",
            "/api/v1/devices/{id}/commands/{command}",
            None,
            Viewer,
            404,
        ),
        // Rollouts (hub/src/fleet/rollout).
        row("POST", "/api/v1/rollouts", json(json!({})), Editor, 422),
        row("GET", "/api/v1/rollouts", None, Viewer, 200),
        row("GET", "/api/v1/rollouts/{id}", None, Viewer, 404),
        row("POST", "/api/v1/rollouts/{id}/abort", None, Editor, 404),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place.clone(), &[]).await;
    let viewer = create_token(&place, "viewer");
    let editor = create_token(&place, "editor");
    let callers: Vec<(Option<Need>, Option<String>)> = vec![
        (None, None),
        (Some(Need::Viewer), Some(viewer)),
        (Some(Need::Editor), Some(editor)),
        (Some(Need::Admin), Some(hub.admin.clone())),
    ];
    let table = table();
    let mut failures = Vec::new();
    for row in &table {
        for (role, token) in &callers {
            let expected = match (row.need, role) {
                (Need::Open, _) => row.allowed,
                (_, None) => 401,
                (need, Some(role)) if *role >= need => row.allowed,
                (_, Some(_)) => 403,
            };
            let reply = hub
                .call(row.method, &row.path, token.as_deref(), row.body.clone())
                .await;
            if reply.status != expected {
                failures.push(format!(
                    "{} {} as {role:?}: expected {expected}, got {} {}",
                    row.method, row.path, reply.status, reply.text
                ));
            }
            if matches!(expected, 401 | 403) {
                assert!(
                    reply.content_type.starts_with("application/problem+json"),
                    "{} {}: {}",
                    row.method,
                    row.path,
                    reply.content_type
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The table covers every documented operation.
    let openapi = hub.get("/api/v1/openapi.json").await.expect(200);
    let documented: BTreeSet<(String, String)> = openapi.body["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let tested: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_string()))
        .collect();
    assert_eq!(documented, tested, "the route table and OpenAPI differ");
    // And the roles it documents are the ones enforced.
    for row in &table {
        if row.need == Need::Open {
            continue;
        }
        let role =
            &openapi.body["paths"][row.template][row.method.to_lowercase()]["x-required-role"];
        assert_eq!(
            role.as_str().unwrap(),
            format!("{:?}", row.need).to_lowercase(),
            "{} {}",
            row.method,
            row.template
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_and_revoked_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place.clone(), &[]).await;
    let reply = hub
        .call(
            "GET",
            "/api/v1/workflows",
            Some("rh_not-a-real-token"),
            None,
        )
        .await
        .problem(401);
    assert!(reply.text.contains("unknown or revoked"), "{}", reply.text);
    let response = api_support::client()
        .get(hub.url("/api/v1/workflows"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // A token made through the API works, is listed without its secret, and stops working
    // once revoked.
    let made = hub
        .post_json("/api/v1/tokens", json!({ "role": "editor", "name": "ci" }))
        .await
        .expect(201);
    let token = made.body["token"].as_str().unwrap().to_string();
    let id = made.body["id"].as_str().unwrap().to_string();
    hub.call("GET", "/api/v1/workflows", Some(&token), None)
        .await
        .expect(200);
    let list = hub.get("/api/v1/tokens").await.expect(200);
    assert!(!list.text.contains(&token), "secret listed");
    assert!(list.text.contains("\"ci\""));
    hub.call(
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        Some(&hub.admin),
        None,
    )
    .await
    .expect(204);
    hub.call("GET", "/api/v1/workflows", Some(&token), None)
        .await
        .problem(401);
    // The database holds hashes only.
    let db = std::fs::read(place.data.join("hub.db")).unwrap();
    let wal = std::fs::read(place.data.join("hub.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "a token is stored in clear"
        );
        assert!(
            !bytes
                .windows(hub.admin.len())
                .any(|w| w == hub.admin.as_bytes()),
            "a token is stored in clear"
        );
    }
}

/// The `http` trigger family (every path the API does not own): a trigger with its own auth
/// is checked by that auth only; `auth: none` needs an editor token; an unserved path is 401
/// without a token; the reserved prefixes stay the API's.
#[tokio::test(flavor = "multi_thread")]
async fn trigger_routes_every_role() {
    const SECRET: &str = "trigger-table-secret";
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(place.clone(), &[("REACTOR_SECRET_HOOK", SECRET)]).await;
    let viewer = create_token(&place, "viewer");
    let editor = create_token(&place, "editor");
    let yaml = r#"
reactor: 1
name: table
triggers:
  - http: { path: /t/open, response: async }
  - http: { path: /t/token, auth: token, secret: "${{ secrets.HOOK }}", response: async }
  - http: { path: /t/github, verify: github, secret: "${{ secrets.HOOK }}", response: async }
steps:
  - action: transform
    with: { value: 1 }
"#;
    hub.send_yaml("POST", "/api/v1/workflows", yaml)
        .await
        .expect(201);
    let body = b"{}".to_vec();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, &body);
    let signature: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();

    // (path, the trigger's own credential header if any, status per caller: none, viewer,
    // editor, admin).
    let own_token = ("authorization", format!("Bearer {SECRET}"));
    let github = ("x-hub-signature-256", format!("sha256={signature}"));
    type Case = (&'static str, Option<(&'static str, String)>, [u16; 4]);
    let cases: Vec<Case> = vec![
        ("/t/open", None, [401, 403, 202, 202]),
        // Own auth: the hub token is neither needed nor enough.
        ("/t/token", Some(own_token), [202, 202, 202, 202]),
        ("/t/token", None, [401, 401, 401, 401]),
        ("/t/github", Some(github), [202, 202, 202, 202]),
        ("/t/github", None, [401, 401, 401, 401]),
        ("/t/unserved", None, [401, 403, 404, 404]),
        ("/api/v1/unserved", None, [401, 404, 404, 404]),
        ("/metrics/x", None, [401, 404, 404, 404]),
    ];
    let callers = [None, Some(viewer), Some(editor), Some(hub.admin.clone())];
    let mut failures = Vec::new();
    for (path, credential, expected) in &cases {
        for (caller, expected) in callers.iter().zip(expected) {
            let mut request = api_support::client()
                .post(hub.url(path))
                .header("content-type", "application/json")
                .body(body.clone());
            // A trigger's own `Authorization` replaces the hub token (one header).
            match (credential, caller) {
                (Some((name, value)), _) => {
                    request = request.header(*name, value);
                    if *name != "authorization"
                        && let Some(token) = caller
                    {
                        request = request.bearer_auth(token);
                    }
                }
                (None, Some(token)) => request = request.bearer_auth(token),
                (None, None) => {}
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            if status != *expected {
                failures.push(format!(
                    "POST {path} as {:?}: expected {expected}, got {status} {}",
                    caller.as_ref().map(|t| &t[..8]),
                    response.text().await.unwrap_or_default()
                ));
            } else if status >= 400 {
                let content_type = response.headers()["content-type"].to_str().unwrap();
                assert!(
                    content_type.starts_with("application/problem+json"),
                    "POST {path}: {content_type}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
