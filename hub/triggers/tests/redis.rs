//! The `redis` trigger against the real Redis on 127.0.0.1:6379.

#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::*;
use reactor_core::trigger::TriggerError;
use reactor_hub_triggers::Connections;
use reactor_hub_triggers::redis::RedisTrigger;
use serde_json::json;

const URL: &str = "redis://127.0.0.1:6379";

async fn client() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, stream: &str, n: usize) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("n")
        .arg(n)
        .arg("kind")
        .arg("order")
        .query_async(conn)
        .await
        .unwrap()
}

async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

/// A runtime with workflow `orders`, triggered by `stream` in group `hub`.
fn orders_on(stream: &str) -> reactor_core::engine::Runtime {
    runtime(&workflow(
        "orders",
        &format!("redis: {{ stream: {stream}, group: hub, url: \"{URL}\" }}"),
    ))
}

/// Whether group `hub` of `stream` gets to no pending entries (within `eventually`'s wait).
async fn nothing_pending(conn: &redis::aio::MultiplexedConnection, stream: &str) -> bool {
    eventually(|| {
        let mut conn = conn.clone();
        async move { pending(&mut conn, stream, "hub").await == 0 }
    })
    .await
}

/// Whether the connection of a stopped `consumer` is gone: until then its blocked read
/// still takes new entries.
async fn connection_gone(conn: &redis::aio::MultiplexedConnection, consumer: &str) -> bool {
    let name = format!("name=reactor-{consumer} ");
    eventually(|| {
        let mut c = conn.clone();
        let name = name.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .unwrap();
            !list.contains(&name)
        }
    })
    .await
}

/// Creates the group `hub` at the end of `stream` (created too): only entries added after
/// this are new to it.
async fn create_group(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("hub")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
}

fn stream_trigger(
    runtime: &reactor_core::engine::Runtime,
    name: &str,
    consumer: &str,
) -> RedisTrigger {
    let flow::TriggerKind::Redis(settings) = spec(runtime, name).kind else {
        panic!("not a redis trigger");
    };
    let mut settings = settings;
    if let flow::RedisSource::Stream { consumer: c, .. } = &mut settings.source {
        *c = Some(consumer.to_string());
    }
    RedisTrigger::new(&settings, &Connections::default()).unwrap()
}

use reactor_core::flow;

/// A stream trigger of consumer `consumer` gathering `size` entries per execution.
fn batched_trigger(
    runtime: &reactor_core::engine::Runtime,
    consumer: &str,
    size: usize,
) -> RedisTrigger {
    let flow::TriggerKind::Redis(mut settings) = spec(runtime, "orders").kind else {
        panic!("not a redis trigger");
    };
    if let flow::RedisSource::Stream { consumer: c, .. } = &mut settings.source {
        *c = Some(consumer.to_string());
    }
    settings.batch = Some(flow::Batch {
        size,
        wait: Duration::from_millis(300),
    });
    RedisTrigger::new(&settings, &Connections::default()).unwrap()
}

