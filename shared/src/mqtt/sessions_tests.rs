//! `sessions: N` (shared subscriptions) against the real Mosquitto: nothing lost across a
//! kill of the trigger, and sessions dropped by a lower count hand over what was queued for
//! them.

use tokio::sync::watch;

use super::*;

fn start_sessions(
    runtime: &Runtime,
    filter: &str,
    client_id: &str,
    sessions: u16,
) -> (Running, Vec<String>) {
    let spec = crate::flow::MqttTrigger {
        topic: filter.into(),
        qos: 1,
        broker: None,
        connection: None,
        sessions,
    };
    let trigger = MqttTrigger::new(&spec, &brokers(MOSQUITTO), "t")
        .unwrap()
        .with_client_id(client_id);
    let ids = trigger.client_ids().to_vec();
    let cancel = CancellationToken::new();
    let context = TriggerContext::new("w", runtime.clone(), cancel.clone());
    let task = tokio::spawn(Box::new(trigger).run(context));
    (Running { cancel, task }, ids)
}

/// A runtime like `runtime`, keeping every execution.
fn keeping_runtime(store: Arc<dyn Store>) -> Runtime {
    let runtime = Runtime::new(
        store,
        ActionRegistry::new(),
        Environment::empty(),
        RuntimeConfig {
            retention: Retention {
                keep: usize::MAX,
                max_age: None,
            },
            ..RuntimeConfig::default()
        },
    );
    runtime.load(
        WorkflowBuilder::new("w")
            .when("${{ event.data != \"probe\" }}")
            .step(StepBuilder::set(json!({ "seen": true })))
            .var("seen", json!(false))
            .build()
            .expect("valid workflow"),
    );
    runtime
}

/// How many times each `seq` in 0..count was recorded.
async fn recorded(store: &dyn Store, count: usize) -> Vec<usize> {
    let mut seen = vec![0; count];
    for record in store.executions(&ExecutionQuery::default()).await.unwrap() {
        if let Some(Fact::Started { event, .. }) = store.journal(record.id).await.unwrap().first()
            && let Some(seq) = event.data["seq"].as_u64()
        {
            seen[usize::try_from(seq).unwrap()] += 1;
        }
    }
    seen
}

