//! Fleet ingest end to end: the real `reactor-hub serve --mqtt-listen` (PostgreSQL), a real
//! rumqttc client acting as an enrolled device through the hub's device endpoint and the
//! embedded broker, frames encoded with `reactor_core::sync`.
//!
//! Checked: event batches stored once and in order, a re-sent batch not stored twice but
//! acked again, acks on the device's `ack` topic, execution batches stored, a hole not acked
//! until a gap notice covers it, the gap recorded, online by status and offline by the last
//! will, and device events starting a hub workflow whose expressions read `device`.

mod api_support;
mod fleet_support;

use std::time::{Duration, Instant};

use api_support::{Hub, PgDatabase, Place, free_port};
use fleet_support::{add_device, enrolled};
use reactor_core::engine::{ExecutionId, Timestamp};
use reactor_core::sync::messages::{
    DeviceEvent, EventBatch, ExecutionBatch, ExecutionReport, GapNotice, GapReason, Health,
    JsonText, Outcome, Presence, Status,
};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use reactor_hub::db::Database;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;
use sqlx::Row;
use tokio::sync::mpsc;

fn frame(seq: u64, message: Message) -> Vec<u8> {
    encode(&Envelope::new(Seq(seq), message)).unwrap()
}

fn status(seq: u64, presence: Presence) -> Vec<u8> {
    frame(
        seq,
        Message::Status(Status {
            presence,
            agent_version: "0.9.1".into(),
            bundle_version: None,
            health: Health {
                window_secs: 300,
                executions_total: 10,
                executions_failed: 1,
            },
            at: Timestamp::now(),
        }),
    )
}

fn events(first: u64, values: &[i64]) -> Vec<u8> {
    let events = values
        .iter()
        .map(|v| DeviceEvent {
            id: ulid::Ulid::new().to_string(),
            event_type: "reading.temperature".into(),
            source: "sensor:1".into(),
            time: Timestamp::now(),
            data: JsonText::from_value(&json!({ "v": v })),
            meta: JsonText::from_value(&json!({})),
        })
        .collect();
    frame(
        first,
        Message::EventBatch(EventBatch {
            first: Seq(first),
            events,
        }),
    )
}

/// A device connected through the hub's endpoint; acks it receives come out of `acks`.
struct Device {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<u64>,
    task: tokio::task::JoinHandle<()>,
    id: DeviceId,
}

async fn connect(port: u16, id: &str, password: &str, will_seq: u64) -> Device {
    let id = DeviceId::parse(id).unwrap();
    let mut options = MqttOptions::new(id.as_str(), "127.0.0.1", port);
    options.set_credentials(id.as_str(), password);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_last_will(LastWill::new(
        id.topic(Channel::Status),
        status(will_seq, Presence::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, acks) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Ok(Frame::Message(envelope)) = decode(&publish.payload)
                        && let Message::Ack(ack) = envelope.message
                    {
                        let _ = tx.send(ack.highest.0);
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("device connection failed: {error}"),
            }
        }
    });
    client
        .subscribe(id.topic(Channel::Ack), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .expect("no SUBACK")
        .unwrap();
    Device {
        client,
        acks,
        task,
        id,
    }
}

impl Device {
    async fn send(&self, channel: Channel, payload: Vec<u8>) {
        self.client
            .publish(
                self.id.topic(channel),
                QoS::AtLeastOnce,
                channel.retained(),
                payload,
            )
            .await
            .unwrap();
    }

    /// The next ack, within 10 s.
    async fn ack(&mut self) -> u64 {
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("no ack within 10 s")
            .unwrap()
    }
}

/// Polls `GET /api/v1/devices` until `check` holds for device `id`.
async fn device_until(hub: &Hub, id: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = hub.get("/api/v1/devices").await.expect(200);
        let devices = list.body["devices"]
            .as_array()
            .or_else(|| list.body.as_array())
            .cloned()
            .unwrap_or_default();
        if let Some(device) = devices.iter().find(|d| d["id"] == id)
            && check(device)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", list.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_values(db: &Database, device: &str) -> Vec<(i64, i64)> {
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    sqlx::query("SELECT seq, data FROM device_events WHERE device_id = $1 ORDER BY seq")
        .bind(device)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let data: String = row.get("data");
            let data: serde_json::Value = serde_json::from_str(&data).unwrap();
            (row.get::<i64, _>("seq"), data["v"].as_i64().unwrap())
        })
        .collect()
}

