//! Rollouts end to end: the real `reactor-hub serve --mqtt-listen` (PostgreSQL) and 100
//! simulated agents on real MQTT through the hub's device endpoint (enrolled through the
//! real API; bundles verified with reactor-core's `BundleVerifier`; health in their
//! statuses). 20 % of them report failures once they run a bundle with a `faulty…` workflow.
//!
//! Checked: an invalid workflow is refused with its position; a healthy rollout completes
//! stage by stage; devices offline during it converge when they reconnect; a bad rollout is
//! stopped by the health gate before more than the canary plus one step received it, and
//! every device that took it runs the previous workflows again under a new, higher version;
//! a second rollout is refused while one runs; commands reach a device and its answer is
//! stored; `GET /api/v1/devices` shows versions and health.
//!
//! The 1,000-device rollout bench is the ignored `rollout_bench` (benches/load/run-fleet-rollout.sh).

mod api_support;
mod fleet_support;

use std::time::{Duration, Instant};

use api_support::{Hub, PgDatabase, Place, free_port};
use fleet_support::enroll;
use fleet_support::sim::Sim;
use reactor_hub::db::Database;
use serde_json::{Value, json};

const HELLO: &str =
    "reactor: 1\nname: hello\ntriggers:\n  - event: { type: ping }\nsteps:\n  - return: hi\n";
const FAULTY: &str = "reactor: 1\nname: faulty-hello\ntriggers:\n  - event: { type: ping }\nsteps:\n  - return: oops\n";

/// Starts the hub on its own PostgreSQL database with the device endpoint.
async fn start_hub() -> (Hub, PgDatabase, Database, u16, tempfile::TempDir) {
    let log = std::env::var("REACTOR_ROLLOUT_LOG").unwrap_or_else(|_| "info".into());
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = Place {
        data: dir.path().join("data"),
        database: Some(pg.url.clone()),
    };
    let mqtt = free_port();
    let listen = format!("127.0.0.1:{mqtt}");
    let hub = Hub::start(
        place,
        &[("REACTOR_MQTT_LISTEN", listen.as_str()), ("RUST_LOG", &log)],
    )
    .await;
    let db = Database::open_postgres(&pg.url).await.unwrap();
    (hub, pg, db, mqtt, dir)
}

/// Adds and enrolls `n` devices `{prefix}-000…` (labels `site=lab`); every fifth one (index
/// 2, 7, …) is flaky.
async fn enroll_sims(hub: &Hub, db: &Database, prefix: &str, n: usize, port: u16) -> Vec<Sim> {
    let labels = reactor_hub::fleet::registry::parse_labels(&["site=lab"]).unwrap();
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}-{i:04}");
        let token =
            reactor_hub::fleet::registry::add_device(db, &name, &labels, Duration::from_secs(600))
                .await
                .unwrap();
        let reply = enroll(hub, &token).await.expect(200);
        sims.push(Sim::new(&reply.body, port, i % 5 == 2));
    }
    sims
}