/// Waits until every `seq` in 0..count was recorded at least once; returns the counts.
async fn all_recorded(store: &dyn Store, count: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let seen = recorded(store, count).await;
        let missing: Vec<usize> = (0..count).filter(|&i| seen[i] == 0).collect();
        if missing.is_empty() {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} messages never recorded: {}",
            missing.len(),
            ranges(&missing)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A QoS 1 publisher that does not wait for each PUBACK; the receiver counts the PUBACKs
/// received so far.
fn load_client() -> (AsyncClient, JoinHandle<()>, watch::Receiver<usize>) {
    let mut options = MqttOptions::new(format!("rt-load-{}", ulid::Ulid::new()), "127.0.0.1", 1883);
    options.set_clean_session(true).set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let (acked_tx, acked) = watch::channel(0);
    let driver = tokio::spawn(async move {
        // Ends at the disconnect (a failure before shows as messages never recorded).
        while let Ok(event) = eventloop.poll().await {
            if let MqttEvent::Incoming(Packet::PubAck(_)) = event {
                acked_tx.send_modify(|n| *n += 1);
            }
        }
    });
    (client, driver, acked)
}

/// Waits until the broker has acknowledged `count` publishes: they are queued there, so a
/// session started afterwards does not race them.
async fn wait_acked(acked: &mut watch::Receiver<usize>, count: usize) {
    tokio::time::timeout(WAIT, acked.wait_for(|&n| n >= count))
        .await
        .expect("the broker acknowledged the publishes in time")
        .expect("the load client is running");
}

async fn send(client: &AsyncClient, topic: String, seq: usize) {
    let payload = serde_json::to_vec(&json!({ "seq": seq })).unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_sessions_lose_nothing_across_a_kill() {
    const COUNT: usize = 2_000;
    const SESSIONS: u16 = 4;
    let p = prefix();
    let store = Arc::new(MemoryStore::new());
    let runtime = keeping_runtime(store.clone());
    let client_id = format!("rt-{}", ulid::Ulid::new());
    let filter = format!("{p}/kill/+");
    let (running, ids) = start_sessions(&runtime, &filter, &client_id, SESSIONS);
    assert_eq!(ids.len(), usize::from(SESSIONS));
    assert_eq!(
        ids[0], client_id,
        "the first session keeps the single-session id"
    );
    let probe = BrokerPublisher::new(brokers(MOSQUITTO));
    wait_subscribed(&runtime, &probe, &format!("{p}/kill/probe")).await;
    probe.shutdown(Duration::from_secs(2)).await;

    let (client, driver, _acked) = load_client();
    let started = || usize::try_from(runtime.stats().started.load(Ordering::SeqCst)).unwrap();
    // The first half streams while the trigger runs; it is killed (its future dropped:
    // connections cut, nothing acknowledged any more) with messages in flight.
    for seq in 0..COUNT / 2 {
        while seq >= started() + 400 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        send(&client, format!("{p}/kill/d{}", seq % 8), seq).await;
    }
    running.task.abort();
    let _ = running.task.await;
    let before_restart = started();
    // The second half is published while no session is connected: the broker queues it for
    // the group's (persistent) sessions.
    for seq in COUNT / 2..COUNT {
        send(&client, format!("{p}/kill/d{}", seq % 8), seq).await;
    }
    let (running, _) = start_sessions(&runtime, &filter, &client_id, SESSIONS);
    let seen = all_recorded(store.as_ref(), COUNT).await;
    let duplicates: usize = seen.iter().map(|&n| n - 1).sum();
    // At least once: only messages taken but not acknowledged at the kill come again. Per
    // session, at most an in-flight window of them was recorded and waiting for its ack, and
    // at most another of submissions still being written, which complete on their own.
    assert!(
        duplicates
            <= 2 * usize::from(SESSIONS) * usize::from(crate::mqtt::settings::DEFAULT_INFLIGHT),
        "{duplicates} duplicates ({before_restart} recorded before the restart)"
    );
    let _ = client.disconnect().await;
    let _ = driver.await;
    running.stop().await;
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_sessions_retires_the_dropped_ones() {
    let p = prefix();
    let store = Arc::new(MemoryStore::new());
    let runtime = keeping_runtime(store.clone());
    let client_id = format!("rt-{}", ulid::Ulid::new());
    let filter = format!("{p}/retire/+");
    let key = format!("trigger/mqtt/{client_id}/sessions");
    let (running, _) = start_sessions(&runtime, &filter, &client_id, 3);
    let probe = BrokerPublisher::new(brokers(MOSQUITTO));
    wait_subscribed(&runtime, &probe, &format!("{p}/retire/probe")).await;
    running.stop().await;
    assert_eq!(
        store.meta(&key).await.unwrap(),
        Some(3u16.to_be_bytes().to_vec())
    );

    // Queued round robin for the three offline sessions of the group.
    let (client, driver, mut acked) = load_client();
    for seq in 0..30 {
        send(&client, format!("{p}/retire/x"), seq).await;
    }
    // Every message queued at the broker before the sessions change: one still in transit
    // when the single session subscribes to the plain filter, while its persistent session
    // still holds the `$share` one, would come twice (at least once allows that).
    wait_acked(&mut acked, 30).await;
    // Back to one session: the two dropped ones are connected once more, hand over what
    // was queued for them and leave the group.
    let (running, _) = start_sessions(&runtime, &filter, &client_id, 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.meta(&key).await.unwrap() != Some(1u16.to_be_bytes().to_vec()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never retired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(all_recorded(store.as_ref(), 30).await, vec![1; 30]);
    // Now every message reaches the one session, once: none is queued for a dropped
    // session, and the first session no longer holds its `$share` subscription.
    for seq in 30..60 {
        send(&client, format!("{p}/retire/x"), seq).await;
    }
    let seen = all_recorded(store.as_ref(), 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen, vec![1; 60]);
    assert_eq!(recorded(store.as_ref(), 60).await, vec![1; 60]);
    let _ = client.disconnect().await;
    let _ = driver.await;
    probe.shutdown(Duration::from_secs(2)).await;
    running.stop().await;
    runtime.shutdown().await;
}

#[test]
fn session_ids_and_settings() {
    let brokers = brokers(MOSQUITTO);
    let spec = |topic: &str, sessions: u16| crate::flow::MqttTrigger {
        topic: topic.into(),
        qos: 1,
        broker: None,
        connection: None,
        sessions,
    };
    let single = MqttTrigger::new(&spec("a/+", 1), &brokers, "wf.0").unwrap();
    let four = MqttTrigger::new(&spec("a/+", 4), &brokers, "wf.0").unwrap();
    assert_eq!(four.client_ids()[0], single.client_id());
    assert_eq!(four.client_ids().len(), 4);
    let mut unique = four.client_ids().to_vec();
    unique.dedup();
    assert_eq!(unique.len(), 4);
    assert!(four.client_ids().iter().all(|id| id.len() <= 23));
    let plan = four.plan(0);
    assert_eq!(
        plan.subscribe.as_deref(),
        Some(format!("$share/{}/a/+", single.client_id()).as_str())
    );
    assert_eq!(plan.unsubscribe.as_deref(), Some("a/+"));
    assert_eq!(single.plan(0).subscribe.as_deref(), Some("a/+"));
    let error = MqttTrigger::new(&spec("$share/g/a", 2), &brokers, "wf.0").unwrap_err();
    assert!(
        error.to_string().contains("already a shared subscription"),
        "{error}"
    );
}
