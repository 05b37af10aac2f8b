//! Fleet transport load generator (issue 5 budgets): simulated devices — real rumqttc MQTT
//! clients speaking the sync protocol — against a real `reactor-hub serve --mqtt-listen`
//! that this program starts (SQLite in a temporary folder, or `--database URL`).
//!
//! ```text
//! fleet-load connect HUB_BIN DEVICES            [--database URL] [--ramp N] [--hold SECS]
//! fleet-load ingest  HUB_BIN DEVICES BATCHES SIZE [--database URL] [--window W]
//! ```
//!
//! - `connect`: DEVICES devices connect (at most `--ramp` handshakes at once, default 256),
//!   each subscribed to its `ack` topic and reporting `Online`; prints the connect rate, the
//!   hub's RSS before and after and per connection, and its open descriptors; holds them
//!   `--hold` seconds (default 5) and checks the registry shows them all online (waiting up to
//!   120 s more for the hub's ingest to record every `Online` status; the time is printed).
//! - `ingest`: DEVICES connected devices each send BATCHES `EventBatch` frames of SIZE
//!   events, at most `--window` batches unacked per device (default 4); prints stored
//!   events/s from the first publish to the last ack, and checks the database holds exactly
//!   DEVICES × BATCHES × SIZE events (exactly once).
//!
//! Devices are registered directly in the hub's database before it starts (the registry's
//! own functions), so the measurement is the MQTT path only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reactor_core::engine::Timestamp;
use reactor_core::sync::messages::{DeviceEvent, EventBatch, Health, JsonText, Presence, Status};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use reactor_hub::db::Database;
use reactor_hub::fleet::registry;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use sqlx::Row;
use tokio::sync::{Semaphore, mpsc};

struct Args {
    mode: String,
    hub: String,
    devices: usize,
    batches: u64,
    size: u64,
    database: Option<String>,
    ramp: usize,
    hold: u64,
    window: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut args = Args {
        mode: String::new(),
        hub: String::new(),
        devices: 0,
        batches: 0,
        size: 0,
        database: None,
        ramp: 256,
        hold: 5,
        window: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("a flag without its value");
        match arg.as_str() {
            "--database" => args.database = Some(value()?),
            "--ramp" => args.ramp = value()?.parse()?,
            "--hold" => args.hold = value()?.parse()?,
            "--window" => args.window = value()?.parse()?,
            _ => positional.push(arg),
        }
    }
    let usage =
        "fleet-load connect HUB_BIN DEVICES | fleet-load ingest HUB_BIN DEVICES BATCHES SIZE";
    match positional.as_slice() {
        [mode, hub, devices] if mode == "connect" => {
            args.devices = devices.parse()?;
        }
        [mode, hub, devices, batches, size] if mode == "ingest" => {
            args.devices = devices.parse()?;
            args.batches = batches.parse()?;
            args.size = size.parse()?;
        }
        _ => bail!("usage: {usage}"),
    }
    args.mode = positional[0].clone();
    args.hub = positional[1].clone();
    Ok(args)
}

