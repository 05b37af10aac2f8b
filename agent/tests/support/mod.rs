//! Harness shared by the agent's end-to-end tests: the real `reactor-agent run` binary on
//! 127.0.0.1 with a temporary data folder, driven over HTTP.
//!
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_reactor-agent");

#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub base: String,
    log: PathBuf,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    /// Starts the agent on a free port and waits for /healthz 200.
    pub async fn start(workflows: &Path, data: &Path, extra: &[(&str, &str)]) -> Agent {
        let agent = Agent::spawn(workflows, data, free_port(), extra);
        agent.healthy(Duration::from_secs(20)).await;
        agent
    }

    /// Starts the agent on `port` without waiting for it. Its stderr is appended to
    /// `DATA.PORT.log` (one file for all the incarnations on that port).
    pub fn spawn(workflows: &Path, data: &Path, port: u16, extra: &[(&str, &str)]) -> Agent {
        let log = data.with_extension(format!("{port}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .arg("--workflows")
            .arg(workflows)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in extra {
            command.env(name, value);
        }
        Agent {
            child: Some(command.spawn().unwrap()),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits for /healthz 200.
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
                "agent not healthy: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = client().get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls an execution until it is finished.
    pub async fn finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(&format!("/api/v1/executions/{id}")).await;
            if status == 200 && !matches!(body["status"].as_str(), Some("running" | "queued")) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} not finished: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILL: no shutdown, no checkpoint; returns once the process is gone.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}
