//! Harness shared by the hub's end-to-end tests: the real `reactor-hub serve` binary on
//! 127.0.0.1 with a temporary data folder (SQLite) or its own PostgreSQL database, driven
//! with a real HTTP client and tokens made by `reactor-hub token create`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_reactor-hub");
/// The server tests' PostgreSQL (trust auth).
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A PostgreSQL database of its own, dropped at the end.
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        let name = format!("hubapi_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        PgDatabase {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    pub async fn drop_now(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap();
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await;
    }
}

/// Where a hub keeps its state.
#[derive(Debug, Clone)]
pub struct Place {
    pub data: PathBuf,
    pub database: Option<String>,
}

impl Place {
    pub fn sqlite(data: &Path) -> Place {
        Place {
            data: data.to_path_buf(),
            database: None,
        }
    }

    fn args(&self, command: &mut Command) {
        command.arg("--data").arg(&self.data);
        if let Some(url) = &self.database {
            command.arg("--database").arg(url);
        }
    }
}

/// `reactor-hub token create --role ROLE` → the printed token.
pub fn create_token(place: &Place, role: &str) -> String {
    let mut command = Command::new(BIN);
    command.args(["token", "create", "--role", role]);
    place.args(&mut command);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone on one line: {stdout:?}");
    lines[0].to_string()
}

#[derive(Debug)]
pub struct Hub {
    child: Option<Child>,
    pub base: String,
    pub place: Place,
    log: PathBuf,
    /// An admin token, made before start.
    pub admin: String,
}

impl Hub {
    /// Makes an admin token, starts the hub on a free port and waits for /healthz 200.
    pub async fn start(place: Place, extra: &[(&str, &str)]) -> Hub {
        let admin = create_token(&place, "admin");
        let hub = Hub::spawn(place, admin, extra);
        hub.healthy(Duration::from_secs(30)).await;
        hub
    }

    /// Starts the hub without waiting. Its stderr goes to `DATA.PORT.log`.
    pub fn spawn(place: Place, admin: String, extra: &[(&str, &str)]) -> Hub {
        let port = free_port();
        std::fs::create_dir_all(&place.data).unwrap();
        let log = place.data.with_extension(format!("{port}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(BIN);
        command.arg("serve");
        place.args(&mut command);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .env_remove("REACTOR_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(stderr)
            .current_dir(place.data.parent().unwrap_or(Path::new("/tmp")));
        for (name, value) in extra {
            command.env(name, value);
        }
        Hub {
            child: Some(command.spawn().unwrap()),
            base: format!("http://127.0.0.1:{port}"),
            place,
            log,
            admin,
        }
    }

    pub async fn healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(response) = client().get(self.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hub not healthy: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server process' id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request with `token` (none when `None`); returns status, content type and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client().request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match body {
            None => request,
            Some(Body::Json(value)) => request.json(&value),
            Some(Body::Text(text)) => request
                .header("content-type", "application/yaml")
                .body(text),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.unwrap();
        Reply {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// As admin.
    pub async fn get(&self, path: &str) -> Reply {
        let token = self.admin.clone();
        self.call("GET", path, Some(&token), None).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Reply {
        let token = self.admin.clone();
        self.call("POST", path, Some(&token), Some(Body::Json(body)))
            .await
    }

    pub async fn send_yaml(&self, method: &str, path: &str, yaml: &str) -> Reply {
        let token = self.admin.clone();
        self.call(
            method,
            path,
            Some(&token),
            Some(Body::Text(yaml.to_string())),
        )
        .await
    }

    /// Polls an execution until it is finished.
    pub async fn finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = self.get(&format!("/api/v1/executions/{id}")).await;
            if reply.status == 200
                && !matches!(reply.body["status"].as_str(), Some("running" | "queued"))
            {
                return reply.body;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} not finished: {}",
                reply.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hub did not stop: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Value),
    Text(String),
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the status, printing the body when it differs.
    pub fn expect(self, status: u16) -> Reply {
        assert_eq!(self.status, status, "unexpected reply: {}", self.text);
        self
    }

    /// Asserts an RFC 9457 problem with this status.
    pub fn problem(self, status: u16) -> Reply {
        let reply = self.expect(status);
        assert!(
            reply.content_type.starts_with("application/problem+json"),
            "not a problem: {} {}",
            reply.content_type,
            reply.text
        );
        assert_eq!(reply.body["status"], status, "{}", reply.text);
        assert!(reply.body["title"].is_string(), "{}", reply.text);
        reply
    }
}