/// Raises the soft open-files limit to the hard one; each simulated device holds one
/// descriptor here (the hub too: its endpoint terminates device sessions).
fn raise_open_files(devices: usize) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = devices as u64 + 256;
    if current < needed {
        bail!(
            "{devices} devices need about {needed} open files in this process and in the hub; the limit is {current} (ulimit -Hn)"
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn frame(seq: u64, message: Message) -> Vec<u8> {
    encode(&Envelope::new(Seq(seq), message)).expect("frames encode")
}

fn status(seq: u64, presence: Presence) -> Vec<u8> {
    frame(
        seq,
        Message::Status(Status {
            presence,
            agent_version: "bench".into(),
            bundle_version: None,
            health: Health {
                window_secs: 300,
                executions_total: 0,
                executions_failed: 0,
            },
            at: Timestamp::now(),
        }),
    )
}

fn batch(first: u64, size: u64) -> Vec<u8> {
    let events = (first..first + size)
        .map(|n| DeviceEvent {
            id: ulid::Ulid::new().to_string(),
            event_type: "reading.temperature".into(),
            source: "sensor:1".into(),
            time: Timestamp::now(),
            data: JsonText::from_value(&serde_json::json!({ "n": n, "temp": 21.5, "zone": "A" })),
            meta: JsonText::from_value(&serde_json::json!({})),
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

/// A connected simulated device; the highest ack seen comes out of `acks`.
struct Device {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<u64>,
    id: DeviceId,
    task: tokio::task::JoinHandle<()>,
}

async fn connect(port: u16, name: &str, password: &str) -> anyhow::Result<Device> {
    let id = DeviceId::parse(name)?;
    let mut options = MqttOptions::new(id.as_str(), "127.0.0.1", port);
    options.set_credentials(id.as_str(), password);
    options.set_keep_alive(Duration::from_secs(120));
    options.set_max_packet_size(4 << 20, 4 << 20);
    options.set_last_will(LastWill::new(
        id.topic(Channel::Status),
        status(2, Presence::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    // A loaded hub may take longer than rumqttc's default 5 s to answer CONNECT.
    let mut network = eventloop.network_options();
    network.set_connection_timeout(30);
    eventloop.set_network_options(network);
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<Result<(), String>>();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(Ok(()));
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Ok(Frame::Message(envelope)) = decode(&publish.payload)
                        && let Message::Ack(ack) = envelope.message
                    {
                        let _ = ack_tx.send(ack.highest.0);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                    return;
                }
            }
        }
    });
    client
        .subscribe(id.topic(Channel::Ack), QoS::AtLeastOnce)
        .await?;
    match tokio::time::timeout(Duration::from_secs(120), ready.recv()).await {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(error))) => bail!("{name}: {error}"),
        _ => bail!("{name}: no SUBACK"),
    }
    client
        .publish(
            id.topic(Channel::Status),
            QoS::AtLeastOnce,
            true,
            status(1, Presence::Online),
        )
        .await?;
    Ok(Device {
        client,
        acks,
        id,
        task,
    })
}

/// Starts the hub; returns it and its HTTP port once `/healthz` answers 200.
async fn start_hub(
    args: &Args,
    data: &std::path::Path,
    mqtt: u16,
) -> anyhow::Result<(std::process::Child, u16)> {
    let http = free_port()?;
    let mut command = std::process::Command::new(&args.hub);
    command
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{mqtt}"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stdout(std::process::Stdio::null());
    if let Some(url) = &args.database {
        command.arg("--database").arg(url);
    }
    let child = command.spawn().context("starting the hub")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if healthz(http).await {
            return Ok((child, http));
        }
        if Instant::now() > deadline {
            bail!("the hub did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn healthz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}

async fn count(db: &Database, sql: &str) -> anyhow::Result<i64> {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    Ok(match db {
        Database::Sqlite(pool) => sqlx::query(sql).fetch_one(pool).await?.try_get(0)?,
        Database::Postgres(pool) => sqlx::query(sql).fetch_one(pool).await?.try_get(0)?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    raise_open_files(args.devices)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let db = Database::open(args.database.as_deref(), &data).await?;
    db.migrate().await?;
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let registered = Instant::now();
    let mut credentials = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let name = format!("load-{}-{i:05}", &run[20..]);
        let token =
            registry::add_device(&db, &name, &Default::default(), Duration::from_secs(3600))
                .await?;
        credentials.push((name, registry::enroll(&db, &token).await?.credential));
    }
    eprintln!(
        "fleet-load: {} devices registered in {:.1} s",
        args.devices,
        registered.elapsed().as_secs_f64()
    );
    let mqtt = free_port()?;
    let (mut hub, _http) = start_hub(&args, &data, mqtt).await?;
    let pid = hub.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = proc_status(pid, "VmRSS:");

    let started = Instant::now();
    let ramp = Arc::new(Semaphore::new(args.ramp.max(1)));
    let mut tasks = Vec::with_capacity(args.devices);
    for (name, password) in credentials {
        let ramp = ramp.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = ramp.acquire_owned().await?;
            // As agents do: a failed attempt is retried (here at most twice, after 1 s).
            let mut attempt = 0;
            loop {
                match connect(mqtt, &name, &password).await {
                    Ok(device) => return Ok((device, attempt)),
                    Err(error) if attempt == 2 => return Err(error),
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
    }
    let mut devices = Vec::with_capacity(args.devices);
    let (mut failures, mut retries) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok((device, attempts)) => {
                retries += attempts;
                devices.push(device);
            }
            Err(error) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("fleet-load: {error:#}");
                }
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = proc_status(pid, "VmRSS:");
    let per = rss_after.saturating_sub(rss_before) as f64 / devices.len().max(1) as f64;
    println!(
        "fleet connect: {} of {} devices connected ({retries} retried attempts) in {:.1} s = {:.0} connections/s; hub RSS {} -> {} KiB = {:.1} KiB per connection; hub fds {}",
        devices.len(),
        args.devices,
        connect_secs,
        devices.len() as f64 / connect_secs,
        rss_before,
        rss_after,
        per,
        open_fds(pid)
    );

    let outcome = if args.mode == "connect" {
        // Every `Online` status goes through the hub's ingest into the registry: wait (up to
        // 120 s after the hold) until all of them are there, and say how long that took.
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
        let sql = "SELECT COUNT(*) FROM devices WHERE online = 1";
        let mut online = count(&db, sql).await?;
        let at_hold = online;
        let deadline = Instant::now() + Duration::from_secs(120);
        while (online as usize) < devices.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            online = count(&db, sql).await?;
        }
        println!(
            "fleet connect: after the {} s hold {at_hold} devices online in the registry, {online} after {:.1} s from the first connect; hub RSS peak {} KiB, fds {}",
            args.hold,
            started.elapsed().as_secs_f64(),
            proc_status(pid, "VmHWM:"),
            open_fds(pid)
        );
        if online as usize != devices.len() || failures > 0 {
            Err(anyhow::anyhow!(
                "{failures} failed to connect, {online} online"
            ))
        } else {
            Ok(())
        }
    } else {
        ingest(&args, &db, devices, pid).await
    };
    let _ = hub.kill();
    let _ = hub.wait();
    db.close().await;
    outcome
}

async fn ingest(args: &Args, db: &Database, devices: Vec<Device>, pid: u32) -> anyhow::Result<()> {
    let total = args.devices as u64 * args.batches * args.size;
    let (batches, size, window) = (args.batches, args.size, args.window.max(1));
    let started = Instant::now();
    let resends = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(devices.len());
    for mut device in devices {
        let resends = resends.clone();
        tasks.push(tokio::spawn(async move {
            let last = batches * size;
            let (mut next, mut acked) = (1u64, 0u64);
            let mut last_progress = Instant::now();
            while acked < last {
                while next <= last && next <= acked + window * size {
                    device
                        .client
                        .publish(
                            device.id.topic(Channel::Events),
                            QoS::AtLeastOnce,
                            false,
                            batch(next, size),
                        )
                        .await?;
                    next += size;
                }
                match tokio::time::timeout(Duration::from_secs(10), device.acks.recv()).await {
                    Ok(Some(ack)) => {
                        if ack > acked {
                            acked = ack;
                            last_progress = Instant::now();
                        }
                    }
                    Ok(None) => bail!("{}: connection lost", device.id.as_str()),
                    Err(_) if last_progress.elapsed() > Duration::from_secs(60) => {
                        bail!("{}: stuck at {acked}", device.id.as_str())
                    }
                    // No ack for 10 s: resend from the acked seq, as the agent does.
                    Err(_) => {
                        resends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        next = acked + 1;
                    }
                }
            }
            device.task.abort();
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let stored = count(db, "SELECT COUNT(*) FROM device_events").await?;
    println!(
        "fleet ingest: {total} events ({} devices x {batches} batches x {size}) stored and acked in {secs:.2} s = {:.0} events/s; stored rows {stored}; resends after 10 s without ack {}; hub RSS peak {} KiB",
        args.devices,
        total as f64 / secs,
        resends.load(std::sync::atomic::Ordering::Relaxed),
        proc_status(pid, "VmHWM:")
    );
    if stored as u64 != total {
        bail!("{stored} rows stored, expected {total}");
    }
    Ok(())
}