/// The `n` of every entry in the batch events recorded so far, sorted.
async fn batched_ns(runtime: &reactor_core::engine::Runtime) -> Vec<usize> {
    let mut ns: Vec<usize> = events(runtime, "orders")
        .await
        .iter()
        .flat_map(|e| e.data.as_array().unwrap().clone())
        .map(|item| item["data"]["n"].as_str().unwrap().parse().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

/// Whether `count` messages get into recorded batch events (within `eventually`'s wait).
async fn all_batched(runtime: &reactor_core::engine::Runtime, count: usize) -> bool {
    eventually(|| {
        let runtime = runtime.clone();
        async move { batched_ns(&runtime).await.len() >= count }
    })
    .await
}

/// Whether every de-duplication mark of the stream's `hub` group goes (acknowledged entries
/// leave none behind).
async fn no_marks_left(runtime: &reactor_core::engine::Runtime, stream: &str) -> bool {
    let prefix = format!("redis/{stream}/hub/");
    eventually(|| {
        let (runtime, prefix) = (runtime.clone(), prefix.clone());
        async move { runtime.marks("orders", &prefix).await.unwrap().is_empty() }
    })
    .await
}

async fn add_entries(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    ns: std::ops::Range<usize>,
) {
    let mut pipe = redis::pipe();
    for n in ns {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("n")
            .arg(n)
            .ignore();
    }
    let _: () = pipe.query_async(conn).await.unwrap();
}

#[tokio::test]
async fn batched_entries_run_a_batch_per_execution() {
    const ENTRIES: usize = 1_234;
    let stream = unique("reactor_test_batched");
    let runtime = runtime(&workflow(
        "orders",
        &format!(
            "redis: {{ stream: {stream}, group: hub, batch: {{ size: 500, wait: 300ms }}, url: \"{URL}\" }}"
        ),
    ));
    let mut conn = client().await;
    create_group(&mut conn, &stream).await;
    add_entries(&mut conn, &stream, 0..ENTRIES).await;
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    assert!(all_batched(&runtime, ENTRIES).await);
    assert!(nothing_pending(&conn, &stream).await);
    running.stop().await.unwrap();
    assert_eq!(batched_ns(&runtime).await, (0..ENTRIES).collect::<Vec<_>>());
    let events = events(&runtime, "orders").await;
    let mut sizes: Vec<usize> = events
        .iter()
        .map(|e| e.data.as_array().unwrap().len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        vec![234, 500, 500],
        "full batches, then the tail after its wait"
    );
    for event in &events {
        let items = event.data.as_array().unwrap();
        assert_eq!(event.event_type, "redis");
        assert_eq!(event.source, format!("reactor:redis/{stream}"));
        assert_eq!(event.meta["stream"], json!(stream));
        assert_eq!(event.meta["count"], json!(items.len()));
        assert_eq!(event.meta["first_id"], items[0]["meta"]["id"]);
        assert_eq!(event.meta["last_id"], items[items.len() - 1]["meta"]["id"]);
        assert_eq!(items[0]["meta"]["group"], json!("hub"));
    }
    assert!(no_marks_left(&runtime, &stream).await);
    cleanup(&mut conn, &stream).await;
}

#[tokio::test]
async fn a_batch_closes_at_its_byte_cap() {
    let stream = unique("reactor_test_batch_bytes");
    let runtime = orders_on(&stream);
    let mut conn = client().await;
    create_group(&mut conn, &stream).await;
    add_entries(&mut conn, &stream, 0..20).await;
    // An entry weighs its field name and value: 2 bytes (`n` + one digit) or 3: at a 5-byte
    // cap a batch holds two entries although `size` is 100.
    let trigger = batched_trigger(&runtime, "hub-a", 100).with_batch_bytes(5);
    let running = Running::start(&runtime, "orders", Box::new(trigger));
    assert!(all_batched(&runtime, 20).await);
    assert!(nothing_pending(&conn, &stream).await);
    running.stop().await.unwrap();
    assert_eq!(batched_ns(&runtime).await, (0..20).collect::<Vec<_>>());
    for event in events(&runtime, "orders").await {
        let count = event.data.as_array().unwrap().len();
        assert!((1..=2).contains(&count), "a batch of {count}");
    }
    cleanup(&mut conn, &stream).await;
}

/// A stream of `entries` entries whose consumer `hub-a` (batches of 4) recorded entries
/// 0–3 (and perhaps the group it had read ahead) and died before acknowledging them; it
/// had read the next entries ahead, so they are pending too.
struct LeftUnacknowledged {
    stream: String,
    runtime: reactor_core::engine::Runtime,
    conn: redis::aio::MultiplexedConnection,
}

impl LeftUnacknowledged {
    async fn new(name: &str, entries: usize) -> LeftUnacknowledged {
        let stream = unique(name);
        let runtime = orders_on(&stream);
        let mut conn = client().await;
        create_group(&mut conn, &stream).await;
        add_entries(&mut conn, &stream, 0..entries).await;
        let dying = batched_trigger(&runtime, "hub-a", 4).stop_before_ack(4);
        let first = Running::start(&runtime, "orders", Box::new(dying));
        let result = first.ended().await;
        assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
        // Entries 0–3 were recorded; the group read ahead may have been started (and
        // recorded) beside them.
        let ns = batched_ns(&runtime).await;
        assert_eq!(ns, (0..ns.len()).collect::<Vec<_>>());
        assert!(ns.len() >= 4, "{ns:?}");
        assert!(
            pending(&mut conn, &stream, "hub").await >= 4,
            "nothing acknowledged"
        );
        LeftUnacknowledged {
            stream,
            runtime,
            conn,
        }
    }
}

/// Batches recorded but not acknowledged come back in other splits — re-read by their
/// consumer in smaller batches, claimed from a dead consumer two at a time — and no entry
/// runs twice.
#[tokio::test]
async fn batched_entries_killed_before_ack_are_not_batched_again() {
    let LeftUnacknowledged {
        stream,
        runtime,
        mut conn,
    } = LeftUnacknowledged::new("reactor_test_batch_crash", 10).await;

    // Back in batches of 3: the recorded four are acknowledged, the rest run once.
    let again = Running::start(
        &runtime,
        "orders",
        Box::new(batched_trigger(&runtime, "hub-a", 3)),
    );
    assert!(nothing_pending(&conn, &stream).await);
    again.stop().await.unwrap();
    assert_eq!(batched_ns(&runtime).await, (0..10).collect::<Vec<_>>());
    assert!(connection_gone(&conn, "hub-a").await);

    // A consumer that dies for good after recording a batch of 4; another one claims its
    // entries two at a time (its batch size is also its claim count).
    add_entries(&mut conn, &stream, 10..14).await;
    let dying = batched_trigger(&runtime, "hub-b", 4).stop_before_ack(4);
    let second = Running::start(&runtime, "orders", Box::new(dying));
    let _ = second.ended().await;
    assert_eq!(pending(&mut conn, &stream, "hub").await, 4);
    let claimer = batched_trigger(&runtime, "hub-c", 2)
        .with_claim(Duration::from_millis(100), Duration::from_millis(200));
    let claimer = Running::start(&runtime, "orders", Box::new(claimer));
    assert!(
        nothing_pending(&conn, &stream).await,
        "the dead consumer's entries are claimed and acknowledged"
    );
    claimer.stop().await.unwrap();
    assert_eq!(
        batched_ns(&runtime).await,
        (0..14).collect::<Vec<_>>(),
        "every entry in exactly one execution"
    );
    assert!(
        no_marks_left(&runtime, &stream).await,
        "a batch's mark goes once all its entries are acknowledged"
    );
    cleanup(&mut conn, &stream).await;
}

/// A batch recorded and not acknowledged, redelivered to the same consumer without
/// `batch:`: its entries are found in the batch's mark, only the others run (one each).
#[tokio::test]
async fn switching_off_batches_runs_nothing_twice() {
    let LeftUnacknowledged {
        stream,
        runtime,
        mut conn,
    } = LeftUnacknowledged::new("reactor_test_batch_switch", 6).await;

    let single = stream_trigger(&runtime, "orders", "hub-a");
    let again = Running::start(&runtime, "orders", Box::new(single));
    assert!(nothing_pending(&conn, &stream).await);
    again.stop().await.unwrap();
    let mut ns: Vec<usize> = events(&runtime, "orders")
        .await
        .iter()
        .flat_map(|event| match event.data.as_array() {
            Some(items) => items.iter().map(|item| item["data"].clone()).collect(),
            None => vec![event.data.clone()],
        })
        .map(|data| data["n"].as_str().unwrap().parse().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..6).collect::<Vec<_>>(), "every entry exactly once");
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        3,
        "a batch and two"
    );
    assert!(no_marks_left(&runtime, &stream).await);
    cleanup(&mut conn, &stream).await;
}

