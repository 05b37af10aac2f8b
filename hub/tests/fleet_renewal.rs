//! Bundle renewal end to end: the real `reactor-hub serve --mqtt-listen` (SQLite and
//! PostgreSQL) with
//! `[fleet] bundle_renew_below = 0.5` and simulated agents on real MQTT through the device
//! endpoint (bundles verified by reactor-core's `BundleVerifier`). A rollout's bundle lives
//! 4 s, so the leader re-signs it about every 2 s.
//!
//! Checked: the rollout completes; the online devices accept renewal after renewal (versions
//! only grow, same workflows, the rollout and the desired bundle follow); a device offline
//! for longer than a bundle lives converges when it reconnects; no device is ever sent a
//! bundle whose expiry had passed (none refused at all); every renewal is stored with the
//! original's target and workflows; superseded bundles are pruned (the newest 5 and every
//! referenced one kept). Pruning itself is checked exactly, on both backends, in `pruning`.

mod api_support;
mod fleet_support;

use std::time::{Duration, Instant};

use api_support::{Hub, PgDatabase, Place, free_port};
use fleet_support::enroll;
use fleet_support::sim::Sim;
use reactor_hub::db::Database;
use serde_json::{Value, json};
use sqlx::Row;

const HELLO: &str =
    "reactor: 1\nname: hello\ntriggers:\n  - event: { type: ping }\nsteps:\n  - return: hi\n";

/// Polls until `check` holds (within `within`), returning the last value.
async fn until<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
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

async fn desired(db: &Database, device: &str) -> Option<u64> {
    reactor_hub::fleet::bundles::desired(db, device)
        .await
        .unwrap()
}

/// (version, target, workflows, purpose, rollout id, created, expires) of every bundle.
type BundleRow = (i64, String, String, String, Option<String>, i64, i64);

