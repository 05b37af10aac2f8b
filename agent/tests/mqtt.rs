//! End-to-end MQTT tests of `reactor-agent run` against the Mosquitto on 127.0.0.1:1883: the
//! real binary, a real broker, a rumqttc test client. Each test works under a topic prefix
//! of its own (`reactor-test/{ulid}/…`) and a device id of its own (so the agent's persistent
//! sessions are never shared between tests or runs), and clears any retained message it may
//! have left.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_reactor-agent");
const BROKER: &str = "mqtt://127.0.0.1:1883";

struct Agent {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent with `[mqtt]` pointing at the local broker and waits for /healthz 200.
    async fn start(workflows: &Path, data: &Path, device: &str) -> Agent {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = data.with_extension(format!("{port}.log"));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--workflows")
            .arg(workflows)
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .env("REACTOR_MQTT__URL", BROKER)
            .env("REACTOR_DEVICE__ID", device)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Agent {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = http().get(agent.url("/healthz")).send().await
                && response.status() == 200
            {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent not healthy: {}",
                agent.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `count` lines containing `text`.
    async fn wait_log(&self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.logs().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Finished executions of `workflow` once there are `count` (newest first).
    async fn executions(&self, workflow: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body: Value = http()
                .get(self.url(&format!("/api/v1/executions?workflow={workflow}&limit=500")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let list = body["executions"].as_array().cloned().unwrap_or_default();
            let finished = list
                .iter()
                .filter(|e| !matches!(e["status"].as_str(), Some("running" | "queued")))
                .count();
            if list.len() >= count && finished == list.len() {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} executions: {body}\n{}",
                list.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
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

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A unique topic prefix and device id for one test.
fn unique() -> (String, String) {
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    (format!("reactor-test/{id}"), format!("t{}", &id[16..]))
}

/// A test client: clean session, messages of its subscriptions on a channel.
struct TestClient {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Publish>,
    acks: Arc<AtomicUsize>,
    subacks: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    async fn connect(name: &str) -> TestClient {
        let mut options = MqttOptions::new(name, "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(true);
        options.set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 512);
        let (sender, messages) = mpsc::unbounded_channel();
        let acks = Arc::new(AtomicUsize::new(0));
        let subacks = Arc::new(AtomicUsize::new(0));
        let (task_acks, task_subacks) = (acks.clone(), subacks.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = sender.send(publish);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        task_acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        task_subacks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        TestClient {
            client,
            messages,
            acks,
            subacks,
            task,
        }
    }

    async fn subscribe(&self, filter: &str) {
        let before = self.subacks.load(Ordering::SeqCst);
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        wait_until(|| self.subacks.load(Ordering::SeqCst) > before, "SUBACK").await;
    }

    /// Publishes QoS 1 messages and waits for every PUBACK.
    async fn publish_all(&self, messages: &[(String, Value)]) {
        let before = self.acks.load(Ordering::SeqCst);
        for (topic, payload) in messages {
            self.client
                .publish(
                    topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(payload).unwrap(),
                )
                .await
                .unwrap();
        }
        let want = before + messages.len();
        wait_until(|| self.acks.load(Ordering::SeqCst) >= want, "PUBACKs").await;
    }

    /// Messages received until `count` arrived, then anything more within `settle`.
    async fn receive(&mut self, count: usize, settle: Duration) -> Vec<Publish> {
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while received.len() < count {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(message)) => received.push(message),
                _ => break,
            }
        }
        while let Ok(Some(message)) = tokio::time::timeout(settle, self.messages.recv()).await {
            received.push(message);
        }
        received
    }

    /// Clears any retained message under `topics` (an empty retained publish).
    async fn clear_retained(&self, topics: &[String]) {
        let before = self.acks.load(Ordering::SeqCst);
        for topic in topics {
            self.client
                .publish(topic.as_str(), QoS::AtLeastOnce, true, Vec::new())
                .await
                .unwrap();
        }
        let want = before + topics.len();
        wait_until(|| self.acks.load(Ordering::SeqCst) >= want, "PUBACKs").await;
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn folders() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    let data = dir.path().join("data");
    (dir, workflows, data)
}

const ALERTS: &str = r#"
reactor: 1
name: alerts
triggers:
  - mqtt: { topic: "PREFIX/sensors/+/temp", qos: 1 }
if: ${{ event.data.temp > 30 && event.data.zone == "A" }}
steps:
  - id: alert
    action: mqtt.publish
    with:
      topic: "PREFIX/alerts/${{ event.meta.topic }}"
      payload: { n: "${{ event.data.n }}", temp: "${{ event.data.temp }}" }
      qos: 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_readings_become_alerts() {
    let (prefix, device) = unique();
    let (_dir, workflows, data) = folders();
    write(
        &workflows,
        "alerts.yaml",
        &ALERTS.replace("PREFIX", &prefix),
    );
    let agent = Agent::start(&workflows, &data, &device).await;
    agent.wait_log("MQTT subscribed", 1).await;

    let mut client = TestClient::connect(&format!("{device}-test")).await;
    client.subscribe(&format!("{prefix}/alerts/#")).await;
    // Half match: even n are hot in zone A; odd n are either cold in A or hot in B.
    let readings: Vec<(String, Value)> = (0..100)
        .map(|n| {
            let (temp, zone) = match n % 4 {
                0 | 2 => (31 + n % 7, "A"),
                1 => (20, "A"),
                _ => (40, "B"),
            };
            (
                format!("{prefix}/sensors/s{n}/temp"),
                json!({ "n": n, "temp": temp, "zone": zone }),
            )
        })
        .collect();
    client.publish_all(&readings).await;

    let alerts = client.receive(50, Duration::from_millis(500)).await;
    let got: BTreeSet<(String, i64)> = alerts
        .iter()
        .map(|p| {
            let body: Value = serde_json::from_slice(&p.payload).unwrap();
            (p.topic.clone(), body["n"].as_i64().unwrap())
        })
        .collect();
    let want: BTreeSet<(String, i64)> = (0..100)
        .filter(|n| n % 2 == 0)
        .map(|n| (format!("{prefix}/alerts/{prefix}/sensors/s{n}/temp"), n))
        .collect();
    assert_eq!(alerts.len(), 50, "{:?}", got);
    assert_eq!(got, want);

    let executions = agent.executions("alerts", 50).await;
    assert_eq!(executions.len(), 50);
    assert!(
        executions.iter().all(|e| e["status"] == "succeeded"),
        "{executions:?}"
    );

    // The trigger is up and counted 100 events (50 skipped by `if`).
    let metrics = http()
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let up = metrics
        .lines()
        .find(|l| l.starts_with("reactor_trigger_up{") && l.contains("kind=\"mqtt\""));
    assert!(up.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
    let events = metrics
        .lines()
        .find(|l| l.starts_with("reactor_trigger_events_total{") && l.contains("kind=\"mqtt\""));
    assert!(events.is_some_and(|l| l.ends_with(" 100")), "{metrics}");

    let mut topics: Vec<String> = readings.into_iter().map(|(t, _)| t).collect();
    topics.extend(want.into_iter().map(|(t, _)| t));
    client.clear_retained(&topics).await;
}

const COUNTER: &str = r#"
reactor: 1
name: counter
triggers:
  - mqtt: { topic: "PREFIX/q/+", qos: 1 }
steps:
  - id: seen
    action: transform
    with: { value: "${{ event.data.n }}" }
output: { n: "${{ steps.seen.output }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_what_was_published_while_stopped() {
    let (prefix, device) = unique();
    let (_dir, workflows, data) = folders();
    write(
        &workflows,
        "counter.yaml",
        &COUNTER.replace("PREFIX", &prefix),
    );
    let client = TestClient::connect(&format!("{device}-test")).await;
    let batch = |range: std::ops::Range<i64>| -> Vec<(String, Value)> {
        range
            .map(|n| (format!("{prefix}/q/{n}"), json!({ "n": n })))
            .collect()
    };

    let mut agent = Agent::start(&workflows, &data, &device).await;
    agent.wait_log("MQTT subscribed", 1).await;
    client.publish_all(&batch(0..5)).await;
    agent.executions("counter", 5).await;
    assert!(agent.terminate().success(), "{}", agent.logs());
    // Shutdown order: the publisher disconnects after the executions, before the journal.
    let logs = agent.logs();
    let order: Vec<usize> = [
        "checkpointing running executions",
        "disconnecting MQTT publishers",
        "reactor-agent stopped",
    ]
    .iter()
    .map(|line| {
        logs.find(line)
            .unwrap_or_else(|| panic!("no {line:?}: {logs}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{logs}");

    // The agent is away: the broker keeps QoS 1 messages for its session.
    client.publish_all(&batch(5..25)).await;

    let agent = Agent::start(&workflows, &data, &device).await;
    let executions = agent.executions("counter", 25).await;
    let mut seen: Vec<i64> = Vec::new();
    for execution in &executions {
        let id = execution["id"].as_str().unwrap();
        let body: Value = http()
            .get(agent.url(&format!("/api/v1/executions/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "succeeded", "{body}");
        seen.push(body["output"]["n"].as_i64().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
    assert!(
        agent.logs().contains("session_present=true"),
        "{}",
        agent.logs()
    );

    let topics: Vec<String> = batch(0..25).into_iter().map(|(t, _)| t).collect();
    client.clear_retained(&topics).await;
}

const EMITTER: &str = r#"
reactor: 1
name: emitter
triggers:
  - http: { path: /emit }
steps:
  - emit:
      type: temp.high
      data: { temp: "${{ event.data.temp }}" }
      topic: "PREFIX/events/temp"
output: { ok: true }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_with_a_topic_publishes_the_event() {
    let (prefix, device) = unique();
    let (_dir, workflows, data) = folders();
    write(
        &workflows,
        "emitter.yaml",
        &EMITTER.replace("PREFIX", &prefix),
    );
    let agent = Agent::start(&workflows, &data, &device).await;
    let mut client = TestClient::connect(&format!("{device}-test")).await;
    client.subscribe(&format!("{prefix}/events/#")).await;

    let response = http()
        .post(agent.url("/emit"))
        .json(&json!({ "temp": 42 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", agent.logs());

    let messages = client.receive(1, Duration::from_millis(300)).await;
    assert_eq!(messages.len(), 1, "{}", agent.logs());
    assert_eq!(messages[0].topic, format!("{prefix}/events/temp"));
    let body: Value = serde_json::from_slice(&messages[0].payload).unwrap();
    assert_eq!(body["type"], "temp.high");
    assert_eq!(body["data"], json!({ "temp": 42 }));
    assert_eq!(body["source"], "reactor:workflow/emitter");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body["time"].is_string());
    assert_eq!(body.as_object().unwrap().len(), 5, "{body}");

    client
        .clear_retained(&[format!("{prefix}/events/temp")])
        .await;
}

#[test]
fn a_bad_mqtt_section_is_refused_at_start() {
    let (_dir, _workflows, data) = folders();
    let output = Command::new(BIN)
        .arg("run")
        .arg("--data")
        .arg(&data)
        .env("REACTOR_MQTT__URL", "http://127.0.0.1:1883")
        .env("REACTOR_MQTT__PASSWORD_SECRET", "MISSING_ONE")
        .env("REACTOR_MQTT__USERNAME", "agent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REACTOR_MQTT__URL"), "{stderr}");
    assert!(stderr.contains("invalid url"), "{stderr}");
    assert!(stderr.contains("MISSING_ONE"), "{stderr}");
}