/// Polls until `check` holds (within `within`), returning the last value.
async fn until<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + within;
    loop {
        let value = probe().await;
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {value:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rollout(hub: &Hub, id: &str) -> Value {
    hub.get(&format!("/api/v1/rollouts/{id}"))
        .await
        .expect(200)
        .body
}

async fn rollout_until(hub: &Hub, id: &str, states: &[&str], within: Duration) -> Value {
    until(
        within,
        "rollout state",
        async || rollout(hub, id).await,
        |r| states.contains(&r["state"].as_str().unwrap_or_default()),
    )
    .await
}

fn device_states(rollout: &Value) -> std::collections::HashMap<String, String> {
    rollout["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn gate() -> Value {
    json!({"max_failure_rate": 0.05, "min_executions": 1, "observe": "1s", "stage_timeout": "60s"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_gate_rollback_and_convergence() {
    let (hub, pg, db, port, _dir) = start_hub().await;
    let mut sims = enroll_sims(&hub, &db, "sim", 100, port).await;
    // Five devices stay offline during the first rollout.
    let offline: Vec<usize> = vec![11, 33, 55, 77, 99];
    for (i, sim) in sims.iter_mut().enumerate() {
        if !offline.contains(&i) {
            sim.connect();
        }
    }
    until(
        Duration::from_secs(30),
        "95 devices online",
        async || {
            let list = hub.get("/api/v1/devices").await.expect(200).body;
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
        },
        |n| *n == 95,
    )
    .await;

    // An invalid workflow is refused before anything is signed, with its position.
    let invalid = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO, "reactor: 1\nname: broken\nsteps:\n  - nope: 1\n"]}),
        )
        .await
        .problem(422);
    let problems = invalid.body["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .all(|p| p.as_str().unwrap().starts_with("workflows[1]:")),
        "{}",
        invalid.text
    );
    // Nothing matches → refused.
    hub.post_json(
        "/api/v1/rollouts",
        json!({"workflows": [HELLO], "selector": {"site": "moon"}}),
    )
    .await
    .problem(422);

    // A healthy rollout: canary 5, then 50 %, then everyone.
    let started = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "selector": {"site": "lab"},
                   "strategy": {"canary": 5, "steps": [50, 100]}, "gate": gate()}),
        )
        .await
        .expect(201)
        .body;
    let good = started["id"].as_str().unwrap().to_string();
    let v1 = started["bundle_version"].as_u64().unwrap();
    assert_eq!(started["stages"], json!([5, 50, 100]));
    // Another rollout while this one runs is refused.
    hub.post_json("/api/v1/rollouts", json!({"workflows": [HELLO]}))
        .await
        .problem(409);
    let done = rollout_until(&hub, &good, &["completed"], Duration::from_secs(60)).await;
    let states = device_states(&done);
    for (i, sim) in sims.iter().enumerate() {
        let state = &states[sim.id.as_str()];
        if offline.contains(&i) {
            assert_eq!(state, "sent", "{} was offline", sim.id.as_str());
            assert_eq!(sim.snapshot().active, None);
        } else {
            assert_eq!(state, "applied", "{}", sim.id.as_str());
            assert_eq!(sim.snapshot().active, Some(v1));
            assert_eq!(sim.snapshot().workflows, ["hello"]);
        }
    }
    // The offline devices converge when they come back.
    for &i in &offline {
        sims[i].connect();
    }
    until(
        Duration::from_secs(30),
        "offline devices converge",
        async || {
            offline
                .iter()
                .map(|&i| sims[i].snapshot().active)
                .collect::<Vec<_>>()
        },
        |versions| versions.iter().all(|v| *v == Some(v1)),
    )
    .await;
    until(
        Duration::from_secs(15),
        "their rollout state becomes applied",
        async || device_states(&rollout(&hub, &good).await),
        |states| states.values().all(|s| s == "applied"),
    )
    .await;

    // `GET /api/v1/devices`: versions, labels, online, last seen, health.
    let devices = hub.get("/api/v1/devices").await.expect(200).body;
    let first = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "sim-0000")
        .unwrap()
        .clone();
    assert_eq!(first["bundle_version"], json!(v1), "{first}");
    assert_eq!(first["agent_version"], "sim-1");
    assert_eq!(first["labels"]["site"], "lab");
    assert_eq!(first["online"], true);
    assert!(first["last_seen"].as_i64().unwrap() > 0);
    assert_eq!(first["health"]["total"], 20, "{first}");

    // Commands: a ping is answered; the answer is stored and visible.
    let ping = hub
        .post_json(
            "/api/v1/devices/sim-0000/commands?wait=10s",
            json!({"type": "ping", "nonce": 42}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(ping["state"], "answered", "{ping}");
    assert_eq!(ping["result"], json!({"outcome": "pong", "nonce": 42}));
    let id = ping["id"].as_i64().unwrap();
    let stored = hub
        .get(&format!("/api/v1/devices/sim-0000/commands/{id}"))
        .await
        .expect(200)
        .body;
    assert_eq!(stored["result"]["outcome"], "pong");
    let run = hub
        .post_json(
            "/api/v1/devices/sim-0001/commands",
            json!({"type": "run_workflow", "workflow": "hello", "input": {"x": 1}}),
        )
        .await
        .expect(202)
        .body;
    let run_id = run["id"].as_i64().unwrap();
    let answered = until(
        Duration::from_secs(10),
        "run_workflow answered",
        async || {
            hub.get(&format!("/api/v1/devices/sim-0001/commands/{run_id}"))
                .await
                .body
        },
        |c| c["state"] == "answered",
    )
    .await;
    assert_eq!(answered["result"]["outcome"], "refused");
    hub.post_json("/api/v1/devices/nobody/commands", json!({"type": "ping"}))
        .await
        .problem(404);
    hub.post_json(
        "/api/v1/devices/sim-0000/commands",
        json!({"type": "reboot"}),
    )
    .await
    .problem(422);

    // A bad rollout: 20 % of the devices fail with it. Stages 5, 30, 60, 100.
    let bad = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [FAULTY], "selector": {"site": "lab"},
                   "strategy": {"canary": 5, "steps": [30, 60, 100]}, "gate": gate()}),
        )
        .await
        .expect(201)
        .body;
    let bad_id = bad["id"].as_str().unwrap().to_string();
    let v2 = bad["bundle_version"].as_u64().unwrap();
    assert!(v2 > v1);
    let stages: Vec<u64> = serde_json::from_value(bad["stages"].clone()).unwrap();
    assert_eq!(stages, [5, 30, 60, 100]);
    let stopped = rollout_until(&hub, &bad_id, &["rolled_back"], Duration::from_secs(60)).await;
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("health gate failed"),
        "{stopped}"
    );
    let took: Vec<&Sim> = sims
        .iter()
        .filter(|s| s.snapshot().accepted.contains(&v2))
        .collect();
    assert!(!took.is_empty());
    eprintln!(
        "bad rollout: {} device(s) received version {v2}; {}",
        took.len(),
        stopped["reason"]
    );
    assert!(
        took.len() as u64 <= stages[1],
        "{} devices received the bad bundle; at most canary + one step ({})",
        took.len(),
        stages[1]
    );
    // Every device that was sent it (took it, or was about to) runs the previous workflows
    // again, under a new, higher version; the others were never touched.
    let states = device_states(&stopped);
    let sent: Vec<&Sim> = sims
        .iter()
        .filter(|s| states[s.id.as_str()] != "skipped")
        .collect();
    for sim in &took {
        assert_ne!(states[sim.id.as_str()], "skipped", "{}", sim.id.as_str());
    }
    until(
        Duration::from_secs(30),
        "devices sent the bad bundle roll back",
        async || {
            sent.iter()
                .map(|s| (s.snapshot().active, s.snapshot().workflows))
                .collect::<Vec<_>>()
        },
        |now| {
            now.iter()
                .all(|(v, w)| v.is_some_and(|v| v > v2) && w == &["hello"])
        },
    )
    .await;
    let states = device_states(&rollout(&hub, &bad_id).await);
    for sim in &sent {
        assert_eq!(
            states[sim.id.as_str()],
            "rolled_back",
            "{}",
            sim.id.as_str()
        );
    }
    for sim in sims.iter().filter(|s| states[s.id.as_str()] == "skipped") {
        assert_eq!(sim.snapshot().active, Some(v1), "{}", sim.id.as_str());
        assert!(!sim.snapshot().accepted.contains(&v2));
    }
    // At least one flaky canary device was judged unhealthy.
    let judged = stopped["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["judged_health"]["failed"].as_i64().unwrap_or(0) > 0)
        .count();
    assert!(judged >= 1, "{stopped}");
    // The list shows both.
    let list = hub.get("/api/v1/rollouts").await.expect(200).body;
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 2);

    db.close().await;
    drop(sims);
    drop(hub);
    pg.drop_now().await;
}

