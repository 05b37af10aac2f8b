//! Harness for tests that drive the real `reactor-hub` and `reactor-agent` binaries together.
//!
//! Neither binary belongs to this crate, so `cargo test -p reactor-tests` does not build
//! them. [`binaries`] uses the ones next to this test executable when they are newer than
//! every source file of the crates they are built from (`cargo test --workspace` builds both
//! before running any test), and otherwise runs `cargo build` for both, once per test
//! process, into the same target folder. Set `REACTOR_BIN_DIR` to use binaries built
//! elsewhere instead.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Paths of the two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub hub: PathBuf,
    pub agent: PathBuf,
}

/// Builds (if needed) and returns both binaries of the workspace.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let dir = match std::env::var_os("REACTOR_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => build(),
        };
        let binaries = Binaries {
            hub: dir.join("reactor-hub"),
            agent: dir.join("reactor-agent"),
        };
        assert!(
            binaries.hub.exists(),
            "{} is missing",
            binaries.hub.display()
        );
        assert!(
            binaries.agent.exists(),
            "{} is missing",
            binaries.agent.display()
        );
        binaries
    })
}

/// The newest modification time of the files under `path`.
fn newest(path: &Path) -> std::time::SystemTime {
    let Ok(metadata) = std::fs::metadata(path) else {
        return std::time::SystemTime::UNIX_EPOCH;
    };
    let mut newest = metadata.modified().unwrap();
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            newest = newest.max(self::newest(&entry.path()));
        }
    }
    newest
}

/// Whether both binaries in `dir` are newer than the sources they are built from.
fn fresh(dir: &Path, workspace: &Path) -> bool {
    let built = ["reactor-hub", "reactor-agent"]
        .iter()
        .map(|name| std::fs::metadata(dir.join(name)).and_then(|m| m.modified()))
        .collect::<Result<Vec<_>, _>>();
    let Ok(built) = built else {
        return false;
    };
    let sources = [
        "Cargo.lock",
        "shared/src",
        "agent/src",
        "hub/src",
        "hub/migrations",
        "hub/triggers/src",
    ]
    .iter()
    .map(|path| newest(&workspace.join(path)))
    .max()
    .unwrap();
    built.into_iter().all(|time| time > sources)
}

/// The folder of both binaries next to this test executable (`TARGET/PROFILE/deps/…` →
/// `TARGET/PROFILE`), built there by `cargo build` unless [`fresh`].
fn build() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target = profile_dir.parent().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    if fresh(&profile_dir, workspace) {
        return profile_dir;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "-p", "reactor-hub", "-p", "reactor-agent"])
        .args(["--bin", "reactor-hub", "--bin", "reactor-agent"])
        .env("CARGO_TARGET_DIR", target);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        command.arg("--release");
    }
    let status = command.status().unwrap();
    assert!(status.success(), "building the binaries failed");
    profile_dir
}

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
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A child process whose stderr goes to a log file; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Starts `command` with stderr appended to `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Process {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        command
            .env("RUST_LOG", "info")
            .env_remove("REACTOR_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(stderr);
        Process {
            child: Some(command.spawn().unwrap()),
            log: log.to_path_buf(),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL; returns once the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits (30 s at most) for the exit.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "did not stop: {}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `GET base/healthz` until 200.
pub async fn healthy(base: &str, process: &Process, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(response) = client().get(format!("{base}/healthz")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "not healthy: {}", process.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real hub: `serve` on fixed ports (so a restarted hub is found at the same address),
/// SQLite in `data`.
#[derive(Debug)]
pub struct Hub {
    pub data: PathBuf,
    pub http: u16,
    pub mqtt: u16,
    pub process: Option<Process>,
    pub extra: Vec<String>,
}

impl Hub {
    pub fn new(data: &Path, extra: &[&str]) -> Hub {
        std::fs::create_dir_all(data).unwrap();
        Hub {
            data: data.to_path_buf(),
            http: free_port(),
            mqtt: free_port(),
            process: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Starts `serve --mqtt-listen` and waits until it is healthy.
    pub async fn start(&mut self) {
        let mut command = Command::new(&binaries().hub);
        command
            .arg("serve")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.http))
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{}", self.mqtt))
            .args(&self.extra)
            .current_dir(&self.data);
        let process = Process::spawn(command, &self.data.with_extension("log"));
        healthy(&self.base(), &process, Duration::from_secs(60)).await;
        self.process = Some(process);
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// `reactor-hub device add NAME --labels …` → the one-time token (last line).
    pub fn add_device(&self, name: &str, labels: &str) -> String {
        let output = Command::new(&binaries().hub)
            .args(["device", "add", name, "--labels", labels, "--data"])
            .arg(&self.data)
            .env_remove("REACTOR_DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "device add: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout.lines().last().unwrap().trim().to_string()
    }

    /// The hub's SQLite database, opened alongside the running hub (WAL: readers do not
    /// block it).
    pub async fn database(&self) -> sqlx::SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.data.join("hub.db"))
            .busy_timeout(Duration::from_secs(10));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }
}

/// The real agent (`run --workflows W --data D --listen 127.0.0.1:PORT`).
#[derive(Debug)]
pub struct Agent {
    pub process: Process,
    pub base: String,
}

impl Agent {
    /// Starts the agent on a free port and waits until it is healthy.
    pub async fn start(workflows: &Path, data: &Path, env: &[(&str, &str)]) -> Agent {
        let port = free_port();
        let mut command = Command::new(&binaries().agent);
        command
            .arg("run")
            .arg("--workflows")
            .arg(workflows)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        for (name, value) in env {
            command.env(name, value);
        }
        let process = Process::spawn(command, &data.with_extension("log"));
        let base = format!("http://127.0.0.1:{port}");
        healthy(&base, &process, Duration::from_secs(30)).await;
        Agent { process, base }
    }

    /// `reactor-agent enroll --hub URL --token T --data D`; panics unless it succeeds.
    pub fn enroll(hub: &str, token: &str, data: &Path) {
        let output = Command::new(&binaries().agent)
            .args(["enroll", "--hub", hub, "--token", token, "--data"])
            .arg(data)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "enroll: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = client()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