#[tokio::test]
async fn stream_entries_start_executions_and_are_acknowledged() {
    let stream = unique("reactor_test_stream");
    let runtime = orders_on(&stream);
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    let mut conn = client().await;
    // The group is created at the stream's end: wait until it exists before producing.
    assert!(
        eventually(|| {
            let mut c = conn.clone();
            let s = stream.clone();
            async move {
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&s)
                    .query_async::<redis::Value>(&mut c)
                    .await
                    .is_ok()
            }
        })
        .await
    );
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(xadd(&mut conn, &stream, n).await);
    }
    let events = wait_events(&runtime, "orders", 20).await;
    assert_eq!(events.len(), 20);
    let mut seen: Vec<i64> = events
        .iter()
        .map(|e| e.data["n"].as_str().unwrap().parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    let first = events.iter().find(|e| e.data["n"] == json!("0")).unwrap();
    assert_eq!(first.event_type, "redis");
    assert_eq!(first.source, format!("reactor:redis/{stream}"));
    assert_eq!(first.data["kind"], json!("order"));
    assert_eq!(first.meta["stream"], json!(stream));
    assert_eq!(first.meta["group"], json!("hub"));
    assert_eq!(first.meta["id"], json!(ids[0]));
    assert!(
        nothing_pending(&conn, &stream).await,
        "every recorded entry is acknowledged"
    );
    // Acknowledged entries leave no de-duplication mark behind.
    let key = format!("redis/{stream}/hub/{}", ids[0]);
    assert!(
        eventually(|| {
            let r = runtime.clone();
            let k = key.clone();
            async move { r.mark("orders", &k).await.unwrap().is_none() }
        })
        .await
    );
    running.stop().await.unwrap();
    cleanup(&mut conn, &stream).await;
}