/// A hub stopped in the middle of a rollout resumes it when it starts again (state in SQL);
/// the devices (which reconnect on their own) converge although the new embedded broker has
/// no retained bundle: the hub sends it when their status shows an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_hub_resumes_the_rollout() {
    let (mut hub, pg, db, port, _dir) = start_hub().await;
    let mut sims = enroll_sims(&hub, &db, "restart", 20, port).await;
    for sim in &mut sims {
        sim.connect();
    }
    until(
        Duration::from_secs(30),
        "20 devices online",
        async || {
            let list = hub.get("/api/v1/devices").await.expect(200).body;
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
        },
        |n| *n == 20,
    )
    .await;
    let created = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "strategy": {"canary": 2, "steps": [50, 100]},
                   "gate": {"max_failure_rate": 0.05, "observe": "4s", "stage_timeout": "60s"}}),
        )
        .await
        .expect(201)
        .body;
    let id = created["id"].as_str().unwrap().to_string();
    let version = created["bundle_version"].as_u64().unwrap();
    // The canary applied; the hub stops while the stage is being observed.
    until(
        Duration::from_secs(30),
        "canary applied",
        async || rollout(&hub, &id).await["counts"]["applied"].as_u64(),
        |n| *n == Some(2),
    )
    .await;
    assert_eq!(hub.terminate().code(), Some(0));
    assert_eq!(
        sims.iter()
            .filter(|s| s.snapshot().active == Some(version))
            .count(),
        2
    );
    let listen = format!("127.0.0.1:{port}");
    let hub = Hub::spawn(
        hub.place.clone(),
        hub.admin.clone(),
        &[("REACTOR_MQTT_LISTEN", listen.as_str())],
    );
    hub.healthy(Duration::from_secs(30)).await;
    let done = rollout_until(&hub, &id, &["completed"], Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["applied"], json!(20), "{}", done["counts"]);
    until(
        Duration::from_secs(30),
        "every device runs the bundle",
        async || {
            sims.iter()
                .filter(|s| s.snapshot().active == Some(version))
                .count()
        },
        |n| *n == 20,
    )
    .await;
    db.close().await;
    drop(sims);
    drop(hub);
    pg.drop_now().await;
}

