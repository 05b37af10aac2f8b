//! Secrets end to end on the real `reactor-hub serve` (SQLite): set by the CLI (stdin) and by
//! the API, used by workflows that fail while carrying them — an http call to a local server
//! that echoes them back in an error and in a response, a log step, an expression error, a
//! `fail` message, a URL path — and then the database file (with its -wal and -shm), the
//! hub's logs and every API response are searched for the plaintext: 0 hits.

mod api_support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use api_support::{Body, Hub, Place, create_token};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_reactor-hub");

/// Requests the echo server saw (proof that the secrets reached the outside world).
type Seen = Arc<Mutex<Vec<String>>>;

async fn echo_server(seen: Seen) -> SocketAddr {
    let (s1, s2) = (seen.clone(), seen);
    let app = Router::new()
        // 400 with the body echoed: the http action's error quotes it.
        .route(
            "/reject",
            post(move |body: String| {
                s1.lock().unwrap().push(body.clone());
                async move { (StatusCode::BAD_REQUEST, format!("bad token in {body}")) }
            }),
        )
        // 200 echoing the request headers: the step's output holds them.
        .route(
            "/headers",
            get(move |headers: HeaderMap| {
                let echoed: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                    .collect();
                s2.lock()
                    .unwrap()
                    .push(Value::Object(echoed.clone()).to_string());
                async move { axum::Json(Value::Object(echoed)) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn workflows(echo: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        (
            "leak-http-error",
            format!(
                r#"reactor: 1
name: leak-http-error
steps:
  - id: post
    action: http
    with:
      url: "http://{echo}/reject"
      json: {{ token: "${{{{ secrets.CANARY_CLI }}}}" }}
"#
            ),
        ),
        (
            "leak-output",
            format!(
                r#"reactor: 1
name: leak-output
steps:
  - id: headers
    action: http
    with:
      url: "http://{echo}/headers"
      headers: {{ authorization: "Bearer ${{{{ secrets.CANARY_API }}}}" }}
  - id: again
    action: transform
    with: {{ value: "${{{{ steps.headers.output.body.authorization }}}}" }}
  - fail: {{ message: "gave up with ${{{{ secrets.CANARY_API }}}}" }}
"#
            ),
        ),
        (
            "leak-log-expression",
            r#"reactor: 1
name: leak-log-expression
steps:
  - id: say
    action: log
    with: { level: error, message: "the token is ${{ secrets.CANARY_CLI }}", fields: { t: "${{ secrets.CANARY_API }}" } }
  - id: number
    action: transform
    with: { value: "${{ int(secrets.CANARY_CLI) }}" }
"#
            .to_string(),
        ),
        (
            "leak-url",
            r#"reactor: 1
name: leak-url
steps:
  - id: refused
    action: http
    with: { url: "http://10.255.255.1/hook/${{ secrets.CANARY_API }}" }
"#
            .to_string(),
        ),
    ]
}

fn set_by_cli(place: &Place, name: &str, value: &str) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(["secret", "set", name, "--data"])
        .arg(&place.data)
        .env_remove("REACTOR_DATABASE_URL")
        .env_remove("REACTOR_SECRET_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{value}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "secret set: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !printed.contains(value),
        "the CLI printed the value: {printed}"
    );
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

#[tokio::test]
async fn canary_secrets_never_reach_the_database_logs_or_api() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let canary_cli = format!("cli-canary-{unique}");
    let canary_api = format!("api-canary-{unique}");
    std::fs::create_dir_all(&place.data).unwrap();
    set_by_cli(&place, "CANARY_CLI", &canary_cli);

    let seen: Seen = Arc::default();
    let echo = echo_server(seen.clone()).await;
    let admin = create_token(&place, "admin");
    let hub = Hub::spawn(
        place.clone(),
        admin,
        &[
            ("RUST_LOG", "debug"),
            ("REACTOR_HTTP__ALLOW", "[\"127.0.0.1\"]"),
        ],
    );
    hub.healthy(std::time::Duration::from_secs(30)).await;
    let mut replies: Vec<String> = Vec::new();

    // The API: write-only, names only.
    let token = hub.admin.clone();
    let put = hub
        .call(
            "PUT",
            "/api/v1/secrets/CANARY_API",
            Some(&token),
            Some(Body::Json(json!({ "value": canary_api }))),
        )
        .await
        .expect(201);
    replies.push(put.text);
    let malformed = hub
        .call(
            "PUT",
            "/api/v1/secrets/OTHER",
            Some(&token),
            Some(Body::Json(json!({ "value": 1, "echo": canary_api }))),
        )
        .await
        .problem(400);
    replies.push(malformed.text);
    let listed = hub.get("/api/v1/secrets").await.expect(200);
    let names: Vec<&str> = listed.body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["CANARY_API", "CANARY_CLI"], "{}", listed.text);
    replies.push(listed.text.clone());
    let viewer = create_token(&place, "viewer");
    hub.call("GET", "/api/v1/secrets", Some(&viewer), None)
        .await
        .problem(403);

    for (name, yaml) in workflows(echo) {
        let created = hub.send_yaml("POST", "/api/v1/workflows", &yaml).await;
        assert_eq!(created.status, 201, "{name}: {}", created.text);
        replies.push(created.text);
        let run = hub
            .post_json(&format!("/api/v1/workflows/{name}/run"), json!({}))
            .await
            .expect(202);
        let id = run.body["execution"].as_str().unwrap().to_string();
        replies.push(run.text);
        let finished = hub.finished(&id).await;
        assert_eq!(finished["status"], "failed", "{name}: {finished}");
        replies.push(finished.to_string());
    }
    for path in [
        "/api/v1/executions?limit=100",
        "/api/v1/workflows",
        "/metrics",
    ] {
        let reply = hub.get(path).await.expect(200);
        replies.push(reply.text);
    }

    // The secrets did reach the outside world, decrypted.
    let outside = seen.lock().unwrap().join("\n");
    assert!(outside.contains(&canary_cli), "{outside}");
    assert!(outside.contains(&canary_api), "{outside}");

    let mut hub = hub;
    let data_files = |label: &str| {
        let mut hits = Vec::new();
        for file in ["hub.db", "hub.db-wal", "hub.db-shm", "secret.key"] {
            let Ok(bytes) = std::fs::read(place.data.join(file)) else {
                continue;
            };
            for canary in [&canary_cli, &canary_api] {
                let n = count(&bytes, canary);
                if n > 0 {
                    hits.push(format!("{label}: {file} holds {canary} {n} times"));
                }
            }
        }
        hits
    };
    let mut hits = data_files("while running");
    assert!(hub.terminate().success());
    hits.extend(data_files("after stop"));
    let logs = hub.logs();
    for canary in [&canary_cli, &canary_api] {
        let n = count(logs.as_bytes(), canary);
        if n > 0 {
            hits.push(format!("logs hold {canary} {n} times"));
        }
        for reply in &replies {
            if reply.contains(canary.as_str()) {
                hits.push(format!("an API reply holds {canary}: {reply}"));
            }
        }
    }
    assert!(hits.is_empty(), "{hits:#?}");

    // Redaction happened (rather than the values never being used).
    let all = replies.join("\n");
    assert!(all.contains("***"), "{all}");
    assert!(
        logs.contains("the token is ***"),
        "the log step ran: {logs}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn serve_refuses_a_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    std::fs::create_dir_all(&place.data).unwrap();
    set_by_cli(&place, "ANY", "value-1");
    let key = place.data.join("secret.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&place.data)
        .env_remove("REACTOR_DATABASE_URL")
        .env_remove("REACTOR_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // With the key in the environment instead, the file is not read; a wrong key cannot
    // decrypt the stored secret and the hub says which secret, not its value.
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&place.data)
        .env_remove("REACTOR_DATABASE_URL")
        .env(
            "REACTOR_SECRET_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\\\"ANY\\\" cannot be decrypted")
            || stderr.contains("\"ANY\" cannot be decrypted"),
        "{stderr}"
    );
    assert!(!stderr.contains("value-1"), "{stderr}");
}

/// The store on PostgreSQL (its own database): set, replace, list, decrypt, delete; the
/// ciphertext in the table holds no plaintext.
#[tokio::test]
async fn secret_store_on_postgres() {
    use reactor_hub::db::Database;
    use reactor_hub::secrets::SecretStore;
    use reactor_hub::secrets::key::SecretKey;
    use sqlx::Row as _;

    let pg = api_support::PgDatabase::create().await;
    let db = Database::open(Some(&pg.url), std::path::Path::new("/nonexistent"))
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let store = SecretStore::new(db.clone(), &SecretKey::generate().unwrap());
    let value = format!("pg-canary-{}", ulid::Ulid::new());
    assert!(!store.set("PG_ONE", "first").await.unwrap());
    assert!(store.set("PG_ONE", &value).await.unwrap());
    store.set("PG_TWO", "second").await.unwrap();
    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["PG_ONE", "PG_TWO"]);
    let all = store.decrypt_all().await.unwrap();
    assert_eq!(all["PG_ONE"], json!(value));
    let Database::Postgres(pool) = &db else {
        panic!("not postgres")
    };
    let rows = sqlx::query("SELECT nonce, ciphertext FROM secrets")
        .fetch_all(pool)
        .await
        .unwrap();
    for row in rows {
        let nonce: Vec<u8> = row.get("nonce");
        let ciphertext: Vec<u8> = row.get("ciphertext");
        assert_eq!(nonce.len(), 24);
        assert_eq!(count(&ciphertext, &value), 0);
    }
    assert!(store.delete("PG_TWO").await.unwrap());
    assert!(!store.delete("PG_TWO").await.unwrap());
    db.close().await;
    pg.drop_now().await;
}
