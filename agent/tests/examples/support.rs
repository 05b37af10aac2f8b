//! Shared helpers: where the examples live, a scriptable local HTTP server, running `exec`.

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

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_reactor-agent");

pub(crate) fn workflows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows")
}

pub(crate) fn example(name: &str) -> String {
    workflows_dir()
        .join(format!("{name}.yaml"))
        .display()
        .to_string()
}

pub(crate) fn example_files() -> Vec<PathBuf> {
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
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Value,
}

/// What the server answers, after `delay`.
#[derive(Debug)]
pub(crate) struct Reply {
    status: u16,
    body: Value,
    delay: Duration,
}

pub(crate) fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        delay: Duration::ZERO,
    }
}

pub(crate) fn status(status: u16) -> Reply {
    Reply {
        status,
        body: json!({"error": status}),
        delay: Duration::ZERO,
    }
}

impl Reply {
    pub(crate) fn after(mut self, millis: u64) -> Reply {
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

pub(crate) struct Server {
    pub(crate) base: String,
    shared: Arc<Shared>,
}

impl Server {
    pub(crate) async fn start(
        routes: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Server {
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

    pub(crate) fn requests(&self, method: &str, path: &str) -> Vec<Request> {
        let log = self.shared.log.lock().expect("log lock");
        log.iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    pub(crate) fn count(&self) -> usize {
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

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) json: Value,
    pub(crate) elapsed: Duration,
}

pub(crate) async fn exec(file: &str, args: &[&str]) -> Run {
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

pub(crate) fn input(value: Value) -> String {
    value.to_string()
}

pub(crate) fn step<'a>(run: &'a Run, id: &str) -> &'a Value {
    &run.json["steps"][id]
}

pub(crate) fn mirror_inputs(server: &Server) -> String {
    input(json!({
        "primary": format!("{}/mirror/a", server.base),
        "secondary": format!("{}/mirror/b", server.base),
        "tertiary": format!("{}/mirror/c", server.base),
    }))
}

pub(crate) fn job_server(
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

pub(crate) fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}
