//! Helpers shared by the fleet tests: `reactor-hub device add` and enrollment.
#![allow(dead_code)]

use std::process::Command;

use serde_json::{Value, json};

use super::api_support::{BIN, Body, Hub, Place};

/// `reactor-hub device add NAME --labels …` → the token printed alone on the last line.
pub fn add_device(place: &Place, name: &str, labels: &[&str], expires: Option<&str>) -> String {
    let output = device_add(place, name, labels, expires);
    assert!(
        output.status.success(),
        "device add {name:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("re_") && !last.contains(' '), "{stdout:?}");
    last
}

/// Runs `device add` and returns its output whatever happened.
pub fn device_add(
    place: &Place,
    name: &str,
    labels: &[&str],
    expires: Option<&str>,
) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(["device", "add", name]);
    for label in labels {
        command.args(["--labels", label]);
    }
    if let Some(expires) = expires {
        command.args(["--expires", expires]);
    }
    command.arg("--data").arg(&place.data);
    if let Some(url) = &place.database {
        command.arg("--database").arg(url);
    }
    command.env_remove("REACTOR_DATABASE_URL");
    command.output().unwrap()
}

/// `POST /api/v1/enroll` with `token`, no bearer token.
pub async fn enroll(hub: &Hub, token: &str) -> super::api_support::Reply {
    hub.call(
        "POST",
        "/api/v1/enroll",
        None,
        Some(Body::Json(json!({ "token": token }))),
    )
    .await
}

/// Enrolls and returns (device id, MQTT password, the reply's JSON).
pub async fn enrolled(hub: &Hub, token: &str) -> (String, String, Value) {
    let reply = enroll(hub, token).await.expect(200);
    let body = reply.body;
    (
        body["device_id"].as_str().unwrap().to_string(),
        body["broker"]["password"].as_str().unwrap().to_string(),
        body,
    )
}
pub mod sim;
