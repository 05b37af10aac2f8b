//! Load generator for the MQTT throughput workload (issue 3, `benches/load/README.md`):
//! publishes `COUNT` QoS 1 readings to `bench/reactor/in/<device>` on a broker and counts the
//! agent's replies on `bench/reactor/out` (workflow `benches/load/workflows/rule-mqtt.yaml`).
//!
//! Usage: `mqtt_load [COUNT] [HOST] [PORT] [WINDOW]` (defaults 100000, 127.0.0.1, 1883, 500).
//! `mqtt_load clear HOST PORT CLIENT_ID…` ends the persistent sessions of those clients (a
//! clean-session connect and a disconnect each): `run-mqtt.sh` clears the agent's trigger
//! sessions with it after a run, so runs do not pile sessions up on the broker.
//! `mqtt_load echo HOST PORT SESSIONS` is the reference the agent is measured beside: a relay
//! that does the workflow's work with no engine and no journal (shared subscription over
//! SESSIONS sessions, the same rule, the same QoS 1 reply) until it is stopped. `run-mqtt.sh`
//! runs it in the agent's place with `SUBJECT=echo`: the ceiling of broker, load generator
//! and the thinnest possible client on the same cores.
//!
//! At most WINDOW messages are outstanding (published, reply not yet seen): Mosquitto queues
//! at most `max_queued_messages` (default 1000) QoS 1 messages for a subscriber that falls
//! behind and drops the rest ("Outgoing messages are being dropped for client …"), so an
//! unpaced publisher measures the broker's queue limit, not the agent.
//!
//! Prints messages per second end to end (first publish to last reply), the publish rate,
//! replies lost (never received within 10 s of the last one) and duplicates (QoS 1 allows them).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const IN_TOPIC: &str = "bench/reactor/in";
const OUT_TOPIC: &str = "bench/reactor/out";
/// How long to wait for more replies once none have come.
const QUIET: Duration = Duration::from_secs(10);

fn options(id: &str, host: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(256);
    options
}