/// A backlog several batches long: each batch is recorded while the next is read ahead;
/// every entry starts exactly one execution and all are acknowledged.
#[tokio::test]
async fn a_backlog_of_several_batches_runs_each_entry_once() {
    const ENTRIES: usize = 1_300; // two full batches of 512 and a partial one
    let stream = unique("reactor_test_backlog");
    let runtime = orders_on(&stream);
    let mut conn = client().await;
    create_group(&mut conn, &stream).await;
    let mut pipe = redis::pipe();
    for n in 0..ENTRIES {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(n)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    let running = Running::start(
        &runtime,
        "orders",
        Box::new(stream_trigger(&runtime, "orders", "hub-a")),
    );
    assert!(
        eventually(|| {
            let mut c = conn.clone();
            let s = stream.clone();
            let r = runtime.clone();
            async move {
                pending(&mut c, &s, "hub").await == 0
                    && executions(&r, "orders").await.len() >= ENTRIES
            }
        })
        .await,
        "every entry recorded and acknowledged"
    );
    running.stop().await.unwrap();
    let mut seen: Vec<usize> = events(&runtime, "orders")
        .await
        .iter()
        .map(|e| e.data["n"].as_str().unwrap().parse().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..ENTRIES).collect::<Vec<_>>(),
        "each entry exactly once"
    );
    cleanup(&mut conn, &stream).await;
}

#[tokio::test]
async fn killed_between_record_and_ack_no_second_execution() {
    let stream = unique("reactor_test_crash");
    let runtime = orders_on(&stream);
    let mut conn = client().await;
    create_group(&mut conn, &stream).await;
    for n in 0..5 {
        xadd(&mut conn, &stream, n).await;
    }
    // First consumer: records all five, then "dies" before acknowledging.
    let dying = stream_trigger(&runtime, "orders", "hub-a").stop_before_ack(5);
    let first = Running::start(&runtime, "orders", Box::new(dying));
    let result = first.ended().await;
    assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
    assert_eq!(executions(&runtime, "orders").await.len(), 5);
    assert_eq!(
        pending(&mut conn, &stream, "hub").await,
        5,
        "nothing was acknowledged"
    );

    // The same consumer comes back: it re-reads its pending entries, runs nothing twice.
    let again = Running::start(
        &runtime,
        "orders",
        Box::new(stream_trigger(&runtime, "orders", "hub-a")),
    );
    assert!(nothing_pending(&conn, &stream).await);
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        5,
        "no second execution"
    );
    again.stop().await.unwrap();
    assert!(connection_gone(&conn, "hub-a").await);

    // A consumer that dies for good: another one claims its entries (XAUTOCLAIM).
    for n in 5..8 {
        xadd(&mut conn, &stream, n).await;
    }
    let dying = stream_trigger(&runtime, "orders", "hub-b").stop_before_ack(3);
    let second = Running::start(&runtime, "orders", Box::new(dying));
    let _ = second.ended().await;
    assert_eq!(executions(&runtime, "orders").await.len(), 8);
    assert_eq!(pending(&mut conn, &stream, "hub").await, 3);
    let claimer = stream_trigger(&runtime, "orders", "hub-c")
        .with_claim(Duration::from_millis(100), Duration::from_millis(200));
    let claimer = Running::start(&runtime, "orders", Box::new(claimer));
    assert!(
        nothing_pending(&conn, &stream).await,
        "the dead consumer's entries are claimed and acknowledged"
    );
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        8,
        "claimed entries did not run twice"
    );
    assert_eq!(
        runtime
            .stats()
            .deduplicated
            .load(std::sync::atomic::Ordering::Relaxed),
        8
    );
    assert!(no_marks_left(&runtime, &stream).await);
    claimer.stop().await.unwrap();
    cleanup(&mut conn, &stream).await;
}