/// `POST /api/v1/rollouts/{id}/abort` without rollback: the rollout stops, devices keep
/// what they took, pending ones are skipped; a stopped rollout cannot be aborted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_without_rollback_keeps_what_devices_took() {
    let (hub, pg, db, port, _dir) = start_hub().await;
    let mut sims = enroll_sims(&hub, &db, "abort", 6, port).await;
    for sim in &mut sims {
        sim.connect();
    }
    until(
        Duration::from_secs(30),
        "6 devices online",
        async || {
            let list = hub.get("/api/v1/devices").await.expect(200).body;
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
        },
        |n| *n == 6,
    )
    .await;
    let created = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "strategy": {"canary": 2, "steps": [100]},
                   "gate": {"observe": "60s", "stage_timeout": "120s"}}),
        )
        .await
        .expect(201)
        .body;
    let id = created["id"].as_str().unwrap().to_string();
    let version = created["bundle_version"].as_u64().unwrap();
    until(
        Duration::from_secs(30),
        "canary applied",
        async || rollout(&hub, &id).await["counts"]["applied"].as_u64(),
        |n| *n == Some(2),
    )
    .await;
    let aborted = hub
        .post_json(
            &format!("/api/v1/rollouts/{id}/abort"),
            json!({"rollback": false}),
        )
        .await
        .expect(200)
        .body;
    assert_eq!(aborted["state"], "aborted", "{aborted}");
    assert_eq!(aborted["counts"], json!({"applied": 2, "skipped": 4}));
    hub.post_json(&format!("/api/v1/rollouts/{id}/abort"), json!({}))
        .await
        .problem(409);
    hub.post_json("/api/v1/rollouts/nope/abort", json!({}))
        .await
        .problem(404);
    // Nothing more is sent: the canary keeps the bundle, the others never get it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running: Vec<Option<u64>> = sims.iter().map(|s| s.snapshot().active).collect();
    assert_eq!(running.iter().filter(|v| **v == Some(version)).count(), 2);
    assert_eq!(running.iter().filter(|v| v.is_none()).count(), 4);
    // A new rollout may start now.
    hub.post_json("/api/v1/rollouts", json!({"workflows": [HELLO]}))
        .await
        .expect(201);
    db.close().await;
    drop(sims);
    drop(hub);
    pg.drop_now().await;
}

/// Two hubs on one database, each with its own embedded broker: the devices are connected to
/// the second hub (a follower); the rollout is posted there too. Only the leader (the first
/// hub) drives it; the follower delivers the bundles to its devices, whose statuses it
/// ingests — and the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_drives_and_every_hub_delivers() {
    const KEY: &str = "cm9sbG91dC1tdWx0aS1odWItdGVzdC1rZXktMzJieXQ=";
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = |name: &str| Place {
        data: dir.path().join(name),
        database: Some(pg.url.clone()),
    };
    let (mqtt_a, mqtt_b) = (free_port(), free_port());
    let (listen_a, listen_b) = (format!("127.0.0.1:{mqtt_a}"), format!("127.0.0.1:{mqtt_b}"));
    let leader = Hub::start(
        place("a"),
        &[
            ("REACTOR_MQTT_LISTEN", &listen_a),
            ("REACTOR_SECRET_KEY", KEY),
        ],
    )
    .await;
    // Give the first hub the leadership before the second one starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let follower = Hub::start(
        place("b"),
        &[
            ("REACTOR_MQTT_LISTEN", &listen_b),
            ("REACTOR_SECRET_KEY", KEY),
        ],
    )
    .await;
    let db = Database::open_postgres(&pg.url).await.unwrap();
    let mut sims = enroll_sims(&follower, &db, "multi", 10, mqtt_b).await;
    for sim in &mut sims {
        sim.connect();
    }
    until(
        Duration::from_secs(30),
        "10 devices online",
        async || {
            let list = follower.get("/api/v1/devices").await.expect(200).body;
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
        },
        |n| *n == 10,
    )
    .await;
    let created = follower
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "strategy": {"canary": 2, "steps": [100]},
                   "gate": {"observe": "1s", "stage_timeout": "60s"}}),
        )
        .await
        .expect(201)
        .body;
    let id = created["id"].as_str().unwrap().to_string();
    let version = created["bundle_version"].as_u64().unwrap();
    let done = rollout_until(&follower, &id, &["completed"], Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["applied"], json!(10), "{}", done["counts"]);
    assert!(sims.iter().all(|s| s.snapshot().active == Some(version)));
    assert!(leader.logs().contains("rollout stage dispatched"));
    assert!(!follower.logs().contains("rollout stage dispatched"));
    db.close().await;
    drop(sims);
    drop(follower);
    drop(leader);
    pg.drop_now().await;
}

