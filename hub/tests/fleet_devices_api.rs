//! The per-device routes (`/api/v1/devices/{id}/…`) against the real `reactor-hub` binary
//! (SQLite, no broker): an unknown device is a 404 problem on every one of them — never an
//! empty list — while a known device with no commands lists none and a command of its that
//! does not exist is a 404 naming the command.

mod api_support;
mod fleet_support;

use api_support::{Hub, Place};
use fleet_support::add_device;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn unknown_devices_are_404_on_every_device_route() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    add_device(&place, "known-1", &["site=x"], None);
    let hub = Hub::start(place, &[]).await;

    // Unknown ids, including ones `device add` would refuse.
    for id in ["nobody", "known-2", "KNOWN-1", "a%2Bb", "%24SYS"] {
        let list = hub
            .get(&format!("/api/v1/devices/{id}/commands"))
            .await
            .problem(404);
        assert_eq!(list.body["title"], "unknown device", "{}", list.text);
        let one = hub
            .get(&format!("/api/v1/devices/{id}/commands/1"))
            .await
            .problem(404);
        assert_eq!(one.body["title"], "unknown device", "{}", one.text);
        let send = hub
            .post_json(
                &format!("/api/v1/devices/{id}/commands"),
                json!({"type": "ping"}),
            )
            .await
            .problem(404);
        assert_eq!(send.body["title"], "unknown device", "{}", send.text);
    }

    // The known device: no commands yet is an empty list, not a 404.
    let empty = hub
        .get("/api/v1/devices/known-1/commands")
        .await
        .expect(200);
    assert_eq!(empty.body["commands"], json!([]));
    let missing = hub
        .get("/api/v1/devices/known-1/commands/1")
        .await
        .problem(404);
    assert_eq!(missing.body["title"], "unknown command", "{}", missing.text);
    let sent = hub
        .post_json(
            "/api/v1/devices/known-1/commands",
            json!({"type": "ping", "nonce": 9}),
        )
        .await
        .expect(202);
    let id = sent.body["id"].as_i64().unwrap();
    assert_eq!(sent.body["state"], "pending");
    let listed = hub
        .get("/api/v1/devices/known-1/commands")
        .await
        .expect(200);
    assert_eq!(listed.body["commands"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["commands"][0]["id"], id);
    let one = hub
        .get(&format!("/api/v1/devices/known-1/commands/{id}"))
        .await
        .expect(200);
    assert_eq!(one.body["command"], json!({"type": "ping", "nonce": 9}));
    // A malformed command is refused before the device is looked up (422 either way).
    hub.post_json("/api/v1/devices/nobody/commands", json!({"type": "reboot"}))
        .await
        .problem(422);
}