async fn bundle_rows(db: &Database) -> Vec<BundleRow> {
    const SQL: &str = "SELECT version, target, workflows, purpose, rollout_id, created_at, \
                       expires_at FROM fleet_bundles ORDER BY version";
    macro_rules! rows {
        ($pool:expr) => {
            sqlx::query(SQL)
                .fetch_all($pool)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get(6),
                    )
                })
                .collect()
        };
    }
    match db {
        Database::Sqlite(pool) => rows!(pool),
        Database::Postgres(pool) => rows!(pool),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    renewal_round(Place::sqlite(&dir.path().join("data"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_on_postgres() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    renewal_round(Place {
        data: dir.path().join("data"),
        database: Some(pg.url.clone()),
    })
    .await;
    pg.drop_now().await;
}

/// A hub with its device endpoint (renewing when less than `renew_below` of a bundle's
/// validity is left) and `count` enrolled simulated devices labelled `site=SITE`, named
/// `SITE-i`; those in `online` are connected and seen online.
async fn fleet(
    place: &Place,
    renew_below: &str,
    site: &str,
    count: usize,
    online: usize,
) -> (Hub, Vec<Sim>, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hub = Hub::start(
        place.clone(),
        &[
            ("REACTOR_MQTT_LISTEN", listen.as_str()),
            ("REACTOR_FLEET__BUNDLE_RENEW_BELOW", renew_below),
        ],
    )
    .await;
    let mut sims = Vec::new();
    for i in 0..count {
        let label = format!("site={site}");
        let token =
            fleet_support::add_device(place, &format!("{site}-{i}"), &[label.as_str()], None);
        let reply = enroll(&hub, &token).await.expect(200);
        let mut sim = Sim::new(&reply.body, port, false);
        if i < online {
            sim.connect();
        }
        sims.push(sim);
    }
    until(
        Duration::from_secs(30),
        &format!("{online} devices online"),
        async || hub.get("/api/v1/devices").await.expect(200).body,
        |list| {
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
                == online
        },
    )
    .await;
    (hub, sims, port)
}

async fn renewal_round(place: Place) {
    let (hub, mut sims, _) = fleet(&place, "0.5", "r", 3, 3).await;

    let created = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "selector": {"site": "r"}, "expires_in": "4s",
                   "strategy": {"canary": 1, "steps": [100]},
                   "gate": {"observe": "500ms", "stage_timeout": "30s"}}),
        )
        .await
        .expect(201)
        .body;
    let rollout_id = created["id"].as_str().unwrap().to_string();
    let first = created["bundle_version"].as_u64().unwrap();
    until(
        Duration::from_secs(30),
        "rollout completed",
        async || {
            hub.get(&format!("/api/v1/rollouts/{rollout_id}"))
                .await
                .expect(200)
                .body
        },
        |r| r["state"] == "completed",
    )
    .await;

    // Device 2 goes away once it runs the rollout's bundle (or a renewal of it).
    until(
        Duration::from_secs(10),
        "device 2 runs the bundle",
        async || sims[2].snapshot().active,
        |active| active.is_some_and(|v| v >= first),
    )
    .await;
    sims[2].kill();
    let away = Instant::now();

    // The others keep converging: at least four renewals accepted after the first bundle.
    for sim in &sims[..2] {
        until(
            Duration::from_secs(60),
            "renewals accepted",
            async || sim.snapshot(),
            |s| s.accepted.iter().filter(|&&v| v > first).count() >= 4,
        )
        .await;
    }
    // Device 2 stayed away longer than a bundle lives (4 s), then comes back.
    let left = Duration::from_secs(6).saturating_sub(away.elapsed());
    tokio::time::sleep(left).await;
    let before = sims[2].snapshot().active.unwrap();
    sims[2].connect();

    let db = Database::open(place.database.as_deref(), &place.data)
        .await
        .unwrap();
    for (i, sim) in sims.iter().enumerate() {
        let id = sim.id.as_str().to_string();
        // It runs what the hub wants it to run now (the renewal chain moves on meanwhile).
        until(
            Duration::from_secs(30),
            "device runs its desired bundle",
            async || (sim.snapshot().active, desired(&db, &id).await),
            |(active, desired)| active.is_some() && active == desired,
        )
        .await;
        let state = sim.snapshot();
        assert!(
            state.accepted.windows(2).all(|w| w[0] < w[1]),
            "device {i}: versions went back: {:?}",
            state.accepted
        );
        assert_eq!(state.workflows, vec!["hello".to_string()], "device {i}");
        assert_eq!(
            state.expired, 0,
            "device {i} was sent an expired bundle: {state:?}"
        );
        assert_eq!(state.refused, 0, "device {i} refused a bundle: {state:?}");
        if i == 2 {
            assert!(
                state.active.unwrap() > before,
                "device 2 did not converge: {state:?}"
            );
        }
    }

    // The rollout names the latest renewal and counts every device as applied.
    let rollout: Value = until(
        Duration::from_secs(10),
        "rollout follows the renewals",
        async || {
            hub.get(&format!("/api/v1/rollouts/{rollout_id}"))
                .await
                .expect(200)
                .body
        },
        |r| r["counts"]["applied"] == 3,
    )
    .await;
    assert!(rollout["bundle_version"].as_u64().unwrap() > first);

    // Superseded bundles are pruned: the original (referenced by nothing once every device
    // runs a renewal of it) goes, the newest are kept, and what is referenced is stored.
    let rows = until(
        Duration::from_secs(30),
        "the original bundle is pruned",
        async || bundle_rows(&db).await,
        |rows| rows.iter().all(|r| r.0 as u64 != first),
    )
    .await;
    let newest = rows.last().unwrap().0;
    assert!(
        rows.len() < (newest as u64 - first + 1) as usize,
        "nothing pruned: {} stored of {} made",
        rows.len(),
        newest as u64 - first + 1
    );
    assert!(
        rows.len() >= 5,
        "fewer than the 5 newest kept: {}",
        rows.len()
    );
    let stored: Vec<u64> = rows.iter().map(|r| r.0 as u64).collect();
    for sim in &sims {
        let id = sim.id.as_str().to_string();
        let want = desired(&db, &id).await.unwrap();
        assert!(stored.contains(&want), "desired {want} pruned: {stored:?}");
    }
    assert!(hub.logs().contains("superseded bundles pruned"));

    // Every renewal is the original's content, re-signed.
    let renewals: Vec<&BundleRow> = rows.iter().filter(|r| r.3 == "renewal").collect();
    assert!(renewals.len() >= 4, "{} renewals", renewals.len());
    let target: Value = serde_json::from_str(&renewals[0].1).unwrap();
    assert_eq!(
        target,
        json!({"site": "r"}),
        "the rollout's selector is the target"
    );
    for renewal in &renewals {
        assert_eq!(
            (&renewal.1, &renewal.2, renewal.4.as_deref()),
            (
                &renewals[0].1,
                &serde_json::to_string(
                    &reactor_hub::fleet::bundles::validate(&[HELLO.into()]).unwrap()
                )
                .unwrap(),
                Some(rollout_id.as_str())
            ),
            "a renewal's target, workflows and rollout are the original's"
        );
        assert_eq!(
            renewal.6 - renewal.5,
            4_000,
            "a renewal keeps the original's validity"
        );
    }
    assert!(
        hub.logs().contains("bundle renewed"),
        "the hub does not log renewals"
    );
    db.close().await;
}