#[tokio::test]
async fn reconnects_after_client_kill() {
    let stream = unique("reactor_test_kill");
    let consumer = unique("killme");
    let yaml = workflow(
        "orders",
        &format!("redis: {{ stream: {stream}, group: hub, consumer: {consumer}, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    let mut conn = client().await;
    let find = |conn: redis::aio::MultiplexedConnection| {
        let name = format!("reactor-{consumer}");
        async move {
            let mut conn = conn;
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .unwrap();
            list.lines()
                .find(|l| l.split(' ').any(|f| f == format!("name={name}")))
                .and_then(|l| {
                    l.split(' ')
                        .find_map(|f| f.strip_prefix("id="))
                        .map(str::to_string)
                })
        }
    };
    assert!(
        eventually(|| {
            let c = conn.clone();
            let f = &find;
            async move { f(c).await.is_some() }
        })
        .await
    );
    xadd(&mut conn, &stream, 1).await;
    assert_eq!(wait_events(&runtime, "orders", 1).await.len(), 1);
    let id = find(conn.clone()).await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Produced while the trigger is cut off: arrives after it reconnects.
    xadd(&mut conn, &stream, 2).await;
    assert_eq!(wait_events(&runtime, "orders", 2).await.len(), 2);
    assert!(
        eventually(|| {
            let c = conn.clone();
            let f = &find;
            let id = id.clone();
            async move { f(c).await.is_some_and(|new| new != id) }
        })
        .await,
        "a new connection replaced the killed one"
    );
    assert!(
        running.context.stats.snapshot().errors >= 1,
        "the cut was counted"
    );
    assert!(running.context.stats.snapshot().healthy());
    running.stop().await.unwrap();
    cleanup(&mut conn, &stream).await;
}

#[tokio::test]
async fn pubsub_channels_and_patterns() {
    let prefix = unique("reactor_test_chan");
    let yaml = workflow(
        "alerts",
        &format!("redis: {{ channel: \"{prefix}.*\", url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let running = Running::start(
        &runtime,
        "alerts",
        build(&runtime, "alerts", &Connections::default()),
    );
    let conn = client().await;
    let channel = format!("{prefix}.temp");
    // Pub/sub keeps nothing for absent subscribers: publish until the subscription is live.
    assert!(
        eventually(|| {
            let mut c = conn.clone();
            let ch = channel.clone();
            async move {
                redis::cmd("PUBLISH")
                    .arg(&ch)
                    .arg(r#"{"t": 31.5}"#)
                    .query_async::<i64>(&mut c)
                    .await
                    .unwrap()
                    > 0
            }
        })
        .await
    );
    let events = wait_events(&runtime, "alerts", 1).await;
    assert_eq!(events[0].data, json!({"t": 31.5}));
    assert_eq!(events[0].meta["channel"], json!(channel));
    assert_eq!(events[0].meta["pattern"], json!(format!("{prefix}.*")));
    assert_eq!(events[0].meta["encoding"], json!("json"));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn persistent_failure_is_unhealthy_with_its_error() {
    let yaml = workflow(
        "orders",
        "redis: { stream: s, group: g, url: \"redis://127.0.0.1:1\" }",
    );
    let error = unhealthy_error(&yaml).await;
    assert!(error.contains("redis"), "{error}");
}

#[tokio::test]
async fn settings_errors_are_clear() {
    let yaml = workflow(
        "orders",
        "redis: { stream: s, group: g, url: \"http://127.0.0.1\" }",
    );
    let runtime = runtime(&yaml);
    let error = reactor_hub_triggers::build(&spec(&runtime, "orders"), &Connections::default())
        .err()
        .unwrap();
    assert!(error.to_string().contains("redis://"), "{error}");
}