/// The rollout budget: `REACTOR_ROLLOUT_DEVICES` (default 1,000) connected simulated devices,
/// canary 10, then 50 %, then 100 %, gate observe `REACTOR_ROLLOUT_OBSERVE` (default 0s):
/// prints the time from `POST /api/v1/rollouts` to `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "bench: benches/load/run-fleet-rollout.sh"]
async fn rollout_bench() {
    let n: usize = std::env::var("REACTOR_ROLLOUT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let observe = std::env::var("REACTOR_ROLLOUT_OBSERVE").unwrap_or_else(|_| "0s".into());
    let (hub, pg, db, port, _dir) = start_hub().await;
    let enrolling = Instant::now();
    let mut sims = enroll_sims(&hub, &db, "bench", n, port).await;
    let enrolled = enrolling.elapsed();
    for sim in &mut sims {
        sim.connect();
    }
    let connected = until(
        Duration::from_secs(600),
        "sims connected",
        async || sims.iter().filter(|s| s.snapshot().connected).count(),
        |c| *c == n,
    );
    if tokio::time::timeout(Duration::from_secs(65), connected)
        .await
        .is_err()
    {
        let logs = hub.logs();
        let tail: Vec<&str> = logs.lines().rev().take(40).collect();
        panic!("not all connected; hub log tail: {tail:#?}");
    }
    let online = until(
        Duration::from_secs(600),
        "every device online",
        async || {
            let list = hub.get("/api/v1/devices").await.expect(200).body;
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
        },
        |online| *online == n,
    );
    if tokio::time::timeout(Duration::from_secs(65), online)
        .await
        .is_err()
    {
        let list = hub.get("/api/v1/devices").await.expect(200).body;
        let offline: Vec<&Value> = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["online"] != true)
            .take(3)
            .collect();
        let logs = hub.logs();
        let tail: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(40)
            .collect();
        panic!("not all online: {offline:#?}; hub warnings: {tail:#?}");
    }
    let start = Instant::now();
    let created = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "strategy": {"canary": 10, "steps": [50, 100]},
                   "gate": {"max_failure_rate": 0.05, "observe": observe, "stage_timeout": "120s"}}),
        )
        .await
        .expect(201)
        .body;
    let id = created["id"].as_str().unwrap().to_string();
    let version = created["bundle_version"].as_u64().unwrap();
    let done = rollout_until(&hub, &id, &["completed"], Duration::from_secs(120)).await;
    let took = start.elapsed();
    assert!(sims.iter().all(|s| s.snapshot().active == Some(version)));
    assert_eq!(done["counts"]["applied"], json!(n), "{}", done["counts"]);
    let last_accept = sims
        .iter()
        .filter_map(|s| s.snapshot().accepted_at)
        .max()
        .unwrap();
    eprintln!(
        "last device accepted the bundle {:.2} s after the POST",
        last_accept.duration_since(start).as_secs_f64()
    );
    for line in hub
        .logs()
        .lines()
        .filter(|l| l.contains("rollout") || l.contains("bundle sent"))
    {
        eprintln!("hub: {line}");
    }
    eprintln!(
        "fleet rollout: {n} devices, observe {observe}: completed in {:.2} s (enrollment {:.1} s)",
        took.as_secs_f64(),
        enrolled.as_secs_f64()
    );
    db.close().await;
    drop(sims);
    drop(hub);
    pg.drop_now().await;
}