/// Runs one statement on either backend.
async fn exec(db: &Database, sql: &'static str) {
    match db {
        Database::Sqlite(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
        Database::Postgres(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
    }
}

async fn stored_versions(db: &Database) -> Vec<i64> {
    bundle_rows(db).await.iter().map(|r| r.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(None, dir.path()).await.unwrap();
    pruning(&db).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_on_postgres() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(Some(&pg.url), dir.path()).await.unwrap();
    pruning(&db).await;
    db.close().await;
    pg.drop_now().await;
}

/// Pruning deletes exactly the bundles nothing references that have `keep` newer bundles of
/// their target; versions keep growing afterwards.
async fn pruning(db: &Database) {
    db.migrate().await.unwrap();
    use reactor_core::sync::bundle::BundleSigner;
    use reactor_hub::fleet::bundles::{self, Purpose};
    let signer = BundleSigner::from_seed(&[3; 32]).unwrap();
    let workflows = bundles::validate(&[HELLO.to_string()]).unwrap();
    let target =
        |site: &str| std::collections::BTreeMap::from([("site".to_string(), site.to_string())]);
    let sign = async |site: &str| {
        bundles::sign_and_store(
            db,
            &signer,
            &target(site),
            &workflows,
            Duration::from_secs(60),
            None,
            Purpose::Renewal,
        )
        .await
        .unwrap()
    };
    // Target a: 1..=9; target b: 10, 11.
    for _ in 0..9 {
        sign("a").await;
    }
    assert_eq!(sign("b").await, 10);
    assert_eq!(sign("b").await, 11);
    // References: desired 2, reported 3, a rollout's bundle 4, a rollout device's previous
    // version 5 and rollback version 6.
    bundles::assign(db, &[("dev-x".to_string(), 2)])
        .await
        .unwrap();
    exec(
        db,
        "INSERT INTO devices (id, labels, created_at, bundle_version) VALUES ('dev-y', '{}', 0, 3)",
    )
    .await;
    exec(
        db,
        "INSERT INTO rollouts (id, state, bundle_version, selector, strategy, gate, \
         auto_rollback, created_at, updated_at) VALUES ('r1', 'completed', 4, '{}', '{}', '{}', \
         0, 0, 0)",
    )
    .await;
    exec(
        db,
        "INSERT INTO rollout_devices (rollout_id, device_id, position, previous_version, state, \
         rollback_version, updated_at) VALUES ('r1', 'dev-y', 0, 5, 'rolled_back', 6, 0)",
    )
    .await;

    // Keeping 2 per target: 8 and 9 are the newest of a; 1 and 7 are unreferenced.
    assert_eq!(bundles::prune(db, 2).await.unwrap(), 2);
    assert_eq!(stored_versions(db).await, vec![2, 3, 4, 5, 6, 8, 9, 10, 11]);
    assert_eq!(
        bundles::prune(db, 2).await.unwrap(),
        0,
        "a second pass is idle"
    );

    // Once the references move on (desired and reported 9, no rollout device), 2, 3, 5 and
    // 6 go too; 4 is still the rollout's bundle.
    bundles::assign(db, &[("dev-x".to_string(), 9)])
        .await
        .unwrap();
    exec(db, "UPDATE devices SET bundle_version = 9").await;
    exec(db, "DELETE FROM rollout_devices").await;
    assert_eq!(bundles::prune(db, 2).await.unwrap(), 4);
    assert_eq!(stored_versions(db).await, vec![4, 8, 9, 10, 11]);
    // Keep 0 is taken as 1: the newest of each target (9, 11) stays with what is referenced
    // (4: the rollout), so the next version never goes back.
    assert_eq!(bundles::prune(db, 0).await.unwrap(), 2);
    assert_eq!(stored_versions(db).await, vec![4, 9, 11]);
    assert_eq!(sign("a").await, 12);
}

/// Renewal off (`bundle_renew_below = 0`): a device that comes online after its desired
/// bundle expired is sent nothing (the hub says why in its log, once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_renewal_an_expired_bundle_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hub = Hub::start(
        place.clone(),
        &[
            ("REACTOR_MQTT_LISTEN", listen.as_str()),
            ("REACTOR_FLEET__BUNDLE_RENEW_BELOW", "0"),
        ],
    )
    .await;
    let mut sims = Vec::new();
    for i in 0..2 {
        let token = fleet_support::add_device(&place, &format!("stale-{i}"), &["site=s"], None);
        let reply = enroll(&hub, &token).await.expect(200);
        sims.push(Sim::new(&reply.body, port, false));
    }
    // Only device 0 is online: it is the canary; device 1 is sent the bundle while away.
    sims[0].connect();
    until(
        Duration::from_secs(30),
        "device 0 online",
        async || hub.get("/api/v1/devices").await.expect(200).body,
        |list| list["devices"][0]["online"] == true,
    )
    .await;
    // A bundle valid for less than a second is refused (renewal could not keep up).
    let short = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "selector": {"site": "s"}, "expires_in": "0s"}),
        )
        .await
        .problem(422);
    assert_eq!(short.body["title"], "invalid expires_in", "{}", short.text);
    let created = hub
        .post_json(
            "/api/v1/rollouts",
            json!({"workflows": [HELLO], "selector": {"site": "s"}, "expires_in": "2s",
                   "strategy": {"canary": 1, "steps": [100]},
                   "gate": {"observe": "200ms", "stage_timeout": "30s"}}),
        )
        .await
        .expect(201)
        .body;
    let version = created["bundle_version"].as_u64().unwrap();
    let rollout_id = created["id"].as_str().unwrap().to_string();
    until(
        Duration::from_secs(30),
        "rollout completed",
        async || {
            hub.get(&format!("/api/v1/rollouts/{rollout_id}"))
                .await
                .expect(200)
                .body
        },
        |r| r["state"] == "completed",
    )
    .await;
    assert_eq!(sims[0].snapshot().accepted, vec![version]);
    let db = Database::open(None, &place.data).await.unwrap();
    assert_eq!(desired(&db, "stale-1").await, Some(version));

    // The bundle expires (2 s after it was signed); then device 1 comes online.
    let expires = bundle_rows(&db)
        .await
        .iter()
        .find(|r| r.0 as u64 == version)
        .unwrap()
        .6;
    let now = reactor_core::engine::Timestamp::now().millis();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(expires - now + 200).unwrap_or(0),
    ))
    .await;
    sims[1].connect();
    until(
        Duration::from_secs(20),
        "the hub declines the expired bundle",
        async || hub.logs(),
        |logs| logs.contains("a desired bundle has expired"),
    )
    .await;
    let state = sims[1].snapshot();
    assert!(state.connected, "{state:?}");
    assert_eq!(state.received, 0, "an expired bundle was sent: {state:?}");
    assert_eq!(
        hub.logs().matches("a desired bundle has expired").count(),
        1,
        "logged once per version"
    );
    // Nothing renewed it.
    assert!(bundle_rows(&db).await.iter().all(|r| r.3 != "renewal"));
    db.close().await;
}