/// Connects as `id` with a clean session (the broker drops what it kept for `id`) and leaves.
async fn clear_session(id: &str, host: &str, port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let (client, mut events) = AsyncClient::new(options(id, host, port), 16);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    match connected {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(format!("clearing session {id}: {error}").into()),
        Err(_) => return Err(format!("clearing session {id}: no CONNACK").into()),
    }
    client.disconnect().await?;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

/// The reply the workflow sends for one reading: its `seq` and whether the rule matched.
fn reply(payload: &[u8]) -> Option<Vec<u8>> {
    let reading: Value = serde_json::from_slice(payload).ok()?;
    let alert = reading["temp"].as_f64().is_some_and(|t| t > 30.0) && reading["zone"] == "A";
    serde_json::to_vec(&json!({ "seq": reading["seq"], "alert": alert })).ok()
}

/// The relay: answers every reading on `bench/reactor/in/+` until the process is stopped.
async fn echo(host: &str, port: u16, sessions: usize) -> Result<(), Box<dyn std::error::Error>> {
    let filter = format!("$share/reactor-echo/{IN_TOPIC}/+");
    let mut relays = Vec::new();
    for index in 0..sessions.max(1) {
        let (client, mut events) =
            AsyncClient::new(options(&format!("reactor-echo-{index}"), host, port), 4096);
        client.subscribe(&filter, QoS::AtLeastOnce).await?;
        // The event loop must keep polling while replies queue up, so replies go out
        // from their own task.
        let (replies, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(4096);
        relays.push(tokio::spawn(async move {
            while let Some(payload) = outgoing.recv().await {
                if client
                    .publish(OUT_TOPIC, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
        relays.push(tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let Some(payload) = reply(&publish.payload)
                            && replies.send(payload).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        eprintln!("echo connection: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    for relay in relays {
        relay.await?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("clear") {
        let host = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1".into());
        let port: u16 = args.get(3).map_or(Ok(1883), |a| a.parse())?;
        for id in args.iter().skip(4) {
            clear_session(id, &host, port).await?;
        }
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("echo") {
        let host = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1".into());
        let port: u16 = args.get(3).map_or(Ok(1883), |a| a.parse())?;
        let sessions: usize = args.get(4).map_or(Ok(4), |a| a.parse())?;
        return echo(&host, port, sessions).await;
    }
    let count: usize = args.get(1).map_or(Ok(100_000), |a| a.parse())?;
    let host = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = args.get(3).map_or(Ok(1883), |a| a.parse())?;
    let window: usize = args.get(4).map_or(Ok(500), |a| a.parse())?;
    let replies = Arc::new(AtomicUsize::new(0));

    // The counter subscribes first and says when it is subscribed.
    let (counter, mut counter_loop) =
        AsyncClient::new(options("reactor-bench-count", &host, port), 1024);
    counter.subscribe(OUT_TOPIC, QoS::AtLeastOnce).await?;
    let replied = replies.clone();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let counting = tokio::spawn(async move {
        let mut subscribed = Some(subscribed_tx);
        let mut seen = vec![false; count];
        let (mut unique, mut duplicates, mut foreign) = (0usize, 0usize, 0usize);
        let mut last = Instant::now();
        loop {
            let event = match tokio::time::timeout(QUIET, counter_loop.poll()).await {
                Err(_) => break, // quiet for QUIET
                Ok(Err(error)) => {
                    eprintln!("counter connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok(Ok(event)) => event,
            };
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let seq = serde_json::from_slice::<Value>(&publish.payload)
                        .ok()
                        .and_then(|v| v["seq"].as_u64())
                        .and_then(|s| usize::try_from(s).ok())
                        .filter(|s| *s < count);
                    match seq {
                        Some(seq) if seen[seq] => duplicates += 1,
                        Some(seq) => {
                            seen[seq] = true;
                            unique += 1;
                            replied.store(unique, Ordering::Relaxed);
                            last = Instant::now();
                            if unique == count {
                                break;
                            }
                        }
                        None => foreign += 1,
                    }
                }
                _ => {}
            }
        }
        (unique, duplicates, foreign, last)
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await??;

    let (publisher, mut publisher_loop) =
        AsyncClient::new(options("reactor-bench-load", &host, port), 1024);
    let publishing = tokio::spawn(async move {
        let mut acked = 0usize;
        while acked < count {
            match publisher_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(error) => {
                    eprintln!("publisher connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let start = Instant::now();
    for seq in 0..count {
        while seq >= replies.load(Ordering::Relaxed) + window {
            if counting.is_finished() {
                break; // the counter gave up: report what arrived
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let (zone, temp) = if seq % 2 == 0 {
            ("A", 31.5)
        } else {
            ("B", 22.0)
        };
        let device = format!("sensor-{}", seq % 16);
        let payload = json!({ "seq": seq, "device": device, "zone": zone, "temp": temp });
        publisher
            .publish(
                format!("{IN_TOPIC}/{device}"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&payload)?,
            )
            .await?;
    }
    publishing.await?;
    let published = start.elapsed();
    let (unique, duplicates, foreign, last) = counting.await?;
    let end_to_end = last.saturating_duration_since(start).as_secs_f64();
    println!(
        "published {count} (QoS 1, acked by the broker) in {:.2} s: {:.0} msg/s",
        published.as_secs_f64(),
        count as f64 / published.as_secs_f64()
    );
    println!(
        "received {unique} replies in {end_to_end:.2} s: {:.0} msg/s end to end; lost {}, \
         duplicates {duplicates}, other messages {foreign}",
        unique as f64 / end_to_end.max(f64::EPSILON),
        count - unique
    );
    let _ = publisher.disconnect().await;
    let _ = counter.disconnect().await;
    Ok(())
}
