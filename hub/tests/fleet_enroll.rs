//! Device registry and enrollment against the real `reactor-hub` binary: `device add` prints
//! a one-time token; `POST /api/v1/enroll` spends it once, before it expires, with no bearer
//! token, and hands out identity, credentials, broker address and the fleet's signing key,
//! which survives a restart; `GET /api/v1/devices` lists devices. SQLite and PostgreSQL.

mod api_support;
mod fleet_support;

use std::time::Duration;

use api_support::{Body, Hub, PgDatabase, Place, free_port};
use base64::Engine as _;
use fleet_support::{add_device, device_add, enroll, enrolled};
use reactor_core::sync::bundle::PublicKey;
use serde_json::json;

/// Runs the round; returns every secret handed out (tokens, credentials).
async fn enrollment_round(place: Place) -> Vec<String> {
    let mqtt = free_port();
    let extra = [("REACTOR_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"))];
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Names that would widen or escape a topic are refused before anything is stored.
    for bad in ["a+b", "a/b", "#", "x%2F", "$SYS", "", "tab\tname"] {
        let output = device_add(&place, bad, &[], None);
        assert!(!output.status.success(), "{bad:?} accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("invalid device name"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = device_add(&place, "pump-1", &["bad label=x"], None);
    assert!(!output.status.success());

    let token = add_device(&place, "pump-1", &["site=north,role=pump"], None);
    let expiring = add_device(&place, "pump-2", &["site=south"], Some("1s"));
    let unused = add_device(&place, "pump-3", &[], None);
    let duplicate = device_add(&place, "pump-1", &[], None);
    assert!(!duplicate.status.success(), "a second pump-1 was added");

    let mut hub = Hub::start(place.clone(), &extra).await;

    let (id, password, body) = enrolled(&hub, &token).await;
    assert_eq!(id, "pump-1");
    assert!(password.starts_with("rd_") && password.len() > 40, "{body}");
    assert_eq!(body["labels"], json!({"role": "pump", "site": "north"}));
    assert_eq!(body["broker"]["url"], format!("mqtt://127.0.0.1:{mqtt}"));
    assert_eq!(body["broker"]["username"], "pump-1");
    assert_eq!(body["broker"]["topic_prefix"], "reactor/v1/d/pump-1/");
    assert_eq!(body["protocol_version"], 1);
    let key = body["bundle_signing_key"].clone();
    let public: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(key["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(key["key_id"], PublicKey(public).id().to_string());
    assert_eq!(key["algorithm"], "ed25519");

    // Single use; unknown; malformed; expired: refused with a problem, nothing issued.
    enroll(&hub, &token).await.problem(401);
    enroll(&hub, "re_not-a-token").await.problem(401);
    enroll(&hub, "").await.problem(401);
    hub.call(
        "POST",
        "/api/v1/enroll",
        None,
        Some(Body::Json(json!({"nope": 1}))),
    )
    .await
    .problem(400);
    hub.call(
        "POST",
        "/api/v1/enroll",
        None,
        Some(Body::Text("x".repeat(64 * 1024))),
    )
    .await
    .expect(413);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    enroll(&hub, &expiring).await.problem(401);

    // The device list needs a token; shows enrolled and pending devices.
    hub.call("GET", "/api/v1/devices", None, None)
        .await
        .problem(401);
    let devices = hub.get("/api/v1/devices").await.expect(200).body;
    let devices = devices["devices"].as_array().unwrap().clone();
    assert_eq!(devices.len(), 3, "{devices:?}");
    assert_eq!(devices[0]["id"], "pump-1");
    assert_eq!(devices[0]["enrolled"], true);
    assert_eq!(devices[0]["online"], false);
    assert_eq!(devices[0]["labels"]["site"], "north");
    assert_eq!(devices[1]["enrolled"], false);
    let text = serde_json::to_string(&devices).unwrap();
    assert!(!text.contains(&password), "the credential is never listed");

    // The signing key is generated once and kept (sealed) across restarts.
    hub.terminate();
    let hub = Hub::spawn(place.clone(), hub.admin.clone(), &extra);
    hub.healthy(Duration::from_secs(30)).await;
    let (_, second, again) = enrolled(&hub, &unused).await;
    assert_eq!(again["bundle_signing_key"], key);
    vec![token, expiring, unused, password, second]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let secrets = enrollment_round(place.clone()).await;
    // Only hashes are stored: no token or credential in the database files.
    for file in ["hub.db", "hub.db-wal"] {
        let Ok(bytes) = std::fs::read(place.data.join(file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret in clear in {file}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_on_postgres() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = Place {
        data: dir.path().join("data"),
        database: Some(pg.url.clone()),
    };
    assert_eq!(enrollment_round(place).await.len(), 5);
    pg.drop_now().await;
}