/// A running rollout whose later-stage device got a renewal of its previous bundle — a
/// higher version than the rollout's own bundle — has its bundle renewed too, so the device
/// is never handed a lower version (which it would refuse) and the rollout completes. (Without
/// that, the device refuses the rollout's bundle yet counts as applied — it reports a higher
/// version — while it still runs the old workflows: checked below through its workflows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_behind_a_renewal_is_renewed_too() {
    const HELLO2: &str =
        "reactor: 1\nname: hello2\ntriggers:\n  - event: { type: ping }\nsteps:\n  - return: hi2\n";
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let (hub, sims, _) = fleet(&place, "0.5", "b", 2, 2).await;
    let rollout = async |body: Value| {
        let created = hub
            .post_json("/api/v1/rollouts", body)
            .await
            .expect(201)
            .body;
        let id = created["id"].as_str().unwrap().to_string();
        (id, created["bundle_version"].as_u64().unwrap())
    };
    let completed = async |id: &str| {
        until(
            Duration::from_secs(60),
            "rollout completed",
            async || {
                hub.get(&format!("/api/v1/rollouts/{id}"))
                    .await
                    .expect(200)
                    .body
            },
            |r| r["state"] == "completed",
        )
        .await
    };
    // A: both devices take a bundle that lives 10 s (renewed 5 s after it was signed).
    let (a, a_version) = rollout(json!({"workflows": [HELLO], "selector": {"site": "b"},
        "expires_in": "10s", "strategy": {"canary": 2, "steps": [100]},
        "gate": {"observe": "200ms", "stage_timeout": "30s"}}))
    .await;
    completed(&a).await;
    // B: a lasting bundle; device 0 is its canary, device 1 waits 12 s for the next stage —
    // meanwhile A's bundle, still device 1's desired one, is renewed above B's.
    let (b, b_version) = rollout(json!({"workflows": [HELLO2], "selector": {"site": "b"},
        "strategy": {"canary": 1, "steps": [100]},
        "gate": {"observe": "12s", "stage_timeout": "60s"}}))
    .await;
    let db = Database::open(None, &place.data).await.unwrap();
    assert_eq!(
        desired(&db, "b-1").await,
        Some(a_version),
        "precondition: A's bundle was renewed before B started (a very slow machine?)"
    );
    let done = completed(&b).await;
    assert!(
        hub.logs()
            .contains("a pending device of the rollout has a newer bundle"),
        "{}",
        hub.logs()
    );
    assert!(
        done["bundle_version"].as_u64().unwrap() > b_version,
        "{done}"
    );
    assert_eq!(done["counts"]["applied"], 2, "{done}");
    for sim in &sims {
        let state = sim.snapshot();
        assert_eq!(state.workflows, vec!["hello2".to_string()], "{state:?}");
        assert_eq!(state.refused, 0, "a device refused a bundle: {state:?}");
        assert!(state.accepted.windows(2).all(|w| w[0] < w[1]), "{state:?}");
    }
    db.close().await;
}
