//! The real agent on an external Mosquitto 2 whose logins the real hub provisions (dynamic
//! security), with bundles re-signed before they expire.
//!
//! A Mosquitto of this test's own (free port, generated config, `mosquitto_ctrl dynsec init`
//! with only an admin login); `reactor-hub serve` with `--mqtt-broker`, `[fleet] provision =
//! "mosquitto_dynsec"` and `bundle_renew_below = 0.5`; `reactor-hub device add`,
//! `reactor-agent enroll` and `run`. Checked: the agent logs into Mosquitto with the
//! credential enrollment handed it and shows online at the hub; a rollout of a 6 s bundle is
//! verified and installed by the agent (its workflow answers) and completes; the agent then
//! takes renewal after renewal (the hub sees its version grow) without installing anything
//! again or refusing a bundle, its workflow still answering; a ping from the hub is answered.
//!
//! Skipped, saying so, when `mosquitto`, `mosquitto_ctrl` or the plugin is missing.

mod fleet_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_support::{Agent, Hub, Process, binaries, client, free_port, healthy};
use serde_json::{Value, json};

const PLUGINS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
];

const GREET: &str = "reactor: 1\nname: greet\ntriggers:\n  - http: { path: /greet, method: POST }\nsteps:\n  - return: \"hello ${{ event.data.who }}\"\n";

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .chain([Path::new("/usr/sbin").join(binary)])
        .find(|path| path.is_file())
}

async fn until<T: std::fmt::Debug>(
    what: &str,
    logs: &[&Process],
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = probe().await;
        if check(&value) {
            return value;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.logs()).collect();
            panic!("{what}: {value:?}\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn device(&self, id: &str) -> Value {
        let (_, list) = self
            .call(reqwest::Method::GET, "/api/v1/devices", None)
            .await;
        list["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_agent_on_provisioned_mosquitto_keeps_renewed_bundles() {
    let (Some(mosquitto), Some(ctrl)) = (which("mosquitto"), which("mosquitto_ctrl")) else {
        eprintln!("SKIPPED: `mosquitto` or `mosquitto_ctrl` is not installed");
        return;
    };
    let Some(plugin) = PLUGINS.iter().find(|p| Path::new(p).is_file()) else {
        eprintln!("SKIPPED: Mosquitto's dynamic-security plugin is not installed");
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    // Mosquitto started as root drops to its own user, which must write the plugin's file.
    let broker_dir = temp.path().join("broker");
    std::fs::create_dir(&broker_dir).unwrap();
    let dynsec = broker_dir.join("dynsec.json");
    let init = Command::new(ctrl)
        .args(["dynsec", "init"])
        .arg(&dynsec)
        .args(["broker-admin", "admin-secret"])
        .output()
        .unwrap();
    assert!(init.status.success());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mode(temp.path(), 0o755);
        mode(&broker_dir, 0o777);
        mode(&dynsec, 0o666);
    }
    let port = free_port();
    let conf = broker_dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous false\nlistener {port} 127.0.0.1\n\
             plugin {plugin}\nplugin_opt_config_file {}\n",
            dynsec.display()
        ),
    )
    .unwrap();
    let mut command = Command::new(mosquitto);
    command.arg("-c").arg(&conf);
    let _broker = Process::spawn(command, &broker_dir.join("mosquitto.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The hub: an external broker, provisioning, 6 s bundles renewed at half their life.
    let hub_dir = temp.path().join("hub");
    let hub = Hub::new(&hub_dir, &[]);
    let token = Command::new(&binaries().hub)
        .args(["token", "create", "--role", "admin", "--data"])
        .arg(&hub_dir)
        .env_remove("REACTOR_DATABASE_URL")
        .output()
        .unwrap();
    assert!(token.status.success());
    let api = Api {
        base: hub.base(),
        token: String::from_utf8(token.stdout).unwrap().trim().to_string(),
    };
    let mut command = Command::new(&binaries().hub);
    command
        .arg("serve")
        .arg("--data")
        .arg(&hub_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", hub.http))
        .env(
            "REACTOR_MQTT_BROKER",
            format!("mqtt://reactor-hub:hub-secret@127.0.0.1:{port}"),
        )
        .env("REACTOR_FLEET__PROVISION", "mosquitto_dynsec")
        .env("REACTOR_FLEET__PROVISION_USERNAME", "broker-admin")
        .env("REACTOR_FLEET__PROVISION_PASSWORD", "admin-secret")
        .env("REACTOR_FLEET__BUNDLE_RENEW_BELOW", "0.5")
        .current_dir(&hub_dir);
    let hub_process = Process::spawn(command, &hub_dir.with_extension("log"));
    healthy(&hub.base(), &hub_process, Duration::from_secs(60)).await;

    // Enrollment with both CLIs; the agent connects to Mosquitto with what it was handed.
    let enroll_token = hub.add_device("edge-dyn", "site=lab");
    let agent_data = temp.path().join("agent");
    Agent::enroll(&hub.base(), &enroll_token, &agent_data);
    let workflows = temp.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let agent = Agent::start(&workflows, &agent_data, &[]).await;
    let logs = [&hub_process, &agent.process];
    until(
        "agent online",
        &logs,
        async || api.device("edge-dyn").await,
        |d| d["online"] == true,
    )
    .await;

    // A rollout of a bundle that lives 6 s.
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/rollouts",
            Some(json!({"workflows": [GREET], "selector": {"site": "lab"}, "expires_in": "6s",
                        "strategy": {"canary": 1, "steps": [100]},
                        "gate": {"max_failure_rate": 0.5, "observe": "1s", "stage_timeout": "30s"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let first = created["bundle_version"].as_u64().unwrap();
    until(
        "rollout completed",
        &logs,
        async || {
            api.call(
                reqwest::Method::GET,
                &format!("/api/v1/rollouts/{id}"),
                None,
            )
            .await
            .1
        },
        |r| r["state"] == "completed",
    )
    .await;
    let (status, body) = agent.post("/greet", json!({"who": "a"})).await;
    assert_eq!(status, 200, "{body}");

    // Renewals: the agent reports a version at least two renewals above the rollout's.
    until(
        "the agent takes renewals",
        &logs,
        async || api.device("edge-dyn").await["bundle_version"].as_u64(),
        |v| v.is_some_and(|v| v >= first + 2),
    )
    .await;
    let agent_logs = agent.process.logs();
    assert!(agent_logs.contains("nothing reinstalled"), "{agent_logs}");
    assert!(!agent_logs.contains("bundle refused"), "{agent_logs}");
    assert_eq!(
        agent_logs.matches("workflow active workflow=greet").count(),
        1,
        "the workflow was installed again: {agent_logs}"
    );
    let (status, body) = agent.post("/greet", json!({"who": "b"})).await;
    assert_eq!(status, 200, "{body}");

    // Hub → agent over the provisioned roles.
    let (status, ping) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/devices/edge-dyn/commands?wait=10s",
            Some(json!({"type": "ping", "nonce": 3})),
        )
        .await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["result"], json!({"outcome": "pong", "nonce": 3}));
    assert!(hub_process.logs().contains("bundle renewed"));
}