async fn outputs(hub: &Hub, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = hub
            .get("/api/v1/executions?workflow=on-reading&limit=100")
            .await
            .expect(200);
        let executions = list.body["executions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if executions.len() >= want {
            let mut out = Vec::new();
            for execution in executions {
                let done = hub.finished(execution["id"].as_str().unwrap()).await;
                assert_eq!(done["status"], "succeeded", "{done}");
                out.push(done["output"].as_str().unwrap().to_string());
            }
            out.sort();
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{} executions: {}",
            executions.len(),
            list.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_postgres() {
    let pg = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let place = Place {
        data: dir.path().join("data"),
        database: Some(pg.url.clone()),
    };
    let mqtt = free_port();
    let listen = format!("127.0.0.1:{mqtt}");
    let hub = Hub::start(place.clone(), &[("REACTOR_MQTT_LISTEN", listen.as_str())]).await;
    let token = add_device(&place, "pump-1", &["site=north"], None);
    let (id, password, _) = enrolled(&hub, &token).await;
    hub.send_yaml(
        "POST",
        "/api/v1/workflows",
        "reactor: 1\nname: on-reading\ntriggers:\n  - event: { type: \"reading.*\" }\nsteps:\n  - return: \"${{ device.id }}/${{ device.labels.site }}/${{ event.data.v }}\"\n",
    )
    .await
    .expect(201);
    let db = Database::open_postgres(&pg.url).await.unwrap();

    let mut device = connect(mqtt, &id, &password, 2).await;
    device
        .send(Channel::Status, status(1, Presence::Online))
        .await;
    device_until(&hub, &id, "online after status", |d| {
        d["online"] == true && d["agent_version"] == "0.9.1" && d["health"]["failed"] == 1
    })
    .await;

    // A batch: stored, acked.
    device.send(Channel::Events, events(1, &[10, 11, 12])).await;
    assert_eq!(device.ack().await, 3);
    // The same batch again (the agent did not see the ack): acked again, not stored twice.
    device.send(Channel::Events, events(1, &[10, 11, 12])).await;
    assert_eq!(device.ack().await, 3);
    // An execution summary takes seq 4.
    let report = ExecutionReport {
        execution: ExecutionId::new().into(),
        workflow: "local".into(),
        workflow_version: 1,
        outcome: Outcome::Succeeded,
        started_at: Timestamp::now(),
        finished_at: Some(Timestamp::now()),
        error: None,
        trace: Vec::new(),
    };
    device
        .send(
            Channel::Executions,
            frame(
                4,
                Message::ExecutionBatch(ExecutionBatch {
                    first: Seq(4),
                    executions: vec![report],
                }),
            ),
        )
        .await;
    assert_eq!(device.ack().await, 4);
    // 5..=7 were dropped by the agent: 8, 9 are stored but not acked until the gap notice.
    device.send(Channel::Events, events(8, &[18, 19])).await;
    assert_eq!(device.ack().await, 4, "acked across a hole");
    device
        .send(
            Channel::Events,
            frame(
                5,
                Message::Gap(GapNotice {
                    from: Seq(5),
                    to: Seq(7),
                    reason: GapReason::OutboxFull,
                    count: 3,
                }),
            ),
        )
        .await;
    assert_eq!(device.ack().await, 9);

    assert_eq!(
        stored_values(&db, &id).await,
        vec![(1, 10), (2, 11), (3, 12), (8, 18), (9, 19)]
    );
    let counts = reactor_hub::fleet::ingest::counts(&db, &id).await.unwrap();
    assert_eq!(counts["executions"], 1);
    assert_eq!(counts["gaps"], 1);
    device_until(&hub, &id, "acked seq", |d| d["acked_seq"] == 9).await;

    // Each stored event started the hub workflow once, with `device` from the event.
    let out = outputs(&hub, 5).await;
    assert_eq!(
        out,
        [
            "pump-1/north/10",
            "pump-1/north/11",
            "pump-1/north/12",
            "pump-1/north/18",
            "pump-1/north/19"
        ]
    );
    let by_device = hub
        .get("/api/v1/executions?workflow=on-reading&device=pump-1&limit=100")
        .await
        .expect(200);
    assert_eq!(by_device.body["executions"].as_array().unwrap().len(), 5);
    // Every stored event is marked delivered.
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let unrouted: i64 = sqlx::query("SELECT COUNT(*) FROM device_events WHERE routed_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(unrouted, 0);

    // The connection dies without DISCONNECT: the broker publishes the last will.
    device.task.abort();
    drop(device.client);
    device_until(&hub, &id, "offline by last will", |d| d["online"] == false).await;

    // Nothing ran twice after all of that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outputs(&hub, 5).await.len(), 5);

    db.close().await;
    drop(hub);
    pg.drop_now().await;
}
