//! The real hub and the real agent together (both binaries, as an operator runs them):
//! `reactor-hub serve --mqtt-listen` (SQLite), `reactor-hub device add`, `reactor-agent enroll`
//! and `reactor-agent run` with `[fleet] status_every = "1s"`.
//!
//! Checked: the agent connects through the hub's device endpoint and shows online with its
//! version; a rollout delivers a signed bundle that the agent verifies and installs (its
//! workflow answers on the agent's HTTP listener) and the rollout completes; executions the
//! bundle's workflow runs show in the hub's device health through the agent's periodic status
//! (sliding window); commands: ping → pong, run_workflow → started with an execution id that
//! the agent's API knows, cancel of an unknown execution → not_found.
//!
//! Both binaries must be built (`cargo test --workspace` builds them; alone:
//! `cargo build -p reactor-hub -p reactor-agent` first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A binary of the workspace next to this test's directory (`target/<profile>/NAME`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p reactor-hub -p reactor-agent)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn output(command: &mut Command) -> String {
    let output = command.env_remove("REACTOR_DATABASE_URL").output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Kills the process when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(command: &mut Command, log: &Path) -> Process {
    let log = std::fs::File::create(log).unwrap();
    Process(
        command
            .env("RUST_LOG", "info")
            .env_remove("REACTOR_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn device(&self, id: &str) -> Value {
        let (_, list) = self.get("/api/v1/devices").await;
        list["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }
}

async fn until<T: std::fmt::Debug>(
    what: &str,
    logs: &[&Path],
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = probe().await;
        if check(&value) {
            return value;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect();
            panic!("{what}: {value:?}\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const GREET: &str = "reactor: 1\nname: greet\ntriggers:\n  - http: { path: /greet, method: POST }\nsteps:\n  - return: \"hello ${{ event.data.who }}\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn real_agent_takes_a_rollout_reports_health_and_answers_commands() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (hub_bin, agent_bin) = (binary("reactor-hub"), binary("reactor-agent"));
    let dir = tempfile::tempdir().unwrap();
    let hub_data = dir.path().join("hub");
    let token = output(
        Command::new(&hub_bin)
            .args(["token", "create", "--role", "admin", "--data"])
            .arg(&hub_data),
    )
    .trim()
    .to_string();
    let (http, mqtt) = (free_port(), free_port());
    let hub_log = dir.path().join("hub.log");
    let _hub = spawn(
        Command::new(&hub_bin)
            .arg("serve")
            .arg("--data")
            .arg(&hub_data)
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .env("REACTOR_MQTT_LISTEN", format!("127.0.0.1:{mqtt}")),
        &hub_log,
    );
    let api = Api {
        base: format!("http://127.0.0.1:{http}"),
        token,
        client: reqwest::Client::new(),
    };
    until(
        "hub healthy",
        &[&hub_log],
        async || api.get("/healthz").await.0,
        |s| *s == 200,
    )
    .await;

    // Enrollment with both CLIs.
    let printed = output(
        Command::new(&hub_bin)
            .args(["device", "add", "edge-1", "--labels", "site=lab", "--data"])
            .arg(&hub_data),
    );
    let enroll_token = printed.lines().last().unwrap().to_string();
    let agent_data = dir.path().join("agent");
    output(
        Command::new(&agent_bin)
            .args([
                "enroll",
                "--hub",
                &api.base,
                "--token",
                &enroll_token,
                "--data",
            ])
            .arg(&agent_data),
    );
    let agent_port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:{agent_port}\"\n[fleet]\nstatus_every = \"1s\"\nhealth_window = \"1m\"\n",
            agent_data.display().to_string()
        ),
    )
    .unwrap();
    let agent_log = dir.path().join("agent.log");
    let logs = [hub_log.as_path(), agent_log.as_path()];
    let _agent = spawn(
        Command::new(&agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&config),
        &agent_log,
    );
    let online = until(
        "agent online",
        &logs,
        async || api.device("edge-1").await,
        |d| d["online"] == true,
    )
    .await;
    assert_eq!(online["agent_version"], env!("CARGO_PKG_VERSION"));

    // A rollout: the agent verifies and installs the bundle; the rollout completes.
    let (status, created) = api
        .post(
            "/api/v1/rollouts",
            json!({"workflows": [GREET], "selector": {"site": "lab"},
                   "strategy": {"canary": 1, "steps": [100]},
                   "gate": {"max_failure_rate": 0.5, "observe": "1s", "stage_timeout": "30s"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let version = created["bundle_version"].clone();
    let done = until(
        "rollout completed",
        &logs,
        async || api.get(&format!("/api/v1/rollouts/{id}")).await.1,
        |r| r["state"] == "completed",
    )
    .await;
    assert_eq!(done["devices"][0]["state"], "applied", "{done}");
    assert_eq!(api.device("edge-1").await["bundle_version"], version);

    // The bundle's workflow runs on the agent; its executions reach the hub's view of the
    // device's health through the periodic status.
    let agent = reqwest::Client::new();
    for who in ["a", "b", "c"] {
        let reply = agent
            .post(format!("http://127.0.0.1:{agent_port}/greet"))
            .json(&json!({ "who": who }))
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "{}", reply.status());
    }
    let health = until(
        "health reported by the periodic status",
        &logs,
        async || api.device("edge-1").await["health"].clone(),
        |h| h["total"].as_i64().unwrap_or(0) >= 3,
    )
    .await;
    assert_eq!(health["failed"], 0, "{health}");
    assert!(health["window_secs"].as_i64().unwrap() <= 60, "{health}");

    // Commands.
    let (status, ping) = api
        .post(
            "/api/v1/devices/edge-1/commands?wait=10s",
            json!({"type": "ping", "nonce": 9}),
        )
        .await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["result"], json!({"outcome": "pong", "nonce": 9}));
    let (status, run) = api
        .post(
            "/api/v1/devices/edge-1/commands?wait=10s",
            json!({"type": "run_workflow", "workflow": "greet", "input": {"who": "hub"}}),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["result"]["outcome"], "started", "{run}");
    let execution = run["result"]["execution"].as_str().unwrap().to_string();
    let known = agent
        .get(format!(
            "http://127.0.0.1:{agent_port}/api/v1/executions/{execution}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(known.status().as_u16(), 200, "the agent ran {execution}");
    let (status, cancel) = api
        .post(
            "/api/v1/devices/edge-1/commands?wait=10s",
            json!({"type": "cancel_execution", "execution": ulid::Ulid::new().to_string()}),
        )
        .await;
    assert_eq!(status, 200, "{cancel}");
    assert_eq!(cancel["result"]["outcome"], "not_found");
}
